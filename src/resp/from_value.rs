//! Conversions from [`Value`] into Rust types.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::resp::Value;

/// A type a reply can be converted into.
///
/// A mismatch (a nil where a `String` was asked for, text where an integer was asked for)
/// is an [`Error::Type`], never a panic. An error reply where a value of the type
/// asked for was expected becomes [`Error::Server`]; `Value` itself converts
/// losslessly, error replies included, so one nested in a container of `Value`s
/// (`Vec<Value>`, a tuple holding a `Value`) stays there as data.
///
/// Implemented for [`Value`], `String`, `Vec<u8>`, [`Bytes`], integers, `f32`/`f64`,
/// `bool`, `()`, `Option<T>`, `Vec<T>`, `HashSet<T>`, `HashMap<K, V>`,
/// `BTreeMap<K, V>` and tuples of up to six elements. The same reply converts alike over
/// RESP2 and RESP3: `Vec<u8>`, `Bytes` and `String` take every kind of string (`INFO`
/// answers a verbatim one over RESP3); `HashMap`, `BTreeMap` and `Vec<(K, V)>` take a map,
/// an array of two-element arrays or a flat array of keys and values (`HGETALL`, `ZRANGE
/// ... WITHSCORES`); integers take a whole-number double in their range (`ZSCORE` over
/// RESP3, the text `5` over RESP2), and `f32`/`f64` an integer (or its text) they hold
/// exactly and a number short of infinity (a fraction is rounded; `2^53 + 1`, or `1e39`
/// as `f32`, is an [`Error::Type`]); `()` takes anything but an error reply, wherever in the value it is.
///
/// ```
/// # fn main() -> redcluster::Result<()> {
/// use redcluster::{FromValue, Value};
/// // A type of your own, from a two-element array reply.
/// #[derive(Debug, PartialEq)]
/// struct Point { x: i64, y: i64 }
/// impl FromValue for Point {
///     fn from_value(value: Value) -> redcluster::Result<Self> {
///         let (x, y) = <(i64, i64)>::from_value(value)?;
///         Ok(Point { x, y })
///     }
/// }
/// let reply = Value::Array(vec![Value::Int(3), Value::Bulk("4".into())]);
/// assert_eq!(Point::from_value(reply)?, Point { x: 3, y: 4 });
/// # Ok(()) }
/// ```
pub trait FromValue: Sized {
    /// Converts a reply.
    ///
    /// # Errors
    ///
    /// [`Error::Type`] when the reply has another shape, [`Error::Server`] for an error
    /// reply.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// use std::collections::HashMap;
    /// use redcluster::{FromValue, Value};
    /// // HGETALL over RESP2: a flat array of fields and values.
    /// let reply = Value::Array(vec![Value::Bulk("name".into()), Value::Bulk("Ada".into())]);
    /// let user = HashMap::<String, String>::from_value(reply)?;
    /// assert_eq!(user["name"], "Ada");
    /// assert_eq!(Option::<String>::from_value(Value::Nil)?, None);
    /// assert!(i64::from_value(Value::Bulk("Ada".into())).is_err());
    /// # Ok(()) }
    /// ```
    fn from_value(value: Value) -> Result<Self>;

    /// Lets `Vec<u8>` take a bulk string whole instead of as a list of integers.
    #[doc(hidden)]
    fn from_bulk_bytes(_bytes: &Bytes) -> Option<Vec<Self>> {
        None
    }

    /// Whether the type is a pair, `(K, V)`: then `Vec<(K, V)>` takes a map's pairs (a
    /// RESP3 `HGETALL`) and a flat array of keys and values (RESP2's `ZRANGE ...
    /// WITHSCORES`) as pairs.
    #[doc(hidden)]
    const PAIR: bool = false;
}

fn mismatch<T>(value: &Value) -> Error {
    match value {
        Value::ServerError(e) => Error::Server(e.clone()),
        other => Error::Type {
            expected: std::any::type_name::<T>(),
            got: other.kind(),
        },
    }
}

impl FromValue for Value {
    fn from_value(value: Value) -> Result<Self> {
        Ok(value)
    }
}

