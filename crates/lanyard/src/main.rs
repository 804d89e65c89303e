//! The `lanyard` command. Every subcommand reads the same configuration as `serve` and opens
//! (and migrates) the same database.
//!
//! Errors end as one sentence on stderr and exit status 1; usage errors as clap's message and
//! status 2. Passwords are read only from standard input, never from arguments, which other
//! users of the machine can see.

mod audit;
mod cli;
mod client;
mod doctor;
mod keys;
mod logout;
mod session;
mod user;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
