//! One connection to one node: TCP and TLS setup, handshake, multiplexing.
//!
//! Owns sockets and tasks; holds no protocol logic beyond calling the [`crate::resp`]
//! codec and no cluster logic at all (no slots, no redirects).

mod connection;
mod handshake;
mod options;
mod reply;
mod tls;

pub use connection::NodeConnection;
pub(crate) use connection::{
    connect_raw, is_large, leave_large_buffer, make_room, read_ended, RawConnection,
};
#[allow(unused_imports)]
pub(crate) use connection::{Answer, Cmds, NotQueued, Outcome, Queued, Replies};
pub(crate) use options::NodeIds;
pub use options::{ConnectOptions, CredentialsFuture, CredentialsProvider, Protocol, Secret};
pub use tls::TlsConfig;