impl FromValue for () {
    /// Anything but an error reply, wherever in the value it is (a command that failed
    /// inside `EXEC`, an attribute around an error).
    fn from_value(value: Value) -> Result<Self> {
        // An explicit stack: a value built by hand may nest deeper than the decoder's
        // limit.
        let mut stack = vec![value];
        while let Some(value) = stack.pop() {
            match value {
                Value::ServerError(e) => return Err(Error::Server(e)),
                Value::Array(items) | Value::Set(items) | Value::Push(items) => {
                    stack.extend(items);
                }
                Value::Map(pairs) => stack.extend(pairs.into_iter().flat_map(|(k, v)| [k, v])),
                Value::Attribute { data, .. } => stack.push(*data),
                _ => {}
            }
        }
        Ok(())
    }
}

impl FromValue for Bytes {
    fn from_value(value: Value) -> Result<Self> {
        match value.without_attributes() {
            Value::Bulk(b) | Value::Simple(b) | Value::BigNumber(b) => Ok(b),
            Value::Verbatim { text, .. } => Ok(text),
            other => Err(mismatch::<Self>(&other)),
        }
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> Result<Self> {
        let value = value.without_attributes();
        match &value {
            Value::Int(n) => return Ok(n.to_string()),
            Value::Double(d) => return Ok(d.to_string()),
            _ => {}
        }
        let bytes = Bytes::from_value(value)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Type {
            expected: "String",
            got: "non-UTF-8 bytes",
        })
    }
}

impl FromValue for bool {
    fn from_value(value: Value) -> Result<Self> {
        match value.without_attributes() {
            Value::Bool(b) => Ok(b),
            Value::Int(n) => Ok(n != 0),
            // `SET ... NX` answers nil when it did not set.
            Value::Nil => Ok(false),
            Value::Simple(s) if s == "OK" => Ok(true),
            Value::Bulk(b) if b == "1" => Ok(true),
            Value::Bulk(b) if b == "0" => Ok(false),
            other => Err(mismatch::<Self>(&other)),
        }
    }
}

/// A RESP3 double that is a whole number (`ZSCORE` of a score of 5, which RESP2 sends as
/// the text `5`, read as an integer over both), within `i128`; the integer type asked
/// for checks its own range.
fn whole(d: f64) -> Option<i128> {
    // 2^127: every double below it in magnitude converts exactly.
    const LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    (d.fract() == 0.0 && (-LIMIT..LIMIT).contains(&d)).then_some(d as i128)
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: Value) -> Result<Self> {
                let value = value.without_attributes();
                let n: Option<Self> = match &value {
                    Value::Int(n) => Self::try_from(*n).ok(),
                    Value::Double(d) => whole(*d).and_then(|n| Self::try_from(n).ok()),
                    Value::Bool(b) => Some(Self::from(*b)),
                    Value::Bulk(b) | Value::Simple(b) | Value::BigNumber(b) => {
                        std::str::from_utf8(b).ok().and_then(|s| s.parse().ok())
                    }
                    _ => None,
                };
                n.ok_or_else(|| mismatch::<Self>(&value))
            }
        }
    )*};
}
integer!(i8, i16, i32, i64, i128, isize, u16, u32, u64, u128, usize);

impl FromValue for u8 {
    fn from_value(value: Value) -> Result<Self> {
        let value = value.without_attributes();
        let n = match &value {
            Value::Int(n) => u8::try_from(*n).ok(),
            Value::Double(d) => whole(*d).and_then(|n| u8::try_from(n).ok()),
            Value::Bool(b) => Some(u8::from(*b)),
            Value::Bulk(b) | Value::Simple(b) | Value::BigNumber(b) => {
                std::str::from_utf8(b).ok().and_then(|s| s.parse().ok())
            }
            _ => None,
        };
        n.ok_or_else(|| mismatch::<Self>(&value))
    }

    fn from_bulk_bytes(bytes: &Bytes) -> Option<Vec<Self>> {
        Some(bytes.to_vec())
    }
}

