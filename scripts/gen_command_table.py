#!/usr/bin/env python3
"""Generate src/cmd/table.rs, the static Redis command table, from a real server.

Usage:
    scripts/gen_command_table.py                      # spawn a throwaway redis-server
    scripts/gen_command_table.py --redis-server PATH  # ... from this binary
    scripts/gen_command_table.py --connect 127.0.0.1:6379
    scripts/gen_command_table.py --out path/to/table.rs

The table is what `COMMAND` reports (every command with its subcommands, in the Redis 7
format: name, arity, flags, first/last/step, ACL categories, tips, key specs,
subcommands). ACL categories are left out: the client routes and retries by the rest.

Standard library only. A spawned server listens on 127.0.0.1 on a free port, saves
nothing, lives in a temporary directory and is killed before the script exits.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "src", "cmd", "table.rs")


# --- A minimal RESP2 client -------------------------------------------------------------


class RespError(Exception):
    pass


class Conn:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        self.rfile.close()
        self.sock.close()

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _line(self):
        line = self.rfile.readline()
        if not line.endswith(b"\r\n"):
            raise RespError("connection closed mid-reply")
        return line[:-2]

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            return data[:-2].decode()
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise RespError("unexpected reply type %r" % line[:20])


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayServer:
    """A redis-server on a free 127.0.0.1 port in a temp dir; killed on exit."""

    def __init__(self, binary):
        self.binary = binary
        self.proc = None
        self.tmp = None
        self.port = None

    def __enter__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="gen-command-table-")
        try:
            return self._start()
        except BaseException:
            # __exit__ does not run when __enter__ fails: clean up here.
            self._stop()
            self.tmp.cleanup()
            raise

    def _start(self):
        # The port is free when we ask; another process could take it before the server
        # binds, so try a few times.
        for _ in range(5):
            self.port = free_port()
            try:
                self.proc = subprocess.Popen(
                    [
                        self.binary,
                        "--port", str(self.port),
                        "--bind", "127.0.0.1",
                        "--save", "",
                        "--appendonly", "no",
                        "--dir", self.tmp.name,
                        "--daemonize", "no",
                    ],
                    cwd=self.tmp.name,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            except OSError as e:
                raise SystemExit("cannot run %s: %s" % (self.binary, e))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    c = Conn("127.0.0.1", self.port, timeout=1)
                    try:
                        if c.call("PING") == "PONG":
                            return self
                    finally:
                        c.close()
                except (OSError, RespError):
                    time.sleep(0.05)
            self._stop()
        raise SystemExit("could not start %s" % self.binary)

    def _stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __exit__(self, *exc):
        self._stop()
        self.tmp.cleanup()


# --- Reading the metadata ---------------------------------------------------------------


def as_map(flat):
    """A RESP2 flat [k1, v1, k2, v2, ...] list as a dict."""
    if isinstance(flat, dict):
        return flat
    if len(flat) % 2:
        raise ValueError("odd map %r" % (flat,))
    return dict(zip(flat[0::2], flat[1::2]))


def parse_key_spec(raw):
    spec = as_map(raw)
    flags = list(spec.get("flags", []))
    bs = as_map(spec["begin_search"])
    fk = as_map(spec["find_keys"])
    bs_spec = as_map(bs.get("spec") or [])
    fk_spec = as_map(fk.get("spec") or [])
    if bs["type"] == "index":
        begin = ("index", int(bs_spec["index"]))
    elif bs["type"] == "keyword":
        begin = ("keyword", bs_spec["keyword"], int(bs_spec["startfrom"]))
    elif bs["type"] == "unknown":
        begin = ("unknown",)
    else:
        raise ValueError("unknown begin_search type %r" % bs["type"])
    if fk["type"] == "range":
        find = ("range", int(fk_spec["lastkey"]), int(fk_spec["keystep"]), int(fk_spec["limit"]))
    elif fk["type"] == "keynum":
        find = (
            "keynum",
            int(fk_spec["keynumidx"]),
            int(fk_spec["firstkey"]),
            int(fk_spec["keystep"]),
        )
    elif fk["type"] == "unknown":
        find = ("unknown",)
    else:
        raise ValueError("unknown find_keys type %r" % fk["type"])
    return {"flags": flags, "begin": begin, "find": find}


REQUEST_POLICIES = {
    "all_nodes": "AllNodes",
    "all_shards": "AllShards",
    "multi_shard": "MultiShard",
    "special": "Special",
}
RESPONSE_POLICIES = {
    "one_succeeded": "OneSucceeded",
    "all_succeeded": "AllSucceeded",
    "agg_logical_and": "AggLogicalAnd",
    "agg_logical_or": "AggLogicalOr",
    "agg_min": "AggMin",
    "agg_max": "AggMax",
    "agg_sum": "AggSum",
    "special": "Special",
}
TIP_BITS = {
    "nondeterministic_output": "NONDETERMINISTIC_OUTPUT",
    "nondeterministic_output_order": "NONDETERMINISTIC_OUTPUT_ORDER",
}


def parse_entry(raw):
    name, arity, flags, first, last, step = raw[:6]
    tips = raw[7] if len(raw) > 7 else []
    specs = raw[8] if len(raw) > 8 else []
    subs = raw[9] if len(raw) > 9 else []
    request = response = None
    tip_bits = []
    for tip in tips or []:
        if tip.startswith("request_policy:"):
            request = REQUEST_POLICIES[tip.split(":", 1)[1]]
        elif tip.startswith("response_policy:"):
            response = RESPONSE_POLICIES[tip.split(":", 1)[1]]
        elif tip in TIP_BITS:
            tip_bits.append(TIP_BITS[tip])
        else:
            raise ValueError("%s: unknown tip %r: teach info.rs and this script" % (name, tip))
    return {
        "name": name.lower(),
        "arity": int(arity),
        "flags": [f.lower() for f in flags],
        "legacy": (int(first), int(last), int(step)),
        "request": request,
        "response": response,
        "tips": tip_bits,
        "specs": [parse_key_spec(s) for s in specs or []],
        "subs": sorted((parse_entry(s) for s in subs or []), key=lambda e: e["name"].encode()),
    }


# --- Writing Rust -----------------------------------------------------------------------


def rust_flags(names, upper=True):
    # Flag names map one-to-one onto constants of the same name in upper case
    # (`no_multi` -> NO_MULTI, `RO` -> RO); a flag info.rs does not know yet fails to
    # compile, which is the point: teach info.rs, then rerun.
    if not names:
        return "0"
    return " | ".join(n.upper() if upper else n for n in names)


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rust_spec(spec):
    b = spec["begin"]
    if b[0] == "index":
        begin = "idx(%d)" % b[1]
    elif b[0] == "keyword":
        begin = "kw(%s, %d)" % (rust_str(b[1]), b[2])
    else:
        begin = "BS_UNKNOWN"
    f = spec["find"]
    if f[0] == "range":
        find = "range(%d, %d, %d)" % f[1:]
    elif f[0] == "keynum":
        find = "keynum(%d, %d, %d)" % f[1:]
    else:
        find = "FK_UNKNOWN"
    return "ks(%s, %s, %s)" % (rust_flags(spec["flags"]), begin, find)


def rust_entry(e, indent):
    pad = " " * indent
    tips = "(%s, %s, %s)" % (
        "Some(Rq::%s)" % e["request"] if e["request"] else "None",
        "Some(Rs::%s)" % e["response"] if e["response"] else "None",
        rust_flags(e["tips"]),
    )
    head = "%sc!(%s, %d, %s, (%d, %d, %d), %s, [%s]" % (
        pad,
        rust_str(e["name"]),
        e["arity"],
        rust_flags(e["flags"]),
        *e["legacy"],
        tips,
        ", ".join(rust_spec(s) for s in e["specs"]),
    )
    if not e["subs"]:
        return [head + ", []),"]
    lines = [head + ", ["]
    for s in e["subs"]:
        lines.extend(rust_entry(s, indent + 4))
    lines.append(pad + "]),")
    return lines


HEADER = """\
//! The Redis command table: every command of one server version, with its arity, flags,
//! key specs and tips, for routing, splitting and retrying commands in a cluster.
//!
//! @generated by `scripts/gen_command_table.py` from redis_version {version}
//! ({top} commands, {subs} subcommands, from `COMMAND`). DO NOT EDIT: rerun the script.
//!
//! One line per command: `c!(name, arity, flags, (first, last, step), (request_policy,
//! response_policy, tips), [key specs], [subcommands])`. Top-level entries are sorted by
//! name and each container's subcommands by name, for binary search (see `info::lookup`).

