//! `pyralog-node`: run a Pyralog validator or full node. See `pyralog-node --help`.

/// The nodes allocate with mimalloc rather than glibc's malloc: about a tenth less CPU
/// per committed transaction in bursts, for about a fifth more resident memory
/// (docs/PERFORMANCE.md, seventeenth session).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pyralog_node::cli::main_with_args(std::env::args_os())
}
