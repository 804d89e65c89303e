//! `lanyard-bench --compare`: Lanyard and the peer side by side, in one command.
//!
//! It creates a scratch directory, starts Lanyard (from `--lanyard`) and the peer
//! (`tests/peers/oidc-provider`) pinned to core 0 with the same users and client, then runs each
//! workload against one and then the other, pinned to core 1, swapping the order every round.
//! It prints one table with the Lanyard/peer ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::procstat;
use crate::workloads::Workload;

pub struct Options {
    pub lanyard: PathBuf,
    pub peer_dir: PathBuf,
    pub database_url: Option<String>,
    pub duration: Duration,
    pub concurrency: usize,
    pub users: usize,
    pub rounds: usize,
    /// Empty: all.
    pub workloads: Vec<Workload>,
    /// Pin the PostgreSQL server to Lanyard's core for the run.
    pub pin_database: bool,
}

/// What one run reports (see `load::Report`).
#[derive(serde::Deserialize)]
struct Measured {
    ops: u64,
    errors: u64,
    per_second: f64,
    p99_ms: f64,
    cpu_ms_per_op: Option<f64>,
    peak_rss_kib: Option<u64>,
    note: Option<String>,
    /// Set here, not by the run: CPU of the PostgreSQL server per operation.
    #[serde(default)]
    db_cpu_ms_per_op: Option<f64>,
}

const PASSWORD: &str = "a long bench passphrase";
const REDIRECT: &str = "http://127.0.0.1:9/cb";

/// A server process, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pinned(core: usize, program: &Path) -> Command {
    let two_cores = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    if two_cores && Path::new("/usr/bin/taskset").exists() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The PostgreSQL server's processes pinned to one core until dropped; then each gets its
/// affinity back. Backends started meanwhile inherit the pin from the postmaster.
struct PinnedDatabase(Vec<(u32, String)>);

impl PinnedDatabase {
    fn pin(core: usize) -> anyhow::Result<Self> {
        let mut saved = Vec::new();
        for pid in procstat::pids_named("postgres") {
            let pid_arg = pid.to_string();
            let shown = Command::new("taskset").args(["-p", &pid_arg]).output()?;
            // "pid 42's current affinity mask: 3"
            let shown = String::from_utf8_lossy(&shown.stdout);
            let Some(mask) = shown
                .rsplit(' ')
                .next()
                .map(str::trim)
                .filter(|m| !m.is_empty())
            else {
                continue;
            };
            let pinned = Command::new("taskset")
                .args(["-cp", &core.to_string(), &pid_arg])
                .stdout(Stdio::null())
                .status()?
                .success();
            if pinned {
                saved.push((pid, mask.to_owned()));
            } else if Path::new(&format!("/proc/{pid}")).exists() {
                bail!("cannot pin PostgreSQL process {pid}: run as its owner or as root");
            }
        }
        ensure!(
            !saved.is_empty(),
            "found no PostgreSQL processes (named postgres) to pin"
        );
        Ok(Self(saved))
    }
}

