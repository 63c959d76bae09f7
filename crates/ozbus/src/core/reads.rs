//! Reads for clients: pages of the outcome log chosen by filters, one call's open record and
//! outcomes; and the session a front end opens a stream in.
//!
//! Owns who may read what: the privilege and tenant rules of an EO (a supervisor reads its
//! tenant; a landlord, or anyone on a server without users, reads every tenant or the one it
//! names). Never: changes state, or takes the book's or the registry's lock (these are reads of
//! what the store committed; the store answers them off the async threads).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use sdmp::{ErrorCode, Rejection};

use super::auth::Act;
use super::{Core, Session};
use crate::store::{CallRecord, Outcome, OutcomePage, OutcomeQuery, StoreError};

/// Why a read has no answer: refused (the EC and reason an SDMP client would get), or the
/// store could not be read (for now: a PostgreSQL store may be away).
#[derive(Debug)]
pub enum ReadError {
    Refused(Rejection),
    Store(StoreError),
}

impl From<Rejection> for ReadError {
    fn from(rejection: Rejection) -> ReadError {
        ReadError::Refused(rejection)
    }
}

impl From<StoreError> for ReadError {
    fn from(error: StoreError) -> ReadError {
        ReadError::Store(error)
    }
}

/// One call as the store holds it: its open record, if it is still open, and its newest
/// outcomes (corrections among them), oldest first.
#[derive(Debug)]
pub struct CallHistory {
    pub tenant: Bytes,
    pub record: Option<CallRecord>,
    pub outcomes: Vec<Arc<Outcome>>,
    /// More outcomes of the call are in the log than were read.
    pub truncated: bool,
}

impl Core {
    /// A session of its own for one stream of a client already authenticated in `of` (its user,
    /// tenant and peer), so that releasing the stream releases nothing else of that client.
    pub fn stream_session(&self, of: &Session, front: &'static str) -> Session {
        Session {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            peer: of.peer,
            principal: of.principal.clone(),
            namespace: of.namespace.clone(),
            front,
            node: of.node,
        }
    }

    /// Whose outcomes `session` may read with `td` (a supervisor's EO sees the same): its
    /// tenant, or every tenant (`None`) for a landlord or on a server without users that names
    /// none.
    pub(super) fn readable(
        &self,
        session: &Session,
        td: Option<&[u8]>,
    ) -> Result<Option<Bytes>, Rejection> {
        let tenant = self.admit(session, Act::Supervise, td)?;
        Ok(match (td, &session.principal) {
            (None, None) => None,
            (None, Some(principal)) if principal.is_landlord() => None,
            _ => Some(tenant),
        })
    }

    /// One page of the outcomes `query` asks for, of the tenants `session` may read (with
    /// `td`: of that one).
    pub async fn outcomes(
        &self,
        session: &Session,
        td: Option<&[u8]>,
        mut query: OutcomeQuery,
    ) -> Result<OutcomePage, ReadError> {
        query.tenant = self.readable(session, td)?;
        Ok(self.store.outcomes(query).await?)
    }

    /// The call of campaign `cn` with session `si` in the session's tenant (or `td`'s): its
    /// open record, if any, and its newest `limit` outcomes. EC 411 when it has neither.
    pub async fn call(
        &self,
        session: &Session,
        td: Option<&[u8]>,
        cn: &[u8],
        si: &[u8],
        limit: usize,
    ) -> Result<CallHistory, ReadError> {
        let tenant = self.admit(session, Act::Supervise, td)?;
        let record = self
            .store
            .open_record(&tenant, si)
            .await?
            // A record is keyed by its session within the tenant; another campaign's is
            // another call.
            .filter(|record| record.cn == cn);
        let mut outcomes = self
            .store
            .call_outcomes(&tenant, cn, si, limit.saturating_add(1))
            .await?;
        if record.is_none() && outcomes.is_empty() {
            return Err(ReadError::Refused(Rejection::new(
                ErrorCode::NoSuchCall,
                "no call record or outcome matches CN and SI",
            )));
        }
        let truncated = outcomes.len() > limit;
        if truncated {
            outcomes.remove(0);
        }
        Ok(CallHistory {
            tenant,
            record,
            outcomes,
            truncated,
        })
    }
}
