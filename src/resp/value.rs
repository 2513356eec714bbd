//! The RESP3 value model, which also holds every RESP2 reply.

use bytes::Bytes;

use crate::error::ServerError;

/// One reply from the server, RESP2 or RESP3.
///
/// Strings are [`Bytes`] sliced from the connection's read buffer, so reading a large
/// bulk reply copies nothing. RESP2 null bulk strings and null arrays, and the RESP3 null,
/// all decode to [`Value::Nil`].
///
/// ```
/// # fn main() -> redcluster::Result<()> {
/// use redcluster::{FromValue, Value};
/// // What MGET a b answers when only `a` exists.
/// let reply = Value::Array(vec![Value::Bulk("1".into()), Value::Nil]);
/// match &reply {
///     Value::Array(items) => assert_eq!(items.len(), 2),
///     other => panic!("unexpected {}", other.kind()),
/// }
/// assert_eq!(Vec::<Option<i64>>::from_value(reply)?, [Some(1), None]);
/// # Ok(()) }
/// ```
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
    ///
    /// ```
    /// use redcluster::Value;
    /// assert_eq!(Value::Int(1).kind(), "integer");
    /// assert_eq!(Value::Bulk("secret".into()).kind(), "bulk string"); // never the content
    /// ```
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
    ///
    /// ```
    /// use redcluster::{ServerError, Value};
    /// assert!(Value::ServerError(ServerError::new("ERR boom")).is_error());
    /// assert!(!Value::Nil.is_error());
    /// ```
    pub fn is_error(&self) -> bool {
        matches!(self, Value::ServerError(_))
    }

    /// The value with any RESP3 attributes stripped.
    ///
    /// ```
    /// use redcluster::Value;
    /// let reply = Value::Attribute {
    ///     attributes: vec![(Value::Simple("ttl".into()), Value::Int(3600))],
    ///     data: Box::new(Value::Int(7)),
    /// };
    /// assert_eq!(reply.without_attributes(), Value::Int(7));
    /// ```
    pub fn without_attributes(self) -> Value {
        match self {
            Value::Attribute { data, .. } => data.without_attributes(),
            v => v,
        }
    }

    /// The bytes of a string-like value (bulk, simple, verbatim, big number).
    ///
    /// ```
    /// use redcluster::Value;
    /// assert_eq!(Value::Simple("OK".into()).as_bytes(), Some(&b"OK"[..]));
    /// assert_eq!(Value::Int(1).as_bytes(), None);
    /// ```
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) | Value::Simple(b) | Value::BigNumber(b) => Some(b),
            Value::Verbatim { text, .. } => Some(text),
            _ => None,
        }
    }
}
