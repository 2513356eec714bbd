//! What a node connection is opened with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::resp::Limits;

/// The RESP version a connection asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// RESP3 via `HELLO 3`, falling back to RESP2 when the server refuses it (default).
    #[default]
    Resp3,
    /// RESP2 only; authenticates with `AUTH`.
    Resp2,
}

/// A password or other secret. `Debug` and `Display` print `"***"`, so a secret can sit in
/// configuration structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret string.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(Arc::from(secret.into()))
    }

    /// The secret itself; only for sending it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

/// How to open and run one connection to one node.
///
/// `Debug` never shows the password.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Bound on TCP connect plus handshake (`HELLO`/`AUTH`/`READONLY`). Default 5 s.
    pub connect_timeout: Duration,
    /// Deadline of a request sent with [`crate::NodeConnection::send`]. Default 5 s.
    pub response_timeout: Duration,
    /// ACL user name; `None` authenticates as `default` when a password is set.
    pub username: Option<String>,
    /// Password for `AUTH`/`HELLO ... AUTH`.
    pub password: Option<Secret>,
    /// RESP version to ask for. Default [`Protocol::Resp3`].
    pub protocol: Protocol,
    /// Send `READONLY` after the handshake, for reads from replicas. Default false.
    pub read_only: bool,
    /// TCP keepalive idle time; `None` turns keepalive off. Default 60 s.
    pub tcp_keepalive: Option<Duration>,
    /// `CLIENT SETNAME` value shown in `CLIENT LIST`. Default none.
    pub client_name: Option<String>,
    /// Requests written but not yet answered, at most; more wait in a queue of the same
    /// size, and callers beyond that wait to enqueue (backpressure). Default 4096.
    pub max_in_flight: usize,
    /// Decoder limits for replies.
    pub limits: Limits,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            username: None,
            password: None,
            protocol: Protocol::Resp3,
            read_only: false,
            tcp_keepalive: Some(Duration::from_secs(60)),
            client_name: None,
            max_in_flight: 4096,
            limits: Limits::default(),
        }
    }
}

impl ConnectOptions {
    /// Sets the password (and keeps the user name as it is).
    pub fn password(mut self, password: impl Into<Secret>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the ACL user name.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets [`ConnectOptions::protocol`].
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets [`ConnectOptions::read_only`].
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets [`ConnectOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::response_timeout`].
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::max_in_flight`] (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let opts = ConnectOptions::default()
            .username("app")
            .password("hunter2");
        let shown = format!("{opts:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
        assert_eq!(opts.password.unwrap().expose(), "hunter2");
    }
}
