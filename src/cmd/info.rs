//! Command metadata: which arguments of a command are keys, and how the command behaves
//! (read or write, blocking, fanned out to every shard, idempotent).
//!
//! Owns the types of the generated command table (`table.rs`), the lookup of a [`Cmd`] in
//! it, the key-spec algorithm that finds a command's keys, and the parser of one
//! `COMMAND INFO` entry for commands the table does not know (module commands), so the
//! cluster layer can ask a node once and cache the answer. Sans-io: no sockets, no tasks.
//!
//! The key-spec algorithm follows <https://redis.io/docs/reference/key-specs/> and, where
//! the docs leave it open, what Redis 7.0's own `getKeysUsingKeySpecs` does, so that the
//! answer is the server's `COMMAND GETKEYS` answer.
//!
//! # Why `Cow<'static, _>`
//!
//! Entries of the static table and entries parsed at run time are one type, so every
//! caller (routing, splitting, retry decisions) takes `&CommandInfo` whatever its origin.
//! The static table borrows its names and arrays (`Cow::Borrowed`, no allocation, no
//! start-up cost); parsed entries own theirs (`Cow::Owned`). The alternative, `&'static`
//! fields with parsed entries leaked, would leak once per distinct command name a server
//! reports, and a misbehaving server could make that unbounded; `Cow` costs a
//! discriminant per field and nothing else.

// The cluster layer is the consumer; until it uses every accessor, the unused ones are
// not errors.
#![allow(dead_code)]

use std::borrow::Cow;
use std::cmp::Ordering;

use smallvec::SmallVec;

use super::table;
use crate::error::{Error, Result};
use crate::resp::Value;
use crate::Cmd;

/// Command flags (the `flags` of `COMMAND INFO`), one bit each. Constant names are the
/// Redis flag names in upper case, which is how the generator writes them.
pub(crate) mod flag {
    pub(crate) const WRITE: u32 = 1 << 0;
    pub(crate) const READONLY: u32 = 1 << 1;
    pub(crate) const DENYOOM: u32 = 1 << 2;
    pub(crate) const MODULE: u32 = 1 << 3;
    pub(crate) const ADMIN: u32 = 1 << 4;
    pub(crate) const PUBSUB: u32 = 1 << 5;
    pub(crate) const NOSCRIPT: u32 = 1 << 6;
    pub(crate) const BLOCKING: u32 = 1 << 7;
    pub(crate) const LOADING: u32 = 1 << 8;
    pub(crate) const STALE: u32 = 1 << 9;
    pub(crate) const SKIP_MONITOR: u32 = 1 << 10;
    pub(crate) const SKIP_SLOWLOG: u32 = 1 << 11;
    pub(crate) const ASKING: u32 = 1 << 12;
    pub(crate) const FAST: u32 = 1 << 13;
    pub(crate) const NO_AUTH: u32 = 1 << 14;
    pub(crate) const MAY_REPLICATE: u32 = 1 << 15;
    pub(crate) const NO_MANDATORY_KEYS: u32 = 1 << 16;
    pub(crate) const PROTECTED: u32 = 1 << 17;
    pub(crate) const NO_ASYNC_LOADING: u32 = 1 << 18;
    pub(crate) const NO_MULTI: u32 = 1 << 19;
    pub(crate) const MOVABLEKEYS: u32 = 1 << 20;
    pub(crate) const ALLOW_BUSY: u32 = 1 << 21;
    pub(crate) const MODULE_NO_CLUSTER: u32 = 1 << 22;

    /// Redis's names for the flags, for parsing `COMMAND INFO` at run time.
    pub(crate) const NAMES: &[(&str, u32)] = &[
        ("write", WRITE),
        ("readonly", READONLY),
        ("denyoom", DENYOOM),
        ("module", MODULE),
        ("admin", ADMIN),
        ("pubsub", PUBSUB),
        ("noscript", NOSCRIPT),
        ("blocking", BLOCKING),
        ("loading", LOADING),
        ("stale", STALE),
        ("skip_monitor", SKIP_MONITOR),
        ("skip_slowlog", SKIP_SLOWLOG),
        ("asking", ASKING),
        ("fast", FAST),
        ("no_auth", NO_AUTH),
        ("may_replicate", MAY_REPLICATE),
        ("no_mandatory_keys", NO_MANDATORY_KEYS),
        ("protected", PROTECTED),
        ("no_async_loading", NO_ASYNC_LOADING),
        ("no_multi", NO_MULTI),
        ("movablekeys", MOVABLEKEYS),
        ("allow_busy", ALLOW_BUSY),
        ("module_no_cluster", MODULE_NO_CLUSTER),
    ];
}

/// Key-spec flags: how the command uses the keys one spec finds.
pub(crate) mod key_flag {
    /// Read-only access to the key's value.
    pub(crate) const RO: u16 = 1 << 0;
    /// Read-write: the value is read and modified.
    pub(crate) const RW: u16 = 1 << 1;
    /// Overwrite: the value is replaced without being read.
    pub(crate) const OW: u16 = 1 << 2;
    /// The key is deleted.
    pub(crate) const RM: u16 = 1 << 3;
    /// User data of the key is returned.
    pub(crate) const ACCESS: u16 = 1 << 4;
    /// Data is added to the key.
    pub(crate) const INSERT: u16 = 1 << 5;
    /// Data of the key is updated.
    pub(crate) const UPDATE: u16 = 1 << 6;
    /// Data is removed from the key.
    pub(crate) const DELETE: u16 = 1 << 7;
    /// Not a key, but hashed like one: the shard channels of `SPUBLISH`/`SSUBSCRIBE`.
    pub(crate) const NOT_KEY: u16 = 1 << 8;
    /// The spec may miss keys (a keyword search can be fooled by an argument that
    /// happens to equal the keyword).
    pub(crate) const INCOMPLETE: u16 = 1 << 9;
    /// The flags depend on the arguments (`SET ... GET` reads, `SET` alone does not).
    pub(crate) const VARIABLE_FLAGS: u16 = 1 << 10;

    /// Redis's names for the flags, for parsing `COMMAND INFO` at run time.
    pub(crate) const NAMES: &[(&str, u16)] = &[
        ("RO", RO),
        ("RW", RW),
        ("OW", OW),
        ("RM", RM),
        ("access", ACCESS),
        ("insert", INSERT),
        ("update", UPDATE),
        ("delete", DELETE),
        ("not_key", NOT_KEY),
        ("incomplete", INCOMPLETE),
        ("variable_flags", VARIABLE_FLAGS),
    ];
}

/// Command tips other than the request and response policies.
pub(crate) mod tip {
    /// The reply may differ between runs on the same data (`TTL`, `SCAN`, `INFO`).
    pub(crate) const NONDETERMINISTIC_OUTPUT: u8 = 1 << 0;
    /// The reply's elements come in no particular order (`SMEMBERS`, `HGETALL`), so
    /// merged replies of several shards need no ordering either.
    pub(crate) const NONDETERMINISTIC_OUTPUT_ORDER: u8 = 1 << 1;
}

/// Where a command should go, when its keys alone do not say (`request_policy` tip).
///
/// Commands without the tip follow the default: a command with keys goes to the shard of
/// its keys, a keyless one to any shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RequestPolicy {
    /// To every node, primaries and replicas (`CONFIG SET`, `SCRIPT LOAD`).
    AllNodes,
    /// To every primary (`DBSIZE`, `FLUSHALL`, `KEYS`).
    AllShards,
    /// Split by the slot of each key, one request per shard (`MGET`, `MSET`, `DEL`).
    MultiShard,
    /// Needs command-specific handling (`SCAN`). Also what an unknown policy name from
    /// a newer server parses as: better than guessing the default.
    Special,
}

/// How to combine the replies of a command sent to several shards (`response_policy`).
///
/// Without the tip, replies of a fanned-out keyless command are concatenated
/// (arrays) or the command's own rule applies; replies of a split multi-key command are
/// put back in the order of the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ResponsePolicy {
    /// Succeeds if one shard succeeds; that shard's reply (`SCRIPT KILL`).
    OneSucceeded,
    /// Succeeds if every shard succeeds; any one reply (`FLUSHALL`, `MSET`).
    AllSucceeded,
    /// Element-wise logical AND of the array replies (`SCRIPT EXISTS`).
    AggLogicalAnd,
    /// Element-wise logical OR of the array replies.
    AggLogicalOr,
    /// The minimum of the integer replies (`WAIT`, `MSETNX`).
    AggMin,
    /// The maximum of the integer replies.
    AggMax,
    /// The sum of the integer replies (`DBSIZE`, `DEL`).
    AggSum,
    /// Needs command-specific handling (`INFO`). Also what an unknown policy name parses
    /// as.
    Special,
}

/// Where the search for a key spec's first key starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BeginSearch {
    /// At this argument index (0 is the command name).
    Index(i32),
    /// Just after `keyword`, searched case-insensitively from index `startfrom`; a
    /// negative `startfrom` counts from the end and searches backwards.
    Keyword {
        keyword: Cow<'static, str>,
        startfrom: i32,
    },
    /// The command's own logic finds the keys (`SORT ... STORE`, `SORT ... BY`).
    Unknown,
}

/// Which keys follow the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FindKeys {
    /// Keys from the first up to `lastkey` (relative to the first key when
    /// non-negative, to the end of the arguments when negative), every `keystep`
    /// arguments. With `limit` > 1 (and `lastkey` -1), only the first 1/`limit` of the
    /// remaining arguments: `XREAD ... STREAMS k1 k2 id1 id2`.
    Range {
        lastkey: i32,
        keystep: i32,
        limit: i32,
    },
    /// The argument `keynumidx` after the first holds the number of keys; they start
    /// `firstkey` after it, every `keystep` arguments: `EVAL script 2 k1 k2`.
    Keynum {
        keynumidx: i32,
        firstkey: i32,
        keystep: i32,
    },
    /// The command's own logic finds the keys.
    Unknown,
}

/// One key specification: where one group of a command's keys is and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySpec {
    /// [`key_flag`] bits.
    pub(crate) flags: u16,
    pub(crate) begin_search: BeginSearch,
    pub(crate) find_keys: FindKeys,
}

/// Everything the client knows about one command (or subcommand, `object|encoding`).
///
/// Static table entries and entries parsed from `COMMAND INFO` at run time are this same
/// type (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandInfo {
    /// Lower case; subcommands are `container|sub`.
    pub(super) name: Cow<'static, str>,
    /// Argument count including the name: `n` exactly, or `-n` for at least `n`.
    pub(super) arity: i32,
    /// [`flag`] bits.
    pub(super) flags: u32,
    /// The legacy (pre key-spec) key range: first key index, last (negative: from the
    /// end), step. Only used when a command has no key specs.
    pub(super) first_key: i32,
    pub(super) last_key: i32,
    pub(super) step: i32,
    pub(super) request_policy: Option<RequestPolicy>,
    pub(super) response_policy: Option<ResponsePolicy>,
    /// [`tip`] bits.
    pub(super) tips: u8,
    pub(super) key_specs: Cow<'static, [KeySpec]>,
    /// Sorted by name, for [`CommandInfo::subcommand`].
    pub(super) subcommands: Cow<'static, [CommandInfo]>,
}

