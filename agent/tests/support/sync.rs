//! The agent's sync task (uplink and downlink) in-process, on the test's outbox and member
//! cache, stopped through its cancellation token; the engine's end of its channel stays with the
//! test (kept open so the task never sees the engine gone).

use std::time::Duration;

use instore_agent::{
    cache::MemberCache,
    config::SyncConfig,
    engine::Control,
    metrics::Metrics,
    outbox::Outbox,
    sync::{self, SyncContext},
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub struct SyncTask {
    /// What the sync task hands the engine (new member sets).
    pub engine: mpsc::Receiver<Control>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Spawns the sync task for `store`/`gateway` with `cfg`.
pub fn spawn_sync(
    store: &str,
    gateway: &str,
    cfg: SyncConfig,
    outbox: &Outbox,
    cache: &MemberCache,
    metrics: &Metrics,
) -> SyncTask {
    let (engine_tx, engine) = mpsc::channel(8);
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    sync::spawn(
        SyncContext {
            store_id: store.into(),
            gateway_id: gateway.into(),
            cfg,
            outbox: outbox.clone(),
            cache: cache.clone(),
            engine: engine_tx,
            metrics: metrics.clone(),
            snapshot_dir: cache.path().with_file_name("snapshots"),
            campaigns_path: cache.path().with_file_name("campaigns.json"),
            campaigns_tag: instore_protocol::campaign::CampaignSet::new(Vec::new()).tag,
            lookups: None,
            downlink: true,
        },
        &tracker,
        cancel.clone(),
    )
    .unwrap();
    tracker.close();
    SyncTask {
        engine,
        tracker,
        cancel,
    }
}

impl SyncTask {
    /// Cancels the task; it must have stopped within `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.cancel.cancel();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .expect("sync stops within the grace period");
    }
}
