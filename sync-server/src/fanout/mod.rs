//! Fan-out: members to the stores that hold them, as per-channel change streams.
//!
//! In: members as head office now sees them (imported records plus computed fields), the
//! `[membership]` policy, the clock. Out: channel changes committed beside their cause
//! ([`place`]), the notices that tell stores to fetch them ([`notifier`]), the short-lived keys
//! of each day and EID epoch ([`keys`]), the changes a gateway asks for ([`stream`]) and the
//! channel snapshots for gateways too far behind ([`snapshots`]). [`gateway_form`] decides what a
//! gateway may hold (never a long-term secret, never a member without presence consent);
//! [`policy`] which stores hold whom.

pub mod gateway_form;
pub mod keys;
pub mod legacy;
pub mod notifier;
pub mod place;
pub mod policy;
pub mod snapshots;
pub mod stream;

pub use place::{FanoutSettings, place};
pub use policy::MembershipConfig;
