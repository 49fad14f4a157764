//! Rotating member IDs: how a member's app advertises an ID that changes every 15 minutes, and
//! how a gateway recognises it without ever holding a key that works beyond 48 hours.
//!
//! # Specification (version 1)
//!
//! **Secret.** At enrolment head office draws a random 32-byte *member secret* and gives it to the
//! member's app (and to nobody else). The member import carries it as
//! `{"kind":"rotating_secret","secret":"<64 hex>"}`. Head office never forwards it.
//!
//! **Days and windows.** Time is Unix time in UTC seconds `t`. The *day* is `d = t div 86400`; the
//! *window* is `w = t div 900` (15 minutes), so day `d` holds windows `96·d ..= 96·d + 95` and the
//! day of a window is `w div 96`.
//!
//! **Day keys.** `K_d = HMAC-SHA256(key = secret, msg = "instore-rotating-v1" ‖ be32(d))`, where
//! `be32` is the 4-byte big-endian encoding. Head office derives, per member, the keys of the days a
//! gateway may need — today and tomorrow (see [`DAY_KEY_HORIZON_DAYS`]) — and ships only those
//! in the member snapshot, as `{"kind":"rotating_day_key","day":d,"key":"<64 hex>"}`. A stolen
//! gateway therefore recognises members for at most 48 hours, and one day key reveals nothing
//! about another day's key or the secret (HMAC is a PRF).
//!
//! **ID.** The advertised ID of window `w` is `ID_w = HMAC-SHA256(K_{w div 96}, be32(w))[0..16]`.
//!
//! **Frame.** The app advertises an iBeacon frame (the one frame both iOS and Android apps may
//! send): manufacturer data, company `0x004C`, bytes
//! `02 15 | ID_w (16) | major be16 = 0x1A5E | minor be16 = w mod 65536 | tx power (i8, dBm at 1 m)`.
//! The fixed major [`ROTATING_MAJOR`] tells the gateway to look the UUID up among rotating IDs
//! rather than among fixed iBeacons; the minor lets the gateway see the app's clock skew.
//!
//! **Resolution.** For the current window `w` the gateway computes `ID_{w-1}, ID_w, ID_{w+1}` of
//! every member it has a day key for (tolerating ±15 minutes of clock skew on either side) and keeps
//! a hash map ID → member, rebuilt once per window. Resolving an advert is one lookup whatever the
//! number of members. Collisions: with `n` members the map holds `3n` random 128-bit values, so an
//! accidental match needs ~2^64 entries.
//!
//! **QR codes.** A member QR code is signed with the same day keys; see [`crate::qr`].

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Seconds per rotation window.
pub const WINDOW_SECS: i64 = 900;
/// Seconds per key day.
pub const DAY_SECS: i64 = 86_400;
/// Windows per day (86,400 / 900).
pub const WINDOWS_PER_DAY: u32 = 96;
/// Days of keys head office ships: today and tomorrow.
pub const DAY_KEY_HORIZON_DAYS: u32 = 2;
/// iBeacon major value that marks a rotating-ID frame.
pub const ROTATING_MAJOR: u16 = 0x1A5E;
/// Domain separation of the day-key derivation.
pub const DAY_KEY_LABEL: &[u8] = b"instore-rotating-v1";

/// A member's long-term secret: never leaves head office and the member's app.
pub type MemberSecret = [u8; 32];
/// A short-lived key valid for one UTC day.
pub type DayKey = [u8; 32];
/// The 16-byte ID advertised in one window.
pub type RotatingId = [u8; 16];

type HmacSha256 = Hmac<Sha256>;

/// The UTC day of a Unix time in milliseconds.
pub fn day_of_ms(unix_ms: i64) -> u32 {
    (unix_ms.div_euclid(1000 * DAY_SECS)).clamp(0, i64::from(u32::MAX)) as u32
}

/// The rotation window of a Unix time in milliseconds.
pub fn window_of_ms(unix_ms: i64) -> u32 {
    (unix_ms.div_euclid(1000 * WINDOW_SECS)).clamp(0, i64::from(u32::MAX)) as u32
}

/// The day a window belongs to.
pub fn day_of_window(window: u32) -> u32 {
    window / WINDOWS_PER_DAY
}

pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        unreachable!("HMAC takes keys of any length")
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// `K_d`: the day key head office derives for day `day` (head office only).
pub fn day_key(secret: &MemberSecret, day: u32) -> DayKey {
    mac(secret, &[DAY_KEY_LABEL, &day.to_be_bytes()])
}

/// `ID_w` computed from the key of window `w`'s day.
pub fn rotating_id(day_key: &DayKey, window: u32) -> RotatingId {
    let full = mac(day_key, &[&window.to_be_bytes()]);
    let mut id = [0u8; 16];
    id.copy_from_slice(&full[..16]);
    id
}

/// The iBeacon manufacturer data (after company id `0x004C`) an app advertises in `window`.
pub fn frame(day_key: &DayKey, window: u32, tx_power: i8) -> [u8; 23] {
    let mut f = [0u8; 23];
    f[0] = 0x02;
    f[1] = 0x15;
    f[2..18].copy_from_slice(&rotating_id(day_key, window));
    f[18..20].copy_from_slice(&ROTATING_MAJOR.to_be_bytes());
    f[20..22].copy_from_slice(&((window & 0xffff) as u16).to_be_bytes());
    f[22] = tx_power as u8;
    f
}

/// The days head office ships keys for when serving at `unix_ms`: today and tomorrow.
pub fn shipped_days(unix_ms: i64) -> std::ops::Range<u32> {
    let today = day_of_ms(unix_ms);
    today..today.saturating_add(DAY_KEY_HORIZON_DAYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Secret `00 01 02 … 1f`.
    fn secret() -> MemberSecret {
        std::array::from_fn(|i| i as u8)
    }

    // The vectors below were computed independently with Python's `hmac`/`hashlib`:
    //   k = hmac.new(bytes(range(32)), b"instore-rotating-v1" + d.to_bytes(4,"big"), sha256)
    //   hmac.new(k.digest(), w.to_bytes(4,"big"), sha256).digest()[:16]

    #[test]
    fn day_key_vector() {
        assert_eq!(hex::encode(day_key(&secret(), 20_000)), DAY_20000_KEY);
    }

    #[test]
    fn rotating_id_vectors() {
        let k = day_key(&secret(), 20_000);
        assert_eq!(hex::encode(rotating_id(&k, 1_920_000)), ID_W1920000);
        assert_eq!(hex::encode(rotating_id(&k, 1_920_095)), ID_W1920095);
    }

    #[test]
    fn the_frame_is_an_ibeacon_with_the_rotating_major_and_window_minor() {
        let k = day_key(&secret(), 20_000);
        let f = frame(&k, 1_920_000, -59);
        assert_eq!(&f[..2], &[0x02, 0x15]);
        assert_eq!(hex::encode(&f[2..18]), ID_W1920000);
        assert_eq!(&f[18..20], &[0x1a, 0x5e]);
        assert_eq!(
            u16::from_be_bytes([f[20], f[21]]),
            (1_920_000u32 & 0xffff) as u16
        );
        assert_eq!(f[22] as i8, -59);
    }

    #[test]
    fn windows_and_days_line_up() {
        // 2024-10-04T00:00:00Z is day 20000, window 1,920,000.
        let ms = 20_000i64 * 86_400_000;
        assert_eq!((day_of_ms(ms), window_of_ms(ms)), (20_000, 1_920_000));
        assert_eq!(day_of_window(window_of_ms(ms - 1)), 19_999);
        assert_eq!(day_of_window(1_920_095), 20_000);
        assert_eq!(shipped_days(ms + 5), 20_000..20_002);
        assert_eq!(
            day_of_ms(-5),
            0,
            "times before 1970 clamp instead of wrapping"
        );
    }

    #[test]
    fn consecutive_windows_and_days_give_unrelated_ids() {
        let k = day_key(&secret(), 20_000);
        assert_ne!(rotating_id(&k, 1_920_000), rotating_id(&k, 1_920_001));
        assert_ne!(day_key(&secret(), 20_000), day_key(&secret(), 20_001));
    }

    const DAY_20000_KEY: &str = "17958db0d7431d45a0fc5a961272c84384ba701b024678d71879afddc78f24b7";
    const ID_W1920000: &str = "0a7cac22e02ef81de89b40bc91d70c30";
    const ID_W1920095: &str = "8e155a223ec75a9d1676257d8d822662";
}
