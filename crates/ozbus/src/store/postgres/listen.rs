//! The listener: one connection per store that LISTENs for other nodes' commits.
//!
//! Owns: its connection (reconnected with back-off), reading the announcements that every
//! commit moving the log sends (`a <node> <first> <last>` for appends, `t <node> <upto>` for
//! retention) and those of takeovers of persisted transactions (`o <owner> <tenant> <ps>`, hex,
//! or `o <owner> *`; see `schema_5.sql`), catching up with what was committed while it was not
//! listening, and saying whether this node hears the others now (`Shared::hearing`: not from
//! the moment the connection fails until a new one listens). Never: trusts an announcement for
//! more than a wake-up: it only moves `last_seq` (readers then read the log, which is the
//! truth) and what retention removed, and passes takeovers on (the service reads who owns a
//! transaction before it ends anything); and it never writes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Config, NoTls};
use tokio_util::sync::CancellationToken;

use super::writer::load_start;
use super::{schema, Context};
use crate::store::{OwnerChange, StoreError};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What an announcement says.
#[derive(Debug, PartialEq, Eq)]
enum Announcement {
    /// `node` appended seqs `first..=last`.
    Appended { node: i64, last: u64 },
    /// `node`'s retention removed every outcome up to `upto`.
    Trimmed { node: i64, upto: u64 },
    /// A persisted transaction ((tenant, PS); `None`: any) is `node`'s now (0: ended).
    Owner {
        node: i64,
        key: Option<(Bytes, Bytes)>,
    },
}

/// Bytes from lower-case (or upper-case) hex digits.
fn unhex(text: &str) -> Option<Bytes> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    digits
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

fn parse(payload: &str) -> Option<Announcement> {
    let mut words = payload.split(' ');
    let kind = words.next()?;
    let node = words.next()?.parse().ok()?;
    match kind {
        "a" => {
            let _first: u64 = words.next()?.parse().ok()?;
            let last = words.next()?.parse().ok()?;
            Some(Announcement::Appended { node, last })
        }
        "t" => Some(Announcement::Trimmed {
            node,
            upto: words.next()?.parse().ok()?,
        }),
        "o" => {
            let key = match words.next()? {
                "*" => None,
                tenant => Some((unhex(tenant)?, unhex(words.next()?)?)),
            };
            Some(Announcement::Owner { node, key })
        }
        _ => None,
    }
}

/// The task's body: listens until `stop`, reconnecting whenever the connection fails.
pub(crate) async fn run(config: Config, ctx: Arc<Context>, stop: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut connections = 0;
    loop {
        connections += 1;
        let listened = tokio::select! {
            () = stop.cancelled() => return,
            listened = listen(&config, &ctx, &mut backoff, connections) => listened,
        };
        // Deaf from here until the next connection listens.
        ctx.shared.hearing.send_replace(None);
        if let Err(error) = listened {
            tracing::debug!(%error, "the store's postgres listener lost its connection");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: LISTEN, catch up, then follow the announcements.
async fn listen(
    config: &Config,
    ctx: &Context,
    backoff: &mut Duration,
    connection_number: u64,
) -> Result<(), StoreError> {
    let mut config = config.clone();
    config.application_name(format!("ozbus-listen-{}", ctx.node));
    let (client, mut connection) = config.connect(NoTls).await?;
    let (notifications, mut received) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if notifications
                        .send(notification.payload().to_owned())
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "the listener's connection failed");
                    break;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {}", schema::CHANNEL))
            .await?;
        // Whatever was committed before the LISTEN took effect was not announced to us.
        let start = load_start(&client).await?;
        ctx.shared.publish_trimmed(start.trimmed);
        ctx.shared.learn_remote(start.last_seq);
        // Every takeover committed from now on is announced to us; those before, the service
        // reads (it checks what it holds whenever this changes).
        ctx.shared.hearing.send_replace(Some(connection_number));
        *backoff = BACKOFF_MIN;
        while let Some(payload) = received.recv().await {
            match parse(&payload) {
                Some(Announcement::Appended { node, last }) if node != ctx.node => {
                    ctx.shared.learn_remote(last);
                }
                Some(Announcement::Trimmed { node, upto }) if node != ctx.node => {
                    ctx.shared.publish_trimmed(upto);
                }
                Some(Announcement::Owner { node, key }) if node != ctx.node => {
                    // Nobody following (no service): nothing to tell.
                    let _ = ctx.shared.owners.send(OwnerChange { node, key });
                }
                Some(_) => {}
                None => tracing::debug!(payload, "an announcement the store does not know"),
            }
        }
        Ok::<(), StoreError>(())
    }
    .await;
    drop(client);
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse() {
        assert_eq!(
            parse("a 3 10 12"),
            Some(Announcement::Appended { node: 3, last: 12 })
        );
        assert_eq!(
            parse("t 4 99"),
            Some(Announcement::Trimmed { node: 4, upto: 99 })
        );
        assert_eq!(
            parse("o 5 74 7031"),
            Some(Announcement::Owner {
                node: 5,
                key: Some((Bytes::from_static(b"t"), Bytes::from_static(b"p1")))
            })
        );
        assert_eq!(
            parse("o 0 *"),
            Some(Announcement::Owner { node: 0, key: None })
        );
        assert_eq!(parse("o 5 7 70"), None);
        assert_eq!(parse("o 5 zz 70"), None);
        assert_eq!(parse("a 3 x 12"), None);
        assert_eq!(parse("z 1 2"), None);
        assert_eq!(parse(""), None);
    }
}
