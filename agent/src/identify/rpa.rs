//! Resolvable private addresses: which member's IRK, if any, generated this address.
//!
//! Bluetooth Core, Vol 3, Part H, 2.2.2: `ah(k, r) = e(k, 0^104 ‖ r) mod 2^24`, where `e` is
//! AES-128 with the key and block written most significant byte first. An RPA is
//! `prand (24 bits, top two bits 01) ‖ hash (24 bits)` and resolves under `k` when
//! `ah(k, prand) == hash`.
//!
//! Matching costs one AES block per IRK for every new address, so [`RpaCache`] remembers the
//! answer per address (members and strangers alike) until the address has surely rotated. The
//! cache holds keyed hashes of addresses, never the addresses: a stranger's address is not
//! recoverable from the gateway's memory.

use std::hash::BuildHasher;

use aes::{
    Aes128Enc,
    cipher::{BlockEncrypt, KeyInit},
};
use foldhash::{HashMap, fast::RandomState};

use crate::cache::{IrkEntry, Slot};

/// `ah(k, r)`: the 24-bit hash of `prand` under the IRK whose key schedule is `cipher`.
pub fn ah(cipher: &Aes128Enc, prand: [u8; 3]) -> [u8; 3] {
    let mut block = aes::Block::default();
    block[13..].copy_from_slice(&prand);
    cipher.encrypt_block(&mut block);
    [block[13], block[14], block[15]]
}

/// `ah` from a raw IRK (most significant byte first), for tests and tools.
pub fn ah_with_irk(irk: &[u8; 16], prand: [u8; 3]) -> [u8; 3] {
    ah(&Aes128Enc::new(irk.into()), prand)
}

/// The member slot whose IRK resolves `address` (an RPA, most significant byte first), trying
/// every IRK: cost linear in `irks.len()`.
pub fn resolve(address: &[u8; 6], irks: &[IrkEntry]) -> Option<Slot> {
    let prand = [address[0], address[1], address[2]];
    let hash = [address[3], address[4], address[5]];
    irks.iter()
        .find(|e| ah(&e.cipher, prand) == hash)
        .map(|e| e.slot)
}

/// Remembered resolutions, bounded in entries and in age.
///
/// Two generations: lookups check both; when the young one is full or older than
/// [`RpaCache::GENERATION_MS`] it becomes the old one and the old one is dropped. That bounds
/// memory at `2 × capacity` entries with no per-entry bookkeeping, and forgets an address within
/// two generations of its last use — RPAs rotate about every 15 minutes.
#[derive(Debug)]
pub struct RpaCache {
    key: RandomState,
    young: HashMap<u64, Option<Slot>>,
    old: HashMap<u64, Option<Slot>>,
    capacity: usize,
    young_since_ms: u64,
}

impl RpaCache {
    pub const GENERATION_MS: u64 = 15 * 60_000;

    pub fn new(capacity: usize) -> Self {
        Self {
            key: RandomState::default(),
            young: HashMap::default(),
            old: HashMap::default(),
            capacity: capacity.max(1),
            young_since_ms: 0,
        }
    }

    fn tag(&self, address: &[u8; 6]) -> u64 {
        self.key.hash_one(address)
    }

    /// The cached answer for `address`: `Some(Some(slot))` member, `Some(None)` known stranger,
    /// `None` not seen.
    pub fn get(&mut self, address: &[u8; 6], now_ms: u64) -> Option<Option<Slot>> {
        let tag = self.tag(address);
        if let Some(hit) = self.young.get(&tag) {
            return Some(*hit);
        }
        let hit = self.old.remove(&tag)?;
        self.insert_tag(tag, hit, now_ms);
        Some(hit)
    }

    pub fn insert(&mut self, address: &[u8; 6], result: Option<Slot>, now_ms: u64) {
        let tag = self.tag(address);
        self.insert_tag(tag, result, now_ms);
    }

    fn insert_tag(&mut self, tag: u64, result: Option<Slot>, now_ms: u64) {
        if self.young.len() >= self.capacity
            || now_ms.saturating_sub(self.young_since_ms) >= Self::GENERATION_MS
        {
            self.old = std::mem::take(&mut self.young);
            self.young_since_ms = now_ms;
        }
        self.young.insert(tag, result);
    }

    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bluetooth Core specification, Vol 3, Part H, Appendix D.7 (ah random address hash).
    const SPEC_IRK: &str = "ec0234a357c8ad05341010a60a397d9b";

    fn spec_irk() -> [u8; 16] {
        hex::decode(SPEC_IRK).unwrap().try_into().unwrap()
    }

    #[test]
    fn ah_matches_the_core_specification_sample_data() {
        assert_eq!(
            ah_with_irk(&spec_irk(), [0x70, 0x81, 0x94]),
            [0x0d, 0xfb, 0xaa]
        );
    }

    #[test]
    fn the_sample_rpa_resolves_to_the_member_holding_the_irk_and_no_other() {
        let irks = vec![
            IrkEntry {
                cipher: Aes128Enc::new(&[1u8; 16].into()),
                slot: 0,
            },
            IrkEntry {
                cipher: Aes128Enc::new(&spec_irk().into()),
                slot: 7,
            },
        ];
        let rpa = [0x70, 0x81, 0x94, 0x0d, 0xfb, 0xaa];
        assert_eq!(resolve(&rpa, &irks), Some(7));
        assert_eq!(resolve(&[0x70, 0x81, 0x94, 0x0d, 0xfb, 0xab], &irks), None);
        // The IRK read least significant byte first (a common bug) does not resolve it.
        let mut reversed = spec_irk();
        reversed.reverse();
        assert_ne!(
            ah_with_irk(&reversed, [0x70, 0x81, 0x94]),
            [0x0d, 0xfb, 0xaa]
        );
    }

    #[test]
    fn the_cache_stays_bounded_and_forgets_old_addresses() {
        let mut c = RpaCache::new(100);
        for i in 0..1_000u32 {
            let b = i.to_be_bytes();
            c.insert(&[0x40, 0, b[0], b[1], b[2], b[3]], None, 0);
        }
        assert!(c.len() <= 200, "{}", c.len());
        let a = [0x41, 1, 2, 3, 4, 5];
        c.insert(&a, Some(3), 1_000);
        assert_eq!(c.get(&a, 1_000), Some(Some(3)));
        c.insert(
            &[0x41, 0, 0, 0, 0, 0],
            None,
            1_000 + RpaCache::GENERATION_MS,
        );
        assert_eq!(
            c.get(&a, 1_000 + RpaCache::GENERATION_MS),
            Some(Some(3)),
            "old generation still answers"
        );
        c.insert(
            &[0x41, 0, 0, 0, 0, 1],
            None,
            1_000 + 3 * RpaCache::GENERATION_MS,
        );
        c.insert(
            &[0x41, 0, 0, 0, 0, 2],
            None,
            1_000 + 5 * RpaCache::GENERATION_MS,
        );
        assert_eq!(c.get(&a, 1_000 + 5 * RpaCache::GENERATION_MS), None);
    }
}
