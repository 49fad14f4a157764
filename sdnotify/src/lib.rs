//! systemd's service notification protocol (`sd_notify(3)`), written against the standard
//! library: one datagram of `KEY=VALUE` lines per message to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`).
//!
//! In: the environment systemd gives a `Type=notify` service (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
//! `WATCHDOG_PID`). Out: `READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1` datagrams. It must not
//! decide *when* a service is alive: [`Heartbeat`] and [`WatchdogGate`] let the caller tie each
//! keep-alive to its own work loop having moved, so a wedged loop in a live process stops the
//! keep-alives and systemd restarts the service.
//!
//! `NOTIFY_SOCKET` is read, not removed from the environment: removing it is `unsafe` in Rust
//! 2024 once other threads may read the environment, and a child process that inherited it would
//! be ignored anyway (systemd's default `NotifyAccess=main` takes messages from the main PID
//! only).

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// How long one send may block when systemd's socket queue is full: a notification is never worth
/// stalling the caller for longer.
const SEND_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET `{0}` is not a unix socket path or an abstract name (@…)")]
    Unsupported(String),
    #[error("NOTIFY_SOCKET `{addr}`: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// As given, for error messages.
    name: String,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`; `Ok(None)` when it is unset or empty (not started by
    /// systemd, or not `Type=notify`).
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(name) if !name.is_empty() => Notifier::connect(&name).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for the socket `name`: an absolute or relative path, or `@name` for Linux's
    /// abstract namespace (systemd uses a path; test harnesses and containers often use `@`).
    pub fn connect(name: &str) -> Result<Notifier, NotifyError> {
        let io = |source| NotifyError::Io {
            addr: name.to_string(),
            source,
        };
        let addr = socket_addr(name)?;
        let socket = UnixDatagram::unbound().map_err(io)?;
        socket.set_write_timeout(Some(SEND_TIMEOUT)).map_err(io)?;
        Ok(Notifier {
            socket,
            addr,
            name: name.to_string(),
        })
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments) as one datagram.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Io {
                addr: self.name.clone(),
                source,
            })
    }

    /// `READY=1` with an initial status line.
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `STATUS=…`: what `systemctl status` shows under the unit's name.
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: one keep-alive.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    /// `STOPPING=1`: the service is shutting down (systemd shows "deactivating").
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1\nSTATUS=stopping")
    }
}

/// A newline would end the STATUS assignment and start a bogus one.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn socket_addr(name: &str) -> Result<SocketAddr, NotifyError> {
    let io = |source| NotifyError::Io {
        addr: name.to_string(),
        source,
    };
    if let Some(abstract_name) = name.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(abstract_name.as_bytes()).map_err(io);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = abstract_name;
            return Err(NotifyError::Unsupported(name.to_string()));
        }
    }
    // systemd 253+ may also name a vsock address (`vsock:CID:PORT`) for VMs: not for us.
    if name.starts_with("vsock:") {
        return Err(NotifyError::Unsupported(name.to_string()));
    }
    SocketAddr::from_pathname(name).map_err(io)
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` (as `sd_watchdog_enabled(3)`
/// advises), read from the environment; `None` when systemd set no watchdog for this process.
pub fn watchdog_period() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_period_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_period`] on given values: `WATCHDOG_PID`, when set, must name this process (a
/// watchdog meant for a parent is not ours to feed); a zero or unparsable `WATCHDOG_USEC` is none.
pub fn watchdog_period_from(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// A counter the supervised loop bumps once per turn; cheap to clone and to bump.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat::default()
    }

    /// One turn of the loop.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Decides, once per watchdog period, whether a keep-alive may go: only when the heartbeat moved
/// since the previous decision. A loop that stopped turning (blocked on a lock, a hung disk, an
/// endless computation) therefore stops the keep-alives even though the process and its other
/// threads live on.
#[derive(Debug)]
pub struct WatchdogGate {
    last: u64,
}

impl WatchdogGate {
    /// A gate that asks for a beat after `start` (the heartbeat's count now).
    pub fn new(start: u64) -> WatchdogGate {
        WatchdogGate { last: start }
    }

    /// `true` when `count` differs from the count at the previous call (or at [`Self::new`]).
    pub fn check(&mut self, count: u64) -> bool {
        let moved = count != self.last;
        self.last = count;
        moved
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_arrive_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.ready("members 3 cached").unwrap();
        n.status("two\nlines").unwrap();
        n.watchdog().unwrap();
        n.stopping().unwrap();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=members 3 cached");
        assert_eq!(recv(&sock), "STATUS=two lines");
        assert_eq!(recv(&sock), "WATCHDOG=1");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=stopping");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("instore-sdnotify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::connect(&format!("@{name}")).unwrap();
        n.watchdog().unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        let e = n.watchdog().unwrap_err().to_string();
        assert!(e.contains("absent.sock"), "{e}");
        assert!(matches!(
            Notifier::connect("vsock:2:1234"),
            Err(NotifyError::Unsupported(_))
        ));
    }

    #[test]
    fn the_watchdog_period_is_half_of_watchdog_usec_for_this_process_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_period_from(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_period_from(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_period_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_period_from(Some("soon"), None, 7), None);
        assert_eq!(watchdog_period_from(None, Some("7"), 7), None);
    }

    #[test]
    fn the_gate_opens_only_when_the_heartbeat_moved_since_the_last_check() {
        let hb = Heartbeat::new();
        let mut gate = WatchdogGate::new(hb.count());
        assert!(!gate.check(hb.count()), "no beat yet");
        hb.beat();
        assert!(gate.check(hb.count()));
        assert!(!gate.check(hb.count()), "the same beat opens the gate once");
        hb.beat();
        hb.beat();
        assert!(gate.check(hb.count()));
        // The loop wedges: however often the gate is asked, it stays shut.
        for _ in 0..5 {
            assert!(!gate.check(hb.count()));
        }
    }
}
