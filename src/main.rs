//! The `bpci` command line.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
