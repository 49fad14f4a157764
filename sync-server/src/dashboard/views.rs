//! What the dashboard shows, read from the database: pure queries, one per view, each returning
//! what the page draws (so a test can compare the page with the API number for number).
//!
//! "Today" and "this month" are UTC days, as head office computes everything (`compute::days`);
//! a store's own local day is the gateway's business.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{
    compute::pyramid::Level,
    params,
    store::{
        StoreError,
        db::{Db, Sql},
    },
};

const DAY_MS: i64 = 86_400_000;

/// Lifecycle stages in funnel order.
pub const STAGES: [&str; 6] = ["acquire", "activate", "stick", "value", "refer", "lapsed"];

/// The first day (days since 1970-01-01) of the UTC month holding `day`.
pub fn month_start(day: i64) -> i64 {
    let date = crate::compute::days::date(day);
    match date {
        Some(d) => day - i64::from(d.day()) + 1,
        None => day,
    }
}

// --- level moves ----------------------------------------------------------------------------

const LEVEL_MOVES: Sql = Sql::same(
    "SELECT from_value, to_value, COUNT(*) FROM member_transitions
    WHERE field = 'level' AND day >= ?1 AND from_value IS NOT NULL
    GROUP BY from_value, to_value",
);

/// Per level, members who moved into it from a lower level (`up`) or a higher one (`down`)
/// since `since_day`. A member who moved twice counts twice: these are moves, not members.
pub fn level_moves(db: &mut Db, since_day: i64) -> Result<HashMap<Level, (u64, u64)>, StoreError> {
    let rank = |l: Level| {
        Level::ALL
            .iter()
            .position(|x| *x == l)
            .unwrap_or(Level::ALL.len())
    };
    let mut out: HashMap<Level, (u64, u64)> = HashMap::new();
    for r in db.query(&LEVEL_MOVES, params![since_day])? {
        let (Some(from), Some(to)) = (Level::parse(r.str(0)?), Level::parse(r.str(1)?)) else {
            continue;
        };
        let n = r.u64(2)?;
        let slot = out.entry(to).or_default();
        // ALL is best first: a smaller index is a higher level.
        match rank(to).cmp(&rank(from)) {
            std::cmp::Ordering::Less => slot.0 += n,
            std::cmp::Ordering::Greater => slot.1 += n,
            std::cmp::Ordering::Equal => {}
        }
    }
    Ok(out)
}

// --- Pareto ---------------------------------------------------------------------------------

/// Points on the Pareto curve.
pub const PARETO_POINTS: i64 = 20;

const PARETO: Sql = Sql::same(
    "SELECT bucket, COUNT(*), CAST(COALESCE(SUM(spend), 0) AS BIGINT) FROM (
        SELECT CASE WHEN spend_12m > 0 THEN spend_12m ELSE 0 END AS spend,
            NTILE(?1) OVER (ORDER BY spend_12m DESC, member_id) AS bucket
        FROM members) AS ranked
    GROUP BY bucket ORDER BY bucket",
);

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ParetoPoint {
    /// The best-spending share of members, 0..1.
    pub members_share: f64,
    /// Their share of the chain's 12-month spend, 0..1.
    pub spend_share: f64,
}

/// Cumulative share of spend against share of members, best spenders first, from (0, 0) to
/// (1, 1) in [`PARETO_POINTS`] steps (fewer for a base smaller than that).
pub fn pareto(db: &mut Db) -> Result<Vec<ParetoPoint>, StoreError> {
    let rows = db.query(&PARETO, params![PARETO_POINTS])?;
    let mut buckets = Vec::with_capacity(rows.len());
    for r in rows {
        buckets.push((r.u64(1)?, r.i64(2)?.max(0)));
    }
    let members: u64 = buckets.iter().map(|b| b.0).sum();
    let spend: i64 = buckets.iter().map(|b| b.1).sum();
    let mut out = vec![ParetoPoint {
        members_share: 0.0,
        spend_share: 0.0,
    }];
    if members == 0 {
        return Ok(out);
    }
    let (mut m, mut s) = (0u64, 0i64);
    for (n, sp) in buckets {
        m += n;
        s += sp;
        out.push(ParetoPoint {
            members_share: m as f64 / members as f64,
            spend_share: if spend > 0 {
                s as f64 / spend as f64
            } else {
                0.0
            },
        });
    }
    Ok(out)
}

// --- funnel ---------------------------------------------------------------------------------

