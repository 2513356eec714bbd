//! Decisions about retrying, sans-io: given what happened and when, say what to do next.
//! Nothing here sleeps, reads the clock or touches a socket.

mod retry;

pub(crate) use retry::{classify, Backoff, ErrorAction};
