//! Command-line arguments (DESIGN.md, "Command line") and their dispatch.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use lanyard_core::{Clock, Store, SystemClock};
use lanyard_server::config::{LogConfig, LogFormat};
use lanyard_server::{AppState, Config};
use lanyard_store::DbOptions;
use secrecy::SecretString;

use crate::{audit, client, keys, logout, session, user};

#[derive(Parser)]
#[command(
    name = "lanyard",
    version,
    about = "Single sign-on: an OpenID Connect provider with one session for every app"
)]
pub struct Args {
    /// TOML configuration file; `LANYARD_*` environment variables override it.
    #[arg(long, global = true, env = "LANYARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Manage relying applications (OAuth clients).
    #[command(subcommand)]
    Client(client::ClientCommand),
    /// List and rotate signing keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Back-channel logout deliveries.
    #[command(subcommand)]
    Logout(logout::LogoutCommand),
    /// List and end sessions.
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// Print audit events, newest first.
    Audit(audit::AuditArgs),
    /// Check the configuration, the database and the reverse proxy set-up.
    Doctor(crate::doctor::DoctorArgs),
}

/// `--json`, shared by the commands that print something.
#[derive(ClapArgs)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What every command except `serve` works with.
pub struct Ctx {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub clock: SystemClock,
}

impl Ctx {
    pub fn now(&self) -> lanyard_core::UnixTime {
        self.clock.now()
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    match args.command {
        Command::Serve => {
            lanyard_server::telemetry::init(&config.log);
            serve(config).await
        }
        Command::Migrate => {
            let ctx = Ctx::open(config).await?;
            println!("The {} database is up to date.", ctx.store.backend());
            Ok(())
        }
        Command::User(cmd) => user::run(&Ctx::open(config).await?, cmd).await,
        Command::Client(cmd) => client::run(&Ctx::open(config).await?, cmd).await,
        Command::Keys(cmd) => keys::run(&Ctx::open(config).await?, cmd).await,
        Command::Logout(cmd) => logout::run(&Ctx::open(config).await?, cmd).await,
        Command::Session(cmd) => session::run(&Ctx::open(config).await?, cmd).await,
        Command::Audit(a) => audit::run(&Ctx::open(config).await?, a).await,
        Command::Doctor(a) => crate::doctor::run(&Ctx::open(config).await?, a).await,
    }
}

impl Ctx {
    /// Opens (and migrates) the database for an administrative command.
    async fn open(config: Config) -> anyhow::Result<Self> {
        // These commands print their results on stdout; only warnings belong on stderr.
        let log = LogConfig {
            format: LogFormat::Human,
            level: "warn".into(),
        };
        lanyard_server::telemetry::init(&log);
        let store = open_store(&config).await?;
        Ok(Self {
            config,
            store,
            clock: SystemClock,
        })
    }
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let options = DbOptions {
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.connect_timeout,
    };
    Ok(lanyard_store::open(&config.database_url, &options).await?)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let state = AppState::new(store, Arc::new(SystemClock), config).await?;
    lanyard_server::serve(state, listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what systemd, Docker and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Reads a password from standard input: the first line, without its line ending.
pub fn password_from_stdin() -> anyhow::Result<SecretString> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        bail!(
            "no password on standard input; pipe it in, for example: \
             printf '%s\\n' \"$PASSWORD\" | lanyard user add …"
        );
    }
    Ok(SecretString::from(password.to_owned()))
}