const STAGE_COUNTS: Sql = Sql::per_backend(
    "SELECT json_extract(computed_json, '$.stage') AS s, COUNT(*) FROM members
    WHERE computed_json IS NOT NULL GROUP BY s",
    "SELECT computed_json::jsonb ->> 'stage' AS s, COUNT(*) FROM members
    WHERE computed_json IS NOT NULL GROUP BY s",
);

const STAGE_MOVES: Sql = Sql::same(
    "SELECT from_value, to_value, COUNT(*) FROM member_transitions
    WHERE field = 'stage' AND day >= ?1 GROUP BY from_value, to_value
    ORDER BY COUNT(*) DESC, from_value, to_value",
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageCount {
    pub stage: &'static str,
    pub members: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageMove {
    /// `None`: a member computed for the first time.
    pub from: Option<String>,
    pub to: String,
    pub members: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Funnel {
    /// First day of the month the transitions are counted from (`YYYY-MM-DD`).
    pub since: String,
    pub stages: Vec<StageCount>,
    pub transitions: Vec<StageMove>,
}

pub fn funnel(db: &mut Db, today: i64) -> Result<Funnel, StoreError> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for r in db.query(&STAGE_COUNTS, params![])? {
        if let Some(s) = r.opt_string(0)? {
            counts.insert(s, r.u64(1)?);
        }
    }
    let since = month_start(today);
    let mut transitions = Vec::new();
    for r in db.query(&STAGE_MOVES, params![since])? {
        transitions.push(StageMove {
            from: r.opt_string(0)?,
            to: r.string(1)?,
            members: r.u64(2)?,
        });
    }
    Ok(Funnel {
        since: day_string(since),
        stages: STAGES
            .iter()
            .map(|s| StageCount {
                stage: s,
                members: counts.get(*s).copied().unwrap_or(0),
            })
            .collect(),
        transitions,
    })
}

fn day_string(day: i64) -> String {
    crate::compute::days::date(day).map_or_else(String::new, |d| d.to_string())
}

// --- overdue --------------------------------------------------------------------------------

/// Members overdue today: `overdue_from` on or before today. Their store is their home store,
/// else the store they visited last. `?1` today, `?2` store filter, `?3` tier filter (NULL: any).
const OVERDUE: Sql = Sql::per_backend(
    "SELECT member_id, display_name, tier, store_id, last_visit, expected, overdue_from FROM (
        SELECT m.member_id AS member_id, json_extract(m.record_json, '$.display_name') AS display_name,
            m.tier AS tier,
            COALESCE(m.home_store, (SELECT s.store_id FROM member_stores s
                WHERE s.member_id = m.member_id ORDER BY s.last_day DESC, s.store_id LIMIT 1))
                AS store_id,
            json_extract(m.computed_json, '$.last_visit') AS last_visit,
            json_extract(m.computed_json, '$.expected_next_visit') AS expected,
            json_extract(m.computed_json, '$.overdue_from') AS overdue_from
        FROM members m WHERE m.computed_json IS NOT NULL AND m.presence = 1) AS o
    WHERE overdue_from IS NOT NULL AND overdue_from <= ?1
      AND (?2 IS NULL OR store_id = ?2) AND (?3 IS NULL OR tier = ?3)
    ORDER BY overdue_from, member_id",
    "SELECT member_id, display_name, tier, store_id, last_visit, expected, overdue_from FROM (
        SELECT m.member_id AS member_id, m.record_json::jsonb ->> 'display_name' AS display_name,
            m.tier AS tier,
            COALESCE(m.home_store, (SELECT s.store_id FROM member_stores s
                WHERE s.member_id = m.member_id ORDER BY s.last_day DESC, s.store_id LIMIT 1))
                AS store_id,
            m.computed_json::jsonb ->> 'last_visit' AS last_visit,
            m.computed_json::jsonb ->> 'expected_next_visit' AS expected,
            m.computed_json::jsonb ->> 'overdue_from' AS overdue_from
        FROM members m WHERE m.computed_json IS NOT NULL AND m.presence = 1) AS o
    WHERE overdue_from IS NOT NULL AND overdue_from <= CAST(?1 AS TEXT)
      AND (CAST(?2 AS TEXT) IS NULL OR store_id = ?2) AND (CAST(?3 AS TEXT) IS NULL OR tier = ?3)
    ORDER BY overdue_from, member_id",
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverdueMember {
    pub member_id: String,
    pub display_name: String,
    pub tier: String,
    /// Home store, else the store last visited; `None` for a member never seen in a store.
    pub store_id: Option<String>,
    pub last_visit: Option<String>,
    /// When head office expected them back.
    pub expected_next_visit: Option<String>,
    /// Days past the expected date, today.
    pub overdue_days: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverdueGroup {
    pub store_id: Option<String>,
    pub tier: String,
    pub members: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overdue {
    pub today: String,
    /// Every overdue member matching the filters.
    pub total: u64,
    /// Per store and tier, largest first.
    pub groups: Vec<OverdueGroup>,
    /// The longest overdue first, at most the requested number.
    pub members: Vec<OverdueMember>,
}

/// Overdue members (optionally of one store and/or tier): counts per store and tier, and the
/// first `limit` members, longest overdue first.
pub fn overdue(
    db: &mut Db,
    today: i64,
    store: Option<&str>,
    tier: Option<&str>,
    limit: usize,
) -> Result<Overdue, StoreError> {
    let today_s = day_string(today);
    let mut groups: BTreeMap<(Option<String>, String), u64> = BTreeMap::new();
    let mut members = Vec::new();
    let mut total = 0u64;
    let mut tx = db.read_transaction()?;
    tx.for_each(&OVERDUE, params![today_s.as_str(), store, tier], |r| {
        total += 1;
        let store_id = r.opt_string(3)?;
        let tier = r.string(2)?;
        *groups.entry((store_id.clone(), tier.clone())).or_default() += 1;
        if members.len() < limit {
            let from = r.opt_string(6)?;
            let overdue_days = from
                .as_deref()
                .and_then(|f| f.parse::<jiff::civil::Date>().ok())
                .map_or(0, |f| today - crate::compute::days::number(f) + 1);
            members.push(OverdueMember {
                member_id: r.string(0)?,
                display_name: r.opt_string(1)?.unwrap_or_default(),
                tier,
                store_id,
                last_visit: r.opt_string(4)?,
                expected_next_visit: r.opt_string(5)?,
                overdue_days,
            });
        }
        Ok(())
    })?;
    tx.commit()?;
    let mut groups: Vec<OverdueGroup> = groups
        .into_iter()
        .map(|((store_id, tier), members)| OverdueGroup {
            store_id,
            tier,
            members,
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.members));
    Ok(Overdue {
        today: today_s,
        total,
        groups,
        members,
    })
}

// --- stores now and today -------------------------------------------------------------------

/// An open visit older than this is a departure the gateway never reported, not a presence.
const OPEN_VISIT_MAX_MS: i64 = 12 * 3_600_000;

const PRESENT_BY_TIER: Sql = Sql::same(
    "SELECT v.store_id, COALESCE(m.tier, ''), COUNT(*) FROM visits v
    LEFT JOIN members m ON m.member_id = v.member_id
    WHERE v.departed_ms IS NULL AND v.arrived_ms >= ?1
    GROUP BY v.store_id, COALESCE(m.tier, '')",
);
const VISITS_TODAY: Sql = Sql::same(
    "SELECT store_id, COUNT(*), CAST(COALESCE(AVG(dwell_s), 0) AS BIGINT),
        CAST(COALESCE(SUM(CASE WHEN dwell_s IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT)
    FROM visits WHERE arrived_ms >= ?1 GROUP BY store_id",
);
const ALERTS_TODAY: Sql = Sql::per_backend(
    "SELECT store_id,
        COUNT(DISTINCT CASE WHEN type = 'alert_raised' THEN json_extract(body_json, '$.alert_id') END),
        COUNT(DISTINCT CASE WHEN type = 'alert_taken' THEN json_extract(body_json, '$.alert_id') END),
        COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
            AND json_extract(body_json, '$.outcome') = 'purchased'
            THEN json_extract(body_json, '$.alert_id') END),
        COUNT(CASE WHEN type = 'held_out' THEN 1 END)
    FROM events WHERE at_ms >= ?1
      AND type IN ('alert_raised', 'alert_taken', 'alert_outcome', 'held_out')
    GROUP BY store_id",
    "SELECT store_id,
        COUNT(DISTINCT CASE WHEN type = 'alert_raised' THEN body_json::jsonb ->> 'alert_id' END),
        COUNT(DISTINCT CASE WHEN type = 'alert_taken' THEN body_json::jsonb ->> 'alert_id' END),
        COUNT(DISTINCT CASE WHEN type = 'alert_outcome'
            AND body_json::jsonb ->> 'outcome' = 'purchased'
            THEN body_json::jsonb ->> 'alert_id' END),
        COUNT(CASE WHEN type = 'held_out' THEN 1 END)
    FROM events WHERE at_ms >= ?1
      AND type IN ('alert_raised', 'alert_taken', 'alert_outcome', 'held_out')
    GROUP BY store_id",
);
const FLEET: Sql = Sql::same(
    "SELECT g.store, COUNT(*), CAST(COALESCE(SUM(g.online), 0) AS BIGINT),
        CAST(COALESCE(MAX(g.last_seen_ms), 0) AS BIGINT),
        CAST(COALESCE(SUM(g.bad_payloads), 0) AS BIGINT),
        CAST(COALESCE(SUM((SELECT COUNT(*) FROM shed_ranges s WHERE s.gateway_id = g.id)), 0)
            AS BIGINT),
        CAST(COALESCE(SUM((SELECT SUM(s.count) FROM shed_ranges s WHERE s.gateway_id = g.id)), 0)
            AS BIGINT),
        CAST(COALESCE(SUM(g.outbox_depth), 0) AS BIGINT),
        CAST(COALESCE(SUM(CASE WHEN g.outbox_depth IS NULL THEN 0 ELSE 1 END), 0) AS BIGINT)
    FROM gateways g GROUP BY g.store",
);

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreToday {
    pub store_id: String,
    /// Members in the store now, by tier (`""`: a member no longer in the set).
    pub present_by_tier: BTreeMap<String, u64>,
    pub present: u64,
    /// Visits that started today.
    pub visits_today: u64,
    /// Mean dwell of today's finished visits, seconds.
    pub avg_dwell_s: u64,
    pub alerts_raised: u64,
    pub alerts_taken: u64,
    /// Alerts whose outcome a clerk recorded as a purchase.
    pub alerts_converted: u64,
    /// Members a rule held out today (control groups).
    pub held_out: u64,
    pub gateways: u64,
    pub gateways_online: u64,
    /// Latest message from any of the store's gateways (Unix ms; 0: never).
    pub last_seen_ms: i64,
    pub bad_payloads: u64,
    /// Ranges the store's gateways shed over their outbox quota, and the events in them.
    pub shed_ranges: u64,
    pub events_shed: u64,
    /// Events waiting in the store's gateways' outboxes, as their latest batches reported;
    /// `None` while no gateway of the store has reported one (older releases).
    pub outbox_depth: Option<u64>,
}

/// Every store with a gateway or a visit today: presence now, today's visits and alerts, and
/// the health of its gateways.
pub fn stores_today(db: &mut Db, now_ms: i64) -> Result<Vec<StoreToday>, StoreError> {
    let today_ms = now_ms.div_euclid(DAY_MS) * DAY_MS;
    let mut stores: BTreeMap<String, StoreToday> = BTreeMap::new();
    fn entry(stores: &mut BTreeMap<String, StoreToday>, id: String) -> &mut StoreToday {
        stores.entry(id.clone()).or_insert_with(|| StoreToday {
            store_id: id,
            ..StoreToday::default()
        })
    }
    let mut tx = db.read_transaction()?;
    for r in tx.query(&FLEET, params![])? {
        let s = entry(&mut stores, r.string(0)?);
        s.gateways = r.u64(1)?;
        s.gateways_online = r.u64(2)?;
        s.last_seen_ms = r.i64(3)?;
        s.bad_payloads = r.u64(4)?;
        s.shed_ranges = r.u64(5)?;
        s.events_shed = r.u64(6)?;
        s.outbox_depth = (r.u64(8)? > 0).then(|| r.u64(7)).transpose()?;
    }
    for r in tx.query(&PRESENT_BY_TIER, params![now_ms - OPEN_VISIT_MAX_MS])? {
        let s = entry(&mut stores, r.string(0)?);
        let n = r.u64(2)?;
        s.present_by_tier.insert(r.string(1)?, n);
        s.present += n;
    }
    for r in tx.query(&VISITS_TODAY, params![today_ms])? {
        let s = entry(&mut stores, r.string(0)?);
        s.visits_today = r.u64(1)?;
        s.avg_dwell_s = if r.u64(3)? > 0 { r.u64(2)? } else { 0 };
    }
    for r in tx.query(&ALERTS_TODAY, params![today_ms])? {
        let s = entry(&mut stores, r.string(0)?);
        s.alerts_raised = r.u64(1)?;
        s.alerts_taken = r.u64(2)?;
        s.alerts_converted = r.u64(3)?;
        s.held_out = r.u64(4)?;
    }
    tx.commit()?;
    Ok(stores.into_values().collect())
}
