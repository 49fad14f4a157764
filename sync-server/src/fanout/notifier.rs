//! Tells each store's gateways that their channels moved, with a retained [`MembersNotice`] on
//! `topics::members(store)` carrying the head of every channel the store subscribes to.
//!
//! One task owns the record of channel heads and of what each store was told, fed by a closed
//! enum of inputs: no locks. Inputs that arrive together are applied together before anything
//! is published, so an import touching thousands of members (or a chain-wide change reaching
//! every store) costs one notice per store, not one per change. A store is told when one of its
//! channels moved, and the first time one of its gateways shows up while it has not been told
//! the current heads. The retained message reaches gateways that connect later on their own;
//! gateways also ask on a timer, so a lost notice delays a change, never loses it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use instore_protocol::{MembersNotice, SCHEMA_VERSION, changes::Heads, topics};

use crate::ingest::decode::MessageAuth;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;

use super::policy::MembershipConfig;
use crate::{
    metrics::Metrics,
    store::{Db, Store, StoreError, channels, channels::Touched, queries},
};

/// How long the notifier gathers further inputs after one arrives before it publishes.
const GATHER: Duration = Duration::from_millis(100);

/// Inputs of the notifier task.
#[derive(Debug, Clone)]
pub enum NoticeInput {
    /// A gateway of this store sent something.
    StoreSeen(String),
    /// Channels moved to these heads (committed).
    Heads(Touched),
    /// The broker had no session for head office: retained notices may be lost with it.
    BrokerSessionFresh,
    /// The chain's campaign counter (campaign versions stored) is now this.
    Campaigns(u64),
}

/// The notifier's state: pure, so its decisions test without a broker.
#[derive(Debug)]
pub struct Notices {
    membership: MembershipConfig,
    heads: BTreeMap<String, u64>,
    stores: BTreeSet<String>,
    /// The campaign counter every notice carries.
    campaigns: u64,
    told: HashMap<String, (Heads, u64)>,
}

impl Notices {
    /// Starts from the channels' heads and the stores known at start-up; every known store is
    /// told on the first input (a restarted embedded broker has lost its retained messages).
    pub fn new(membership: MembershipConfig, heads: Touched, stores: Vec<String>) -> Self {
        Self {
            membership,
            heads,
            stores: stores.into_iter().collect(),
            campaigns: 0,
            told: HashMap::new(),
        }
    }

    /// Starts from this campaign counter too.
    pub fn with_campaigns(mut self, campaigns: u64) -> Self {
        self.campaigns = campaigns;
        self
    }

    /// The notice `store` should hold now.
    pub fn notice(&self, store: &str) -> MembersNotice {
        let heads: Heads = self
            .membership
            .subscriptions(store)
            .into_iter()
            .filter_map(|c| self.heads.get(&c).map(|h| (c, *h)))
            .collect();
        MembersNotice {
            v: SCHEMA_VERSION,
            store_id: store.to_string(),
            version: heads.values().sum(),
            heads,
            campaigns: self.campaigns,
        }
    }

    /// Applies inputs; returns the notices to publish (one per store at most).
    pub fn apply(&mut self, inputs: impl IntoIterator<Item = NoticeInput>) -> Vec<MembersNotice> {
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        for input in inputs {
            match input {
                NoticeInput::StoreSeen(s) => {
                    self.stores.insert(s.clone());
                    candidates.insert(s);
                }
                NoticeInput::Heads(t) => {
                    for (channel, head) in t {
                        let h = self.heads.entry(channel.clone()).or_default();
                        *h = (*h).max(head);
                        candidates.extend(
                            self.stores
                                .iter()
                                .filter(|s| self.membership.subscribes(s, &channel))
                                .cloned(),
                        );
                    }
                }
                NoticeInput::BrokerSessionFresh => {
                    self.told.clear();
                    candidates.extend(self.stores.iter().cloned());
                }
                // Any store may take a campaign: the notice tells them all to ask, and head
                // office answers each with its own set (or nothing, if it did not change).
                NoticeInput::Campaigns(c) if c > self.campaigns => {
                    self.campaigns = c;
                    candidates.extend(self.stores.iter().cloned());
                }
                NoticeInput::Campaigns(_) => {}
            }
        }
        let mut out = Vec::new();
        for s in candidates {
            let n = self.notice(&s);
            // Nothing to fetch yet (no channel of the store has a change, no campaign).
            if n.heads.is_empty() && n.campaigns == 0 {
                continue;
            }
            let told = (n.heads.clone(), n.campaigns);
            if self.told.get(&s) != Some(&told) {
                self.told.insert(s, told);
                out.push(n);
            }
        }
        out
    }

