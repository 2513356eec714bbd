//! Commands renamed or disabled on the server (`rename-command` in `redis.conf`).
//!
//! Hardened deployments rename administrative commands to a secret name
//! (`rename-command CONFIG CONFIG_9a7b8c5d3e2f1a0`) and disable others
//! (`rename-command FLUSHALL ""`). The client is told the same mapping once, and the
//! connection layer applies it to every command it writes: the user's, and the client's
//! own (`CLUSTER SHARDS`, `READONLY`, `WAIT`, the doctor's `CONFIG GET`). Code above the
//! connection keeps using the documented names, so routing and the command table still
//! work.
//!
//! The secret names are as sensitive as a password: `Debug` shows only which commands
//! are renamed, never what to.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Cmd;
use crate::error::ServerError;
use crate::resp::{self, Value};

/// The server's command renames, applied by the client to every command it sends.
///
/// ```
/// use redcluster::CommandRenames;
/// let renames = CommandRenames::new()
///     .rename("CONFIG", "CONFIG_9a7b8c5d3e2f1a0")
///     .disable("FLUSHALL");
/// assert!(renames.is_disabled(b"flushall"));
/// assert!(!format!("{renames:?}").contains("9a7b"));
/// ```
#[derive(Clone, Default)]
pub struct CommandRenames {
    /// Upper-case documented name to the server's name; an empty name means disabled.
    /// Shared: every connection's options hold a copy.
    map: Arc<HashMap<Box<[u8]>, Bytes>>,
}

impl CommandRenames {
    /// No renames: every command goes out under its documented name.
    ///
    /// ```
    /// assert!(redcluster::CommandRenames::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `name` (any case; the first word of the command, e.g. `CONFIG` for
    /// `CONFIG GET`) as `to`. An empty `to` is the same as [`CommandRenames::disable`].
    ///
    /// ```
    /// use redcluster::CommandRenames;
    /// let renames = CommandRenames::new().rename("config", "CONFIG_9a7b8c5d3e2f1a0");
    /// assert!(!renames.is_empty());
    /// assert!(!renames.is_disabled(b"CONFIG"));
    /// ```
    pub fn rename(mut self, name: &str, to: &str) -> Self {
        Arc::make_mut(&mut self.map).insert(
            name.to_ascii_uppercase().into_bytes().into_boxed_slice(),
            Bytes::copy_from_slice(to.as_bytes()),
        );
        self
    }

    /// Marks `name` as disabled on the server (`rename-command NAME ""`): the client
    /// refuses it with [`crate::Error::Config`] instead of sending it.
    ///
    /// ```
    /// let renames = redcluster::CommandRenames::new().disable("FLUSHALL");
    /// assert!(renames.is_disabled(b"flushall"));
    /// ```
    pub fn disable(self, name: &str) -> Self {
        self.rename(name, "")
    }

