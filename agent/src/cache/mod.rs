//! The member cache: what head office knows about members, kept on the gateway.
//!
//! In: member snapshots from head office (downlink) and local NDJSON imports. Out: an immutable
//! [`MemberIndex`] the identify stage looks adverts up in. The SQLite file survives reboots so a
//! gateway that boots without internet still recognises members.
//!
//! Members without presence consent are stored (they are head office's data) but not indexed: their
//! devices look like strangers' and are at most counted anonymously.

mod index;
mod store;

pub use index::{DayKeyEntry, EidKeyEntry, Member, MemberIndex, Slot};
pub use store::{CacheError, ImportReport, MemberCache};
