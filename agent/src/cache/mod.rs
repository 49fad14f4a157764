//! The member cache: what head office knows about the store's members, kept on the gateway.
//!
//! In: change responses and channel snapshots from head office (the downlink), local NDJSON
//! imports. Out: the engine's [`Members`]: a compact in-memory [`MemberIndex`] (identifier →
//! slot) that identification looks adverts up in, and a [`MemberSource`] the engine reads a
//! matched member's record from (`members.db`, through a small bounded cache). The SQLite file
//! survives reboots, so a gateway that boots without internet still recognises members.
//!
//! Members without presence consent are neither stored nor indexed: their devices look like
//! strangers' and are at most counted anonymously.

pub mod apply;
mod db;
mod index;
mod member;
mod reader;
mod source;
mod store;
mod table;

pub use apply::{ApplyStats, LEGACY_CHANNEL, LOCAL_CHANNEL};
pub use index::{IndexBuilder, IndexPatch, MemberIndex, PatchOp};
pub use member::{Member, Slot};
pub use reader::{SqliteKeys, SqliteMembers};
pub use source::{
    DeviceKey, MemberSource, Members, MemoryKeys, MemoryMembers, RECORD_CACHE, RecordRead, Records,
    WindowKeys,
};
pub use store::{CacheError, ImportReport, MAX_LINE_BYTES, MemberCache, SnapshotFormatError};
pub use table::IdTable;
