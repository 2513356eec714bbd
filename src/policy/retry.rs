//! What to do with an error reply, and how long to back off before trying again.
//!
//! One table from server error to action, as the Redis Cluster specification describes:
//! `MOVED` reroutes and patches the slot map, `ASK` retries once on the target after
//! `ASKING`, `TRYAGAIN` (multi-key request during a migration), `CLUSTERDOWN`, `LOADING`
//! and `MASTERDOWN` back off and retry. All of these mean the server did not run the
//! command, so retrying them never runs a write twice.

use std::time::Duration;

use crate::error::ServerError;
use crate::slot::{parse_redirect, Redirect};

/// What an error reply asks the client to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorAction {
    /// Follow a MOVED or ASK.
    Redirect(Redirect),
    /// The cluster cannot serve the slot right now; back off, refresh, retry.
    ClusterDown,
    /// Transient state of the node (TRYAGAIN, LOADING, MASTERDOWN); back off and retry.
    BackOff,
    /// An ordinary error: it is the reply.
    Reply,
}

/// Classifies an error reply received from the node at `reached`.
pub(crate) fn classify(error: &ServerError, reached: &str) -> ErrorAction {
    match error.code() {
        "MOVED" | "ASK" => match parse_redirect(error, reached) {
            // The request waits for the refresh as for a slot with no owner.
            Some(r) if r.host_unknown() => ErrorAction::ClusterDown,
            Some(r) => ErrorAction::Redirect(r),
            None => ErrorAction::Reply,
        },
        "CLUSTERDOWN" => ErrorAction::ClusterDown,
        // A blocked command the server let go of as its role changed (a primary a
        // failover demoted; Redis 7.0 says this, later versions `MOVED`): it did not
        // run. After a refresh, to the new primary, as for `CLUSTERDOWN`. (`CLIENT
        // UNBLOCK ... ERROR` says otherwise, and is the reply.)
        "UNBLOCKED"
            if error
                .message()
                .starts_with("force unblock from blocking operation, instance state changed") =>
        {
            ErrorAction::ClusterDown
        }
        "TRYAGAIN" | "LOADING" | "MASTERDOWN" => ErrorAction::BackOff,
        _ => ErrorAction::Reply,
    }
}

/// Whether `command` runs a script or a function, which can answer any error reply it
/// likes (`redis.error_reply`).
pub(crate) fn runs_a_script(command: &crate::cmd::Cmd) -> bool {
    const SCRIPTS: [&[u8]; 6] = [
        b"EVAL",
        b"EVALSHA",
        b"EVAL_RO",
        b"EVALSHA_RO",
        b"FCALL",
        b"FCALL_RO",
    ];
    let name = command.name();
    SCRIPTS.iter().any(|s| name.eq_ignore_ascii_case(s))
}

/// Whether a refusal is in the server's own words (Redis 7), not a script's that reuses
/// its code: only the server's says the command did not run.
pub(crate) fn servers_own_refusal(error: &ServerError) -> bool {
    if error.not_the_servers {
        return false;
    }
    let message = error.message();
    match error.code() {
        "TRYAGAIN" => message.starts_with("Multiple keys request"),
        "CLUSTERDOWN" => {
            message.starts_with("The cluster is down")
                || message.starts_with("Hash slot not served")
        }
        // Redis ("Redis is loading ...") and Valkey ("Valkey is loading ...").
        "LOADING" => message.contains("is loading the dataset"),
        "MASTERDOWN" => message.starts_with("Link with MASTER is down"),
        // `MOVED x ?:port` (a target not known yet): the redirect check decides.
        _ => true,
    }
}

/// Whether a `READONLY` says the command did not run: always from a command that is no
/// script, and for a script or function only the server's refusal before running it
/// (one with flags that allow writes, on a replica): "You can't write against a read
/// only replica." alone (Redis 7.0), or "Can not run script with write flag on
/// readonly replica" (7.2 and Valkey). A script without flags runs on a replica and
/// meets `READONLY` at its first write, after what came before it (a `PUBLISH`): the
/// server then adds where (" script: <sha>, on @user_script:1."). A script may also
/// write the code itself.
pub(crate) fn refused_before_running(error: &ServerError, cmds: &[crate::cmd::Cmd]) -> bool {
    let message = error.message();
    !cmds.iter().any(runs_a_script)
        || message.starts_with("Can not run script with write flag")
        || (message.starts_with("You can't write against a read only replica")
            && !message.contains(" script: "))
}

