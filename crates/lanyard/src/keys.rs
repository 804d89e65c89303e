//! `lanyard keys …`: list and rotate the signing keys.

use clap::Subcommand;
use lanyard_core::client::IdTokenAlg;
use lanyard_server::keys::{KeyRing, PROPAGATION};

use crate::cli::{Ctx, JsonFlag};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Add a new signing key (for one algorithm, or all). Running servers publish it within a
    /// minute and sign with it after PROPAGATION; old keys stay published until their tokens
    /// have expired.
    Rotate {
        #[arg(long, value_name = "ALG", value_parser = ["RS256", "ES256", "EdDSA"])]
        alg: Option<String>,
    },
    /// List the signing keys.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(serde::Serialize)]
struct KeyInfo {
    kid: String,
    alg: &'static str,
    created_at: lanyard_core::UnixTime,
    activates_at: lanyard_core::UnixTime,
    retired_at: Option<lanyard_core::UnixTime>,
}

pub async fn run(ctx: &Ctx, cmd: KeysCommand) -> anyhow::Result<()> {
    let now = ctx.now();
    // Opening the ring creates any algorithm's first key, and checks the encryption key.
    let ring = KeyRing::open(&ctx.config, &*ctx.store, now).await?;
    match cmd {
        KeysCommand::Rotate { alg } => {
            let algs = match alg {
                Some(a) => vec![a.parse::<IdTokenAlg>()?],
                None => vec![IdTokenAlg::RS256, IdTokenAlg::ES256, IdTokenAlg::EdDSA],
            };
            for alg in algs {
                let kid = ring.add(&*ctx.store, alg, true, now).await?;
                println!("Added {} key {kid}.", alg.as_str());
            }
            println!(
                "Servers publish the new keys within a minute and sign with them after {} s.",
                PROPAGATION.as_secs()
            );
        }
        KeysCommand::List { json } => {
            let keys: Vec<KeyInfo> = ctx
                .store
                .signing_keys()
                .await?
                .into_iter()
                .map(|k| KeyInfo {
                    kid: k.kid,
                    alg: k.alg.as_str(),
                    created_at: k.created_at,
                    activates_at: k.activates_at,
                    retired_at: k.retired_at,
                })
                .collect();
            if json.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<44} {:<6} {:<21} {:<21} RETIRED",
                    "KID", "ALG", "CREATED", "SIGNS FROM"
                );
                for k in keys {
                    let retired = k.retired_at.map_or("-".to_owned(), |t| t.to_string());
                    println!(
                        "{:<44} {:<6} {:<21} {:<21} {retired}",
                        k.kid, k.alg, k.created_at, k.activates_at
                    );
                }
            }
        }
    }
    Ok(())
}
