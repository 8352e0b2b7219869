//! `pyralog-node`: run a Pyralog validator or full node. See `pyralog-node --help`.

fn main() -> std::process::ExitCode {
    pyralog_node::cli::main_with_args(std::env::args_os())
}
