//! Resolvable private addresses: which member's IRK, if any, generated this address.
//!
//! Bluetooth Core, Vol 3, Part H, 2.2.2: `ah(k, r) = e(k, 0^104 ‖ r) mod 2^24`, where `e` is
//! AES-128 with the key and block written most significant byte first. An RPA is
//! `prand (24 bits, top two bits 01) ‖ hash (24 bits)` and resolves under `k` when
//! `ah(k, prand) == hash`.
//!
//! Matching costs one AES block per IRK for every new address. [`IrkTable`] makes that block
//! cheap: the key schedules are expanded once, when the index is built, and laid out eight keys
//! side by side, so that the round function runs on eight independent blocks at a time (AES-NI
//! pipelines them; the portable fallback bitslices them), and only the three output bytes `ah`
//! keeps go through the last round. [`RpaCache`] then remembers the answer per address (members
//! and strangers alike) until the address has surely rotated. The cache holds keyed hashes of
//! addresses, never the addresses: a stranger's address is not recoverable from the gateway's
//! memory.

use std::hash::BuildHasher;

use aes::{
    Aes128Enc, Block, Block8,
    cipher::{BlockEncrypt, KeyInit},
    hazmat::cipher_round_par,
};
use foldhash::{HashMap, fast::RandomState};

use crate::cache::Slot;

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

/// Whether `address` can be an RPA at all: `prand`'s random part (22 bits) must be neither all
/// zeros nor all ones (Core, Vol 6, Part B, 1.3.2.2). Such an address resolves under no IRK.
pub fn valid_prand(address: &[u8; 6]) -> bool {
    let random = u32::from_be_bytes([0, address[0] & 0x3f, address[1], address[2]]);
    random != 0 && random != 0x3f_ffff
}

/// The member slot whose IRK resolves `address` (an RPA, most significant byte first), trying
/// every IRK: cost linear in `irks.len()`.
pub fn resolve(address: &[u8; 6], irks: &IrkTable) -> Option<Slot> {
    irks.resolve(address)
}

/// Identity resolving keys with their AES-128 key schedules expanded, in groups of eight.
#[derive(Clone, Default)]
pub struct IrkTable {
    /// Per group of eight IRKs, round keys 0 to 9; lane `j` holds IRK `8 × group + j`. Lanes past
    /// the last IRK hold zero keys whose results are never read.
    groups: Vec<[Block8; 10]>,
    /// Bytes 13 to 15 of each IRK's last round key: the only ones that reach `ah`'s output.
    last: Vec<[u8; 3]>,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for IrkTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("IrkTable")
            .field("irks", &self.slots.len())
            .finish()
    }
}

