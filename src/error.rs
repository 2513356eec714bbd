//! The crate's one error type.
//!
//! Every layer reports through [`Error`]; callers tell kinds apart with `match` or the
//! predicates ([`Error::is_retryable`], [`Error::may_have_executed`],
//! [`Error::server_code`]) and never need to parse a message. A server's `-ERR` reply is
//! plain data ([`crate::Value::ServerError`]) until the caller asks for a typed result;
//! only then does it become [`Error::Server`].
//!
//! Errors are logged and shown to users: the client's own messages never contain
//! passwords, keys or values, and a server's error reply is shown without the parts
//! Redis is known to fill with them ([`ServerError`] lists those).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// `Result` with [`Error`] as the error type.
///
/// ```
/// use redcluster::{Error, Result};
/// fn parse_port(text: &str) -> Result<u16> {
///     text.parse().map_err(|_| Error::Config("port is not a number".into()))
/// }
/// assert_eq!(parse_port("7000").ok(), Some(7000));
/// assert!(parse_port("x").is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a Redis Cluster.
///
/// `Error` is `Clone` so that one failure (a dropped connection) can be handed to every
/// request that was waiting on it.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use redcluster::{cmd, Error};
/// match client.query::<i64>(cmd("INCR").arg("visits")).await {
///     Ok(n) => println!("visit {n}"),
///     Err(Error::Server(e)) if e.code() == "WRONGTYPE" => println!("not a counter"),
///     Err(Error::CrossSlot { slots }) => println!("keys span slots {slots:?}"),
///     Err(e) if e.may_have_executed() => println!("may or may not have counted: {e}"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error reply (`-WRONGTYPE ...`, `-NOPERM ...`).
    #[error("server error: {0}")]
    Server(ServerError),
    /// The keys of a command that must run on one node hash to different slots.
    #[error("keys of one command hash to different slots {slots:?}")]
    CrossSlot {
        /// The distinct slots the keys hash to, in the order first seen.
        slots: Vec<u16>,
    },
    /// The cluster cannot serve the request for now: a node answered `CLUSTERDOWN`
    /// until the request's retries or deadline ran out, or no node serves its slot
    /// (none known yet, before the first discovery; the slot's shard lost; a redirect
    /// to a node whose address is not known yet), or a call that needs every slot or
    /// node (a fan-out, a cluster-wide scan, a keyspace subscription) could not reach
    /// them all. Never sent, or refused unrun, unless the message says otherwise.
    #[error("cluster is down: {0}")]
    ClusterDown(String),
    /// A request was redirected (MOVED/ASK) more often than `max_redirects` allows.
    #[error("too many redirects ({redirects})")]
    TooManyRedirects {
        /// How many redirects were followed before giving up.
        redirects: u32,
    },
    /// The request did not complete within its deadline.
    ///
    /// `may_have_executed` is false when no attempt of it was written: its deadline
    /// passed while it waited for a connection, for room on one (`max_in_flight`
    /// requests already out), for a dedicated connection, or in the write queue. A
    /// request that was written and not answered in time may have run, or may still.
    #[error("request timed out{}", if *.may_have_executed { "" } else { " before it was sent" })]
    Timeout {
        /// Whether an attempt of the request was written before the deadline passed.
        may_have_executed: bool,
    },
    /// The node's circuit breaker is open: requests to it fail fast for a while.
    #[error("circuit breaker open for node {node}")]
    CircuitOpen {
        /// The node, as `host:port`.
        node: String,
    },
    /// Reading from or writing to a socket failed, or connecting failed.
    #[error("i/o error: {source}")]
    Io {
        /// The underlying error (shared, so that `Error` stays `Clone`).
        #[source]
        source: Arc<std::io::Error>,
        /// Whether the request may have been written before the failure.
        may_have_executed: bool,
    },
    /// The connection closed (or was closed) while the request was queued or in flight.
    #[error("connection lost{}", if *.may_have_executed { " after the request was sent" } else { " before the request was sent" })]
    ConnectionLost {
        /// Whether the request may have been written before the connection was lost.
        may_have_executed: bool,
    },
    /// The server sent bytes that are not valid RESP, a reply of an unexpected shape, or a
    /// redirect to an address no node of the cluster lists (not followed).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A reply could not be converted to the requested Rust type.
    #[error("type error: cannot convert {got} into {expected}")]
    Type {
        /// The Rust type asked for.
        expected: &'static str,
        /// What the reply was (a kind, never its content).
        got: &'static str,
    },
    /// The TLS handshake failed (certificate not trusted, name mismatch, the server
    /// refused the client's certificate). Setup errors found before connecting (an
    /// unreadable or malformed PEM file, no trusted CA) are [`Error::Config`].
    #[error("tls error: {0}")]
    Tls(String),
    /// Authentication was refused (wrong password, unknown user, ...).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The client's configuration or the user's input is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A write succeeded on the primary, but fewer replicas than asked acknowledged it
    /// within the timeout (`WAIT`). The write is not undone: it may still reach the
    /// replicas, or be lost if the primary fails before it does.
    #[error("write acknowledged by {acknowledged} of {requested} requested replicas")]
    NotReplicated {
        /// Replicas that acknowledged the write.
        acknowledged: u32,
        /// Replicas asked for.
        requested: u32,
    },
    /// The server refused `MULTI` (an ACL user without `+multi`, a `MULTI` renamed on the
    /// server but not in the client's [`crate::CommandRenames`]) and then ran the
    /// transaction's commands one by one as they came: not atomically, without the
    /// `WATCH` check, and whatever their replies (`EXEC` was refused too). Never resent;
    /// [`Error::may_have_executed`] is true. Holds `MULTI`'s refusal.
    #[error("MULTI refused, so the transaction's commands ran one by one: {0}")]
    NotAtomic(ServerError),
    /// A command of a pipeline failed (the first one, by position). The pipeline's other
    /// commands were still sent and may have run: use
    /// [`crate::Pipeline::execute_each`] to see every command's outcome.
    #[error("pipeline command {index} failed: {source}")]
    Pipeline {
        /// The command's position in the pipeline, from 0.
        index: usize,
        /// Why it failed.
        source: Box<Error>,
    },
    /// A write the client split over slots (`MSET`, `DEL`, `UNLINK` with keys in several
    /// slots) or sent to several nodes (`FLUSHALL`, `FUNCTION LOAD`, `CONFIG
    /// SET`, ...) failed in one part while another part ran: its effect is partial. Also
    /// a [`crate::ClusterClient::watch_retry`] body that failed after its transaction
    /// may have committed.
    /// [`Error::may_have_executed`] is true and it is not retryable as a whole, whatever
    /// the failed part's error (which may be retryable alone: `ClusterDown`).
    #[error("partly applied: {source}")]
    Partial {
        /// Why the failed part failed (the first one, in key or node order).
        source: Box<Error>,
    },
}

