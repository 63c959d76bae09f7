//! The finder thread: looks up persisted transactions one at a time, by tenant and PersistToken
//! or TX, as requests need them.
//!
//! Owns: one read-only connection and the thread that uses it, fed by a queue. A storm of
//! lookups (every client re-issuing its transactions after a restart) is served back to back
//! on that thread, which wakes once for all that are queued; handing each lookup to a blocking
//! pool instead costs a thread switch each way, and a pooled connection (or a new one) per
//! lookup under way, many times the lookup itself. Never: writes (the connection is
//! read-only), other queries, or runs on an async worker thread.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::model::PersistedTransaction;
use super::{read, schema, StoreError};

type Reply = oneshot::Sender<Result<Vec<PersistedTransaction>, StoreError>>;

/// One lookup: the rows of `tenant` whose PersistToken is `ps` or whose TX is `tx`.
pub(crate) struct Find {
    pub(crate) tenant: Vec<u8>,
    pub(crate) ps: Option<Vec<u8>>,
    pub(crate) tx: Vec<u8>,
    pub(crate) reply: Reply,
}

/// Starts the thread on a connection of its own to the database at `path` (its schema must
/// exist). It ends once every sender of the returned queue is gone.
pub(crate) fn start(path: &Path) -> Result<(mpsc::Sender<Find>, JoinHandle<()>), StoreError> {
    let conn = schema::open_reader(path)?;
    let (finds, queue) = mpsc::channel::<Find>();
    let handle = std::thread::Builder::new()
        .name("ozbus-store-finder".into())
        .spawn(move || {
            // Each statement sees the last commit made before it starts, so a lookup sees every
            // batch committed before it was asked for.
            for find in queue {
                let found =
                    read::find_transactions(&conn, &find.tenant, find.ps.as_deref(), &find.tx);
                let _ = find.reply.send(found);
            }
        })?;
    Ok((finds, handle))
}
