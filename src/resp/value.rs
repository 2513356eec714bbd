//! The RESP3 value model, which also holds every RESP2 reply.

use bytes::Bytes;

use crate::error::ServerError;

/// One reply from the server, RESP2 or RESP3.
///
/// Strings are [`Bytes`] sliced from the connection's read buffer, so reading a large
/// bulk reply copies nothing. RESP2 null bulk strings and null arrays, and the RESP3 null,
/// all decode to [`Value::Nil`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// Null (`_`, `$-1`, `*-1`).
    Nil,
    /// Integer (`:`).
    Int(i64),
    /// Bulk string (`$`), binary-safe.
    Bulk(Bytes),
    /// Simple string (`+`), e.g. `OK`.
    Simple(Bytes),
    /// Error reply (`-` or RESP3 blob error `!`). Data until converted into a typed
    /// result, when it becomes [`crate::Error::Server`].
    ServerError(ServerError),
    /// Array (`*`).
    Array(Vec<Value>),
    /// Map (`%`), as key-value pairs in the order received.
    Map(Vec<(Value, Value)>),
    /// Set (`~`), in the order received.
    Set(Vec<Value>),
    /// Double (`,`), including `inf`, `-inf` and `nan`.
    Double(f64),
    /// Boolean (`#`).
    Bool(bool),
    /// Big number (`(`): the decimal digits, with an optional leading `-`.
    BigNumber(Bytes),
    /// Verbatim string (`=`): a three-letter format (`txt`, `mkd`) and the text.
    Verbatim {
        /// The format, e.g. `txt`.
        format: [u8; 3],
        /// The text, without the format prefix.
        text: Bytes,
    },
    /// Out-of-band push data (`>`): pub/sub messages, client-side caching invalidations.
    Push(Vec<Value>),
    /// A reply with RESP3 attributes (`|`) attached.
    Attribute {
        /// The attribute map, as key-value pairs.
        attributes: Vec<(Value, Value)>,
        /// The reply the attributes describe.
        data: Box<Value>,
    },
}

impl Value {
    /// A short name of the value's kind, for error messages (never its content).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Int(_) => "integer",
            Value::Bulk(_) => "bulk string",
            Value::Simple(_) => "simple string",
            Value::ServerError(_) => "error",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Set(_) => "set",
            Value::Double(_) => "double",
            Value::Bool(_) => "boolean",
            Value::BigNumber(_) => "big number",
            Value::Verbatim { .. } => "verbatim string",
            Value::Push(_) => "push",
            Value::Attribute { .. } => "attribute",
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::ServerError(_))
    }

    /// The value with any RESP3 attributes stripped.
    pub fn without_attributes(self) -> Value {
        match self {
            Value::Attribute { data, .. } => data.without_attributes(),
            v => v,
        }
    }

    /// The bytes of a string-like value (bulk, simple, verbatim, big number).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) | Value::Simple(b) | Value::BigNumber(b) => Some(b),
            Value::Verbatim { text, .. } => Some(text),
            _ => None,
        }
    }
}