impl Error {
    /// Whether resending the request could succeed and cannot run it twice.
    ///
    /// True for failures that happened before the request could have reached the server
    /// and for cluster states that clear up by themselves (`TRYAGAIN`, `CLUSTERDOWN`,
    /// `LOADING`, `MASTERDOWN`, in the server's words: a script that answers
    /// `redis.error_reply("TRYAGAIN ...")` ran). Requests whose outcome is unknown are not retryable
    /// unless the command is idempotent, which the caller (or the cluster layer) decides.
    ///
    /// ```
    /// use redcluster::{Error, ServerError};
    /// let tryagain = ServerError::new("TRYAGAIN Multiple keys request during rehashing of slot");
    /// assert!(Error::Server(tryagain).is_retryable());
    /// assert!(Error::ConnectionLost { may_have_executed: false }.is_retryable());
    /// assert!(!Error::Timeout { may_have_executed: true }.is_retryable()); // it may have run
    /// assert!(Error::Timeout { may_have_executed: false }.is_retryable()); // never written
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            // A refusal in other words than the server's is a script's reply (it ran).
            Error::Server(e) => {
                matches!(
                    e.code(),
                    "TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN" | "MOVED" | "ASK"
                ) && crate::policy::servers_own_refusal(e)
            }
            Error::ClusterDown(_) | Error::CircuitOpen { .. } => true,
            Error::Io {
                may_have_executed, ..
            }
            | Error::ConnectionLost { may_have_executed }
            | Error::Timeout { may_have_executed } => !may_have_executed,
            _ => false,
        }
    }

    /// Whether the error says something about the node or the path to it (the
    /// connection failed, the node did not answer in time, it sent garbage), which is
    /// what a circuit breaker counts and what makes a request worth trying again on
    /// another connection. A request the client refused to send is not.
    pub(crate) fn is_node_failure(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::ConnectionLost { .. }
                | Error::Timeout { .. }
                | Error::Protocol(_)
        )
    }

    /// Whether the request may have reached the server and run there.
    ///
    /// When this is `true`, sending a non-idempotent request again (INCR, LPUSH, ...)
    /// could apply it twice. Server error replies count as "executed": the server saw the
    /// request (an error reply means it did not change data, except inside scripts).
    ///
    /// ```
    /// use redcluster::Error;
    /// assert!(Error::Timeout { may_have_executed: true }.may_have_executed());
    /// // `client.query::<i64>(cmd("SET").arg("k").arg("v"))`: the SET ran, its `OK` is no number.
    /// assert!(Error::Type { expected: "i64", got: "simple string" }.may_have_executed());
    /// assert!(!Error::ConnectionLost { may_have_executed: false }.may_have_executed());
    /// assert!(!Error::CrossSlot { slots: vec![1, 2] }.may_have_executed()); // never sent
    /// ```
    pub fn may_have_executed(&self) -> bool {
        match self {
            Error::Io {
                may_have_executed, ..
            }
            | Error::ConnectionLost { may_have_executed }
            | Error::Timeout { may_have_executed } => *may_have_executed,
            // Other commands of the pipeline ran, whatever happened to this one; a write
            // short of replicas ran on the primary.
            // A reply that did not convert (`Type`) came back from a command that ran.
            Error::Protocol(_)
            | Error::Server(_)
            | Error::Type { .. }
            | Error::Pipeline { .. }
            | Error::Partial { .. }
            | Error::NotAtomic(_)
            | Error::NotReplicated { .. } => true,
            _ => false,
        }
    }

    /// The error code of a server error reply (`"WRONGTYPE"`, `"NOPERM"`, `"MOVED"`, ...).
    ///
    /// ```
    /// use redcluster::{Error, ServerError};
    /// let reply = ServerError::new("NOPERM User app has no permissions to run the 'del' command");
    /// assert_eq!(Error::Server(reply).server_code(), Some("NOPERM"));
    /// assert_eq!(Error::Timeout { may_have_executed: true }.server_code(), None);
    /// ```
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(e.code()),
            Error::Pipeline { source, .. } | Error::Partial { source } => source.server_code(),
            _ => None,
        }
    }

    /// This error of one part of a request whose other parts may have run (a split
    /// `MGET`, a fan-out): the request as a whole may have, whatever this part's flag
    /// said.
    pub(crate) fn with_other_parts_run(self) -> Self {
        match self {
            Error::Timeout { .. } => Error::Timeout {
                may_have_executed: true,
            },
            Error::ConnectionLost { .. } => Error::ConnectionLost {
                may_have_executed: true,
            },
            Error::Io { source, .. } => Error::Io {
                source,
                may_have_executed: true,
            },
            other => other,
        }
    }

    pub(crate) fn io(source: std::io::Error, may_have_executed: bool) -> Self {
        Error::Io {
            source: Arc::new(source),
            may_have_executed,
        }
    }
}

