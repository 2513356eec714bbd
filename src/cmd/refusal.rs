//! The commands that must not go over a connection other callers share, and why.
//!
//! Owns the one list that both [`crate::NodeConnection`] (its public `send`) and the
//! cluster client's planner consult. It only classifies: each caller decides which
//! kinds it refuses and words its own error. Sans-io, no allocation.

use super::Cmd;

/// Why a command may not be sent on a shared, multiplexed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `SUBSCRIBE` and the rest of its family: the confirmations are push frames (RESP3),
    /// or messages nobody asked for follow (RESP2), so replies stop answering requests
    /// one for one.
    Subscription,
    /// `MONITOR` streams, `SYNC` and `PSYNC` send a snapshot, `CLIENT REPLY OFF|SKIP`
    /// silences replies, `REPLCONF ACK` (the replication protocol's) is never answered,
    /// `SCRIPT DEBUG` turns the next `EVAL` into a debugger session: every later reply
    /// would go to the wrong caller.
    Unpaired,
    /// `RESET` (logs the connection out, back to RESP2), `HELLO`, `AUTH`, `SELECT`,
    /// `QUIT`: they change or end the connection under every other caller.
    ConnectionState,
    /// The `CLIENT` settings of the calling connection: `SETNAME`, `TRACKING` and
    /// `CACHING` (invalidations pushed down it; `CACHING` applies to whichever command
    /// comes next, anyone's), `NO-EVICT`, and Redis 7.2's `NO-TOUCH` (no caller's reads
    /// would update access times) and `SETINFO`. Through the cluster client they would
    /// set one node's shared connection, for every caller on it. A
    /// [`crate::NodeConnection`] is its owner's to set, and lets them through.
    ConnectionSetting,
    /// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`: `MULTI` would queue everyone's
    /// commands into one transaction, `WATCH` would watch for everyone.
    Transaction,
    /// `WAIT`, `WAITAOF`: they count the writes of their own connection, which on a
    /// shared one are anyone's.
    Wait,
    /// `READONLY`, `READWRITE`, `ASKING`: the cluster client sends them itself, at the
    /// right moment (`READONLY` on every replica connection, `ASKING` right before the
    /// command an `ASK` redirected). From a caller, `READWRITE` would turn a replica's
    /// connection back to redirecting every read, and `ASKING` would be used up by
    /// whichever command came next, anyone's. A [`crate::NodeConnection`] is its
    /// owner's to set, and lets them through.
    ClientManaged,
}

/// Declares the list once: the `match` that [`Refusal::of_name`] runs (on the cluster
/// client's path of every request, so a match on the name, not a lookup) and, for the
/// tests, the same names as data.
macro_rules! refused {
    ($($kind:ident => [$($name:literal),+ $(,)?],)+) => {
        impl Refusal {
            /// The refusal for a command by its lowercase table name (`container|sub`
            /// for a subcommand: `client|reply`).
            #[inline]
            pub(crate) fn of_name(name: &str) -> Option<Refusal> {
                match name {
                    $($($name)|+ => Some(Refusal::$kind),)+
                    _ => None,
                }
            }
        }

        /// Every refused name, with its kind.
        #[cfg(test)]
        pub(crate) const REFUSED: &[(&str, Refusal)] = &[$($(($name, Refusal::$kind),)+)+];
    };
}

refused! {
    Subscription => [
        "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
    ],
    Unpaired => ["monitor", "sync", "psync", "client|reply", "replconf", "script|debug"],
    ConnectionState => ["reset", "hello", "auth", "select", "quit"],
    ConnectionSetting => [
        "client|setname", "client|tracking", "client|caching", "client|no-evict",
        "client|no-touch", "client|setinfo",
    ],
    Transaction => ["multi", "exec", "discard", "watch", "unwatch"],
    Wait => ["wait", "waitaof"],
    ClientManaged => ["readonly", "readwrite", "asking"],
}

