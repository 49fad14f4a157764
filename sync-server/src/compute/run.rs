//! The imperative shell around the compute core: when and over whom it runs, and where its
//! results go.
//!
//! - **Incremental**, within a second of a purchase, a visit or an import: members marked
//!   `dirty` are recomputed against the pyramid thresholds and BG/NBD model of the last full
//!   pass, their fields written, and each placed at the stores (`fanout::place`) in the same
//!   transaction, so a tier change reaches the store's change stream at once.
//! - **Full**, daily at `[compute] full_recompute_hour_utc` (and at start when the last full pass
//!   is older than a day): pass 1 streams every member's day totals to rank spends (the new cut
//!   points) and fit BG/NBD; pass 2 recomputes every member in chunks and writes those whose
//!   fields changed. It also prunes channel changes older than `[membership]
//!   keep_changes_days` and re-places members whose "visited in the last N days" ran out.
//!
//! Both run on a database connection of their own, on a thread of their own, so a full pass
//! over a million members never holds the connection ingest commits on; a full pass reads each
//! chunk in a read transaction and takes the write lock only for the members whose fields
//! changed (one write transaction per chunk, a pause after it), so ingest's commits interleave. `dirty` is a counter: a member marked
//! again while being recomputed stays marked (the pass subtracts only what it read).

use std::{collections::HashMap, time::Duration};

use jiff::civil::Date;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    ActivityDay, BgNbdParams, CategorySpend, ComputeConfig, Computed, Customer, FitOptions,
    LevelMove, MemberFacts, Previous, PyramidThresholds, TierState, bgnbd, compute_member, days,
    pyramid,
};
use crate::{
    fanout::{self, FanoutSettings, notifier::NoticeInput},
    metrics::Metrics,
    params,
    store::{
        Db, Location, StoreError,
        channels::{self, Touched},
        db::{Row, Sql, Tx},
        purchases::month_of_day,
    },
};

/// Members recomputed per transaction in a full pass, and incrementally: a transaction holds
/// SQLite's write lock, so chunks stay well under a second and the pass pauses between them
/// ([`YIELD`]) to let ingest and imports commit (SQLite's busy handler does not queue waiters
/// fairly: a writer that takes the lock back at once can starve the others).
const CHUNK: usize = 1_000;
const INCREMENTAL_CHUNK: usize = 250;
const YIELD: Duration = Duration::from_millis(5);
/// How often dirty members are looked for without a poke.
const INCREMENTAL_EVERY: Duration = Duration::from_secs(1);

const SETTING_THRESHOLDS: &str = "pyramid_thresholds";
const SETTING_MODEL: &str = "bgnbd_params";
const META_LAST_FULL_DAY: &str = "compute_last_full_day";
const META_LAST_FULL_MS: &str = "compute_last_full_ms";
/// Buyers (members with a purchase) when the last full pass ranked them.
const META_LAST_FULL_BUYERS: &str = "compute_last_full_buyers";

const GET_SETTING: Sql = Sql::same("SELECT value FROM settings WHERE key = ?1");
const SET_SETTING: Sql = Sql::same(
    "INSERT INTO settings (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value",
);
const DELETE_SETTING: Sql = Sql::same("DELETE FROM settings WHERE key = ?1");
const GET_META: Sql = Sql::same("SELECT value FROM meta WHERE key = ?1");
const SET_META: Sql = Sql::same(
    "INSERT INTO meta (key, value) VALUES (?1, ?2)
    ON CONFLICT(key) DO UPDATE SET value = excluded.value",
);
const SELECT_DIRTY: Sql =
    Sql::same("SELECT member_id FROM members WHERE dirty > 0 ORDER BY member_id LIMIT ?1");
