//! The node's own network messages: transaction batches (gossip), and the block sync
//! protocol and the fetch of a compact proposal's missing transactions
//! (request-response). Canonical, versioned encodings; decoders bound every
//! length, so untrusted bytes never allocate more than the frame they came in.

use pyralog_ledger::codec::{Decoder, put_bytes, put_count};
use pyralog_ledger::{Block, Certificate, CodecError, Decode, Encode, Hash, Transaction};

/// Wire version of these messages.
pub const WIRE_VERSION: u8 = 1;
/// Most transactions in one gossiped batch.
pub const MAX_BATCH_TXS: usize = 10_000;
/// Most blocks asked for or returned by one sync request.
pub const MAX_SYNC_BLOCKS: u32 = 64;
/// Most encoded bytes of blocks in one sync response (the rest is asked for next).
pub const MAX_SYNC_RESPONSE_BYTES: usize = 24 << 20;
/// Most transactions of a compact proposal asked for in one request (32 KiB of positions,
/// within the 64 KiB a request may hold); a larger fetch takes several.
pub const MAX_FETCH_TXS: usize = 8192;

/// Encodes a batch of transactions for gossip.
pub fn encode_tx_batch(txs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    put_count(&mut out, txs.len());
    for t in txs {
        put_bytes(&mut out, t);
    }
    out
}

/// Decodes a gossiped batch (transactions still unverified), each with its encoded
/// length.
pub fn decode_tx_batch(bytes: &[u8]) -> Result<Vec<(Transaction, usize)>, CodecError> {
    let mut d = Decoder::new(bytes);
    d.version("transaction batch", WIRE_VERSION)?;
    let txs = get_txs(&mut d, MAX_BATCH_TXS)?;
    d.finish()?;
    Ok(txs)
}

/// A count, then that many transactions (bytes each, at most `max`), each with its
/// encoded length: what a gossiped batch and a fetch's answer carry.
fn get_txs(d: &mut Decoder<'_>, max: usize) -> Result<Vec<(Transaction, usize)>, CodecError> {
    let n = d.count("transactions", max)?;
    let mut txs = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let raw = d.bytes("transaction", pyralog_ledger::tx::MAX_TX_BYTES)?;
        txs.push((Transaction::from_bytes(raw)?, raw.len()));
    }
    Ok(txs)
}

/// A sync request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncRequest {
    /// "What is your committed height?"
    Status,
    /// Committed blocks with certificates from `from`, at most `max`.
    Blocks {
        /// First height.
        from: u64,
        /// How many.
        max: u32,
    },
    /// The transactions of a proposed block at these positions (a compact proposal's
    /// that this node does not hold).
    ProposalTxs {
        /// The block's header hash.
        block: Hash,
        /// Positions in the block, ascending.
        indices: Vec<u32>,
    },
}

/// A sync response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncResponse {
    /// The peer's committed height.
    Status {
        /// Its height.
        height: u64,
    },
    /// Blocks with their certificates, consecutive from the requested height.
    Blocks(Vec<(Block, Certificate)>),
    /// The transactions asked for with [`SyncRequest::ProposalTxs`], in the order asked
    /// (unverified).
    Txs(Vec<Transaction>),
    /// The peer could not answer.
    Error(String),
}

impl SyncRequest {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        match self {
            SyncRequest::Status => out.push(1),
            SyncRequest::Blocks { from, max } => {
                out.push(2);
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&max.to_be_bytes());
            }
            SyncRequest::ProposalTxs { block, indices } => {
                out.push(3);
                block.encode(&mut out);
                put_count(&mut out, indices.len());
                for i in indices {
                    out.extend_from_slice(&i.to_be_bytes());
                }
            }
        }
        out
    }

    /// Decodes untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<SyncRequest, CodecError> {
        let mut d = Decoder::new(bytes);
        d.version("sync request", WIRE_VERSION)?;
        let r = match d.u8("sync request tag")? {
            1 => SyncRequest::Status,
            2 => SyncRequest::Blocks {
                from: d.u64("from")?,
                max: d.u32("max")?,
            },
            3 => {
                let block = d.hash("block")?;
                let n = d.count("indices", MAX_FETCH_TXS)?;
                let mut indices = Vec::with_capacity(n.min(d.remaining() / 4));
                for _ in 0..n {
                    indices.push(d.u32("index")?);
                }
                SyncRequest::ProposalTxs { block, indices }
            }
            tag => {
                return Err(CodecError::BadTag {
                    what: "sync request",
                    tag,
                });
            }
        };
        d.finish()?;
        Ok(r)
    }
}

