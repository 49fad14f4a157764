//! The engine: the one task that owns identify, presence and react state.
//!
//! In: sightings from the sources (bounded channel; sources drop and count when it is full) and
//! [`Control`] messages. Out: events appended to the outbox, then — only once committed — alerts to
//! the hub and the presence view to the web. It does no other I/O.

use std::sync::Arc;

use crate::cache::MemberIndex;

/// Control messages to the engine from other tasks.
#[derive(Debug)]
pub enum Control {
    /// A new member set: swapped in whole.
    Members(Arc<MemberIndex>),
    /// Re-read the rules file.
    ReloadRules,
}
