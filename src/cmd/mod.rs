//! Commands: the [`Cmd`] builder and the conversion of Rust values into arguments.
//!
//! A `Cmd` keeps its arguments already encoded as RESP bulk strings in one buffer, so
//! sending it is a single copy into the connection's write buffer and building a typical
//! command costs one allocation (up to 128 encoded bytes and 8 arguments; larger ones
//! grow the buffer). A pipeline's typed helpers build their commands back to back in
//! shared chunks instead (`CmdArena`), a few allocations for a thousand commands.
//!
//! Also the command table (`info`, `table`), the cluster's renamed commands (`renames`),
//! the list of commands a shared connection must not carry (`refusal`) and Lua scripts
//! sent by digest (`script`).

use std::fmt;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::resp;

mod info;
mod refusal;
mod renames;
mod script;
pub(crate) mod stream;
mod table;

pub use renames::CommandRenames;
pub use script::{Script, ScriptCall};
pub use stream::StreamEntry;

pub(crate) use refusal::Refusal;
#[cfg(test)]
pub(crate) use refusal::{as_written, REFUSED};

// The command table, for the cluster layer (routing, splitting, retries).
#[allow(unused_imports)]
pub(crate) use info::flag as command_flag;
#[allow(unused_imports)]
pub(crate) use info::{
    blocks, intern, is_idempotent, is_idempotent_as, key_flag, key_indices, keys_known, lookup,
    lookup_name, lowercase, may_resend, parse_command_info, routes_by_first_argument,
    routing_key_indices, stream_block_option, tip, BeginSearch, CommandInfo, FindKeys, KeySpec,
    RequestPolicy, ResponsePolicy,
};

/// A command and its arguments, ready to send.
///
/// Build it with [`cmd`] and chain [`Cmd::arg`]:
///
/// ```
/// use redcluster::cmd;
/// let c = cmd("SET").arg("user:{42}:name").arg("ada").arg("EX").arg(60);
/// assert_eq!(c.name(), b"SET");
/// assert_eq!(c.arg_at(4), Some(&b"60"[..]));
/// ```
///
/// `Debug` shows the command name and the number of arguments, never their values:
/// commands carry keys, values and sometimes passwords (`AUTH`, `HELLO`).
#[derive(Clone, Default)]
pub struct Cmd {
    /// The arguments, each already encoded as `$<len>\r\n<bytes>\r\n`, back to back.
    encoded: BytesMut,
    /// Where each argument's bytes start in `encoded`, and their length.
    spans: SmallVec<[(u32, u32); 8]>,
}

/// Starts a command: `cmd("GET").arg("key")`.
///
/// ```
/// use redcluster::cmd;
/// let get = cmd("GET").arg("user:{42}:name");
/// assert_eq!(get.len(), 2);
/// ```
pub fn cmd(name: &str) -> Cmd {
    Cmd::new().arg(name)
}

impl Cmd {
    /// An empty command; the first argument added is the command name.
    ///
    /// ```
    /// use redcluster::Cmd;
    /// let mut ping = Cmd::new();
    /// ping.push_arg("PING");
    /// assert_eq!(ping.name(), b"PING");
    /// ```
    pub fn new() -> Cmd {
        Cmd {
            // Room for a typical `SET key value` (a 64-byte start made about every
            // pipelined SET of the comparison bench grow once, a copy and a realloc).
            encoded: BytesMut::with_capacity(128),
            spans: SmallVec::new(),
        }
    }

    /// Appends one argument and returns the command, for chaining.
    ///
    /// ```
    /// let c = redcluster::cmd("EXPIRE").arg("session:{42}").arg(3600);
    /// assert_eq!(c.arg_at(2), Some(&b"3600"[..]));
    /// ```
    // Inlined so that a chain of `arg`s builds the command in place: called, each would
    // move the 104-byte `Cmd` in and out.
    #[inline]
    pub fn arg<A: ToArg>(mut self, arg: A) -> Cmd {
        self.push_arg(arg);
        self
    }

