//! Which senders of adverts (remote receivers, the store's forwarding gateways) have gone
//! quiet. Pure: times are the agent's monotonic ms; the caller reports what changes.

use std::{collections::HashMap, hash::Hash};

#[derive(Debug)]
struct Sender {
    last_ms: u64,
    silent: bool,
}

#[derive(Debug)]
pub struct Silence<K> {
    senders: HashMap<K, Sender>,
}

impl<K> Default for Silence<K> {
    fn default() -> Self {
        Self {
            senders: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone + Ord> Silence<K> {
    /// A sender that must be heard: its silence counts from `now_ms` (configured receivers).
    pub fn expect(&mut self, id: K, now_ms: u64) {
        self.senders.entry(id).or_insert(Sender {
            last_ms: now_ms,
            silent: false,
        });
    }

    /// `id` was heard; true when it had been reported silent (it has recovered).
    pub fn heard(&mut self, id: &K, now_ms: u64) -> bool {
        match self.senders.get_mut(id) {
            Some(s) => {
                s.last_ms = s.last_ms.max(now_ms);
                std::mem::replace(&mut s.silent, false)
            }
            None => {
                self.senders.insert(
                    id.clone(),
                    Sender {
                        last_ms: now_ms,
                        silent: false,
                    },
                );
                false
            }
        }
    }

    /// Senders not heard for more than `after_ms` that were not reported yet, sorted; each is
    /// reported once until heard again.
    pub fn check(&mut self, now_ms: u64, after_ms: u64) -> Vec<K> {
        let mut quiet: Vec<K> = Vec::new();
        for (id, s) in &mut self.senders {
            if !s.silent && now_ms.saturating_sub(s.last_ms) > after_ms {
                s.silent = true;
                quiet.push(id.clone());
            }
        }
        quiet.sort();
        quiet
    }

    pub fn silent(&self) -> usize {
        self.senders.values().filter(|s| s.silent).count()
    }

    pub fn contains(&self, id: &K) -> bool {
        self.senders.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    pub fn clear(&mut self) {
        self.senders.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expected_sender_never_heard_goes_silent_and_recovers_once() {
        let mut s = Silence::default();
        s.expect("entrance".to_string(), 0);
        assert!(s.check(5_000, 5_000).is_empty());
        assert_eq!(s.check(5_001, 5_000), ["entrance".to_string()]);
        assert!(s.check(9_000, 5_000).is_empty(), "reported once");
        assert_eq!(s.silent(), 1);
        assert!(s.heard(&"entrance".to_string(), 9_000), "recovered");
        assert!(!s.heard(&"entrance".to_string(), 9_100));
        assert!(
            !s.heard(&"till".to_string(), 9_100),
            "a new sender is not a recovery"
        );
        assert_eq!((s.silent(), s.len()), (0, 2));
    }
}
