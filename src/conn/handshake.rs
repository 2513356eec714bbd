//! The connection handshake: protocol, authentication, name, read-only mode.
//!
//! With [`Protocol::Resp3`] it sends `HELLO 3 [AUTH user pass] [SETNAME name]`; a server
//! that refuses `HELLO` (older than 6, or `NOPROTO`) gets `AUTH` and stays on RESP2.
//! Authentication failures become [`Error::Auth`] here, at connect time, instead of
//! `NOAUTH` errors on every later command: on RESP2 with neither a password nor a name to
//! send, a `PING` asks. The credentials come from the options'
//! [`crate::CredentialsProvider`], asked anew for every connection, or else from its fixed
//! user name and password. Last, for a connection the cluster client opens to an address
//! whose node id its topology gives, `CLUSTER MYID` checks that this node answers there
//! (see [`crate::conn::NodeIds`]).

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cmd::{cmd, Cmd, CommandRenames};
use crate::conn::options::{ConnectOptions, CredentialsProvider, Protocol, Secret};
use crate::error::{Error, Result, ServerError};
use crate::resp::{Decoder, Value};

pub(crate) async fn run<R, W>(
    addr: &str,
    read: &mut R,
    write: &mut W,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
    options: &ConnectOptions,
    deadline: tokio::time::Instant,
) -> Result<Protocol>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut io = Io {
        read,
        write,
        rbuf,
        decoder,
        renames: &options.renames,
    };
    // A provider is asked on every connection: passwords may have rotated.
    let (username, password) = match &options.credentials {
        Some(provider) => {
            tracing::trace!("asking the credentials provider");
            let (user, password) = ask(provider, deadline).await?;
            (user, Some(password))
        }
        None => (options.username.clone(), options.password.clone()),
    };
    // An empty password without a user name is none: over RESP2 `AUTH ""` is refused by
    // a server without a password, where `HELLO 3 AUTH default ""` passes.
    let password = password.filter(|p| !p.expose().is_empty() || username.is_some());
    // A user name alone is a `nopass` ACL user's login (any password is theirs): sent
    // with an empty one, rather than left out to run the connection as `default`.
    let password = password.or_else(|| username.as_ref().map(|_| Secret::new("")));
    let mut protocol = Protocol::Resp2;
    let mut authenticated = false;
    if options.protocol == Protocol::Resp3 {
        let mut hello = cmd("HELLO").arg(3);
        if let Some(password) = &password {
            let user = username.as_deref().unwrap_or("default");
            hello = hello.arg("AUTH").arg(user).arg(password.expose());
        }
        if let Some(name) = &options.client_name {
            hello = hello.arg("SETNAME").arg(name.as_str());
        }
        match io.call(&hello).await? {
            Value::ServerError(e) if is_auth_error(&e) => {
                return Err(auth_error(&e, password.as_ref()))
            }
            // A node that cannot answer anything now: not a server without RESP3. Taken
            // for one, this connection would speak RESP2 for its whole life.
            Value::ServerError(e) if refused_for_now(&e) => {
                return Err(Error::io(
                    std::io::Error::other(format!("HELLO refused for now ({})", e.code())),
                    false,
                ));
            }
            // Older servers do not know HELLO; NOPROTO means no RESP3. Both speak RESP2.
            Value::ServerError(e) => {
                tracing::debug!(code = e.code(), "HELLO 3 refused, using RESP2");
            }
            _ => {
                protocol = Protocol::Resp3;
                authenticated = true;
            }
        }
    }
    if !authenticated {
        if let Some(password) = &password {
            let mut auth = cmd("AUTH");
            if let Some(user) = &username {
                auth = auth.arg(user.as_str());
            }
            auth = auth.arg(password.expose());
            if let Value::ServerError(e) = io.call(&auth).await? {
                return Err(auth_error(&e, Some(password)));
            }
        }
        if let Some(name) = &options.client_name {
            if let Value::ServerError(e) = io
                .call(&cmd("CLIENT").arg("SETNAME").arg(name.as_str()))
                .await?
            {
                return Err(handshake_error("CLIENT SETNAME", &e));
            }
        }
    }
    if options.read_only {
        if let Value::ServerError(e) = io.call(&cmd("READONLY")).await? {
            return Err(handshake_error("READONLY", &e));
        }
    } else if !authenticated && password.is_none() && options.client_name.is_none() {
        // Nothing was asked of the server yet (RESP2, no password, no name): one `PING`,
        // so that a server that wants a password says so now, as `Error::Auth`, rather
        // than with `NOAUTH` on every later command.
        // Only a refusal for credentials fails the connect: a loading node, a renamed
        // `PING` or an ACL without it are for later requests to meet.
        if let Value::ServerError(e) = io.call(&cmd("PING")).await? {
            if is_auth_error(&e) {
                return Err(auth_error(&e, None));
            }
            // Written on accept by a server at `maxclients`, which then closes: handed
            // out, the connection would fail its first request after writing it.
            if e.message().starts_with("max number of clients") {
                return Err(handshake_error("PING", &e));
            }
        }
    }
    if let Some(expected) = options.node_ids.as_ref().and_then(|ids| ids.of(addr)) {
        check_identity(&mut io, addr, &expected).await?;
    }
    Ok(protocol)
}