/// Whether a replica's refusal (`LOADING` while it loads a full resync, `MASTERDOWN` when
/// cut off from its primary under `replica-serve-stale-data no`) may last for minutes:
/// a read it refused goes to the primary at once instead of waiting for it. (A
/// `TRYAGAIN` is about the slot, which the primary is migrating too.)
pub(crate) fn replica_cannot_serve(error: &ServerError) -> bool {
    matches!(error.code(), "LOADING" | "MASTERDOWN")
}

/// Exponential backoff with "equal" jitter: attempt `n` waits a random time in
/// `[d / 2, d]`, where `d = base * 2^n` capped at `max`. The jitter spreads out clients that
/// failed together so they do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry); `unit` is a
    /// random number in `[0, 1)`.
    pub(crate) fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let unit = unit.clamp(0.0, 1.0);
        exp.mul_f64(0.5 + unit / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_the_servers_words_are_told_from_a_scripts() {
        for text in [
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "CLUSTERDOWN The cluster is down and only accepts read commands",
            "CLUSTERDOWN Hash slot not served",
            "LOADING Redis is loading the dataset in memory",
            "LOADING Valkey is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ] {
            assert!(servers_own_refusal(&ServerError::new(text)), "{text}");
        }
        for text in [
            "TRYAGAIN not now",
            "CLUSTERDOWN says the script",
            "LOADING soon",
        ] {
            let e = ServerError::new(text);
            assert!(!servers_own_refusal(&e), "{text}");
            assert!(!crate::Error::Server(e).is_retryable(), "{text}");
        }
        assert!(runs_a_script(&crate::cmd::cmd("fcall_ro")));
        let readonly = |text: &str| ServerError::new(text.to_string());
        // The texts of a Redis 7.0 replica (checked on one) and of 7.2.
        let demoted = readonly("READONLY You can't write against a read only replica.");
        let script_refused =
            readonly("READONLY Can not run script with write flag on readonly replica");
        let midway = readonly(
            "READONLY You can't write against a read only replica. script: \
             64ac20e8d0a03aaa0eae00b63ee3347431b617df, on @user_script:1.",
        );
        let eval = [crate::cmd::cmd("EVAL")];
        let publish = [crate::cmd::cmd("PUBLISH")];
        assert!(refused_before_running(&demoted, &publish));
        assert!(refused_before_running(&demoted, &eval));
        assert!(refused_before_running(&script_refused, &eval));
        // Met midway through a script (it may have published), or written by it.
        assert!(!refused_before_running(&midway, &eval));
        assert!(!refused_before_running(&readonly("READONLY no"), &eval));
        assert!(!runs_a_script(&crate::cmd::cmd("GET")));
    }

    #[test]
    fn error_table() {
        let c = |s: &str| classify(&ServerError::new(s.to_string()), "h:1");
        assert!(matches!(
            c("MOVED 1 h:2"),
            ErrorAction::Redirect(Redirect::Moved { .. })
        ));
        assert!(matches!(
            c("ASK 1 h:2"),
            ErrorAction::Redirect(Redirect::Ask { .. })
        ));
        assert_eq!(c("MOVED garbage"), ErrorAction::Reply);
        // Redis 7.0's words to a client blocked on a primary a failover demoted (from
        // its source); `CLIENT UNBLOCK id ERROR`'s are the reply.
        assert_eq!(
            c("UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)"),
            ErrorAction::ClusterDown
        );
        assert_eq!(
            c("UNBLOCKED client unblocked via CLIENT UNBLOCK"),
            ErrorAction::Reply
        );
        // A target without a known host: wait for a refresh to say where it is.
        assert_eq!(c("MOVED 1 ?:7000"), ErrorAction::ClusterDown);
        assert_eq!(c("ASK 1 ?:7000"), ErrorAction::ClusterDown);
        assert_eq!(
            c("CLUSTERDOWN The cluster is down"),
            ErrorAction::ClusterDown
        );
        assert_eq!(
            c("TRYAGAIN Multiple keys request during rehashing of slot"),
            ErrorAction::BackOff
        );
        assert_eq!(
            c("LOADING Redis is loading the dataset in memory"),
            ErrorAction::BackOff
        );
        assert_eq!(
            c("MASTERDOWN Link with MASTER is down"),
            ErrorAction::BackOff
        );
        assert_eq!(c("WRONGTYPE Operation against a key"), ErrorAction::Reply);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(300),
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(5));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(10));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(80));
        assert_eq!(b.delay(10, 1.0), Duration::from_millis(300));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_millis(150));
    }
}
