//! `pyralog`: The pyralog command: keys, notarization receipts that verify offline, and verified queries.
//!
//! Not built yet: the command exists so the workspace has its final shape.

fn main() -> std::process::ExitCode {
    eprintln!("pyralog: not available yet in this build; see README.md for what works today");
    std::process::ExitCode::from(2)
}
