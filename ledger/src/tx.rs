//! Transactions: what users sign and the ledger orders.

use pyralog_crypto::{BatchItem, HashDomain, Keypair, PublicKey, SigDomain, Signature};
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, Decode, Decoder, Encode, put_bytes};
use crate::{ChainId, Hash};

/// Format version of [`Transaction`].
pub const TX_VERSION: u8 = 1;
/// Largest notarization `meta` text, in bytes.
pub const MAX_META_BYTES: usize = 1024;
/// Largest key of a `Put` or `Delete`, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value of a `Put`, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest encoded transaction, in bytes (a `Put` with the largest key and value fits).
pub const MAX_TX_BYTES: usize =
    1 + (4 + 64) + 32 + 8 + 1 + (4 + MAX_KEY_BYTES) + (4 + MAX_VALUE_BYTES) + 64;

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Payload {
    /// Records that a content digest (plain BLAKE3 of a file) existed at this block's time.
    Notarize {
        /// BLAKE3 digest of the notarized content.
        digest: Hash,
        /// Free text stored with the digest (at most [`MAX_META_BYTES`]).
        meta: String,
    },
    /// Sets `key` to `value` in the key-value namespace.
    Put {
        /// The key (1 to [`MAX_KEY_BYTES`] bytes).
        #[serde(with = "crate::hex_bytes")]
        key: Vec<u8>,
        /// The value (at most [`MAX_VALUE_BYTES`]).
        #[serde(with = "crate::hex_bytes")]
        value: Vec<u8>,
    },
    /// Removes `key` from the key-value namespace.
    Delete {
        /// The key (1 to [`MAX_KEY_BYTES`] bytes).
        #[serde(with = "crate::hex_bytes")]
        key: Vec<u8>,
    },
}

impl Payload {
    /// A short name of the kind, for logs, metrics and exports.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Notarize { .. } => "notarize",
            Payload::Put { .. } => "put",
            Payload::Delete { .. } => "delete",
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Notarize { digest, meta } => {
                out.push(1);
                digest.encode(out);
                put_bytes(out, meta.as_bytes());
            }
            Payload::Put { key, value } => {
                out.push(2);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Payload::Delete { key } => {
                out.push(3);
                put_bytes(out, key);
            }
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        // Lengths are bounded while reading; the remaining rules (non-empty keys) are
        // those of check_limits, applied once the payload is built.
        let payload = match d.u8("payload tag")? {
            1 => Payload::Notarize {
                digest: d.hash("digest")?,
                meta: d.text("meta", MAX_META_BYTES)?.to_string(),
            },
            2 => Payload::Put {
                key: d.bytes("key", MAX_KEY_BYTES)?.to_vec(),
                value: d.bytes("value", MAX_VALUE_BYTES)?.to_vec(),
            },
            3 => Payload::Delete {
                key: d.bytes("key", MAX_KEY_BYTES)?.to_vec(),
            },
            tag => {
                return Err(CodecError::BadTag {
                    what: "payload",
                    tag,
                });
            }
        };
        payload.check_limits()?;
        Ok(payload)
    }

    /// Checks the size limits the decoder enforces, for payloads built in memory.
    pub fn check_limits(&self) -> Result<(), CodecError> {
        let too_long = |what, len: usize, max: usize| {
            if len > max {
                Err(CodecError::TooLong {
                    what,
                    len: len as u64,
                    max: max as u64,
                })
            } else {
                Ok(())
            }
        };
        let key_ok = |key: &[u8]| {
            if key.is_empty() {
                return Err(CodecError::Invalid {
                    what: "key",
                    reason: "empty".into(),
                });
            }
            too_long("key", key.len(), MAX_KEY_BYTES)
        };
        match self {
            Payload::Notarize { meta, .. } => too_long("meta", meta.len(), MAX_META_BYTES),
            Payload::Put { key, value } => {
                key_ok(key)?;
                too_long("value", value.len(), MAX_VALUE_BYTES)
            }
            Payload::Delete { key } => key_ok(key),
        }
    }
}

/// A signed transaction.
///
/// Encoding: version, chain id, sender, nonce, payload, signature. The signature covers
/// everything before it (the *body*) in the [`SigDomain::Transaction`] domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The chain this transaction is for.
    pub chain_id: ChainId,
    /// The account that signed it.
    pub sender: PublicKey,
    /// The sender's sequence number: 0 for its first transaction, then +1 each time.
    pub nonce: u64,
    /// What it does.
    pub payload: Payload,
    /// The sender's signature over the body.
    pub signature: Signature,
}

