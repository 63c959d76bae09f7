//! The listener: one connection per store that LISTENs for other nodes' commits.
//!
//! Owns: its connection (reconnected with back-off), reading the announcements that every
//! commit moving the log sends (`a <node> <first> <last>` for appends, `t <node> <upto>` for
//! retention), and catching up with what was committed while it was not listening. Never:
//! trusts an announcement for more than a wake-up: it only moves `last_seq` (readers then read
//! the log, which is the truth) and what retention removed, and it never writes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Config, NoTls};
use tokio_util::sync::CancellationToken;

use super::writer::load_start;
use super::{schema, Context};
use crate::store::StoreError;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What an announcement says.
#[derive(Debug, PartialEq, Eq)]
enum Announcement {
    /// `node` appended seqs `first..=last`.
    Appended { node: i64, last: u64 },
    /// `node`'s retention removed every outcome up to `upto`.
    Trimmed { node: i64, upto: u64 },
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
        _ => None,
    }
}

/// The task's body: listens until `stop`, reconnecting whenever the connection fails.
pub(crate) async fn run(config: Config, ctx: Arc<Context>, stop: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let listened = tokio::select! {
            () = stop.cancelled() => return,
            listened = listen(&config, &ctx, &mut backoff) => listened,
        };
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
async fn listen(config: &Config, ctx: &Context, backoff: &mut Duration) -> Result<(), StoreError> {
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
        *backoff = BACKOFF_MIN;
        while let Some(payload) = received.recv().await {
            match parse(&payload) {
                Some(Announcement::Appended { node, last }) if node != ctx.node => {
                    ctx.shared.learn_remote(last);
                }
                Some(Announcement::Trimmed { node, upto }) if node != ctx.node => {
                    ctx.shared.publish_trimmed(upto);
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
        assert_eq!(parse("a 3 x 12"), None);
        assert_eq!(parse("z 1 2"), None);
        assert_eq!(parse(""), None);
    }
}
