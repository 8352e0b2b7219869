//! The canonical binary encoding of everything Pyralog hashes or signs.
//!
//! Rules (the same for every type, so a third party can re-implement them):
//! - integers are fixed-width big-endian (`u8`, `u16`, `u32`, `u64`);
//! - `bool` and `Option` tags are one byte, `0` or `1`; enum variants are a one-byte tag;
//! - byte strings and text are a `u32` length followed by the bytes (text is UTF-8);
//! - sequences are a `u32` count followed by the items;
//! - hashes (32), public keys (32) and signatures (64) are raw fixed-size bytes;
//! - every top-level object starts with a one-byte format version (currently `1`).
//!
//! Decoding is strict, so every value has exactly one encoding: unknown tags and versions,
//! lengths over the field's limit, invalid UTF-8, invalid public keys and trailing bytes
//! are errors, never panics. Fixed-width integers and explicit tags leave no second way to
//! write a value.

use pyralog_crypto::{Hash, PublicKey, Signature};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended in the middle of a value.
    #[error("input ends early while reading {what}")]
    UnexpectedEnd {
        /// The field being read.
        what: &'static str,
    },
    /// Bytes were left after the value.
    #[error("{count} trailing bytes after the value")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// An enum, option or bool tag that is not defined.
    #[error("unknown tag {tag} for {what}")]
    BadTag {
        /// The field being read.
        what: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// A format version this code does not know.
    #[error("unsupported format version {version} for {what}")]
    BadVersion {
        /// The object being read.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// A length or count over the field's limit.
    #[error("{what} has length {len}, over the limit of {max}")]
    TooLong {
        /// The field being read.
        what: &'static str,
        /// The length found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A field whose value breaks a rule of its type.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The field being read.
        what: &'static str,
        /// The rule broken.
        reason: String,
    },
}

/// Parses a human-facing JSON file (genesis, receipt) of at most `max` bytes.
pub fn from_json_limited<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: &str,
    max: usize,
) -> Result<T, CodecError> {
    if text.len() > max {
        return Err(CodecError::TooLong {
            what,
            len: text.len() as u64,
            max: max as u64,
        });
    }
    serde_json::from_str(text).map_err(|e| CodecError::Invalid {
        what,
        reason: e.to_string(),
    })
}

/// Types with a canonical encoding.
pub trait Encode {
    /// Appends the canonical encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// The canonical encoding as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Types that can be decoded strictly from their canonical encoding.
pub trait Decode: Sized {
    /// Reads one value from `d`.
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError>;

    /// Decodes a whole buffer: exactly one value, no trailing bytes.
    fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut d = Decoder::new(bytes);
        let value = Self::decode(&mut d)?;
        d.finish()?;
        Ok(value)
    }
}

/// Writes a `u32` length prefix followed by `bytes`.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    assert!(
        len as usize == bytes.len(),
        "encoded field longer than u32::MAX"
    );
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Writes a `u32` item count.
pub fn put_count(out: &mut Vec<u8>, count: usize) {
    let n = u32::try_from(count).unwrap_or(u32::MAX);
    assert!(n as usize == count, "sequence longer than u32::MAX");
    out.extend_from_slice(&n.to_be_bytes());
}

/// Writes a sequence: a count, then each item.
pub fn put_seq<T: Encode>(out: &mut Vec<u8>, items: &[T]) {
    put_count(out, items.len());
    for item in items {
        item.encode(out);
    }
}

/// The most memory a [`Decoder::seq`] reserves before its items decode (unless one item
/// takes more).
const SEQ_PREALLOC_BYTES: usize = 1 << 20;

/// The items a [`Decoder::seq`] of `count` items of `T`, with `remaining` bytes left,
/// reserves before they decode: no more items than bytes left (every item takes at
/// least one), nor than [`SEQ_PREALLOC_BYTES`] hold (but room for one item always).
/// Beyond that the vector grows as items actually decode. So a false count costs at
/// most 1 MiB for each sequence being decoded, freed when the decoding fails; an item
/// can take more memory than its encoding (a transaction does), so a few kilobytes can
/// reserve that much.
fn seq_reserve<T>(count: usize, remaining: usize) -> usize {
    let fits = (SEQ_PREALLOC_BYTES / std::mem::size_of::<T>().max(1)).max(1);
    count.min(remaining).min(fits)
}

