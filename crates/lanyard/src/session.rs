//! `lanyard session …`: list and end sessions from the command line.

use anyhow::bail;
use clap::{ArgGroup, Subcommand};
use lanyard_core::audit::AuditKind;
use lanyard_core::session::EndReason;
use lanyard_core::user::{User, Username};

use crate::cli::{Ctx, JsonFlag};
use crate::user::cli_event;

#[derive(Subcommand)]
pub enum SessionCommand {
    /// List active sessions, newest first.
    List {
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// End one session by its ID (from `session list`), or every session of a user.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "user"])))]
    Revoke {
        /// The session ID shown by `session list`.
        id: Option<String>,
        /// End every session of this user.
        #[arg(long)]
        user: Option<String>,
    },
}

async fn find_user(ctx: &Ctx, name: &str) -> anyhow::Result<User> {
    let found = match Username::parse(name) {
        Ok(u) => ctx.store.user_by_username(&u).await?,
        Err(_) => None,
    };
    match found {
        Some(u) => Ok(u),
        None => bail!("no user named {name:?}"),
    }
}

pub async fn run(ctx: &Ctx, cmd: SessionCommand) -> anyhow::Result<()> {
    match cmd {
        SessionCommand::List { user, json } => {
            let user = match user {
                Some(name) => Some(find_user(ctx, &name).await?),
                None => None,
            };
            let policy = ctx.config.session.policy();
            let now = ctx.now();
            let (idle, lifetime) = (policy.idle_cutoff(now), policy.lifetime_cutoff(now));
            let sessions = ctx
                .store
                .list_sessions(user.as_ref().map(|u| &u.id), idle, lifetime)
                .await?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
                return Ok(());
            }
            if sessions.is_empty() {
                println!("No active sessions.");
                return Ok(());
            }
            println!(
                "{:<18} {:<24} {:<21} {:<21} {:<16} AGENT",
                "ID", "USER ID", "STARTED", "LAST ACTIVE", "IP"
            );
            for s in sessions {
                println!(
                    "{:<18} {:<24} {:<21} {:<21} {:<16} {}",
                    s.public_id,
                    s.user_id.as_str(),
                    s.created_at,
                    s.last_seen_at,
                    s.ip.as_deref().unwrap_or("-"),
                    s.user_agent.as_deref().unwrap_or("-")
                );
            }
        }
        SessionCommand::Revoke { id: Some(id), .. } => {
            let event = cli_event(ctx, AuditKind::SessionEnded);
            if !ctx
                .store
                .end_session_by_public_id(&id, None, EndReason::Revoked, &event)
                .await?
            {
                bail!("no active session with ID {id:?}");
            }
            println!("Ended session {id}.");
        }
        SessionCommand::Revoke {
            id: None,
            user: Some(name),
        } => {
            let user = find_user(ctx, &name).await?;
            let event = cli_event(ctx, AuditKind::SessionEnded);
            let n = ctx
                .store
                .end_user_sessions(&user.id, None, EndReason::Revoked, &event)
                .await?;
            println!("Ended {n} session(s) of {}.", user.username);
        }
        SessionCommand::Revoke {
            id: None,
            user: None,
        } => bail!("name a session ID or --user"),
    }
    Ok(())
}