// Constructors for the generated table, short so that a command fits on one line.

/// A key spec.
pub(super) const fn ks(flags: u16, begin_search: BeginSearch, find_keys: FindKeys) -> KeySpec {
    KeySpec {
        flags,
        begin_search,
        find_keys,
    }
}

/// `begin_search: index`.
pub(super) const fn idx(index: i32) -> BeginSearch {
    BeginSearch::Index(index)
}

/// `begin_search: keyword`.
pub(super) const fn kw(keyword: &'static str, startfrom: i32) -> BeginSearch {
    BeginSearch::Keyword {
        keyword: Cow::Borrowed(keyword),
        startfrom,
    }
}

/// `find_keys: range`.
pub(super) const fn range(lastkey: i32, keystep: i32, limit: i32) -> FindKeys {
    FindKeys::Range {
        lastkey,
        keystep,
        limit,
    }
}

/// `find_keys: keynum`.
pub(super) const fn keynum(keynumidx: i32, firstkey: i32, keystep: i32) -> FindKeys {
    FindKeys::Keynum {
        keynumidx,
        firstkey,
        keystep,
    }
}

pub(super) const BS_UNKNOWN: BeginSearch = BeginSearch::Unknown;
pub(super) const FK_UNKNOWN: FindKeys = FindKeys::Unknown;

impl CommandInfo {
    /// The lower-case name; `container|sub` for a subcommand (`config|get`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `n` for exactly `n` arguments (name included), `-n` for at least `n`.
    pub(crate) fn arity(&self) -> i32 {
        self.arity
    }

    /// Whether all of the [`flag`] bits in `flags` are set.
    pub(crate) fn has_flags(&self, flags: u32) -> bool {
        self.flags & flags == flags
    }

    /// The [`flag`] bits.
    pub(crate) fn flags(&self) -> u32 {
        self.flags
    }

    /// Flagged `readonly`: reads data and never changes it (replicas can serve it).
    pub(crate) fn is_read_only(&self) -> bool {
        self.has_flags(flag::READONLY)
    }

    /// Flagged `write`: may change data, so it must go to a primary.
    pub(crate) fn is_write(&self) -> bool {
        self.has_flags(flag::WRITE)
    }

    /// What `durable_writes` follows with a `WAIT`: a write, or a command not flagged
    /// either way whose key specs say it may change its keys. That is how the server
    /// describes a script or function call (`EVAL`, `EVALSHA`, `FCALL`; not their `_RO`
    /// forms), whose writing depends on its code, and it holds for module commands
    /// learned from `COMMAND INFO` too. (`PFCOUNT` updates a cached count, but is flagged
    /// read-only.)
    pub(crate) fn is_durable_write(&self) -> bool {
        const MAY_CHANGE: u16 = key_flag::RW
            | key_flag::OW
            | key_flag::RM
            | key_flag::INSERT
            | key_flag::UPDATE
            | key_flag::DELETE;
        self.is_write()
            || (!self.has_flags(flag::READONLY)
                && self.key_specs.iter().any(|k| k.flags & MAY_CHANGE != 0))
    }

    /// Flagged `blocking`: may block the connection (`BLPOP`; `XREAD` is flagged even
    /// without `BLOCK`, see [`blocks`] for the per-call answer).
    pub(crate) fn is_blocking(&self) -> bool {
        self.has_flags(flag::BLOCKING)
    }

    /// The `request_policy` tip; `None` means the default (by keys, or any shard).
    pub(crate) fn request_policy(&self) -> Option<RequestPolicy> {
        self.request_policy
    }

    /// The `response_policy` tip; `None` means the default.
    pub(crate) fn response_policy(&self) -> Option<ResponsePolicy> {
        self.response_policy
    }

    /// Whether all of the [`tip`] bits in `tips` are set.
    pub(crate) fn has_tips(&self, tips: u8) -> bool {
        self.tips & tips == tips
    }

    /// The key specs, in the server's order.
    pub(crate) fn key_specs(&self) -> &[KeySpec] {
        &self.key_specs
    }

    /// The subcommands of a container command (`config`), sorted by name.
    pub(crate) fn subcommands(&self) -> &[CommandInfo] {
        &self.subcommands
    }

    /// The subcommand named `sub` (`b"GET"` for `config|get`), any case.
    pub(crate) fn subcommand(&self, sub: &[u8]) -> Option<&CommandInfo> {
        let subs = &*self.subcommands;
        subs.binary_search_by(|c| cmp_lower(sub_name(&c.name).as_bytes(), sub))
            .ok()
            .map(|i| &subs[i])
    }

    /// Whether some key spec may find a key (not counting `NOT_KEY` specs), or the
    /// legacy range names one.
    pub(crate) fn has_keys(&self) -> bool {
        if self.key_specs.is_empty() {
            return self.first_key > 0;
        }
        self.key_specs
            .iter()
            .any(|s| s.flags & key_flag::NOT_KEY == 0)
    }
}

/// The part of `container|sub` after the bar (the whole name when there is none).
fn sub_name(name: &str) -> &str {
    name.split_once('|').map_or(name, |(_, sub)| sub)
}

/// Compares a lower-case table name with user input of any case, without allocating.
fn cmp_lower(table_name: &[u8], input: &[u8]) -> Ordering {
    table_name
        .iter()
        .copied()
        .cmp(input.iter().map(u8::to_ascii_lowercase))
}

/// The Redis version the static table was generated from.
pub(crate) fn table_version() -> &'static str {
    table::REDIS_VERSION
}

/// The static table entry of `cmd`, any case: the subcommand entry for a container
/// command with a known subcommand (`CONFIG GET` is `config|get`, `OBJECT ENCODING k`
/// is `object|encoding`), the container's own entry otherwise (`CONFIG` alone, or an
/// unknown subcommand: the server rejects those). `None` for a command the table does
/// not know, such as a module command: ask the node (`COMMAND INFO name`, then
/// [`parse_command_info`]).
pub(crate) fn lookup(cmd: &Cmd) -> Option<&'static CommandInfo> {
    let top = lookup_name(cmd.name())?;
    if top.subcommands.is_empty() {
        return Some(top);
    }
    Some(cmd.arg_at(1).and_then(|s| top.subcommand(s)).unwrap_or(top))
}

/// The static top-level entry named `name`, any case (no subcommand resolution).
pub(crate) fn lookup_name(name: &[u8]) -> Option<&'static CommandInfo> {
    // Every request looks its command up. The commands most requests are compared
    // first, as one machine word each; the others by a hash of the name lowercased on
    // the stack, which costs about half a binary search that lowercases in every
    // comparison.
    type Index = std::collections::HashMap<&'static [u8], usize, BuildFnv>;
    static INDEX: std::sync::OnceLock<(Index, Vec<(Word, usize)>)> = std::sync::OnceLock::new();
    let all = table::COMMANDS;
    let (index, hot) = INDEX.get_or_init(|| {
        let index: Index = all
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_bytes(), i))
            .collect();
        let hot = HOT_COMMANDS
            .iter()
            .filter_map(|n| Some((word(n.as_bytes())?, *index.get(n.as_bytes())?)))
            .collect();
        (index, hot)
    });
    let mut buf = [0u8; 32];
    let lower = lowercase(name, &mut buf)?;
    if let Some(w) = word(lower) {
        if let Some(&(_, i)) = hot.iter().find(|(h, _)| *h == w) {
            return Some(&all[i]);
        }
    }
    index.get(lower).map(|&i| &all[i])
}

/// The commands compared as a word before the hash lookup: those that make up most
/// requests in most applications.
const HOT_COMMANDS: &[&str] = &[
    "get", "set", "del", "incr", "hget", "hset", "expire", "mget",
];

/// A lowercase command name of at most 8 bytes as one word, and its length (the word
/// alone would not tell `get` from `get\0`).
type Word = (u64, usize);

fn word(lower: &[u8]) -> Option<Word> {
    let mut bytes = [0u8; 8];
    bytes.get_mut(..lower.len())?.copy_from_slice(lower);
    Some((u64::from_le_bytes(bytes), lower.len()))
}

/// `name` lowercased into `buf`, without allocating; `None` when it is longer than the
/// buffer, which no command name is.
pub(crate) fn lowercase<'b>(name: &[u8], buf: &'b mut [u8; 32]) -> Option<&'b [u8]> {
    let lower = buf.get_mut(..name.len())?;
    for (l, n) in lower.iter_mut().zip(name) {
        *l = n.to_ascii_lowercase();
    }
    Some(lower)
}

/// FNV-1a: command names are short and not attacker-chosen in a way that matters (the
/// table is fixed), so a fast hash beats SipHash's flood resistance here.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type BuildFnv = std::hash::BuildHasherDefault<Fnv>;

/// The argument indices of the keys of `cmd` (0 is the command name), in the order the
/// server reports them for `COMMAND GETKEYS`. `NOT_KEY` specs (shard channels) are left
/// out: see [`routing_key_indices`]. `out` is cleared first.
///
/// Errors with [`Error::Config`] when the arguments cannot be valid: fewer than the
/// command's arity, a `numkeys` that is not a non-negative integer or
/// counts more arguments than there are, key positions past the end (`XREAD ...
/// STREAMS k` with no id). A keyword that is absent (`SORT k` without `STORE`) is not an
/// error: that spec has no keys. Never panics.
pub(crate) fn key_indices(
    cmd: &Cmd,
    info: &CommandInfo,
    out: &mut SmallVec<[usize; 4]>,
) -> Result<()> {
    collect_keys(cmd, info, false, out)
}

/// Whether the one argument routed by is the first after the name, the argument count
/// being right: `GET k`, `SET k v ...`, `HGET h f`, most commands. It is then what
/// [`routing_key_indices`] would find, without its search; `false` sends a caller there
/// (any other command, or too few arguments, which it reports).
pub(crate) fn routes_by_first_argument(cmd: &Cmd, info: &CommandInfo) -> bool {
    let [spec] = &info.key_specs[..] else {
        return false;
    };
    matches!(spec.begin_search, BeginSearch::Index(1))
        && matches!(spec.find_keys, FindKeys::Range { lastkey: 0, .. })
        && cmd.len() >= 2
        && check_arity(cmd, info).is_ok()
}