const SELECT_MEMBER: Sql = Sql::same(
    "SELECT member_id, record_json, computed_json, referred_by, dirty
    FROM members WHERE member_id = ?1",
);
/// The imported record only for members never computed (their first tier comes from it): a
/// full pass would otherwise copy every member's record to read none of them.
const SELECT_MEMBER_RANGE: Sql = Sql::same(
    "SELECT member_id, CASE WHEN computed_json IS NULL THEN record_json ELSE '' END,
        computed_json, referred_by, dirty
    FROM members WHERE member_id > ?1 ORDER BY member_id LIMIT ?2",
);
const SELECT_DAYS: Sql = Sql::same(
    "SELECT member_id, day, spend, purchases, visits FROM member_days
    WHERE member_id = ?1 ORDER BY day",
);
const SELECT_DAYS_RANGE: Sql = Sql::same(
    "SELECT member_id, day, spend, purchases, visits FROM member_days
    WHERE member_id > ?1 AND member_id <= ?2 ORDER BY member_id, day",
);
const SELECT_ALL_DAYS: Sql = Sql::same(
    "SELECT member_id, day, spend, purchases, visits FROM member_days ORDER BY member_id, day",
);
const SELECT_CATEGORIES: Sql = Sql::same(
    "SELECT member_id, category, CAST(SUM(amount) AS BIGINT) FROM member_categories
    WHERE member_id = ?1 AND month >= ?2 GROUP BY member_id, category",
);
const SELECT_CATEGORIES_RANGE: Sql = Sql::same(
    "SELECT member_id, category, CAST(SUM(amount) AS BIGINT) FROM member_categories
    WHERE member_id > ?1 AND member_id <= ?2 AND month >= ?3 GROUP BY member_id, category",
);
const COUNT_REFERRALS: Sql = Sql::same(
    "SELECT COUNT(*) FROM members WHERE referred_by = ?1 AND has_purchases = 1
    AND member_id <> ?1",
);
const ALL_REFERRALS: Sql = Sql::same(
    "SELECT referred_by, COUNT(*) FROM members
    WHERE referred_by IS NOT NULL AND has_purchases = 1 AND member_id <> referred_by
    GROUP BY referred_by",
);
const COUNT_MEMBERS: Sql = Sql::same("SELECT COUNT(*) FROM members");
const COUNT_BUYERS: Sql = Sql::same("SELECT COUNT(*) FROM members WHERE has_purchases = 1");
const WRITE_COMPUTED: Sql = Sql::same(
    "UPDATE members SET computed_json = ?2, level = ?3, spend_12m = ?4,
        dirty = CASE WHEN dirty > ?5 THEN dirty - ?5 ELSE 0 END
    WHERE member_id = ?1",
);
const CLEAR_DIRTY: Sql = Sql::same(
    "UPDATE members SET dirty = CASE WHEN dirty > ?2 THEN dirty - ?2 ELSE 0 END
    WHERE member_id = ?1",
);
const INSERT_TRANSITION: Sql = Sql::same(
    "INSERT INTO member_transitions (member_id, day, field, from_value, to_value)
    VALUES (?1, ?2, ?3, ?4, ?5)",
);
/// Members whose last visit to some store left the policy's window since the last full pass.
const SELECT_VISITS_EXPIRED: Sql = Sql::same(
    "SELECT DISTINCT member_id FROM member_stores WHERE last_day <= ?1 AND last_day > ?2",
);

/// What the compute stage needs of the config.
#[derive(Debug, Clone, Default)]
pub struct ComputeSettings {
    pub compute: ComputeConfig,
    pub fanout: FanoutSettings,
}

/// What a full pass did.
#[derive(Debug, Clone, PartialEq)]
pub struct FullStats {
    pub members: u64,
    pub changed: u64,
    pub fitted: bool,
    /// The fitted model, or why there is none.
    pub model: Result<BgNbdParams, String>,
    pub thresholds: Option<PyramidThresholds>,
    pub pruned_changes: u64,
    /// Pass 1 (streaming every day total, ranking) in ms, the BG/NBD fit within it, and pass 2.
    pub rank_ms: u64,
    pub fit_ms: u64,
    pub recompute_ms: u64,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// The day number (days since 1970-01-01, UTC) of a Unix-millisecond time.
pub fn today_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(86_400_000)
}

