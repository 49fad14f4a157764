//! Head office computes the Data (CIDR's D): from purchases and visits to the pyramid level and
//! tier, the lifecycle stage, the category groups, the expected next visit and whether a member
//! is overdue, plus the BG/NBD model behind P(alive) and the expectation for members with
//! little history of their own.
//!
//! In: rows (per-member facts, spends, activity days) and a date. Out: values. This is the
//! functional core of the compute stage: no I/O, no database, no clock, no logging; storage,
//! schedules and fan-out of changes live in the shell around it, which passes `today` in and
//! stores [`member::Computed`] (its [`member::Previous`] is the next run's input).
//!
//! Flow: [`member::compute_all`] (full pass: [`pyramid`] thresholds over everyone, then each
//! member) or [`member::compute_member`] (one member against stored thresholds) → per member:
//! [`pyramid`] level → [`tier`] → [`groups`] → [`bgnbd`] P(alive) and expected purchases →
//! [`next_visit`] → [`stage`]. [`member::fit_model`] fits the BG/NBD model over the base; the
//! shell runs it on its schedule and passes the parameters in. [`config`] is `[compute]`.
//!
//! [`run`] is the imperative shell: it alone reads and writes the database, on its own
//! connection and thread, and decides when the core runs (incrementally within a second of a
//! change, in full once a day).

pub mod bgnbd;
pub mod config;
pub(crate) mod days;
pub mod groups;
pub mod member;
pub mod next_visit;
pub mod pyramid;
pub mod run;
pub mod stage;
pub mod tier;
pub mod uplift;

pub use bgnbd::{BgNbdError, BgNbdParams, Customer, Fit, FitOptions};
pub use config::ComputeConfig;
pub use groups::CategorySpend;
pub use member::{
    ActivityDay, Computed, FullPass, LevelMove, MemberFacts, Previous, compute_all, compute_member,
    fit_model, purchasing_referrals,
};
pub use next_visit::{Method, NextVisit};
pub use pyramid::{Level, PyramidRow, PyramidThresholds};
pub use stage::Stage;
pub use tier::{TierRun, TierState, next_tier};