    /// Why the renames cannot be applied, if they cannot: a name that is not one word
    /// of at most 64 bytes (`CONFIG`, not `CONFIG GET`) would never match a command, and
    /// a server name with white space in it is no command name. Only the documented names
    /// are quoted: the server's are secrets.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, to) in self.map.iter() {
            let shown = String::from_utf8_lossy(name);
            let one_word = |n: &[u8]| !n.is_empty() && !n.iter().any(u8::is_ascii_whitespace);
            if !one_word(name) || name.len() > 64 {
                return Err(format!(
                    "rename_command: {shown:?} is not a command name (one word, at most 64 \
                     bytes: the first word of the command, CONFIG for CONFIG GET)"
                ));
            }
            if !to.is_empty() && !one_word(to) {
                return Err(format!(
                    "rename_command: the server's name for {shown} has white space in it"
                ));
            }
        }
        Ok(())
    }

    /// Whether no command is renamed or disabled.
    ///
    /// ```
    /// use redcluster::CommandRenames;
    /// assert!(CommandRenames::new().is_empty());
    /// assert!(!CommandRenames::new().disable("DEBUG").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether the command called `name` (any case) is disabled.
    ///
    /// ```
    /// let renames = redcluster::CommandRenames::new().rename("DEBUG", "");
    /// assert!(renames.is_disabled(b"debug"));
    /// assert!(!renames.is_disabled(b"GET"));
    /// ```
    pub fn is_disabled(&self, name: &[u8]) -> bool {
        self.lookup(name).is_some_and(|to| to.is_empty())
    }

    /// What `name` (any case) is sent as, when it is renamed or disabled.
    fn lookup(&self, name: &[u8]) -> Option<&Bytes> {
        if self.map.is_empty() || name.len() > 64 {
            return None;
        }
        let mut upper = [0u8; 64];
        let upper = &mut upper[..name.len()];
        upper.copy_from_slice(name);
        upper.make_ascii_uppercase();
        self.map.get(&*upper)
    }

    /// The documented name of the first disabled command among `cmds`, if any.
    /// The error of a command disabled here (`name` as the caller wrote it), unsent.
    pub(crate) fn disabled(name: &str) -> crate::Error {
        crate::Error::Config(format!(
            "{name} is disabled on this cluster (CommandRenames); it was not sent"
        ))
    }

    pub(crate) fn first_disabled<'a>(
        &self,
        cmds: impl IntoIterator<Item = &'a Cmd>,
    ) -> Option<String> {
        if self.map.is_empty() {
            return None;
        }
        cmds.into_iter()
            .find(|c| self.is_disabled(c.name()))
            .map(|c| String::from_utf8_lossy(c.name()).to_ascii_uppercase())
    }

    /// Puts the documented names back into a reply's error text (and into the errors of
    /// an array, as `EXEC` returns them): a server that does not know a name the client
    /// sent (a wrong or outdated mapping) quotes it, `unknown command '<name>'`, and
    /// that name is a secret.
    pub(crate) fn scrub(&self, value: &mut Value) {
        if self.map.is_empty() {
            return;
        }
        match value {
            Value::ServerError(e) => self.scrub_error(e),
            Value::Array(items) => {
                for item in items {
                    if let Value::ServerError(e) = item {
                        self.scrub_error(e);
                    }
                }
            }
            _ => {}
        }
    }

    fn scrub_error(&self, error: &mut ServerError) {
        let mut text = error.as_bytes().to_vec();
        let mut changed = false;
        for (name, to) in self.map.iter().filter(|(_, to)| !to.is_empty()) {
            // Search on after each replacement: the documented name may contain the
            // new one (`rename-command CONFIGX CONFIG`).
            let mut from = 0;
            while let Some(at) = text.get(from..).and_then(|t| find_ignoring_case(t, to)) {
                let at = from + at;
                text.splice(at..at + to.len(), name.iter().copied());
                from = at + name.len();
                changed = true;
            }
        }
        if changed {
            *error = ServerError::new(text);
        }
    }

    /// Writes `cmd` to `out` as the server knows it.
    pub(crate) fn write(&self, cmd: &Cmd, out: &mut BytesMut) {
        match self.lookup(cmd.name()).filter(|to| !to.is_empty()) {
            None => cmd.write_to(out),
            Some(to) => {
                resp::encode_header(b'*', cmd.len(), out);
                resp::encode_header(b'$', to.len(), out);
                out.extend_from_slice(to);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(cmd.encoded_args_after_name());
            }
        }
    }
}

/// Where `needle` first occurs in `haystack`, ASCII case ignored (servers quote command
/// names in the case they were sent, or lower-cased).
fn find_ignoring_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