fn load_setting<T: serde::de::DeserializeOwned>(
    tx: &mut Tx<'_>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match tx.query_opt(&GET_SETTING, params![key])? {
        Some(r) => Ok(serde_json::from_str(r.str(0)?).ok()),
        None => Ok(None),
    }
}

/// The thresholds and model of the last full pass.
pub fn model_state(
    tx: &mut Tx<'_>,
) -> Result<(PyramidThresholds, Option<BgNbdParams>), StoreError> {
    let thresholds = load_setting(tx, SETTING_THRESHOLDS)?.unwrap_or_else(PyramidThresholds::empty);
    let model = load_setting(tx, SETTING_MODEL)?;
    Ok((thresholds, model))
}

/// A member row and what computing them needs beyond it.
struct Loaded {
    member_id: String,
    /// The imported record as stored; parsed only when needed (a first computation, the API),
    /// since a full pass over a million members would otherwise parse a million records.
    record_json: String,
    previous: Option<Computed>,
    referred_by: Option<String>,
    dirty: i64,
}

fn loaded(r: &Row) -> Result<Loaded, StoreError> {
    let member_id = r.string(0)?;
    let record_json = r.string(1)?;
    let previous = match r.opt_string(2)? {
        Some(j) => serde_json::from_str(&j).ok(),
        None => None,
    };
    Ok(Loaded {
        record_json,
        previous,
        referred_by: r.opt_string(3)?,
        dirty: r.i64(4)?,
        member_id,
    })
}

fn activity(r: &Row) -> Result<ActivityDay, StoreError> {
    let day = days::date(r.i64(1)?).ok_or_else(|| corrupt("member_days", "day out of range"))?;
    Ok(ActivityDay {
        day,
        purchase_minor: r.i64(2)?,
        purchases: u32::try_from(r.i64(3)?.max(0)).unwrap_or(u32::MAX),
        visits: u32::try_from(r.i64(4)?.max(0)).unwrap_or(u32::MAX),
    })
}

/// The tier an import gave, for a member's first computation.
fn imported_tier(l: &Loaded) -> String {
    #[derive(serde::Deserialize)]
    struct Tier {
        tier: String,
    }
    serde_json::from_str::<Tier>(&l.record_json).map_or_else(|_| "member".into(), |t| t.tier)
}

fn facts(
    l: &Loaded,
    activity: Vec<ActivityDay>,
    cats: Vec<CategorySpend>,
    referrals: u32,
    today: Date,
) -> MemberFacts {
    let previous = match &l.previous {
        Some(c) => c.previous(),
        // First computation: start from the tier the import said, so a member imported as
        // platinum keeps it through the downgrade grace rather than losing it on day one.
        None => Previous {
            level: None,
            tier: Some(TierState::new(imported_tier(l), today)),
        },
    };
    MemberFacts {
        member_id: l.member_id.clone(),
        referred_by: l.referred_by.clone(),
        purchasing_referrals: referrals,
        activity,
        category_spend_12m: cats,
        previous,
    }
}

fn category(r: &Row) -> Result<CategorySpend, StoreError> {
    Ok(CategorySpend {
        category: r.string(1)?,
        spend_minor: r.i64(2)?,
    })
}

/// The fields that change only when something happened to the member: what a pass compares to
/// decide whether to write and re-place. Recency, days overdue and the model's day-by-day
/// figures move every day by themselves; `GET /api/members/{id}` computes them fresh.
fn stable(c: &Computed) -> Computed {
    let mut s = c.clone();
    s.recency_days = None;
    s.overdue_days = 0;
    s.p_alive = None;
    s.expected_purchases = None;
    s.level_move = LevelMove::Same;
    s
}

fn first_month(today: i64, cfg: &ComputeConfig) -> i64 {
    month_of_day(today - i64::from(cfg.window_days) + 1)
}

