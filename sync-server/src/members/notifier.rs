//! Tells each store's gateways the current member-set version with a retained
//! [`MembersNotice`] on `topics::members(store)`.
//!
//! One task owns the record of which store was told which version, fed by a closed enum of
//! inputs: no locks. A store is told after every import that changed the set, and the first time
//! one of its gateways shows up (status or batch) while it has not yet been told the current
//! version. The retained message reaches gateways that connect later on their own.

use std::collections::HashMap;

use instore_protocol::{MembersNotice, SCHEMA_VERSION, topics};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Inputs of the notifier task.
#[derive(Debug, Clone)]
pub enum NoticeInput {
    /// A gateway of this store sent something.
    StoreSeen(String),
    /// An import committed `version`; `stores` are all stores known at that moment.
    Imported { version: u64, stores: Vec<String> },
    /// The broker had no session for head office: retained notices may be lost with it.
    BrokerSessionFresh,
}

/// The notifier's state: pure, so its decisions test without a broker.
#[derive(Debug, Default)]
pub struct Notices {
    version: u64,
    told: HashMap<String, u64>,
}

impl Notices {
    pub fn new(version: u64) -> Self {
        Self {
            version,
            told: HashMap::new(),
        }
    }

    /// Applies an input; returns the notices to publish.
    pub fn apply(&mut self, input: NoticeInput) -> Vec<MembersNotice> {
        let stores: Vec<String> = match input {
            NoticeInput::StoreSeen(s) => vec![s],
            NoticeInput::Imported { version, stores } => {
                self.version = self.version.max(version);
                stores
            }
            NoticeInput::BrokerSessionFresh => {
                let known: Vec<String> = self.told.keys().cloned().collect();
                self.told.clear();
                known
            }
        };
        // Version 0 means no member was ever imported: nothing to fetch yet.
        if self.version == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for s in stores {
            if self.told.get(&s) != Some(&self.version) {
                self.told.insert(s.clone(), self.version);
                out.push(MembersNotice {
                    v: SCHEMA_VERSION,
                    store_id: s,
                    version: self.version,
                    heads: Default::default(),
                });
            }
        }
        out
    }
}

/// Runs the notifier until its input channel closes.
pub async fn run(
    mut inputs: mpsc::Receiver<NoticeInput>,
    mut state: Notices,
    client: AsyncClient,
    metrics: Metrics,
) {
    while let Some(input) = inputs.recv().await {
        for notice in state.apply(input) {
            let payload = match serde_json::to_vec(&notice) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a members notice");
                    continue;
                }
            };
            match client
                .publish(
                    topics::members(&notice.store_id),
                    QoS::AtLeastOnce,
                    true,
                    payload,
                )
                .await
            {
                Ok(()) => {
                    metrics.members_notices_sent.inc();
                    tracing::info!(store = %notice.store_id, version = notice.version, "members notice published");
                }
                Err(e) => {
                    tracing::warn!(store = %notice.store_id, error = %e, "cannot publish a members notice")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(n: &[MembersNotice]) -> Vec<(&str, u64)> {
        n.iter().map(|n| (n.store_id.as_str(), n.version)).collect()
    }

    #[test]
    fn a_store_is_told_once_per_version() {
        let mut s = Notices::new(3);
        assert_eq!(
            stores(&s.apply(NoticeInput::StoreSeen("a".into()))),
            [("a", 3)]
        );
        assert!(s.apply(NoticeInput::StoreSeen("a".into())).is_empty());
        let n = s.apply(NoticeInput::Imported {
            version: 4,
            stores: vec!["a".into(), "b".into()],
        });
        assert_eq!(stores(&n), [("a", 4), ("b", 4)]);
    }

    #[test]
    fn nothing_is_announced_before_the_first_import() {
        let mut s = Notices::new(0);
        assert!(s.apply(NoticeInput::StoreSeen("a".into())).is_empty());
        let n = s.apply(NoticeInput::Imported {
            version: 1,
            stores: vec![],
        });
        assert!(n.is_empty());
        assert_eq!(
            stores(&s.apply(NoticeInput::StoreSeen("a".into()))),
            [("a", 1)]
        );
    }

    #[test]
    fn a_fresh_broker_session_repeats_every_notice() {
        let mut s = Notices::new(2);
        s.apply(NoticeInput::StoreSeen("a".into()));
        assert_eq!(
            stores(&s.apply(NoticeInput::BrokerSessionFresh)),
            [("a", 2)]
        );
    }
}
