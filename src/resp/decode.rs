//! Incremental RESP2/RESP3 decoder.
//!
//! [`Decoder::decode`] takes the bytes received so far and returns `Ok(Some(value))` for
//! each complete top-level reply, or `Ok(None)` when it needs more bytes. Parts of an
//! aggregate that are already complete are consumed from the buffer and kept on the
//! decoder's stack, so a large reply arriving in many reads is parsed once, not again
//! on every read: only the element that is still incomplete is looked at again.
//!
//! Hostile or broken input cannot make it panic or allocate without bound: nesting depth,
//! bulk length and aggregate length are limited ([`Limits`]), capacity is never reserved
//! from a declared count alone, and every malformed frame is an [`Error::Protocol`].
//! After an error the stream is out of sync and the connection must be closed.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, Result, ServerError};
use crate::resp::Value;

/// Limits on what the decoder accepts. The defaults suit any reply a Redis server sends.
///
/// ```
/// use redcluster::resp::{Decoder, Limits};
/// // A connection that only ever reads small replies.
/// let limits = Limits::default().max_bulk_len(1 << 20).max_depth(8);
/// assert_eq!(Decoder::with_limits(limits).limits().max_depth, 8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest bulk string, blob error or verbatim string, in bytes. Default 512 MiB,
    /// the server's own `proto-max-bulk-len` default.
    pub max_bulk_len: usize,
    /// Most elements in one array, set or push, or pairs in one map. Default 2^28.
    pub max_aggregate_len: usize,
    /// Deepest nesting of aggregates. Default 64; real replies rarely nest beyond 7.
    pub max_depth: usize,
    /// Longest simple string, error line, number or length header. Default 1 MiB.
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_aggregate_len: 1 << 28,
            max_depth: 64,
            max_line_len: 1024 * 1024,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_bulk_len`].
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use redcluster::resp::{Decoder, Limits};
    /// let mut decoder = Decoder::with_limits(Limits::default().max_bulk_len(4));
    /// assert!(decoder.decode(&mut BytesMut::from(&b"$5\r\nhello\r\n"[..])).is_err());
    /// ```
    pub fn max_bulk_len(mut self, n: usize) -> Self {
        self.max_bulk_len = n;
        self
    }
    /// Sets [`Limits::max_aggregate_len`].
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use redcluster::resp::{Decoder, Limits};
    /// let mut decoder = Decoder::with_limits(Limits::default().max_aggregate_len(2));
    /// assert!(decoder.decode(&mut BytesMut::from(&b"*3\r\n:1\r\n:2\r\n:3\r\n"[..])).is_err());
    /// ```
    pub fn max_aggregate_len(mut self, n: usize) -> Self {
        self.max_aggregate_len = n;
        self
    }
    /// Sets [`Limits::max_depth`].
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use redcluster::resp::{Decoder, Limits};
    /// let mut decoder = Decoder::with_limits(Limits::default().max_depth(1));
    /// assert!(decoder.decode(&mut BytesMut::from(&b"*1\r\n*1\r\n:1\r\n"[..])).is_err());
    /// ```
    pub fn max_depth(mut self, n: usize) -> Self {
        self.max_depth = n;
        self
    }
    /// Sets [`Limits::max_line_len`].
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use redcluster::resp::{Decoder, Limits};
    /// let mut decoder = Decoder::with_limits(Limits::default().max_line_len(8));
    /// let mut buf = BytesMut::from(&b"+a rather long status line\r\n"[..]);
    /// assert!(decoder.decode(&mut buf).is_err());
    /// ```
    pub fn max_line_len(mut self, n: usize) -> Self {
        self.max_line_len = n;
        self
    }
}

/// An aggregate whose elements are still arriving.
#[derive(Debug)]
enum Partial {
    /// Array, set or push: `remaining` more elements expected.
    Seq {
        kind: SeqKind,
        items: Vec<Value>,
        remaining: usize,
    },
    /// Map or attribute map: `remaining` more pairs expected; `key` holds a pair's
    /// first half.
    Map {
        attribute: bool,
        pairs: Vec<(Value, Value)>,
        key: Option<Value>,
        remaining: usize,
    },
    /// Attributes that were read, waiting for the value they describe.
    Attached { attributes: Vec<(Value, Value)> },
}

