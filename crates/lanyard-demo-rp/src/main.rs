//! `lanyard-demo-rp`: run one demo app. Two of them on two ports make "app A" and "app B".

use anyhow::Context;
use clap::Parser;

/// What `lanyard client add --json` prints.
#[derive(serde::Deserialize)]
struct Registered {
    client_id: String,
    client_secret: Option<String>,
}

/// A small app that signs in through Lanyard, for trying single sign-on and logout.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Lanyard's issuer URL.
    #[arg(long, default_value = "http://localhost:8080")]
    issuer: String,
    /// The client_id printed by `lanyard client add`.
    #[arg(
        long,
        required_unless_present = "client_file",
        conflicts_with = "client_file"
    )]
    client_id: Option<String>,
    /// The client_secret printed by `lanyard client add`.
    #[arg(long, env = "DEMO_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// A file holding what `lanyard client add --json` printed (client_id and client_secret).
    #[arg(long, value_name = "FILE")]
    client_file: Option<std::path::PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3001")]
    listen: std::net::SocketAddr,
    /// Where browsers reach this app; defaults to http://localhost:<listen port>.
    #[arg(long)]
    public_url: Option<url::Url>,
    /// The name shown on its pages.
    #[arg(long, default_value = "Demo app")]
    name: String,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let public_url = match args.public_url {
        Some(u) => u,
        None => format!("http://localhost:{}", args.listen.port()).parse()?,
    };
    let (client_id, client_secret) = match (&args.client_file, args.client_id) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let c: Registered = serde_json::from_str(&text)
                .with_context(|| format!("{} is not `client add --json` output", file.display()))?;
            (c.client_id, c.client_secret)
        }
        (None, Some(id)) => (id, args.client_secret),
        (None, None) => anyhow::bail!("give --client-id or --client-file"),
    };
    let settings = lanyard_demo_rp::Settings {
        issuer: args.issuer,
        client_id,
        client_secret,
        public_url: public_url.clone(),
        name: args.name,
    };
    let app = lanyard_demo_rp::App::new(settings).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(%public_url, "demo app listening");
    axum::serve(listener, app.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
