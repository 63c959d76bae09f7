//! The recent activity as JSON (`GET /v1/summary`): what the dashboard at `/` polls.
//!
//! Owns the JSON of a [`Summary`](crate::core::Summary): outcome rates per class and per
//! campaign, the latest outcomes, refusals by EC, the store's health. Never: counts, keeps or
//! aggregates anything itself (the core does, as outcomes commit), or decides what a user may
//! see (the core's tenant rules).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::events::{tenant_text, text, time_of, OutcomeJson};
use super::params;
use super::problem::Problem;
use super::Http;
use crate::core::{Summary, WINDOW_SECONDS};

/// The window of the rates, and the tenant.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SummaryQuery {
    /// The seconds the rates cover, ending with the last complete second (default and most:
    /// 300).
    #[param(minimum = 1, maximum = 300)]
    window: Option<u64>,
    /// The tenant (default: the user's; a landlord's, or anyone's without users: every
    /// tenant).
    #[param(min_length = 1, max_length = 80, pattern = r"^[A-Za-z0-9_-]*$")]
    tenant: Option<String>,
}

/// Outcomes per second, by class; each array has one number per second of the window,
/// oldest first.
#[derive(Serialize, ToSchema)]
pub struct ClassRates {
    pub success: Vec<u64>,
    pub failure: Vec<u64>,
    pub management: Vec<u64>,
}

/// One campaign's outcomes per second.
#[derive(Serialize, ToSchema)]
pub struct CampaignRateJson {
    /// TD, when it is not `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub campaign: String,
    /// Outcomes in the window.
    pub total: u64,
    /// One number per second of the window, oldest first.
    pub per_second: Vec<u64>,
}

/// Refusals of one EC (every tenant's and every front end's, as `/metrics` counts them).
#[derive(Serialize, ToSchema)]
pub struct RejectionJson {
    pub ec: u16,
    /// What the EC means.
    pub title: &'static str,
    /// Since the server started.
    pub total: u64,
    /// In the last 60 seconds.
    pub last_minute: u64,
}

/// The store's health.
#[derive(Serialize, ToSchema)]
pub struct StoreJson {
    /// Reports are taken (what `/readyz` says).
    pub ready: bool,
    /// Out of space: reports are refused (EC 813) until there is room.
    pub full: bool,
    /// A commit failed for another reason: the server is stopping.
    pub failed: bool,
    /// The oldest sequence number retention kept (absent while the log is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    /// The last sequence number committed.
    pub last_seq: u64,
    /// The log's size as size retention counts it.
    pub log_bytes: u64,
    /// Group commits per second over the last 10 seconds.
    pub commits_per_second: f64,
    /// Their mean duration in milliseconds, fsync included (absent without commits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_ms: Option<f64>,
}

/// The recent activity the user may see.
#[derive(Serialize, ToSchema)]
pub struct SummaryJson<'a> {
    /// When the summary was made.
    pub time: String,
    /// The seconds the rates cover; their last is the second before `time`'s.
    pub window: u64,
    /// The start of the window's last second (UTC, RFC 3339).
    pub last_second: String,
    pub classes: ClassRates,
    /// The busiest campaigns of the window (at most 8), busiest first.
    pub campaigns: Vec<CampaignRateJson>,
    /// Every other campaign, added up, per second.
    pub other_campaigns: Vec<u64>,
    /// The latest outcomes (at most 20), newest first; `data` and `app_data` cut to their first
    /// 256 bytes.
    pub latest: Vec<OutcomeJson<'a>>,
    /// Refusals by EC, those ever made since the server started.
    pub rejections: Vec<RejectionJson>,
    pub store: StoreJson,
    /// Outcomes the rates left out because counting fell behind (under overload).
    pub uncounted: u64,
}

impl<'a> SummaryJson<'a> {
    /// The JSON of `summary`, whose series it takes and whose latest outcomes it borrows.
    fn of(summary: &'a mut Summary, window: u64) -> SummaryJson<'a> {
        let [success, failure, management] = std::mem::take(&mut summary.classes);
        let store = &summary.store;
        SummaryJson {
            time: time_of(summary.now_ms),
            window,
            last_second: time_of(summary.last_second * 1000),
            classes: ClassRates {
                success,
                failure,
                management,
            },
            campaigns: std::mem::take(&mut summary.campaigns)
                .into_iter()
                .map(|rate| CampaignRateJson {
                    tenant: tenant_text(&rate.tenant).map(String::from),
                    campaign: text(&rate.campaign),
                    total: rate.total,
                    per_second: rate.per_second,
                })
                .collect(),
            other_campaigns: std::mem::take(&mut summary.other_campaigns),
            latest: summary
                .latest
                .iter()
                .map(|o| OutcomeJson::of_outcome(o))
                .collect(),
            rejections: std::mem::take(&mut summary.rejections)
                .into_iter()
                .map(|r| RejectionJson {
                    ec: r.code.number(),
                    title: r.code.meaning(),
                    total: r.total,
                    last_minute: r.last_minute,
                })
                .collect(),
            store: StoreJson {
                ready: !store.full && !store.failed,
                full: store.full,
                failed: store.failed,
                first_seq: store.first_seq,
                last_seq: store.last_seq,
                log_bytes: store.log_bytes,
                commits_per_second: (store.commits_per_second * 10.0).round() / 10.0,
                commit_ms: store.commit_ms.map(|ms| (ms * 1000.0).round() / 1000.0),
            },
            uncounted: summary.skipped,
        }
    }
}

/// The recent activity: outcomes per second by class and by campaign over the last minutes,
/// the latest outcomes, refusals by EC and the store's health; counted by the server as
/// outcomes commit, so that a client polls one small document however many outcomes flow.
/// Rates and outcomes are those the user may see (a supervisor its tenant's; a landlord, or
/// anyone without users, every tenant's or `tenant`'s); refusals and the store are the
/// server's, as `/metrics` and `/readyz` tell.
#[utoipa::path(
    get, path = "/v1/summary", tag = "operations",
    params(SummaryQuery),
    responses(
        (status = 200, description = "The summary", body = SummaryJson),
        (status = 400, description = "A parameter that cannot be read (EC 801, 802, 804, 805, 806)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user may not (supervisor), or not for that tenant (EC 811, 812)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many authentication attempts from this address (EC 814)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn summary(
    State(http): State<Arc<Http>>,
    Caller(session): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let mut tenant = None;
    let mut window = WINDOW_SECONDS as u64;
    for (name, value) in params::pairs(raw.as_deref(), &["window", "tenant"])? {
        match name.as_str() {
            "window" => window = params::number("window", &value, 1, WINDOW_SECONDS as u64)?,
            _ => tenant = Some(params::tenant(&value)?),
        }
    }
    let mut summary = http
        .core()
        .summary(&session, tenant.as_deref(), window as usize)?;
    Ok(Json(SummaryJson::of(&mut summary, window)).into_response())
}