/// Writes a member's new fields and places them at the stores; `false` when nothing changed.
#[allow(clippy::too_many_arguments)]
fn write(
    tx: &mut Tx<'_>,
    l: &Loaded,
    c: &Computed,
    today: i64,
    now_ms: i64,
    settings: &ComputeSettings,
    force_place: bool,
    touched: &mut Touched,
) -> Result<bool, StoreError> {
    if l.previous.as_ref().map(stable) == Some(stable(c)) {
        if l.dirty > 0 {
            tx.execute(&CLEAR_DIRTY, params![&l.member_id, l.dirty])?;
        }
        if force_place {
            fanout::place(tx, &l.member_id, &settings.fanout, false, now_ms, touched)?;
        }
        return Ok(false);
    }
    let json = serde_json::to_string(c).map_err(|e| corrupt(&l.member_id, e))?;
    tx.execute(
        &WRITE_COMPUTED,
        params![
            &l.member_id,
            json,
            c.level.as_str(),
            c.spend_12m_minor,
            l.dirty
        ],
    )?;
    let prev = l.previous.as_ref();
    let transitions = [
        (
            "level",
            prev.map(|p| p.level.as_str().to_string()),
            c.level.as_str().to_string(),
        ),
        (
            "stage",
            prev.map(|p| p.stage.as_str().to_string()),
            c.stage.as_str().to_string(),
        ),
        (
            "tier",
            prev.map(|p| p.tier.tier.clone()),
            c.tier.tier.clone(),
        ),
    ];
    for (field, from, to) in transitions {
        if from.as_deref() != Some(to.as_str()) {
            tx.execute(
                &INSERT_TRANSITION,
                params![&l.member_id, today, field, from, to],
            )?;
        }
    }
    fanout::place(tx, &l.member_id, &settings.fanout, false, now_ms, touched)?;
    Ok(true)
}

/// Recomputes up to `limit` dirty members; returns how many and the heads touched.
pub fn incremental(
    db: &mut Db,
    now_ms: i64,
    settings: &ComputeSettings,
    limit: usize,
) -> Result<(usize, Touched), StoreError> {
    let mut tx = db.transaction()?;
    let ids: Vec<String> = tx
        .query(&SELECT_DIRTY, params![limit])?
        .into_iter()
        .map(|r| r.string(0))
        .collect::<Result<_, _>>()?;
    let mut touched = Touched::new();
    if ids.is_empty() {
        tx.commit()?;
        return Ok((0, touched));
    }
    let (thresholds, model) = model_state(&mut tx)?;
    let today = today_of(now_ms);
    let today_date = days::date(today).ok_or_else(|| corrupt("clock", "date out of range"))?;
    let from_month = first_month(today, &settings.compute);
    for id in &ids {
        let Some(row) = tx.query_opt(&SELECT_MEMBER, params![id])? else {
            continue;
        };
        let l = loaded(&row)?;
        let act = tx
            .query(&SELECT_DAYS, params![id])?
            .iter()
            .map(activity)
            .collect::<Result<Vec<_>, _>>()?;
        let cats = tx
            .query(&SELECT_CATEGORIES, params![id, from_month])?
            .iter()
            .map(category)
            .collect::<Result<Vec<_>, _>>()?;
        let referrals = tx.query_one(&COUNT_REFERRALS, params![id])?.u64(0)?;
        let f = facts(
            &l,
            act,
            cats,
            u32::try_from(referrals).unwrap_or(u32::MAX),
            today_date,
        );
        let c = compute_member(
            &f,
            today_date,
            &thresholds,
            model.as_ref(),
            &settings.compute,
        );
        // A dirty member may have changed in ways the fields do not show (a new visit store,
        // an import): place them whatever the computation says.
        write(&mut tx, &l, &c, today, now_ms, settings, true, &mut touched)?;
    }
    tx.commit()?;
    Ok((ids.len(), touched))
}

