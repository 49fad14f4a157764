//! The dashboard: the chain the way the brief counts it, for the people who run it — the
//! pyramid and its Pareto curve, the lifecycle funnel, who is overdue, each store now and today
//! with its gateways' health, and whether the rules' alerts make members buy (the holdout
//! report). One HTML page and one script, served from the binary (no build step, nothing from
//! the internet; the charts are plain SVG drawn by `dashboard.js`), reading the JSON views
//! below with the admin token or the read-only `[api] viewer_token`.
//!
//! `views.rs` holds the queries; this file the routes, their parameters and the CSV export.

pub mod views;

use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use instore_protocol::topics::valid_id;
use serde::Deserialize;

use crate::{
    compute::run::today_of,
    http::{ApiError, AppState, query_or_400, require_reader},
};

/// Most overdue members one JSON answer lists (the counts cover all of them).
const MAX_OVERDUE_LIST: usize = 1000;
/// Most rows of one CSV export: a call list, not a database dump.
const MAX_OVERDUE_CSV: usize = 1_000_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/dashboard.js", get(script))
        .route("/api/dashboard/pareto", get(pareto))
        .route("/api/dashboard/funnel", get(funnel))
        .route("/api/dashboard/overdue", get(overdue))
        .route("/api/dashboard/stores", get(stores))
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.js"),
    )
        .into_response()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// `GET /api/dashboard/pareto`: cumulative share of 12-month spend against share of members.
async fn pareto(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_reader(&state, &headers)?;
    let points = state.views.call(views::pareto).await?;
    Ok(Json(points).into_response())
}

/// `GET /api/dashboard/funnel`: members per lifecycle stage and this month's transitions.
async fn funnel(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_reader(&state, &headers)?;
    let today = today_of(now_ms());
    let f = state.views.call(move |db| views::funnel(db, today)).await?;
    Ok(Json(f).into_response())
}

#[derive(Debug, Deserialize)]
struct OverdueQuery {
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    /// `csv` for a spreadsheet of every matching member.
    #[serde(default)]
    format: Option<String>,
}

/// `GET /api/dashboard/overdue?store=&tier=&limit=&format=csv`: members who should have come
/// back and have not, per store and tier, with their expected date.
async fn overdue(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<OverdueQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_reader(&state, &headers)?;
    let q = query_or_400(
        query,
        "?store=ID&tier=NAME&limit=N&format=csv (all optional)",
    )?;
    if q.store.as_deref().is_some_and(|s| !valid_id(s)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "store is not a valid id",
        ));
    }
    if q.tier
        .as_deref()
        .is_some_and(|t| t.is_empty() || t.len() > 64)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "tier must be 1-64 characters",
        ));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "format is json or csv",
            ));
        }
    };
    let limit = if csv {
        MAX_OVERDUE_CSV
    } else {
        q.limit.unwrap_or(100).min(MAX_OVERDUE_LIST)
    };
    let today = today_of(now_ms());
    let o = state
        .views
        .call(move |db| views::overdue(db, today, q.store.as_deref(), q.tier.as_deref(), limit))
        .await?;
    if !csv {
        return Ok(Json(o).into_response());
    }
    let mut out = String::from(
        "member_id,display_name,tier,store_id,last_visit,expected_next_visit,overdue_days\r\n",
    );
    for m in &o.members {
        let fields = [
            m.member_id.as_str(),
            m.display_name.as_str(),
            m.tier.as_str(),
            m.store_id.as_deref().unwrap_or(""),
            m.last_visit.as_deref().unwrap_or(""),
            m.expected_next_visit.as_deref().unwrap_or(""),
        ];
        for f in fields {
            out.push_str(&csv_field(f));
            out.push(',');
        }
        out.push_str(&m.overdue_days.to_string());
        out.push_str("\r\n");
    }
    let filename = format!("attachment; filename=\"overdue-{}.csv\"", o.today);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, filename),
        ],
        out,
    )
        .into_response())
}

/// RFC 4180 quoting, and a leading `'` on what a spreadsheet would run as a formula (a member
/// named `=HYPERLINK(...)` must stay text in the CRM team's spreadsheet).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `GET /api/dashboard/stores`: each store now (members present by tier) and today (visits,
/// dwell, alerts raised / taken / converted, holdouts), and its gateways' health.
async fn stores(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_reader(&state, &headers)?;
    let now = now_ms();
    let rows = state
        .views
        .call(move |db| views::stores_today(db, now))
        .await?;
    Ok(Json(serde_json::json!({ "now_ms": now, "stores": rows })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("Ms. Li"), "Ms. Li");
        assert_eq!(csv_field("Li, Wei"), "\"Li, Wei\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=1+2"), "'=1+2");
        assert_eq!(csv_field("-x,y"), "\"'-x,y\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn the_month_starts_on_its_first_day() {
        let d = crate::compute::days::number(jiff::civil::date(2026, 12, 7));
        let first = crate::compute::days::number(jiff::civil::date(2026, 12, 1));
        assert_eq!(views::month_start(d), first);
        assert_eq!(views::month_start(first), first);
    }
}
