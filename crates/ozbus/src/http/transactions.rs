//! Operations on transactions: the list of them (`GET /v1/transactions`) and ending one
//! (`DELETE /v1/transactions/{tx}`, as EE).
//!
//! Owns the JSON of a transaction as operators see it (who holds it, over which front end and
//! from where, its filter, cursor, backlog and roll-forward) and the translation of a DELETE
//! into the EE it stands for, with its EF to the stream or connection that held the
//! transaction. Never: decides whose transactions a user sees or may end (the core does), or
//! answers a DELETE before the end is stored.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use sdmp::{ErrorCode, Rejection};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::events::{class_name, text, time_of};
use super::history::TenantQuery;
use super::params;
use super::problem::Problem;
use super::{ingest, Http};
use crate::core::{TransactionInfo, LIST_MAX};
use crate::store::OutcomeClass;
use crate::subs::TransactionKey;

/// One page of the transactions the user may see, in (tenant, TX) order.
#[derive(Serialize, ToSchema)]
pub struct TransactionList {
    /// The log's last sequence number when the list was made (backlogs are counted to it).
    pub log_end: u64,
    pub transactions: Vec<TransactionJson>,
    /// Where the next page starts: pass it as `after`. Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The parameters of the list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQuery {
    /// The tenant (default: the user's; without users, `default`).
    #[param(min_length = 1, max_length = 80, pattern = r"^[A-Za-z0-9_-]*$")]
    tenant: Option<String>,
    /// The `next` of the page before.
    #[param(pattern = r"^([0-9a-f]{2})*\.([0-9a-f]{2})*$")]
    after: Option<String>,
    /// Transactions per page (default and most: 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
}

/// A page's `next`: the tenant and TX of its last transaction, each in lower-case hex. Any
/// value of that shape is a position in the list, so every `after` the document allows is
/// taken.
fn cursor_of(key: &TransactionKey) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{}.{}", hex(&key.namespace), hex(&key.tx))
}

/// A `next` read back (EC 806 when it is none).
fn key_of_cursor(cursor: &str) -> Result<TransactionKey, Rejection> {
    let unhex = |text: &str| -> Option<Vec<u8>> {
        if !text.len().is_multiple_of(2) {
            return None;
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                let pair = text.get(i..i + 2)?;
                pair.bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    .then(|| u8::from_str_radix(pair, 16).ok())?
            })
            .collect()
    };
    let decoded = cursor
        .split_once('.')
        .and_then(|(tenant, tx)| Some((unhex(tenant)?, unhex(tx)?)));
    let (tenant, tx) = decoded.ok_or_else(|| {
        Rejection::new(
            ErrorCode::ForbiddenCharacter,
            "after is the next of a page, as it was given",
        )
    })?;
    Ok(TransactionKey::new(&Bytes::from(tenant), &tx))
}

/// Who holds a transaction.
#[derive(Serialize, ToSchema)]
pub struct HolderJson {
    /// The holding connection's (or stream's) session id.
    pub connection: u64,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `sdmp` or `http` (a stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub front_end: Option<&'static str>,
}

/// Which outcomes a transaction receives.
#[derive(Serialize, ToSchema)]
pub struct FilterJson {
    /// TD: only this tenant's outcomes (absent: every tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// CN: only this campaign's (absent: every campaign).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// SO, FO, MO.
    pub classes: Vec<&'static str>,
}

/// The roll-forward of a re-issued persisted transaction, while it lasts.
#[derive(Serialize, ToSchema)]
pub struct RollForwardJson {
    /// CS: events per second.
    pub rate: u32,
    /// The events up to this sequence number are paced ...
    pub until: u64,
    /// ... and this many sequence numbers of them are still to go.
    pub remaining: u64,
}

/// One transaction.
#[derive(Serialize, ToSchema)]
pub struct TransactionJson {
    /// The tenant its TX and PS live in.
    pub tenant: String,
    /// TX.
    pub transaction: String,
    /// PS, when persisted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist: Option<String>,
    /// Whether it outlives its connection (PS).
    pub persisted: bool,
    /// `held` (a connection or stream delivers it) or `released` (persisted, nobody holds it).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderJson>,
    pub filter: FilterJson,
    /// XS: its events carry sequence numbers, and a persisted one's cursor moves with XA.
    pub sequenced: bool,
    /// Held: the last sequence number its delivery has read and handed on (or passed over).
    /// Released: where a re-issue resumes.
    pub cursor: u64,
    /// Persisted: where a re-issue resumes (the last acknowledged sequence number when
    /// sequenced, the last delivered otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<u64>,
    /// Sequence numbers of the log after the cursor (some may not match its filter).
    pub backlog: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll_forward: Option<RollForwardJson>,
    /// When its last connection let go of it (released).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
}

impl TransactionJson {
    fn of(info: TransactionInfo, log_end: u64) -> TransactionJson {
        let view = info.view;
        let filter = &view.filter;
        let classes = [
            (filter.success, OutcomeClass::Success),
            (filter.failure, OutcomeClass::Failure),
            (filter.management, OutcomeClass::Management),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, class)| class_name(class))
        .collect();
        TransactionJson {
            tenant: text(&view.namespace),
            transaction: text(&view.tx),
            persist: view.persist.as_deref().map(text),
            persisted: view.persist.is_some(),
            state: if view.connection.is_some() {
                "held"
            } else {
                "released"
            },
            holder: view.connection.map(|connection| HolderJson {
                connection,
                peer: info.holder.map(|(peer, _)| peer.to_string()),
                front_end: info.holder.map(|(_, front)| front),
            }),
            filter: FilterJson {
                tenant: filter.tenant.as_deref().map(text),
                campaign: filter.campaign.as_deref().map(text),
                classes,
            },
            sequenced: view.sequenced,
            cursor: view.cursor,
            acknowledged: view.durable,
            backlog: log_end.saturating_sub(view.cursor),
            roll_forward: view
                .paced_until
                .filter(|until| *until > view.cursor)
                .map(|until| RollForwardJson {
                    rate: view.rate,
                    until,
                    remaining: until - view.cursor,
                }),
            released_at: view.released_ms.map(time_of),
        }
    }
}

