//! Property and split-point tests for the RESP codec, through the public API only.
//!
//! The decoder is fed replies the way a socket delivers them: in one read, in two reads
//! split at every possible byte, one byte at a time and in random chunks. Whatever the
//! split, it must return the same values as the encoder wrote, and garbage must give an
//! error, never a panic or a hang.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use redcluster::resp::{decode_all, encode_command, encode_value, Decoder, Limits};
use redcluster::{cmd, Cmd, ServerError, Value};

// ---------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------

/// Structural equality where a double must match bit for bit (so `-0.0` is not `0.0`)
/// and any NaN matches any NaN, which `PartialEq` cannot express.
fn same(a: &Value, b: &Value) -> bool {
    fn all(a: &[Value], b: &[Value]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
    }
    fn pairs(a: &[(Value, Value)], b: &[(Value, Value)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|((ka, va), (kb, vb))| same(ka, kb) && same(va, vb))
    }
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => {
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
        }
        (Value::Array(x), Value::Array(y))
        | (Value::Set(x), Value::Set(y))
        | (Value::Push(x), Value::Push(y)) => all(x, y),
        (Value::Map(x), Value::Map(y)) => pairs(x, y),
        (
            Value::Attribute {
                attributes: ax,
                data: dx,
            },
            Value::Attribute {
                attributes: ay,
                data: dy,
            },
        ) => pairs(ax, ay) && same(dx, dy),
        // Every other variant holds no double, so `PartialEq` is exact for it.
        _ => a == b,
    }
}

fn same_all(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn encode_all(values: &[Value]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for v in values {
        encode_value(v, &mut out);
    }
    out.to_vec()
}

/// Feeds `input` to one decoder through one buffer in the given chunk sizes (cycled),
/// draining every complete value after each chunk, as a connection's read loop does.
fn decode_chunked(input: &[u8], sizes: &[usize]) -> Vec<Value> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(v) = decoder.decode(&mut buf).expect("valid stream") {
            out.push(v);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    assert!(!decoder.is_mid_frame(), "stream ended inside a reply");
    out
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// Bytes a simple string can hold: anything but CR and LF.
fn line_text(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(
        any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..=max,
    )
    .prop_map(Bytes::from)
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<f64>(),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::NAN),
        1 => Just(-0.0),
        1 => Just(f64::MIN_POSITIVE),
        1 => Just(5e-324),
        1 => Just(f64::MAX),
    ]
}

fn big_number() -> impl Strategy<Value = Bytes> {
    (any::<bool>(), prop::collection::vec(b'0'..=b'9', 1..48)).prop_map(|(negative, digits)| {
        let mut text = Vec::with_capacity(digits.len() + 1);
        if negative {
            text.push(b'-');
        }
        text.extend_from_slice(&digits);
        Bytes::from(text)
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<i64>().prop_map(Value::Int),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), Just(-1)].prop_map(Value::Int),
        binary(64).prop_map(Value::Bulk),
        line_text(24).prop_map(Value::Simple),
        // Any bytes: the encoder switches to a blob error when there is a CR or LF.
        binary(24).prop_map(|b| Value::ServerError(ServerError::new(b))),
        double().prop_map(Value::Double),
        any::<bool>().prop_map(Value::Bool),
        big_number().prop_map(Value::BigNumber),
        (any::<[u8; 3]>(), binary(32)).prop_map(|(format, text)| Value::Verbatim { format, text }),
    ]
}

fn pairs_of(inner: BoxedStrategy<Value>, max: usize) -> impl Strategy<Value = Vec<(Value, Value)>> {
    prop::collection::vec((inner.clone(), inner), 0..=max)
}

/// Any value, nested at most four aggregates deep.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Push),
            pairs_of(inner.clone(), 4).prop_map(Value::Map),
            (pairs_of(inner.clone(), 3), inner).prop_map(|(attributes, data)| {
                Value::Attribute {
                    attributes,
                    data: Box::new(data),
                }
            }),
        ]
    })
}

/// Chunk sizes for feeding a stream: byte by byte, small pieces or large reads.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![1]),
        3 => prop::collection::vec(1usize..16, 1..32),
        2 => prop::collection::vec(1usize..512, 1..8),
    ]
}