/// Whether [`routing_key_indices`] finds the keys the server itself finds, so that the
/// server's `MOVED` for the command can only name their slot: described by key specs it
/// can follow, or by the legacy triple without movable keys, or with a finder of its
/// own here (`SORT`, `SORT_RO`, `MIGRATE`, as in the server). Else (a module's
/// `unknown` spec, movable keys without specs) the server may find keys the client
/// could not. So may it when a spec says it is `incomplete`, or when a module's
/// command finds its keys itself (`getkeys-api`: movable keys, and a spec flagged
/// `variable_flags`, which the server then passes over for the module's callback).
pub(crate) fn keys_known(info: &CommandInfo) -> bool {
    if !info.subcommands.is_empty() {
        // A container (`OBJECT`, `XINFO`): the subcommand sent is not in the table (a
        // newer server's), so neither are its keys.
        return false;
    }
    let any_spec = |flags: u16| info.key_specs.iter().any(|spec| spec.flags & flags != 0);
    match &*info.name {
        "sort" | "sort_ro" | "migrate" => true,
        _ if info.key_specs.is_empty() => !info.has_flags(flag::MOVABLEKEYS),
        _ if any_spec(key_flag::INCOMPLETE) => false,
        _ if info.has_flags(flag::MOVABLEKEYS) && any_spec(key_flag::VARIABLE_FLAGS) => false,
        _ => info.key_specs.iter().all(|spec| {
            !matches!(spec.begin_search, BeginSearch::Unknown)
                && !matches!(spec.find_keys, FindKeys::Unknown)
        }),
    }
}

/// Like [`key_indices`], but also the arguments that are routed by slot without being
/// keys: the shard channels of `SPUBLISH`, `SSUBSCRIBE` and `SUNSUBSCRIBE` (key specs
/// flagged `NOT_KEY`; in 7.0 those are the only ones). This is what the cluster routes
/// by: the server checks a shard channel's slot as it checks a key's.
pub(crate) fn routing_key_indices(
    cmd: &Cmd,
    info: &CommandInfo,
    out: &mut SmallVec<[usize; 4]>,
) -> Result<()> {
    collect_keys(cmd, info, true, out)
}

fn collect_keys(
    cmd: &Cmd,
    info: &CommandInfo,
    not_keys: bool,
    out: &mut SmallVec<[usize; 4]>,
) -> Result<()> {
    out.clear();
    check_arity(cmd, info)?;
    let argc = cmd.len();
    // Redis 7.0 describes these two with `unknown` or `incomplete` specs, and the server
    // itself falls back to hand-written key finders for them; so do we.
    match &*info.name {
        "sort" => return sort_keys(cmd, out),
        "migrate" => return migrate_keys(cmd, info, out),
        _ => {}
    }
    if info.key_specs.is_empty() {
        // A command described only by the legacy triple (older servers, some modules).
        // It is meaningless for movable keys, which then have none we can find.
        if info.first_key > 0 && !info.has_flags(flag::MOVABLEKEYS) {
            let spec = KeySpec {
                flags: 0,
                begin_search: BeginSearch::Index(info.first_key),
                find_keys: FindKeys::Range {
                    lastkey: if info.last_key < 0 {
                        info.last_key
                    } else {
                        info.last_key - info.first_key
                    },
                    keystep: info.step,
                    limit: 0,
                },
            };
            spec_keys(cmd, info, &spec, argc, out)?;
        }
        return Ok(());
    }
    for spec in info.key_specs.iter() {
        if spec.flags & key_flag::NOT_KEY != 0 && !not_keys {
            continue;
        }
        spec_keys(cmd, info, spec, argc, out)?;
    }
    Ok(())
}

/// Refuses a command with too few arguments to find its keys in. More than a fixed
/// arity goes to the server to judge: later versions give fixed-arity commands options
/// (`ZRANK k m WITHSCORE` in 7.2), and the keys are where the table says all the same.
fn check_arity(cmd: &Cmd, info: &CommandInfo) -> Result<()> {
    let argc = i64::try_from(cmd.len()).unwrap_or(i64::MAX);
    let arity = i64::from(info.arity);
    let ok = match arity.cmp(&0) {
        Ordering::Greater => argc >= arity,
        Ordering::Less => argc >= -arity,
        // An entry from a server that gave no arity: nothing to check.
        Ordering::Equal => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "wrong number of arguments for '{}' command",
            info.name
        )))
    }
}

fn invalid(info: &CommandInfo, why: &str) -> Error {
    Error::Config(format!(
        "invalid arguments for '{}' command: {why}",
        info.name
    ))
}

/// Applies one key spec, appending key indices to `out`.
///
/// Index arithmetic is in `i64`, so no spec value and no argument count can overflow
/// it, and every index is checked against `argc` before use.
fn spec_keys(
    cmd: &Cmd,
    info: &CommandInfo,
    spec: &KeySpec,
    argc: usize,
    out: &mut SmallVec<[usize; 4]>,
) -> Result<()> {
    let argc = argc as i64;
    let arg = |i: i64| -> Option<&[u8]> { usize::try_from(i).ok().and_then(|i| cmd.arg_at(i)) };
    let first: i64 = match &spec.begin_search {
        BeginSearch::Index(i) => i64::from(*i),
        BeginSearch::Keyword { keyword, startfrom } => {
            // As Redis does it: a positive start searches forward up to (not including)
            // the last argument, a negative one backward down to (not including) index
            // 1; a keyword in those places would have no keys after it, or be the first
            // argument of a command that has a keyword further on.
            let startfrom = i64::from(*startfrom);
            let (start, end) = if startfrom > 0 {
                (startfrom, argc - 1)
            } else {
                (argc + startfrom, 1)
            };
            let dir = if start <= end { 1 } else { -1 };
            let mut found = None;
            let mut i = start;
            while i != end && (1..argc).contains(&i) {
                if arg(i).is_some_and(|a| a.eq_ignore_ascii_case(keyword.as_bytes())) {
                    found = Some(i + 1);
                    break;
                }
                i += dir;
            }
            match found {
                Some(first) => first,
                // An optional keyword that is absent: this spec has no keys.
                None => return Ok(()),
            }
        }
        // Nothing we can follow; the server's own logic would. The keys the other specs
        // find still route the command (a wrong guess costs a MOVED or CROSSSLOT reply).
        BeginSearch::Unknown => return Ok(()),
    };
    let (first, last, step) = match spec.find_keys {
        FindKeys::Range {
            lastkey,
            keystep,
            limit,
        } => {
            let (lastkey, limit) = (i64::from(lastkey), i64::from(limit));
            let last = if lastkey >= 0 {
                first + lastkey
            } else if limit <= 1 {
                argc + lastkey
            } else {
                first + ((argc - first) / limit + lastkey)
            };
            if lastkey < 0 && limit <= 1 && first >= argc {
                // Keys "up to the end" and no argument there: `PFMERGE dst` merges no
                // sources. (Split by a limit, `XREAD ... STREAMS` needs its pairs.)
                return Ok(());
            }
            (first, last, i64::from(keystep))
        }
        FindKeys::Keynum {
            keynumidx,
            firstkey,
            keystep,
        } => {
            let numkeys = arg(first + i64::from(keynumidx))
                .ok_or_else(|| invalid(info, "missing number of keys"))?;
            let numkeys = parse_number(numkeys)
                .filter(|&n| n >= 0)
                .ok_or_else(|| invalid(info, "number of keys is not a non-negative integer"))?;
            let first = first + i64::from(firstkey);
            if numkeys == 0 {
                // `EVAL script 0`: valid, and no keys.
                return Ok(());
            }
            let last =
                first.saturating_add((numkeys - 1).saturating_mul(i64::from(keystep).max(1)));
            (first, last, i64::from(keystep))
        }
        FindKeys::Unknown => return Ok(()),
    };
    if first < 1 || first >= argc || last >= argc || last < first {
        return Err(invalid(info, "key positions out of range"));
    }
    // A zero or negative step would never advance; only a broken server sends one.
    let step = usize::try_from(step).ok().filter(|&s| s > 0).unwrap_or(1);
    // In range: 1 <= first <= last < argc, and argc came from a usize. A plain loop:
    // `extend` over a stepped range cost more than the rest of routing a `GET`.
    let (mut at, last) = (first as usize, last as usize);
    while at <= last {
        out.push(at);
        at += step;
    }
    Ok(())
}

/// Redis's `sortGetKeys`: the sorted key, and the destination of the last `STORE`,
/// skipping the arguments of `LIMIT`, `GET` and `BY` (a `GET store` pattern is not a
/// `STORE`).
fn sort_keys(cmd: &Cmd, out: &mut SmallVec<[usize; 4]>) -> Result<()> {
    out.push(1);
    let argc = cmd.len();
    let mut store = None;
    let mut i = 2;
    while i < argc {
        let a = cmd.arg_at(i).unwrap_or_default();
        if a.eq_ignore_ascii_case(b"limit") {
            i += 2;
        } else if a.eq_ignore_ascii_case(b"get") || a.eq_ignore_ascii_case(b"by") {
            i += 1;
        } else if a.eq_ignore_ascii_case(b"store") && i + 1 < argc {
            store = Some(i + 1);
        }
        i += 1;
    }
    out.extend(store);
    Ok(())
}

/// `MIGRATE` as the server finds its keys: the key argument (index 3), unless a `KEYS`
/// keyword is found searching backward from the second-to-last argument. That spec is
/// flagged incomplete (a password or key could be spelled `keys`), so when it matches,
/// the server uses `migrateGetKeys` instead, which scans forward skipping the
/// `AUTH`/`AUTH2` arguments and takes everything after `KEYS`, the key argument then
/// being required empty.
fn migrate_keys(cmd: &Cmd, info: &CommandInfo, out: &mut SmallVec<[usize; 4]>) -> Result<()> {
    let argc = cmd.len();
    let is_keys = |i: usize| {
        cmd.arg_at(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"keys"))
    };
    if !(2..argc.saturating_sub(1)).any(is_keys) {
        out.push(3);
        return Ok(());
    }
    let mut i = 6;
    while i < argc {
        if is_keys(i) {
            if !cmd.arg_at(3).unwrap_or_default().is_empty() {
                return Err(invalid(info, "KEYS needs an empty key argument"));
            }
            out.extend(i + 1..argc);
            return Ok(());
        }
        let a = cmd.arg_at(i).unwrap_or_default();
        if a.eq_ignore_ascii_case(b"auth") {
            i += 1;
        } else if a.eq_ignore_ascii_case(b"auth2") {
            i += 2;
        }
        i += 1;
    }
    out.push(3);
    Ok(())
}

/// Whether this call of the command may block the connection, waiting on data or on
/// replicas: the `blocking` flag, except that `XREAD` and `XREADGROUP` (always flagged)
/// block only with a `BLOCK` option, and that `WAIT` (not flagged in 7.0) blocks up to
/// its timeout.
pub(crate) fn blocks(cmd: &Cmd, info: &CommandInfo) -> bool {
    match &*info.name {
        "xread" | "xreadgroup" => stream_block_option(cmd).is_some(),
        "wait" => true,
        _ => info.is_blocking(),
    }
}

/// Where the value of an `XREAD`/`XREADGROUP` `BLOCK` option is, if the call has one.
/// The server takes the options in any order before `STREAMS`; their values are
/// skipped, so a group or consumer named `block` is no option.
pub(crate) fn stream_block_option(cmd: &Cmd) -> Option<usize> {
    let mut i = 1;
    while let Some(a) = cmd.arg_at(i) {
        if a.eq_ignore_ascii_case(b"streams") {
            return None;
        }
        if a.eq_ignore_ascii_case(b"block") {
            return Some(i + 1);
        }
        if a.eq_ignore_ascii_case(b"count") {
            i += 1;
        } else if a.eq_ignore_ascii_case(b"group") {
            i += 2;
        }
        i += 1;
    }
    None
}