impl From<ServerError> for Error {
    fn from(e: ServerError) -> Self {
        Error::Server(e)
    }
}

/// An error reply from the server: `-CODE message` or a RESP3 blob error.
///
/// The code is the first word of the reply (`ERR`, `WRONGTYPE`, `MOVED`, ...).
///
/// `Display` and `Debug` leave out the arguments the server quotes in its reply to a
/// command it does not know (`ERR unknown command 'CONFIG', with args beginning with:
/// ...`): they may be keys, values or a password (`CONFIG SET requirepass ...` to a
/// node where `CONFIG` is renamed), the rule an `ACL SETUSER` refused, the value
/// Redis 6 quotes when it refuses a `CONFIG SET`, the key and group names of the stream
/// commands' `NOGROUP`, and the coordinates a `GEOADD` refused. Other replies are shown
/// as the server wrote them (a script's own error reply, say).
/// [`message`](Self::message) and [`as_bytes`](Self::as_bytes) give the whole reply.
///
/// ```
/// use redcluster::ServerError;
/// let e = ServerError::new("MOVED 3999 127.0.0.1:6381");
/// assert_eq!(e.code(), "MOVED");
/// assert_eq!(e.message(), "3999 127.0.0.1:6381");
/// ```
#[derive(Clone)]
pub struct ServerError {
    /// The whole reply line, without the leading `-` and trailing CRLF.
    text: Bytes,
    /// A reply that reads like the server's redirect (`MOVED`, `ASK`) but that the
    /// client judged not to be one (a script's `redis.error_reply`, naming another slot
    /// than the command's keys'): the command ran, and is not to be sent again.
    pub(crate) not_the_servers: bool,
}