/// Pass 1 of a full run: every member's window spend and BG/NBD customer, streamed.
fn rank_and_fit(
    db: &mut Db,
    today: i64,
    cfg: &ComputeConfig,
) -> Result<(PyramidThresholds, Result<BgNbdParams, String>, u64, u64), StoreError> {
    let mut tx = db.read_transaction()?;
    let members = tx.query_one(&COUNT_MEMBERS, params![])?.u64(0)?;
    let start = today - i64::from(cfg.window_days);
    let mut spends: Vec<i64> = Vec::with_capacity(usize::try_from(members).unwrap_or(0));
    let mut customers: Vec<Customer> = Vec::new();
    let mut current: Option<String> = None;
    let mut spend = 0i64;
    let mut days_of: Vec<i64> = Vec::new();
    let flush =
        |spend: i64, d: &mut Vec<i64>, spends: &mut Vec<i64>, customers: &mut Vec<Customer>| {
            spends.push(spend);
            if let Some(c) = Customer::from_sorted_days(d, today) {
                customers.push(c);
            }
            d.clear();
        };
    tx.for_each(&SELECT_ALL_DAYS, params![], |r| {
        let id = r.str(0)?;
        if current.as_deref() != Some(id) {
            if current.is_some() {
                flush(spend, &mut days_of, &mut spends, &mut customers);
            }
            current = Some(id.to_string());
            spend = 0;
        }
        let day = r.i64(1)?;
        if day > today {
            return Ok(());
        }
        if day > start {
            spend = spend.saturating_add(r.i64(2)?);
        }
        if r.i64(3)? > 0 || r.i64(4)? > 0 {
            days_of.push(day);
        }
        Ok(())
    })?;
    if current.is_some() {
        flush(spend, &mut days_of, &mut spends, &mut customers);
    }
    tx.commit()?;
    // Members without any day total spent nothing: they count in the base.
    spends.resize(
        usize::try_from(members)
            .unwrap_or(spends.len())
            .max(spends.len()),
        0,
    );
    let thresholds = pyramid::thresholds(&spends, &cfg.pyramid);
    let fit_started = std::time::Instant::now();
    let model = if customers.len() as u64 >= u64::from(cfg.model.min_customers) {
        match bgnbd::fit(
            &customers,
            &FitOptions {
                max_iterations: cfg.model.max_iterations,
            },
        ) {
            Ok(fit) => Ok(fit.params),
            Err(e) => {
                tracing::warn!(error = %e, customers = customers.len(), "BG/NBD fit failed; no model until the next full pass");
                Err(e.to_string())
            }
        }
    } else {
        Err(format!(
            "{} members with activity, fewer than [compute.model] min_customers",
            customers.len()
        ))
    };
    let fit_ms = fit_started.elapsed().as_millis() as u64;
    Ok((thresholds, model, members, fit_ms))
}