impl Transaction {
    /// Builds and signs a transaction. Fails if the payload breaks a size limit.
    pub fn new_signed(
        key: &Keypair,
        chain_id: ChainId,
        nonce: u64,
        payload: Payload,
    ) -> Result<Transaction, CodecError> {
        payload.check_limits()?;
        let mut tx = Transaction {
            chain_id,
            sender: key.public(),
            nonce,
            payload,
            signature: Signature([0; 64]),
        };
        tx.signature = key.sign(
            SigDomain::Transaction,
            tx.chain_id.as_str(),
            &tx.body_bytes(),
        );
        Ok(tx)
    }

    /// The signed part of the encoding.
    pub fn body_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_body(&mut out);
        out
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(TX_VERSION);
        self.chain_id.encode(out);
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        self.payload.encode(out);
    }

    /// The transaction's identity: the [`HashDomain::Tx`] hash of its full encoding.
    pub fn hash(&self) -> Hash {
        self.hash_and_len().0
    }

    /// [`Transaction::hash`] and the length of the encoding it hashes, from one encoding
    /// into one allocation (a notarization is about 200 bytes; `to_bytes` grows its
    /// vector from empty, several allocations).
    pub fn hash_and_len(&self) -> (Hash, usize) {
        let mut out = Vec::with_capacity(256);
        self.encode(&mut out);
        (Transaction::hash_of_encoding(&out), out.len())
    }

    /// [`Transaction::hash`] of the transaction whose canonical encoding is `encoded`,
    /// for a caller that holds the encoding and not the decoded transaction.
    pub fn hash_of_encoding(encoded: &[u8]) -> Hash {
        HashDomain::Tx.hash(encoded)
    }

    /// Checks the sender's signature (the rule of `pyralog_crypto::rule`).
    pub fn verify_signature(&self) -> Result<(), pyralog_crypto::CryptoError> {
        self.sender.verify(
            SigDomain::Transaction,
            self.chain_id.as_str(),
            &self.body_bytes(),
            &self.signature,
        )
    }
}

/// Checks the signatures of many transactions in one batch, spread over the cores; on
/// failure returns the positions of the invalid ones.
pub fn verify_tx_signatures(txs: &[Transaction]) -> Result<(), Vec<usize>> {
    let refs: Vec<&Transaction> = txs.iter().collect();
    verify_signatures_of(&refs)
}

/// [`verify_tx_signatures`] over references (positions in `txs` on failure).
pub fn verify_signatures_of(txs: &[&Transaction]) -> Result<(), Vec<usize>> {
    with_batch_items(txs, pyralog_crypto::verify_batch_report_parallel)
}

/// [`verify_signatures_of`] on the calling thread alone: for a node's own batches (a
/// gossip message, an RPC submission), where the other cores have work of their own.
pub fn verify_signatures_here(txs: &[&Transaction]) -> Result<(), Vec<usize>> {
    with_batch_items(txs, pyralog_crypto::verify_batch_report)
}

fn with_batch_items<R>(txs: &[&Transaction], check: impl FnOnce(&[BatchItem<'_>]) -> R) -> R {
    let bodies: Vec<Vec<u8>> = txs.iter().map(|t| t.body_bytes()).collect();
    let items: Vec<BatchItem<'_>> = txs
        .iter()
        .zip(&bodies)
        .map(|(tx, body)| BatchItem {
            public_key: &tx.sender,
            domain: SigDomain::Transaction,
            chain_id: tx.chain_id.as_str(),
            message: body,
            signature: &tx.signature,
        })
        .collect();
    check(&items)
}

impl Encode for Transaction {
    fn encode(&self, out: &mut Vec<u8>) {
        self.encode_body(out);
        out.extend_from_slice(&self.signature.0);
    }
}

impl Decode for Transaction {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("transaction", TX_VERSION)?;
        Ok(Transaction {
            chain_id: ChainId::decode(d)?,
            sender: d.public_key("sender")?,
            nonce: d.u64("nonce")?,
            payload: Payload::decode(d)?,
            signature: d.signature("signature")?,
        })
    }
}
