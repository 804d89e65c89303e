//! `lanyard client …`: register, list and remove relying applications.

use anyhow::bail;
use clap::Subcommand;
use lanyard_core::audit::AuditKind;
use lanyard_core::client::{Client, ClientId, ClientRegistration, GrantType, IdTokenAlg};
use secrecy::ExposeSecret;

use crate::cli::{Ctx, JsonFlag};
use crate::user::cli_event;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Register a client. A confidential client's secret is printed once and stored hashed.
    Add {
        #[arg(long)]
        name: String,
        /// Where the browser may be sent back with a code (repeatable).
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// Where the browser may be sent after signing out (repeatable).
        #[arg(long = "post-logout-redirect-uri", value_name = "URI")]
        post_logout_redirect_uris: Vec<String>,
        #[arg(long, value_name = "URI")]
        backchannel_logout_uri: Option<String>,
        #[arg(long, value_name = "URI")]
        frontchannel_logout_uri: Option<String>,
        /// A public client (a browser or native app) has no secret and must use PKCE.
        #[arg(long)]
        public: bool,
        /// Do not ask users to consent (first-party apps).
        #[arg(long)]
        skip_consent: bool,
        /// Users must pass a second factor (enrolling one if they have none) for this app.
        #[arg(long)]
        require_mfa: bool,
        #[arg(long, value_name = "ALG", value_parser = ["RS256", "ES256", "EdDSA"], default_value = "RS256")]
        id_token_alg: String,
        /// Grant types (repeatable; default authorization_code and refresh_token).
        #[arg(long = "grant-type", value_name = "GRANT",
              value_parser = ["authorization_code", "refresh_token", "client_credentials"])]
        grant_types: Vec<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List clients.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove a client by its client_id.
    Remove { client_id: String },
    /// Print a new initial access token for Dynamic Client Registration (`/register`).
    Token,
}

#[derive(serde::Serialize)]
struct Created<'a> {
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
}

pub async fn run(ctx: &Ctx, cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Add {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            backchannel_logout_uri,
            frontchannel_logout_uri,
            public,
            skip_consent,
            require_mfa,
            id_token_alg,
            grant_types,
            json,
        } => {
            let registration = ClientRegistration {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                backchannel_logout_uri,
                frontchannel_logout_uri,
                public,
                skip_consent,
                require_mfa,
                id_token_alg: id_token_alg.parse::<IdTokenAlg>()?,
                grant_types: grant_types
                    .iter()
                    .map(|g| g.parse::<GrantType>())
                    .collect::<Result<_, _>>()?,
            };
            let valid = registration.validate(ctx.now())?;
            let c = &valid.client;
            let event = cli_event(ctx, AuditKind::ClientCreated)
                .client(c.id.as_str())
                .detail(format!("name={:?}", c.name));
            ctx.store.create_client(c, &event).await?;
            let secret = valid.secret.as_ref().map(|s| s.expose_secret());
            if json.json {
                let out = Created {
                    client_id: c.id.as_str(),
                    client_secret: secret,
                };
                println!("{}", serde_json::to_string(&out)?);
            } else {
                println!("Created client {:?}.", c.name);
                println!("client_id:     {}", c.id);
                if let Some(secret) = secret {
                    println!("client_secret: {secret}");
                    println!("The secret is shown only this once: store it now.");
                }
            }
        }
        ClientCommand::List { json } => {
            let clients = ctx.store.list_clients().await?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&clients)?);
            } else {
                print_clients(&clients);
            }
        }
        ClientCommand::Token => {
            let token = lanyard_core::secret::random_token(32)?;
            let enabled = ctx.config.registration.initial_access_token.is_some();
            println!("{token}");
            eprintln!(
                "Set it as registration.initial_access_token (or LANYARD_REGISTRATION__INITIAL_ACCESS_TOKEN) \
                 and restart to {} /register; apps then send it as a Bearer token.",
                if enabled {
                    "replace the current token of"
                } else {
                    "enable"
                }
            );
        }
        ClientCommand::Remove { client_id } => {
            let id = ClientId::from_stored(client_id);
            let event = cli_event(ctx, AuditKind::ClientRemoved).client(id.as_str());
            if !ctx.store.remove_client(&id, &event).await? {
                bail!("no client with client_id {:?}", id.as_str());
            }
            println!("Removed client {}.", id);
        }
    }
    Ok(())
}

fn print_clients(clients: &[Client]) {
    if clients.is_empty() {
        println!(
            "No clients yet. Register one with: lanyard client add --name N --redirect-uri URI"
        );
        return;
    }
    println!(
        "{:<24} {:<24} {:<13} {:<40} REDIRECT URIS",
        "CLIENT ID", "NAME", "TYPE", "GRANTS"
    );
    for c in clients {
        let grants: Vec<&str> = c.grant_types.iter().map(|g| g.as_str()).collect();
        println!(
            "{:<24} {:<24} {:<13} {:<40} {}",
            c.id,
            c.name,
            if c.public { "public" } else { "confidential" },
            grants.join(","),
            c.redirect_uris.join(" ")
        );
    }
}
