//! `pyralog-testnet bench --quick`: the regression run CI keeps. It checks that the report
//! is complete and consistent, never its figures (a shared machine is noisy). The JSON is
//! kept in `target/tmp/bench-quick.json` for comparison across changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

mod common;

use common::{EXE, fetch_metrics, metric, succeed};

#[test]
fn quick_bench_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-quick.json");
    let out = succeed(
        std::process::Command::new(EXE)
            .args(["bench", "--quick", "--home"])
            .arg(dir.path().join("bench"))
            .arg("--json")
            .arg(&json),
        "bench --quick",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("signature bound"), "{text}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let num = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(v["validators"], 4);
    // Submitted with broadcast_txs unless `--submit each`.
    assert_eq!(v["submit"], "batch");
    assert_eq!(v["submitted"], 2000);
    assert_eq!(
        num("committed") + num("rejected") + num("stranded"),
        2000.0,
        "every transaction is committed, counted as rejected, or not sent behind a rejected one"
    );
    assert!(num("tx_per_sec") > 0.0);
    assert!(num("blocks_per_sec") > 0.0);
    assert!(num("signature_bound_tx_per_sec") > 0.0);
    let fraction = num("fraction_of_bound");
    assert!(
        (fraction - num("tx_per_sec") / num("signature_bound_tx_per_sec")).abs() < 1e-9,
        "{fraction}"
    );
    let l = &v["latency_ms"];
    let p = |k: &str| l[k].as_f64().unwrap();
    assert!(
        0.0 <= p("p50") && p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max")
    );
    assert!(num("bytes_on_disk_per_tx") > num("tx_bytes"));
    // Each transaction is gossiped to the three other validators at least, inside the
    // overlay's framing.
    assert!(
        num("overlay_bytes_per_tx") > 2.0 * num("tx_bytes"),
        "{}",
        num("overlay_bytes_per_tx")
    );
    assert!(
        text.contains("bytes through the overlay per committed transaction"),
        "{text}"
    );
    let cpu = v["cpu_seconds"].as_object().unwrap();
    assert_eq!(cpu.len(), 4);
    assert!(cpu.values().all(|s| s.as_f64().unwrap() > 0.0), "{cpu:?}");
    assert!(p("p50") > 0.0);
    let per_tx = cpu.values().map(|s| s.as_f64().unwrap()).sum::<f64>()
        / cpu.len() as f64
        / num("committed")
        * 1e6;
    assert!(
        (num("cpu_us_per_tx_per_node") - per_tx).abs() < 1e-6,
        "{per_tx}"
    );
    let rate = v["bounds"]["sig_verify_per_core"].as_f64().unwrap();
    assert!((num("cpu_us_per_tx_at_half_bound") - 2e6 / rate).abs() < 1e-6);
    // The bounds were measured on both sides of the load, and their mean counts.
    let side = |k: &str, f: &str| v[k][f].as_f64().unwrap_or_else(|| panic!("{k}.{f} in {v}"));
    for f in [
        "sig_verify_per_core",
        "sig_verify_single_per_core",
        "blake3_mib_per_sec",
        "fsync_ms",
    ] {
        let (b, a) = (side("bounds_before", f), side("bounds_after", f));
        assert!(b > 0.0 && a > 0.0, "{f}: {b}, {a}");
        assert!((side("bounds", f) - (b + a) / 2.0).abs() < 1e-9, "{f}");
    }
    let cores = v["bounds"]["cores"].as_f64().unwrap();
    assert!((num("signature_bound_tx_per_sec") - rate * cores / 4.0).abs() < 1e-6);
    assert!(text.contains("machine, before the load:"), "{text}");
    assert!(text.contains("machine, after the load:"), "{text}");
    assert!(text.contains("CPU per committed transaction:"), "{text}");
    // The bench submits and watches: it spends some CPU, and so does the machine.
    assert!(num("bench_cpu_seconds") > 0.0);
    let share = |k: &str| {
        v["machine"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {v}"))
    };
    assert!(share("busy_fraction") > 0.0 && share("busy_fraction") <= 1.0);
    assert!((0.0..1.0).contains(&share("steal_fraction")));
    assert!(text.contains("the hypervisor took"), "{text}");
    assert!(v["bounds"]["blake3_mib_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["bounds"]["sig_verify_single_per_core"].as_f64().unwrap() > 0.0);
    assert!(v["bounds"]["fsync_ms"].as_f64().unwrap() > 0.0);
    // The fresh network was stopped and removed.
    assert!(!dir.path().join("bench").join("wireguard").exists());
}

/// 400 senders, one transaction unanswered each, against pools of 100: the pools refuse
/// most of them. The bench sends what they refused again, in each sender's nonce order,
/// and every transaction commits. Proposals travel compact (transactions by hash), and a
/// validator whose full pool refused some of a proposal's transactions fetches them from
/// the peer that sent it. Before the load, every node has turned transparent huge pages
/// off for itself once its state cache was mapped.
#[test]
fn the_bench_resends_what_a_full_pool_refused() {
    let net = common::Net::up(4);
    net.down();
    for n in net.manifest().nodes {
        let path = n.home.join("config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("max_txs = 100000"), "{text}");
        std::fs::write(&path, text.replace("max_txs = 100000", "max_txs = 100")).unwrap();
    }
    net.cli(&["start"]);
    // Every node maps its state cache and then turns transparent huge pages off for
    // itself (docs/NODE.md), within seconds; its log says both, in that order, and a
    // kernel of 5.0 or later shows the switch in /proc/PID/status.
    for n in net.manifest().nodes {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let text = loop {
            let text = net.log(&n.name);
            if text.contains("transparent huge pages") {
                break text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: no word on huge pages after 60 s:\n{text}",
                n.name
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let mapped = text.find("state cache memory mapped");
        let off = text.find("transparent huge pages off for this process");
        assert!(
            matches!((mapped, off), (Some(m), Some(o)) if m < o),
            "{}:\n{text}",
            n.name
        );
        let pid = n.pid.expect("started");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("{} (pid {pid}) is not running: {e}", n.name));
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{}", n.name);
        }
    }
    let json = net.dir.join("bench.json");
    let out = succeed(
        std::process::Command::new(EXE)
            .args(["bench", "--txs", "2000", "--accounts", "400", "--home"])
            .arg(&net.home)
            .arg("--json")
            .arg(&json),
        "bench",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["committed"], 2000, "{text}");
    assert_eq!(v["rejected"], 0, "{text}");
    assert_eq!(v["stranded"], 0, "{text}");
    assert_eq!(v["refusals"], serde_json::json!({}), "{text}");
    assert!(v["resends"].as_u64().unwrap() > 0, "{text}");
    assert!(
        text.contains("resends of transactions refused for now"),
        "{text}"
    );
    let (mut held, mut fetched, mut requested) = (0.0, 0.0, 0.0);
    for n in net.manifest().nodes {
        let m = fetch_metrics(&n.metrics);
        let count = |name: &str| metric(&m, name).unwrap_or_else(|| panic!("{name} in {m}"));
        // Every validator rebuilt others' proposals from its own pool.
        assert!(
            count("pyralog_proposal_txs_held_total") > 0.0,
            "{}: {m}",
            n.name
        );
        held += count("pyralog_proposal_txs_held_total");
        fetched += count("pyralog_proposal_txs_fetched_total");
        requested += count("pyralog_proposal_txs_requested_total");
    }
    assert!(fetched > 0.0, "held {held}, fetched {fetched}");
    // What was fetched had been asked for (some of what was asked for may have come by
    // gossip first).
    assert!(
        requested >= fetched,
        "requested {requested}, fetched {fetched}"
    );
    eprintln!("proposals' transactions: held {held}, fetched {fetched}, requested {requested}");
}