impl SyncResponse {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        match self {
            SyncResponse::Status { height } => {
                out.push(1);
                out.extend_from_slice(&height.to_be_bytes());
            }
            SyncResponse::Blocks(blocks) => {
                out.push(2);
                put_count(&mut out, blocks.len());
                for (b, c) in blocks {
                    put_bytes(&mut out, &b.to_bytes());
                    put_bytes(&mut out, &c.to_bytes());
                }
            }
            SyncResponse::Error(text) => {
                out.push(3);
                put_bytes(&mut out, text.as_bytes());
            }
            SyncResponse::Txs(txs) => {
                out.push(4);
                put_count(&mut out, txs.len());
                for tx in txs {
                    put_bytes(&mut out, &tx.to_bytes());
                }
            }
        }
        out
    }

    /// Decodes untrusted bytes (blocks and certificates are still unverified).
    pub fn from_bytes(bytes: &[u8]) -> Result<SyncResponse, CodecError> {
        let mut d = Decoder::new(bytes);
        d.version("sync response", WIRE_VERSION)?;
        let r = match d.u8("sync response tag")? {
            1 => SyncResponse::Status {
                height: d.u64("height")?,
            },
            2 => {
                let n = d.count("blocks", MAX_SYNC_BLOCKS as usize)?;
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    let b = Block::from_bytes(d.bytes("block", MAX_SYNC_RESPONSE_BYTES)?)?;
                    let c = Certificate::from_bytes(d.bytes("certificate", 1 << 20)?)?;
                    blocks.push((b, c));
                }
                SyncResponse::Blocks(blocks)
            }
            3 => SyncResponse::Error(d.text("error", 1024)?.to_string()),
            4 => {
                let txs = get_txs(&mut d, MAX_FETCH_TXS)?;
                SyncResponse::Txs(txs.into_iter().map(|(tx, _)| tx).collect())
            }
            tag => {
                return Err(CodecError::BadTag {
                    what: "sync response",
                    tag,
                });
            }
        };
        d.finish()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_garbage_is_an_error() {
        for r in [
            SyncRequest::Status,
            SyncRequest::Blocks { from: 7, max: 3 },
            SyncRequest::ProposalTxs {
                block: Hash([7; 32]),
                indices: vec![0, 5, 9],
            },
        ] {
            assert_eq!(SyncRequest::from_bytes(&r.to_bytes()).unwrap(), r);
        }
        for r in [
            SyncResponse::Status { height: 9 },
            SyncResponse::Blocks(vec![]),
            SyncResponse::Error("no".into()),
            SyncResponse::Txs(vec![]),
            SyncResponse::Txs({
                let chain = pyralog_ledger::testing::TestChain::new(
                    1,
                    pyralog_ledger::EngineId::Tendermint,
                );
                let user = pyralog_ledger::testing::user(1);
                vec![
                    chain.notarize(&user, 0, Hash([1; 32]), "a"),
                    chain.put(&user, 1, b"k", b"v"),
                ]
            }),
        ] {
            assert_eq!(SyncResponse::from_bytes(&r.to_bytes()).unwrap(), r);
        }
        for junk in [&[][..], &[1], &[1, 9], &[2, 1], &[1, 2, 0, 0]] {
            assert!(SyncRequest::from_bytes(junk).is_err());
            assert!(SyncResponse::from_bytes(junk).is_err());
        }
        // A count larger than the frame fails without allocating it.
        let mut huge = vec![WIRE_VERSION];
        put_count(&mut huge, usize::MAX >> 40);
        assert!(decode_tx_batch(&huge).is_err());
        let mut huge = vec![WIRE_VERSION, 3];
        huge.extend_from_slice(&[0; 32]);
        put_count(&mut huge, MAX_FETCH_TXS);
        assert!(SyncRequest::from_bytes(&huge).is_err());
        assert!(decode_tx_batch(&encode_tx_batch(&[])).unwrap().is_empty());
    }
}