/// A valid stream with some bytes changed, inserted or removed: mostly well-formed, so
/// the decoder gets deep into frames before meeting the damage.
fn damaged_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(value(), 1..4),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
    )
        .prop_map(|(values, edits)| {
            let mut bytes = encode_all(&values);
            for (at, op, byte) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            bytes
        })
}

/// Decodes until the buffer needs more bytes or an error; a step that returns a value
/// must consume bytes, so this cannot loop forever.
fn drain(decoder: &mut Decoder, buf: &mut BytesMut) -> Result<Vec<Value>, redcluster::Error> {
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        match decoder.decode(buf)? {
            Some(v) => {
                assert!(
                    buf.len() < before,
                    "a value was returned without consuming input"
                );
                out.push(v);
            }
            None => return Ok(out),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_round_trips(v in value()) {
        let bytes = encode_all(std::slice::from_ref(&v));
        let decoded = decode_all(&bytes).expect("the encoder's output is valid RESP");
        prop_assert_eq!(decoded.len(), 1);
        prop_assert!(same(&decoded[0], &v), "{:?} decoded as {:?}", v, decoded[0]);
    }

    #[test]
    fn any_split_decodes_like_one_piece(
        values in prop::collection::vec(value(), 1..6),
        sizes in chunk_sizes(),
    ) {
        let bytes = encode_all(&values);
        let whole = decode_all(&bytes).expect("the encoder's output is valid RESP");
        prop_assert!(same_all(&whole, &values));
        let chunked = decode_chunked(&bytes, &sizes);
        prop_assert!(same_all(&chunked, &whole), "{:?} != {:?}", chunked, whole);
    }

    #[test]
    fn commands_decode_to_arrays_of_bulk_args(
        args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 1..12),
    ) {
        let c = Cmd::new().args(args.iter().map(Vec::as_slice));
        prop_assert_eq!(c.len(), args.len());
        prop_assert!(c.arg_iter().eq(args.iter().map(Vec::as_slice)));

        let mut written = BytesMut::new();
        c.write_to(&mut written);
        prop_assert_eq!(written.len(), c.encoded_len());
        let mut direct = BytesMut::new();
        encode_command(args.iter().map(Vec::as_slice), &mut direct);
        prop_assert_eq!(&written[..], &direct[..], "Cmd and encode_command agree");

        let expected = Value::Array(args.iter().map(|a| Value::Bulk(Bytes::from(a.clone()))).collect());
        prop_assert_eq!(decode_all(&written).expect("valid RESP"), vec![expected]);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = drain(&mut Decoder::new(), &mut buf);
    }

    #[test]
    fn damaged_streams_never_panic_and_agree_when_split(
        bytes in damaged_stream(),
        sizes in chunk_sizes(),
        tight in any::<bool>(),
    ) {
        // Tight limits reach the limit checks with inputs this small.
        let limits = if tight {
            Limits::default().max_bulk_len(16).max_aggregate_len(4).max_depth(3).max_line_len(12)
        } else {
            Limits::default()
        };
        let mut whole_buf = BytesMut::from(&bytes[..]);
        let whole = drain(&mut Decoder::with_limits(limits), &mut whole_buf);

        let mut decoder = Decoder::with_limits(limits);
        let mut buf = BytesMut::new();
        let mut chunked = Vec::new();
        let mut failed = false;
        let mut rest = &bytes[..];
        let mut sizes = sizes.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            match drain(&mut decoder, &mut buf) {
                Ok(values) => chunked.extend(values),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        // Values before the damage come out alike; the damage is found alike.
        match whole {
            Ok(values) => {
                prop_assert!(!failed, "chunked decoding failed where whole decoding did not");
                prop_assert!(same_all(&values, &chunked));
                prop_assert_eq!(whole_buf.len(), buf.len(), "same bytes left over");
            }
            Err(_) => prop_assert!(failed, "whole decoding failed, chunked decoding did not"),
        }
    }
}

/// Builtin sanity for the comparison itself, so a lenient `same` cannot hide failures.
#[test]
fn comparison_is_strict() {
    assert!(same(&Value::Double(f64::NAN), &Value::Double(f64::NAN)));
    assert!(!same(&Value::Double(0.0), &Value::Double(-0.0)));
    assert!(!same(&Value::Double(1.0), &Value::Int(1)));
    assert!(!same(
        &Value::Array(vec![Value::Double(f64::NAN)]),
        &Value::Set(vec![Value::Double(f64::NAN)])
    ));
    assert!(!same(
        &Value::Map(vec![(Value::Nil, Value::Int(1))]),
        &Value::Map(vec![(Value::Nil, Value::Int(2))])
    ));
}

// ---------------------------------------------------------------------------------------
// A realistic pipeline reply, split at every byte
// ---------------------------------------------------------------------------------------

/// Replies as a server writes them for a pipeline, built as raw bytes next to the values
/// they must decode to, so the expectation does not come from the encoder under test.
struct Pipeline {
    bytes: Vec<u8>,
    values: Vec<Value>,
    /// Where each reply starts in `bytes`, and finally `bytes.len()`.
    starts: Vec<usize>,
}

impl Pipeline {
    fn push(&mut self, wire: &[u8], value: Value) {
        self.bytes.extend_from_slice(wire);
        self.values.push(value);
        self.starts.push(self.bytes.len());
    }
}

fn bulk(text: &[u8]) -> Value {
    Value::Bulk(Bytes::copy_from_slice(text))
}

fn wire_bulk(text: &[u8]) -> Vec<u8> {
    let mut w = format!("${}\r\n", text.len()).into_bytes();
    w.extend_from_slice(text);
    w.extend_from_slice(b"\r\n");
    w
}

/// About 16 KiB of replies of every kind a pipeline gets back.
fn pipeline_reply() -> Pipeline {
    let mut p = Pipeline {
        bytes: Vec::new(),
        values: Vec::new(),
        starts: vec![0],
    };
    let mut i: u64 = 0;
    while p.bytes.len() < 16 * 1024 {
        i += 1;
        match i % 10 {
            0 => p.push(b"+OK\r\n", Value::Simple(Bytes::from_static(b"OK"))),
            1 => {
                let n = (i as i64 - 500) * 7919;
                p.push(format!(":{n}\r\n").as_bytes(), Value::Int(n));
            }
            2 => {
                // Binary values with CRLF inside and lengths around the chunk sizes.
                let text: Vec<u8> = (0..(i % 97) as u8)
                    .map(|b| b.wrapping_mul(37))
                    .chain(*b"\r\n")
                    .collect();
                p.push(&wire_bulk(&text), bulk(&text));
            }
            3 => p.push(b"$-1\r\n", Value::Nil),
            4 => {
                // MGET / LRANGE: an array of bulks with a nil in it.
                let items: Vec<Vec<u8>> = (0..(i % 7))
                    .map(|j| format!("v{i}:{j}").into_bytes())
                    .collect();
                let mut wire = format!("*{}\r\n", items.len() + 1).into_bytes();
                let mut values = Vec::new();
                for item in &items {
                    wire.extend_from_slice(&wire_bulk(item));
                    values.push(bulk(item));
                }
                wire.extend_from_slice(b"$-1\r\n");
                values.push(Value::Nil);
                p.push(&wire, Value::Array(values));
            }
            5 => p.push(
                b"-MOVED 3999 127.0.0.1:6381\r\n",
                Value::ServerError(ServerError::new("MOVED 3999 127.0.0.1:6381")),
            ),
            6 => {
                // HGETALL in RESP3.
                let wire = format!(
                    "%2\r\n$5\r\nfield\r\n$3\r\n{:03}\r\n+n\r\n:{i}\r\n",
                    i % 1000
                );
                p.push(
                    wire.as_bytes(),
                    Value::Map(vec![
                        (bulk(b"field"), bulk(format!("{:03}", i % 1000).as_bytes())),
                        (
                            Value::Simple(Bytes::from_static(b"n")),
                            Value::Int(i as i64),
                        ),
                    ]),
                );
            }
            7 => p.push(b"*-1\r\n", Value::Nil),
            8 => p.push(
                b"*3\r\n*2\r\n:1\r\n_\r\n*0\r\n,3.25\r\n",
                Value::Array(vec![
                    Value::Array(vec![Value::Int(1), Value::Nil]),
                    Value::Array(vec![]),
                    Value::Double(3.25),
                ]),
            ),
            _ => p.push(
                b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
                Value::ServerError(ServerError::new(
                    "WRONGTYPE Operation against a key holding the wrong kind of value",
                )),
            ),
        }
    }
    p
}

/// Decodes `first`, then appends `second` and decodes the rest, with one decoder.
fn decode_in_two(first: &[u8], second: &[u8]) -> Vec<Value> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(first);
    let mut got = drain(&mut decoder, &mut buf).expect("valid prefix");
    buf.extend_from_slice(second);
    got.extend(drain(&mut decoder, &mut buf).expect("valid rest"));
    assert!(buf.is_empty(), "bytes left over");
    assert!(!decoder.is_mid_frame(), "stream ended inside a reply");
    got
}

