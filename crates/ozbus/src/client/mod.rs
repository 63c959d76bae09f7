//! Client tools: `ozbus tail`, `ozbus send` and `ozbus bench`, the programs a person or a script
//! uses to talk to an SDMP server (ozbus or anything else speaking the protocol).
//!
//! Owns: the command line of the three tools and what they show; each tool is one file, with
//! its clap arguments and its `run`. Here: the flags every tool shares to reach a server
//! (`--tls` with its PEM files, `--user` with `--user-tenant`, the password from
//! OZBUS_PASSWORD or a prompt) and [`Access`], which opens and authenticates connections with
//! them. Connections, TLS, frames, subscriptions and fail-over between several `--addr` come
//! from the `sdmp-client` crate.
//!
//! Never: opens sockets or cuts frames itself, or depends on the service's internals (the tools
//! speak only SDMP, so they work against any server); the one exception is `bench`, which
//! starts an in-process server when it is given no address.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use sdmp::WireForm;
use sdmp_client::{ConnectOptions, Connection, Credentials, Servers, Tls, CONFIRM_WAIT};

pub mod bench;
pub mod roll_forward;
pub mod send;
pub mod storm;
pub mod tail;

/// Where the password of `--user` comes from when it is not asked for.
pub const PASSWORD_VARIABLE: &str = "OZBUS_PASSWORD";

/// The wire form a `--utf16` flag selects.
pub fn wire_form(utf16: bool) -> WireForm {
    if utf16 {
        WireForm::Utf16Le
    } else {
        WireForm::Bits8
    }
}

/// Where `tail` and `send` connect.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Server address; several (repeated, or separated by commas): the first that answers is
    /// used, and `tail --persist` moves on to the next when a connection is lost.
    #[arg(
        long,
        visible_alias = "server",
        env = "OZBUS_ADDR",
        default_value = "127.0.0.1:6502",
        value_delimiter = ','
    )]
    pub addr: Vec<String>,
    /// Speak UTF-16LE (the 6500 listener) instead of 8-bit.
    #[arg(long)]
    pub utf16: bool,
    #[command(flatten)]
    pub access: AccessArgs,
}

impl ServerArgs {
    /// How to reach the servers named: wire form, TLS, user (its password read now, see
    /// [`AccessArgs::access`]).
    pub fn access(&self, stdin_free: bool) -> anyhow::Result<Access> {
        self.access.access(wire_form(self.utf16), stdin_free)
    }
}

/// How a tool connects beyond the address: TLS, and the user it authenticates as.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AccessArgs {
    /// Connect with TLS (to a listener of the server's [tls] section); needs --ca-file.
    #[arg(long, requires = "ca_file")]
    pub tls: bool,
    /// PEM file with the CA certificates trusted to sign the server's certificate (with --tls;
    /// the system's certificate store is not used). The certificate must name the host of
    /// the address, or its IP address.
    #[arg(long, value_name = "PEM", requires = "tls")]
    pub ca_file: Option<PathBuf>,
    /// PEM file with a client certificate, for a server that requires one (with --tls and
    /// --client-key).
    #[arg(long, value_name = "PEM", requires_all = ["tls", "client_key"])]
    pub client_cert: Option<PathBuf>,
    /// PEM file with the private key of --client-cert.
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Authenticate (UA) as this user right after connecting, and again on every new
    /// connection; needs --user-tenant. The password is read from OZBUS_PASSWORD, else asked
    /// for without echo.
    #[arg(long, value_name = "NAME", requires = "user_tenant")]
    pub user: Option<String>,
    /// The tenant of --user (the TD of its UA); `landlord` for a user acting for every tenant.
    #[arg(long, value_name = "TENANT", requires = "user")]
    pub user_tenant: Option<String>,
}

impl AccessArgs {
    /// True when any of these flags was given.
    pub fn given(&self) -> bool {
        self.tls
            || self.ca_file.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.user.is_some()
            || self.user_tenant.is_some()
    }