use std::borrow::Cow;

use super::info::flag::*;
use super::info::key_flag::*;
use super::info::tip::*;
use super::info::{{idx, keynum, ks, kw, range, BS_UNKNOWN, FK_UNKNOWN}};
use super::info::{{CommandInfo, RequestPolicy as Rq, ResponsePolicy as Rs}};

/// A `CommandInfo` literal. A macro rather than a `const fn`: the key-spec and subcommand
/// arrays are borrowed for `'static`, which a braced literal in a static initializer gets
/// by lifetime extension and a function argument does not (hence also `Borrowed {{ 0: .. }}`
/// rather than the call syntax, which older compilers do not extend through).
macro_rules! c {{
    ($name:expr, $arity:expr, $flags:expr, ($first:expr, $last:expr, $step:expr),
     ($req:expr, $resp:expr, $tips:expr), [$($spec:expr),* $(,)?], [$($sub:expr),* $(,)?]) => {{
        CommandInfo {{
            name: Cow::Borrowed($name),
            arity: $arity,
            flags: $flags,
            first_key: $first,
            last_key: $last,
            step: $step,
            request_policy: $req,
            response_policy: $resp,
            tips: $tips,
            key_specs: Cow::Borrowed {{ 0: &[$($spec),*] }},
            subcommands: Cow::Borrowed {{ 0: &[$($sub),*] }},
        }}
    }};
}}