    /// Every known store, for the first round after start-up.
    pub fn known_stores(&self) -> Vec<String> {
        self.stores.iter().cloned().collect()
    }
}

/// Runs the notifier until its input channel closes.
pub async fn run(
    mut inputs: mpsc::Receiver<NoticeInput>,
    mut state: Notices,
    client: AsyncClient,
    metrics: Metrics,
    auth: MessageAuth,
) {
    let first: Vec<NoticeInput> = state
        .known_stores()
        .into_iter()
        .map(NoticeInput::StoreSeen)
        .collect();
    publish(&client, &metrics, &auth, state.apply(first)).await;
    while let Some(input) = inputs.recv().await {
        let mut batch = vec![input];
        let deadline = tokio::time::Instant::now() + GATHER;
        while let Ok(Some(i)) = tokio::time::timeout_at(deadline, inputs.recv()).await {
            batch.push(i);
        }
        publish(&client, &metrics, &auth, state.apply(batch)).await;
    }
}

/// What the notifier starts from, and re-reads with several instances: every channel's head,
/// every store head office knows and the campaign counter, read together.
pub fn heads_and_stores(db: &mut Db) -> Result<(Touched, Vec<String>, u64), StoreError> {
    let mut tx = db.read_transaction()?;
    let heads = channels::heads(&mut tx)?;
    let stores = queries::stores_in(&mut tx)?;
    let campaigns = crate::campaigns::counter(&mut tx)?;
    tx.commit()?;
    Ok((heads, stores, campaigns))
}

/// With several head-office instances: feeds this instance's notifier the heads and stores
/// in the database every `every`, so that a change committed by another instance (an import
/// through its API, its compute pass) is announced from here too, and a retained notice this
/// instance published earlier is never left standing with older heads. Heads only grow, so every
/// instance converges on the same notice. Ends on `cancel` or when the notifier is gone.
pub async fn follow_database(
    store: Store,
    notices: mpsc::Sender<NoticeInput>,
    every: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let read = store.call(heads_and_stores).await;
        let (heads, stores, campaigns) = match read {
            Ok(x) => x,
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the channels' heads; retrying");
                continue;
            }
        };
        let inputs = stores
            .into_iter()
            .map(NoticeInput::StoreSeen)
            .chain([NoticeInput::Heads(heads), NoticeInput::Campaigns(campaigns)]);
        for input in inputs {
            if notices.send(input).await.is_err() {
                return;
            }
        }
    }
}

