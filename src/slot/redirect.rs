//! Parsing `MOVED` and `ASK` error replies.
//!
//! The specification: "-MOVED 3999 127.0.0.1:6381" means slot 3999 is served by that node
//! from now on; "-ASK 3999 127.0.0.1:6381" means only this query should go there, preceded
//! by `ASKING`. A node whose endpoint is unknown sends an empty host (`MOVED 3999 :6381`),
//! meaning "the host you reached me on".

use crate::error::ServerError;

/// A redirect, with the target address resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// The slot moved for good: update the map.
    Moved { slot: u16, addr: String },
    /// The slot is migrating: send this one request, after `ASKING`, to `addr`.
    Ask { slot: u16, addr: String },
}

impl Redirect {
    pub(crate) fn addr(&self) -> &str {
        match self {
            Redirect::Moved { addr, .. } | Redirect::Ask { addr, .. } => addr,
        }
    }

    pub(crate) fn slot(&self) -> u16 {
        match self {
            Redirect::Moved { slot, .. } | Redirect::Ask { slot, .. } => *slot,
        }
    }

    /// Whether the node that redirected could not say where the target is reached:
    /// no host (`MOVED 5 ?:6379`: set to prefer host names, it has none for the
    /// target), or port 0 (the target has no port of this connection's kind: a TLS-only
    /// node to a plain connection). Only a refresh, whose `CLUSTER SHARDS` gives the
    /// target's `ip` and ports, can say where it is.
    pub(crate) fn host_unknown(&self) -> bool {
        let addr = self.addr();
        addr.starts_with("?:") || addr.ends_with(":0")
    }
}

/// `host:port`, putting IPv6 literals in brackets.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parses a `MOVED`/`ASK` reply; `reached` is the address the reply came from, used when
/// the reply leaves the host empty. Any other error, or a malformed redirect, is `None`.
pub(crate) fn parse_redirect(error: &ServerError, reached: &str) -> Option<Redirect> {
    let code = error.code();
    if code != "MOVED" && code != "ASK" {
        return None;
    }
    let mut parts = error.message().split(' ');
    let slot: u16 = parts.next()?.parse().ok()?;
    if slot >= super::SLOT_COUNT {
        return None;
    }
    let target = parts.next()?;
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let addr = if host.is_empty() {
        let reached_host = reached.rsplit_once(':').map_or(reached, |(h, _)| h);
        format!("{reached_host}:{port}")
    } else {
        // Servers write an IPv6 target bare (`MOVED 5 fd00::5:6379`); the topology,
        // as `[fd00::5]:6379`. One spelling, or the redirect names a stranger.
        join_host_port(host, port)
    };
    Some(if code == "MOVED" {
        Redirect::Moved { slot, addr }
    } else {
        Redirect::Ask { slot, addr }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<Redirect> {
        parse_redirect(&ServerError::new(s.to_string()), "10.0.0.1:7000")
    }

    #[test]
    fn parses_moved_and_ask() {
        assert_eq!(
            parse("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            parse("ASK 1 redis-cluster-2:6379"),
            Some(Redirect::Ask {
                slot: 1,
                addr: "redis-cluster-2:6379".into()
            })
        );
        assert_eq!(
            parse("MOVED 5 [::1]:7001").map(|r| r.addr().to_string()),
            Some("[::1]:7001".into())
        );
        // As servers write IPv6 targets: bare, spelled here as the topology spells them.
        assert_eq!(
            parse("ASK 5 fd00::5:6379").map(|r| r.addr().to_string()),
            Some("[fd00::5]:6379".into())
        );
    }

    #[test]
    fn empty_host_means_the_node_that_answered() {
        assert_eq!(
            parse("MOVED 3999 :6381"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "10.0.0.1:6381".into()
            })
        );
    }

    #[test]
    fn a_target_without_a_host_or_with_port_0_is_not_known_yet() {
        for s in [
            "MOVED 1 ?:6379",
            "MOVED 1 10.0.0.2:0",
            "ASK 1 :0",
            "MOVED 1 ::1:0",
        ] {
            assert!(parse(s).is_some_and(|r| r.host_unknown()), "{s}");
        }
        for s in [
            "MOVED 1 10.0.0.2:10",
            "MOVED 1 10.0.0.2:6379",
            "ASK 1 :7000",
        ] {
            assert!(parse(s).is_some_and(|r| !r.host_unknown()), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_redirects() {
        assert_eq!(parse("MOVED"), None);
        assert_eq!(parse("MOVED x 1.2.3.4:1"), None);
        assert_eq!(parse("MOVED 16384 1.2.3.4:1"), None);
        assert_eq!(parse("MOVED 1 1.2.3.4"), None);
        assert_eq!(parse("MOVED 1 1.2.3.4:port"), None);
        assert_eq!(parse("ERR MOVED 1 1.2.3.4:1"), None);
    }
}
