//! A store's change streams as `GET /api/stores/{store}/changes` serves them: for each channel
//! the store subscribes to, what follows the gateway's cursor, or the snapshot to take instead.
//!
//! In: the store's subscriptions, the gateway's cursor, the settings. Out: a plan per channel
//! (changes, or "needs a snapshot" with the channel's head and floor), built in one read
//! transaction so every channel is read at the same moment.

use instore_protocol::changes::{ChannelChanges, Cursor, MAX_CHANGES_PER_RESPONSE};

use super::gateway_form;
use crate::store::{Db, StoreError, channels};

/// What to send for one channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelPlan {
    Changes(ChannelChanges),
    /// The gateway must take a snapshot: it is behind the pruned history, too far behind, or
    /// ahead of head office (a database restored from a backup).
    Snapshot {
        channel: String,
        from: u64,
        head: u64,
        floor: u64,
    },
}

/// Plans the answer for `subscriptions` from `cursor`, at most `limit` changes in all.
pub fn plan(
    db: &mut Db,
    subscriptions: &[String],
    cursor: &Cursor,
    limit: usize,
    snapshot_after: u64,
) -> Result<Vec<ChannelPlan>, StoreError> {
    let mut tx = db.read_transaction()?;
    let mut budget = limit.clamp(1, MAX_CHANGES_PER_RESPONSE);
    let mut out = Vec::with_capacity(subscriptions.len());
    for channel in subscriptions {
        let since = cursor.version(channel);
        let (head, floor) = channels::head_and_floor(&mut tx, channel)?;
        let behind = head.saturating_sub(since);
        if since < floor || since > head || behind > snapshot_after {
            out.push(ChannelPlan::Snapshot {
                channel: channel.clone(),
                from: since,
                head,
                floor,
            });
            continue;
        }
        if budget == 0 || behind == 0 {
            out.push(ChannelPlan::Changes(ChannelChanges {
                channel: channel.clone(),
                from: since,
                to: since,
                head,
                snapshot: None,
                changes: Vec::new(),
            }));
            continue;
        }
        let c = channels::changes_since(
            &mut tx,
            channel,
            since,
            budget,
            &gateway_form::short_lived_keys,
        )?;
        budget = budget.saturating_sub(usize::try_from(c.to - c.from).unwrap_or(usize::MAX));
        out.push(ChannelPlan::Changes(c));
    }
    tx.commit()?;
    Ok(out)
}