/// The list's parameters: tenant, where the page starts, how many.
type ListParams = (Option<Vec<u8>>, Option<TransactionKey>, usize);

fn list_params(raw: Option<&str>) -> Result<ListParams, Rejection> {
    let mut list = (None, None, LIST_MAX);
    for (name, value) in params::pairs(raw, &["tenant", "after", "limit"])? {
        match name.as_str() {
            "tenant" => list.0 = Some(params::tenant(&value)?),
            "after" => list.1 = Some(key_of_cursor(&value)?),
            _ => list.2 = params::number("limit", &value, 1, LIST_MAX as u64)? as usize,
        }
    }
    Ok(list)
}

/// The transactions the user may see, held or persisted, a page at a time in (tenant, TX)
/// order: each with its holder (connection id, address, front end), filter, cursor, backlog
/// (sequence numbers of the log after its cursor) and the progress of its roll-forward. A
/// supervisor sees its tenant's; a landlord, or anyone without users configured, every
/// tenant's, or with `tenant` those of that tenant (such a page may hold fewer than `limit`
/// and still have a `next`).
#[utoipa::path(
    get, path = "/v1/transactions", tag = "operations",
    params(ListQuery),
    responses(
        (status = 200, description = "The transactions", body = TransactionList),
        (status = 400, description = "A parameter that cannot be read (EC 801, 802, 804, 806)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user may not (supervisor), or not for that tenant (EC 811, 812)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many authentication attempts from this address (EC 814)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store could not be read; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(http): State<Arc<Http>>,
    Caller(session): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<TransactionList>, Problem> {
    let (tenant, after, limit) = list_params(raw.as_deref())?;
    let page = http
        .core()
        .transactions(&session, tenant.as_deref(), after.as_ref(), limit)
        .await?;
    let log_end = page.log_end;
    Ok(Json(TransactionList {
        log_end,
        transactions: page
            .transactions
            .into_iter()
            .map(|info| TransactionJson::of(info, log_end))
            .collect(),
        next: page.next.as_ref().map(cursor_of),
    }))
}

/// Ends the transaction `tx` as an EE does: a persisted one is forgotten (token, cursor and
/// all), the stream or connection that held it gets its end (EF). Answered once that is
/// stored. A landlord names the tenant whose transaction it is with `tenant`.
#[utoipa::path(
    delete, path = "/v1/transactions/{tx}", tag = "operations",
    params(
        ("tx" = String, Path, description = "TX", min_length = 1, max_length = 87, pattern = r"^[^\\\u0000\r\n]*$"),
        TenantQuery,
    ),
    responses(
        (status = 204, description = "Ended"),
        (status = 400, description = "A parameter that cannot be read (EC 801, 802, 804, 806)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user may not (supervisor), or not for that tenant (EC 811, 812)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No active transaction of that TX (EC 810)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many authentication attempts from this address (EC 814)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is out of space; the end takes effect, retry to learn when it is stored (EC 813)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn end(
    State(http): State<Arc<Http>>,
    Caller(session): Caller,
    tx: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<StatusCode, Problem> {
    let Path(tx) = tx?;
    let tenant = params::tenant_only(raw.as_deref())?;
    let tx = params::text("tx", &tx, 1, 87)?;
    let finished = http
        .core()
        .end_transaction_of(&session, tenant.as_deref(), &tx)
        .await?;
    if let Some(ended) = finished.ended {
        ended.finish_with_ef(tenant.as_deref()).await;
    }
    ingest::settle(&http, finished.ticket).await?;
    Ok(StatusCode::NO_CONTENT)
}