    /// Appends each item as an argument.
    ///
    /// ```
    /// let c = redcluster::cmd("DEL").args(["a", "b", "c"]);
    /// assert_eq!(c.len(), 4);
    /// ```
    pub fn args<I>(mut self, args: I) -> Cmd
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        for a in args {
            self.push_arg(a);
        }
        self
    }

    /// Appends one argument in place.
    ///
    /// ```
    /// let mut c = redcluster::cmd("SADD").arg("tags:{post:7}");
    /// for tag in ["rust", "redis"] {
    ///     c.push_arg(tag);
    /// }
    /// assert_eq!(c.len(), 4);
    /// ```
    pub fn push_arg<A: ToArg>(&mut self, arg: A) {
        arg.with_bytes(|bytes| {
            resp::encode_bulk(bytes, &mut self.encoded);
            // The argument's bytes end just before the closing `\r\n`. Offsets past
            // 4 GiB are capped, and `plan` refuses such a command (`is_oversized`).
            let start = self.encoded.len() - 2 - bytes.len();
            let start = u32::try_from(start).unwrap_or(u32::MAX);
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            self.spans.push((start, len));
        });
    }

    /// The number of arguments, command name included.
    ///
    /// ```
    /// assert_eq!(redcluster::cmd("MGET").arg("a").arg("b").len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the command has no arguments at all (not even a name).
    ///
    /// ```
    /// assert!(redcluster::Cmd::new().is_empty());
    /// assert!(!redcluster::cmd("PING").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The command name as given (`b"GET"`), or empty when there is none.
    ///
    /// ```
    /// assert_eq!(redcluster::cmd("get").arg("k").name(), b"get");
    /// ```
    pub fn name(&self) -> &[u8] {
        self.arg_at(0).unwrap_or(b"")
    }

    /// The argument at `index` (0 is the command name).
    ///
    /// ```
    /// let c = redcluster::cmd("HGET").arg("user:{42}").arg("name");
    /// assert_eq!(c.arg_at(2), Some(&b"name"[..]));
    /// assert_eq!(c.arg_at(3), None);
    /// ```
    pub fn arg_at(&self, index: usize) -> Option<&[u8]> {
        let &(start, len) = self.spans.get(index)?;
        self.encoded
            .get(start as usize..start as usize + len as usize)
    }

    /// All arguments, command name first.
    ///
    /// ```
    /// let c = redcluster::cmd("DEL").arg("a").arg("b");
    /// let args: Vec<&[u8]> = c.arg_iter().collect();
    /// assert_eq!(args, [&b"DEL"[..], b"a", b"b"]);
    /// ```
    pub fn arg_iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        // Spans are capped at 4 GiB: past that (a command no server takes, refused
        // before sending) an argument reads as empty rather than out of bounds.
        self.spans.iter().map(|&(start, len)| {
            self.encoded
                .get(start as usize..start as usize + len as usize)
                .unwrap_or_default()
        })
    }

    /// Writes the command in RESP (an array of bulk strings) to `out`.
    ///
    /// ```
    /// let mut out = bytes::BytesMut::new();
    /// redcluster::cmd("GET").arg("k").write_to(&mut out);
    /// assert_eq!(&out[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    /// ```
    pub fn write_to(&self, out: &mut BytesMut) {
        resp::encode_header(b'*', self.spans.len(), out);
        out.extend_from_slice(&self.encoded);
    }

    /// Whether the arguments' positions overflowed their 32 bits (a command over 4 GiB,
    /// which no server takes): then [`Cmd::arg_at`] may point at the wrong bytes.
    pub(crate) fn is_oversized(&self) -> bool {
        u32::try_from(self.encoded.len()).is_err()
    }

    /// The first argument longer than `limit` bytes: its index and length (capped at
    /// `u32::MAX`). One comparison for a command whose arguments add up to less.
    pub(crate) fn arg_longer_than(&self, limit: usize) -> Option<(usize, usize)> {
        if self.encoded.len() <= limit {
            return None;
        }
        self.spans
            .iter()
            .map(|&(_, len)| len as usize)
            .enumerate()
            .find(|&(_, len)| len > limit)
    }

    /// The encoded arguments after the command name (for sending it under another name).
    pub(crate) fn encoded_args_after_name(&self) -> &[u8] {
        match self.spans.first() {
            // The name's bytes end at start + len, then its CRLF.
            Some(&(start, len)) => self
                .encoded
                .get(start as usize + len as usize + 2..)
                .unwrap_or_default(),
            None => &[],
        }
    }

    /// How many bytes [`Cmd::write_to`] appends.
    ///
    /// ```
    /// let c = redcluster::cmd("SET").arg("k").arg("v");
    /// let mut out = bytes::BytesMut::new();
    /// c.write_to(&mut out);
    /// assert_eq!(c.encoded_len(), out.len());
    /// ```
    pub fn encoded_len(&self) -> usize {
        // `*`, up to 20 digits and CRLF, then the arguments.
        let mut digits = itoa::Buffer::new();
        1 + digits.format(self.spans.len()).len() + 2 + self.encoded.len()
    }
}

