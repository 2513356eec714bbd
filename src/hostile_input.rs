//! Property tests: whatever a server sends, and whatever a command holds, the layers
//! above the decoder answer with a value or a typed error, never a panic or an endless
//! loop.
//!
//! The decoder has its own fuzz target (`fuzz/`) and property tests
//! (`tests/codec_props.rs`). These cover what reads decoded values: the topology replies
//! (`CLUSTER SHARDS`, `CLUSTER SLOTS`, `CLUSTER NODES`) and the slot map built from them, `MOVED`/`ASK`
//! errors, `COMMAND INFO` entries (a module's, learned at run time) and the key finder and
//! planner run on what such an entry describes, pub/sub frames, and `FromValue`.
//!
//! Random values rarely get past a parser's first check, so most cases start from a
//! valid reply and replace or remove one part of it at a random place, and the words and
//! numbers generated are those the replies use (field names, roles, `0`, `16383`,
//! `65536`, `i64::MIN`, ...).

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use smallvec::SmallVec;

use crate::cmd::{self, Cmd};
use crate::error::ServerError;
use crate::resp::{FromValue, Value};
use crate::slot::{parse_redirect, Redirect, SLOT_COUNT};
use crate::topology::{
    choose_view, parse_node_epochs, parse_shards, parse_slots, primary_epochs, slot_map,
};

const REACHED: &str = "127.0.0.1:7000";

/// Words of topology replies, command entries and pub/sub frames, and a few that are
/// nothing of the kind.
const WORDS: &[&str] = &[
    "slots",
    "nodes",
    "id",
    "port",
    "tls-port",
    "ip",
    "endpoint",
    "hostname",
    "role",
    "master",
    "replica",
    "health",
    "online",
    "failed",
    "fail",
    "loading",
    "replication-offset",
    "127.0.0.1",
    "::1",
    "?",
    "",
    "host:1",
    "type",
    "spec",
    "index",
    "keyword",
    "range",
    "keynum",
    "unknown",
    "startfrom",
    "lastkey",
    "keystep",
    "limit",
    "keynumidx",
    "firstkey",
    "flags",
    "begin_search",
    "find_keys",
    "RW",
    "RO",
    "not_key",
    "write",
    "readonly",
    "blocking",
    "movablekeys",
    "request_policy:all_shards",
    "response_policy:agg_sum",
    "STREAMS",
    "STORE",
    "BLOCK",
    "message",
    "smessage",
    "pmessage",
    "subscribe",
    "ssubscribe",
    "unsubscribe",
    "pong",
    "0",
    "1",
    "-1",
    "5",
    "16383",
    "16384",
    "99999999999999999999",
];

/// Numbers that sit on the parsers' edges, and small ones that make key specs point at
/// real arguments.
fn number() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => -3i64..8,
        2 => prop::sample::select(vec![
            16383,
            16384,
            65535,
            65536,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ]),
        1 => any::<i64>(),
    ]
}

/// Numbers of a command entry: mostly small, so that they point at real arguments,
/// sometimes the extremes of the `i32` the entry is parsed into.
fn spec_number() -> impl Strategy<Value = i64> {
    prop_oneof![
        12 => -3i64..6,
        1 => prop::sample::select(vec![i64::from(i32::MIN), i64::from(i32::MAX), 16384]),
    ]
}

fn word() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        6 => prop::sample::select(WORDS).prop_map(|w| Bytes::from_static(w.as_bytes())),
        1 => ".{0,8}".prop_map(Bytes::from),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => word().prop_map(Value::Bulk),
        3 => number().prop_map(Value::Int),
        1 => word().prop_map(Value::Simple),
        1 => Just(Value::Nil),
        1 => word().prop_map(|w| Value::ServerError(ServerError::new(w))),
        1 => any::<f64>().prop_map(Value::Double),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => word().prop_map(|text| Value::Verbatim { format: *b"txt", text }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            4 => prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            2 => prop::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
            1 => prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
            1 => prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Push),
            1 => (prop::collection::vec((inner.clone(), inner.clone()), 0..2), inner)
                .prop_map(|(attributes, data)| Value::Attribute {
                    attributes,
                    data: Box::new(data),
                }),
        ]
    })
}

