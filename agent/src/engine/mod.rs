//! The engine: the one task that owns identify, presence and react state.
//!
//! In: sightings from the sources (bounded channel; sources drop and count when it is full),
//! [`Control`] messages, and its own clock ticks. Out: events appended to the outbox, then — only
//! once they are committed — alerts to the hub and the presence view to the web.
//!
//! [`Core`] is the functional part (no I/O, time passed in); [`run`] is the shell around it.

mod clock;
mod core;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use self::{
    clock::Clock,
    core::{Core, LookupResult, Output, QrLookup},
};
use crate::{
    alerts::AlertHub,
    cache::{IndexPatch, Members},
    metrics::Metrics,
    outbox::{NewEvent, Outbox},
    presence::PresentMember,
    react::Rules,
    sources::Sighting,
};

/// Control messages to the engine from other tasks.
#[derive(Debug)]
pub enum Control {
    /// A new member set: swapped in whole (start, a snapshot, a local import).
    Members(Box<Members>),
    /// One applied change response: the index is patched in place, then `applied` answers (the
    /// downlink waits for it before its next write, so the engine's disk view never runs ahead
    /// of its index).
    Patch {
        patch: Box<IndexPatch>,
        applied: tokio::sync::oneshot::Sender<()>,
    },
    /// Head office's answer about a scanned code's member.
    QrLookedUp {
        lookup: Box<QrLookup>,
        result: LookupResult,
    },
    /// Re-read the rules file.
    ReloadRules,
    /// Head office's campaigns for this store changed: rebuild the rules with them.
    Campaigns(Box<instore_protocol::campaign::CampaignSet>),
    /// A scanner read a code (not yet checked: the engine identifies it).
    QrScan {
        zone: Arc<str>,
        payload: String,
        /// Agent monotonic milliseconds.
        at_ms: u64,
    },
}

/// Everything the engine task talks to.
pub struct EngineIo {
    pub sightings: mpsc::Receiver<Sighting>,
    pub control: mpsc::Receiver<Control>,
    pub outbox: Outbox,
    pub alerts: AlertHub,
    pub presence: watch::Sender<Arc<Vec<PresentMember>>>,
    pub metrics: Metrics,
    pub rules_path: Option<PathBuf>,
    /// The campaigns the rules were built with (rebuilt with them on every reload).
    pub campaigns: instore_protocol::campaign::CampaignSet,
    /// MQTT/webhook reaction actions, handed over after their round's events commit.
    pub actions: crate::react::ActionQueue,
    /// Head-office lookups of scanned codes (bounded; `None` when sync is off).
    pub lookups: Option<mpsc::Sender<QrLookup>>,
    /// Bumped on every turn of the loop: systemd's watchdog keep-alives go only while it moves
    /// (`service.rs`), so a wedged engine gets the agent restarted.
    pub heartbeat: instore_sdnotify::Heartbeat,
}

/// Most sightings handled before their events are committed together.
const SIGHTINGS_PER_ROUND: usize = 512;
/// How often the rules file is checked for changes.
const RULES_POLL: Duration = Duration::from_secs(2);

/// Runs the engine until `cancel` fires or the sighting channel closes.
pub async fn run(mut core: Core, clock: Clock, mut io: EngineIo, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(SIGHTINGS_PER_ROUND);
    let mut out = Vec::new();
    core.set_wall_origin(clock.wall_ms(0));
    io.metrics.rules_loaded.set(core.rules_len() as i64);
    let mut rules_watch = io.rules_path.as_deref().map(crate::react::RulesWatch::new);
    let mut rules_poll = tokio::time::interval(RULES_POLL);
    rules_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Once per turn; the 1 s tick below makes a working engine turn at least once a second.
        io.heartbeat.beat();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(ctl) = io.control.recv() => match ctl {
                Control::Members(members) => {
                    let (n, version) = (members.index.len(), members.index.version());
                    core.set_members(*members, clock.now_ms(), &mut out);
                    tracing::info!(members = n, version, "member set swapped in");
                }
                Control::Patch { patch, applied } => {
                    core.apply_patch(&patch, clock.now_ms(), &mut out);
                    let _ = applied.send(());
                }
                Control::QrLookedUp { lookup, result } => {
                    core.on_lookup(&lookup, result, clock.wall_ms(lookup.at_ms), &mut out);
                }
                Control::ReloadRules => {
                    // Take the file as it is now, so the poll does not reload it a second time.
                    if let Some(w) = rules_watch.as_mut() {
                        w.changed();
                    }
                    reload_rules(&mut core, &io);
                }
                Control::Campaigns(set) => {
                    io.campaigns = *set;
                    reload_rules(&mut core, &io);
                }
                Control::QrScan { zone, payload, at_ms } => {
                    core.on_qr(&zone, &payload, at_ms, clock.wall_ms(at_ms), &mut out);
                }
            },
            n = io.sightings.recv_many(&mut buf, SIGHTINGS_PER_ROUND) => {
                if n == 0 {
                    break;
                }
                for s in buf.drain(..) {
                    core.on_sighting(&s, &mut out);
                }
            }
            _ = tick.tick() => core.on_tick(clock.now_ms(), &mut out),
            _ = rules_poll.tick(), if rules_watch.is_some() => {
                if rules_watch.as_mut().is_some_and(|w| w.changed()) {
                    tracing::info!("rules file changed");
                    reload_rules(&mut core, &io);
                }
            }
        }
        dispatch_lookups(&mut core, &mut out, &clock, &io);
        if !out.is_empty() {
            deliver(&mut out, &clock, &io).await;
        }
        if core.take_presence_changed() {
            let view = core.present(|ms| clock.wall_ms(ms));
            io.metrics.members_present.set(view.len() as i64);
            io.presence.send_replace(Arc::new(view));
        }
    }
    tracing::debug!("engine stopped");
}