#[test]
fn pipeline_reply_decodes_in_one_read() {
    let p = pipeline_reply();
    assert!(p.bytes.len() >= 16 * 1024);
    let mut buf = BytesMut::from(&p.bytes[..]);
    let whole = drain(&mut Decoder::new(), &mut buf).expect("valid pipeline reply");
    assert!(buf.is_empty());
    assert_eq!(whole, p.values, "one read decodes to what the server sent");
}

#[test]
fn pipeline_reply_splits_at_every_byte() {
    let p = pipeline_reply();
    // Decoding all 16 KiB again for each of its 16 Ki split points takes most of a
    // minute unoptimised. Between two replies the decoder holds no state (it is not mid
    // frame and keeps no scan position), so each split is checked on the reply it falls
    // in, with the whole reply before and after it to catch state leaking across the
    // boundary. The first 4 KiB are also split as whole streams, literally.
    for (i, window) in p.starts.windows(2).enumerate() {
        let (reply_start, reply_end) = (window[0], window[1]);
        let from = p.starts[i.saturating_sub(1)];
        let to = p.starts[(i + 2).min(p.values.len())];
        let expected = &p.values[i.saturating_sub(1)..(i + 2).min(p.values.len())];
        for k in reply_start..=reply_end {
            let got = decode_in_two(&p.bytes[from..k], &p.bytes[k..to]);
            assert!(
                got == expected,
                "split at {k} inside reply {i}: values differ"
            );
        }
    }
    let prefix_end = p
        .starts
        .iter()
        .copied()
        .find(|&s| s >= 4096)
        .expect("16 KiB of replies");
    let prefix_values = &p.values[..p
        .starts
        .iter()
        .position(|&s| s == prefix_end)
        .expect("a reply boundary")];
    for k in 0..=prefix_end {
        let got = decode_in_two(&p.bytes[..k], &p.bytes[k..prefix_end]);
        assert!(got == prefix_values, "split at {k}: values differ");
    }
}

