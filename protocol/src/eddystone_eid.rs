//! Eddystone-EID: how a gateway recognises a member's Eddystone ephemeral ID without holding the
//! long-term identity key.
//!
//! # The computation (Eddystone spec, `google/eddystone` `eddystone-eid/eid-computation.md`)
//!
//! A beacon holds a 128-bit AES *identity key* `IK`, a 32-bit seconds counter `ts` and a rotation
//! exponent `K` (0..=15; a new EID every `2^K` seconds).
//!
//! * **Temporary key** `TK = AES-128(IK, 00×11 ‖ FF ‖ 00×2 ‖ be16(ts >> 16))`: it changes once
//!   per *epoch* of 2^16 s (≈ 18.2 h).
//! * **EID** = the first 8 bytes of `AES-128(TK, 00×11 ‖ K ‖ be32(ts with its K low bits clear))`.
//!
//! # Our profile
//!
//! * **Clock.** `ts` is Unix time in seconds (the member app or beacon is provisioned with its
//!   counter set to Unix time). Registrations with another clock base are not supported.
//! * **Import.** Head office accepts
//!   `{"kind":"eddystone_eid_identity","identity_key":"<32 hex>","exponent":K}` and never
//!   forwards it. A stolen identity key recognises the beacon forever, so gateways get
//!   `{"kind":"eddystone_eid_temp","epoch":e,"key":"<32 hex TK_e>","exponent":K}` for the current
//!   and the next epoch only ([`shipped_epochs`]): a stolen gateway recognises the member for at
//!   most two epochs (≈ 36 h). `TK_e` reveals nothing about `IK` or another epoch's key (AES is a
//!   PRP). Head office re-issues the snapshot when the epoch changes.
//! * **Exponent.** [`MIN_EXPONENT`]`..=15`: the gateway precomputes every EID that falls in a
//!   15-minute window, `⌈900 / 2^K⌉ + 1` per member and window, so shorter periods are refused at
//!   import (at `K = 0` a million members would need ~900 million table entries per window).
//! * **Resolution.** Per rotation window `w` (the rotating IDs' 15-minute windows, see
//!   [`crate::rotating`]) the gateway computes the EIDs of every quantum that overlaps
//!   `w-1 ..= w+1`, so one lookup resolves an advert whatever the number of members.

use aes::{
    Aes128,
    cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray},
};

/// Seconds per temporary-key epoch (`ts >> 16`).
pub const EPOCH_SECS: i64 = 1 << 16;
/// Shortest rotation period accepted: 2^8 = 256 s (see the module docs).
pub const MIN_EXPONENT: u8 = 8;
/// Longest rotation period the spec allows: 2^15 s.
pub const MAX_EXPONENT: u8 = 15;
/// Epochs of temporary keys head office ships: the current and the next.
pub const EPOCH_HORIZON: u16 = 2;

/// The beacon's long-term AES key: never leaves head office.
pub type IdentityKey = [u8; 16];
/// One epoch's temporary key.
pub type TempKey = [u8; 16];
/// The 8-byte ephemeral ID in an EID frame.
pub type Eid = [u8; 8];

fn aes(key: &[u8; 16], block: [u8; 16]) -> [u8; 16] {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut b = GenericArray::from(block);
    cipher.encrypt_block(&mut b);
    b.into()
}

/// The epoch of a beacon time in seconds.
pub fn epoch_of(ts: u32) -> u16 {
    (ts >> 16) as u16
}

/// `TK` for `epoch` (head office only).
pub fn temporary_key(identity_key: &IdentityKey, epoch: u16) -> TempKey {
    let mut b = [0u8; 16];
    b[11] = 0xFF;
    b[14..].copy_from_slice(&epoch.to_be_bytes());
    aes(identity_key, b)
}

/// One temporary key, its AES key schedule expanded once: a gateway computes several EIDs per
/// key and window.
#[derive(Clone)]
pub struct EidCipher(Aes128);

impl EidCipher {
    pub fn new(temp_key: &TempKey) -> Self {
        Self(Aes128::new(GenericArray::from_slice(temp_key)))
    }