/// Whether `value` is a push, with attributes or without.
fn is_push(value: &Value) -> bool {
    match value {
        Value::Push(_) => true,
        Value::Attribute { data, .. } => is_push(data),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
enum SeqKind {
    Array,
    Set,
    Push,
}

impl Partial {
    /// Adds one element; returns the finished aggregate when this was its last element.
    fn push(&mut self, value: Value) -> Option<Value> {
        match self {
            Partial::Seq {
                kind,
                items,
                remaining,
            } => {
                items.push(value);
                *remaining -= 1;
                (*remaining == 0).then(|| seq_value(*kind, std::mem::take(items)))
            }
            Partial::Map {
                attribute,
                pairs,
                key,
                remaining,
            } => match key.take() {
                None => {
                    *key = Some(value);
                    None
                }
                Some(k) => {
                    pairs.push((k, value));
                    *remaining -= 1;
                    if *remaining > 0 {
                        return None;
                    }
                    let pairs = std::mem::take(pairs);
                    if *attribute {
                        // Attributes describe the value that follows; keep waiting for it.
                        *self = Partial::Attached { attributes: pairs };
                        None
                    } else {
                        Some(Value::Map(pairs))
                    }
                }
            },
            Partial::Attached { attributes } => Some(Value::Attribute {
                attributes: std::mem::take(attributes),
                data: Box::new(value),
            }),
        }
    }
}

fn seq_value(kind: SeqKind, items: Vec<Value>) -> Value {
    match kind {
        SeqKind::Array => Value::Array(items),
        SeqKind::Set => Value::Set(items),
        SeqKind::Push => Value::Push(items),
    }
}

/// What one step of parsing produced.
enum Step {
    /// A complete value (a scalar, or an empty aggregate).
    Value(Value),
    /// The header of a non-empty aggregate.
    Open(Partial),
}

/// Most elements reserved up front for an aggregate, whatever count it declares: the
/// rest grows as elements really arrive, so a lying header costs nothing.
const MAX_PREALLOC: usize = 1024;

/// Most buffer room reserved for the rest of a bulk string beyond what has already
/// arrived: a header alone may claim 512 MiB, and only bytes that really come in should
/// cost memory.
const MAX_BULK_PREALLOC: usize = 1024 * 1024;

/// Incremental RESP decoder; keep one per connection.
///
/// ```
/// # fn main() -> redcluster::Result<()> {
/// use bytes::BytesMut;
/// use redcluster::resp::{Decoder, Value};
/// let mut decoder = Decoder::new();
/// let mut buf = BytesMut::from(&b"$5\r\nhel"[..]); // the first read
/// assert_eq!(decoder.decode(&mut buf)?, None); // needs more bytes
/// buf.extend_from_slice(b"lo\r\n"); // the next read
/// assert_eq!(decoder.decode(&mut buf)?, Some(Value::Bulk("hello".into())));
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    stack: Vec<Partial>,
    /// How far into the buffer a search for CRLF already looked without finding one,
    /// so a long line arriving in pieces is scanned once.
    scanned: usize,
    /// Whether a push met inside another value is dropped (see
    /// [`Decoder::out_of_band_pushes`]).
    drop_nested_pushes: bool,
}

impl Decoder {
    /// A decoder with default [`Limits`].
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// use bytes::BytesMut;
    /// use redcluster::resp::{Decoder, Value};
    /// let mut buf = BytesMut::from(&b":42\r\n"[..]);
    /// assert_eq!(Decoder::new().decode(&mut buf)?, Some(Value::Int(42)));
    /// # Ok(()) }
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with the given limits.
    ///
    /// ```
    /// use redcluster::resp::{Decoder, Limits};
    /// let decoder = Decoder::with_limits(Limits::default().max_bulk_len(64 * 1024));
    /// ```
    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            limits,
            ..Self::default()
        }
    }

    /// Drops a push (`>`) met inside another value instead of making it an element
    /// of that value. A push is out-of-band data, never part of a reply, but a server
    /// may slip one into another reply (a client-tracking invalidation within an
    /// `MGET`'s, Redis 6 and early 7.0): taken as an element, it ends the reply one
    /// element early, and its last element becomes the next reply, so every reply after
    /// is matched to the wrong request. Pushes at top level are returned as ever. Off
    /// by default (a decoder then reads any value, as it was written).
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// use bytes::BytesMut;
    /// use redcluster::resp::{Decoder, Value};
    /// let wire = &b"*2\r\n:1\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n:2\r\n"[..];
    /// let mut decoder = Decoder::new().out_of_band_pushes();
    /// let reply = decoder.decode(&mut BytesMut::from(wire))?;
    /// assert_eq!(reply, Some(Value::Array(vec![Value::Int(1), Value::Int(2)])));
    /// # Ok(()) }
    /// ```
    pub fn out_of_band_pushes(mut self) -> Self {
        self.drop_nested_pushes = true;
        self
    }

    /// The limits in force.
    ///
    /// ```
    /// use redcluster::resp::{Decoder, Limits};
    /// assert_eq!(*Decoder::new().limits(), Limits::default());
    /// ```
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether a reply is partly decoded (some of its bytes consumed, not yet returned).
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// use bytes::BytesMut;
    /// use redcluster::resp::Decoder;
    /// let mut decoder = Decoder::new();
    /// let mut buf = BytesMut::from(&b"*2\r\n:1\r\n"[..]); // an array, one element so far
    /// assert_eq!(decoder.decode(&mut buf)?, None);
    /// assert!(decoder.is_mid_frame());
    /// # Ok(()) }
    /// ```
    pub fn is_mid_frame(&self) -> bool {
        !self.stack.is_empty()
    }

    /// Decodes the next complete top-level value from `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete value yet; call again with the same
    /// buffer once more bytes are appended. Consumed bytes are removed from `buf`; bulk
    /// strings in the result are slices of it, not copies.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] when the bytes are not valid RESP or exceed the [`Limits`].
    /// The decoder is reset; the stream cannot be resynchronised.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// use bytes::BytesMut;
    /// use redcluster::resp::{Decoder, Value};
    /// let mut decoder = Decoder::new();
    /// let mut buf = BytesMut::from(&b"+OK\r\n:1\r\n"[..]); // two replies in one read
    /// assert_eq!(decoder.decode(&mut buf)?, Some(Value::Simple("OK".into())));
    /// assert_eq!(decoder.decode(&mut buf)?, Some(Value::Int(1)));
    /// assert_eq!(decoder.decode(&mut buf)?, None);
    /// # Ok(()) }
    /// ```
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Value>> {
        match self.decode_inner(buf) {
            Err(e) => {
                self.stack.clear();
                self.scanned = 0;
                Err(e)
            }
            ok => ok,
        }
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Value>> {
        loop {
            let step = match self.step(buf)? {
                None => return Ok(None),
                Some(step) => step,
            };
            let mut value = match step {
                Step::Value(v) => v,
                Step::Open(partial) => {
                    if self.stack.len() >= self.limits.max_depth {
                        return Err(protocol(format!(
                            "nesting deeper than {} levels",
                            self.limits.max_depth
                        )));
                    }
                    self.stack.push(partial);
                    continue;
                }
            };
            // Hand the finished value up the stack as far as it completes aggregates.
            loop {
                let Some(top) = self.stack.last_mut() else {
                    return Ok(Some(value));
                };
                // Inside an aggregate only: attributes just read belong to the push.
                if self.drop_nested_pushes
                    && !matches!(top, Partial::Attached { .. })
                    && is_push(&value)
                {
                    break;
                }
                match top.push(value) {
                    Some(done) => {
                        self.stack.pop();
                        value = done;
                    }
                    None => break,
                }
            }
        }
    }

    /// Parses one scalar or aggregate header at the start of `buf`, consuming it.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Step>> {
        // Reject a bad type byte at once rather than waiting for a CRLF that may never come.
        if let Some(&tag) = buf.first() {
            if !b"+-:$!=*~>%|_#,(".contains(&tag) {
                return Err(protocol(format!("unknown type byte 0x{tag:02x}")));
            }
        }
        let Some(line_end) = self.find_crlf(buf)? else {
            return Ok(None);
        };
        let tag = buf[0];
        // `line` is everything between the type byte and CRLF.
        let line = &buf[1..line_end];
        let header_len = line_end + 2;
        let step = match tag {
            b'+' | b'-' => {
                if line.contains(&b'\r') {
                    return Err(protocol("CR inside a simple string"));
                }
                if tag == b'+' && line == b"OK" {
                    // Most writes answer this: a static string spares the read buffer a
                    // reference taken and dropped per reply.
                    buf.advance(header_len);
                    self.scanned = 0;
                    return Ok(Some(Step::Value(Value::Simple(Bytes::from_static(b"OK")))));
                }
                buf.advance(1);
                let text = buf.split_to(line_end - 1).freeze();
                buf.advance(2);
                self.scanned = 0;
                return Ok(Some(Step::Value(if tag == b'+' {
                    Value::Simple(text)
                } else {
                    Value::ServerError(ServerError::new(text))
                })));
            }
            b':' => Step::Value(Value::Int(parse_i64(line)?)),
            b'$' | b'!' | b'=' => {
                let len = parse_i64(line)?;
                if len == -1 && tag == b'$' {
                    Step::Value(Value::Nil)
                } else {
                    return self.blob(buf, tag, header_len, len);
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let len = parse_i64(line)?;
                if len == -1 && tag == b'*' {
                    Step::Value(Value::Nil)
                } else {
                    self.aggregate(tag, len)?
                }
            }
            b'_' => {
                if !line.is_empty() {
                    return Err(protocol("null with a payload"));
                }
                Step::Value(Value::Nil)
            }
            b'#' => Step::Value(Value::Bool(match line {
                b"t" => true,
                b"f" => false,
                _ => return Err(protocol("boolean is neither t nor f")),
            })),
            b',' => Step::Value(Value::Double(parse_double(line)?)),
            b'(' => {
                validate_big_number(line)?;
                buf.advance(1);
                let digits = buf.split_to(line_end - 1).freeze();
                buf.advance(2);
                self.scanned = 0;
                return Ok(Some(Step::Value(Value::BigNumber(digits))));
            }
            other => {
                return Err(protocol(format!("unknown type byte 0x{other:02x}")));
            }
        };
        buf.advance(header_len);
        self.scanned = 0;
        Ok(Some(step))
    }

    /// Bulk string, blob error or verbatim string: a length header, then that many bytes.
    fn blob(
        &mut self,
        buf: &mut BytesMut,
        tag: u8,
        header_len: usize,
        len: i64,
    ) -> Result<Option<Step>> {
        let len = usize::try_from(len).map_err(|_| protocol("negative length"))?;
        if len > self.limits.max_bulk_len {
            return Err(protocol(format!(
                "bulk length {len} exceeds the limit of {}",
                self.limits.max_bulk_len
            )));
        }
        let total = header_len + len + 2;
        if buf.len() < total {
            // The header is tiny and parsed again next time; make room for the rest now
            // so a large value does not grow the buffer step by step. Room is bounded by
            // what has arrived, so it doubles at most per call and a lying header cannot
            // reserve hundreds of megabytes.
            let room = (total - buf.len()).min(buf.len().max(MAX_BULK_PREALLOC));
            buf.reserve(room);
            return Ok(None);
        }
        if &buf[header_len + len..total] != b"\r\n" {
            return Err(protocol("bulk string not terminated by CRLF"));
        }
        buf.advance(header_len);
        let data = buf.split_to(len).freeze();
        buf.advance(2);
        self.scanned = 0;
        let value = match tag {
            b'$' => Value::Bulk(data),
            b'!' => Value::ServerError(ServerError::new(data)),
            _ => {
                if data.len() < 4 || data[3] != b':' {
                    return Err(protocol("verbatim string without a format prefix"));
                }
                let format = [data[0], data[1], data[2]];
                Value::Verbatim {
                    format,
                    text: data.slice(4..),
                }
            }
        };
        Ok(Some(Step::Value(value)))
    }

    fn aggregate(&self, tag: u8, len: i64) -> Result<Step> {
        let len = usize::try_from(len).map_err(|_| protocol("negative aggregate length"))?;
        if len > self.limits.max_aggregate_len {
            return Err(protocol(format!(
                "aggregate of {len} elements exceeds the limit of {}",
                self.limits.max_aggregate_len
            )));
        }
        let cap = len.min(MAX_PREALLOC);
        let kind = match tag {
            b'*' => SeqKind::Array,
            b'~' => SeqKind::Set,
            b'>' => SeqKind::Push,
            attribute_or_map => {
                let attribute = attribute_or_map == b'|';
                if len == 0 && !attribute {
                    return Ok(Step::Value(Value::Map(Vec::new())));
                }
                if len == 0 {
                    return Ok(Step::Open(Partial::Attached {
                        attributes: Vec::new(),
                    }));
                }
                return Ok(Step::Open(Partial::Map {
                    attribute,
                    pairs: Vec::with_capacity(cap),
                    key: None,
                    remaining: len,
                }));
            }
        };
        if len == 0 {
            return Ok(Step::Value(seq_value(kind, Vec::new())));
        }
        Ok(Step::Open(Partial::Seq {
            kind,
            items: Vec::with_capacity(cap),
            remaining: len,
        }))
    }

    /// Index of the CR of the first CRLF in `buf`, or `None` when the line is incomplete.
    fn find_crlf(&mut self, buf: &BytesMut) -> Result<Option<usize>> {
        let mut from = self.scanned;
        loop {
            match memchr::memchr(b'\r', &buf[from.min(buf.len())..]) {
                Some(i) => {
                    let cr = from + i;
                    if cr + 1 >= buf.len() {
                        // CR is the last byte so far: LF may follow in the next read.
                        self.scanned = cr;
                        return self.check_line_len(cr).map(|_| None);
                    }
                    if buf[cr + 1] == b'\n' {
                        self.check_line_len(cr)?;
                        return Ok(Some(cr));
                    }
                    // A lone CR inside a line: only simple strings could hold one, and
                    // they reject it once the line is complete.
                    from = cr + 1;
                }
                None => {
                    self.scanned = buf.len();
                    return self.check_line_len(buf.len()).map(|_| None);
                }
            }
        }
    }

    fn check_line_len(&self, len: usize) -> Result<()> {
        if len > self.limits.max_line_len {
            return Err(protocol(format!(
                "line longer than {} bytes",
                self.limits.max_line_len
            )));
        }
        Ok(())
    }
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

/// Parses a RESP integer: an optional `-` (or `+`) and 1 to 19 ASCII digits, no overflow.
fn parse_i64(line: &[u8]) -> Result<i64> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(protocol("integer has no digits or too many"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(protocol("integer contains a non-digit"));
        }
        let digit = i64::from(d - b'0');
        // Accumulate negatively so that i64::MIN parses too.
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_sub(digit))
            .ok_or_else(|| protocol("integer out of range"))?;
    }
    if negative {
        Ok(n)
    } else {
        n.checked_neg()
            .ok_or_else(|| protocol("integer out of range"))
    }
}

