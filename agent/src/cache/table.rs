//! Compact identifier → slot tables for a million members.
//!
//! [`IdTable`]: open addressing with linear probing over two parallel arrays (8-byte keys, 4-byte
//! slots), sized to the member count (no power-of-two rounding: the index is `hash × capacity >>
//! 64`), deleted from by backward shift (no tombstones), so 12 bytes × 1/0.8 per identifier. A
//! key is a `u64` the index encodes (kind tag in the top bits, never 0, so 0 marks an empty
//! entry). A stranger's probe reads the key array only.
//!
//! In front of it sits a blocked Bloom filter (one 64-bit word per probe, three bits, about one
//! byte per key): most strangers' addresses are refused after one read of a word in a ~1 MB array
//! that stays in cache, before the 12 MB table is touched. Unlike an xor or binary-fuse filter it
//! takes inserts in place, so a change batch never rebuilds it; removals leave bits set (a few
//! more false positives, which the table then refuses) until the next resize rebuilds it.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;

use super::Slot;

/// Highest share of entries in use; above it the table grows.
const MAX_LOAD: f64 = 0.85;
/// Share the table is sized for when it is (re)built.
const BUILD_LOAD: f64 = 0.75;

#[derive(Clone)]
pub struct IdTable {
    keys: Vec<u64>,
    slots: Vec<Slot>,
    len: usize,
    hasher: RandomState,
    bloom: Vec<u64>,
    /// Removals since the filter was built (their bits are still set).
    stale: usize,
}

impl std::fmt::Debug for IdTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTable")
            .field("len", &self.len)
            .field("capacity", &self.keys.len())
            .finish()
    }
}

impl Default for IdTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

#[inline]
fn fastrange(h: u64, n: usize) -> usize {
    ((u128::from(h) * n as u128) >> 64) as usize
}

impl IdTable {
    /// A table that holds `n` keys without growing.
    pub fn with_capacity(n: usize) -> Self {
        let cap = ((n as f64 / BUILD_LOAD).ceil() as usize).max(16);
        Self {
            keys: vec![0; cap],
            slots: vec![0; cap],
            len: 0,
            hasher: RandomState::default(),
            bloom: vec![0; (n / 8).max(8)],
            stale: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held (both arrays and the filter), for the benchmarks.
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity() * 8 + self.slots.capacity() * 4 + self.bloom.capacity() * 8
    }

    #[inline]
    fn hash(&self, key: u64) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn bloom_bits(h: u64) -> u64 {
        (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63)) | (1u64 << ((h >> 12) & 63))
    }

    /// The slot holding `key`.
    #[inline]
    pub fn get(&self, key: u64) -> Option<Slot> {
        if self.len == 0 {
            return None;
        }
        let h = self.hash(key);
        let bits = Self::bloom_bits(h);
        if self.bloom[fastrange(h.rotate_left(32), self.bloom.len())] & bits != bits {
            return None;
        }
        let cap = self.keys.len();
        let mut i = fastrange(h, cap);
        loop {
            let k = self.keys[i];
            if k == key {
                return Some(self.slots[i]);
            }
            if k == 0 {
                return None;
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// Inserts `key` → `slot` unless the key is taken; returns whether it was inserted.
    pub fn insert(&mut self, key: u64, slot: Slot) -> bool {
        debug_assert!(key != 0, "0 marks an empty entry");
        if key == 0 {
            return false;
        }
        if (self.len + 1) as f64 > self.keys.len() as f64 * MAX_LOAD {
            self.resize(self.len + 1);
        }
        let h = self.hash(key);
        let cap = self.keys.len();
        let mut i = fastrange(h, cap);
        loop {
            match self.keys[i] {
                0 => break,
                k if k == key => return false,
                _ => {
                    i += 1;
                    if i == cap {
                        i = 0;
                    }
                }
            }
        }
        self.keys[i] = key;
        self.slots[i] = slot;
        self.len += 1;
        let w = fastrange(h.rotate_left(32), self.bloom.len());
        self.bloom[w] |= Self::bloom_bits(h);
        true
    }

    /// Removes `key` if it maps to `slot` (another member's claim on it stays).
    pub fn remove(&mut self, key: u64, slot: Slot) -> bool {
        if self.len == 0 || key == 0 {
            return false;
        }
        let cap = self.keys.len();
        let mut i = fastrange(self.hash(key), cap);
        loop {
            match self.keys[i] {
                0 => return false,
                k if k == key => break,
                _ => {
                    i += 1;
                    if i == cap {
                        i = 0;
                    }
                }
            }
        }
        if self.slots[i] != slot {
            return false;
        }
        // Backward shift: move later entries of the run into the hole when their home position
        // does not lie cyclically in (hole, their position].
        let mut hole = i;
        let mut j = i;
        loop {
            j += 1;
            if j == cap {
                j = 0;
            }
            let k = self.keys[j];
            if k == 0 {
                break;
            }
            let home = fastrange(self.hash(k), cap);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.keys[hole] = k;
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.keys[hole] = 0;
        self.slots[hole] = 0;
        self.len -= 1;
        self.stale += 1;
        if self.stale > self.len / 4 + 1024 {
            self.rebuild_bloom();
        }
        true
    }

    fn rebuild_bloom(&mut self) {
        self.bloom.iter_mut().for_each(|w| *w = 0);
        let words = self.bloom.len();
        for &k in self.keys.iter().filter(|k| **k != 0) {
            let h = self.hash(k);
            self.bloom[fastrange(h.rotate_left(32), words)] |= Self::bloom_bits(h);
        }
        self.stale = 0;
    }

    /// Rebuilds for `n` keys at the build load (a change batch that outgrows the table).
    fn resize(&mut self, n: usize) {
        let mut next = IdTable::with_capacity(n.max(self.len));
        next.hasher = self.hasher;
        for (k, s) in self.keys.iter().zip(&self.slots) {
            if *k != 0 {
                next.insert(*k, *s);
            }
        }
        *self = next;
    }

    /// Every (key, slot) held, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Slot)> + '_ {
        self.keys
            .iter()
            .zip(&self.slots)
            .filter(|(k, _)| **k != 0)
            .map(|(k, s)| (*k, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_inserted_are_found_and_removed_ones_are_not_whatever_the_order() {
        let mut t = IdTable::with_capacity(10);
        let keys: Vec<u64> = (1..=5_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
            .collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(t.insert(*k, i as Slot));
        }
        assert!(!t.insert(keys[0], 99), "the first claim keeps a key");
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.get(*k), Some(i as Slot));
        }
        assert!(!t.remove(keys[1], 77), "only the holder's claim is removed");
        for (i, k) in keys.iter().enumerate().step_by(2) {
            assert!(t.remove(*k, i as Slot));
        }
        for (i, k) in keys.iter().enumerate() {
            let want = (i % 2 == 1).then_some(i as Slot);
            assert_eq!(t.get(*k), want, "key {i}");
        }
        assert_eq!(t.len(), 2_500);
        assert_eq!(t.get(12345 << 1), None);
    }
}