/// The longest argument a server takes by default (`proto-max-bulk-len`, 512 MiB), and
/// the longest bulk string the decoder takes in a reply.
pub(crate) const MAX_ARG_LEN: usize = 512 * 1024 * 1024;

/// Refuses a command with an argument over [`MAX_ARG_LEN`]: the server would read its
/// length, answer a protocol error and close the connection, and with it fail every
/// request sharing it (written after it: may have executed).
pub(crate) fn refuse_overlong_args(command: &Cmd) -> crate::Result<()> {
    refuse_args_over(command, MAX_ARG_LEN)
}

fn refuse_args_over(command: &Cmd, limit: usize) -> crate::Result<()> {
    match command.arg_longer_than(limit) {
        None => Ok(()),
        Some((index, len)) => Err(crate::Error::Config(format!(
            "argument {index} of {} is {}, over the {} MiB a server takes \
             (proto-max-bulk-len): not sent, as the server would close the connection",
            // Argument 0, the name, is the one too long: none of its bytes are shown.
            if index == 0 {
                "a command".into()
            } else {
                let name = command.name();
                String::from_utf8_lossy(&name[..name.len().min(32)])
            },
            if len >= u32::MAX as usize {
                "over 4 GiB".to_string()
            } else {
                format!("{len} bytes")
            },
            limit >> 20,
        ))),
    }
}

/// Room that commands are built in back to back, so that many small commands (a
/// pipeline's) share a few allocations instead of taking one each.
///
/// Each command's bytes are split off the shared chunk (`BytesMut::split_off` keeps one
/// reference-counted allocation); when the room left is short, the next command starts a
/// new chunk, and the old one is freed with the last command that uses it.
#[derive(Clone, Default)]
pub(crate) struct CmdArena(BytesMut);

/// With less free room than this, the next command starts a new chunk.
const ARENA_MIN_ROOM: usize = 128;
/// A new chunk's size: room for about a hundred typical commands.
const ARENA_CHUNK: usize = 8 * 1024;

impl CmdArena {
    /// Builds `name` and the arguments `build` adds in the arena's free room.
    pub(crate) fn cmd(&mut self, name: &str, build: impl FnOnce(Cmd) -> Cmd) -> Cmd {
        // The arena never holds bytes: its capacity is all free room.
        if self.0.capacity() < ARENA_MIN_ROOM {
            self.0.reserve(ARENA_CHUNK);
        }
        let started = Cmd {
            encoded: std::mem::take(&mut self.0),
            spans: SmallVec::new(),
        };
        let mut built = build(started.arg(name));
        // A command that outgrew the room moved to a buffer of its own; either way, what
        // it left unused is the room for the next.
        self.0 = built.encoded.split_off(built.encoded.len());
        built
    }
}

impl fmt::Debug for CmdArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmdArena")
            .field("room", &self.0.capacity())
            .finish()
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cmd")
            .field("name", &String::from_utf8_lossy(self.name()))
            .field("args", &self.len().saturating_sub(1))
            .finish()
    }
}