// As the integers refuse what they cannot hold, the floats refuse what would change:
// an integer they cannot hold exactly (a counter past 2^53 read as `f64`), a finite
// number they can only hold as infinity (`1e39` as `f32`). Rounding a fraction is what
// a float is for, and is kept.
macro_rules! float {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: Value) -> Result<Self> {
                let value = value.without_attributes();
                let n: Option<Self> = match &value {
                    Value::Double(d) => Some(*d as $t).filter(|f| !f.is_infinite() || d.is_infinite()),
                    Value::Int(n) => Some(*n as $t).filter(|f| *f as i128 == i128::from(*n)),
                    // RESP2 sends scores as text, including `inf` and `-inf`; a
                    // counter's text is an integer, held exactly or refused. Past 2^62
                    // Redis 7.2 writes a whole double by its shortest digits, zeros
                    // after (`5072854620270127000`): no integer to hold exactly, the
                    // double's own text.
                    Value::Bulk(b) | Value::Simple(b) => std::str::from_utf8(b).ok().and_then(|s| {
                        match s.parse::<i128>().ok().filter(|n| n.unsigned_abs() <= 1 << 62) {
                            Some(n) => Some(n as $t).filter(|f| *f as i128 == n),
                            None => s
                                .parse::<$t>()
                                .ok()
                                .filter(|f| !f.is_infinite() || s.contains(['i', 'I'])),
                        }
                    }),
                    _ => None,
                };
                n.ok_or_else(|| mismatch::<Self>(&value))
            }
        }
    )*};
}
float!(f32, f64);

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Result<Self> {
        match value.without_attributes() {
            Value::Nil => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// The elements of an aggregate, a map's pairs flattened; nil is an empty list.
fn elements<T>(value: Value) -> Result<Vec<Value>> {
    match value.without_attributes() {
        Value::Array(items) | Value::Set(items) | Value::Push(items) => Ok(items),
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        Value::Nil => Ok(Vec::new()),
        other => Err(mismatch::<T>(&other)),
    }
}

impl<T: FromValue> FromValue for Vec<T> {
    fn from_value(value: Value) -> Result<Self> {
        let value = value.without_attributes();
        match &value {
            // Every kind of string (`INFO` answers a verbatim one over RESP3, a bulk one
            // over RESP2), as `Bytes` and `String` take them.
            Value::Bulk(b) | Value::Simple(b) | Value::BigNumber(b) => {
                if let Some(v) = T::from_bulk_bytes(b) {
                    return Ok(v);
                }
            }
            Value::Verbatim { text, .. } => {
                if let Some(v) = T::from_bulk_bytes(text) {
                    return Ok(v);
                }
            }
            // A missing string (`GET` of no key) is no empty one: for `Vec<u8>`, as for
            // `String` and `Bytes`, nil is an error (`Option<Vec<u8>>` takes it).
            Value::Nil if T::from_bulk_bytes(&Bytes::new()).is_some() => {
                return Err(mismatch::<Self>(&value));
            }
            _ => {}
        }
        if T::PAIR && matches!(value, Value::Map(_) | Value::Array(_)) {
            return pairs::<Self>(value)?
                .into_iter()
                .map(|(k, v)| T::from_value(Value::Array(vec![k, v])))
                .collect();
        }
        elements::<Self>(value)?
            .into_iter()
            .map(T::from_value)
            .collect()
    }
}

impl<T: FromValue + Eq + Hash, S: BuildHasher + Default> FromValue for HashSet<T, S> {
    fn from_value(value: Value) -> Result<Self> {
        elements::<Self>(value)?
            .into_iter()
            .map(T::from_value)
            .collect()
    }
}

/// Key-value pairs from a RESP3 map, an array of pairs already (RESP3's `ZRANGE ...
/// WITHSCORES`, `HRANDFIELD ... WITHVALUES`: two-element arrays), or a flat array
/// `[k1, v1, k2, v2, ...]` (RESP2), values nested or not.
fn pairs<T>(value: Value) -> Result<Vec<(Value, Value)>> {
    fn pair(value: Value) -> Option<(Value, Value)> {
        let Value::Array(items) = value else {
            return None;
        };
        let [k, v]: [Value; 2] = items.try_into().ok()?;
        Some((k, v))
    }
    let already_pairs = |items: &[Value]| {
        !items.is_empty()
            && items
                .iter()
                .all(|v| matches!(v, Value::Array(pair) if pair.len() == 2))
    };
    match value.without_attributes() {
        Value::Map(pairs) => Ok(pairs),
        Value::Array(items) if already_pairs(&items) => {
            Ok(items.into_iter().filter_map(pair).collect())
        }
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(Error::Type {
                    expected: std::any::type_name::<T>(),
                    got: "array of odd length",
                });
            }
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            Ok(out)
        }
        Value::Nil => Ok(Vec::new()),
        other => Err(mismatch::<T>(&other)),
    }
}