// Equal by what the server sent: how the client judged a reply is no part of it.
impl PartialEq for ServerError {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for ServerError {}

impl std::hash::Hash for ServerError {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl ServerError {
    /// Wraps a raw error reply (without the leading `-`).
    ///
    /// ```
    /// let e = redcluster::ServerError::new("ERR unknown command 'FOO'");
    /// assert_eq!(e.to_string(), "ERR unknown command 'FOO'");
    /// ```
    pub fn new(text: impl Into<Bytes>) -> Self {
        ServerError {
            text: text.into(),
            not_the_servers: false,
        }
    }

    /// This reply, judged not to be the server's redirect though it reads like one
    /// (see [`ServerError::not_the_servers`]).
    pub(crate) fn taken_as_reply(mut self) -> Self {
        self.not_the_servers = matches!(self.code(), "MOVED" | "ASK");
        self
    }

    /// The first word of the reply: `"ERR"`, `"WRONGTYPE"`, `"MOVED"`, ...
    ///
    /// ```
    /// let text = "WRONGTYPE Operation against a key holding the wrong kind of value";
    /// assert_eq!(redcluster::ServerError::new(text).code(), "WRONGTYPE");
    /// ```
    pub fn code(&self) -> &str {
        let end = self
            .text
            .iter()
            .position(|&b| b == b' ')
            .unwrap_or(self.text.len());
        std::str::from_utf8(&self.text[..end]).unwrap_or("")
    }

    /// What follows the code, e.g. `"3999 127.0.0.1:6381"` for a MOVED reply.
    ///
    /// ```
    /// let e = redcluster::ServerError::new("ASK 3999 127.0.0.1:6381");
    /// assert_eq!(e.message(), "3999 127.0.0.1:6381");
    /// ```
    pub fn message(&self) -> &str {
        let text = std::str::from_utf8(&self.text).unwrap_or("");
        match text.find(' ') {
            Some(i) => &text[i + 1..],
            None => "",
        }
    }

