//! Export of blocks and transactions as Apache Arrow IPC files (pyarrow, DuckDB and Polars
//! read them as is).
//!
//! Two tables, one per file:
//! - [`ExportTable::Transactions`]: one row per transaction, with its block's height and
//!   time, position, hash, sender, nonce, kind and payload fields;
//! - [`ExportTable::Blocks`]: one row per block, with the header fields and the size of
//!   its certificate.
//!
//! Hashes and keys are lower-case hex text (easy to compare with `b3sum` output and to
//! query in SQL); times are UTC millisecond timestamps. Rows are written in record batches
//! of at most [`BATCH_ROWS`], so memory stays bounded for any height range.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use pyralog_ledger::{Block, Payload};

use crate::{StorageError, Store};

/// Most rows per record batch.
pub const BATCH_ROWS: usize = 8192;

/// Which table to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportTable {
    /// One row per block.
    Blocks,
    /// One row per transaction.
    Transactions,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Schema of the transactions table.
pub fn transactions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("height", DataType::UInt64, false),
        Field::new("block_time", ts(), false),
        Field::new("index", DataType::UInt32, false),
        Field::new("log_index", DataType::UInt64, false),
        Field::new("tx_hash", DataType::Utf8, false),
        Field::new("sender", DataType::Utf8, false),
        Field::new("nonce", DataType::UInt64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("digest", DataType::Utf8, true),
        Field::new("meta", DataType::Utf8, true),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
    ]))
}

/// Schema of the blocks table.
pub fn blocks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("height", DataType::UInt64, false),
        Field::new("time", ts(), false),
        Field::new("header_hash", DataType::Utf8, false),
        Field::new("prev_hash", DataType::Utf8, false),
        Field::new("tx_count", DataType::UInt32, false),
        Field::new("tx_root", DataType::Utf8, false),
        Field::new("log_size", DataType::UInt64, false),
        Field::new("log_root", DataType::Utf8, false),
        Field::new("state_root", DataType::Utf8, false),
        Field::new("proposer", DataType::Utf8, false),
        Field::new("certificate_round", DataType::UInt32, false),
        Field::new("certificate_votes", DataType::UInt32, false),
    ]))
}

fn record_batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch, StorageError> {
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| StorageError::Export(e.to_string()))
}

#[derive(Default)]
struct TxColumns {
    height: UInt64Builder,
    time: TimestampMillisecondBuilder,
    index: UInt32Builder,
    log_index: UInt64Builder,
    tx_hash: StringBuilder,
    sender: StringBuilder,
    nonce: UInt64Builder,
    kind: StringBuilder,
    digest: StringBuilder,
    meta: StringBuilder,
    key: BinaryBuilder,
    value: BinaryBuilder,
    rows: usize,
}

