//! Codec throughput in bytes per second: decoding and encoding the replies a client
//! typically gets back, encoding the commands it typically sends, and hashing keys to
//! slots.
//!
//! Run with `cargo bench --bench codec`; add `-- --quick` for a fast, rougher run.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use redcluster::resp::{encode_value, Decoder};
use redcluster::{cmd, key_slot, Cmd, ServerError, Value};

/// A reply as the server sends it, with a name for the report.
struct Reply {
    name: &'static str,
    /// Replies in the order they arrive; several for a pipeline.
    values: Vec<Value>,
    wire: Bytes,
}

impl Reply {
    fn new(name: &'static str, values: Vec<Value>) -> Reply {
        let mut out = BytesMut::new();
        for v in &values {
            encode_value(v, &mut out);
        }
        Reply {
            name,
            values,
            wire: out.freeze(),
        }
    }
}

fn bulk(bytes: impl Into<Bytes>) -> Value {
    Value::Bulk(bytes.into())
}

fn replies() -> Vec<Reply> {
    // A pipeline of 1000 small replies, the bread and butter of auto-pipelining:
    // SET -> +OK, INCR -> :n, GET -> a small value, the odd miss and error.
    let pipeline = (0..1000)
        .map(|i| match i % 5 {
            0 | 1 => Value::Simple(Bytes::from_static(b"OK")),
            2 => Value::Int(i),
            3 => bulk(format!("value-{i:08}")),
            _ if i % 100 == 4 => Value::ServerError(ServerError::new("MOVED 3999 10.0.0.1:6379")),
            _ => Value::Nil,
        })
        .collect();
    // MGET or LRANGE of 1000 values of 32 bytes.
    let array = Value::Array((0..1000).map(|i| bulk(format!("{i:032}"))).collect());
    // HGETALL of 200 fields in RESP3.
    let map = Value::Map(
        (0..200)
            .map(|i| (bulk(format!("field:{i}")), bulk(format!("{:064}", i))))
            .collect(),
    );
    vec![
        Reply::new("pipeline_1000_small", pipeline),
        Reply::new("bulk_1MiB", vec![bulk(vec![b'x'; 1024 * 1024])]),
        Reply::new("array_1000_bulks", vec![array]),
        Reply::new("map_200_pairs", vec![map]),
    ]
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for reply in replies() {
        group.throughput(Throughput::Bytes(reply.wire.len() as u64));
        group.bench_function(reply.name, |b| {
            let mut decoder = Decoder::new();
            b.iter_batched(
                // The read buffer is filled outside the measurement, as a socket would.
                || BytesMut::from(&reply.wire[..]),
                // Returned, so that freeing the buffer and values is not measured.
                |mut buf| {
                    let mut values = Vec::with_capacity(reply.values.len());
                    while let Some(v) = decoder.decode(&mut buf).expect("valid reply") {
                        values.push(v);
                    }
                    assert_eq!(values.len(), reply.values.len());
                    (buf, values)
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for reply in replies() {
        group.throughput(Throughput::Bytes(reply.wire.len() as u64));
        group.bench_function(reply.name, |b| {
            let mut out = BytesMut::with_capacity(reply.wire.len());
            b.iter(|| {
                out.clear();
                for v in &reply.values {
                    encode_value(black_box(v), &mut out);
                }
                black_box(&out);
            });
        });
    }
    group.finish();
}

fn commands() -> Vec<(&'static str, Cmd)> {
    let mset = (0..100).fold(cmd("MSET"), |c, i| {
        c.arg(format!("{{user:42}}:field:{i}"))
            .arg(format!("{i:016}"))
    });
    vec![
        ("set_32B", cmd("SET").arg("user:{42}:name").arg([b'v'; 32])),
        (
            "set_16KiB",
            cmd("SET").arg("user:{42}:blob").arg(vec![b'v'; 16 * 1024]),
        ),
        ("mset_100_pairs", mset),
    ]
}

fn encode_commands(c: &mut Criterion) {
    let mut group = c.benchmark_group("command");
    for (name, command) in commands() {
        group.throughput(Throughput::Bytes(command.encoded_len() as u64));
        // Writing a built command into the connection's buffer: what a send costs.
        group.bench_function(format!("write_to/{name}"), |b| {
            let mut out = BytesMut::with_capacity(command.encoded_len());
            b.iter(|| {
                out.clear();
                black_box(&command).write_to(&mut out);
                black_box(&out);
            });
        });
    }
    // Building the command as well: what a caller's `cmd(..).arg(..)` costs on top.
    let key = black_box("user:{42}:name");
    for (name, value) in [
        ("set_32B", vec![b'v'; 32]),
        ("set_16KiB", vec![b'v'; 16 * 1024]),
    ] {
        let len = cmd("SET").arg(key).arg(&value).encoded_len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("build_and_write/{name}"), |b| {
            let mut out = BytesMut::with_capacity(len);
            b.iter(|| {
                out.clear();
                cmd("SET").arg(key).arg(&value).write_to(&mut out);
                black_box(&out);
            });
        });
    }
    group.finish();
}

fn slots(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_slot");
    let sets: [(&str, Vec<Vec<u8>>); 2] = [
        (
            "plain_keys",
            (0..1000)
                .map(|i| format!("session:{i:012}").into_bytes())
                .collect(),
        ),
        (
            "hash_tagged_keys",
            (0..1000)
                .map(|i| format!("user:{{{i}}}:profile:settings").into_bytes())
                .collect(),
        ),
    ];
    for (name, keys) in &sets {
        let total: usize = keys.iter().map(Vec::len).sum();
        group.throughput(Throughput::Bytes(total as u64));
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for k in keys {
                    acc = acc.wrapping_add(u32::from(key_slot(black_box(k))));
                }
                acc
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode, encode_commands, slots);
criterion_main!(benches);
