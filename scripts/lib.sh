# shellcheck shell=bash
# Helpers sourced by scripts/test, scripts/setup and scripts/cross-build; not meant to be run.
#
# Everything here is idempotent: on a machine that already has what is needed it only checks
# (dpkg, rustup), so running the test command twice costs nothing extra.

# A section header that stands out in a long CI log, with the wall-clock time so slow steps show.
section() {
    printf '\n======== %s  [%s] ========\n' "$*" "$(date -u +%H:%M:%S)"
}

warn() {
    printf '\n!!!!!!!! WARNING: %s\n\n' "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Root runs apt directly; anyone else needs sudo (a developer laptop), and we say so rather than
# let apt fail with a permissions message that hides which packages were missing.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# `dpkg -s` also succeeds for a package that was removed but left its config files behind, so the
# Status line is what tells "installed". Once a foreign architecture is enabled a bare name can be
# ambiguous (pkg-config:amd64 and pkg-config:arm64 both installed), so a name without `:ARCH` is
# asked as the native one first; Architecture: all packages answer only to the bare name.
deb_installed() {
    local status='^Status: install ok installed'
    if [[ $1 != *:* ]] && dpkg -s "$1:$(dpkg --print-architecture)" 2>/dev/null | grep -q "$status"; then
        return 0
    fi
    dpkg -s "$1" 2>/dev/null | grep -q "$status"
}

_apt_updated=0

# apt_ensure PKG...: installs those of PKG that are missing; `apt-get update` runs at most once per
# script run, and only when something is missing (an offline machine that has everything works).
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        deb_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "apt: already installed: $*"
        return 0
    fi
    echo "apt: installing: ${missing[*]}"
    if [ "$_apt_updated" -eq 0 ]; then
        apt_update
        _apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o Acquire::Retries=3 install -y -q --no-install-recommends "${missing[@]}"
}

# A Debian mirror caught mid-sync answers with index files of the wrong size for a while (seen
# here: "File has unexpected size ... Mirror sync in progress?", for the armhf security index
# only). Retry a little; if one index still fails, go on with the lists apt did get: the install
# then either finds every package or fails naming the one it could not find.
apt_update() {
    local attempt
    for attempt in 1 2 3; do
        if as_root apt-get -o Acquire::Retries=3 update -q; then
            return 0
        fi
        if [ "$attempt" -lt 3 ]; then
            echo "apt-get update failed (attempt $attempt); retrying in $((attempt * 10))s"
            sleep $((attempt * 10))
        fi
    done
    warn "apt-get update failed $attempt times; installing from the package lists it did fetch"
}

# rust_component_ensure NAME...: rustup components of the toolchain active in the repository.
rust_component_ensure() {
    local c installed
    installed="$(rustup component list --installed)"
    for c in "$@"; do
        if ! grep -q "^$c" <<<"$installed"; then
            echo "rustup: adding component $c"
            rustup component add "$c"
        fi
    done
}

# rust_target_ensure TRIPLE: 0 when the target's standard library is (now) installed.
rust_target_ensure() {
    if rustup target list --installed | grep -qx "$1"; then
        return 0
    fi
    echo "rustup: adding target $1"
    rustup target add "$1"
}

# Debian architecture, cross gcc prefix and packages for each gateway target we build.
# Usage: cross_vars aarch64|armv7 -> sets TRIPLE, DEB_ARCH, GCC_PREFIX, QEMU_ARCH, CROSS_PKGS.
# shellcheck disable=SC2034 # the variables are this function's output, read by its callers
cross_vars() {
    case "$1" in
        aarch64)
            TRIPLE=aarch64-unknown-linux-gnu
            DEB_ARCH=arm64
            GCC_PREFIX=aarch64-linux-gnu
            QEMU_ARCH=aarch64
            ;;
        armv7)
            TRIPLE=armv7-unknown-linux-gnueabihf
            DEB_ARCH=armhf
            GCC_PREFIX=arm-linux-gnueabihf
            QEMU_ARCH=arm
            ;;
        *)
            die "unknown gateway target '$1' (expected aarch64 or armv7)"
            ;;
    esac
    # qemu-user-static: scripts/cross-build runs the built binary, emulated. No target libraries:
    # libdbus is built from source (the `vendored` feature), so only the cross C compiler is needed.
    CROSS_PKGS=("gcc-$GCC_PREFIX" "libc6-dev-$DEB_ARCH-cross" qemu-user-static)
}
