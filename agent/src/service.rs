//! systemd supervision of a running agent (`Type=notify`, `WatchdogSec=`; see
//! systemd/instore-agent.service).
//!
//! In: the notifier from `NOTIFY_SOCKET`, the watchdog period from `WATCHDOG_USEC`, the engine's
//! [`Heartbeat`] and the metrics. Out: `READY=1` (sent by [`crate::runtime::Agent::supervise`]
//! once `runtime::start` has opened the stores and bound the HTTP listener), a `STATUS=` line
//! whenever it changes (checked every [`STATUS_EVERY`]), `WATCHDOG=1` once per period *only if
//! the engine's loop turned since the previous one*, and `STOPPING=1` from `main` on SIGTERM.
//!
//! The keep-alive is tied to the engine, not to this task: the engine bumps the heartbeat on
//! every turn of its loop, and its 1 s tick makes it turn at least once a second while it works.
//! An engine stuck (a hung outbox fsync, a lock, a runaway computation) stops the beats, this
//! task stops the keep-alives, and systemd kills and restarts the agent after `WatchdogSec`.
//! Sends never fail the agent: a notification that could not be sent is logged and skipped.

use std::{sync::Arc, time::Duration};

use instore_sdnotify::{Heartbeat, Notifier, WatchdogGate};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the status line is recomputed (and sent when it changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// The notifier systemd gave this process, if any. A malformed `NOTIFY_SOCKET` is logged and
/// ignored: the agent is more use running unsupervised than not at all.
pub fn notifier_from_env() -> Option<Arc<Notifier>> {
    match Notifier::from_env() {
        Ok(n) => n.map(Arc::new),
        Err(e) => {
            tracing::warn!(error = %e, "NOTIFY_SOCKET unusable: systemd will not hear from the agent");
            None
        }
    }
}

/// What `systemctl status` shows: members cached and present, outbox depth, broker state.
pub fn status_line(metrics: &Metrics, sync_enabled: bool) -> String {
    let broker = match (sync_enabled, metrics.mqtt_connected.get()) {
        (false, _) => "standalone (sync off)",
        (true, 1) => "connected",
        (true, _) => "disconnected",
    };
    format!(
        "{} members cached, {} present; outbox {} events; broker {broker}",
        metrics.members_cached.get(),
        metrics.members_present.get(),
        metrics.outbox_depth.get(),
    )
}

/// Sends status lines (checked every `status_every`) and gated keep-alives until `cancel` fires.
/// `watchdog` is the keep-alive period (half of `WATCHDOG_USEC`); `None`: status lines only.
pub async fn run(
    notifier: Arc<Notifier>,
    watchdog: Option<Duration>,
    status_every: Duration,
    heartbeat: Heartbeat,
    status: impl Fn() -> String,
    cancel: CancellationToken,
) {
    let mut gate = WatchdogGate::new(heartbeat.count());
    // An interval that never fires when there is no watchdog keeps one select below.
    let mut keepalive = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(86_400)));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    let mut status_tick = tokio::time::interval(status_every);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut stalled_periods = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = keepalive.tick(), if watchdog.is_some() => {
                if gate.check(heartbeat.count()) {
                    if stalled_periods > 0 {
                        tracing::info!(stalled_periods, "engine turning again: watchdog keep-alives resume");
                        stalled_periods = 0;
                    }
                    if let Err(e) = notifier.watchdog() {
                        tracing::warn!(error = %e, "watchdog keep-alive not sent");
                    }
                } else {
                    stalled_periods += 1;
                    // The first missed period is already a problem (the engine ticks every
                    // second); the log says so before systemd acts.
                    tracing::warn!(
                        stalled_periods,
                        period_ms = watchdog.map_or(0, |d| d.as_millis() as u64),
                        "engine has not turned since the last watchdog period: keep-alive withheld"
                    );
                }
            }
            _ = status_tick.tick() => {
                let line = status();
                if line != last_status {
                    if let Err(e) = notifier.status(&line) {
                        tracing::debug!(error = %e, "status line not sent");
                    }
                    last_status = line;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every datagram that arrived so far.
    fn drain(sock: &std::os::unix::net::UnixDatagram) -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    }

    fn keepalives(msgs: &[String]) -> usize {
        msgs.iter().filter(|m| m.as_str() == "WATCHDOG=1").count()
    }

    #[tokio::test]
    async fn keep_alives_flow_while_the_heartbeat_moves_and_stop_when_it_wedges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let notifier = Arc::new(Notifier::connect(path.to_str().unwrap()).unwrap());
        let heartbeat = Heartbeat::new();
        let cancel = CancellationToken::new();
        let period = Duration::from_millis(50);
        let task = tokio::spawn(run(
            notifier,
            Some(period),
            period,
            heartbeat.clone(),
            || "status".to_string(),
            cancel.clone(),
        ));

        // A turning engine: a beat every 5 ms for 20 periods.
        let beating = CancellationToken::new();
        let beater = {
            let (hb, stop) = (heartbeat.clone(), beating.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    hb.beat();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        tokio::time::sleep(period * 20).await;
        let turning = drain(&sock);
        assert!(
            keepalives(&turning) >= 10,
            "a turning engine is kept alive every period: {turning:?}"
        );
        assert!(
            turning.contains(&"STATUS=status".to_string()),
            "{turning:?}"
        );

        // The engine wedges: after at most the one period already under way, nothing.
        beating.cancel();
        beater.await.unwrap();
        tokio::time::sleep(period * 2).await;
        drain(&sock);
        tokio::time::sleep(period * 10).await;
        let wedged = drain(&sock);
        assert_eq!(
            keepalives(&wedged),
            0,
            "no keep-alive while the heartbeat stands still: {wedged:?}"
        );

        // One beat: one keep-alive, then silence again.
        heartbeat.beat();
        tokio::time::sleep(period * 4).await;
        assert_eq!(keepalives(&drain(&sock)), 1);

        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn without_a_watchdog_status_lines_are_sent_when_they_change_and_only_then() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let notifier = Arc::new(Notifier::connect(path.to_str().unwrap()).unwrap());
        let depth = Arc::new(AtomicU64::new(3));
        let cancel = CancellationToken::new();
        let every = Duration::from_millis(20);
        let task = tokio::spawn(run(
            notifier,
            None,
            every,
            Heartbeat::new(),
            {
                let depth = depth.clone();
                move || format!("outbox {}", depth.load(Ordering::Relaxed))
            },
            cancel.clone(),
        ));
        tokio::time::sleep(every * 5).await;
        depth.store(4, Ordering::Relaxed);
        tokio::time::sleep(every * 5).await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(
            drain(&sock),
            vec!["STATUS=outbox 3".to_string(), "STATUS=outbox 4".to_string()]
        );
    }
}
