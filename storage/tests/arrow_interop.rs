//! Arrow export read back by a real reader: pyarrow (installed by `scripts/test`) must see
//! the same rows, types and values that the store holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use pyralog_ledger::Payload;
use pyralog_storage::arrow::{ExportFormat, ExportTable, export};
use pyralog_storage::{SledStore, Store};

const READER: &str = r#"
import json, sys
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
path = sys.argv[1]
table = pq.read_table(path) if path.endswith(".parquet") else ipc.open_file(path).read_all()
out = {"schema": {f.name: str(f.type) for f in table.schema}, "rows": table.to_pylist()}
def enc(v):
    if isinstance(v, bytes):
        return v.hex()
    if hasattr(v, "isoformat"):
        return int(v.timestamp() * 1000)
    return v
out["rows"] = [{k: enc(v) for k, v in r.items()} for r in out["rows"]]
print(json.dumps(out))
"#;

fn read_with_pyarrow(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new("python3")
        .args(["-c", READER])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pyarrow could not read the export (run scripts/test, which installs pyarrow): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn pyarrow_reads_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    let chain = common::test_chain();
    for _ in 0..6 {
        common::commit_next(&store, &chain);
    }
    let mut expected = Vec::new();
    for h in 2..=5u64 {
        let block = store.block(h).unwrap().unwrap();
        let first_log = block.header.log_size - block.header.tx_count as u64;
        for (i, tx) in block.txs.iter().enumerate() {
            let (digest, meta, key, value) = match &tx.payload {
                Payload::Notarize { digest, meta } => (
                    digest.to_hex().into(),
                    meta.clone().into(),
                    serde_json::Value::Null,
                    serde_json::Value::Null,
                ),
                Payload::Put { key, value } => (
                    serde_json::Value::Null,
                    serde_json::Value::Null,
                    hex::encode(key).into(),
                    hex::encode(value).into(),
                ),
                Payload::Delete { key } => (
                    serde_json::Value::Null,
                    serde_json::Value::Null,
                    hex::encode(key).into(),
                    serde_json::Value::Null,
                ),
            };
            expected.push(serde_json::json!({
                "height": h,
                "block_time": block.header.time_ms,
                "index": i,
                "log_index": first_log + i as u64,
                "tx_hash": tx.hash().to_hex(),
                "sender": tx.sender.to_hex(),
                "nonce": tx.nonce,
                "kind": tx.payload.kind(),
                "digest": digest,
                "meta": meta,
                "key": key,
                "value": value,
            }));
        }
    }
    // Transactions of heights 2..=5, in both formats.
    for (format, name) in [
        (ExportFormat::Arrow, "txs.arrow"),
        (ExportFormat::Parquet, "txs.parquet"),
    ] {
        let path = dir.path().join(name);
        let summary = export(
            &store,
            ExportTable::Transactions,
            format,
            2,
            5,
            std::fs::File::create(&path).unwrap(),
        )
        .unwrap();
        assert_eq!((summary.blocks, summary.rows), (4, 16));
        let got = read_with_pyarrow(&path);
        assert_eq!(got["schema"]["block_time"], "timestamp[ms, tz=UTC]");
        assert_eq!(got["schema"]["height"], "uint64");
        assert_eq!(got["rows"].as_array().unwrap(), &expected, "{name}");
    }

    // Blocks, with the range clamped to the tip.
    let path = dir.path().join("blocks.arrow");
    let summary = export(
        &store,
        ExportTable::Blocks,
        ExportFormat::Arrow,
        1,
        100,
        std::fs::File::create(&path).unwrap(),
    )
    .unwrap();
    assert_eq!((summary.blocks, summary.rows), (6, 6));
    let got = read_with_pyarrow(&path);
    let rows = got["rows"].as_array().unwrap();
    for (i, row) in rows.iter().enumerate() {
        let h = i as u64 + 1;
        let header = store.header(h).unwrap().unwrap();
        assert_eq!(row["height"], h);
        assert_eq!(row["header_hash"], header.hash().to_hex());
        assert_eq!(row["state_root"], header.state_root.to_hex());
        assert_eq!(row["time"], header.time_ms);
        assert_eq!(row["certificate_votes"], 4);
    }
    // Bad ranges are errors, not empty files.
    for (from, to) in [(0, 3), (4, 3)] {
        let r = export(
            &store,
            ExportTable::Blocks,
            ExportFormat::Arrow,
            from,
            to,
            Vec::new(),
        );
        assert!(r.is_err(), "{from}..={to}");
    }
}