/// Publishes each notice retained, sealed under its store's notice key.
async fn publish(
    client: &AsyncClient,
    metrics: &Metrics,
    auth: &MessageAuth,
    notices: Vec<MembersNotice>,
) {
    for notice in notices {
        let topic = topics::members(&notice.store_id);
        let sealed = serde_json::to_vec(&notice)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                instore_protocol::auth::seal(&auth.store_key(&notice.store_id), &topic, &json)
                    .map_err(|e| e.to_string())
            });
        let payload = match sealed {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a members notice");
                continue;
            }
        };
        match client.publish(topic, QoS::AtLeastOnce, true, payload).await {
            Ok(()) => {
                metrics.members_notices_sent.inc();
                tracing::debug!(store = %notice.store_id, version = notice.version, "members notice published");
            }
            Err(e) => {
                tracing::warn!(store = %notice.store_id, error = %e, "cannot publish a members notice")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::policy::StoreGroup;

    fn stores(n: &[MembersNotice]) -> Vec<(&str, u64)> {
        n.iter().map(|n| (n.store_id.as_str(), n.version)).collect()
    }

    fn heads(items: &[(&str, u64)]) -> Touched {
        items.iter().map(|(c, h)| (c.to_string(), *h)).collect()
    }

    fn membership() -> MembershipConfig {
        MembershipConfig {
            groups: vec![StoreGroup {
                name: "north".into(),
                stores: vec!["a".into()],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_store_is_told_its_channels_heads_once_per_change() {
        let mut s = Notices::new(membership(), heads(&[("chain", 3)]), vec![]);
        let n = s.apply([NoticeInput::StoreSeen("a".into())]);
        assert_eq!(stores(&n), [("a", 3)]);
        assert_eq!(n[0].heads, heads(&[("chain", 3)]));
        assert!(s.apply([NoticeInput::StoreSeen("a".into())]).is_empty());
        s.apply([NoticeInput::StoreSeen("b".into())]);
        // group:north reaches only a; chain reaches both; a store:b change only b.
        let n = s.apply([NoticeInput::Heads(heads(&[
            ("group:north", 2),
            ("store:b", 1),
        ]))]);
        assert_eq!(stores(&n), [("a", 5), ("b", 4)]);
        assert_eq!(n[0].heads, heads(&[("chain", 3), ("group:north", 2)]));
    }

    #[test]
    fn nothing_is_announced_before_any_channel_has_a_change() {
        let mut s = Notices::new(membership(), Touched::new(), vec!["a".into()]);
        assert!(s.apply([NoticeInput::StoreSeen("a".into())]).is_empty());
        assert_eq!(
            stores(&s.apply([NoticeInput::Heads(heads(&[("chain", 1)]))])),
            [("a", 1)]
        );
    }

    #[test]
    fn many_inputs_at_once_make_one_notice_per_store() {
        let mut s = Notices::new(membership(), Touched::new(), vec!["a".into(), "b".into()]);
        let inputs = (1..=100).map(|h| NoticeInput::Heads(heads(&[("chain", h)])));
        assert_eq!(stores(&s.apply(inputs)), [("a", 100), ("b", 100)]);
    }

    #[test]
    fn a_new_campaign_version_tells_every_store_once_even_without_member_changes() {
        let mut s = Notices::new(membership(), Touched::new(), vec!["a".into(), "b".into()])
            .with_campaigns(2);
        let n = s.apply([NoticeInput::StoreSeen("a".into())]);
        assert_eq!(
            (n.len(), n[0].campaigns),
            (1, 2),
            "announced though no channel moved"
        );
        let n = s.apply([NoticeInput::Campaigns(3)]);
        assert_eq!(stores(&n), [("a", 0), ("b", 0)]);
        assert!(n.iter().all(|n| n.campaigns == 3));
        // The same counter again (another instance's read), or an older one: nothing.
        assert!(s.apply([NoticeInput::Campaigns(3)]).is_empty());
        assert!(s.apply([NoticeInput::Campaigns(1)]).is_empty());
        // Member changes keep the counter.
        let n = s.apply([NoticeInput::Heads(heads(&[("chain", 1)]))]);
        assert!(n.iter().all(|n| n.campaigns == 3 && n.version == 1));
    }

    #[test]
    fn a_fresh_broker_session_repeats_every_notice() {
        let mut s = Notices::new(membership(), heads(&[("chain", 2)]), vec![]);
        s.apply([NoticeInput::StoreSeen("a".into())]);
        assert_eq!(
            stores(&s.apply([NoticeInput::BrokerSessionFresh])),
            [("a", 2)]
        );
    }
}