/// One change to a valid reply: at the place `path` leads to (each step picks a child,
/// modulo their number), put `replacement`, or remove the child there.
#[derive(Debug, Clone)]
struct Mutation {
    path: Vec<usize>,
    replacement: Option<Value>,
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = (
        prop::collection::vec(any::<usize>(), 0..7),
        prop::option::weighted(0.8, value()),
    )
        .prop_map(|(path, replacement)| Mutation { path, replacement });
    prop::collection::vec(one, 1..4)
}

fn mutate(target: &mut Value, mutation: &Mutation) {
    mutate_at(target, &mutation.path, mutation.replacement.as_ref());
}

fn mutate_at(at: &mut Value, path: &[usize], replacement: Option<&Value>) {
    if let Some((&step, rest)) = path.split_first() {
        match at {
            Value::Array(items) | Value::Set(items) | Value::Push(items) if !items.is_empty() => {
                let i = step % items.len();
                if rest.is_empty() && replacement.is_none() {
                    items.remove(i);
                } else {
                    mutate_at(&mut items[i], rest, replacement);
                }
                return;
            }
            Value::Map(pairs) if !pairs.is_empty() => {
                let i = step / 2 % pairs.len();
                if rest.is_empty() && replacement.is_none() {
                    pairs.remove(i);
                } else {
                    let (k, v) = &mut pairs[i];
                    mutate_at(if step % 2 == 0 { k } else { v }, rest, replacement);
                }
                return;
            }
            _ => {}
        }
    }
    if let Some(replacement) = replacement {
        *at = replacement.clone();
    }
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

/// A `CLUSTER SHARDS` node entry; `resp3` gives a map, otherwise a flat array.
fn shard_node(id: &str, port: i64, role: &str, resp3: bool) -> Value {
    let pairs = vec![
        (bulk("id"), bulk(id)),
        (bulk("port"), Value::Int(port)),
        (bulk("ip"), bulk("127.0.0.1")),
        (bulk("endpoint"), bulk("127.0.0.1")),
        (bulk("role"), bulk(role)),
        (bulk("replication-offset"), Value::Int(42)),
        (bulk("health"), bulk("online")),
    ];
    flat_or_map(pairs, resp3)
}

fn flat_or_map(pairs: Vec<(Value, Value)>, resp3: bool) -> Value {
    if resp3 {
        Value::Map(pairs)
    } else {
        Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect())
    }
}

/// A valid three-shard `CLUSTER SHARDS` reply, each shard with one replica.
fn shards_reply(resp3: bool) -> Value {
    let shard = |i: i64| {
        flat_or_map(
            vec![
                (
                    bulk("slots"),
                    Value::Array(vec![
                        Value::Int(i * 5461),
                        Value::Int((i * 5461 + 5460).min(16383)),
                    ]),
                ),
                (
                    bulk("nodes"),
                    Value::Array(vec![
                        shard_node(&format!("p{i}"), 7000 + i, "master", resp3),
                        shard_node(&format!("r{i}"), 7003 + i, "replica", resp3),
                    ]),
                ),
            ],
            resp3,
        )
    };
    Value::Array((0..3).map(shard).collect())
}

/// A valid `CLUSTER SLOTS` reply for the same cluster.
fn slots_reply() -> Value {
    Value::Array(
        (0..3)
            .map(|i: i64| {
                let node =
                    |port: i64| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]);
                Value::Array(vec![
                    Value::Int(i * 5461),
                    Value::Int((i * 5461 + 5460).min(16383)),
                    node(7000 + i),
                    node(7003 + i),
                ])
            })
            .collect(),
    )
}