impl Refusal {
    /// The refusal for `cmd` as its caller wrote it, in any case: by its name and first
    /// argument as a subcommand (`CLIENT REPLY OFF` is `client|reply`), then by its name
    /// alone. For callers without a table entry at hand: it lowercases on the stack.
    pub(crate) fn of(cmd: &Cmd) -> Option<Refusal> {
        // Room for any refused name; a longer one is none of them.
        let mut buf = [0u8; 32];
        let name = cmd.name();
        let top = name.len();
        buf.get_mut(..top)?.copy_from_slice(name);
        if let Some(sub) = cmd.arg_at(1) {
            let end = top + 1 + sub.len();
            if let Some((bar, rest)) = buf.get_mut(top..end).and_then(|b| b.split_first_mut()) {
                *bar = b'|';
                rest.copy_from_slice(sub);
                buf[..end].make_ascii_lowercase();
                if let Some(refusal) = of_bytes(&buf[..end]) {
                    return Some(refusal);
                }
            }
        }
        buf[..top].make_ascii_lowercase();
        of_bytes(&buf[..top])
    }
}

/// Refused `CLIENT` subcommands newer than the command table (Redis 7.2): their lookup
/// finds the `client` container, so the planner asks [`Refusal::of`] for them.
#[cfg(test)]
pub(crate) const NEWER_CLIENT_SUBCOMMANDS: &[&str] = &["client|no-touch", "client|setinfo"];

fn of_bytes(lower: &[u8]) -> Option<Refusal> {
    std::str::from_utf8(lower).ok().and_then(Refusal::of_name)
}

/// `name` as a caller might write it, in mixed case and with an argument after it (most
/// of them take one): `client|reply` is `ClIeNt rEpLy x`.
#[cfg(test)]
pub(crate) fn as_written(name: &str) -> Cmd {
    let mixed: String = name
        .chars()
        .enumerate()
        .map(|(i, ch)| {
            if i % 2 == 0 {
                ch.to_ascii_uppercase()
            } else {
                ch
            }
        })
        .collect();
    mixed
        .split('|')
        .fold(Cmd::new(), |c, word| c.arg(word))
        .arg("x")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{cmd, lookup};

    #[test]
    fn every_name_is_spelled_as_the_table_spells_it() {
        for &(name, _) in REFUSED {
            // The planner matches the table entry's name: a name the table knows under
            // another spelling would never match. (`waitaof` is newer than the table;
            // so are two `CLIENT` subcommands, which find the `client` container.)
            match lookup(&as_written(name)).map(|info| info.name()) {
                Some("client") => assert!(NEWER_CLIENT_SUBCOMMANDS.contains(&name), "{name}"),
                Some(found) => assert_eq!(found, name),
                None => assert_eq!(name, "waitaof"),
            }
        }
    }

    #[test]
    fn commands_as_written_are_classified_in_any_case() {
        for &(name, kind) in REFUSED {
            let c = as_written(name);
            assert_eq!(Refusal::of(&c), Some(kind), "{c:?}");
            assert_eq!(Refusal::of_name(name), Some(kind));
        }
        assert_eq!(
            Refusal::of(&cmd("client").arg("Reply").arg("OFF")),
            Some(Refusal::Unpaired)
        );
        for fine in [
            cmd("GET").arg("subscribe"),
            cmd("SET").arg("k").arg("v"),
            cmd("CLIENT").arg("LIST"),
            cmd("CLIENT"),
            cmd("REPLY"),
            cmd("PUBLISH").arg("ch").arg("m"),
            cmd("SUBSCRIBEX").arg("ch"),
            cmd("MODULE.CMD").arg("x".repeat(100)),
            cmd(&"x".repeat(100)),
            cmd("SCRIPT").arg("LOAD").arg("return 1"),
        ] {
            assert_eq!(Refusal::of(&fine), None, "{fine:?}");
        }
        // A first argument too long to join the name still leaves the name checked.
        assert_eq!(
            Refusal::of(&cmd("SUBSCRIBE").arg("c".repeat(100))),
            Some(Refusal::Subscription)
        );
    }
}
