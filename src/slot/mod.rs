//! Hash slots: which of the 16384 slots a key belongs to, the slot map, and redirects.
//!
//! Sans-io and pure. The Redis Cluster specification: "HASH_SLOT = CRC16(key) mod 16384",
//! where CRC16 is the XMODEM variant, and "if the key contains a `{` character and there
//! is a `}` character to its right, and there are one or more characters between the
//! first occurrence of `{` and the first occurrence of `}`, then instead of hashing the
//! key, only what is between the first occurrence of `{` and the following first
//! occurrence of `}` is hashed".

mod map;
mod redirect;

#[cfg(test)]
pub(crate) use map::shard as test_shard;
pub(crate) use map::{Shard, SlotMap};
pub(crate) use redirect::{join_host_port, parse_redirect, Redirect};

/// Number of hash slots in a Redis Cluster.
///
/// ```
/// use redcluster::{key_slot, SLOT_COUNT};
/// assert_eq!(SLOT_COUNT, 16384);
/// assert!(key_slot(b"any key") < SLOT_COUNT);
/// ```
pub const SLOT_COUNT: u16 = 16384;

/// The hash slot of `key`, exactly as the server computes it (`CLUSTER KEYSLOT`).
///
/// ```
/// use redcluster::key_slot;
/// assert_eq!(key_slot(b"123456789"), 0x31C3 % 16384);
/// // Keys sharing a hash tag share a slot.
/// assert_eq!(key_slot(b"user:{42}:name"), key_slot(b"user:{42}:email"));
/// ```
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOT_COUNT
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, nothing reflected, nothing
/// xored out), the checksum Redis Cluster hashes keys with.
// A byte at a time from a table built at compile time: every request hashes its key,
// and the `crc16` crate's version spent about half of its time setting up its state.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0, |crc, &byte| {
        let [high, _] = crc.to_be_bytes();
        (crc << 8) ^ CRC16_TABLE[usize::from(high ^ byte)]
    })
}

/// `CRC16_TABLE[i]`: the CRC of the byte `i`, to fold in the next byte's high bits.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        // `i` < 256: the cast keeps every bit.
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The part of `key` that is hashed: its hash tag when it has a non-empty one, else all
/// of it.
///
/// ```
/// use redcluster::hash_tag;
/// assert_eq!(hash_tag(b"user:{42}:name"), b"42");
/// assert_eq!(hash_tag(b"user:42"), b"user:42"); // no tag: the whole key
/// assert_eq!(hash_tag(b"{}:42"), b"{}:42"); // an empty tag does not count
/// ```
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = find(b'{', key) {
        if let Some(len) = find(b'}', &key[open + 1..]) {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Where `byte` first occurs in `hay`. Most keys are short, and for them a plain loop
/// beats setting up `memchr`'s vector search (every request hashes its key).
fn find(byte: u8, hay: &[u8]) -> Option<usize> {
    if hay.len() < 32 {
        hay.iter().position(|&b| b == byte)
    } else {
        memchr::memchr(byte, hay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tag_edge_cases() {
        assert_eq!(hash_tag(b"{}"), b"{}");
        assert_eq!(hash_tag(b"{}{a}"), b"{}{a}");
        assert_eq!(hash_tag(b"{{a}}"), b"{a");
        assert_eq!(hash_tag(b"a{b}{c}"), b"b");
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"}"), b"}");
        assert_eq!(hash_tag(b"}{a}"), b"a");
        assert_eq!(hash_tag(b"{a}"), b"a");
        assert_eq!(hash_tag(b""), b"");
        // Long keys take the other search; same rules.
        let long = [&[b'x'; 40][..], b"{tag}", &[b'y'; 40]].concat();
        assert_eq!(hash_tag(&long), b"tag");
        assert_eq!(hash_tag(&[b'z'; 64]), &[b'z'; 64][..]);
    }

    #[test]
    fn known_slots() {
        // Values the server reports for these keys.
        assert_eq!(key_slot(b"123456789"), 12739);
        // The standard check value of CRC16/XMODEM, and single bytes both sides of 0x80.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b"A"), 0x58E5);
        assert_eq!(crc16(&[0xFF]), 0x1EF0);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    }
}