    /// The settings the flags ask for: the PEM files read, and with `--user` the password,
    /// from OZBUS_PASSWORD, else asked for (without echo on a terminal; as the first line of
    /// standard input otherwise, which only a `stdin_free` tool may take).
    pub fn access(&self, form: WireForm, stdin_free: bool) -> anyhow::Result<Access> {
        let tls = match (self.tls, &self.ca_file) {
            (false, _) => None,
            (true, None) => {
                bail!("--tls needs --ca-file: the system's certificate store is not used")
            }
            (true, Some(ca)) => {
                let client = match (&self.client_cert, &self.client_key) {
                    (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                    (None, None) => None,
                    _ => bail!("--client-cert and --client-key go together"),
                };
                Some(Tls::from_pem_files(ca, client)?)
            }
        };
        let credentials = match (&self.user, &self.user_tenant) {
            (None, None) => None,
            (Some(name), Some(tenant)) => Some(Credentials {
                tenant: tenant.clone(),
                name: name.clone(),
                password: password(name, tenant, stdin_free)?,
            }),
            _ => bail!("--user and --user-tenant go together"),
        };
        Ok(Access {
            form,
            options: ConnectOptions {
                tls,
                ..ConnectOptions::default()
            },
            credentials,
        })
    }
}

/// The password of `name` in `tenant`: OZBUS_PASSWORD, else read by [`crate::cli::read_password`].
/// An empty one is refused here: no user has it, and a UA without it is not even well formed.
fn password(name: &str, tenant: &str, stdin_free: bool) -> anyhow::Result<String> {
    let password = match std::env::var_os(PASSWORD_VARIABLE) {
        Some(password) => password
            .into_string()
            .map_err(|_| anyhow::anyhow!("{PASSWORD_VARIABLE} is not valid UTF-8"))?,
        None if !stdin_free && !std::io::stdin().is_terminal() => bail!(
            "the frames to send come from standard input, so the password of --user cannot: \
             set {PASSWORD_VARIABLE}"
        ),
        None => crate::cli::read_password(&format!("Password of {name} in tenant {tenant}: "))?,
    };
    if password.is_empty() {
        bail!("no password for --user {name}: set {PASSWORD_VARIABLE}, or type it when asked");
    }
    Ok(password)
}

/// How a tool reaches a server: wire form, connect options (TLS), and the user it
/// authenticates as on every connection it opens.
#[derive(Clone, Debug)]
pub struct Access {
    form: WireForm,
    options: ConnectOptions,
    credentials: Option<Credentials>,
}

impl Access {
    /// Plain TCP in `form`, no user.
    pub fn plain(form: WireForm) -> Access {
        Access {
            form,
            options: ConnectOptions::default(),
            credentials: None,
        }
    }

    /// The servers `addrs` names, to be connected to with these settings.
    pub fn servers(&self, addrs: &[String]) -> anyhow::Result<Servers> {
        let addrs = addrs.iter().map(|addr| addr.trim());
        Ok(Servers::new(addrs, self.form)?.with_options(self.options.clone()))
    }

    /// The user every connection authenticates as.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// A connection to the first of `servers` that answers, authenticated when a user is
    /// given: a refused UA is an error that names the RS and its meaning.
    pub async fn connect(&self, servers: &mut Servers) -> anyhow::Result<Connection> {
        let conn = servers.connect().await?;
        self.log_in(conn).await
    }

    /// A connection to `addr`, authenticated when a user is given.
    pub async fn connect_to(&self, addr: &str) -> anyhow::Result<Connection> {
        let conn = Connection::connect_with(addr, self.form, &self.options).await?;
        self.log_in(conn).await
    }

    async fn log_in(&self, mut conn: Connection) -> anyhow::Result<Connection> {
        if let Some(credentials) = &self.credentials {
            conn.log_in(credentials, CONFIRM_WAIT)
                .await
                .with_context(|| format!("authenticating to {}", conn.peer()))?;
        }
        Ok(conn)
    }
}
