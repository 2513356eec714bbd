//! Decisions about retrying and failing fast, sans-io: given what happened and when, say
//! what to do next. Nothing here sleeps, reads the clock or touches a socket.

mod breaker;
mod budget;
mod retry;

pub(crate) use breaker::{Admission, Breaker, Transition};
pub use breaker::{BreakerState, CircuitBreakerConfig};
pub(crate) use budget::RetryBudget;
pub use budget::RetryBudgetConfig;
pub(crate) use retry::{
    classify, refused_before_running, replica_cannot_serve, runs_a_script, servers_own_refusal,
    Backoff, ErrorAction,
};