    /// The whole reply as bytes, code included.
    ///
    /// ```
    /// let e = redcluster::ServerError::new("ERR syntax error");
    /// assert_eq!(e.as_bytes(), b"ERR syntax error");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }
}

/// Where a reply to an unknown command starts quoting the command's arguments.
const ARGS_QUOTED: &str = ", with args beginning with:";
/// Where `ACL SETUSER`'s refusal quotes the rule it refused: `>password`, `#hash`.
const RULE_QUOTED: &str = "Error in ACL SETUSER modifier '";
/// Where `ACL SETUSER`'s refusal of an unclosed selector quotes a rule: early Redis 7.0
/// releases quote the argument three places before the `(` (`>password` as often as
/// not), later ones the selector (`(~y:*`, shown: a selector holds no password).
const SELECTOR_QUOTED: &str = "Unmatched parenthesis in acl selector starting at '";
/// Where Redis 6's refusal of a `CONFIG SET` quotes the value (`requirepass`,
/// `masterauth`): `ERR Invalid argument '<value>' for CONFIG SET '<name>'`.
const VALUE_QUOTED: &str = "Invalid argument '";
/// What follows that value.
const VALUE_QUOTED_END: &str = "' for CONFIG SET '";
/// Where `GEOADD`/`GEOSEARCH` quote the coordinates they refused (a place is personal
/// data): `ERR invalid longitude,latitude pair <lon>,<lat>`.
const COORDINATES_QUOTED: &str = "invalid longitude,latitude pair ";

impl ServerError {
    /// The reply as `Display` and `Debug` show it: without quoted arguments or rules,
    /// which may be passwords.
    fn shown(&self) -> std::borrow::Cow<'_, str> {
        let text = String::from_utf8_lossy(&self.text);
        // Every `NOGROUP` of the stream commands quotes the key and the group
        // (`No such key '<key>' or consumer group '<group>' ...`, `No such consumer
        // group '<group>' for key name '<key>'`).
        if self.code() == "NOGROUP" {
            return "NOGROUP no such key or consumer group (their names not shown)".into();
        }
        if let Some(at) = text.find(COORDINATES_QUOTED) {
            return format!("{}{COORDINATES_QUOTED}(not shown)", &text[..at]).into();
        }
        if let Some(at) = text.find(ARGS_QUOTED) {
            return format!("{}{ARGS_QUOTED} (not shown)", &text[..at]).into();
        }
        if let Some(at) = text.find(RULE_QUOTED) {
            let quoted = at + RULE_QUOTED.len();
            // The reason follows the rule's closing quote; the rule may hold quotes.
            let reason = text[quoted..]
                .rfind("': ")
                .map_or("", |end| &text[quoted + end + 1..]);
            let head = &text[..quoted - 1];
            return format!("{head}(not shown){reason}").into();
        }
        if let Some(at) = text.find(SELECTOR_QUOTED) {
            let quoted = at + SELECTOR_QUOTED.len();
            if !text[quoted..].starts_with('(') {
                return format!("{}(not shown)", &text[..quoted - 1]).into();
            }
        }
        if let Some(at) = text.find(VALUE_QUOTED) {
            let quoted = at + VALUE_QUOTED.len();
            // The value may hold quotes: the name follows the last such marker.
            let name = text[quoted..]
                .rfind(VALUE_QUOTED_END)
                .map_or("", |end| &text[quoted + end + 1..]);
            let head = &text[..quoted - 1];
            return format!("{head}(not shown){name}").into();
        }
        text
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

impl fmt::Debug for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerError({:?})", self.shown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_leave_out_quoted_arguments() {
        let text =
            "ERR unknown command 'CONFIG', with args beginning with: 'SET' 'requirepass' 'pw-123' ";
        let e = ServerError::new(text);
        for shown in [
            e.to_string(),
            format!("{e:?}"),
            Error::Server(e.clone()).to_string(),
        ] {
            assert!(!shown.contains("pw-123"), "{shown}");
            assert!(shown.contains("unknown command 'CONFIG'"), "{shown}");
        }
        assert_eq!(e.as_bytes(), text.as_bytes());
        assert!(e.message().ends_with("'pw-123' "));
        let plain = ServerError::new("WRONGTYPE Operation against a key");
        assert_eq!(plain.to_string(), "WRONGTYPE Operation against a key");
        // Redis 6 quotes the value a `CONFIG SET` refused (a password over 512 bytes).
        let text = "ERR Invalid argument 'pw-'123' for CONFIG SET 'requirepass'";
        let e = ServerError::new(text);
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains("pw-"), "{shown}");
            assert!(shown.contains("for CONFIG SET 'requirepass'"), "{shown}");
        }
        assert_eq!(e.as_bytes(), text.as_bytes());
        // Redis 7.0 quotes an argument near an unclosed ACL selector.
        let text = "ERR Unmatched parenthesis in acl selector starting at '>pw-123'.";
        let e = ServerError::new(text);
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains("pw-"), "{shown}");
            assert!(
                shown.contains("acl selector starting at (not shown)"),
                "{shown}"
            );
        }
        // Later releases quote the selector itself.
        let text = "ERR Unmatched parenthesis in acl selector starting at '(~y:*'.";
        assert_eq!(ServerError::new(text).to_string(), text);
    }

    #[test]
    fn stream_group_and_coordinate_refusals_leave_out_what_they_quote() {
        for text in [
            "NOGROUP No such key 'user:alice@example.com' or consumer group 'billing' in XREADGROUP with GROUP option",
            "NOGROUP No such key 'user:alice@example.com' or consumer group 'billing'",
            "NOGROUP No such consumer group 'billing' for key name 'user:alice@example.com'",
        ] {
            let e = ServerError::new(text);
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(!shown.contains("alice") && !shown.contains("billing"), "{shown}");
                assert!(shown.starts_with("NOGROUP") || shown.contains("NOGROUP"), "{shown}");
            }
            assert_eq!(e.code(), "NOGROUP");
            assert_eq!(e.message(), &text["NOGROUP ".len()..]);
        }
        let e = ServerError::new("ERR invalid longitude,latitude pair 13.404954,52.520008");
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(
                !shown.contains("13.40") && !shown.contains("52.52"),
                "{shown}"
            );
            assert!(
                shown.contains("invalid longitude,latitude pair (not shown)"),
                "{shown}"
            );
        }
    }

    #[test]
    fn server_error_splits_code_and_message() {
        let e = ServerError::new("MOVED 3999 127.0.0.1:6381");
        assert_eq!(e.code(), "MOVED");
        assert_eq!(e.message(), "3999 127.0.0.1:6381");
        let e = ServerError::new("ERR");
        assert_eq!(e.code(), "ERR");
        assert_eq!(e.message(), "");
    }

    #[test]
    fn predicates_follow_the_retry_rule() {
        let lost_before = Error::ConnectionLost {
            may_have_executed: false,
        };
        assert!(lost_before.is_retryable());
        assert!(!lost_before.may_have_executed());
        let lost_after = Error::ConnectionLost {
            may_have_executed: true,
        };
        assert!(!lost_after.is_retryable());
        assert!(lost_after.may_have_executed());
        let written = Error::Timeout {
            may_have_executed: true,
        };
        assert!(written.may_have_executed() && !written.is_retryable());
        let queued = Error::Timeout {
            may_have_executed: false,
        };
        assert!(!queued.may_have_executed() && queued.is_retryable());
        assert_eq!(queued.to_string(), "request timed out before it was sent");
        assert_eq!(written.to_string(), "request timed out");
        let tryagain = Error::Server(ServerError::new("TRYAGAIN Multiple keys request"));
        assert!(tryagain.is_retryable());
        assert_eq!(tryagain.server_code(), Some("TRYAGAIN"));
        let wrongtype = Error::Server(ServerError::new("WRONGTYPE Operation"));
        assert!(!wrongtype.is_retryable());
        // The commands of a transaction whose MULTI was refused ran one by one.
        let not_atomic = Error::NotAtomic(ServerError::new("NOPERM no permissions to run 'multi'"));
        assert!(not_atomic.may_have_executed() && !not_atomic.is_retryable());
    }
}
