//! Holdout groups: which members a rule leaves alone, so head office can compare what happened
//! to the members it reacted to with what happened to comparable members it did not.
//!
//! The group is a pure function of the rule's name and the member id — no state, no randomness
//! at the gateway — so one member is in the same group at every gateway of the chain, after
//! every restart and every campaign version (the version is not hashed: re-publishing a rule
//! must not reshuffle who is in the control group). Head office can recompute any member's group
//! from the same two strings.
//!
//! `bucket` is the first 8 bytes of SHA-256 over a domain tag, the rule name and the member id
//! (NUL-separated, so `("ab", "c")` and `("a", "bc")` differ), read big-endian as a fraction of
//! 2^64; a member is held out when that fraction is below the rule's share.

use sha2::{Digest, Sha256};

/// Versioned, so a change of the assignment is a new tag rather than a silent reshuffle.
const DOMAIN: &[u8] = b"instore-holdout/v1";

/// Largest share of eligible members a rule may hold out: a control group bigger than the
/// treated group measures nothing better and costs the store most of its reactions.
pub const MAX_SHARE: f64 = 0.5;

/// The member's position in `[0, 1)` for this rule.
pub fn bucket(rule: &str, member_id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update([0]);
    h.update(rule.as_bytes());
    h.update([0]);
    h.update(member_id.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    // 53 significant bits: exactly representable, so the fraction is never rounded up to 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// True when `rule` keeps `member_id` in its control group. `share` outside `0..=MAX_SHARE`
/// (or NaN) holds out nobody: a rules file with such a share is refused before it gets here.
pub fn held_out(rule: &str, member_id: &str, share: f64) -> bool {
    share > 0.0 && share <= MAX_SHARE && bucket(rule, member_id) < share
}

/// Checks a rule's `holdout` share: a fraction in `0..=0.5`.
pub fn check_share(share: f64) -> Result<(), String> {
    if share.is_finite() && (0.0..=MAX_SHARE).contains(&share) {
        Ok(())
    } else {
        Err(format!(
            "holdout must be a share between 0 and {MAX_SHARE} (e.g. 0.1 for 10 %), not {share}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("M{i:07}"))
    }

    #[test]
    fn one_member_is_always_in_the_same_group() {
        for m in members(200) {
            let a = held_out("vip-arrival", &m, 0.2);
            assert_eq!(a, held_out("vip-arrival", &m, 0.2), "{m}");
            // A bigger share only adds members: whoever is held out at 10 % still is at 20 %.
            if held_out("vip-arrival", &m, 0.1) {
                assert!(a, "{m}");
            }
        }
        // Pinned (Python: hashlib.sha256(b"instore-holdout/v1\0vip-arrival\0M0000001")): a change
        // of the hash would reshuffle every running experiment.
        assert_eq!(
            format!("{:.6}", bucket("vip-arrival", "M0000001")),
            "0.950365"
        );
    }

    /// The share held out stays within a binomial bound: 100,000 members at p = 0.1 have
    /// σ = √(n·p·(1−p)) ≈ 94.9; the count must be within 5σ of n·p. The data set is fixed, so
    /// this is a check of the hash's uniformity, not a test that can flake.
    #[test]
    fn the_share_held_out_is_within_a_binomial_bound() {
        let n = 100_000usize;
        for (rule, p) in [("vip-arrival", 0.1), ("linen-fan", 0.05), ("overdue", 0.5)] {
            let held = members(n).filter(|m| held_out(rule, m, p)).count() as f64;
            let (mean, sigma) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
            assert!(
                (held - mean).abs() <= 5.0 * sigma,
                "{rule}: {held} held out of {n}, expected {mean} ± {}",
                5.0 * sigma
            );
        }
    }

    /// Two rules' groups are independent: the members held out by both are ≈ p² of everyone,
    /// so one rule's control group is not the other's.
    #[test]
    fn different_rules_hold_out_different_members() {
        let n = 100_000usize;
        let both = members(n)
            .filter(|m| held_out("a", m, 0.2) && held_out("b", m, 0.2))
            .count() as f64;
        let (mean, sigma) = (n as f64 * 0.04, (n as f64 * 0.04 * 0.96).sqrt());
        assert!((both - mean).abs() <= 5.0 * sigma, "{both} in both groups");
    }

    #[test]
    fn shares_outside_the_range_hold_out_nobody_and_are_refused() {
        for bad in [-0.1, 0.51, 1.0, f64::NAN, f64::INFINITY] {
            assert!(check_share(bad).is_err(), "{bad}");
            assert!(members(1000).all(|m| !held_out("r", &m, bad)), "{bad}");
        }
        assert!(check_share(0.0).is_ok() && check_share(0.5).is_ok());
        assert!(members(1000).all(|m| !held_out("r", &m, 0.0)));
    }
}
