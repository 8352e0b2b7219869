//! `pyralog-testnet`: Create, run, load and break local Pyralog networks.
//!
//! Not built yet: the command exists so the workspace has its final shape.

fn main() -> std::process::ExitCode {
    eprintln!(
        "pyralog-testnet: not available yet in this build; see README.md for what works today"
    );
    std::process::ExitCode::from(2)
}
