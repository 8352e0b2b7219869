//! `pyralog`: keys, notarization receipts that verify offline, and verified queries.

fn main() -> std::process::ExitCode {
    pyralog_wallet::cli::main_with_args(std::env::args_os())
}
