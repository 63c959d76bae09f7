//! Several server addresses, and fail-over between them.
//!
//! Owns: the list of addresses a client may use, which one is current, and one connection
//! attempt round: from the current address through every other one, in order, until one
//! accepts. After a connection is lost, [`Servers::fail_over`] makes the next address the
//! first one tried.
//!
//! Never: waits between rounds (the caller's [`Backoff`](crate::Backoff) does), or talks SDMP
//! on the connections it opens.

use sdmp::WireForm;

use crate::connection::{ConnectOptions, Connection};
use crate::error::Error;

/// The addresses (`host:port`) of equivalent servers (nodes sharing one store, or a primary
/// and its stand-by), all speaking one wire form.
#[derive(Clone, Debug)]
pub struct Servers {
    addrs: Vec<String>,
    current: usize,
    form: WireForm,
    options: ConnectOptions,
}

impl Servers {
    /// The list, tried in this order; at least one address.
    pub fn new<I, S>(addrs: I, form: WireForm) -> Result<Servers, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
        if addrs.is_empty() {
            return Err(Error::Invalid {
                what: "server list",
                reason: "no address given".into(),
            });
        }
        Ok(Servers {
            addrs,
            current: 0,
            form,
            options: ConnectOptions::default(),
        })
    }

    /// Connects with `options` instead of the defaults.
    #[must_use]
    pub fn with_options(mut self, options: ConnectOptions) -> Servers {
        self.options = options;
        self
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The address tried first: the last one that accepted, or the next after a fail-over.
    pub fn current(&self) -> &str {
        &self.addrs[self.current]
    }

    pub fn form(&self) -> WireForm {
        self.form
    }

    /// One round: the current address, then each next one (wrapping around), until one
    /// accepts; it becomes the current one. When all fail: with one address its error, with
    /// several [`Error::NoServer`] listing each.
    pub async fn connect(&mut self) -> Result<Connection, Error> {
        let mut failures = Vec::new();
        for offset in 0..self.addrs.len() {
            let index = (self.current + offset) % self.addrs.len();
            match Connection::connect_with(&self.addrs[index], self.form, &self.options).await {
                Ok(conn) => {
                    self.current = index;
                    return Ok(conn);
                }
                Err(error) => {
                    tracing::debug!("{}", error.with_causes());
                    failures.push(error);
                }
            }
        }
        Err(match failures.len() {
            1 => failures.remove(0),
            _ => Error::NoServer(failures),
        })
    }

    /// The current server is lost: the next round starts at the next address.
    pub fn fail_over(&mut self) {
        self.current = (self.current + 1) % self.addrs.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{closed_port, TestServer};

    async fn idle() -> TestServer {
        TestServer::start(WireForm::Bits8, |mut conn| async move {
            while let Some(Ok(_)) = conn.next_frame().await {}
        })
        .await
    }

    #[tokio::test]
    async fn connects_to_the_first_that_answers_and_fails_over_in_order() {
        let down = closed_port().await;
        let (a, b) = (idle().await, idle().await);
        let mut servers = Servers::new(
            [down.clone(), a.addr.clone(), b.addr.clone()],
            WireForm::Bits8,
        )
        .unwrap();
        assert_eq!(servers.connect().await.unwrap().peer(), a.addr);
        assert_eq!(servers.current(), a.addr);
        // Still a: a working server is kept.
        assert_eq!(servers.connect().await.unwrap().peer(), a.addr);
        servers.fail_over();
        assert_eq!(servers.connect().await.unwrap().peer(), b.addr);
        // After b, the round wraps around: down fails, a answers.
        servers.fail_over();
        assert_eq!(servers.connect().await.unwrap().peer(), a.addr);
    }

    #[tokio::test]
    async fn when_all_fail_every_address_is_named() {
        let (one, two) = (closed_port().await, closed_port().await);
        let error = Servers::new([one.clone()], WireForm::Bits8)
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), format!("connecting to {one}"));
        let error = Servers::new([one.clone(), two.clone()], WireForm::Bits8)
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("no server answered: ") && text.contains(&one) && text.contains(&two),
            "{text}"
        );
        assert!(Servers::new(Vec::<String>::new(), WireForm::Bits8).is_err());
    }
}