impl IrkTable {
    /// Adds the IRK (most significant byte first) of the member in `slot`.
    pub fn push(&mut self, irk: &[u8; 16], slot: Slot) {
        let lane = self.slots.len() % 8;
        if lane == 0 {
            self.groups.push(Default::default());
        }
        let schedule = expand_key(irk);
        if let Some(group) = self.groups.last_mut() {
            for (round, key) in group.iter_mut().zip(&schedule) {
                round[lane].copy_from_slice(key);
            }
        }
        self.last
            .push([schedule[10][13], schedule[10][14], schedule[10][15]]);
        self.slots.push(slot);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Removes every IRK of the member in `slot` (the last IRK moves into its place, so the
    /// groups stay dense).
    pub fn remove_slot(&mut self, slot: Slot) {
        while let Some(pos) = self.slots.iter().position(|s| *s == slot) {
            let last = self.slots.len() - 1;
            if pos != last {
                for round in 0..10 {
                    let key = self.groups[last / 8][round][last % 8];
                    self.groups[pos / 8][round][pos % 8] = key;
                }
                self.last[pos] = self.last[last];
                self.slots[pos] = self.slots[last];
            }
            for round in 0..10 {
                self.groups[last / 8][round][last % 8] = Block::default();
            }
            self.last.pop();
            self.slots.pop();
            if last.is_multiple_of(8) {
                self.groups.pop();
            }
        }
    }

    /// Heap bytes held (round keys, last-round bytes, slots).
    pub fn heap_bytes(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<[Block8; 10]>()
            + self.last.capacity() * 3
            + self.slots.capacity() * 4
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot of the first IRK that resolves `address`.
    pub fn resolve(&self, address: &[u8; 6]) -> Option<Slot> {
        let prand = [address[0], address[1], address[2]];
        let hash = [address[3], address[4], address[5]];
        let mut blocks = Block8::default();
        for (g, group) in self.groups.iter().enumerate() {
            // Round 0 (AddRoundKey) of the block 0^104 ‖ prand: the key with prand folded in.
            for (block, key) in blocks.iter_mut().zip(group[0].iter()) {
                *block = *key;
                block[13] ^= prand[0];
                block[14] ^= prand[1];
                block[15] ^= prand[2];
            }
            for keys in &group[1..] {
                cipher_round_par(&mut blocks, keys);
            }
            // Last round (SubBytes, ShiftRows, AddRoundKey) for output bytes 13, 14 and 15 only:
            // ShiftRows brings them from state bytes 1, 6 and 11.
            let lanes = self.last.iter().zip(&self.slots).skip(g * 8).take(8);
            for (block, (last, slot)) in blocks.iter().zip(lanes) {
                let out = [
                    SBOX[usize::from(block[1])] ^ last[0],
                    SBOX[usize::from(block[6])] ^ last[1],
                    SBOX[usize::from(block[11])] ^ last[2],
                ];
                if out == hash {
                    return Some(*slot);
                }
            }
        }
        None
    }
}

/// The AES-128 key schedule (FIPS 197, 5.2): round keys 0 to 10.
fn expand_key(key: &[u8; 16]) -> [Block; 11] {
    const RCON: [u8; 10] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];
    let mut w = [[0u8; 4]; 44];
    for (word, chunk) in w.iter_mut().zip(key.chunks_exact(4)) {
        word.copy_from_slice(chunk);
    }
    for i in 4..44 {
        let mut t = w[i - 1];
        if i % 4 == 0 {
            t = [
                SBOX[usize::from(t[1])] ^ RCON[i / 4 - 1],
                SBOX[usize::from(t[2])],
                SBOX[usize::from(t[3])],
                SBOX[usize::from(t[0])],
            ];
        }
        let prev = w[i - 4];
        w[i] = [
            prev[0] ^ t[0],
            prev[1] ^ t[1],
            prev[2] ^ t[2],
            prev[3] ^ t[3],
        ];
    }
    let mut out = [Block::default(); 11];
    for (round, words) in out.iter_mut().zip(w.chunks_exact(4)) {
        for (dst, word) in round.chunks_exact_mut(4).zip(words) {
            dst.copy_from_slice(word);
        }
    }
    out
}

/// The AES S-box (FIPS 197, figure 7).
#[rustfmt::skip]
const SBOX: [u8; 256] = [
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
];

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
        let mut irks = IrkTable::default();
        irks.push(&[1u8; 16], 0);
        irks.push(&spec_irk(), 7);
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
    fn removing_a_members_irk_keeps_every_other_resolving() {
        let mut irks = IrkTable::default();
        let keys: Vec<[u8; 16]> = (0..20u8).map(|i| [i + 1; 16]).collect();
        for (i, k) in keys.iter().enumerate() {
            irks.push(k, i as Slot);
        }
        let rpa_of = |k: &[u8; 16]| {
            let h = ah_with_irk(k, [0x41, 2, 3]);
            [0x41, 2, 3, h[0], h[1], h[2]]
        };
        irks.remove_slot(3);
        irks.remove_slot(19);
        irks.remove_slot(0);
        assert_eq!(irks.len(), 17);
        for (i, k) in keys.iter().enumerate() {
            let want = (![0, 3, 19].contains(&i)).then_some(i as Slot);
            assert_eq!(resolve(&rpa_of(k), &irks), want, "irk {i}");
        }
    }

    /// A small deterministic generator for keys and addresses (the test must not depend on luck).
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn the_table_agrees_with_the_aes_crate_for_every_lane_and_a_partial_last_group() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        // 21 keys: two full groups of eight and one of five.
        let keys: Vec<[u8; 16]> = (0..21)
            .map(|_| {
                let mut k = [0u8; 16];
                k[..8].copy_from_slice(&next(&mut seed).to_be_bytes());
                k[8..].copy_from_slice(&next(&mut seed).to_be_bytes());
                k
            })
            .collect();
        for (i, key) in keys.iter().enumerate() {
            // A table holding only this key and the ones before it: whichever key resolves first
            // must be this one for an address made with it.
            let mut table = IrkTable::default();
            for (j, k) in keys[..=i].iter().enumerate() {
                table.push(k, j as Slot + 100);
            }
            for _ in 0..4 {
                let r = next(&mut seed).to_be_bytes();
                let prand = [0x40 | (r[0] & 0x3f), r[1], r[2]];
                let h = ah_with_irk(key, prand);
                let found = table.resolve(&[prand[0], prand[1], prand[2], h[0], h[1], h[2]]);
                let first = keys[..=i]
                    .iter()
                    .position(|k| ah_with_irk(k, prand) == h)
                    .map(|j| j as Slot + 100);
                assert_eq!(found, first, "key {i}");
                assert!(found.is_some());
            }
        }
        assert_eq!(
            IrkTable::default().resolve(&[0x70, 0x81, 0x94, 0x0d, 0xfb, 0xaa]),
            None
        );
    }

    #[test]
    fn the_key_schedule_matches_fips_197() {
        // FIPS 197, Appendix A.1: key 2b7e1516 28aed2a6 abf71588 09cf4f3c, w[40..44].
        let key: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            hex::encode(expand_key(&key)[10]),
            "d014f9a8c9ee2589e13f0cc8b6630ca6"
        );
    }

    #[test]
    fn addresses_whose_random_part_is_all_zeros_or_all_ones_are_not_rpas() {
        assert!(!valid_prand(&[0x40, 0, 0, 1, 2, 3]));
        assert!(!valid_prand(&[0x7f, 0xff, 0xff, 1, 2, 3]));
        assert!(valid_prand(&[0x70, 0x81, 0x94, 0x0d, 0xfb, 0xaa]));
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
