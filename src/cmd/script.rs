//! Lua scripts sent by digest: [`Script`] holds a script's source and its SHA1, and builds
//! the `EVALSHA` that normally runs it and the `EVAL` that runs it where a node does not
//! know the digest yet (`NOSCRIPT`). Deciding when to fall back is the cluster layer's.

use std::fmt;
use std::sync::Arc;

use crate::cmd::{cmd, Cmd, ToArg};

/// A Lua script, run by its SHA1 digest so that its source crosses the network only when
/// a node does not know it yet.
///
/// [`ClusterClient::invoke`](crate::ClusterClient::invoke) sends `EVALSHA`; a node that
/// answers `NOSCRIPT` (it restarted, was added, took the slot over, or `SCRIPT FLUSH`
/// ran) gets the script once by `EVAL`, which also caches it there. A `NOSCRIPT` means the
/// script did not run, so that second send is safe for a script that writes.
///
/// A script that only reads can be marked [`Script::read_only`]: it is sent as
/// `EVALSHA_RO`/`EVAL_RO` (Redis 7), may be served by a replica under
/// [`ReadFrom`](crate::ReadFrom), is retried like any read, and gets no `WAIT` under
/// `durable_writes` (any other script with keys does). The server refuses a write from
/// such a script.
///
/// Cloning is cheap (the source is shared).
///
/// ```
/// use redcluster::Script;
/// let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
/// assert_eq!(script.sha(), "8cd00688c05c46bde4a2e60658ef20a2e5c0b248");
/// ```
#[derive(Clone)]
pub struct Script {
    code: Arc<str>,
    sha: [u8; 40],
    read_only: bool,
}

impl Script {
    /// A script from its Lua source. Its digest is computed here, once.
    pub fn new(code: impl Into<String>) -> Script {
        let code: Arc<str> = Arc::from(code.into());
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, code.as_bytes());
        let mut sha = [0u8; 40];
        for (pair, byte) in sha.chunks_exact_mut(2).zip(digest.as_ref()) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        Script {
            code,
            sha,
            read_only: false,
        }
    }

    /// Marks the script as one that only reads: it is sent as `EVALSHA_RO`/`EVAL_RO`
    /// (Redis 7.0 or later), which replicas may serve and which is retried like a read.
    ///
    /// ```
    /// use redcluster::Script;
    /// let count = Script::new("return redis.call('SCARD', KEYS[1])").read_only();
    /// assert!(count.is_read_only());
    /// ```
    pub fn read_only(mut self) -> Script {
        self.read_only = true;
        self
    }

    /// Whether [`Script::read_only`] marked it.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The SHA1 digest of the source, in lowercase hex, as `SCRIPT LOAD` returns it.
    pub fn sha(&self) -> &str {
        // Only ASCII hex digits are ever written into it.
        std::str::from_utf8(&self.sha).unwrap_or_default()
    }

    /// The Lua source.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// `EVALSHA sha numkeys keys... args...` (`EVALSHA_RO` for a read-only script), for
    /// sending it yourself, e.g. on a [`Watched`](crate::Watched) connection; a node that
    /// does not know the script answers `NOSCRIPT`.
    ///
    /// ```
    /// use redcluster::Script;
    /// let s = Script::new("return 1");
    /// assert_eq!(s.evalsha_cmd(&["{user:7}:a"], &["x"]).arg_at(1), Some(s.sha().as_bytes()));
    /// ```
    pub fn evalsha_cmd<K: ToArg, A: ToArg>(&self, keys: &[K], args: &[A]) -> Cmd {
        let name = if self.read_only {
            "EVALSHA_RO"
        } else {
            "EVALSHA"
        };
        with_keys_and_args(cmd(name).arg(&self.sha[..]), keys, args)
    }

    /// `EVAL source numkeys keys... args...` (`EVAL_RO` for a read-only script): what a
    /// node that answered `NOSCRIPT` gets instead, and what a transaction sends.
    ///
    /// ```
    /// use redcluster::Script;
    /// let s = Script::new("return 1");
    /// assert_eq!(s.eval_cmd(&["{user:7}:a"], &["x"]).arg_at(1), Some(&b"return 1"[..]));
    /// ```
    pub fn eval_cmd<K: ToArg, A: ToArg>(&self, keys: &[K], args: &[A]) -> Cmd {
        let name = if self.read_only { "EVAL_RO" } else { "EVAL" };
        with_keys_and_args(cmd(name).arg(&*self.code), keys, args)
    }

    /// A call of this script built one key and argument at a time, each of its own
    /// type (a string key, a number, a float), for
    /// [`ClusterClient::invoke_call`](crate::ClusterClient::invoke_call); [`ClusterClient::invoke`](crate::ClusterClient::invoke)
    /// takes slices of one type each.
    ///
    /// ```
    /// use redcluster::Script;
    /// let limiter = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    /// let call = limiter.key("rate:{user:7}").arg(10).arg(1.5);
    /// assert_eq!(call.keys().len() + call.args().len(), 3);
    /// ```
    pub fn key(&self, key: impl ToArg) -> ScriptCall {
        ScriptCall {
            script: self.clone(),
            keys: Vec::new(),
            args: Vec::new(),
        }
        .key(key)
    }

    /// A call of this script with a first argument and no keys yet: see
    /// [`Script::key`].
    pub fn arg(&self, arg: impl ToArg) -> ScriptCall {
        ScriptCall {
            script: self.clone(),
            keys: Vec::new(),
            args: Vec::new(),
        }
        .arg(arg)
    }

    /// `SCRIPT LOAD source`.
    pub(crate) fn load(&self) -> Cmd {
        cmd("SCRIPT").arg("LOAD").arg(&*self.code)
    }
}

