//! `bpci keys`.

use std::path::PathBuf;
use std::process::ExitCode;

/// `bpci keys` subcommands.
#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Write a new Ed25519 validator key (mode 0600) and print its public key.
    Generate {
        /// Where to write the secret key (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of a key file.
    Show {
        /// The secret key file.
        #[arg(long)]
        key: PathBuf,
    },
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Generate { out } => {
            let k = bpci::node::keys::generate(&out)?;
            println!("{}", k.public());
        }
        KeysCommand::Show { key } => {
            let k = bpci::node::keys::read(&key)?;
            println!("{}", k.public());
        }
    }
    Ok(ExitCode::SUCCESS)
}
