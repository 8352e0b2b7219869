#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The deterministic simulator: hand-written scenarios, the checker's ability to fail,
//! replay, and random seeds (at least 500 for n = 4 and for n = 7 on every CI run).

use pyralog_consensus::sim::{Behavior, Report, Scenario, Violation};

fn assert_ok(report: &Report, what: &str) {
    assert!(report.ok(), "{what}: {report}");
}

/// Runs seeds `range` with `n` validators, f of them Byzantine, and fails with every
/// violating seed and the command that replays it.
fn random_seeds(n: usize, range: std::ops::Range<u64>) {
    let f = (n - 1) / 3;
    let mut failures = Vec::new();
    let mut decided = 0;
    for seed in range.clone() {
        let report = Scenario::random(seed, n, f).run();
        decided += report.decided;
        if !report.ok() {
            failures.push(format!(
                "{report}\n  replay: cargo run --release -p pyralog-consensus --example simulate \
                 -- --seed {seed} --validators {n} --byzantine {f} --log"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs violated a property:\n{}",
        failures.len(),
        range.end - range.start,
        failures.join("\n")
    );
    assert!(
        decided >= 3 * (range.end - range.start),
        "runs decide blocks"
    );
}

#[test]
fn random_seeds_n4_f1_part1() {
    random_seeds(4, 0..250);
}

#[test]
fn random_seeds_n4_f1_part2() {
    random_seeds(4, 250..500);
}

#[test]
fn random_seeds_n7_f2_part1() {
    random_seeds(7, 0..125);
}

#[test]
fn random_seeds_n7_f2_part2() {
    random_seeds(7, 125..250);
}

#[test]
fn random_seeds_n7_f2_part3() {
    random_seeds(7, 250..375);
}

#[test]
fn random_seeds_n7_f2_part4() {
    random_seeds(7, 375..500);
}

#[test]
fn fault_free_network_decides_every_height_in_round_zero() {
    let report = Scenario::new(4).blocks_after_heal(10).run();
    assert_ok(&report, "fault free");
    assert!(
        report.heights.iter().all(|h| *h >= 10),
        "{:?}",
        report.heights
    );
    assert!(report.evidence.is_empty());
    // Proposals travelled compact and every other node rebuilt each one.
    assert!(
        report.rebuilt_proposals >= 3 * 10,
        "{}",
        report.rebuilt_proposals
    );
    assert_eq!(report.rejected, 0);
}

#[test]
fn equivocating_proposer_with_a_partition_that_heals() {
    // The example: 4 nodes, one equivocating, partition {0,1}|{2,3} from 2 s to 9 s.
    let report = Scenario::new(4)
        .seed(7)
        .byzantine(3, Behavior::EquivocatingProposer)
        .partition(&[&[0, 1], &[2, 3]], 2_000, 9_000)
        .run();
    assert_ok(&report, "equivocating proposer + partition");
}

#[test]
fn double_voter_is_caught_with_verified_evidence() {
    let report = Scenario::new(4)
        .seed(3)
        .byzantine(0, Behavior::DoubleVoter)
        .run();
    assert_ok(&report, "double voter");
    assert!(!report.evidence.is_empty(), "evidence reported");
    // The simulator verified each (Violation::Evidence otherwise); all name validator 0.
    let accused: std::collections::BTreeSet<_> =
        report.evidence.iter().map(|e| e.validator).collect();
    assert_eq!(accused.len(), 1);
}

#[test]
fn every_byzantine_behaviour_alone_is_tolerated_with_n4() {
    for behavior in Behavior::ALL {
        for seed in 0..3 {
            let report = Scenario::new(4)
                .seed(seed)
                .byzantine((seed % 4) as u32, behavior)
                .loss(50_000)
                .duplicate(50_000)
                .heal_at(3_000)
                .run();
            assert_ok(&report, &format!("{behavior:?} seed {seed}"));
        }
    }
}

#[test]
fn two_byzantine_of_seven_with_crashes_and_a_minority_partition() {
    let report = Scenario::new(7)
        .seed(11)
        .byzantine(1, Behavior::Coalition)
        .byzantine(4, Behavior::InvalidBlock)
        .partition(&[&[0, 1, 2, 3, 4], &[5, 6]], 1_000, 6_000)
        .crash(0, 2_000, 4_000)
        .loss(100_000)
        .run();
    assert_ok(&report, "n=7 f=2");
}

#[test]
fn crashes_between_persist_and_send_do_not_break_safety_or_progress() {
    for seed in 0..10 {
        let report = Scenario::new(4)
            .seed(seed)
            .crash_mid_output(0, 500, 1_500)
            .crash_mid_output(1, 1_700, 2_600)
            .crash_mid_output(2, 2_700, 3_100)
            .crash_mid_output(0, 3_200, 4_000)
            .run();
        assert_ok(&report, &format!("mid-output crashes, seed {seed}"));
    }
}

#[test]
fn a_node_down_for_many_heights_catches_up_by_sync() {
    let report = Scenario::new(4)
        .seed(5)
        .crash(3, 200, 8_000)
        .blocks_after_heal(3)
        .run();
    assert_ok(&report, "long crash");
    assert!(report.heights[3] >= 10, "{:?}", report.heights);
}

#[test]
fn a_majority_partition_keeps_deciding_and_the_minority_catches_up() {
    let report = Scenario::new(4)
        .seed(2)
        .partition(&[&[0, 1, 2], &[3]], 500, 6_000)
        .run();
    assert_ok(&report, "majority partition");
}

#[test]
fn unequal_voting_power() {
    // 45 of 100 power on one validator: the other three (55) cannot decide without it,
    // and its proposer turn comes 45 times in 100 steps.
    let report = Scenario::new(4)
        .seed(9)
        .powers(vec![45, 20, 20, 15])
        .loss(50_000)
        .heal_at(2_000)
        .run();
    assert_ok(&report, "unequal power");
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    let a = Scenario::random(42, 4, 1).run();
    let b = Scenario::random(42, 4, 1).run();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.heights, b.heights);
    let c = Scenario::random(43, 4, 1).run();
    assert_ne!(a.trace_hash, c.trace_hash);
    // The event log, kept on request, does not change the run.
    let logged = Scenario::random(42, 4, 1).with_log().run();
    assert_eq!(logged.trace_hash, a.trace_hash);
    assert!(!logged.log.is_empty());
}

#[test]
fn more_than_f_byzantine_break_agreement_and_the_checker_says_so() {
    // Two colluding validators of four (f = 1): as proposer, one sends block A to honest
    // node 0 and block B to honest node 1, and both vote A towards 0 and B towards 1.
    let report = Scenario::new(4)
        .seed(1)
        .byzantine(2, Behavior::Coalition)
        .byzantine(3, Behavior::Coalition)
        .run();
    assert!(
        report
            .violations
            .iter()
            .any(|v| matches!(v, Violation::Agreement { .. })),
        "the checker must catch the fork: {report}"
    );
}

#[test]
fn more_than_f_silent_validators_stop_progress_and_the_checker_says_so() {
    let report = Scenario::new(4)
        .seed(1)
        .byzantine(2, Behavior::Silent)
        .byzantine(3, Behavior::Silent)
        .run();
    assert!(
        report
            .violations
            .iter()
            .any(|v| matches!(v, Violation::Progress { .. })),
        "{report}"
    );
}

#[test]
fn an_unusable_scenario_is_reported_not_panicked() {
    let report = Scenario::new(4).powers(vec![10, 0, 10, 10]).run();
    assert!(matches!(report.violations[..], [Violation::Scenario(_)]));
    let report = Scenario::new(4).crash(9, 100, 200).run();
    assert!(
        matches!(report.violations[..], [Violation::Scenario(_)]),
        "{report}"
    );
}