#[test]
fn pipeline_reply_one_byte_at_a_time() {
    let p = pipeline_reply();
    assert_eq!(decode_chunked(&p.bytes, &[1]), p.values);
}

#[test]
fn single_reply_one_byte_at_a_time() {
    // A nested RESP3 reply with an attribute and a verbatim string, byte by byte.
    let wire: &[u8] = b"|1\r\n+ttl\r\n:60\r\n*3\r\n=9\r\ntxt:hello\r\n%1\r\n(123456789012345678901234567890\r\n#t\r\n>2\r\n$7\r\nmessage\r\n!5\r\nERR x\r\n";
    let expected = Value::Attribute {
        attributes: vec![(Value::Simple(Bytes::from_static(b"ttl")), Value::Int(60))],
        data: Box::new(Value::Array(vec![
            Value::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"hello"),
            },
            Value::Map(vec![(
                Value::BigNumber(Bytes::from_static(b"123456789012345678901234567890")),
                Value::Bool(true),
            )]),
            Value::Push(vec![
                bulk(b"message"),
                Value::ServerError(ServerError::new("ERR x")),
            ]),
        ])),
    };
    assert_eq!(decode_chunked(wire, &[1]), vec![expected.clone()]);
    assert_eq!(decode_all(wire).expect("valid"), vec![expected]);
}

#[test]
fn typical_command_round_trips() {
    let c = cmd("SET")
        .arg("user:{42}:name")
        .arg(&b"a\r\nb"[..])
        .arg("EX")
        .arg(60);
    let mut out = BytesMut::new();
    c.write_to(&mut out);
    assert_eq!(
        decode_chunked(&out, &[1]),
        vec![Value::Array(vec![
            bulk(b"SET"),
            bulk(b"user:{42}:name"),
            bulk(b"a\r\nb"),
            bulk(b"EX"),
            bulk(b"60"),
        ])]
    );
}
