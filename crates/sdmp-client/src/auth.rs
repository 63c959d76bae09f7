//! Authentication: UA, answered by US.
//!
//! Owns: sending `UA\TD<tenant>\AN<name>\PW<password>` on a fresh connection and reading the
//! server's US into a [`UserStatus`].
//!
//! Never: keeps or logs the password (its `Debug` shows `***`), or treats a refusal (RS other
//! than 0) as an error: whether an unauthenticated connection is still of use is the caller's
//! decision (a server without users answers RS 1 and serves everyone).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use sdmp::{Envelope, Frame, Message, Ua};

use crate::connection::Connection;
use crate::error::{Error, ErrorReply};
use crate::frames::{codes, frame_code};
use crate::request::checked_frame;

/// Who a connection acts as: a user of a tenant (`landlord` acts for every tenant).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// TD.
    pub tenant: String,
    /// AN: the user name.
    pub name: String,
    /// PW.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("tenant", &self.tenant)
            .field("name", &self.name)
            .field("password", &"***")
            .finish()
    }
}

/// The PG privilege flags of a [`UserStatus`].
pub mod privileges {
    pub const AGENT: u16 = 1;
    pub const SUPERVISOR: u16 = 2;
    pub const CONFIGURATION: u16 = 4;
    pub const SYSTEM: u16 = 8;
    pub const SUPER_USER: u16 = 256;
}

/// The server's US.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStatus {
    /// TD.
    pub tenant: String,
    /// AN.
    pub name: Option<String>,
    /// RS: 0 authenticated, 1 no such user, 2 bad password, 3 badly formed, 5 locked out.
    pub status: u16,
    /// PG: the privilege flags (see [`privileges`]).
    pub privileges: Option<u16>,
    /// The US frame as received.
    pub frame: Bytes,
}

impl UserStatus {
    pub fn is_authenticated(&self) -> bool {
        self.status == 0
    }

    /// RS in words.
    pub fn meaning(&self) -> &'static str {
        match self.status {
            0 => "authenticated",
            1 => "user does not exist",
            2 => "bad password",
            3 => "badly formed parameters",
            5 => "account locked out",
            _ => "unknown status",
        }
    }

    fn parse(frame: &Bytes) -> Option<UserStatus> {
        let Ok(Envelope {
            message: Message::Us(us),
            ..
        }) = sdmp::decode(frame)
        else {
            return None;
        };
        let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
        Some(UserStatus {
            tenant: text(us.td),
            name: us.an.map(text),
            status: us.rs,
            privileges: us.pg,
            frame: frame.clone(),
        })
    }
}

impl Connection {
    /// Sends UA and waits (at most `within`) for the US. Meant as the first thing on a
    /// connection: anything else that arrives meanwhile, other than an ER for the UA, is
    /// passed over.
    pub async fn authenticate(
        &mut self,
        credentials: &Credentials,
        within: Duration,
    ) -> Result<UserStatus, Error> {
        let (td, an, pw) = (
            credentials.tenant.as_bytes(),
            credentials.name.as_bytes(),
            credentials.password.as_bytes(),
        );
        let ua = Ua {
            an: Some(an),
            pw: Some(pw),
            td: Some(td),
            ..Ua::default()
        };
        // The password is checked like any value but never named in the error.
        let frame = checked_frame(
            "credentials",
            ua.into(),
            &[("TD", Some(td)), ("AN", Some(an)), ("PW", Some(pw))],
        )?;
        self.send(&frame).await?;
        tokio::time::timeout(within, self.await_status())
            .await
            .map_err(|_| Error::Timeout(within))?
    }

    /// [`authenticate`](Self::authenticate), for a caller that cannot go on unauthenticated: a
    /// status other than RS 0 is [`Error::NotAuthenticated`], which names its meaning.
    pub async fn log_in(
        &mut self,
        credentials: &Credentials,
        within: Duration,
    ) -> Result<UserStatus, Error> {
        let status = self.authenticate(credentials, within).await?;
        if !status.is_authenticated() {
            return Err(Error::NotAuthenticated(Box::new(status)));
        }
        Ok(status)
    }