/// A full pass (see the module docs).
pub fn full(
    db: &mut Db,
    now_ms: i64,
    settings: &ComputeSettings,
    cancel: &CancellationToken,
) -> Result<(FullStats, Touched), StoreError> {
    let cfg = &settings.compute;
    let today = today_of(now_ms);
    let today_date = days::date(today).ok_or_else(|| corrupt("clock", "date out of range"))?;
    let started = std::time::Instant::now();
    let (thresholds, fitted, members, fit_ms) = rank_and_fit(db, today, cfg)?;
    let model = fitted.as_ref().ok().copied();
    let rank_ms = started.elapsed().as_millis() as u64;
    let started = std::time::Instant::now();
    {
        let mut tx = db.transaction()?;
        let t = serde_json::to_string(&thresholds).map_err(|e| corrupt("thresholds", e))?;
        tx.execute(&SET_SETTING, params![SETTING_THRESHOLDS, t])?;
        match &model {
            Some(m) => {
                let m = serde_json::to_string(m).map_err(|e| corrupt("model", e))?;
                tx.execute(&SET_SETTING, params![SETTING_MODEL, m])?;
            }
            None => {
                tx.execute(&DELETE_SETTING, params![SETTING_MODEL])?;
            }
        }
        tx.commit()?;
    }
    let mut touched = Touched::new();
    let mut stats = FullStats {
        members,
        changed: 0,
        fitted: model.is_some(),
        model: fitted,
        thresholds: Some(thresholds.clone()),
        pruned_changes: 0,
        rank_ms,
        fit_ms,
        recompute_ms: 0,
    };
    let referrals: HashMap<String, u32> = {
        let mut tx = db.transaction()?;
        let map = tx
            .query(&ALL_REFERRALS, params![])?
            .into_iter()
            .map(|r| Ok((r.string(0)?, u32::try_from(r.u64(1)?).unwrap_or(u32::MAX))))
            .collect::<Result<_, StoreError>>()?;
        tx.commit()?;
        map
    };
    let last_full = {
        let mut tx = db.transaction()?;
        let v = tx
            .query_opt(&GET_META, params![META_LAST_FULL_DAY])?
            .map(|r| r.i64(0))
            .transpose()?;
        tx.commit()?;
        v
    };
    let from_month = first_month(today, cfg);
    let mut after = String::new();
    loop {
        if cancel.is_cancelled() {
            // Stopping: what is written is whole per chunk; the next pass starts over.
            return Ok((stats, touched));
        }
        // Read in a read transaction: on a normal night almost nobody changes, so most chunks
        // never take the write lock, and ingest's commits never wait on them.
        let mut tx = db.read_transaction()?;
        let rows = tx.query(&SELECT_MEMBER_RANGE, params![&after, CHUNK])?;
        let Some(last) = rows.last().map(|r| r.string(0)).transpose()? else {
            tx.commit()?;
            break;
        };
        let mut by_member: HashMap<String, Vec<ActivityDay>> = HashMap::new();
        for r in tx.query(&SELECT_DAYS_RANGE, params![&after, &last])? {
            by_member
                .entry(r.string(0)?)
                .or_default()
                .push(activity(&r)?);
        }
        let mut cats: HashMap<String, Vec<CategorySpend>> = HashMap::new();
        for r in tx.query(&SELECT_CATEGORIES_RANGE, params![&after, &last, from_month])? {
            cats.entry(r.string(0)?).or_default().push(category(&r)?);
        }
        tx.commit()?;
        let mut pending = Vec::new();
        for r in &rows {
            let l = loaded(r)?;
            let f = facts(
                &l,
                by_member.remove(&l.member_id).unwrap_or_default(),
                cats.remove(&l.member_id).unwrap_or_default(),
                referrals.get(&l.member_id).copied().unwrap_or(0),
                today_date,
            );
            let c = compute_member(&f, today_date, &thresholds, model.as_ref(), cfg);
            let same = l.previous.as_ref().map(stable) == Some(stable(&c));
            if !same || l.dirty > 0 {
                pending.push((l, c));
            }
        }
        after = last;
        if pending.is_empty() {
            continue;
        }
        // Written from what was read: a member marked dirty since keeps the difference (`write`
        // subtracts only what it read) and the incremental stage computes them again.
        let mut tx = db.transaction()?;
        for (l, c) in &pending {
            if write(
                &mut tx,
                l,
                c,
                today,
                now_ms,
                settings,
                l.dirty > 0,
                &mut touched,
            )? {
                stats.changed += 1;
            }
        }
        tx.commit()?;
        std::thread::sleep(YIELD);
    }
    stats.recompute_ms = started.elapsed().as_millis() as u64;
    // Members whose visit to a store fell out of the policy's window since the last pass.
    let visited = i64::from(settings.fanout.membership.visited_days);
    if visited > 0 {
        let mut tx = db.transaction()?;
        let upto = today - visited;
        let since = last_full.map_or(i64::MIN, |d| d - visited);
        let ids: Vec<String> = tx
            .query(&SELECT_VISITS_EXPIRED, params![upto, since])?
            .into_iter()
            .map(|r| r.string(0))
            .collect::<Result<_, _>>()?;
        for id in ids {
            fanout::place(&mut tx, &id, &settings.fanout, false, now_ms, &mut touched)?;
        }
        tx.commit()?;
    }
    {
        let mut tx = db.transaction()?;
        let keep_ms = i64::from(settings.fanout.membership.keep_changes_days) * 86_400_000;
        stats.pruned_changes = channels::prune(&mut tx, now_ms - keep_ms, now_ms)?;
        tx.execute(&SET_META, params![META_LAST_FULL_DAY, today])?;
        tx.execute(&SET_META, params![META_LAST_FULL_MS, now_ms])?;
        let buyers = tx.query_one(&COUNT_BUYERS, params![])?.i64(0)?;
        tx.execute(&SET_META, params![META_LAST_FULL_BUYERS, buyers])?;
        tx.commit()?;
    }
    Ok((stats, touched))
}