/// A key spec as `COMMAND INFO` reports it, with any numbers and types.
fn key_spec() -> impl Strategy<Value = Value> {
    let begin = prop_oneof![
        spec_number().prop_map(|i| ("index", vec![(bulk("index"), Value::Int(i))])),
        (word(), spec_number()).prop_map(|(k, s)| (
            "keyword",
            vec![
                (bulk("keyword"), Value::Bulk(k)),
                (bulk("startfrom"), Value::Int(s))
            ]
        )),
        Just(("unknown", vec![])),
    ];
    let find = prop_oneof![
        (spec_number(), spec_number(), spec_number()).prop_map(|(l, s, m)| (
            "range",
            vec![
                (bulk("lastkey"), Value::Int(l)),
                (bulk("keystep"), Value::Int(s)),
                (bulk("limit"), Value::Int(m)),
            ]
        )),
        (spec_number(), spec_number(), spec_number()).prop_map(|(n, f, s)| (
            "keynum",
            vec![
                (bulk("keynumidx"), Value::Int(n)),
                (bulk("firstkey"), Value::Int(f)),
                (bulk("keystep"), Value::Int(s)),
            ]
        )),
        Just(("unknown", vec![])),
    ];
    let flags = prop::sample::subsequence(vec!["RW", "RO", "not_key", "incomplete"], 0..3);
    (begin, find, flags, any::<bool>()).prop_map(|((bt, bs), (ft, fs), flags, resp3)| {
        let part = |t: &str, spec: Vec<(Value, Value)>| {
            flat_or_map(
                vec![
                    (bulk("type"), bulk(t)),
                    (bulk("spec"), flat_or_map(spec, resp3)),
                ],
                resp3,
            )
        };
        flat_or_map(
            vec![
                (
                    bulk("flags"),
                    Value::Array(flags.into_iter().map(bulk).collect()),
                ),
                (bulk("begin_search"), part(bt, bs)),
                (bulk("find_keys"), part(ft, fs)),
            ],
            resp3,
        )
    })
}

/// A `COMMAND INFO` entry for a module command `mod.x`, with any arity, legacy key
/// triple, flags, tips and key specs.
fn command_entry() -> impl Strategy<Value = Value> {
    let flags = prop::sample::subsequence(
        vec!["write", "readonly", "blocking", "movablekeys", "noscript"],
        0..3,
    );
    let tips = prop::sample::subsequence(
        vec![
            "request_policy:all_shards",
            "request_policy:multi_shard",
            "response_policy:agg_sum",
            "nondeterministic_output",
        ],
        0..3,
    );
    (
        spec_number(),
        flags,
        (spec_number(), spec_number(), spec_number()),
        tips,
        prop::collection::vec(key_spec(), 0..3),
    )
        .prop_map(|(arity, flags, (first, last, step), tips, specs)| {
            Value::Array(vec![
                bulk("mod.x"),
                Value::Int(arity),
                Value::Array(flags.into_iter().map(bulk).collect()),
                Value::Int(first),
                Value::Int(last),
                Value::Int(step),
                Value::Array(vec![]),
                Value::Array(tips.into_iter().map(bulk).collect()),
                Value::Array(specs),
                Value::Array(vec![]),
            ])
        })
}

/// `mod.x` with up to 9 arguments of the kinds key specs look at.
fn module_command() -> impl Strategy<Value = Cmd> {
    prop::collection::vec(word(), 0..9).prop_map(|args| {
        args.into_iter()
            .fold(cmd::cmd("mod.x"), |c, a| c.arg(&a[..]))
    })
}

/// Frames a subscriber reads: valid ones of every kind, as pushes and as arrays.
fn pubsub_frame() -> impl Strategy<Value = Value> {
    let shapes = prop::sample::select(vec![
        vec!["message", "ch", "payload"],
        vec!["smessage", "ch", "payload"],
        vec!["pmessage", "p*", "ch", "payload"],
        vec!["subscribe", "ch", "1"],
        vec!["sunsubscribe", "ch", "0"],
        vec!["unsubscribe"],
        vec!["pong", ""],
    ]);
    (shapes, any::<bool>()).prop_map(|(words, push)| {
        let items = words
            .iter()
            .map(|w| match w.parse() {
                Ok(n) => Value::Int(n),
                Err(_) => bulk(w),
            })
            .collect();
        if push {
            Value::Push(items)
        } else {
            Value::Array(items)
        }
    })
}