impl Drop for PinnedDatabase {
    fn drop(&mut self) {
        for (pid, mask) in &self.0 {
            let _ = Command::new("taskset")
                .args(["-p", mask, &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_for(url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not answer")
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("lanyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let issuer = format!("http://localhost:{port}");
    let database_url = o
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.display()));
    let lanyard = |args: &[&str]| {
        let mut c = Command::new(&o.lanyard);
        c.args(args)
            .env("LANYARD_DATABASE_URL", &database_url)
            .env("LANYARD_ISSUER", &issuer)
            .env("LANYARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("LANYARD_KEYS__ENCRYPTION_KEY_FILE", dir.join("lanyard.key"))
            .env("LANYARD_LOG__LEVEL", "warn")
            .stderr(Stdio::inherit());
        c
    };

    eprintln!(
        "setting up {} users and a client in {}",
        o.users,
        dir.display()
    );
    for i in 0..o.users {
        let mut add = lanyard(&["user", "add", "--username", &format!("bench{i}")]);
        add.args([
            "--email",
            &format!("bench{i}@example.org"),
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
        let mut child = add.spawn().context("running lanyard")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            writeln!(stdin, "{PASSWORD}")?;
        }
        ensure!(child.wait()?.success(), "lanyard user add failed");
    }
    let out = lanyard(&[
        "client",
        "add",
        "--name",
        "Bench",
        "--redirect-uri",
        REDIRECT,
    ])
    .args(["--skip-consent", "--id-token-alg", "ES256", "--json"])
    .args([
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
    ])
    .args(["--grant-type", "client_credentials"])
    .output()?;
    ensure!(out.status.success(), "lanyard client add failed");
    let client: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let client_id = client["client_id"]
        .as_str()
        .context("no client_id")?
        .to_owned();
    let secret = client["client_secret"]
        .as_str()
        .context("no client_secret")?
        .to_owned();

    let mut serve = pinned(0, &o.lanyard);
    serve
        .arg("serve")
        .env("LANYARD_DATABASE_URL", &database_url)
        .env("LANYARD_ISSUER", &issuer)
        .env("LANYARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("LANYARD_KEYS__ENCRYPTION_KEY_FILE", dir.join("lanyard.key"))
        .env("LANYARD_LOG__LEVEL", "warn")
        .stdout(Stdio::null());
    let lanyard_server = Server(serve.spawn().context("starting lanyard serve")?);
    wait_for(&format!("{issuer}/readyz")).await?;

    let peer_port = free_port()?;
    let peer_issuer = format!("http://localhost:{peer_port}");
    let mut peer = pinned(0, Path::new("node"));
    peer.arg("server.mjs")
        .current_dir(&o.peer_dir)
        .env("PORT", peer_port.to_string())
        .env("ISSUER", &peer_issuer)
        .env("CLIENT_ID", &client_id)
        .env("CLIENT_SECRET", &secret)
        .env("REDIRECT_URI", REDIRECT)
        .env("USERNAME", "bench")
        .env("USERS", o.users.to_string())
        .env("PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let peer_server = Server(
        peer.spawn()
            .context("starting the peer (node server.mjs)")?,
    );
    wait_for(&format!("{peer_issuer}/.well-known/openid-configuration")).await?;

    let postgres = !database_url.starts_with("sqlite:");
    let _pinned = if postgres && o.pin_database {
        Some(PinnedDatabase::pin(0)?)
    } else {
        None
    };
    let me = std::env::current_exe()?;
    let mut rows: Vec<(Workload, Vec<Measured>, Vec<Measured>)> = Vec::new();
    let chosen = if o.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        o.workloads.clone()
    };
    for w in chosen {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for lanyard_first in order {
                let (url, provider, pid) = if lanyard_first {
                    (&issuer, "lanyard", lanyard_server.0.id())
                } else {
                    (&peer_issuer, "oidc-provider", peer_server.0.id())
                };
                let mut c = pinned(1, &me);
                c.args([
                    "--issuer",
                    url,
                    "--provider",
                    provider,
                    "--client-id",
                    &client_id,
                ])
                .args(["--redirect-uri", REDIRECT, "--username", "bench", "--json"])
                .args(["--users", &o.users.to_string()])
                .args(["--concurrency", &o.concurrency.to_string()])
                .args([
                    "--duration",
                    &humantime::format_duration(o.duration).to_string(),
                ])
                .args(["--server-pid", &pid.to_string()])
                .args(["--workload", &workload_arg(w)])
                .env("BENCH_CLIENT_SECRET", &secret)
                .env("BENCH_PASSWORD", PASSWORD);
                let db_cpu =
                    || (postgres && lanyard_first).then(|| procstat::cpu_seconds_named("postgres"));
                let db_before = db_cpu();
                let out = c.output()?;
                let db_after = db_cpu();
                ensure!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = String::from_utf8(out.stdout)?;
                let mut report: Measured = serde_json::from_str(line.trim())?;
                if let (Some(before), Some(after)) = (db_before, db_after)
                    && report.ops > 0
                {
                    report.db_cpu_ms_per_op = Some((after - before) * 1000.0 / report.ops as f64);
                }
                if lanyard_first {
                    ours.push(report);
                } else {
                    theirs.push(report);
                }
            }
        }
        rows.push((w, ours, theirs));
    }
    drop(peer_server);
    drop(lanyard_server);
    let _ = std::fs::remove_dir_all(&dir);
    let mut failures = Vec::new();

    println!(
        "{:<2} {:<30} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "#",
        "workload",
        "Lanyard/s",
        "peer/s",
        "ratio",
        "L p99 ms",
        "P p99 ms",
        "L cpu ms",
        "P cpu ms",
        "DB cpu ms",
        "L MiB",
        "P MiB"
    );
    for (w, ours, theirs) in rows {
        let median = |rs: &[Measured], f: fn(&Measured) -> Option<f64>| {
            let mut v: Vec<f64> = rs.iter().filter(|r| r.ops > 0).filter_map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let (l, p) = (
            median(&ours, |r| Some(r.per_second)),
            median(&theirs, |r| Some(r.per_second)),
        );
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        let note = theirs
            .iter()
            .chain(&ours)
            .find_map(|r| r.note.clone())
            .unwrap_or_default();
        // A run with errors, or one that did nothing without saying why, fails the command.
        for r in ours.iter().chain(&theirs) {
            let unsupported = r
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("not supported"));
            if r.errors > 0 || (r.ops == 0 && !unsupported) {
                failures.push(format!(
                    "{}: {}",
                    w.name(),
                    r.note.as_deref().unwrap_or("no operations")
                ));
            }
        }
        // Server CPU per operation (median) and the server's peak RSS so far (largest seen).
        let cpu = |rs: &[Measured]| median(rs, |r| r.cpu_ms_per_op);
        let peak = |rs: &[Measured]| {
            rs.iter()
                .filter_map(|r| r.peak_rss_kib)
                .max()
                .map(|k| k as f64 / 1024.0)
        };
        println!(
            "{:<2} {:<30} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            w.number(),
            w.name(),
            fmt(l, 0),
            fmt(p, 0),
            fmt(l.zip(p).map(|(l, p)| l / p), 2),
            fmt(median(&ours, |r| Some(r.p99_ms)), 2),
            fmt(median(&theirs, |r| Some(r.p99_ms)), 2),
            fmt(cpu(&ours), 3),
            fmt(cpu(&theirs), 3),
            fmt(median(&ours, |r| r.db_cpu_ms_per_op), 3),
            fmt(peak(&ours), 0),
            fmt(peak(&theirs), 0),
            note
        );
    }
    ensure!(
        failures.is_empty(),
        "some runs failed:\n{}",
        failures.join("\n")
    );
    Ok(())
}

fn workload_arg(w: Workload) -> String {
    use clap::ValueEnum;
    w.to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}