/// Whether a full pass is due at `now_ms`: never run; the configured hour of a later day (at
/// once if a day was missed); or the buyers moved by more than `rerank_on_buyers_change` since
/// the last pass, at most every `rerank_min_interval_s`.
pub fn full_due(db: &mut Db, now_ms: i64, cfg: &ComputeConfig) -> Result<bool, StoreError> {
    let hour_utc = cfg.full_recompute_hour_utc;
    let mut tx = db.transaction()?;
    let meta = |tx: &mut Tx<'_>, key: &str| -> Result<Option<i64>, StoreError> {
        tx.query_opt(&GET_META, params![key])?
            .map(|r| r.i64(0))
            .transpose()
    };
    let last_day = meta(&mut tx, META_LAST_FULL_DAY)?;
    let last_ms = meta(&mut tx, META_LAST_FULL_MS)?.unwrap_or(0);
    let last_buyers = meta(&mut tx, META_LAST_FULL_BUYERS)?.unwrap_or(0);
    let buyers = tx.query_one(&COUNT_BUYERS, params![])?.i64(0)?;
    tx.commit()?;
    let today = today_of(now_ms);
    let hour = now_ms.div_euclid(3_600_000).rem_euclid(24);
    let by_day = match last_day {
        None => return Ok(true),
        Some(d) if d >= today => false,
        // A missed day (head office down at the hour) runs at once.
        Some(d) if d < today - 1 => true,
        Some(_) => hour >= i64::from(hour_utc),
    };
    let moved = (buyers - last_buyers).unsigned_abs() as f64;
    let rebase = moved > cfg.rerank_on_buyers_change * last_buyers.max(1) as f64
        && now_ms.saturating_sub(last_ms) >= i64::from(cfg.rerank_min_interval_s) * 1000;
    Ok(by_day || (rebase && buyers > 0))
}

/// The compute stage's task.
pub struct Runner {
    pub location: Location,
    pub settings: ComputeSettings,
    pub notices: mpsc::Sender<NoticeInput>,
    pub poke: std::sync::Arc<Notify>,
    pub metrics: Metrics,
    pub clock: crate::fanout::keys::WallClock,
    /// Passes run only while held: one instance of a shared head office computes.
    pub lease: crate::cluster::lease::LeaseHandle,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("location", &self.location)
            .finish()
    }
}

