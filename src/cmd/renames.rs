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
use crate::resp;

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
