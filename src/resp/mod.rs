//! The RESP2/RESP3 wire format: value model, incremental decoder and encoder.
//!
//! Sans-io: this module turns bytes into [`Value`]s and commands into bytes, and knows
//! nothing of sockets, tasks or clocks. The connection layer wraps it.

mod decode;
mod encode;
mod from_value;
mod value;

pub use decode::{decode_all, Decoder, Limits};
pub use encode::{encode_bulk, encode_command, encode_header, encode_value};
pub use from_value::FromValue;
pub use value::Value;