impl fmt::Debug for CommandRenames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The names commands are renamed to are secrets; which ones are renamed is not.
        let mut renamed: Vec<_> = Vec::new();
        let mut disabled: Vec<_> = Vec::new();
        for (name, to) in self.map.iter() {
            let name = String::from_utf8_lossy(name);
            if to.is_empty() {
                disabled.push(name);
            } else {
                renamed.push(name);
            }
        }
        renamed.sort();
        disabled.sort();
        f.debug_struct("CommandRenames")
            .field("renamed", &renamed)
            .field("disabled", &disabled)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd;

    fn written(renames: &CommandRenames, c: &Cmd) -> Vec<u8> {
        let mut out = BytesMut::new();
        renames.write(c, &mut out);
        out.to_vec()
    }

    #[test]
    fn renamed_commands_go_out_under_the_new_name_in_any_case() {
        let renames = CommandRenames::new().rename("config", "CONFIG_x1");
        assert_eq!(
            written(&renames, &cmd("Config").arg("GET").arg("maxmemory")),
            b"*3\r\n$9\r\nCONFIG_x1\r\n$3\r\nGET\r\n$9\r\nmaxmemory\r\n"
        );
        // Other commands, and an empty mapping, are untouched.
        let get = cmd("GET").arg("k");
        let mut plain = BytesMut::new();
        get.write_to(&mut plain);
        assert_eq!(written(&renames, &get), plain.to_vec());
        assert_eq!(written(&CommandRenames::new(), &get), plain.to_vec());
        // A command with no arguments beyond its name.
        assert_eq!(
            written(&renames, &cmd("CONFIG")),
            b"*1\r\n$9\r\nCONFIG_x1\r\n"
        );
    }

    #[test]
    fn disabled_commands_are_found_before_sending() {
        let renames = CommandRenames::new()
            .disable("flushall")
            .rename("DEBUG", "");
        let cmds = [
            cmd("GET").arg("k"),
            cmd("FlushAll"),
            cmd("DEBUG").arg("SLEEP"),
        ];
        assert_eq!(renames.first_disabled(&cmds).as_deref(), Some("FLUSHALL"));
        assert_eq!(renames.first_disabled(&cmds[..1]), None);
        assert!(renames.is_disabled(b"debug"));
        assert!(!renames.is_disabled(b"GET"));
        // Names longer than any command are not looked up (and do not panic).
        assert!(!renames.is_disabled(&[b'A'; 200]));
    }

    #[test]
    fn errors_quoting_a_secret_name_get_the_documented_one() {
        let renames = CommandRenames::new().rename("CONFIG", "CONFIG_s3cret");
        let mut reply = Value::ServerError(ServerError::new(
            "ERR unknown command 'CONFIG_s3cret', with args beginning with: 'GET' ",
        ));
        renames.scrub(&mut reply);
        let Value::ServerError(e) = &reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            e.as_bytes(),
            b"ERR unknown command 'CONFIG', with args beginning with: 'GET' "
        );
        // A documented name that contains the new one is replaced once, not forever.
        let odd = CommandRenames::new().rename("CONFIGX", "config");
        let mut reply = Value::ServerError(ServerError::new("ERR unknown command 'config'"));
        odd.scrub(&mut reply);
        assert_eq!(
            reply,
            Value::ServerError(ServerError::new("ERR unknown command 'CONFIGX'"))
        );
        // Lower case, and inside an EXEC result; other replies are untouched.
        let mut exec = Value::Array(vec![
            Value::Int(1),
            Value::ServerError(ServerError::new("NOPERM no 'config_s3cret|set' here")),
        ]);
        renames.scrub(&mut exec);
        assert!(!format!("{exec:?}").contains("s3cret"), "{exec:?}");
        assert_eq!(
            exec,
            Value::Array(vec![
                Value::Int(1),
                Value::ServerError(ServerError::new("NOPERM no 'CONFIG|set' here")),
            ])
        );
    }

    #[test]
    fn debug_names_the_commands_but_not_their_secret_names() {
        let renames = CommandRenames::new()
            .rename("CONFIG", "CONFIG_9a7b8c5d3e2f1a0")
            .disable("FLUSHDB");
        let shown = format!("{renames:?}");
        assert!(
            shown.contains("CONFIG") && shown.contains("FLUSHDB"),
            "{shown}"
        );
        assert!(!shown.contains("9a7b8c5d3e2f1a0"), "{shown}");
    }
}