/// A strict reader over a byte slice.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Decoder<'a> {
        Decoder { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(CodecError::TrailingBytes { count }),
        }
    }

    /// Reads `n` raw bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(CodecError::UnexpectedEnd { what });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Reads a `bool` (tag 0 or 1).
    pub fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(CodecError::BadTag { what, tag }),
        }
    }

    /// Reads and checks a format version byte.
    pub fn version(&mut self, what: &'static str, expected: u8) -> Result<(), CodecError> {
        match self.u8(what)? {
            v if v == expected => Ok(()),
            version => Err(CodecError::BadVersion { what, version }),
        }
    }

    /// Reads a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], CodecError> {
        let len = self.count(what, max)?;
        self.take(len, what)
    }

    /// Reads length-prefixed UTF-8 text of at most `max` bytes.
    pub fn text(&mut self, what: &'static str, max: usize) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes(what, max)?).map_err(|_| CodecError::Invalid {
            what,
            reason: "not UTF-8".into(),
        })
    }

    /// Reads a `u32` length or item count of at most `max`.
    pub fn count(&mut self, what: &'static str, max: usize) -> Result<usize, CodecError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(CodecError::TooLong {
                what,
                len: n as u64,
                max: max as u64,
            });
        }
        Ok(n)
    }

    /// Reads a sequence of at most `max` items.
    pub fn seq<T: Decode>(&mut self, what: &'static str, max: usize) -> Result<Vec<T>, CodecError> {
        let n = self.count(what, max)?;
        // A block's transactions fill their vector without a copy of it at each
        // doubling; an untrusted count reserves little (see `seq_reserve`).
        let mut out = Vec::with_capacity(seq_reserve::<T>(n, self.remaining()));
        for _ in 0..n {
            out.push(T::decode(self)?);
        }
        Ok(out)
    }

    /// Reads a 32-byte hash.
    pub fn hash(&mut self, what: &'static str) -> Result<Hash, CodecError> {
        Ok(Hash(self.array(what)?))
    }

    /// Reads a 32-byte ed25519 public key and checks it is a curve point.
    pub fn public_key(&mut self, what: &'static str) -> Result<PublicKey, CodecError> {
        PublicKey::from_bytes(&self.array(what)?).map_err(|_| CodecError::Invalid {
            what,
            reason: "not an ed25519 public key".into(),
        })
    }

    /// Reads a 64-byte signature.
    pub fn signature(&mut self, what: &'static str) -> Result<Signature, CodecError> {
        Ok(Signature(self.array(what)?))
    }

    /// Reads an optional hash (tag byte, then the hash if present).
    pub fn option_hash(&mut self, what: &'static str) -> Result<Option<Hash>, CodecError> {
        Ok(if self.bool(what)? {
            Some(self.hash(what)?)
        } else {
            None
        })
    }
}

impl Encode for Hash {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

impl Decode for Hash {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.hash("hash")
    }
}

/// Writes an optional hash (tag byte, then the hash if present).
pub fn put_option_hash(out: &mut Vec<u8>, value: &Option<Hash>) {
    match value {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_reads() {
        let mut d = Decoder::new(&[0, 0, 0, 3, b'a', b'b']);
        assert_eq!(
            d.bytes("x", 10),
            Err(CodecError::UnexpectedEnd { what: "x" })
        );
        let mut d = Decoder::new(&[0, 0, 0, 11]);
        assert!(matches!(
            d.bytes("x", 10),
            Err(CodecError::TooLong { len: 11, .. })
        ));
        let mut d = Decoder::new(&[2]);
        assert_eq!(d.bool("b"), Err(CodecError::BadTag { what: "b", tag: 2 }));
        let mut d = Decoder::new(&[0, 0, 0, 2, 0xff, 0xfe]);
        assert!(matches!(d.text("t", 10), Err(CodecError::Invalid { .. })));
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.seq::<Hash>("s", 1000),
            Err(CodecError::TooLong { .. })
        ));
        assert_eq!(
            Hash::from_bytes(&[0; 33]),
            Err(CodecError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn a_sequence_reserves_its_count_within_its_bytes_and_budget() {
        let hashes: Vec<Hash> = (0..5u8).map(|i| Hash([i; 32])).collect();
        let mut bytes = Vec::new();
        put_seq(&mut bytes, &hashes);
        let decoded = Decoder::new(&bytes).seq::<Hash>("s", 10).unwrap();
        assert_eq!(decoded, hashes);
        assert_eq!(decoded.capacity(), 5, "reserved for the count at once");

        // A count far beyond the bytes that follow reserves no more than those bytes
        // (and fails on the missing items); a large item type no more than the budget.
        let mut lying = Vec::new();
        put_count(&mut lying, 1_000_000);
        lying.extend_from_slice(&[7; 40]);
        assert_eq!(
            Decoder::new(&lying).seq::<Hash>("s", 1 << 20),
            Err(CodecError::UnexpectedEnd { what: "hash" })
        );
        assert_eq!(seq_reserve::<Hash>(1_000_000, 40), 40);
        assert_eq!(seq_reserve::<Hash>(1_000_000, 1 << 30), (1 << 20) / 32);
        assert_eq!(seq_reserve::<[u8; 4 << 20]>(10, 1 << 30), 1);
        assert_eq!(seq_reserve::<Hash>(3, 1 << 30), 3);
    }
}
