//! Rotating member IDs at the gateway (the scheme is specified in
//! [`instore_protocol::rotating`]): per window, a table ID → member built from the day keys in
//! the member index, so resolving an advert is one lookup however many members there are.
//!
//! Tables exist for the current window and one either side (clock skew of the member's phone); on
//! a window change only the new neighbour is computed — one HMAC per member with a key for that
//! day — and the oldest dropped.

use foldhash::HashMap;
use instore_protocol::rotating::{RotatingId, day_of_window, rotating_id};

use crate::cache::{MemberIndex, Slot};

/// IDs are uniformly random HMAC outputs, so their first 8 bytes key the table without losing
/// anything that matters: an accidental match among `3n` entries needs ~2^64/3n tries, and forging
/// a member's ID needs their day key either way.
fn short(id: &RotatingId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[..8]);
    u64::from_be_bytes(b)
}

#[derive(Debug, Default)]
pub struct RotatingTables {
    /// (window, ID → slot) for at most three windows.
    tables: Vec<(u32, HashMap<u64, Slot>)>,
}

impl RotatingTables {
    /// Builds the table of one window.
    pub fn build(index: &MemberIndex, window: u32) -> HashMap<u64, Slot> {
        let day = day_of_window(window);
        let mut map = HashMap::default();
        for e in index.day_keys_for(day) {
            map.insert(short(&rotating_id(&e.key, window)), e.slot);
        }
        map
    }

    /// Makes sure the tables of `window - 1 ..= window + 1` exist, reusing those already built.
    pub fn prepare(&mut self, index: &MemberIndex, window: u32) {
        let wanted = [window.saturating_sub(1), window, window.saturating_add(1)];
        self.tables.retain(|(w, _)| wanted.contains(w));
        for w in wanted {
            if !self.tables.iter().any(|(have, _)| *have == w) {
                self.tables.push((w, Self::build(index, w)));
            }
        }
    }

    /// The member advertising `id` around `window` (tables must have been prepared for it).
    pub fn lookup(&self, id: &RotatingId) -> Option<Slot> {
        let k = short(id);
        self.tables.iter().find_map(|(_, t)| t.get(&k).copied())
    }

    /// Windows currently prepared.
    pub fn windows(&self) -> Vec<u32> {
        let mut w: Vec<u32> = self.tables.iter().map(|(w, _)| *w).collect();
        w.sort_unstable();
        w
    }

    pub fn clear(&mut self) {
        self.tables.clear();
    }
}