/// A value that can be sent as one command argument.
///
/// Implemented for strings, byte slices and vectors, [`Bytes`], integers and floats.
/// Integers and floats are sent in the decimal form the server parses; floats use the
/// shortest text that reads back as the same number, and `inf`/`-inf` for infinities.
///
/// ```
/// use redcluster::{cmd, ToArg};
/// // A user id, sent as the key of the user's hash.
/// struct UserKey(u64);
/// impl ToArg for UserKey {
///     fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
///         f(format!("user:{{{}}}", self.0).as_bytes())
///     }
/// }
/// assert_eq!(cmd("HGETALL").arg(UserKey(42)).arg_at(1), Some(&b"user:{42}"[..]));
/// ```
pub trait ToArg {
    /// Calls `f` with the argument's bytes.
    ///
    /// ```
    /// use redcluster::ToArg;
    /// assert_eq!(42i64.with_bytes(<[u8]>::to_vec), b"42");
    /// assert_eq!(0.5f64.with_bytes(<[u8]>::to_vec), b"0.5");
    /// ```
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
}

impl<T: ToArg + ?Sized> ToArg for &T {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        (**self).with_bytes(f)
    }
}

macro_rules! bytes_like {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
                f(AsRef::<[u8]>::as_ref(self))
            }
        }
    )*};
}
bytes_like!(str, String, [u8], Vec<u8>, Bytes, BytesMut);

impl<const N: usize> ToArg for [u8; N] {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
                let mut digits = itoa::Buffer::new();
                f(digits.format(*self).as_bytes())
            }
        }
    )*};
}
integer!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);

macro_rules! float {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
                if self.is_infinite() {
                    return f(if *self > 0.0 { b"inf" } else { b"-inf" });
                }
                let mut text = StackText::default();
                // Debug is the shortest text that parses back to the same value.
                let _ = fmt::Write::write_fmt(&mut text, format_args!("{:?}", self));
                f(text.as_bytes())
            }
        }
    )*};
}
float!(f32, f64);

/// A small fixed buffer that formats a float without a heap allocation.
struct StackText {
    buf: [u8; 48],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl StackText {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A TTL in the whole milliseconds the server takes, rounded up: a TTL is never cut
/// short (500 us sent as 0 would delete the key at once). Saturates at `u64::MAX`.
pub(crate) fn ttl_millis(ttl: std::time::Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_is_rounded_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis(std::time::Duration::ZERO), 0);
        assert_eq!(ttl_millis(std::time::Duration::from_micros(500)), 1);
        assert_eq!(
            ttl_millis(std::time::Duration::from_micros(1_000_500)),
            1001
        );
        assert_eq!(ttl_millis(std::time::Duration::from_secs(600)), 600_000);
        assert_eq!(ttl_millis(std::time::Duration::MAX), u64::MAX);
    }

    #[test]
    fn an_argument_past_4_gib_reads_as_empty_not_out_of_bounds() {
        // What `push_arg` records for an argument starting past 4 GiB (capped), without
        // building one: `arg_iter` must not slice out of bounds, as `arg_at` does not.
        let mut c = cmd("SET").arg("k").arg("v");
        c.spans[2] = (u32::MAX, 7);
        assert_eq!(c.arg_at(2), None);
        let args: Vec<&[u8]> = c.arg_iter().collect();
        assert_eq!(args, [&b"SET"[..], b"k", b""]);
    }

    #[test]
    fn the_first_argument_over_the_limit_is_found_and_named_without_its_bytes() {
        let c = cmd("SET").arg("key").arg("12345").arg("123456");
        assert_eq!(c.arg_longer_than(5), Some((3, 6)));
        assert_eq!(c.arg_longer_than(4), Some((2, 5)));
        assert_eq!(c.arg_longer_than(6), None);
        // Many short arguments adding up to more than the limit: none is over it.
        let many = cmd("MSET").args(["ab"; 10]);
        assert_eq!(many.arg_longer_than(4), None);
        assert!(refuse_overlong_args(&many).is_ok());
        // The error names the command and the argument's place and size, never its
        // bytes: not even when the name is the argument too long.
        let refused = refuse_args_over(&cmd("SET").arg("k").arg("secret-value"), 8);
        assert!(
            matches!(&refused, Err(crate::Error::Config(m))
                if m.contains("argument 2 of SET is 12 bytes") && !m.contains("secret")),
            "{refused:?}"
        );
        let refused = refuse_args_over(&cmd("SECRETNAME").arg("k"), 8);
        assert!(
            matches!(&refused, Err(crate::Error::Config(m))
                if m.contains("argument 0 of a command") && !m.contains("SECRET")),
            "{refused:?}"
        );
    }