    /// The EID a beacon with exponent `k` sends at `ts` (`ts` in this key's epoch).
    pub fn eid(&self, k: u8, ts: u32) -> Eid {
        let k = k.min(MAX_EXPONENT);
        let mut b = [0u8; 16];
        b[11] = k;
        b[12..].copy_from_slice(&((ts >> k) << k).to_be_bytes());
        let mut block = GenericArray::from(b);
        self.0.encrypt_block(&mut block);
        let mut e = [0u8; 8];
        e.copy_from_slice(&block[..8]);
        e
    }
}

/// The EID a beacon with exponent `k` sends at `ts`, from the temporary key of `ts`'s epoch.
pub fn eid(temp_key: &TempKey, k: u8, ts: u32) -> Eid {
    EidCipher::new(temp_key).eid(k, ts)
}

/// The EID from the identity key (what the member's beacon computes).
pub fn eid_from_identity(identity_key: &IdentityKey, k: u8, ts: u32) -> Eid {
    eid(&temporary_key(identity_key, epoch_of(ts)), k, ts)
}

/// Eddystone service data (after UUID `0xFEAA`) of an EID frame.
pub fn frame(eid: &Eid, tx_power: i8) -> [u8; 10] {
    let mut f = [0u8; 10];
    f[0] = 0x30;
    f[1] = tx_power as u8;
    f[2..].copy_from_slice(eid);
    f
}

/// Beacon time (Unix seconds, clamped to the 32-bit counter) of a Unix time in milliseconds.
pub fn ts_of_ms(unix_ms: i64) -> u32 {
    unix_ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32
}

/// The epochs head office ships temporary keys for when serving at `unix_ms`.
pub fn shipped_epochs(unix_ms: i64) -> impl Iterator<Item = u16> {
    let now = epoch_of(ts_of_ms(unix_ms));
    (0..EPOCH_HORIZON).filter_map(move |i| now.checked_add(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors: identity key 00 01 … 0f. Computed independently with Python's `cryptography`
    // (AES-ECB), following the layout of eid-computation.md and `GetAndPrintEid` in the spec's
    // own tools/eidtools.py (google/eddystone):
    //   tk  = AES(ik, b"\0"*11 + b"\xff" + b"\0\0" + (ts >> 16).to_bytes(2, "big"))
    //   eid = AES(tk, b"\0"*11 + bytes([K]) + ((ts >> K) << K).to_bytes(4, "big"))[:8]
    const IK: IdentityKey = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    #[test]
    fn temporary_key_vectors() {
        assert_eq!(
            hex::encode(temporary_key(&IK, epoch_of(1_700_000_000))),
            "176d04c4093c6a244b01aab123716778"
        );
        // 65280: the counter value the spec recommends starting from (near a key roll-over).
        assert_eq!(
            hex::encode(temporary_key(&IK, epoch_of(65_280))),
            "68d14ef25b6abcc46b96568081ec8a52"
        );
    }

    #[test]
    fn eid_vectors() {
        let v = |k, ts| hex::encode(eid_from_identity(&IK, k, ts));
        assert_eq!(v(10, 1_700_000_000), "6402471e00ba6362");
        assert_eq!(v(10, 1_700_001_023), "b84181460945ae9a");
        assert_eq!(v(15, 1_700_000_000), "1baecbaa49338788");
        assert_eq!(v(10, 65_280), "3439c83a6564bfdf");
    }

    #[test]
    fn an_eid_holds_for_its_whole_rotation_period() {
        let start = (1_700_000_000u32 >> 10) << 10;
        let e = eid_from_identity(&IK, 10, start);
        assert_eq!(eid_from_identity(&IK, 10, start + 1023), e);
        assert_ne!(eid_from_identity(&IK, 10, start + 1024), e);
    }

    #[test]
    fn head_office_ships_the_current_and_next_epoch() {
        let ms = 1_700_000_000_000i64;
        assert_eq!(shipped_epochs(ms).collect::<Vec<_>>(), vec![25_939, 25_940]);
        assert_eq!(frame(&[1; 8], -4)[..2], [0x30, 0xfc]);
    }
}
