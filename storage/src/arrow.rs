//! Export of blocks and transactions as Apache Arrow IPC or Parquet files (pyarrow, DuckDB
//! and Polars read them as is).
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
use parquet::arrow::ArrowWriter;
use pyralog_ledger::{Block, Certificate, Payload};

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
    fn push(&mut self, block: &Block, cert: &Certificate) {
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

/// The file format of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Arrow IPC file (`.arrow`, Feather v2).
    Arrow,
    /// Parquet with Snappy compression.
    Parquet,
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Blocks read.
    pub blocks: u64,
    /// Rows written.
    pub rows: u64,
}

#[allow(clippy::large_enum_variant)] // one per export, never moved in a loop
enum Sink<W: Write + Send> {
    Arrow(FileWriter<W>),
    Parquet(ArrowWriter<W>),
}

fn export_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Export(e.to_string())
}

/// Writes blocks, one at a time, as rows of one table in one file. Memory stays bounded:
/// rows are flushed every [`BATCH_ROWS`].
pub struct TableWriter<W: Write + Send> {
    schema: SchemaRef,
    sink: Sink<W>,
    columns: Columns,
    summary: ExportSummary,
}

/// The rows not yet written, of the table being exported.
enum Columns {
    Txs(TxColumns),
    Blocks(BlockColumns),
}

impl Columns {
    /// Adds a block's rows; returns how many.
    fn push(&mut self, block: &Block, cert: &Certificate) -> u64 {
        match self {
            Columns::Txs(c) => {
                c.push(block);
                block.txs.len() as u64
            }
            Columns::Blocks(c) => {
                c.push(block, cert);
                1
            }
        }
    }

    fn rows(&self) -> usize {
        match self {
            Columns::Txs(c) => c.rows,
            Columns::Blocks(c) => c.rows,
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, StorageError> {
        match self {
            Columns::Txs(c) => c.finish(schema),
            Columns::Blocks(c) => c.finish(schema),
        }
    }
}

impl<W: Write + Send> TableWriter<W> {
    /// Starts a file of `table` in `format` on `out`.
    pub fn new(
        table: ExportTable,
        format: ExportFormat,
        out: W,
    ) -> Result<TableWriter<W>, StorageError> {
        let (schema, columns) = match table {
            ExportTable::Blocks => (blocks_schema(), Columns::Blocks(BlockColumns::default())),
            ExportTable::Transactions => {
                (transactions_schema(), Columns::Txs(TxColumns::default()))
            }
        };
        let sink = match format {
            ExportFormat::Arrow => {
                Sink::Arrow(FileWriter::try_new(out, &schema).map_err(export_err)?)
            }
            ExportFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .build();
                Sink::Parquet(
                    ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(export_err)?,
                )
            }
        };
        Ok(TableWriter {
            schema,
            sink,
            columns,
            summary: ExportSummary { blocks: 0, rows: 0 },
        })
    }

    /// Writes the pending rows as one record batch.
    fn flush(&mut self) -> Result<(), StorageError> {
        let batch = self.columns.finish(&self.schema)?;
        match &mut self.sink {
            Sink::Arrow(w) => w.write(&batch).map_err(export_err),
            Sink::Parquet(w) => w.write(&batch).map_err(export_err),
        }
    }

    /// Adds `block` (with its certificate, used by the blocks table).
    pub fn push(&mut self, block: &Block, cert: &Certificate) -> Result<(), StorageError> {
        self.summary.blocks += 1;
        self.summary.rows += self.columns.push(block, cert);
        if self.columns.rows() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the remaining rows and the file's footer.
    pub fn finish(mut self) -> Result<ExportSummary, StorageError> {
        if self.columns.rows() > 0 {
            self.flush()?;
        }
        match self.sink {
            Sink::Arrow(mut w) => w.finish().map_err(export_err)?,
            Sink::Parquet(w) => {
                w.close().map_err(export_err)?;
            }
        }
        Ok(self.summary)
    }
}

/// Writes `table` for heights `from..=to` (clamped to the committed tip) to `out` in
/// `format`. Fails if `from` is 0 or above `to`.
pub fn export<S: Store + ?Sized, W: Write + Send>(
    store: &S,
    table: ExportTable,
    format: ExportFormat,
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
    let mut writer = TableWriter::new(table, format, out)?;
    for height in from..=to {
        let missing = |what| StorageError::Corrupt {
            what,
            reason: format!("missing at height {height}"),
        };
        let block = store.block(height)?.ok_or_else(|| missing("block"))?;
        let cert = store
            .certificate(height)?
            .ok_or_else(|| missing("certificate"))?;
        writer.push(&block, &cert)?;
    }
    writer.finish()
}
