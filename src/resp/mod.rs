//! The RESP2/RESP3 wire format: value model, incremental decoder and encoder.
//!
//! Sans-io: this module turns bytes into [`Value`]s and commands into bytes, and knows
//! nothing of sockets, tasks or clocks. The connection layer wraps it.
//!
//! ```
//! # fn main() -> redcluster::Result<()> {
//! use bytes::BytesMut;
//! use redcluster::resp::{encode_command, Decoder, Value};
//! let mut out = BytesMut::new();
//! encode_command([&b"PING"[..]], &mut out);
//! assert_eq!(&out[..], b"*1\r\n$4\r\nPING\r\n");
//! let mut input = BytesMut::from(&b"+PONG\r\n"[..]);
//! assert_eq!(Decoder::new().decode(&mut input)?, Some(Value::Simple("PONG".into())));
//! # Ok(()) }
//! ```

mod decode;
mod encode;
mod from_value;
mod value;

pub use decode::{decode_all, Decoder, Limits};
pub use encode::{encode_bulk, encode_command, encode_header, encode_value};
pub use from_value::FromValue;
pub use value::Value;
