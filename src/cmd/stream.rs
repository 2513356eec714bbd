//! Stream replies: [`StreamEntry`], one entry of a stream as `XRANGE`, `XREAD` and
//! `XREADGROUP` return it, and the conversion of a read's reply (one stream's entries,
//! under RESP3's map or RESP2's array of pairs) for the typed helpers.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::resp::{FromValue, Value};

/// One entry of a stream: its ID and its field-value pairs, in the order added.
///
/// ```
/// # fn main() -> redcluster::Result<()> {
/// use redcluster::{FromValue, StreamEntry, Value};
/// let reply = Value::Array(vec![
///     Value::Bulk("1700000000000-0".into()),
///     Value::Array(vec![Value::Bulk("kind".into()), Value::Bulk("paid".into())]),
/// ]);
/// let entry = StreamEntry::from_value(reply)?;
/// assert_eq!(entry.id, "1700000000000-0");
/// assert_eq!(entry.get("kind").map(|v| &v[..]), Some(&b"paid"[..]));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamEntry {
    /// The entry's ID, `<milliseconds>-<sequence>`.
    pub id: String,
    /// Its field-value pairs, in order; empty for an entry deleted while pending in a
    /// consumer group (`XREADGROUP` of the pending list answers its ID alone).
    pub fields: Vec<(Bytes, Bytes)>,
}

impl StreamEntry {
    /// The value of the first field named `field`.
    pub fn get(&self, field: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(f, _)| f.as_ref() == field.as_bytes())
            .map(|(_, v)| v)
    }
}

impl FromValue for StreamEntry {
    fn from_value(value: Value) -> Result<Self> {
        let (id, fields) = <(String, Option<Vec<Bytes>>)>::from_value(value)?;
        let fields = fields.unwrap_or_default();
        if fields.len() % 2 != 0 {
            return Err(Error::Protocol(format!(
                "stream entry {id} has an odd number of fields and values"
            )));
        }
        let mut pairs = Vec::with_capacity(fields.len() / 2);
        let mut items = fields.into_iter();
        while let (Some(f), Some(v)) = (items.next(), items.next()) {
            pairs.push((f, v));
        }
        Ok(StreamEntry { id, fields: pairs })
    }
}

/// The entries of the one stream an `XREAD`/`XREADGROUP` asked about: the reply is nil
/// when a blocking read timed out, otherwise a map (RESP3) or an array of
/// `[stream, entries]` pairs (RESP2) with one stream.
pub(crate) fn read_entries(reply: Value) -> Result<Vec<StreamEntry>> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(<(Value, Value)>::from_value)
            .collect::<Result<_>>()?,
        other => return Err(Error::Protocol(format!("XREAD answered {}", other.kind()))),
    };
    let mut entries = Vec::new();
    for (_, stream) in pairs {
        entries.extend(Vec::<StreamEntry>::from_value(stream)?);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn reads_come_as_resp3_maps_resp2_pairs_or_nil() {
        let entries = vec![
            entry("1-0", &["a", "1"]),
            entry("2-0", &["b", "2", "c", "3"]),
        ];
        let resp3 = Value::Map(vec![(bulk("s"), Value::Array(entries.clone()))]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), Value::Array(entries)])]);
        for reply in [resp3, resp2] {
            let read = read_entries(reply).unwrap();
            assert_eq!(read.len(), 2);
            assert_eq!(read[1].id, "2-0");
            assert_eq!(read[1].get("c").map(|v| &v[..]), Some(&b"3"[..]));
        }
        assert!(read_entries(Value::Nil).unwrap().is_empty());
        assert!(read_entries(Value::Int(1)).is_err());
    }

    #[test]
    fn a_deleted_pending_entry_has_no_fields_and_a_malformed_one_is_an_error() {
        let deleted = Value::Array(vec![bulk("3-0"), Value::Nil]);
        assert!(StreamEntry::from_value(deleted).unwrap().fields.is_empty());
        assert!(StreamEntry::from_value(entry("4-0", &["odd"])).is_err());
        assert!(StreamEntry::from_value(Value::Int(5)).is_err());
    }
}
