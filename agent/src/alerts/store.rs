//! Alert state on disk (`data_dir/alerts.db`): one row per recent alert — the alert as raised and
//! where it is in its life (status, who took it, outcome, last step time).
//!
//! In: every raise and step the hub applies (after its outbox event committed). Out: the recent
//! alerts at start, so an agent restart neither 404s a tablet acting on an older alert nor leaves
//! an open alert without its ending event. One connection, owned by the hub and used under the
//! hub's lock, so rows are written in the order the hub applied the steps. WAL with
//! `synchronous = FULL`: a step a tablet saw survives a power cut; the cost is one fsync per
//! raise or step, which the store's alert token bucket keeps to a handful a minute.
//!
//! Bounded: closed alerts older than [`KEEP_CLOSED_MS`] go, and beyond [`MAX_ROWS`] the oldest
//! rows not touched in the last hour go too.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use instore_protocol::{AlertOutcomeKind, AlertPriority};
use rusqlite::{Connection, params};

use super::{Alert, AlertState, MemberCard, Status};

/// Closed (finished) alerts are kept this long after their last step.
pub const KEEP_CLOSED_MS: i64 = 24 * 3600 * 1000;
/// Rows kept at most (rows touched in the last hour are kept regardless).
pub const MAX_ROWS: usize = 2000;
/// Prune every this many writes (and at open).
const PRUNE_EVERY: u32 = 100;

const PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;";
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS alerts (
    id            TEXT PRIMARY KEY,
    raised_at_ms  INTEGER NOT NULL,
    rule          TEXT    NOT NULL,
    priority      TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    zone          TEXT    NOT NULL,
    member        TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    taken_by      TEXT,
    taken_by_id   TEXT,
    outcome       TEXT,
    closed_by     TEXT,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_raised ON alerts (raised_at_ms);";
const UPSERT: &str = "INSERT INTO alerts (id, raised_at_ms, rule, priority, message, zone, member,
        status, taken_by, taken_by_id, outcome, closed_by, updated_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
    ON CONFLICT (id) DO UPDATE SET status = ?8, taken_by = ?9, taken_by_id = ?10, outcome = ?11,
        closed_by = ?12, updated_at_ms = ?13";
const SELECT_RECENT: &str =
    "SELECT id, raised_at_ms, rule, priority, message, zone, member, status,
        taken_by, taken_by_id, outcome, closed_by, updated_at_ms
    FROM alerts WHERE updated_at_ms >= ?1 OR status IN ('open', 'taken')
    ORDER BY raised_at_ms DESC, rowid DESC LIMIT ?2";
const PRUNE_CLOSED: &str =
    "DELETE FROM alerts WHERE status NOT IN ('open', 'taken') AND updated_at_ms < ?1";
const PRUNE_EXCESS: &str = "DELETE FROM alerts WHERE updated_at_ms < ?1 AND id NOT IN
    (SELECT id FROM alerts ORDER BY raised_at_ms DESC LIMIT ?2)";

#[derive(Debug, thiserror::Error)]
pub enum AlertStoreError {
    #[error("alert store {path}: {source}")]
    Sql {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("alert store {path}: bad stored value: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The open alert file.
pub struct AlertStore {
    path: PathBuf,
    conn: Mutex<(Connection, u32)>,
}

impl std::fmt::Debug for AlertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertStore")
            .field("path", &self.path)
            .finish()
    }
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Open => "open",
        Status::Taken => "taken",
        Status::Closed => "closed",
        Status::Dismissed => "dismissed",
        Status::Expired => "expired",
    }
}

fn parse_status(s: &str) -> Option<Status> {
    Some(match s {
        "open" => Status::Open,
        "taken" => Status::Taken,
        "closed" => Status::Closed,
        "dismissed" => Status::Dismissed,
        "expired" => Status::Expired,
        _ => return None,
    })
}

type RawRow = (
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

impl AlertStore {
    /// Opens (creating if needed) the file and prunes it.
    pub fn open(path: &Path) -> Result<Self, AlertStoreError> {
        let sql = |source| AlertStoreError::Sql {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(PRAGMAS).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        let store = Self {
            path: path.to_owned(),
            conn: Mutex::new((conn, 0)),
        };
        store.prune(crate::now_ms())?;
        Ok(store)
    }

    fn sql(&self, source: rusqlite::Error) -> AlertStoreError {
        AlertStoreError::Sql {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn json(&self, source: serde_json::Error) -> AlertStoreError {
        AlertStoreError::Json {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Connection, u32)> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the alert as it stands now (inserting it on its raise).
    pub fn save(&self, alert: &Alert, state: &AlertState) -> Result<(), AlertStoreError> {
        let priority = serde_json::to_string(&alert.priority).map_err(|e| self.json(e))?;
        let member = serde_json::to_string(&alert.member).map_err(|e| self.json(e))?;
        let outcome = state
            .outcome
            .map(|o| serde_json::to_string(&o))
            .transpose()
            .map_err(|e| self.json(e))?;
        let mut guard = self.lock();
        guard
            .0
            .execute(
                UPSERT,
                params![
                    alert.id,
                    alert.raised_at_ms,
                    alert.rule,
                    priority,
                    alert.message,
                    alert.zone,
                    member,
                    status_str(state.status),
                    state.taken_by,
                    state.taken_by_id,
                    outcome,
                    state.closed_by,
                    state.updated_at_ms,
                ],
            )
            .map_err(|e| self.sql(e))?;
        guard.1 += 1;
        let due = guard.1.is_multiple_of(PRUNE_EVERY);
        drop(guard);
        if due {
            self.prune(crate::now_ms())?;
        }
        Ok(())
    }

    /// Drops finished alerts older than [`KEEP_CLOSED_MS`] and rows beyond [`MAX_ROWS`].
    pub fn prune(&self, now_ms: i64) -> Result<usize, AlertStoreError> {
        let guard = self.lock();
        let closed = guard
            .0
            .execute(PRUNE_CLOSED, params![now_ms - KEEP_CLOSED_MS])
            .map_err(|e| self.sql(e))?;
        let excess = guard
            .0
            .execute(
                PRUNE_EXCESS,
                params![now_ms - 3600 * 1000, i64::try_from(MAX_ROWS).unwrap_or(0)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(closed + excess)
    }

    /// Alerts still open or taken, and finished ones whose last step is at most `window_ms` old;
    /// the newest `limit`, oldest raise first. Rows that no longer decode are skipped and logged.
    pub fn recent(
        &self,
        now_ms: i64,
        window_ms: i64,
        limit: usize,
    ) -> Result<Vec<(Alert, AlertState)>, AlertStoreError> {
        let guard = self.lock();
        let mut stmt = guard.0.prepare(SELECT_RECENT).map_err(|e| self.sql(e))?;
        let rows: Vec<RawRow> = stmt
            .query_map(
                params![now_ms - window_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                        r.get(12)?,
                    ))
                },
            )
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        let mut out: Vec<_> = rows
            .into_iter()
            .filter_map(|row| {
                let id = row.0.clone();
                let decoded = decode(row);
                if decoded.is_none() {
                    tracing::warn!(alert = %id, "stored alert does not decode; skipped");
                }
                decoded
            })
            .collect();
        out.reverse();
        Ok(out)
    }
}

fn decode(r: RawRow) -> Option<(Alert, AlertState)> {
    let priority: AlertPriority = serde_json::from_str(&r.3).ok()?;
    let member: MemberCard = serde_json::from_str(&r.6).ok()?;
    let outcome: Option<AlertOutcomeKind> = match r.10 {
        Some(o) => Some(serde_json::from_str(&o).ok()?),
        None => None,
    };
    Some((
        Alert {
            id: r.0,
            seq: 0,
            raised_at_ms: r.1,
            rule: r.2,
            // alerts.db keeps no campaign: after a restart the card shows none (the
            // alert_raised event at head office still names it).
            campaign: None,
            priority,
            message: r.4,
            zone: r.5,
            member,
        },
        AlertState {
            status: parse_status(&r.7)?,
            taken_by: r.8,
            taken_by_id: r.9,
            outcome,
            closed_by: r.11,
            updated_at_ms: r.12,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::tests::alert;

    fn state(status: Status, at: i64) -> AlertState {
        AlertState {
            status,
            updated_at_ms: at,
            ..AlertState::default()
        }
    }

    #[test]
    fn an_alert_and_its_steps_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.db");
        let now = crate::now_ms();
        {
            let store = AlertStore::open(&path).unwrap();
            let mut a = alert("a");
            a.raised_at_ms = now - 10;
            store.save(&a, &state(Status::Open, now - 10)).unwrap();
            let taken = AlertState {
                status: Status::Closed,
                taken_by: Some("till 1".into()),
                taken_by_id: Some("t1".into()),
                outcome: Some(AlertOutcomeKind::Purchased),
                closed_by: Some("till 1".into()),
                updated_at_ms: now,
            };
            store.save(&a, &taken).unwrap();
            let mut b = alert("b");
            b.raised_at_ms = now - 5;
            store.save(&b, &state(Status::Open, now - 5)).unwrap();
        }
        let store = AlertStore::open(&path).unwrap();
        let rows = store.recent(now, KEEP_CLOSED_MS, 10).unwrap();
        let view: Vec<_> = rows
            .iter()
            .map(|(a, s)| (a.id.as_str(), s.status, s.taken_by_id.as_deref(), s.outcome))
            .collect();
        assert_eq!(
            view,
            [
                (
                    "a",
                    Status::Closed,
                    Some("t1"),
                    Some(AlertOutcomeKind::Purchased)
                ),
                ("b", Status::Open, None, None)
            ]
        );
        assert_eq!(rows[0].0.member, alert("a").member);
        assert_eq!(rows[0].0.priority, AlertPriority::High);
    }

    #[test]
    fn old_finished_alerts_are_pruned_and_open_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = AlertStore::open(&dir.path().join("alerts.db")).unwrap();
        let now = 10 * KEEP_CLOSED_MS;
        let old = now - KEEP_CLOSED_MS - 1;
        store
            .save(&alert("done"), &state(Status::Expired, old))
            .unwrap();
        store
            .save(&alert("open"), &state(Status::Open, old))
            .unwrap();
        store
            .save(&alert("fresh"), &state(Status::Closed, now))
            .unwrap();
        assert_eq!(store.prune(now).unwrap(), 1);
        let ids: Vec<_> = store
            .recent(now, KEEP_CLOSED_MS, 10)
            .unwrap()
            .into_iter()
            .map(|(a, _)| a.id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"open".to_string()) && ids.contains(&"fresh".to_string()));
    }

    #[test]
    fn the_row_count_is_bounded_but_recent_rows_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = AlertStore::open(&dir.path().join("alerts.db")).unwrap();
        let now = 10 * KEEP_CLOSED_MS;
        for i in 0..(MAX_ROWS + 5) {
            let mut a = alert(&format!("a{i}"));
            a.raised_at_ms = i as i64;
            // Open alerts two hours old: not finished, but past the last hour.
            store
                .save(&a, &state(Status::Open, now - 7_200_000))
                .unwrap();
        }
        let mut recent = alert("recent-old-raise");
        recent.raised_at_ms = -1;
        store.save(&recent, &state(Status::Taken, now)).unwrap();
        store.prune(now).unwrap();
        let rows = store.recent(now, KEEP_CLOSED_MS, 10 * MAX_ROWS).unwrap();
        assert_eq!(rows.len(), MAX_ROWS + 1);
        assert_eq!(rows[0].0.id, "recent-old-raise");
        assert!(!rows.iter().any(|(a, _)| a.id == "a0"));
    }
}