/// Every slot the map assigns points at one of its shards.
fn check_map(map: &crate::slot::SlotMap) {
    assert!(map.covered() <= usize::from(SLOT_COUNT));
    for slot in 0..SLOT_COUNT {
        if let Some(i) = map.shard_index(slot) {
            assert!(i < map.shards().len());
        }
    }
}

fn check_topology(shards: &[crate::topology::ShardInfo]) {
    let map = slot_map(shards, &|a: &str| a.to_string());
    check_map(&map);
    let failed = crate::topology::failed_nodes(shards, &|a: &str| a.to_string());
    let views = [map.clone(), crate::slot::SlotMap::default(), map]
        .into_iter()
        .map(|map| crate::topology::View {
            map,
            down: crate::slot::SlotMap::default(),
            failed: failed.clone(),
            ids: crate::topology::node_ids(shards, &|a: &str| a.to_string()),
            epochs: None,
        })
        .collect();
    let chosen = choose_view(views, &crate::slot::SlotMap::default(), false);
    assert!(chosen.is_some());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn topology_replies_parse_or_fail_typed(
        resp3 in any::<bool>(),
        tls in any::<bool>(),
        changes in mutations(),
    ) {
        let mut shards = shards_reply(resp3);
        let mut slots = slots_reply();
        for change in &changes {
            mutate(&mut shards, change);
            mutate(&mut slots, change);
        }
        for parsed in [parse_shards(&shards, REACHED, tls), parse_slots(&slots, REACHED)] {
            match parsed {
                Ok(parsed) => check_topology(&parsed),
                Err(e) => prop_assert!(matches!(e, crate::Error::Protocol(_)), "{e:?}"),
            }
        }
    }

    #[test]
    fn any_value_as_a_topology_reply_parses_or_fails_typed(reply in value(), tls in any::<bool>()) {
        for parsed in [parse_shards(&reply, REACHED, tls), parse_slots(&reply, REACHED)] {
            match parsed {
                Ok(parsed) => check_topology(&parsed),
                Err(e) => prop_assert!(matches!(e, crate::Error::Protocol(_)), "{e:?}"),
            }
        }
    }

    #[test]
    fn cluster_nodes_replies_give_epochs_or_none(
        lines in prop::collection::vec(prop::collection::vec(word(), 0..12), 0..8),
        raw in prop::collection::vec(any::<u8>(), 0..200),
        resp3 in any::<bool>(),
    ) {
        let text = lines
            .iter()
            .map(|fields| {
                let fields: Vec<String> =
                    fields.iter().map(|w| String::from_utf8_lossy(w).into_owned()).collect();
                fields.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let shards = parse_shards(&shards_reply(resp3), REACHED, false).unwrap();
        for reply in [Value::Bulk(text.into()), Value::Bulk(raw.into())] {
            if let Some(epochs) = parse_node_epochs(&reply) {
                if let Some(primaries) = primary_epochs(&shards, &epochs, &|a: &str| a.to_string()) {
                    let map = slot_map(&shards, &|a: &str| a.to_string());
                    let routing = (&map, Some(&primaries[..]));
                    prop_assert_eq!(
                        crate::topology::compare_by_epoch(routing, routing),
                        Some(std::cmp::Ordering::Equal)
                    );
                }
            }
        }
    }

    #[test]
    fn redirects_parse_or_are_ignored(
        code in prop::sample::select(vec!["MOVED", "ASK", "moved", "ERR", ""]),
        slot in number(),
        host in word(),
        port in number(),
        shape in 0u8..4,
    ) {
        let host = String::from_utf8_lossy(&host);
        let text = match shape {
            0 => format!("{code} {slot} {host}:{port}"),
            1 => format!("{code} {slot} :{port}"),
            2 => format!("{code} {slot}"),
            _ => format!("{code} {host}:{port} {slot}"),
        };
        if let Some(redirect) = parse_redirect(&ServerError::new(text), REACHED) {
            let (Redirect::Moved { slot, addr } | Redirect::Ask { slot, addr }) = redirect;
            prop_assert!(slot < SLOT_COUNT);
            prop_assert!(addr.contains(':'));
        }
    }

    #[test]
    fn learned_command_entries_route_any_arguments_without_panicking(
        entry in command_entry(),
        changes in prop::option::weighted(0.3, mutations()),
        commands in prop::collection::vec(module_command(), 1..6),
    ) {
        let mut entry = entry;
        for change in changes.iter().flatten() {
            mutate(&mut entry, change);
        }
        let info = match cmd::parse_command_info(&entry) {
            Ok(info) => info,
            Err(e) => {
                prop_assert!(matches!(e, crate::Error::Protocol(_)), "{e:?}");
                return Ok(());
            }
        };
        let mut keys = SmallVec::new();
        for command in &commands {
            for routing in [false, true] {
                let found = if routing {
                    cmd::routing_key_indices(command, &info, &mut keys)
                } else {
                    cmd::key_indices(command, &info, &mut keys)
                };
                match found {
                    Ok(()) => prop_assert!(
                        keys.iter().all(|&i| (1..command.len()).contains(&i)),
                        "{keys:?} for {} arguments", command.len()
                    ),
                    Err(e) => prop_assert!(matches!(e, crate::Error::Config(_)), "{e:?}"),
                }
            }
            let _ = crate::cluster::plan::plan(command, Some(&info));
            let _ = cmd::blocks(command, &info);
            let _ = cmd::may_resend(command, &info);
        }
    }

    #[test]
    fn pubsub_frames_parse_whatever_comes(
        frame in pubsub_frame(),
        changes in prop::option::weighted(0.7, mutations()),
        other in value(),
    ) {
        let mut frame = frame;
        for change in changes.iter().flatten() {
            mutate(&mut frame, change);
        }
        let _ = crate::pubsub::link::parse(frame);
        let _ = crate::pubsub::link::parse(other);
    }

    #[test]
    fn from_value_converts_or_fails_typed(v in value()) {
        fn check<T: FromValue>(v: &Value) {
            if let Err(e) = T::from_value(v.clone()) {
                assert!(
                    matches!(e, crate::Error::Type { .. } | crate::Error::Server(_)),
                    "{e:?}"
                );
            }
        }
        check::<()>(&v);
        check::<Value>(&v);
        check::<Bytes>(&v);
        check::<String>(&v);
        check::<Vec<u8>>(&v);
        check::<bool>(&v);
        check::<u8>(&v);
        check::<i64>(&v);
        check::<u64>(&v);
        check::<i32>(&v);
        check::<usize>(&v);
        check::<f64>(&v);
        check::<Option<String>>(&v);
        check::<Vec<i64>>(&v);
        check::<Vec<Option<Bytes>>>(&v);
        check::<std::collections::HashSet<String>>(&v);
        check::<HashMap<String, i64>>(&v);
        check::<std::collections::BTreeMap<Bytes, Value>>(&v);
        check::<(String, i64)>(&v);
        check::<(Bytes, Vec<(Bytes, Bytes)>)>(&v);
    }
}

#[test]
fn the_mutations_reach_inside_the_valid_replies() {
    // A path into the second shard's node list, replacing its primary's port: the
    // mutation must land there, or the property tests above mostly test a valid reply.
    let mut reply = shards_reply(false);
    mutate(
        &mut reply,
        &Mutation {
            // shard 1 -> field 3 ("nodes"' value) -> node 0 -> field 3 (port's value)
            path: vec![1, 3, 0, 3],
            replacement: Some(Value::Int(-1)),
        },
    );
    let shards = parse_shards(&reply, REACHED, false).unwrap();
    // Its primary unreachable, the shard has no one to route to and is left out.
    assert_eq!(shards.len(), 2);
    assert!(shards.iter().all(|s| s.primary.addr != "127.0.0.1:7001"));
    // Removing the first shard's slot list.
    let mut reply = shards_reply(false);
    mutate(
        &mut reply,
        &Mutation {
            path: vec![0, 1],
            replacement: None,
        },
    );
    assert!(parse_shards(&reply, REACHED, false).is_err());
}
