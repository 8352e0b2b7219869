//! `pyralog-testnet demo`, the README's first command: it starts a network, notarizes a
//! document, verifies the receipt offline, and runs again on the network it left running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

mod common;

use common::{EXE, Net, succeed};

fn demo(net: &Net) -> std::process::Output {
    Command::new(EXE)
        .args(["demo", "--home"])
        .arg(&net.home)
        .output()
        .unwrap()
}

#[test]
fn the_demo_notarizes_and_verifies_and_runs_again_on_its_network() {
    let net = Net::not_up();
    for run in ["first", "second"] {
        let out = demo(&net);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{run} run: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("$ pyralog notarize"), "{run} run: {text}");
        assert!(text.contains("$ pyralog verify"), "{run} run: {text}");
        assert!(
            text.contains("proven by a certificate of the genesis validator set"),
            "{run} run: {text}"
        );
        assert_eq!(
            text.contains("using the running testnet"),
            run == "second",
            "{run} run: {text}"
        );
    }
    // The receipt left behind is the second document's, and verifies offline.
    let wallet = net.home.join("wallet");
    let file = net.home.join("demo-document.txt");
    succeed(
        Command::new(EXE)
            .arg("wallet")
            .arg("--home")
            .arg(&wallet)
            .arg("verify")
            .arg(&file)
            .arg("--receipt")
            .arg(net.home.join("demo-document.txt.pyralog-receipt.json"))
            .arg("--genesis")
            .arg(net.manifest().genesis),
        "pyralog verify of the demo's receipt",
    );
    // `status` lists every node as up, its figures in aligned columns.
    let status = |what: &str| {
        let out = succeed(
            Command::new(EXE).arg("status").arg("--home").arg(&net.home),
            what,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = status("pyralog-testnet status");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("  node")).collect();
    assert_eq!(lines.len(), 4, "{text}");
    for line in &lines {
        assert_eq!(line.get(9..23), Some(" up    height "), "{text}");
        let height = line.get(23..29).map(str::trim_start);
        assert!(height.is_some_and(|h| h.parse::<u64>().is_ok()), "{text}");
        assert_eq!(line.get(29..37), Some("  round "), "{text}");
    }
    // On a stopped network the demo says what to do instead of failing half-way.
    net.down();
    let text = status("pyralog-testnet status of a stopped testnet");
    assert_eq!(text.matches(" down").count(), 4, "{text}");
    let out = demo(&net);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("holds a stopped testnet"), "{err}");
}
