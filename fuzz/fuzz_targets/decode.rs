//! Fuzzes the incremental RESP decoder.
//!
//! The first bytes of the input steer the run (chunk sizes, tight or default limits); the
//! rest is the byte stream. It is decoded in one piece and again in chunks, as reads from
//! a socket would deliver it, and both must give the same values and end the same way.
//! Every decoded value must then survive encoding and decoding again unchanged.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use redcluster::resp::{decode_all, encode_value, Decoder, Limits};
use redcluster::Value;

/// How many leading input bytes steer the run instead of being decoded.
const CONTROL: usize = 4;

/// Buffer room the decoder may reserve beyond twice the bytes fed to it: memory must
/// follow what arrived, not what a header claims (the decoder allows itself 1 MiB).
const MAX_EXTRA_ROOM: usize = 2 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let (control, stream) = if data.len() >= CONTROL {
        data.split_at(CONTROL)
    } else {
        (&[][..], data)
    };
    // Tight limits let inputs of a few hundred bytes reach every limit check.
    let limits = if control.first().is_some_and(|b| b & 0x80 != 0) {
        Limits::default()
            .max_bulk_len(64)
            .max_aggregate_len(8)
            .max_depth(4)
            .max_line_len(32)
    } else {
        Limits::default()
    };
    let mut sizes: Vec<usize> = control.iter().map(|&b| 1 + usize::from(b & 0x3f)).collect();
    if sizes.is_empty() {
        sizes.push(1);
    }

    let whole = run(limits, stream, &[stream.len().max(1)]);
    let chunked = run(limits, stream, &sizes);
    assert!(
        same_all(&whole.values, &chunked.values),
        "whole and chunked decoding disagree:\n{:?}\n{:?}",
        whole.values,
        chunked.values
    );
    assert_eq!(
        whole.end, chunked.end,
        "whole and chunked decoding end differently"
    );

    for value in &whole.values {
        round_trip(value);
    }
});

/// How a run over the whole stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The decoder wanted more bytes: this many were left in the buffer.
    NeedMore { left: usize, mid_frame: bool },
    /// The decoder reported a protocol error.
    Error,
}

struct Outcome {
    values: Vec<Value>,
    end: End,
}

/// Feeds `stream` to one decoder through one buffer, `sizes` (cycled) bytes at a time,
/// taking every complete value after each chunk.
fn run(limits: Limits, stream: &[u8], sizes: &[usize]) -> Outcome {
    let mut decoder = Decoder::with_limits(limits);
    let mut buf = BytesMut::new();
    let mut values = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(v)) => {
                    assert!(
                        buf.len() < before,
                        "a value was returned without consuming input"
                    );
                    values.push(v);
                }
                Ok(None) => {
                    let fed = stream.len() - rest.len();
                    assert!(
                        buf.capacity() <= 2 * fed + MAX_EXTRA_ROOM,
                        "{} bytes of buffer for {fed} bytes of input",
                        buf.capacity()
                    );
                    break;
                }
                Err(e) => {
                    assert!(matches!(e, redcluster::Error::Protocol(_)), "{e:?}");
                    assert!(!decoder.is_mid_frame(), "the decoder resets after an error");
                    return Outcome {
                        values,
                        end: End::Error,
                    };
                }
            }
        }
    }
    Outcome {
        values,
        end: End::NeedMore {
            left: buf.len(),
            mid_frame: decoder.is_mid_frame(),
        },
    }
}

/// Encoding a decoded value and decoding it again gives it back, and its encoding is
/// stable from then on.
fn round_trip(value: &Value) {
    let mut encoded = BytesMut::new();
    encode_value(value, &mut encoded);
    let again = decode_all(&encoded).expect("the encoder wrote invalid RESP");
    assert_eq!(again.len(), 1, "one value encoded, {} decoded", again.len());
    assert!(
        same(value, &again[0]),
        "{value:?} round-tripped as {:?}",
        again[0]
    );
    let mut re_encoded = BytesMut::new();
    encode_value(&again[0], &mut re_encoded);
    assert_eq!(
        encoded, re_encoded,
        "the encoding of {value:?} is not stable"
    );
}

/// Structural equality where any NaN matches any NaN and other doubles match bit for bit.
fn same(a: &Value, b: &Value) -> bool {
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
        | (Value::Push(x), Value::Push(y)) => same_all(x, y),
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