/// Redis version the table was generated from.
pub(super) const REDIS_VERSION: &str = "{version}";

/// Every command, sorted by name; containers (`config`, `object`, ...) hold their
/// subcommands (`config|get`), sorted by name too.
#[rustfmt::skip]
pub(super) static COMMANDS: &[CommandInfo] = &[
"""


def render(version, entries):
    nsubs = sum(len(e["subs"]) for e in entries)
    out = [HEADER.format(version=version, top=len(entries), subs=nsubs)]
    for e in entries:
        out.extend(line + "\n" for line in rust_entry(e, 4))
    out.append("];\n")
    return "".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-server", default="redis-server", help="server binary to spawn")
    ap.add_argument("--connect", metavar="HOST:PORT", help="use this running server instead")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output file (default: %(default)s)")
    args = ap.parse_args()

    def collect(conn):
        info = conn.call("INFO", "server")
        version = next(
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("redis_version:")
        )
        commands = conn.call("COMMAND")
        return version, commands

    if args.connect:
        host, port = args.connect.rsplit(":", 1)
        conn = Conn(host, int(port))
        try:
            version, raw = collect(conn)
        finally:
            conn.close()
    else:
        with ThrowawayServer(args.redis_server) as server:
            conn = Conn("127.0.0.1", server.port)
            try:
                version, raw = collect(conn)
            finally:
                conn.close()

    entries = sorted((parse_entry(r) for r in raw), key=lambda e: e["name"].encode())
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate command names from the server")
    for e in entries:
        for s in e["subs"]:
            if not s["name"].startswith(e["name"] + "|"):
                raise SystemExit("subcommand %r is not under %r" % (s["name"], e["name"]))
    text = render(version, entries)
    with open(args.out, "w") as f:
        f.write(text)
    print(
        "wrote %s: redis %s, %d commands, %d subcommands"
        % (args.out, version, len(entries), sum(len(e["subs"]) for e in entries)),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