/// Read-only (or purely informational) commands without the `readonly` flag that are
/// safe to repeat: they change nothing.
const HARMLESS: &[&str] = &[
    "client|getname",
    "client|id",
    "client|info",
    "client|list",
    "cluster|countkeysinslot",
    "cluster|getkeysinslot",
    "cluster|info",
    "cluster|keyslot",
    "cluster|links",
    "cluster|myid",
    "cluster|nodes",
    "cluster|replicas",
    "cluster|shards",
    "cluster|slaves",
    "cluster|slots",
    "command",
    "command|count",
    "command|docs",
    "command|getkeys",
    "command|getkeysandflags",
    "command|info",
    "command|list",
    "config|get",
    "echo",
    "function|dump",
    "function|list",
    "function|stats",
    "info",
    "lastsave",
    "latency|doctor",
    "latency|graph",
    "latency|histogram",
    "latency|history",
    "latency|latest",
    "memory|doctor",
    "memory|malloc-stats",
    "memory|stats",
    "module|list",
    "ping",
    "pubsub|channels",
    "pubsub|numpat",
    "pubsub|numsub",
    "pubsub|shardchannels",
    "pubsub|shardnumsub",
    "role",
    "script|exists",
    "slowlog|get",
    "slowlog|len",
    "time",
];

/// Writes whose repeat leaves the data as one run left it and answers as the first run
/// did (see [`is_idempotent`]).
const IDEMPOTENT_WRITES: &[&str] = &[
    "config|set",
    "expire",
    "expireat",
    "flushall",
    "flushdb",
    "function|flush",
    "getex",
    "hmset",
    "lset",
    "mset",
    "pexpire",
    "pexpireat",
    "psetex",
    "script|flush",
    "script|load",
    "set",
    "setex",
    "setrange",
];

/// Whether sending `cmd` again after an unknown outcome (a timeout, a connection lost
/// after the write) is safe: running it twice leaves the same data as running it once,
/// and the second reply is still a truthful answer for the caller.
///
/// The rule:
/// - Commands flagged `readonly`, and a hand-kept list of informational ones (`PING`,
///   `INFO`, `CLUSTER NODES`, `CONFIG GET`, ...), are idempotent: they change nothing.
/// - Writes are idempotent only if listed: `SET` (and `SETEX`, `PSETEX`, `MSET`),
///   `HMSET`, `LSET`, `SETRANGE` (the length), `GETEX` (the value), the `EXPIRE` family,
///   `FLUSHDB`/`FLUSHALL`, `CONFIG SET`, `SCRIPT LOAD`/`FLUSH`, `FUNCTION FLUSH`. Their
///   reply does not depend on whether they ran before, but for an expiry whose time has
///   come (`EXPIRE k 0`, `EXPIREAT` or `GETEX ... EXAT` in the past, or within a minute
///   by this machine's clock): it deletes the key, and a repeat answers 0 (nil), so
///   those are not resent. Relative expiries (`EXPIRE k 10`) restart their clock on a
///   repeat, which moves the deadline by the retry delay: accepted.
/// - Not idempotent: writes whose reply counts what they changed, although a repeat
///   leaves the same data: `DEL`, `UNLINK`, `HSET`, `HDEL`, `SADD`, `SREM`, `ZADD`,
///   `ZREM`, `ZREMRANGEBY*`, `PFADD`, `XACK`, `XDEL`. A repeat counts 0 what the first run
///   changed, and callers read those counts: `ZREM queue job` answering 1 claims the job,
///   `SADD seen id` answering 1 says the message is new (a repeat's 0 would have it
///   dropped as a duplicate). The caller who does not read the count says so with
///   `query_idempotent`.
/// - Not idempotent: writes whose reply says whether a condition held, since a repeat
///   says it did not (the caller of `SET lock token NX` would wait for a lock it holds):
///   `SET ... NX`, `SETNX`, `MSETNX`, `HSETNX`, `EXPIRE ... NX|LT`, `EXPIREAT ... GT`,
///   `PERSIST`.
/// - Not idempotent, even where the state would be the same: commands that return what
///   they destroy or replace, since a repeat returns the wrong thing and the first
///   answer is lost: `GETDEL`, `GETSET`, `SET ... GET`, `SETBIT` (returns the old bit),
///   the pops. `INCR*`, `APPEND`, `LPUSH`/`RPUSH`, `LREM`, `LTRIM`, `XADD`,
///   `XREADGROUP`, `RENAME`, `*STORE`, scripts, `PUBLISH`: never.
/// - Any other command is not idempotent, and neither is a command the static table
///   does not know (module commands: the caller may still treat those as idempotent
///   when their run-time `COMMAND INFO` says `readonly`).
///
/// "Same state" is about our own repeat: like any at-least-once delivery, a retry can
/// land after another client's write and undo it (`SET` after someone else's `SET`).
pub(crate) fn is_idempotent(cmd: &Cmd) -> bool {
    lookup(cmd).is_some_and(|info| is_idempotent_as(cmd, info))
}

/// Whether a request for `cmd` may be sent again after an attempt that may have run:
/// the command reads only, or is a write known to be idempotent.
pub(crate) fn may_resend(cmd: &Cmd, info: &CommandInfo) -> bool {
    info.is_read_only() || is_idempotent_as(cmd, info)
}

/// [`is_idempotent`] for a command whose table entry the caller looked up already.
pub(crate) fn is_idempotent_as(cmd: &Cmd, info: &CommandInfo) -> bool {
    if info.is_read_only() && !info.is_write() {
        return true;
    }
    let name = &*info.name;
    if name == "set" {
        // The most common write, answered before the hash lookup.
        return set_is_idempotent(cmd);
    }
    // Every write asks this: one hash lookup instead of two binary searches by name.
    static KNOWN: std::sync::OnceLock<std::collections::HashMap<&'static str, bool, BuildFnv>> =
        std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let harmless = HARMLESS.iter().map(|&n| (n, true));
        harmless
            .chain(IDEMPOTENT_WRITES.iter().map(|&n| (n, false)))
            .collect()
    });
    match known.get(name) {
        Some(true) => return true,
        Some(false) => {}
        None => return false,
    }
    match name {
        // `EXPIRE k 10 NX` (or `LT`) says whether it applied; a repeat says it did not.
        // So does `GT` with an absolute time: the repeat's is not greater. And a time
        // already come (`EXPIRE k 0`, `EXPIREAT` in the past) deletes the key: 1, then 0
        // for the repeat, as a `DEL`.
        "expire" | "pexpire" => {
            !has_option(cmd, &[b"nx", b"lt"]) && number_at(cmd, 2).is_some_and(|ttl| ttl > 0)
        }
        "expireat" => !has_option(cmd, &[b"nx", b"lt", b"gt"]) && to_come(number_at(cmd, 2), 1000),
        "pexpireat" => !has_option(cmd, &[b"nx", b"lt", b"gt"]) && to_come(number_at(cmd, 2), 1),
        // `GETEX k EXAT <past>` deletes the key: its value, then nil for the repeat.
        "getex" => (2..cmd.len()).all(|i| {
            let Some(option) = cmd.arg_at(i) else {
                return true;
            };
            let unit = if option.eq_ignore_ascii_case(b"exat") {
                1000
            } else if option.eq_ignore_ascii_case(b"pxat") {
                1
            } else {
                return true;
            };
            to_come(number_at(cmd, i + 1), unit)
        }),
        _ => true,
    }
}

/// `SET k v` with only `EX`/`PX`/`EXAT`/`PXAT` (and their value), `KEEPTTL` and `XX`
/// leaves the same value, and answers `OK`, whether it runs once or twice. Not others:
/// `... GET` returns the old value (a repeat would return `v`); `NX` says whether it
/// set (a lock taken, most often: a repeat would say it did not, and its caller would
/// wait for a lock it holds); a compare-and-set of newer servers (`IFEQ old`, Valkey 8.1
/// and Redis 8.4) would answer that the swap it made failed; an option this list does
/// not know may be one of those.
fn set_is_idempotent(cmd: &Cmd) -> bool {
    let mut options = cmd.arg_iter().skip(3);
    while let Some(option) = options.next() {
        let is = |name: &[u8]| option.eq_ignore_ascii_case(name);
        if is(b"ex") || is(b"px") || is(b"exat") || is(b"pxat") {
            options.next();
        } else if !(is(b"keepttl") || is(b"xx")) {
            return false;
        }
    }
    true
}

/// Argument `index` of `cmd` as an integer, if it is one.
fn number_at(cmd: &Cmd, index: usize) -> Option<i64> {
    cmd.arg_at(index).and_then(parse_number)
}

fn parse_number(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// Whether a Unix time (`at`, in units of `unit_ms` milliseconds) is far enough ahead
/// by this machine's clock that no resend reaches it: a minute, for the clocks' skew
/// and the resend's delay.
fn to_come(at: Option<i64>, unit_ms: i64) -> bool {
    let Some(at) = at else {
        return false;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    at.saturating_mul(unit_ms) > now_ms.saturating_add(60_000)
}

/// Whether any argument after the key and one value (`SET k v ...`, `EXPIRE k 10 ...`)
/// is one of `options`, in any case.
fn has_option(cmd: &Cmd, options: &[&[u8]]) -> bool {
    cmd.arg_iter()
        .skip(3)
        .any(|a| options.iter().any(|o| a.eq_ignore_ascii_case(o)))
}

impl Cmd {
    /// The arguments of this command that are keys, in order, as the built-in command
    /// table (generated from Redis 7.0) describes them: the same answer as the server's
    /// `COMMAND GETKEYS`.
    ///
    /// `Ok(None)` for a command the table does not know (a module command). An error
    /// ([`Error::Config`]) when the arguments cannot be valid for the command: a wrong
    /// number of them, a `numkeys` that is not a count of the arguments that follow.
    ///
    /// ```
    /// use redcluster::cmd;
    /// let c = cmd("ZUNIONSTORE").arg("dst").arg(2).arg("a").arg("b").arg("WEIGHTS").arg(1).arg(2);
    /// assert_eq!(c.keys().unwrap(), Some(vec![&b"dst"[..], b"a", b"b"]));
    /// assert_eq!(cmd("PING").keys().unwrap(), Some(vec![]));
    /// assert!(cmd("GET").keys().is_err());
    /// ```
    pub fn keys(&self) -> Result<Option<Vec<&[u8]>>> {
        let Some(info) = lookup(self) else {
            return Ok(None);
        };
        let mut at = SmallVec::new();
        key_indices(self, info, &mut at)?;
        Ok(Some(at.iter().filter_map(|&i| self.arg_at(i)).collect()))
    }
}

// --- Parsing `COMMAND INFO` ------------------------------------------------------------

fn protocol(what: &str) -> Error {
    Error::Protocol(format!("COMMAND INFO entry: {what}"))
}

/// The value with RESP3 attributes stripped, by reference.
fn plain(v: &Value) -> &Value {
    match v {
        Value::Attribute { data, .. } => plain(data),
        v => v,
    }
}

fn as_text<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    plain(v)
        .as_bytes()
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| protocol(what))
}

