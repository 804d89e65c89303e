//! `lanyard doctor`: checks the configuration, the database, and what Lanyard sees of a request
//! sent to its public URL (through the reverse proxy, if there is one).

use std::time::Duration;

use crate::cli::Ctx;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Where to send the test request; the issuer by default, so it goes through the proxy.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

/// What `/_lanyard/request` answers.
#[derive(serde::Deserialize)]
struct Seen {
    peer: Option<String>,
    peer_trusted: bool,
    client_ip: Option<String>,
    scheme: String,
    host: Option<String>,
}

pub async fn run(ctx: &Ctx, args: DoctorArgs) -> anyhow::Result<()> {
    let config = &ctx.config;
    let mut problems = config.warnings();
    println!("issuer:          {}", config.issuer.as_str());
    println!("listen:          {}", config.listen);
    let proxies: Vec<String> = config
        .trusted_proxies
        .iter()
        .map(|p| p.to_string())
        .collect();
    println!(
        "trusted proxies: {}",
        if proxies.is_empty() {
            "(none)".to_owned()
        } else {
            proxies.join(", ")
        }
    );
    match ctx.store.ping().await {
        Ok(()) => println!("database:        ok ({})", ctx.store.backend()),
        Err(e) => problems.push(format!("the database does not answer: {e}")),
    }

    // Sent elsewhere than the issuer, the request is not expected to carry the issuer's host.
    let via_issuer = args.url.is_none();
    let base = args
        .url
        .unwrap_or_else(|| config.issuer.as_str().to_owned());
    let url = format!("{}/_lanyard/request", base.trim_end_matches('/'));
    println!("request to:      {url}");
    match fetch(&url).await {
        Ok(seen) => {
            let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            println!(
                "  peer:          {} ({})",
                or_none(&seen.peer),
                if seen.peer_trusted {
                    "a trusted proxy"
                } else {
                    "not a trusted proxy"
                }
            );
            println!("  client IP:     {}", or_none(&seen.client_ip));
            println!("  scheme:        {}", seen.scheme);
            println!("  host:          {}", or_none(&seen.host));
            problems.extend(judge(config, &seen, via_issuer));
        }
        Err(e) => problems.push(format!("{url} could not be fetched: {e}")),
    }

    if problems.is_empty() {
        println!("no problems found");
        return Ok(());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    anyhow::bail!("{} problem(s) found", problems.len())
}

async fn fetch(url: &str) -> anyhow::Result<Seen> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let r = http.get(url).send().await?;
    anyhow::ensure!(r.status().is_success(), "it answered {}", r.status());
    Ok(r.json().await?)
}

/// What the request should have looked like, seen from the issuer.
fn judge(config: &lanyard_server::Config, seen: &Seen, via_issuer: bool) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(issuer) = url::Url::parse(config.issuer.as_str()) else {
        return out;
    };
    if seen.scheme != issuer.scheme() {
        out.push(format!(
            "the request arrived as {} but the issuer is {}: the proxy must send \
             X-Forwarded-Proto (or Forwarded proto=) and be in trusted_proxies",
            seen.scheme,
            issuer.scheme()
        ));
    }
    let want_host = match issuer.port() {
        Some(p) => format!("{}:{p}", issuer.host_str().unwrap_or_default()),
        None => issuer.host_str().unwrap_or_default().to_owned(),
    };
    if via_issuer && seen.host.as_deref() != Some(want_host.as_str()) {
        out.push(format!(
            "the request arrived for host {} but the issuer's is {want_host}: the proxy should \
             pass the Host header (or X-Forwarded-Host) on",
            seen.host.as_deref().unwrap_or("-")
        ));
    }
    if !seen.peer_trusted
        && issuer.scheme() == "https"
        && let Some(peer) = &seen.peer
    {
        out.push(format!(
            "the request came from {peer}, which is not in trusted_proxies; if that is your \
             proxy, add it"
        ));
    }
    out
}
