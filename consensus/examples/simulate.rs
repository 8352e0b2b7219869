//! Runs many random simulations and reports violations.
//!
//! ```text
//! cargo run --release -p pyralog-consensus --example simulate -- \
//!     --seeds 100000 --validators 4 --byzantine 1 [--start 0] [--engine tendermint]
//! cargo run --release -p pyralog-consensus --example simulate -- \
//!     --seed 1234 --validators 4 --byzantine 1 --log     # replay one seed, with its event log
//! ```
//!
//! Prints one summary line (runs, violations, heights decided, evidence, CPU time) and
//! exits 1 if any run violated a property (each violating seed is printed first), 2 on a
//! usage error.

// A host program, not the pure core: it may read the clock to report its speed.
#![allow(clippy::disallowed_methods)]

use std::process::ExitCode;
use std::time::Instant;

use pyralog_consensus::sim::{EngineKind, Scenario};

const USAGE: &str = "usage: simulate [--seeds N | --seed S] [--start S] --validators V \
                     --byzantine B [--engine tendermint] [--log]";

struct Args {
    seeds: u64,
    start: u64,
    validators: usize,
    byzantine: usize,
    engine: EngineKind,
    log: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: 100,
        start: 0,
        validators: 4,
        byzantine: 1,
        engine: EngineKind::Tendermint,
        log: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match flag.as_str() {
            "--seeds" => args.seeds = number("--seeds", value("--seeds")?)?,
            "--start" => args.start = number("--start", value("--start")?)?,
            "--seed" => {
                args.start = number("--seed", value("--seed")?)?;
                args.seeds = 1;
            }
            "--validators" => {
                args.validators = number("--validators", value("--validators")?)? as usize
            }
            "--byzantine" => {
                args.byzantine = number("--byzantine", value("--byzantine")?)? as usize
            }
            "--engine" => {
                let name = value("--engine")?;
                args.engine =
                    EngineKind::parse(&name).ok_or_else(|| format!("unknown engine {name}"))?;
            }
            "--log" => args.log = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.validators == 0 || args.validators > 100 {
        return Err("--validators must be 1 to 100".into());
    }
    if args.byzantine >= args.validators {
        return Err("--byzantine must be below --validators".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let f = (args.validators - 1) / 3;
    if args.byzantine > f {
        eprintln!(
            "note: {} Byzantine of {} is more than f = {f}: violations are expected",
            args.byzantine, args.validators
        );
    }
    let started = Instant::now();
    let (mut violations, mut decided, mut evidence) = (0u64, 0u64, 0usize);
    for seed in args.start..args.start + args.seeds {
        let mut scenario = Scenario::random(seed, args.validators, args.byzantine);
        scenario.engine = args.engine;
        scenario.log = args.log;
        let report = scenario.run();
        for line in &report.log {
            println!("{line}");
        }
        decided += report.decided;
        evidence += report.evidence.len();
        if !report.ok() {
            violations += 1;
            println!("{report}");
            println!("  scenario: {scenario:?}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "runs {} violations {violations} (validators {}, byzantine {}, engine {:?}): \
         {decided} heights decided, {evidence} evidence, {secs:.1} s ({:.0} heights/s)",
        args.seeds,
        args.validators,
        args.byzantine,
        args.engine,
        decided as f64 / secs.max(1e-9)
    );
    if violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