/// Hands scanned codes of members not held here to the lookup task; without one (sync off) or
/// with its queue full, the scan is refused at once, with that reason.
fn dispatch_lookups(core: &mut Core, out: &mut Vec<Output>, clock: &Clock, io: &EngineIo) {
    let mut refused = Vec::new();
    out.retain(|o| {
        let Output::Lookup(l) = o else { return true };
        match &io.lookups {
            Some(tx) => {
                if tx.try_send((**l).clone()).is_err() {
                    refused.push(((**l).clone(), "busy"));
                }
            }
            None => refused.push(((**l).clone(), "offline")),
        }
        false
    });
    for (l, reason) in refused {
        core.on_lookup(
            &l,
            LookupResult::Refused(reason),
            clock.wall_ms(l.at_ms),
            out,
        );
    }
}

fn reload_rules(core: &mut Core, io: &EngineIo) {
    let metrics = &io.metrics;
    let campaigns = &io.campaigns.campaigns;
    if io.rules_path.is_none() && campaigns.is_empty() && core.rules_len() == 0 {
        return;
    }
    match Rules::load_with(io.rules_path.as_deref(), campaigns) {
        Ok((rules, skipped)) => {
            for why in &skipped {
                metrics.campaigns_refused.inc();
                tracing::warn!(error = %why, "campaign left out: this gateway cannot run it");
            }
            tracing::info!(
                rules = rules.len(),
                campaigns = campaigns.len() - skipped.len(),
                "rules reloaded"
            );
            metrics.rules_loaded.set(rules.len() as i64);
            metrics.rules_reloads.inc();
            core.replace_rules(rules);
        }
        // The old rules stay in force: a typo must not silence the store. The error names the
        // rule and line.
        Err(e) => {
            metrics.rules_reload_failures.inc();
            tracing::warn!(error = %e, "rules reload failed; keeping the previous rules");
        }
    }
}

/// Commits the round's events to the outbox, then hands committed alerts to the clerks and
/// reaction actions to the action task.
async fn deliver(out: &mut Vec<Output>, clock: &Clock, io: &EngineIo) {
    let mut events = Vec::with_capacity(out.len());
    let mut alerts = Vec::new();
    let mut actions = Vec::new();
    for o in out.drain(..) {
        match o {
            Output::Event { at_ms, body } => events.push(NewEvent {
                at_ms: clock.wall_ms(at_ms),
                body,
            }),
            Output::Alert {
                at_ms,
                body,
                mut alert,
            } => {
                // The core works in monotonic time; tablets and alert expiry need the wall clock.
                alert.raised_at_ms = clock.wall_ms(at_ms);
                events.push(NewEvent {
                    at_ms: clock.wall_ms(at_ms),
                    body,
                });
                alerts.push(alert);
            }
            Output::Action(action) => actions.push(action),
            // Dispatched before delivery.
            Output::Lookup(_) => {}
        }
    }
    if events.is_empty() {
        for a in actions {
            io.actions.offer(*a);
        }
        return;
    }
    for attempt in 1..=3u32 {
        match io.outbox.append(events.clone()).await {
            Ok(_) => {
                for a in alerts {
                    io.metrics.alerts_raised.inc();
                    io.alerts.publish(*a);
                }
                for a in actions {
                    io.actions.offer(*a);
                }
                return;
            }
            Err(e) => {
                // The outbox is the record of truth: an alert nobody can account for later is
                // not raised. Operators must look at the disk.
                tracing::error!(error = %e, attempt, events = events.len(), "outbox append failed");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
    tracing::error!(
        events = events.len(),
        "events dropped after repeated outbox failures"
    );
}
