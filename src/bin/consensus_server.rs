//! `bpci-consensus-server --config FILE`: the validator, as the spec's Dockerfile runs it
//! (the same as `bpci node --config FILE`).

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[path = "../cli/mod.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    args.insert(1, "node".into());
    cli::main_from(args)
}
