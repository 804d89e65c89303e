//! `lanyard-bench`: drives an OpenID Provider with the workloads of BENCHMARKS.md and reports
//! throughput, latency, errors, and the server's CPU time per operation and memory (from
//! `/proc`, given its PID).

mod client;
mod compare;
mod load;
mod procstat;
mod workloads;

use std::time::Duration;

use clap::Parser;

use crate::workloads::{Provider, Workload};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Measure the argon2id floor instead: hashes per second on this thread at Lanyard's
    /// default parameters (m=19 MiB, t=2, p=1), with no server involved.
    #[arg(long)]
    argon2_floor: bool,
    /// Run Lanyard and the peer side by side instead: start both (pinned to core 0) with the
    /// same users and client, run every workload against each (pinned to core 1), alternating
    /// which goes first, and print the ratios. Needs `npm ci` in `--peer-dir`.
    #[arg(long)]
    compare: bool,
    /// With --compare: the lanyard binary (default: the one beside this program).
    #[arg(long)]
    lanyard: Option<std::path::PathBuf>,
    /// With --compare: where the peer's server.mjs is.
    #[arg(long, default_value = "tests/peers/oidc-provider")]
    peer_dir: std::path::PathBuf,
    /// With --compare: Lanyard's database (default: a scratch SQLite file).
    #[arg(long)]
    database_url: Option<String>,
    /// With --compare and a PostgreSQL --database-url: pin the PostgreSQL server's processes
    /// to Lanyard's core for the run (needs the right to change their affinity), so that
    /// Lanyard and its database share one core as the peer has one core for everything.
    #[arg(long)]
    pin_database: bool,
    /// With --compare: runs of each workload per server; the table shows the median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The provider's issuer URL.
    #[arg(long, default_value = "")]
    issuer: String,
    /// A confidential client allowed authorization_code, refresh_token and client_credentials,
    /// that skips consent.
    #[arg(long, default_value = "")]
    client_id: String,
    #[arg(
        long,
        env = "BENCH_CLIENT_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    client_secret: String,
    /// One of the client's redirect URIs (never contacted: the code is read from the redirect).
    #[arg(long, default_value = "")]
    redirect_uri: String,
    /// The user to sign in as; with `--users N`, workers use `<username>0` … `<username>N-1`.
    #[arg(long, default_value = "bench")]
    username: String,
    /// How many users (all with the same password) the workers share out, so that no one user
    /// meets the per-user session cap or per-account throttling.
    #[arg(long)]
    users: Option<usize>,
    #[arg(
        long,
        env = "BENCH_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    password: String,
    /// Which provider speaks at `issuer`: its login form differs.
    #[arg(long, value_enum, default_value = "lanyard")]
    provider: Provider,
    /// Workloads to run, in order (default: all).
    #[arg(long = "workload", value_enum)]
    workloads: Vec<Workload>,
    /// How long each workload runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent connections, each with its own cookie jar.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The server's process ID, for CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.argon2_floor {
        return argon2_floor(args.duration);
    }
    if args.compare {
        let lanyard = match args.lanyard {
            Some(p) => p,
            None => std::env::current_exe()?.with_file_name("lanyard"),
        };
        return compare::run(compare::Options {
            lanyard,
            peer_dir: args.peer_dir,
            database_url: args.database_url,
            duration: args.duration,
            concurrency: args.concurrency,
            users: args.users.unwrap_or(args.concurrency),
            rounds: args.rounds.max(1),
            workloads: args.workloads,
            pin_database: args.pin_database,
        })
        .await;
    }
    let target = std::sync::Arc::new(
        workloads::Target::discover(
            &args.issuer,
            args.provider,
            workloads::Credentials {
                client_id: args.client_id,
                client_secret: args.client_secret,
                redirect_uri: args.redirect_uri,
                username: args.username,
                users: args.users,
                password: args.password,
            },
        )
        .await?,
    );
    let chosen = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads
    };
    if !args.json {
        println!("{}", load::Report::header());
    }
    for w in chosen {
        let report = load::run(&target, w, args.concurrency, args.duration, args.server_pid).await;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.row());
        }
    }
    Ok(())
}

/// Verifies one hash over and over on this thread, in one reused memory as a sign-in does, for
/// `duration`.
fn argon2_floor(duration: Duration) -> anyhow::Result<()> {
    use lanyard_core::password::{PasswordHasher, PasswordPolicy, Scratch, Verified};
    let hasher = PasswordHasher::new(PasswordPolicy::default())?;
    let password = secrecy::SecretString::from("a long bench passphrase".to_owned());
    let stored = hasher.hash(&password)?;
    let mut scratch = Scratch::default();
    let started = std::time::Instant::now();
    let mut n = 0u32;
    while started.elapsed() < duration {
        anyhow::ensure!(matches!(
            hasher.verify_in(&password, &stored, &mut scratch),
            Verified::Yes { .. }
        ));
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "argon2id m=19456 t=2 p=1: {n} verifications in {secs:.1} s: {:.1}/s, {:.1} ms each",
        f64::from(n) / secs,
        secs * 1000.0 / f64::from(n)
    );
    Ok(())
}