/// Checks that the node answering at `addr` is the one the cluster's topology names
/// there (see [`crate::conn::NodeIds`]). A node that cannot say (an ACL without
/// `cluster|myid`, a renamed command, a reply that is no string) is taken at its word;
/// a server not in cluster mode is no node of this cluster.
async fn check_identity<R, W>(io: &mut Io<'_, R, W>, addr: &str, expected: &str) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let reply = io.call(&cmd("CLUSTER").arg("MYID")).await?;
    let answered = match &reply {
        Value::ServerError(e) if e.message().contains("cluster support disabled") => {
            "a server with cluster support disabled".to_string()
        }
        Value::ServerError(e)
            if e.code() == "NOPERM"
                || e.message().contains("unknown command")
                || e.message().contains("unknown subcommand") =>
        {
            tracing::debug!(
                node = addr,
                code = e.code(),
                "CLUSTER MYID refused: node identity not checked"
            );
            return Ok(());
        }
        // A passing state (`LOADING`, `BUSY`): asked again at the next connect.
        Value::ServerError(e) => {
            return Err(Error::io(
                std::io::Error::other(format!(
                    "the node at {addr} did not say its id ({}): not used until it does",
                    e.code()
                )),
                false,
            ))
        }
        reply => match reply.as_bytes() {
            Some(id) if id == expected.as_bytes() => return Ok(()),
            // Ids are 40 characters; whatever else a server sent is cut there.
            Some(id) => format!("node {}", String::from_utf8_lossy(&id[..id.len().min(40)])),
            None => {
                tracing::debug!(
                    node = addr,
                    reply = reply.kind(),
                    "CLUSTER MYID gave no id: node identity not checked"
                );
                return Ok(());
            }
        },
    };
    tracing::warn!(node = addr, answered = %answered, expected, "another node answers at this address: connection refused");
    // Not sent, and the path to the cluster's node is what failed: the cluster client
    // refreshes its topology and retries, as for a node that is down.
    Err(Error::io(
        std::io::Error::other(format!(
            "{answered} answers at {addr}, where the cluster's topology has node {expected}: \
             the address reaches another server now, or a node that replaced it since the \
             last refresh"
        )),
        false,
    ))
}

/// Runs the provider on its own task: its future need not be `Sync`, and the handshake's
/// future stays `Send + Sync` all the same. Dropping the handshake aborts the task.
///
/// A provider that has not answered by the connect's `deadline` is an [`Error::Auth`]:
/// the node is not at fault (as the handshake's timeout would say, counting a failure
/// against every node's breaker while a secrets store is slow), and the error names the
/// provider.
async fn ask(
    provider: &CredentialsProvider,
    deadline: tokio::time::Instant,
) -> Result<(Option<String>, Secret)> {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let provider = provider.clone();
    let mut task = AbortOnDrop(tokio::spawn(async move { provider.credentials().await }));
    let Ok(answer) = tokio::time::timeout_at(deadline, &mut task.0).await else {
        return Err(Error::Auth(
            "the credentials provider did not answer within the connect timeout".into(),
        ));
    };
    match answer {
        Ok(result) => result,
        Err(e) => Err(Error::Auth(if e.is_panic() {
            "the credentials provider panicked".into()
        } else {
            "the credentials provider was cancelled".into()
        })),
    }
}

/// A refusal that says the node cannot serve now (loading its data, busy in a script,
/// cut off from its primary, in a failover), whatever it would answer `HELLO` later.
fn refused_for_now(e: &ServerError) -> bool {
    matches!(
        e.code(),
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN"
    )
}

fn is_auth_error(e: &ServerError) -> bool {
    match e.code() {
        "WRONGPASS" | "NOAUTH" => true,
        // `ERR AUTH <password> called without any password configured ...`; but an old
        // server's "unknown command 'HELLO', with args beginning with: 3 AUTH ..." is not.
        "ERR" => {
            let m = e.message();
            !m.contains("unknown command") && (m.contains("AUTH") || m.contains("password"))
        }
        _ => false,
    }
}

/// The error for a refused `AUTH` (or `HELLO ... AUTH`). A server quotes the arguments
/// of a command it does not know (`unknown command 'AUTH', with args beginning with:
/// 'hunter2'`, when `AUTH` is renamed or disabled): such a reply becomes a fixed text.
/// Any other that holds the password (a proxy that quotes it, or a password that is a
/// word of the server's own text) is shown by its code alone: cutting the password out
/// would let the text around the cut spell it (`WRONGPASS invalid username-*** pair`
/// for the password `password`).
fn auth_error(e: &ServerError, password: Option<&Secret>) -> Error {
    if e.message().contains("unknown command") {
        return Error::Auth(format!(
            "{}: the server does not know AUTH (renamed or disabled?)",
            e.code()
        ));
    }
    let text = e.to_string();
    match password.map(Secret::expose) {
        Some(p) if !p.is_empty() && text.contains(p) => Error::Auth(format!(
            "{}: the rest of the server's reply is not shown, as it holds the password",
            e.code()
        )),
        _ => Error::Auth(text),
    }
}