impl<K, V, S> FromValue for HashMap<K, V, S>
where
    K: FromValue + Eq + Hash,
    V: FromValue,
    S: BuildHasher + Default,
{
    fn from_value(value: Value) -> Result<Self> {
        pairs::<Self>(value)?
            .into_iter()
            .map(|(k, v)| Ok((K::from_value(k)?, V::from_value(v)?)))
            .collect()
    }
}

impl<K: FromValue + Ord, V: FromValue> FromValue for BTreeMap<K, V> {
    fn from_value(value: Value) -> Result<Self> {
        pairs::<Self>(value)?
            .into_iter()
            .map(|(k, v)| Ok((K::from_value(k)?, V::from_value(v)?)))
            .collect()
    }
}

macro_rules! tuple {
    ($n:expr; $($name:ident),+) => {
        impl<$($name: FromValue),+> FromValue for ($($name,)+) {
            const PAIR: bool = $n == 2;

            fn from_value(value: Value) -> Result<Self> {
                let items = elements::<Self>(value)?;
                if items.len() != $n {
                    return Err(Error::Type {
                        expected: std::any::type_name::<Self>(),
                        got: "array of another length",
                    });
                }
                let mut it = items.into_iter();
                Ok(($($name::from_value(it.next().unwrap_or(Value::Nil))?,)+))
            }
        }
    };
}
tuple!(1; A);
tuple!(2; A, B);
tuple!(3; A, B, C);
tuple!(4; A, B, C, D);
tuple!(5; A, B, C, D, E);
tuple!(6; A, B, C, D, E, F);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ServerError;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn scalars() {
        assert_eq!(String::from_value(bulk("hi")).unwrap(), "hi");
        assert_eq!(String::from_value(Value::Int(3)).unwrap(), "3");
        assert_eq!(i64::from_value(bulk("-12")).unwrap(), -12);
        assert_eq!(u8::from_value(Value::Int(255)).unwrap(), 255);
        assert_eq!(f64::from_value(bulk("inf")).unwrap(), f64::INFINITY);
        assert_eq!(f64::from_value(Value::Double(0.5)).unwrap(), 0.5);
        // Floats refuse what they would change, not a rounded fraction.
        assert!(f32::from_value(Value::Double(1e300)).is_err());
        assert!(f32::from_value(bulk("1e39")).is_err());
        assert_eq!(f32::from_value(bulk("-inf")).unwrap(), f32::NEG_INFINITY);
        assert_eq!(
            f32::from_value(Value::Double(f64::INFINITY)).unwrap(),
            f32::INFINITY
        );
        assert!(f32::from_value(Value::Int(16_777_217)).is_err());
        assert_eq!(
            f32::from_value(Value::Int(16_777_216)).unwrap(),
            16_777_216.0
        );
        assert!(f64::from_value(Value::Int((1 << 53) + 1)).is_err());
        assert!(f64::from_value(Value::Int(i64::MAX)).is_err());
        assert!(f64::from_value(bulk("9007199254740993")).is_err());
        // A whole double past 2^62 as Redis 7.2 writes it: its shortest digits.
        assert_eq!(
            f64::from_value(bulk("5072854620270127000")).unwrap(),
            5072854620270127000.0
        );
        assert_eq!(f64::from_value(bulk("-42")).unwrap(), -42.0);
        assert_eq!(
            f64::from_value(Value::Int(-(1 << 53))).unwrap(),
            -9007199254740992.0
        );
        assert!((f32::from_value(bulk("0.1")).unwrap() - 0.1).abs() < 1e-6);
        assert!(bool::from_value(Value::Simple(Bytes::from_static(b"OK"))).unwrap());
        assert!(!bool::from_value(Value::Nil).unwrap());
        assert_eq!(Vec::<u8>::from_value(bulk("ab")).unwrap(), b"ab".to_vec());
        assert_eq!(Option::<String>::from_value(Value::Nil).unwrap(), None);
        assert_eq!(
            Bytes::from_value(bulk("x")).unwrap(),
            Bytes::from_static(b"x")
        );
    }

    #[test]
    fn unit_takes_anything_but_an_error_reply_wherever_it_is() {
        let error = || Value::ServerError(ServerError::new("WRONGTYPE x"));
        assert!(<()>::from_value(Value::Simple(Bytes::from_static(b"OK"))).is_ok());
        assert!(<()>::from_value(Value::Array(vec![Value::Int(1), bulk("a")])).is_ok());
        // A command that failed inside `EXEC`; an attribute around an error; a map.
        let nested = [
            Value::Array(vec![Value::Int(1), error()]),
            Value::Attribute {
                attributes: vec![],
                data: Box::new(error()),
            },
            Value::Map(vec![(bulk("k"), Value::Array(vec![error()]))]),
        ];
        for value in nested {
            assert!(
                matches!(<()>::from_value(value.clone()), Err(Error::Server(_))),
                "{value:?}"
            );
        }
    }

    #[test]
    fn bytes_come_from_every_kind_of_string() {
        let verbatim = Value::Verbatim {
            format: *b"txt",
            text: Bytes::from_static(b"hi"),
        };
        assert_eq!(Vec::<u8>::from_value(verbatim).unwrap(), b"hi");
        let simple = Value::Simple(Bytes::from_static(b"OK"));
        assert_eq!(Vec::<u8>::from_value(simple).unwrap(), b"OK");
        let big = Value::BigNumber(Bytes::from_static(b"7"));
        assert_eq!(u8::from_value(big).unwrap(), 7);
    }

    #[test]
    fn pairs_come_from_a_map_a_flat_array_or_an_array_of_pairs() {
        let want = vec![("a".to_string(), 1.5), ("b".to_string(), 2.0)];
        let map = Value::Map(vec![
            (bulk("a"), bulk("1.5")),
            (bulk("b"), Value::Double(2.0)),
        ]);
        assert_eq!(Vec::<(String, f64)>::from_value(map).unwrap(), want);
        // RESP2's `ZRANGE ... WITHSCORES`, and RESP3's.
        let flat = Value::Array(vec![bulk("a"), bulk("1.5"), bulk("b"), bulk("2")]);
        assert_eq!(Vec::<(String, f64)>::from_value(flat).unwrap(), want);
        let nested = Value::Array(vec![
            Value::Array(vec![bulk("a"), Value::Double(1.5)]),
            Value::Array(vec![bulk("b"), Value::Double(2.0)]),
        ]);
        assert_eq!(Vec::<(String, f64)>::from_value(nested).unwrap(), want);
        // Values nested in a flat array (RESP2's `XINFO STREAM`), as in a map.
        let nested_values = Value::Array(vec![bulk("k"), Value::Array(vec![bulk("x")])]);
        let got = Vec::<(String, Vec<String>)>::from_value(nested_values).unwrap();
        assert_eq!(got, [("k".to_string(), vec!["x".to_string()])]);
        let odd = Value::Array(vec![bulk("a"), bulk("1.5"), bulk("b")]);
        assert!(matches!(
            Vec::<(String, f64)>::from_value(odd),
            Err(Error::Type { .. })
        ));
        assert!(Vec::<(String, f64)>::from_value(Value::Nil)
            .unwrap()
            .is_empty());
        // Anything else is as before: a map flattened for a list of strings.
        let map = Value::Map(vec![(bulk("a"), bulk("1"))]);
        assert_eq!(Vec::<String>::from_value(map).unwrap(), ["a", "1"]);

        // The map types take the same three shapes; an odd number of pairs (RESP3's
        // `ZRANGE ... WITHSCORES` of three members) too.
        let three = |wrap: fn(Vec<Value>) -> Value| {
            wrap(
                [("a", 1.5), ("b", 2.0), ("c", 3.0)]
                    .map(|(m, s)| Value::Array(vec![bulk(m), Value::Double(s)]))
                    .to_vec(),
            )
        };
        let hash = HashMap::<String, f64>::from_value(three(Value::Array)).unwrap();
        assert_eq!((hash.len(), hash["c"]), (3, 3.0));
        let tree = BTreeMap::<String, f64>::from_value(three(Value::Array)).unwrap();
        assert_eq!(tree.into_iter().next(), Some(("a".to_string(), 1.5)));
        let flat = Value::Array(vec![bulk("a"), bulk("1.5"), bulk("b"), bulk("2")]);
        let hash = HashMap::<String, f64>::from_value(flat).unwrap();
        assert_eq!(hash["b"], 2.0);
    }

    #[test]
    fn integers_take_whole_doubles_only() {
        assert_eq!(i64::from_value(Value::Double(5.0)).unwrap(), 5);
        assert_eq!(i64::from_value(Value::Double(-3.0)).unwrap(), -3);
        assert_eq!(u8::from_value(Value::Double(7.0)).unwrap(), 7);
        assert_eq!(
            i128::from_value(Value::Double(-1e18)).unwrap(),
            -10i128.pow(18)
        );
        assert_eq!(u64::from_value(Value::Double(1e19)).unwrap(), 10u64.pow(19));
        for bad in [1.5, f64::NAN, f64::INFINITY, 1e19, -1e19] {
            assert!(
                matches!(i64::from_value(Value::Double(bad)), Err(Error::Type { .. })),
                "{bad}"
            );
        }
        assert!(u32::from_value(Value::Double(-1.0)).is_err());
        assert!(u8::from_value(Value::Double(256.0)).is_err());
    }

    #[test]
    fn mismatches_are_typed_errors() {
        assert!(matches!(
            String::from_value(Value::Nil),
            Err(Error::Type { got: "nil", .. })
        ));
        // Bytes as a vector too: a missing value is not an empty one.
        assert!(matches!(
            Vec::<u8>::from_value(Value::Nil),
            Err(Error::Type { got: "nil", .. })
        ));
        assert_eq!(Option::<Vec<u8>>::from_value(Value::Nil).unwrap(), None);
        // A nil list is still an empty one.
        assert!(Vec::<String>::from_value(Value::Nil).unwrap().is_empty());
        assert!(matches!(
            u8::from_value(Value::Int(256)),
            Err(Error::Type { got: "integer", .. })
        ));
        assert!(matches!(
            i64::from_value(bulk("twelve")),
            Err(Error::Type { .. })
        ));
        assert!(matches!(
            String::from_value(Value::Bulk(Bytes::from_static(&[0xff]))),
            Err(Error::Type { .. })
        ));
        assert!(matches!(
            <(i64, i64)>::from_value(Value::Array(vec![Value::Int(1)])),
            Err(Error::Type { .. })
        ));
        let nested_error = Value::Array(vec![
            Value::Int(1),
            Value::ServerError(ServerError::new("WRONGTYPE nope")),
        ]);
        let err = Vec::<i64>::from_value(nested_error).unwrap_err();
        assert_eq!(err.server_code(), Some("WRONGTYPE"));
    }

    #[test]
    fn aggregates() {
        let arr = Value::Array(vec![bulk("a"), bulk("1"), bulk("b"), bulk("2")]);
        let m: HashMap<String, i64> = FromValue::from_value(arr.clone()).unwrap();
        assert_eq!(m["b"], 2);
        let v: Vec<String> = FromValue::from_value(arr).unwrap();
        assert_eq!(v, ["a", "1", "b", "2"]);
        let map = Value::Map(vec![(bulk("k"), Value::Int(1))]);
        let m: BTreeMap<String, u32> = FromValue::from_value(map).unwrap();
        assert_eq!(m["k"], 1);
        let t: (String, Option<i64>, f64) = FromValue::from_value(Value::Array(vec![
            bulk("x"),
            Value::Nil,
            Value::Double(2.0),
        ]))
        .unwrap();
        assert_eq!(t, ("x".to_string(), None, 2.0));
        let s: HashSet<i64> =
            FromValue::from_value(Value::Set(vec![Value::Int(1), Value::Int(1)])).unwrap();
        assert_eq!(s.len(), 1);
        let odd = Value::Array(vec![bulk("a")]);
        assert!(HashMap::<String, String>::from_value(odd).is_err());
    }
}