fn parse_double(line: &[u8]) -> Result<f64> {
    let text = std::str::from_utf8(line).map_err(|_| protocol("double is not ASCII"))?;
    // RESP3 spells infinities `inf`/`-inf` and NaN `nan`; Rust's parser accepts those
    // and the usual decimal and exponent forms.
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'));
    if !ok {
        return Err(protocol("malformed double"));
    }
    text.parse::<f64>()
        .map_err(|_| protocol("malformed double"))
}

fn validate_big_number(line: &[u8]) -> Result<()> {
    let digits = match line.split_first() {
        Some((b'-' | b'+', rest)) => rest,
        _ => line,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(protocol("malformed big number"));
    }
    Ok(())
}

/// Decodes every complete value in `bytes` at once; an incomplete tail is an error.
/// Handy for tests and for replies already read whole.
///
/// # Errors
///
/// [`Error::Protocol`] for invalid input or a truncated last value.
///
/// # Examples
///
/// ```
/// # fn main() -> redcluster::Result<()> {
/// use redcluster::resp::{decode_all, Value};
/// assert_eq!(decode_all(b":1\r\n_\r\n")?, [Value::Int(1), Value::Nil]);
/// assert!(decode_all(b"$5\r\nhel").is_err()); // truncated
/// # Ok(()) }
/// ```
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Value>> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    while !buf.is_empty() {
        match decoder.decode(&mut buf)? {
            Some(v) => out.push(v),
            None => return Err(protocol("truncated value at end of input")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// With [`Decoder::out_of_band_pushes`], a push inside an aggregate is dropped, with
    /// its attributes too; one at top level is returned, with its attributes.
    #[test]
    fn out_of_band_pushes_are_dropped_inside_aggregates_only() {
        let mut decoder = Decoder::new().out_of_band_pushes();
        let mut buf = BytesMut::from(
            &b"*2\r\n:1\r\n|1\r\n+k\r\n+v\r\n>1\r\n+x\r\n:2\r\n|1\r\n+k\r\n+v\r\n>1\r\n+y\r\n"[..],
        );
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Value::Array(vec![Value::Int(1), Value::Int(2)]))
        );
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Value::Attribute {
                attributes: vec![(Value::Simple(b("k")), Value::Simple(b("v")))],
                data: Box::new(Value::Push(vec![Value::Simple(b("y"))])),
            })
        );
        assert!(buf.is_empty());
    }

    fn one(input: &str) -> Value {
        let all = decode_all(input.as_bytes()).expect("valid");
        assert_eq!(all.len(), 1, "one value in {input:?}");
        all.into_iter().next().unwrap()
    }

    fn err(input: &[u8]) -> String {
        let mut buf = BytesMut::from(input);
        match Decoder::new().decode(&mut buf) {
            Err(Error::Protocol(m)) => m,
            other => panic!("expected a protocol error for {input:?}, got {other:?}"),
        }
    }

    #[test]
    fn every_type() {
        assert_eq!(one("+OK\r\n"), Value::Simple(b("OK")));
        assert_eq!(
            one("-ERR unknown\r\n"),
            Value::ServerError(ServerError::new("ERR unknown"))
        );
        assert_eq!(one(":-42\r\n"), Value::Int(-42));
        assert_eq!(one(":+7\r\n"), Value::Int(7));
        assert_eq!(one("$5\r\nhe\r\no\r\n"), Value::Bulk(b("he\r\no")));
        assert_eq!(one("$0\r\n\r\n"), Value::Bulk(b("")));
        assert_eq!(one("$-1\r\n"), Value::Nil);
        assert_eq!(one("*-1\r\n"), Value::Nil);
        assert_eq!(one("_\r\n"), Value::Nil);
        assert_eq!(one("*0\r\n"), Value::Array(vec![]));
        assert_eq!(
            one("*2\r\n:1\r\n*1\r\n+a\r\n"),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::Simple(b("a"))])
            ])
        );
        assert_eq!(
            one("%2\r\n+a\r\n:1\r\n+b\r\n_\r\n"),
            Value::Map(vec![
                (Value::Simple(b("a")), Value::Int(1)),
                (Value::Simple(b("b")), Value::Nil)
            ])
        );
        assert_eq!(one("%0\r\n"), Value::Map(vec![]));
        assert_eq!(one("~1\r\n#t\r\n"), Value::Set(vec![Value::Bool(true)]));
        assert_eq!(one("#f\r\n"), Value::Bool(false));
        assert_eq!(one(",1.5\r\n"), Value::Double(1.5));
        assert_eq!(one(",-2e3\r\n"), Value::Double(-2000.0));
        assert_eq!(one(",inf\r\n"), Value::Double(f64::INFINITY));
        assert_eq!(one(",-inf\r\n"), Value::Double(f64::NEG_INFINITY));
        match one(",nan\r\n") {
            Value::Double(d) => assert!(d.is_nan()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            one("(-3492890328409238509324850943850943825024385\r\n"),
            Value::BigNumber(b("-3492890328409238509324850943850943825024385"))
        );
        assert_eq!(
            one("=15\r\ntxt:Some string\r\n"),
            Value::Verbatim {
                format: *b"txt",
                text: b("Some string")
            }
        );
        assert_eq!(
            one("!21\r\nSYNTAX invalid syntax\r\n"),
            Value::ServerError(ServerError::new("SYNTAX invalid syntax"))
        );
        assert_eq!(
            one(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n"),
            Value::Push(vec![
                Value::Bulk(b("message")),
                Value::Bulk(b("ch")),
                Value::Bulk(b("x"))
            ])
        );
        assert_eq!(
            one("|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2\r\n"),
            Value::Attribute {
                attributes: vec![(
                    Value::Simple(b("key-popularity")),
                    Value::Map(vec![(Value::Bulk(b("a")), Value::Double(0.19))])
                )],
                data: Box::new(Value::Array(vec![Value::Int(2)])),
            }
        );
        // An attribute nested inside an aggregate attaches to the element that follows.
        assert_eq!(
            one("*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n"),
            Value::Array(vec![
                Value::Attribute {
                    attributes: vec![(Value::Simple(b("k")), Value::Simple(b("v")))],
                    data: Box::new(Value::Int(1)),
                },
                Value::Int(2)
            ])
        );
        assert_eq!(one(":9223372036854775807\r\n"), Value::Int(i64::MAX));
        assert_eq!(one(":-9223372036854775808\r\n"), Value::Int(i64::MIN));
    }

    #[test]
    fn partial_input_needs_more_and_keeps_completed_elements() {
        let mut d = Decoder::new();
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nfoo\r\n:1"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        // The header and the finished first element are consumed; the partial integer
        // stays for the next call.
        assert_eq!(&buf[..], b":1");
        assert!(d.is_mid_frame());
        buf.extend_from_slice(b"\r\n$2\r\nb");
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"$2\r\nb");
        buf.extend_from_slice(b"a\r\n+next\r\n");
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Value::Array(vec![
                Value::Bulk(b("foo")),
                Value::Int(1),
                Value::Bulk(b("ba"))
            ]))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Value::Simple(b("next"))));
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(!d.is_mid_frame());
    }

    #[test]
    fn bulk_is_a_slice_of_the_read_buffer() {
        let mut buf = BytesMut::from(&b"$5\r\nhello\r\n"[..]);
        let start = buf.as_ptr() as usize;
        let Some(Value::Bulk(bytes)) = Decoder::new().decode(&mut buf).unwrap() else {
            panic!("expected a bulk string")
        };
        assert_eq!(bytes.as_ptr() as usize, start + 4, "no copy was made");
    }

    #[test]
    fn long_line_arriving_in_pieces_is_scanned_once() {
        let mut d = Decoder::new();
        let mut buf = BytesMut::from(&b"+aaaa"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.scanned, 5);
        buf.extend_from_slice(b"bbbb\r");
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.scanned, 9, "resumes at the CR that may be followed by LF");
        buf.extend_from_slice(b"\n");
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Value::Simple(b("aaaabbbb")))
        );
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        assert!(err(b"?\r\n").contains("unknown type byte"));
        assert!(err(b"\r\n").contains("unknown type byte"));
        assert!(
            err(b"?").contains("unknown type byte"),
            "no CRLF needed to reject"
        );
        assert!(err(b":12a\r\n").contains("non-digit"));
        assert!(err(b":\r\n").contains("no digits"));
        assert!(err(b":-\r\n").contains("no digits"));
        assert!(err(b":99999999999999999999\r\n").contains("too many"));
        assert!(err(b":9223372036854775808\r\n").contains("out of range"));
        assert!(err(b"$-2\r\n").contains("negative"));
        assert!(err(b"!-1\r\n").contains("negative"));
        assert!(err(b"$3\r\nabcd\r\n").contains("CRLF"));
        assert!(
            err(b"$?\r\n").contains("non-digit"),
            "streamed strings are refused"
        );
        assert!(err(b"*-2\r\n").contains("negative"));
        assert!(err(b"%-1\r\n").contains("negative"));
        assert!(err(b"_x\r\n").contains("payload"));
        assert!(err(b"#x\r\n").contains("boolean"));
        assert!(err(b",\r\n").contains("double"));
        assert!(err(b",1.5.5\r\n").contains("double"));
        assert!(err(b",1 \r\n").contains("double"));
        assert!(err(b"(12x\r\n").contains("big number"));
        assert!(err(b"(\r\n").contains("big number"));
        assert!(err(b"=3\r\ntxt\r\n").contains("format"));
        assert!(err(b"=4\r\ntxt-\r\n").contains("format"));
        assert!(err(b"+a\rb\r\n").contains("CR inside"));
        assert!(err(b"\xff\r\n").contains("unknown type byte"));
    }

    #[test]
    fn limits_hold_against_hostile_headers() {
        let limits = Limits::default()
            .max_bulk_len(10)
            .max_aggregate_len(3)
            .max_depth(2)
            .max_line_len(8);
        let run = |input: &[u8]| Decoder::with_limits(limits).decode(&mut BytesMut::from(input));
        assert!(matches!(run(b"$11\r\n"), Err(Error::Protocol(m)) if m.contains("bulk length")));
        assert!(matches!(run(b"*4\r\n"), Err(Error::Protocol(m)) if m.contains("aggregate")));
        assert!(matches!(run(b"%4\r\n"), Err(Error::Protocol(m)) if m.contains("aggregate")));
        assert!(
            matches!(run(b"*1\r\n*1\r\n*1\r\n"), Err(Error::Protocol(m)) if m.contains("nesting"))
        );
        assert!(matches!(run(b"+123456789"), Err(Error::Protocol(m)) if m.contains("line longer")));
        assert!(matches!(run(b"*1\r\n*1\r\n:1\r\n"), Ok(Some(_))));
        // A huge declared count reserves nothing until elements arrive.
        let mut buf = BytesMut::from(&b"*268435456\r\n"[..]);
        let mut d = Decoder::new();
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        match &d.stack[0] {
            Partial::Seq { items, .. } => assert!(items.capacity() <= MAX_PREALLOC),
            other => panic!("{other:?}"),
        }
        // The default bulk limit is the server's 512 MiB.
        let over = format!("${}\r\n", 512 * 1024 * 1024 + 1);
        assert!(Decoder::new()
            .decode(&mut BytesMut::from(over.as_bytes()))
            .is_err());
    }

    #[test]
    fn bulk_header_alone_reserves_little() {
        // `$536870912\r\n` used to reserve 512 MiB at once, on the header's word alone.
        let mut buf = BytesMut::from(&b"$536870912\r\n"[..]);
        let mut d = Decoder::new();
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() <= 2 * MAX_BULK_PREALLOC,
            "reserved {} bytes for a 12-byte header",
            buf.capacity()
        );
        // Once a good part of a large value is in, the rest is reserved in one go.
        let len = 6 * MAX_BULK_PREALLOC;
        let mut buf = BytesMut::from(format!("${len}\r\n").as_bytes());
        buf.extend_from_slice(&vec![b'x'; len / 2]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= len + 12, "room for the whole value");
        buf.extend_from_slice(&vec![b'x'; len - len / 2]);
        buf.extend_from_slice(b"\r\n");
        match d.decode(&mut buf).unwrap() {
            Some(Value::Bulk(b)) => assert!(b.len() == len && b.iter().all(|&c| c == b'x')),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decoder_resets_after_an_error() {
        let mut d = Decoder::new();
        let mut buf = BytesMut::from(&b"*2\r\n:1\r\n?"[..]);
        assert!(d.decode(&mut buf).is_err());
        assert!(!d.is_mid_frame());
        let mut fresh = BytesMut::from(&b":5\r\n"[..]);
        assert_eq!(d.decode(&mut fresh).unwrap(), Some(Value::Int(5)));
    }
}