/// The error of a handshake `step` the server refused. None of the caller's commands
/// was sent, and a refusal that will come again at every connect is no failure of the
/// node: an ACL user without the permission (`+readonly`, `+client|setname`) is
/// [`Error::Auth`], a refused setting (a client name with a space, a renamed command)
/// [`Error::Config`]. A passing state (`LOADING`, `BUSY`, `maxclients`) stays a failure
/// of the node, to be retried: [`Error::Io`] that says nothing was sent (a `Protocol`
/// error would say the caller's command may have run).
fn handshake_error(step: &str, e: &ServerError) -> Error {
    if is_auth_error(e) {
        return auth_error(e, None);
    }
    let text = format!("{step} refused during the handshake: {e}");
    // Only the refusals that come again at every connect: a node at `maxclients` also
    // answers `ERR`, for now.
    let message = e.message();
    let for_good = [
        "Client names cannot",
        "unknown command",
        "unknown subcommand",
    ];
    match e.code() {
        "NOPERM" => Error::Auth(text),
        "ERR" if for_good.iter().any(|m| message.contains(m)) => Error::Config(text),
        _ => Error::io(std::io::Error::other(text), false),
    }
}

struct Io<'a, R, W> {
    read: &'a mut R,
    write: &'a mut W,
    rbuf: &'a mut BytesMut,
    decoder: &'a mut Decoder,
    renames: &'a CommandRenames,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Io<'_, R, W> {
    /// Sends one command and reads exactly one reply (push frames skipped). Its errors
    /// say `may_have_executed() == false`: no command of the caller's has been sent.
    async fn call(&mut self, command: &Cmd) -> Result<Value> {
        let mut out = BytesMut::with_capacity(command.encoded_len());
        self.renames.write(command, &mut out);
        self.write
            .write_all(&out)
            .await
            .map_err(|e| Error::io(e, false))?;
        // TLS may hold encrypted records until flushed.
        self.write.flush().await.map_err(|e| Error::io(e, false))?;
        loop {
            // No RESP (another service on the port): nothing of the caller's was sent.
            let decoded = self.decoder.decode(self.rbuf).map_err(|e| {
                let text = format!("the handshake's reply is no RESP: {e}");
                Error::io(
                    std::io::Error::new(std::io::ErrorKind::InvalidData, text),
                    false,
                )
            })?;
            match decoded {
                Some(Value::Push(_)) => continue,
                Some(mut value) => {
                    self.renames.scrub(&mut value);
                    return Ok(value);
                }
                None => {}
            }
            self.rbuf.reserve(4096);
            let n = self
                .read
                .read_buf(self.rbuf)
                .await
                .map_err(|e| Error::io(e, false))?;
            if n == 0 {
                return Err(Error::io(
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection during the handshake",
                    ),
                    false,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handshake_cut_short_says_nothing_was_sent() {
        // The server closes before answering (end of stream), or is gone before the
        // first write (broken pipe): either way no command of the caller's went out.
        for read_first in [true, false] {
            let (ours, mut node) = tokio::io::duplex(1024);
            let server = tokio::spawn(async move {
                if read_first {
                    let mut hello = [0u8; 8];
                    node.read_exact(&mut hello).await.unwrap();
                }
            });
            if !read_first {
                server.await.unwrap();
            }
            let (mut read, mut write) = tokio::io::split(ours);
            let (mut rbuf, mut decoder) = (BytesMut::new(), Decoder::new());
            let options = ConnectOptions::default();
            let err = run(
                "test:1",
                &mut read,
                &mut write,
                &mut rbuf,
                &mut decoder,
                &options,
                tokio::time::Instant::now() + std::time::Duration::from_secs(5),
            )
            .await
            .unwrap_err();
            assert!(matches!(err, Error::Io { .. }), "{err:?}");
            assert!(!err.may_have_executed(), "{err:?}");
            assert!(err.is_retryable(), "{err:?}");
        }
    }

    #[test]
    fn a_passing_refusal_of_hello_is_no_sign_of_an_old_server() {
        for text in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
        ] {
            assert!(refused_for_now(&ServerError::new(text)), "{text}");
        }
        for text in [
            "ERR unknown command 'HELLO', with args beginning with: '3' ",
            "NOPROTO unsupported protocol version",
        ] {
            assert!(!refused_for_now(&ServerError::new(text)), "{text}");
        }
    }

    #[test]
    fn classifies_auth_errors() {
        assert!(is_auth_error(&ServerError::new(
            "WRONGPASS invalid username-password pair or user is disabled."
        )));
        assert!(is_auth_error(&ServerError::new(
            "NOAUTH HELLO must be called with the client already authenticated"
        )));
        assert!(is_auth_error(&ServerError::new(
            "ERR AUTH <password> called without any password configured for the default user"
        )));
        assert!(!is_auth_error(&ServerError::new(
            "ERR unknown command 'HELLO', with args beginning with: '3' 'AUTH' "
        )));
        assert!(!is_auth_error(&ServerError::new(
            "NOPROTO unsupported protocol version"
        )));
    }
}