    async fn await_status(&mut self) -> Result<UserStatus, Error> {
        loop {
            let frame = match self.next_frame().await {
                None => return Err(Error::ConnectionLost),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Frame::Message(frame))) => frame,
                Some(Ok(_)) => continue,
            };
            match frame_code(&frame) {
                Some(codes::US) => {
                    if let Some(status) = UserStatus::parse(&frame) {
                        return Ok(status);
                    }
                    tracing::warn!("unreadable US: {}", String::from_utf8_lossy(&frame));
                }
                Some(codes::ER) => match ErrorReply::parse(&frame) {
                    Some(er) if er.refused() == Some(sdmp::Code(*b"UA")) => {
                        return Err(Error::Refused(Box::new(er)))
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestServer;
    use sdmp::WireForm;

    fn credentials(password: &str) -> Credentials {
        Credentials {
            tenant: "acme".into(),
            name: "crm".into(),
            password: password.into(),
        }
    }

    /// Answers UA like a server with one user `crm` whose password is `right`.
    async fn server() -> TestServer {
        TestServer::start(WireForm::Bits8, |mut conn| async move {
            while let Some(Ok(Frame::Message(frame))) = conn.next_frame().await {
                let answer: &[u8] = if &frame[..] == b"UA\\ANcrm\\PWright\\TDacme" {
                    b"DA\0US\\TDacme\\ANcrm\\RS0\\PG258"
                } else if frame.starts_with(b"UA") {
                    b"US\\TDacme\\ANcrm\\RS2"
                } else {
                    b"ER\\EC800\\MSunknown\\FM\"?\""
                };
                conn.send_raw(answer).await.unwrap();
                conn.send_raw(b"\0").await.unwrap();
            }
        })
        .await
    }

    #[tokio::test]
    async fn the_status_comes_back_whatever_it_says() {
        let server = server().await;
        let mut conn = Connection::connect(&server.addr, WireForm::Bits8)
            .await
            .unwrap();
        let within = Duration::from_secs(5);
        let status = conn
            .authenticate(&credentials("right"), within)
            .await
            .unwrap();
        assert!(status.is_authenticated());
        assert_eq!(
            (status.tenant.as_str(), status.name.as_deref()),
            ("acme", Some("crm"))
        );
        assert_eq!(
            status.privileges,
            Some(privileges::SUPERVISOR | privileges::SUPER_USER)
        );
        let status = conn
            .authenticate(&credentials("wrong"), within)
            .await
            .unwrap();
        assert_eq!((status.status, status.meaning()), (2, "bad password"));
        assert_eq!(&status.frame[..], b"US\\TDacme\\ANcrm\\RS2");
    }

    #[tokio::test]
    async fn log_in_takes_only_rs_0() {
        let server = server().await;
        let mut conn = Connection::connect(&server.addr, WireForm::Bits8)
            .await
            .unwrap();
        let within = Duration::from_secs(5);
        let error = conn
            .log_in(&credentials("wrong"), within)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "not authenticated as crm in tenant acme: RS 2 (bad password)"
        );
        assert!(!error.is_connection_failure());
        let status = conn.log_in(&credentials("right"), within).await.unwrap();
        assert_eq!(status.status, 0);
    }

    #[tokio::test]
    async fn bad_values_are_refused_before_sending_and_the_password_never_shown() {
        let mut bad = credentials("pa\\ss");
        let server = server().await;
        let mut conn = Connection::connect(&server.addr, WireForm::Bits8)
            .await
            .unwrap();
        let error = conn
            .authenticate(&bad, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!error.to_string().contains("pa\\ss"), "{error}");
        bad.password = "x".into();
        bad.name = "a/b".into();
        assert!(matches!(
            conn.authenticate(&bad, Duration::from_secs(5)).await,
            Err(Error::Invalid { .. })
        ));
        assert!(!format!("{:?}", credentials("secret")).contains("secret"));
    }

    #[tokio::test]
    async fn a_refused_ua_is_an_error() {
        let server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            while let Some(Ok(Frame::Message(frame))) = conn.next_frame().await {
                let mut er = b"ER\\EC812\\MSunknown tenant\\FM\"".to_vec();
                er.extend_from_slice(&frame);
                er.push(b'"');
                conn.send(&er).await.unwrap();
            }
        })
        .await;
        let mut conn = Connection::connect(&server.addr, WireForm::Bits8)
            .await
            .unwrap();
        match conn
            .authenticate(&credentials("x"), Duration::from_secs(5))
            .await
        {
            Err(Error::Refused(er)) => assert_eq!(er.ec, 812),
            other => panic!("{other:?}"),
        }
    }
}