/// A [`Script`] with its keys and arguments, gathered one at a time (each its own type);
/// run by [`ClusterClient::invoke_call`](crate::ClusterClient::invoke_call). Made by [`Script::key`] or [`Script::arg`].
#[derive(Clone)]
pub struct ScriptCall {
    script: Script,
    keys: Vec<bytes::Bytes>,
    args: Vec<bytes::Bytes>,
}

impl ScriptCall {
    /// Adds a key (`KEYS[n]`); the keys of one call must share a slot.
    pub fn key(mut self, key: impl ToArg) -> ScriptCall {
        self.keys
            .push(key.with_bytes(bytes::Bytes::copy_from_slice));
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg(mut self, arg: impl ToArg) -> ScriptCall {
        self.args
            .push(arg.with_bytes(bytes::Bytes::copy_from_slice));
        self
    }

    /// The script called.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// The keys so far, as sent.
    pub fn keys(&self) -> &[bytes::Bytes] {
        &self.keys
    }

    /// The arguments so far, as sent.
    pub fn args(&self) -> &[bytes::Bytes] {
        &self.args
    }
}

/// The script's digest and the number of keys and arguments; never their values, which
/// may be secrets.
impl fmt::Debug for ScriptCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptCall")
            .field("script", &self.script)
            .field("keys", &self.keys.len())
            .field("args", &self.args.len())
            .finish()
    }
}

fn with_keys_and_args<K: ToArg, A: ToArg>(start: Cmd, keys: &[K], args: &[A]) -> Cmd {
    start.arg(keys.len()).args(keys).args(args)
}

/// The digest and whether it is read-only; never the source, which can be long.
impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("sha", &self.sha())
            .field("read_only", &self.read_only)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(c: &Cmd) -> Vec<String> {
        c.arg_iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn the_digest_is_sha1_in_lowercase_hex() {
        // `echo -n "" | sha1sum` and `echo -n "return 1" | sha1sum`.
        assert_eq!(
            Script::new("").sha(),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(
            Script::new("return 1").sha(),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }

    #[test]
    fn evalsha_and_eval_carry_the_same_keys_and_args() {
        let s = Script::new("return KEYS[1]");
        let sha = s.sha().to_owned();
        assert_eq!(
            words(&s.evalsha_cmd(&["k1", "k2"], &[5])),
            ["EVALSHA", &sha, "2", "k1", "k2", "5"]
        );
        assert_eq!(
            words(&s.eval_cmd(&["k1", "k2"], &[5])),
            ["EVAL", "return KEYS[1]", "2", "k1", "k2", "5"]
        );
        let none: [&str; 0] = [];
        assert_eq!(words(&s.evalsha_cmd(&none, &none)), ["EVALSHA", &sha, "0"]);
    }

    #[test]
    fn a_read_only_script_uses_the_ro_commands() {
        let s = Script::new("return 1").read_only();
        assert_eq!(s.evalsha_cmd(&["k"], &["a"]).name(), b"EVALSHA_RO");
        assert_eq!(s.eval_cmd(&["k"], &["a"]).name(), b"EVAL_RO");
    }

    #[test]
    fn debug_shows_the_digest_not_the_source() {
        let s = Script::new("return 'secret-ish source'");
        let shown = format!("{s:?}");
        assert!(shown.contains(s.sha()), "{shown}");
        assert!(!shown.contains("secret-ish"), "{shown}");
    }
}