impl TxColumns {
    fn push(&mut self, block: &Block) {
        let h = &block.header;
        let first = h.log_size - h.tx_count as u64;
        for (i, tx) in block.txs.iter().enumerate() {
            self.height.append_value(h.height);
            self.time.append_value(h.time_ms as i64);
            self.index.append_value(i as u32);
            self.log_index.append_value(first + i as u64);
            self.tx_hash.append_value(tx.hash().to_hex());
            self.sender.append_value(tx.sender.to_hex());
            self.nonce.append_value(tx.nonce);
            self.kind.append_value(tx.payload.kind());
            match &tx.payload {
                Payload::Notarize { digest, meta } => {
                    self.digest.append_value(digest.to_hex());
                    self.meta.append_value(meta);
                    self.key.append_null();
                    self.value.append_null();
                }
                Payload::Put { key, value } => {
                    self.digest.append_null();
                    self.meta.append_null();
                    self.key.append_value(key);
                    self.value.append_value(value);
                }
                Payload::Delete { key } => {
                    self.digest.append_null();
                    self.meta.append_null();
                    self.key.append_value(key);
                    self.value.append_null();
                }
            }
            self.rows += 1;
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, StorageError> {
        self.rows = 0;
        let time = self.time.finish().with_timezone("UTC");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.height.finish()),
            Arc::new(time),
            Arc::new(self.index.finish()),
            Arc::new(self.log_index.finish()),
            Arc::new(self.tx_hash.finish()),
            Arc::new(self.sender.finish()),
            Arc::new(self.nonce.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.digest.finish()),
            Arc::new(self.meta.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
        ];
        record_batch(schema, columns)
    }
}

#[derive(Default)]
struct BlockColumns {
    height: UInt64Builder,
    time: TimestampMillisecondBuilder,
    header_hash: StringBuilder,
    prev_hash: StringBuilder,
    tx_count: UInt32Builder,
    tx_root: StringBuilder,
    log_size: UInt64Builder,
    log_root: StringBuilder,
    state_root: StringBuilder,
    proposer: StringBuilder,
    round: UInt32Builder,
    votes: UInt32Builder,
    rows: usize,
}

impl BlockColumns {
    fn push(&mut self, block: &Block, cert: &pyralog_ledger::Certificate) {
        let h = &block.header;
        self.height.append_value(h.height);
        self.time.append_value(h.time_ms as i64);
        self.header_hash.append_value(h.hash().to_hex());
        self.prev_hash.append_value(h.prev_hash.to_hex());
        self.tx_count.append_value(h.tx_count);
        self.tx_root.append_value(h.tx_root.to_hex());
        self.log_size.append_value(h.log_size);
        self.log_root.append_value(h.log_root.to_hex());
        self.state_root.append_value(h.state_root.to_hex());
        self.proposer.append_value(h.proposer.to_hex());
        self.round.append_value(cert.round);
        self.votes.append_value(cert.votes.len() as u32);
        self.rows += 1;
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, StorageError> {
        self.rows = 0;
        let time = self.time.finish().with_timezone("UTC");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.height.finish()),
            Arc::new(time),
            Arc::new(self.header_hash.finish()),
            Arc::new(self.prev_hash.finish()),
            Arc::new(self.tx_count.finish()),
            Arc::new(self.tx_root.finish()),
            Arc::new(self.log_size.finish()),
            Arc::new(self.log_root.finish()),
            Arc::new(self.state_root.finish()),
            Arc::new(self.proposer.finish()),
            Arc::new(self.round.finish()),
            Arc::new(self.votes.finish()),
        ];
        record_batch(schema, columns)
    }
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Blocks read.
    pub blocks: u64,
    /// Rows written.
    pub rows: u64,
}

/// Writes `table` for heights `from..=to` (clamped to the committed tip) to `out` as an
/// Arrow IPC file. Fails if `from` is 0 or above `to`.
pub fn export<S: Store + ?Sized, W: Write>(
    store: &S,
    table: ExportTable,
    from: u64,
    to: u64,
    out: W,
) -> Result<ExportSummary, StorageError> {
    let tip = store.tip()?.height;
    if from == 0 || from > to {
        return Err(StorageError::Export(format!(
            "invalid height range {from}..={to}"
        )));
    }
    let to = to.min(tip);
    let schema = match table {
        ExportTable::Blocks => blocks_schema(),
        ExportTable::Transactions => transactions_schema(),
    };
    let arrow_err = |e: arrow_schema::ArrowError| StorageError::Export(e.to_string());
    let mut writer = FileWriter::try_new(out, &schema).map_err(arrow_err)?;
    let (mut txs, mut blocks) = (TxColumns::default(), BlockColumns::default());
    let mut summary = ExportSummary { blocks: 0, rows: 0 };
    for height in from..=to {
        let missing = |what| StorageError::Corrupt {
            what,
            reason: format!("missing at height {height}"),
        };
        let block = store.block(height)?.ok_or_else(|| missing("block"))?;
        summary.blocks += 1;
        match table {
            ExportTable::Transactions => {
                txs.push(&block);
                summary.rows += block.txs.len() as u64;
                if txs.rows >= BATCH_ROWS {
                    writer.write(&txs.finish(&schema)?).map_err(arrow_err)?;
                }
            }
            ExportTable::Blocks => {
                let cert = store
                    .certificate(height)?
                    .ok_or_else(|| missing("certificate"))?;
                blocks.push(&block, &cert);
                summary.rows += 1;
                if blocks.rows >= BATCH_ROWS {
                    writer.write(&blocks.finish(&schema)?).map_err(arrow_err)?;
                }
            }
        }
    }
    if txs.rows > 0 {
        writer.write(&txs.finish(&schema)?).map_err(arrow_err)?;
    }
    if blocks.rows > 0 {
        writer.write(&blocks.finish(&schema)?).map_err(arrow_err)?;
    }
    writer.finish().map_err(arrow_err)?;
    Ok(summary)
}