impl Runner {
    /// Runs until `cancel`: a blocking thread with its own connection does the work.
    pub async fn run(self, cancel: CancellationToken) {
        let Runner {
            location,
            settings,
            notices,
            poke,
            metrics,
            clock,
            mut lease,
        } = self;
        let mut db = match tokio::task::spawn_blocking(move || location.connect()).await {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "compute: cannot open the database; nothing is computed");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "compute: cannot start");
                return;
            }
        };
        loop {
            if !lease.is_held() {
                tracing::info!("compute: another instance holds the lease; waiting");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    held = lease.held() => if !held { break },
                }
                tracing::info!("compute: lease held; computing here");
            }
            let now = clock();
            let s = settings.clone();
            let m = metrics.clone();
            // A pass stops at its next chunk when the lease is lost, as on shutdown.
            let c = cancel.child_token();
            let on_loss = {
                let (mut lease, c) = (lease.clone(), c.clone());
                tokio::spawn(async move {
                    lease.lost().await;
                    c.cancel();
                })
            };
            let job = tokio::task::spawn_blocking(move || {
                let r = step(&mut db, now, &s, &m, &c);
                (db, r)
            });
            let joined = job.await;
            on_loss.abort();
            let (back, result) = match joined {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "compute: task failed; stopping");
                    return;
                }
            };
            db = back;
            let wait = match result {
                Ok((more, touched)) => {
                    if !touched.is_empty()
                        && notices.send(NoticeInput::Heads(touched)).await.is_err()
                    {
                        break;
                    }
                    !more
                }
                Err(e) => {
                    metrics.compute_failures.inc();
                    tracing::warn!(error = %e, "compute: pass failed; retrying");
                    true
                }
            };
            if cancel.is_cancelled() {
                break;
            }
            if wait {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = poke.notified() => {}
                    () = tokio::time::sleep(INCREMENTAL_EVERY) => {}
                }
            }
        }
        // A PostgreSQL client must be dropped off the async threads (it owns a runtime).
        let _ = tokio::task::spawn_blocking(move || drop(db)).await;
    }
}

/// One round: a full pass when due, else one chunk of dirty members. `true` when more dirty
/// members may be waiting.
fn step(
    db: &mut Db,
    now_ms: i64,
    settings: &ComputeSettings,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<(bool, Touched), StoreError> {
    if full_due(db, now_ms, &settings.compute)? {
        let started = std::time::Instant::now();
        let (stats, touched) = full(db, now_ms, settings, cancel)?;
        metrics.compute_full_runs.inc();
        tracing::info!(
            members = stats.members,
            changed = stats.changed,
            model = stats.fitted,
            pruned_changes = stats.pruned_changes,
            ms = started.elapsed().as_millis() as u64,
            "compute: full pass done"
        );
        return Ok((true, touched));
    }
    let (n, touched) = incremental(db, now_ms, settings, INCREMENTAL_CHUNK)?;
    metrics.members_recomputed.inc_by(n as u64);
    if n == INCREMENTAL_CHUNK {
        std::thread::sleep(YIELD);
    }
    Ok((n == INCREMENTAL_CHUNK, touched))
}

/// One member's fields computed now (for `GET /api/members/{id}`: recency and days overdue as of
/// today, not as of the last write), with the record and whether head office holds purchases of
/// them. `None` for a member head office does not hold.
pub fn compute_one(
    tx: &mut Tx<'_>,
    member_id: &str,
    now_ms: i64,
    cfg: &ComputeConfig,
) -> Result<Option<(Computed, instore_protocol::MemberRecord)>, StoreError> {
    let Some(row) = tx.query_opt(&SELECT_MEMBER, params![member_id])? else {
        return Ok(None);
    };
    let l = loaded(&row)?;
    let (thresholds, model) = model_state(tx)?;
    let today = today_of(now_ms);
    let today_date = days::date(today).ok_or_else(|| corrupt("clock", "date out of range"))?;
    let act = tx
        .query(&SELECT_DAYS, params![member_id])?
        .iter()
        .map(activity)
        .collect::<Result<Vec<_>, _>>()?;
    let cats = tx
        .query(
            &SELECT_CATEGORIES,
            params![member_id, first_month(today, cfg)],
        )?
        .iter()
        .map(category)
        .collect::<Result<Vec<_>, _>>()?;
    let referrals = tx.query_one(&COUNT_REFERRALS, params![member_id])?.u64(0)?;
    // From the state of the last write, as the next pass would compute it.
    let f = facts(
        &l,
        act,
        cats,
        u32::try_from(referrals).unwrap_or(u32::MAX),
        today_date,
    );
    let c = compute_member(&f, today_date, &thresholds, model.as_ref(), cfg);
    let record = serde_json::from_str(&l.record_json).map_err(|e| corrupt(member_id, e))?;
    Ok(Some((c, record)))
}