    #[test]
    fn arguments_convert_from_common_types() {
        let c = cmd("X")
            .arg("s")
            .arg(String::from("owned"))
            .arg(&b"bytes"[..])
            .arg(vec![0u8, 255])
            .arg(Bytes::from_static(b"shared"))
            .arg(-42i64)
            .arg(7u8)
            .arg(1.5f64)
            .arg(f64::INFINITY)
            .arg(f64::NEG_INFINITY)
            .arg(0.1f32)
            .arg(1e300)
            .arg(*b"arr");
        let args: Vec<&[u8]> = c.arg_iter().collect();
        assert_eq!(
            args,
            vec![
                &b"X"[..],
                b"s",
                b"owned",
                b"bytes",
                &[0u8, 255],
                b"shared",
                b"-42",
                b"7",
                b"1.5",
                b"inf",
                b"-inf",
                b"0.1",
                b"1e300",
                b"arr"
            ]
        );
    }

    #[test]
    fn writes_resp_array_of_bulk_strings() {
        let c = cmd("SET").arg("k").arg("").arg(10);
        let mut out = BytesMut::new();
        c.write_to(&mut out);
        assert_eq!(
            &out[..],
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$2\r\n10\r\n"
        );
        assert_eq!(c.encoded_len(), out.len());
        let decoded = resp::decode_all(&out).unwrap();
        assert_eq!(decoded.len(), 1);
    }

    #[test]
    fn commands_built_in_an_arena_share_its_chunk_and_stand_alone() {
        let mut arena = CmdArena::default();
        let first = arena.cmd("SET", |c| c.arg("k1").arg("v1"));
        let second = arena.cmd("GET", |c| c.arg("k2"));
        assert_eq!(
            first.arg_iter().collect::<Vec<_>>(),
            [&b"SET"[..], b"k1", b"v1"]
        );
        assert_eq!(second.arg_iter().collect::<Vec<_>>(), [&b"GET"[..], b"k2"]);
        // Back to back in one chunk: the second starts where the first ends.
        let end_of_first = first.encoded.as_ptr_range().end;
        assert_eq!(second.encoded.as_ptr(), end_of_first);
        let mut out = BytesMut::new();
        second.write_to(&mut out);
        assert_eq!(&out[..], b"*2\r\n$3\r\nGET\r\n$2\r\nk2\r\n");

        // A command larger than the room left gets a buffer of its own, whole.
        let big = vec![b'x'; 3 * ARENA_CHUNK];
        let third = arena.cmd("SET", |c| c.arg("k3").arg(&big[..]));
        assert_eq!(third.arg_at(2), Some(&big[..]));
        // Growing an arena command later copies it out, leaving its neighbours alone.
        let mut grown = arena.cmd("RPUSH", |c| c.arg("list"));
        let after = arena.cmd("GET", |c| c.arg("k4"));
        grown.push_arg(&big[..]);
        assert_eq!(grown.arg_at(2), Some(&big[..]));
        assert_eq!(after.arg_iter().collect::<Vec<_>>(), [&b"GET"[..], b"k4"]);
        // Many commands: each intact after the arena moved on to new chunks.
        let many: Vec<Cmd> = (0..1000)
            .map(|i| arena.cmd("SET", |c| c.arg(format!("key:{i}")).arg(i)))
            .collect();
        for (i, c) in many.iter().enumerate() {
            assert_eq!(c.arg_at(1), Some(format!("key:{i}").as_bytes()));
            assert_eq!(c.arg_at(2), Some(i.to_string().as_bytes()));
        }
        assert!(!format!("{arena:?}").contains("key"));
    }

    #[test]
    fn debug_hides_arguments() {
        let c = cmd("AUTH").arg("user").arg("hunter2");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("AUTH"));
    }
}
