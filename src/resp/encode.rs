//! RESP encoding, straight into an output buffer.
//!
//! Clients only ever send commands, which RESP writes as an array of bulk strings
//! ([`encode_command`]); [`encode_value`] writes any [`Value`] and serves tests, fake
//! servers and the round-trip property tests.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use crate::resp::Value;

/// Writes `*<n>\r\n` (or another aggregate header) for `n` elements.
///
/// ```
/// let mut out = bytes::BytesMut::new();
/// redcluster::resp::encode_header(b'*', 2, &mut out);
/// assert_eq!(&out[..], b"*2\r\n");
/// ```
pub fn encode_header(tag: u8, n: usize, out: &mut BytesMut) {
    // Under 100 (nearly every argument length and count) the header is written as one
    // fixed-size piece: the general case costs three copies of a few bytes each, and
    // every argument of every command has a header.
    let digit = |d: usize| b"0123456789"[d % 10];
    match n {
        0..=9 => out.put_slice(&[tag, digit(n), b'\r', b'\n']),
        10..=99 => out.put_slice(&[tag, digit(n / 10), digit(n), b'\r', b'\n']),
        _ => {
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(n);
            out.reserve(digits.len() + 3);
            out.put_u8(tag);
            out.put_slice(digits.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
}

/// Writes one bulk string: `$<len>\r\n<bytes>\r\n`.
///
/// ```
/// let mut out = bytes::BytesMut::new();
/// redcluster::resp::encode_bulk(b"hello", &mut out);
/// assert_eq!(&out[..], b"$5\r\nhello\r\n");
/// ```
pub fn encode_bulk(bytes: &[u8], out: &mut BytesMut) {
    out.reserve(bytes.len() + 25);
    encode_header(b'$', bytes.len(), out);
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// Writes a command as an array of bulk strings, the only form servers accept from a
/// client.
///
/// ```
/// let mut out = bytes::BytesMut::new();
/// redcluster::resp::encode_command([&b"GET"[..], b"k"], &mut out);
/// assert_eq!(&out[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
/// ```
pub fn encode_command<'a, I>(args: I, out: &mut BytesMut)
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: ExactSizeIterator,
{
    let args = args.into_iter();
    encode_header(b'*', args.len(), out);
    for arg in args {
        encode_bulk(arg, out);
    }
}

/// Writes any value in its RESP3 form (`Nil` as `_`, doubles as `,`, ...).
///
/// ```
/// use redcluster::resp::{decode_all, encode_value, Value};
/// let reply = Value::Array(vec![Value::Int(1), Value::Nil]);
/// let mut out = bytes::BytesMut::new();
/// encode_value(&reply, &mut out);
/// assert_eq!(&out[..], b"*2\r\n:1\r\n_\r\n");
/// assert_eq!(decode_all(&out).unwrap(), [reply]);
/// ```
pub fn encode_value(value: &Value, out: &mut BytesMut) {
    match value {
        Value::Nil => out.put_slice(b"_\r\n"),
        Value::Int(n) => {
            let mut digits = itoa::Buffer::new();
            out.put_u8(b':');
            out.put_slice(digits.format(*n).as_bytes());
            out.put_slice(b"\r\n");
        }
        Value::Bulk(b) => encode_bulk(b, out),
        Value::Simple(s) => line(b'+', s, out),
        Value::ServerError(e) => {
            // A simple error cannot carry CR or LF; a blob error can carry anything.
            let text = e.as_bytes();
            if text.contains(&b'\r') || text.contains(&b'\n') {
                blob(b'!', text, out);
            } else {
                line(b'-', text, out);
            }
        }
        Value::Array(items) => seq(b'*', items, out),
        Value::Set(items) => seq(b'~', items, out),
        Value::Push(items) => seq(b'>', items, out),
        Value::Map(pairs) => map(b'%', pairs, out),
        Value::Double(d) => {
            out.put_u8(b',');
            if d.is_nan() {
                out.put_slice(b"nan");
            } else if d.is_infinite() {
                out.put_slice(if *d > 0.0 { b"inf" } else { b"-inf" });
            } else {
                // Debug prints the shortest text that parses back to the same f64.
                let _ = write!(out, "{d:?}");
            }
            out.put_slice(b"\r\n");
        }
        Value::Bool(b) => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Value::BigNumber(digits) => line(b'(', digits, out),
        Value::Verbatim { format, text } => {
            let mut digits = itoa::Buffer::new();
            out.put_u8(b'=');
            out.put_slice(digits.format(text.len() + 4).as_bytes());
            out.put_slice(b"\r\n");
            out.put_slice(format);
            out.put_u8(b':');
            out.put_slice(text);
            out.put_slice(b"\r\n");
        }
        Value::Attribute { attributes, data } => {
            map(b'|', attributes, out);
            encode_value(data, out);
        }
    }
}

fn line(tag: u8, text: &[u8], out: &mut BytesMut) {
    out.reserve(text.len() + 3);
    out.put_u8(tag);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

fn blob(tag: u8, bytes: &[u8], out: &mut BytesMut) {
    let mut digits = itoa::Buffer::new();
    out.put_u8(tag);
    out.put_slice(digits.format(bytes.len()).as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

fn seq(tag: u8, items: &[Value], out: &mut BytesMut) {
    encode_header(tag, items.len(), out);
    for item in items {
        encode_value(item, out);
    }
}

fn map(tag: u8, pairs: &[(Value, Value)], out: &mut BytesMut) {
    encode_header(tag, pairs.len(), out);
    for (k, v) in pairs {
        encode_value(k, out);
        encode_value(v, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ServerError;
    use bytes::Bytes;

    #[test]
    fn headers_on_both_sides_of_the_short_forms() {
        for n in [0, 7, 9, 10, 42, 99, 100, 512, 1_000_000] {
            let mut out = BytesMut::new();
            encode_header(b'$', n, &mut out);
            assert_eq!(out, format!("${n}\r\n").as_bytes(), "{n}");
        }
    }

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_value(v, &mut out);
        out.to_vec()
    }

    #[test]
    fn encodes_every_type() {
        assert_eq!(enc(&Value::Nil), b"_\r\n");
        assert_eq!(enc(&Value::Int(-5)), b":-5\r\n");
        assert_eq!(
            enc(&Value::Bulk(Bytes::from_static(b"a\r\nb"))),
            b"$4\r\na\r\nb\r\n"
        );
        assert_eq!(enc(&Value::Simple(Bytes::from_static(b"OK"))), b"+OK\r\n");
        assert_eq!(
            enc(&Value::ServerError(ServerError::new("ERR x"))),
            b"-ERR x\r\n"
        );
        assert_eq!(
            enc(&Value::ServerError(ServerError::new("ERR\r\nx"))),
            b"!6\r\nERR\r\nx\r\n"
        );
        assert_eq!(enc(&Value::Double(f64::NEG_INFINITY)), b",-inf\r\n");
        assert_eq!(enc(&Value::Double(f64::NAN)), b",nan\r\n");
        assert_eq!(enc(&Value::Double(1e300)), b",1e300\r\n");
        assert_eq!(enc(&Value::Bool(true)), b"#t\r\n");
        assert_eq!(
            enc(&Value::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"hi")
            }),
            b"=6\r\ntxt:hi\r\n"
        );
        assert_eq!(
            enc(&Value::Map(vec![(Value::Int(1), Value::Set(vec![]))])),
            b"%1\r\n:1\r\n~0\r\n"
        );
        assert_eq!(enc(&Value::Push(vec![Value::Nil])), b">1\r\n_\r\n");
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = BytesMut::new();
        encode_command([&b"SET"[..], b"key", b""], &mut out);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$0\r\n\r\n");
    }
}
