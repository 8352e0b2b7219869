//! `pyralog-node`: Run a Pyralog validator, full node or auditor: networking, consensus, storage and RPC wired together.
//!
//! Not built yet: the command exists so the workspace has its final shape.

fn main() -> std::process::ExitCode {
    eprintln!("pyralog-node: not available yet in this build; see README.md for what works today");
    std::process::ExitCode::from(2)
}