fn as_int(v: &Value, what: &str) -> Result<i32> {
    match plain(v) {
        Value::Int(n) => i32::try_from(*n).map_err(|_| protocol(what)),
        v => as_text(v, what)?.parse().map_err(|_| protocol(what)),
    }
}

/// An array (RESP2) or set (RESP3 flags) as a slice; nil as empty.
fn as_list<'a>(v: &'a Value, what: &str) -> Result<&'a [Value]> {
    match plain(v) {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(&[]),
        _ => Err(protocol(what)),
    }
}

/// A map (RESP3) or flat `[key, value, ...]` array (RESP2) as (name, value) pairs.
fn as_map<'a>(v: &'a Value, what: &str) -> Result<Vec<(&'a str, &'a Value)>> {
    match plain(v) {
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| Ok((as_text(k, what)?, v)))
            .collect(),
        Value::Array(items) if items.len() % 2 == 0 => items
            .chunks_exact(2)
            .map(|kv| Ok((as_text(&kv[0], what)?, &kv[1])))
            .collect(),
        _ => Err(protocol(what)),
    }
}

fn field<'a>(map: &[(&str, &'a Value)], name: &str, what: &str) -> Result<&'a Value> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|&(_, v)| v)
        .ok_or_else(|| protocol(what))
}

fn int_field(map: &[(&str, &Value)], name: &str) -> Result<i32> {
    as_int(field(map, name, name)?, name)
}

/// Parses one entry of a `COMMAND INFO` (or `COMMAND`) reply, RESP2 or RESP3, into an
/// owned [`CommandInfo`], subcommands included.
///
/// Accepts the Redis 7 layout (name, arity, flags, first key, last key, step, ACL
/// categories, tips, key specs, subcommands) and the shorter ones of older servers.
/// Unknown flags and tips are ignored, an unknown policy is `Special`, and an unknown
/// `begin_search`/`find_keys` type is `Unknown`, so a newer server still parses. A nil
/// entry (the server does not know the command) is an [`Error::Protocol`], as is any
/// shape that is not a command entry.
pub(crate) fn parse_command_info(entry: &Value) -> Result<CommandInfo> {
    parse_entry(entry, 0)
}

/// How many learned entries the process keeps, all clients together (see [`intern`]).
const MAX_INTERNED: usize = 4096;

/// A learned entry kept for the life of the process, so that routing holds it as it
/// holds the built-in table's (`&'static`). The same entry (a module's command, which
/// every client that uses it learns) is kept once, however many clients learn it: a
/// process that builds client after client does not grow. `None` once the process
/// keeps [`MAX_INTERNED`] entries: the command is then routed as one the server does
/// not know.
pub(crate) fn intern(info: CommandInfo) -> Option<&'static CommandInfo> {
    static INTERNED: std::sync::Mutex<Vec<&'static CommandInfo>> =
        std::sync::Mutex::new(Vec::new());
    let mut interned = INTERNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = interned.iter().find(|known| ***known == info) {
        return Some(known);
    }
    if interned.len() >= MAX_INTERNED {
        return None;
    }
    let kept: &'static CommandInfo = Box::leak(Box::new(info));
    interned.push(kept);
    Some(kept)
}

fn parse_entry(entry: &Value, depth: u32) -> Result<CommandInfo> {
    if matches!(plain(entry), Value::Nil) {
        return Err(protocol("nil (unknown command)"));
    }
    let items = as_list(entry, "not an array")?;
    if items.len() < 6 {
        return Err(protocol("fewer than 6 fields"));
    }
    let name = as_text(&items[0], "name")?.to_ascii_lowercase();
    let arity = as_int(&items[1], "arity")?;
    let mut flags = 0;
    for f in as_list(&items[2], "flags")? {
        let f = as_text(f, "flag")?;
        if let Some(&(_, bit)) = flag::NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(f)) {
            flags |= bit;
        }
    }
    let first_key = as_int(&items[3], "first key")?;
    let last_key = as_int(&items[4], "last key")?;
    let step = as_int(&items[5], "step")?;
    let (mut request_policy, mut response_policy, mut tips) = (None, None, 0);
    if let Some(v) = items.get(7) {
        for t in as_list(v, "tips")? {
            let t = as_text(t, "tip")?;
            if let Some(p) = t.strip_prefix("request_policy:") {
                request_policy = Some(match p {
                    "all_nodes" => RequestPolicy::AllNodes,
                    "all_shards" => RequestPolicy::AllShards,
                    "multi_shard" => RequestPolicy::MultiShard,
                    _ => RequestPolicy::Special,
                });
            } else if let Some(p) = t.strip_prefix("response_policy:") {
                response_policy = Some(match p {
                    "one_succeeded" => ResponsePolicy::OneSucceeded,
                    "all_succeeded" => ResponsePolicy::AllSucceeded,
                    "agg_logical_and" => ResponsePolicy::AggLogicalAnd,
                    "agg_logical_or" => ResponsePolicy::AggLogicalOr,
                    "agg_min" => ResponsePolicy::AggMin,
                    "agg_max" => ResponsePolicy::AggMax,
                    "agg_sum" => ResponsePolicy::AggSum,
                    _ => ResponsePolicy::Special,
                });
            } else if t == "nondeterministic_output" {
                tips |= tip::NONDETERMINISTIC_OUTPUT;
            } else if t == "nondeterministic_output_order" {
                tips |= tip::NONDETERMINISTIC_OUTPUT_ORDER;
            }
        }
    }
    let key_specs = match items.get(8) {
        Some(v) => as_list(v, "key specs")?
            .iter()
            .map(parse_key_spec)
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let mut subcommands = match items.get(9) {
        // Redis nests one level; refuse deeper nesting rather than recurse on it.
        Some(v) if depth == 0 => as_list(v, "subcommands")?
            .iter()
            .map(|s| parse_entry(s, depth + 1))
            .collect::<Result<Vec<_>>>()?,
        Some(v) if !as_list(v, "subcommands")?.is_empty() => {
            return Err(protocol("subcommands nested too deep"))
        }
        _ => Vec::new(),
    };
    subcommands.sort_by(|a, b| sub_name(&a.name).cmp(sub_name(&b.name)));
    Ok(CommandInfo {
        name: Cow::Owned(name),
        arity,
        flags,
        first_key,
        last_key,
        step,
        request_policy,
        response_policy,
        tips,
        key_specs: Cow::Owned(key_specs),
        subcommands: Cow::Owned(subcommands),
    })
}

fn parse_key_spec(v: &Value) -> Result<KeySpec> {
    let spec = as_map(v, "key spec")?;
    let mut flags = 0;
    if let Ok(list) = field(&spec, "flags", "") {
        for f in as_list(list, "key spec flags")? {
            let f = as_text(f, "key spec flag")?;
            if let Some(&(_, bit)) = key_flag::NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(f))
            {
                flags |= bit;
            }
        }
    }
    let bs = as_map(
        field(&spec, "begin_search", "begin_search")?,
        "begin_search",
    )?;
    let bs_type = as_text(
        field(&bs, "type", "begin_search type")?,
        "begin_search type",
    )?;
    let begin_search = match bs_type {
        "index" => {
            let s = as_map(
                field(&bs, "spec", "begin_search spec")?,
                "begin_search spec",
            )?;
            BeginSearch::Index(int_field(&s, "index")?)
        }
        "keyword" => {
            let s = as_map(
                field(&bs, "spec", "begin_search spec")?,
                "begin_search spec",
            )?;
            BeginSearch::Keyword {
                keyword: Cow::Owned(
                    as_text(field(&s, "keyword", "keyword")?, "keyword")?.to_owned(),
                ),
                startfrom: int_field(&s, "startfrom")?,
            }
        }
        _ => BeginSearch::Unknown,
    };
    let fk = as_map(field(&spec, "find_keys", "find_keys")?, "find_keys")?;
    let fk_type = as_text(field(&fk, "type", "find_keys type")?, "find_keys type")?;
    let find_keys = match fk_type {
        "range" => {
            let s = as_map(field(&fk, "spec", "find_keys spec")?, "find_keys spec")?;
            FindKeys::Range {
                lastkey: int_field(&s, "lastkey")?,
                keystep: int_field(&s, "keystep")?,
                limit: int_field(&s, "limit")?,
            }
        }
        "keynum" => {
            let s = as_map(field(&fk, "spec", "find_keys spec")?, "find_keys spec")?;
            FindKeys::Keynum {
                keynumidx: int_field(&s, "keynumidx")?,
                firstkey: int_field(&s, "firstkey")?,
                keystep: int_field(&s, "keystep")?,
            }
        }
        _ => FindKeys::Unknown,
    };
    Ok(KeySpec {
        flags,
        begin_search,
        find_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::cmd;
    use bytes::Bytes;

    /// A command from words: `c("SET k v")`; `''` is an empty argument.
    fn c(line: &str) -> Cmd {
        Cmd::new().args(line.split(' ').map(|w| if w == "''" { "" } else { w }))
    }

    fn keys(line: &str) -> Result<Vec<usize>> {
        let c = c(line);
        let info = lookup(&c).unwrap_or_else(|| panic!("{line}: not in the table"));
        let mut out = SmallVec::new();
        key_indices(&c, info, &mut out)?;
        Ok(out.to_vec())
    }

    #[test]
    fn keys_are_known_unless_a_spec_or_the_flags_leave_them_to_the_server() {
        for line in [
            "GET k",
            "EVAL s 0",
            "XREAD STREAMS a 0",
            "SORT k",
            "SORT_RO k",
            "MIGRATE h 1 k 0 5",
            "PING",
            "XINFO STREAM s",
        ] {
            assert!(keys_known(lookup(&c(line)).unwrap()), "{line}");
        }
        // A subcommand the table lacks resolves to its container, which says nothing.
        assert!(!keys_known(lookup(&c("OBJECT NEWSUB k")).unwrap()));
        let module = |specs: Vec<KeySpec>, flags: u32| CommandInfo {
            name: Cow::Borrowed("mod.get"),
            key_specs: Cow::Owned(specs),
            flags,
            ..lookup_name(b"get").unwrap().clone()
        };
        let range = FindKeys::Range {
            lastkey: 0,
            keystep: 1,
            limit: 0,
        };
        assert!(keys_known(&module(
            vec![ks(key_flag::RO, BeginSearch::Index(1), range)],
            0
        )));
        assert!(!keys_known(&module(
            vec![ks(key_flag::RO, BeginSearch::Unknown, range)],
            0
        )));
        assert!(!keys_known(&module(
            vec![ks(key_flag::RO, BeginSearch::Index(1), FindKeys::Unknown)],
            0
        )));
        // The legacy triple says where the keys are, unless they move.
        assert!(keys_known(&module(vec![], 0)));
        assert!(!keys_known(&module(vec![], flag::MOVABLEKEYS)));
        // A spec the server calls incomplete; a module command finding its own keys
        // (`getkeys-api`: movable keys, its generated spec flagged variable).
        let incomplete = key_flag::RO | key_flag::INCOMPLETE;
        assert!(!keys_known(&module(
            vec![ks(incomplete, BeginSearch::Index(1), range)],
            0
        )));
        let variable = key_flag::RW | key_flag::VARIABLE_FLAGS;
        assert!(!keys_known(&module(
            vec![ks(variable, BeginSearch::Index(1), range)],
            flag::MOVABLEKEYS
        )));
        // `SET` and `BITFIELD` have variable flags and keys where the spec says.
        assert!(keys_known(&module(
            vec![ks(variable, BeginSearch::Index(1), range)],
            0
        )));
        for line in ["SET k v", "BITFIELD k GET u8 0"] {
            assert!(keys_known(lookup(&c(line)).unwrap()), "{line}");
        }
    }

    fn routing(line: &str) -> Vec<usize> {
        let c = c(line);
        let mut out = SmallVec::new();
        routing_key_indices(&c, lookup(&c).unwrap(), &mut out).unwrap();
        out.to_vec()
    }

    #[track_caller]
    fn assert_keys(line: &str, expected: &[usize]) {
        assert_eq!(keys(line).unwrap(), expected, "{line}");
    }

    #[track_caller]
    fn assert_invalid(line: &str) {
        match keys(line) {
            Err(Error::Config(msg)) => assert!(msg.contains("arguments"), "{line}: {msg}"),
            other => panic!("{line}: expected a Config error, got {other:?}"),
        }
    }

    fn all_entries() -> impl Iterator<Item = &'static CommandInfo> {
        table::COMMANDS
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
    }

    #[test]
    fn routing_by_the_first_argument_agrees_with_the_key_finder() {
        let mut fast = 0;
        for info in all_entries() {
            let name: Vec<&str> = info.name.split('|').collect();
            for extra in 0..6 {
                let args = (0..extra).map(|i| format!("a{i}"));
                let command = Cmd::new().args(&name).args(args);
                if !routes_by_first_argument(&command, info) {
                    continue;
                }
                fast += 1;
                let mut keys = SmallVec::new();
                routing_key_indices(&command, info, &mut keys).unwrap();
                assert_eq!(&keys[..], &[1], "{} with {extra} arguments", info.name);
            }
        }
        assert!(fast > 100, "{fast} commands routed by their first argument");
        // Too few arguments are left to the key finder, which reports them; more than a
        // fixed arity (a later version's option) route by the first one all the same.
        let get = lookup_name(b"get").unwrap();
        assert!(!routes_by_first_argument(&cmd("GET"), get));
        assert!(routes_by_first_argument(&cmd("GET").arg("a").arg("b"), get));
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(table_version().starts_with("7."), "{}", table_version());
        assert!(table::COMMANDS.len() >= 200);
        for w in table::COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for top in table::COMMANDS {
            assert!(!top.name.contains('|'), "{}", top.name);
            for w in top.subcommands.windows(2) {
                assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
            }
            for sub in top.subcommands.iter() {
                assert_eq!(sub.name.split_once('|').map(|p| p.0), Some(&*top.name));
                assert!(sub.subcommands.is_empty());
            }
        }
        for list in [HARMLESS, IDEMPOTENT_WRITES] {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "{list:?} is not sorted"
            );
            // One map holds both lists: a name in both would lose one meaning.
            assert!(
                !list
                    .iter()
                    .any(|n| HARMLESS.contains(n) && IDEMPOTENT_WRITES.contains(n)),
                "{list:?}"
            );
            for name in list {
                let (top, sub) = name
                    .split_once('|')
                    .map_or((*name, None), |(t, s)| (t, Some(s)));
                let info = lookup_name(top.as_bytes()).unwrap_or_else(|| panic!("{name}"));
                if let Some(sub) = sub {
                    assert!(info.subcommand(sub.as_bytes()).is_some(), "{name}");
                }
            }
        }
    }

    #[test]
    fn lookup_ignores_case_and_resolves_subcommands() {
        for name in ["GET", "get", "GeT"] {
            assert_eq!(lookup(&cmd(name).arg("k")).unwrap().name(), "get");
        }
        assert_eq!(
            lookup(&c("CONFIG GET maxmemory")).unwrap().name(),
            "config|get"
        );
        assert_eq!(
            lookup(&c("object Encoding k")).unwrap().name(),
            "object|encoding"
        );
        assert_eq!(lookup(&c("CLUSTER INFO")).unwrap().name(), "cluster|info");
        assert_eq!(lookup(&c("XINFO STREAM s")).unwrap().name(), "xinfo|stream");
        // A container alone, or with a subcommand it does not have, is the container.
        assert_eq!(lookup(&c("CONFIG")).unwrap().name(), "config");
        assert_eq!(lookup(&c("CONFIG NOPE")).unwrap().name(), "config");
        // Not a container: the second argument is just an argument.
        assert_eq!(lookup(&c("GET encoding")).unwrap().name(), "get");
        // Longer than any name: not found, whatever its case.
        assert!(lookup_name(&[b'G'; 40]).is_none());
        assert!(lookup_name(b"").is_none());
        assert_eq!(lookup_name(b"CLUSTER").unwrap().name(), "cluster");
        assert!(lookup(&c("JSON.GET k")).is_none());
        assert!(lookup(&Cmd::new()).is_none());
        assert!(lookup(&c("GETT k")).is_none());
        // The commands compared as a word: any case; a word's padding is no name.
        for name in HOT_COMMANDS {
            let upper = name.to_ascii_uppercase();
            assert_eq!(lookup_name(upper.as_bytes()).unwrap().name(), *name);
        }
        assert!(lookup_name(b"get\0").is_none());
        assert!(lookup_name(b"ge").is_none());
        assert_eq!(lookup_name(b"ZADD").unwrap().name(), "zadd");
        assert_eq!(lookup_name(b"PEXPIREAT").unwrap().name(), "pexpireat");
        // Every entry is found by its own name.
        for info in all_entries() {
            let words: Vec<&str> = info.name.split('|').collect();
            let found = lookup(&Cmd::new().args(&words)).unwrap();
            assert!(std::ptr::eq(found, info), "{}", info.name);
        }
    }

    #[test]
    fn single_and_multi_key_commands() {
        assert_keys("GET k", &[1]);
        assert_keys("SET k v EX 10 GET", &[1]);
        assert_keys("MGET a b c", &[1, 2, 3]);
        assert_keys("MSET a 1 b 2 c 3", &[1, 3, 5]);
        assert_keys("MSETNX a 1 b 2", &[1, 3]);
        assert_keys("DEL a b", &[1, 2]);
        assert_keys("UNLINK a", &[1]);
        assert_keys("RENAME a b", &[1, 2]);
        assert_keys("LCS a b LEN", &[1, 2]);
        assert_keys("BITOP AND d a b", &[2, 3, 4]);
        assert_keys("BITOP NOT d a", &[2, 3]);
        assert_keys("SMOVE src dst m", &[1, 2]);
        assert_keys("GEOSEARCHSTORE d s FROMMEMBER m BYRADIUS 1 km", &[1, 2]);
    }

    #[test]
    fn numkeys_commands() {
        assert_keys("EVAL s 2 k1 k2 a1", &[3, 4]);
        assert_keys("EVALSHA sha 1 k a", &[3]);
        assert_keys("EVAL_RO s 1 k", &[3]);
        assert_keys("FCALL f 0 a b", &[]);
        assert_keys("FCALL_RO f 2 a b", &[3, 4]);
        assert_keys("EVAL s 0", &[]);
        assert_keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2", &[1, 3, 4]);
        assert_keys("ZINTERSTORE d 1 a", &[1, 3]);
        assert_keys("ZINTER 2 a b WITHSCORES", &[2, 3]);
        assert_keys("ZDIFF 3 a b c", &[2, 3, 4]);
        assert_keys("SINTERCARD 2 a b LIMIT 5", &[2, 3]);
        assert_keys("ZINTERCARD 1 a", &[2]);
        assert_keys("LMPOP 2 a b LEFT COUNT 2", &[2, 3]);
        assert_keys("ZMPOP 1 z MIN", &[2]);
        assert_keys("BLMPOP 0 2 a b LEFT", &[3, 4]);
        assert_keys("BZMPOP 1.5 1 z MAX COUNT 3", &[3]);
    }

    #[test]
    fn keyword_commands() {
        // Keys are the first half of what follows STREAMS.
        assert_keys("XREAD STREAMS s 0", &[2]);
        assert_keys("XREAD COUNT 2 BLOCK 0 STREAMS s1 s2 0 0", &[6, 7]);
        assert_keys("xread block 0 streams s1 s2 s3 0 0 0", &[4, 5, 6]);
        assert_keys(
            "XREADGROUP GROUP g c COUNT 1 BLOCK 5 NOACK STREAMS s1 s2 > >",
            &[10, 11],
        );
        // A consumer named like the keyword: the search starts after GROUP g c.
        assert_keys("XREADGROUP GROUP g streams STREAMS s >", &[5]);
        assert_keys("GEORADIUS k 0 0 10 km", &[1]);
        assert_keys("GEORADIUS k 0 0 10 km STORE d", &[1, 7]);
        assert_keys("GEORADIUS k 0 0 10 km STORE d STOREDIST e", &[1, 7, 9]);
        assert_keys("GEORADIUSBYMEMBER k m 10 km STOREDIST d", &[1, 6]);
        // STORE as the last argument has no key after it.
        assert_keys("GEORADIUS k 0 0 10 km STORE", &[1]);
    }

    #[test]
    fn sort_and_migrate_follow_the_server_getkeys() {
        assert_keys("SORT k", &[1]);
        assert_keys("SORT k BY w_* LIMIT 0 10 GET o_* STORE dst", &[1, 10]);
        assert_keys("SORT k GET store STORE d", &[1, 5]);
        // The last STORE wins, as in the server.
        assert_keys("SORT k STORE a STORE b", &[1, 5]);
        assert_keys("SORT k LIMIT 0 store", &[1]);
        assert_keys("SORT_RO k BY w_* GET o_*", &[1]);
        assert_keys("MIGRATE h 6379 k 0 5000", &[3]);
        assert_keys("MIGRATE h 6379 k 0 5000 COPY REPLACE", &[3]);
        assert_keys("MIGRATE h 6379 '' 0 5000 KEYS a b c", &[7, 8, 9]);
        // `keys` as the AUTH2 password is skipped, not taken for the keyword.
        assert_keys(
            "MIGRATE h 6379 '' 0 5000 COPY REPLACE AUTH2 u keys KEYS a b",
            &[12, 13],
        );
        assert_keys("MIGRATE h 6379 k 0 5000 AUTH keys", &[3]);
        assert_keys("MIGRATE h 6379 '' 0 5000 AUTH KEYS KEYS a", &[9]);
        // KEYS as the last argument: the backward search starts before it.
        assert_keys("MIGRATE h 6379 k 0 5000 KEYS", &[3]);
        assert_invalid("MIGRATE h 6379 k 0 5000 KEYS a b");
    }

    #[test]
    fn subcommands_and_keyless_commands() {
        assert_keys("OBJECT ENCODING k", &[2]);
        assert_keys("object freq k", &[2]);
        assert_keys("MEMORY USAGE k SAMPLES 5", &[2]);
        assert_keys("XINFO STREAM s FULL", &[2]);
        assert_keys("XGROUP CREATE s g $ MKSTREAM", &[2]);
        assert_keys("CLUSTER INFO", &[]);
        assert_keys("CLUSTER COUNTKEYSINSLOT 5", &[]);
        assert_keys("CONFIG GET maxmemory", &[]);
        assert_keys("PING", &[]);
        assert_keys("PUBLISH ch m", &[]);
        assert_eq!(routing("PUBLISH ch m"), [] as [usize; 0]);
        assert_keys("SUBSCRIBE a b", &[]);
    }

    #[test]
    fn shard_channels_are_routing_keys_but_not_keys() {
        assert_keys("SPUBLISH ch m", &[]);
        assert_eq!(routing("SPUBLISH ch m"), [1]);
        assert_eq!(routing("SSUBSCRIBE a b c"), [1, 2, 3]);
        assert_eq!(routing("SUNSUBSCRIBE a"), [1]);
        // Routing keys are a superset of keys.
        assert_eq!(routing("MSET a 1 b 2"), [1, 3]);
        let info = lookup(&c("SPUBLISH ch m")).unwrap();
        assert!(!info.has_keys());
        assert!(lookup(&c("GET k")).unwrap().has_keys());
    }

    #[test]
    fn malformed_commands_are_errors_not_panics() {
        assert_invalid("GET");
        assert_invalid("MSET a");
        assert_invalid("OBJECT ENCODING");
        assert_invalid("EVAL s x k");
        assert_invalid("EVAL s -1 k");
        assert_invalid("EVAL s 3 a b");
        assert_invalid("EVAL s 99999999999999999999999 a");
        assert_invalid("EVAL s 9223372036854775807 a");
        assert_invalid("ZUNIONSTORE d 3 a b");
        assert_invalid("LMPOP 5 a LEFT");
        assert_invalid("BLMPOP 0 -2 a LEFT");
        assert_invalid("XREAD COUNT 1 STREAMS s");
        // An absent optional keyword is no error: that spec has no keys.
        assert_keys("XREAD COUNT 1 BLOCK 0", &[]);
        // Odd STREAMS lists take the first half rounded down, as the server does (and
        // then reports the imbalance itself).
        assert_keys("XREAD STREAMS a b c", &[2]);
    }

    /// Every command of the table, with short argument lists drawn from words that
    /// steer the key specs (keywords, counts, negative and huge numbers): no panic, and
    /// every index is inside the command.
    #[test]
    fn no_argument_list_panics_or_points_outside() {
        const WORDS: &[&str] = &[
            "k",
            "",
            "0",
            "1",
            "2",
            "3",
            "-1",
            "-3",
            "99999999999",
            "STREAMS",
            "KEYS",
            "STORE",
            "STOREDIST",
            "BLOCK",
            "GET",
            "LIMIT",
            "BY",
            "AUTH",
            "AUTH2",
            "GROUP",
            "COUNT",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut out = SmallVec::new();
        let mut checked = 0;
        for info in all_entries() {
            let prefix: Vec<&str> = info.name.split('|').collect();
            for extra in 0..8 {
                for _ in 0..25 {
                    let mut c = Cmd::new().args(&prefix);
                    for _ in 0..extra {
                        c.push_arg(WORDS[(next() % WORDS.len() as u64) as usize]);
                    }
                    for routing in [false, true] {
                        let r = if routing {
                            routing_key_indices(&c, info, &mut out)
                        } else {
                            key_indices(&c, info, &mut out)
                        };
                        match r {
                            Ok(()) => {
                                assert!(
                                    out.iter().all(|&i| i >= 1 && i < c.len()),
                                    "{}: {:?} of {}",
                                    info.name,
                                    out,
                                    c.len()
                                );
                                checked += 1;
                            }
                            Err(e) => assert!(matches!(e, Error::Config(_)), "{e:?}"),
                        }
                    }
                    let _ = blocks(&c, info);
                    let _ = is_idempotent(&c);
                    let _ = c.keys();
                }
            }
        }
        assert!(checked > 1000, "only {checked} argument lists were valid");
    }

    #[test]
    fn flags_and_tips() {
        let get = lookup(&c("GET k")).unwrap();
        assert!(get.is_read_only() && !get.is_write() && !get.is_blocking());
        assert_eq!(get.request_policy(), None);
        assert_eq!(get.response_policy(), None);
        assert!(get.has_flags(flag::FAST));
        let set = lookup(&c("SET k v")).unwrap();
        assert!(set.is_write() && !set.is_read_only());
        assert!(set.key_specs()[0].flags & key_flag::VARIABLE_FLAGS != 0);
        assert!(lookup(&c("BLPOP a 0")).unwrap().is_blocking());
        let mget = lookup(&c("MGET a")).unwrap();
        assert_eq!(mget.request_policy(), Some(RequestPolicy::MultiShard));
        let mset = lookup(&c("MSET a 1")).unwrap();
        assert_eq!(mset.response_policy(), Some(ResponsePolicy::AllSucceeded));
        let dbsize = lookup(&c("DBSIZE")).unwrap();
        assert_eq!(dbsize.request_policy(), Some(RequestPolicy::AllShards));
        assert_eq!(dbsize.response_policy(), Some(ResponsePolicy::AggSum));
        let config_set = lookup(&c("CONFIG SET a b")).unwrap();
        assert_eq!(config_set.request_policy(), Some(RequestPolicy::AllNodes));
        let exists = lookup(&c("SCRIPT EXISTS x")).unwrap();
        assert_eq!(
            exists.response_policy(),
            Some(ResponsePolicy::AggLogicalAnd)
        );
        assert_eq!(
            lookup(&c("SCAN 0")).unwrap().request_policy(),
            Some(RequestPolicy::Special)
        );
        assert_eq!(
            lookup(&c("WAIT 1 0")).unwrap().response_policy(),
            Some(ResponsePolicy::AggMin)
        );
        assert!(lookup(&c("OBJECT ENCODING k"))
            .unwrap()
            .has_tips(tip::NONDETERMINISTIC_OUTPUT));
        assert!(lookup(&c("HGETALL h"))
            .unwrap()
            .has_tips(tip::NONDETERMINISTIC_OUTPUT_ORDER));
        let eval = lookup(&c("EVAL s 0")).unwrap();
        assert!(eval.has_flags(flag::NO_MANDATORY_KEYS | flag::MOVABLEKEYS));
        assert!(!eval.is_write() && !eval.is_read_only());
        assert!(lookup(&c("MULTI"))
            .unwrap()
            .has_flags(flag::ALLOW_BUSY | flag::FAST));
        assert!(lookup(&c("SAVE")).unwrap().has_flags(flag::NO_MULTI));
        assert_eq!(get.arity(), 2);
        assert!(get.flags() & flag::READONLY != 0);
        assert_eq!(lookup(&c("CONFIG GET x")).unwrap().arity(), -3);
        assert!(lookup(&c("CONFIG")).unwrap().subcommands().len() >= 5);
    }

    #[test]
    fn durable_writes_are_the_writes_and_the_commands_whose_keys_say_they_may_change() {
        let mut unflagged: Vec<&str> = super::super::table::COMMANDS
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
            .filter(|c| c.is_durable_write() && !c.is_write())
            .map(|c| &*c.name)
            .collect();
        unflagged.sort_unstable();
        assert_eq!(unflagged, ["eval", "evalsha", "fcall"]);
        for read in [
            "EVAL_RO s 1 k",
            "EVALSHA_RO s 1 k",
            "FCALL_RO f 1 k",
            "PFCOUNT k",
            "GET k",
        ] {
            assert!(!lookup(&c(read)).unwrap().is_durable_write(), "{read}");
        }
        assert!(lookup(&c("INCR k")).unwrap().is_durable_write());
    }

    #[test]
    fn blocking_per_call() {
        let b = |line: &str| {
            let c = c(line);
            blocks(&c, lookup(&c).unwrap())
        };
        assert!(!b("XREAD COUNT 1 STREAMS a 0"));
        assert!(b("XREAD BLOCK 0 STREAMS a 0"));
        assert!(b("xread count 5 block 100 streams a 0"));
        assert!(!b("XREADGROUP GROUP block c STREAMS a >"));
        assert!(!b("XREADGROUP GROUP g block STREAMS a >"));
        assert!(b("XREADGROUP GROUP g c COUNT 1 BLOCK 10 STREAMS a >"));
        // BLOCK after STREAMS is a key, not the option.
        assert!(!b("XREAD STREAMS block 0"));
        assert!(b("BLPOP a 0"));
        assert!(b("BZMPOP 1 1 z MIN"));
        assert!(b("WAIT 1 100"));
        assert!(!b("GET k"));
        assert!(!b("LPOP k"));
    }

    #[test]
    fn idempotence() {
        let yes = [
            "SET k v",
            "SET k v EX 10 XX",
            "set k v keepttl xx",
            "SET k v PXAT 2000000000000",
            // A value that spells an option is the value.
            "SET k nx EX 10",
            "EXPIRE k 10 GT",
            "SETEX k 10 v",
            "PSETEX k 10 v",
            "MSET a 1 b 2",
            "HMSET h f v",
            "LSET l 0 v",
            "SETRANGE k 0 v",
            "GETEX k EX 10",
            "GETEX k EXAT 99999999999",
            "PEXPIREAT k 99999999999999",
            "EXPIRE k 10",
            "GET k",
            "MGET a b",
            "EVAL_RO s 0",
            "XREAD STREAMS s 0",
            "PING",
            "CLUSTER INFO",
            "CLUSTER SLOTS",
            "CONFIG GET x",
            "CONFIG SET x y",
            "FLUSHALL",
        ];
        for line in yes {
            assert!(is_idempotent(&c(line)), "{line} should be idempotent");
        }
        let no = [
            "SET k v GET",
            "set k v get",
            "SET lock token NX PX 30000",
            "set k v px 10 nx",
            // Compare-and-set (Valkey 8.1, Redis 8.4), and options not known here.
            "SET k new IFEQ old",
            "SET k new EX 10 IFEQ old",
            "SET k v SOMETHINGNEW",
            "SETNX k v",
            "MSETNX a 1 b 2",
            "HSETNX h f v",
            "EXPIRE k 10 NX",
            "PEXPIRE k 10 lt",
            "EXPIREAT k 2000000000 GT",
            "PEXPIREAT k 2000000000000 gt",
            "PERSIST k",
            // A time come: the key is deleted, and the repeat answers 0 (nil).
            "EXPIRE k 0",
            "PEXPIRE k -5",
            "EXPIREAT k 10",
            "PEXPIREAT k 10",
            "GETEX k PXAT 10",
            "EXPIRE k soon",
            // Counts of what they changed: a repeat counts 0.
            "DEL a b",
            "UNLINK a",
            "HSET h f v",
            "HDEL h f",
            "SADD s m",
            "SREM s m",
            "ZADD z 1 m",
            "ZADD z NX CH 1 incr",
            "ZADD z INCR 1 m",
            "ZREM z m",
            "ZREMRANGEBYSCORE z 0 1",
            "PFADD h a",
            "XACK s g 1-1",
            "XDEL s 1-1",
            "INCR k",
            "INCRBY k 2",
            "APPEND k v",
            "LPUSH l v",
            "RPUSH l v",
            "LPOP l",
            "GETDEL k",
            "GETSET k v",
            "SETBIT k 1 1",
            "EVAL s 0",
            "FCALL f 0",
            "PUBLISH ch m",
            "XADD s * f v",
            "XREADGROUP GROUP g c STREAMS s >",
            "RENAME a b",
            "SUNIONSTORE d a b",
            "LTRIM l 1 -1",
            "JSON.SET k . 1",
            "CLIENT KILL ID 1",
        ];
        for line in no {
            assert!(!is_idempotent(&c(line)), "{line} should not be idempotent");
        }
    }

    #[test]
    fn cmd_keys_names_the_key_arguments() {
        let z = c("ZUNIONSTORE dst 2 a b WEIGHTS 1 2");
        assert_eq!(z.keys().unwrap(), Some(vec![&b"dst"[..], b"a", b"b"]));
        assert_eq!(c("CLUSTER INFO").keys().unwrap(), Some(vec![]));
        // Optional keys to the end, none given.
        assert_eq!(c("PFMERGE d").keys().unwrap(), Some(vec![&b"d"[..]]));
        assert_eq!(
            c("PFMERGE d a b").keys().unwrap(),
            Some(vec![&b"d"[..], b"a", b"b"])
        );
        assert_eq!(c("JSON.GET k").keys().unwrap(), None);
        assert!(c("GET").keys().is_err());
    }

    // --- COMMAND INFO parsing ---

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }
    fn simple(s: &str) -> Value {
        Value::Simple(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// `XREAD`'s entry as Redis 7.0 sends it, in RESP2 (flat arrays) or RESP3 (maps,
    /// sets).
    fn xread_entry(resp3: bool) -> Value {
        let map = |pairs: Vec<(&str, Value)>| {
            if resp3 {
                Value::Map(pairs.into_iter().map(|(k, v)| (bulk(k), v)).collect())
            } else {
                Value::Array(pairs.into_iter().flat_map(|(k, v)| [bulk(k), v]).collect())
            }
        };
        let set = |items: Vec<Value>| {
            if resp3 {
                Value::Set(items)
            } else {
                Value::Array(items)
            }
        };
        let spec = map(vec![
            ("flags", set(vec![simple("RO"), simple("access")])),
            (
                "begin_search",
                map(vec![
                    ("type", bulk("keyword")),
                    (
                        "spec",
                        map(vec![
                            ("keyword", bulk("STREAMS")),
                            ("startfrom", Value::Int(1)),
                        ]),
                    ),
                ]),
            ),
            (
                "find_keys",
                map(vec![
                    ("type", bulk("range")),
                    (
                        "spec",
                        map(vec![
                            ("lastkey", Value::Int(-1)),
                            ("keystep", Value::Int(1)),
                            ("limit", Value::Int(2)),
                        ]),
                    ),
                ]),
            ),
        ]);
        Value::Array(vec![
            bulk("xread"),
            Value::Int(-4),
            set(vec![
                simple("readonly"),
                simple("blocking"),
                simple("movablekeys"),
            ]),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
            set(vec![simple("@read"), simple("@stream")]),
            Value::Array(vec![]),
            Value::Array(vec![spec]),
            Value::Array(vec![]),
        ])
    }

    #[test]
    fn parses_resp2_and_resp3_entries_into_the_table_type() {
        let static_entry = lookup_name(b"xread").unwrap();
        for resp3 in [false, true] {
            let parsed = parse_command_info(&xread_entry(resp3)).unwrap();
            assert_eq!(&parsed, static_entry, "resp3: {resp3}");
            assert!(matches!(parsed.name, Cow::Owned(_)));
            let mut out = SmallVec::new();
            key_indices(&c("XREAD COUNT 1 STREAMS a b 0 0"), &parsed, &mut out).unwrap();
            assert_eq!(&out[..], [4, 5]);
        }
        // Behind a RESP3 attribute, still the same.
        let wrapped = Value::Attribute {
            attributes: vec![],
            data: Box::new(xread_entry(true)),
        };
        assert_eq!(&parse_command_info(&wrapped).unwrap(), static_entry);
    }

    #[test]
    fn parses_module_commands_and_their_subcommands() {
        // A module container with one subcommand taking a key, tips and an unknown flag.
        let sub = Value::Array(vec![
            bulk("MOD.CACHE|GET"),
            Value::Int(3),
            Value::Array(vec![simple("readonly"), simple("some_future_flag")]),
            Value::Int(2),
            Value::Int(2),
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![
                bulk("request_policy:some_future_policy"),
                bulk("nondeterministic_output"),
            ]),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        let top = Value::Array(vec![
            bulk("mod.cache"),
            Value::Int(-2),
            Value::Array(vec![]),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
            Value::Array(vec![]),
            Value::Array(vec![]),
            Value::Array(vec![]),
            Value::Array(vec![sub]),
        ]);
        let info = parse_command_info(&top).unwrap();
        assert_eq!(info.name(), "mod.cache");
        let get = info.subcommand(b"get").unwrap();
        assert_eq!(get.name(), "mod.cache|get");
        assert!(get.is_read_only());
        assert_eq!(get.request_policy(), Some(RequestPolicy::Special));
        assert!(get.has_tips(tip::NONDETERMINISTIC_OUTPUT));
        // No key specs: the legacy first/last/step triple finds the key.
        let mut out = SmallVec::new();
        key_indices(&c("MOD.CACHE GET k"), get, &mut out).unwrap();
        assert_eq!(&out[..], [2]);
        assert!(key_indices(&c("MOD.CACHE GET"), get, &mut out).is_err());
        // The shorter layout of older servers (no tips, specs, subcommands).
        let old = Value::Array(vec![
            bulk("get"),
            Value::Int(2),
            Value::Array(vec![simple("readonly")]),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
        ]);
        let old = parse_command_info(&old).unwrap();
        key_indices(&c("GET k"), &old, &mut out).unwrap();
        assert_eq!(&out[..], [1]);
    }

    #[test]
    fn rejects_what_is_not_an_entry() {
        for bad in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![bulk("get"), Value::Int(2)]),
            Value::Array(vec![
                Value::Int(7),
                Value::Int(2),
                Value::Array(vec![]),
                Value::Int(1),
                Value::Int(1),
                Value::Int(1),
            ]),
            Value::Array(vec![
                bulk("get"),
                Value::Int(2),
                Value::Array(vec![]),
                Value::Int(1),
                Value::Int(1),
                Value::Int(1),
                Value::Array(vec![]),
                Value::Array(vec![]),
                // A key spec without begin_search.
                Value::Array(vec![Value::Array(vec![
                    bulk("flags"),
                    Value::Array(vec![]),
                ])]),
            ]),
        ] {
            assert!(
                matches!(parse_command_info(&bad), Err(Error::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    /// Every entry a real server reports, parsed at run time in RESP2 and in RESP3, is
    /// equal to the static table's entry: the parser reads what the generator read, and
    /// the table is this server's.
    #[tokio::test]
    async fn runtime_parse_of_a_real_server_equals_the_table() {
        let server = live::Server::start();
        for protocol in [crate::Protocol::Resp2, crate::Protocol::Resp3] {
            let options = crate::ConnectOptions::default().protocol(protocol);
            let conn = crate::NodeConnection::connect(&server.addr, &options)
                .await
                .unwrap();
            let reply = conn.send(cmd("COMMAND")).await.unwrap();
            let Value::Array(entries) = reply else {
                panic!("COMMAND: {reply:?}")
            };
            assert_eq!(entries.len(), table::COMMANDS.len());
            for entry in &entries {
                let parsed = parse_command_info(entry).unwrap();
                let stored = lookup_name(parsed.name.as_bytes())
                    .unwrap_or_else(|| panic!("{} is not in the table", parsed.name));
                assert_eq!(&parsed, stored, "{protocol:?}");
            }
            // `COMMAND INFO` of a subcommand, the way the cluster layer would ask.
            let reply = conn
                .send(cmd("COMMAND").arg("INFO").arg("object|encoding"))
                .await
                .unwrap();
            let Value::Array(entries) = reply else {
                panic!("{reply:?}")
            };
            let parsed = parse_command_info(&entries[0]).unwrap();
            assert_eq!(&parsed, lookup(&c("OBJECT ENCODING k")).unwrap());
            // Kept once, whoever learns it again (every client of a process).
            let kept = intern(parsed.clone()).unwrap();
            let again = parse_command_info(&entries[0]).unwrap();
            assert!(std::ptr::eq(kept, intern(again).unwrap()));
            let reply = conn
                .send(cmd("COMMAND").arg("INFO").arg("no-such-command"))
                .await
                .unwrap();
            let Value::Array(entries) = reply else {
                panic!("{reply:?}")
            };
            assert!(parse_command_info(&entries[0]).is_err());
        }
    }

    /// A throwaway `redis-server` for the one test above (integration tests have their
    /// own in `tests/support/standalone.rs`; unit tests cannot reach it).
    mod live {
        use std::net::{TcpListener, TcpStream};
        use std::path::PathBuf;
        use std::process::{Child, Command, Stdio};
        use std::time::{Duration, Instant};

        pub(super) struct Server {
            pub(super) addr: String,
            child: Child,
            dir: PathBuf,
        }

        impl Server {
            pub(super) fn start() -> Server {
                let binary =
                    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
                for attempt in 0..5 {
                    let port = TcpListener::bind("127.0.0.1:0")
                        .and_then(|l| l.local_addr())
                        .expect("free port")
                        .port();
                    let dir = std::env::temp_dir().join(format!(
                        "redcluster-info-test-{}-{port}-{attempt}",
                        std::process::id()
                    ));
                    std::fs::create_dir_all(&dir).expect("temp dir");
                    let child = Command::new(&binary)
                        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                        .args(["--save", "", "--appendonly", "no"])
                        .arg("--dir")
                        .arg(&dir)
                        .current_dir(&dir)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
                    let mut server = Server {
                        addr: format!("127.0.0.1:{port}"),
                        child,
                        dir,
                    };
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        if let Ok(Some(_)) = server.child.try_wait() {
                            break;
                        }
                        if TcpStream::connect(&server.addr).is_ok() {
                            return server;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    drop(server);
                }
                panic!("{binary} did not start");
            }
        }

        impl Drop for Server {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}
