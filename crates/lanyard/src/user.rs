//! `lanyard user …`: create, list, disable users and set their passwords.

use anyhow::{Context, bail};
use clap::Subcommand;
use lanyard_core::audit::{Actor, AuditKind, NewAuditEvent};
use lanyard_core::password::PasswordHasher;
use lanyard_core::user::{DisplayName, Email, NewUser, User, UserId, Username};

use crate::cli::{Ctx, JsonFlag, password_from_stdin};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input.
    Add {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Read the password from standard input (required: passwords never go in arguments).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List users.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Disable a user: they can no longer sign in.
    Disable { username: String },
    /// Set a user's password, read from standard input.
    SetPassword {
        username: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

pub async fn run(ctx: &Ctx, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            username,
            email,
            name,
            password_stdin: _,
        } => {
            let username = Username::parse(&username)?;
            let email = Email::parse(&email)?;
            let display_name = name.as_deref().map(DisplayName::parse).transpose()?;
            let hash = hash_new_password(ctx, username.as_str()).await?;
            let user = NewUser {
                id: UserId::generate()?,
                username,
                email,
                display_name,
                password_hash: hash,
                created_at: ctx.now(),
            };
            let event = cli_event(ctx, AuditKind::UserCreated).user(user.id.as_str());
            ctx.store.create_user(&user, &event).await?;
            println!("Created user {} (id {}).", user.username, user.id.as_str());
        }
        UserCommand::List { json } => {
            let users = ctx.store.list_users().await?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                print_users(&users);
            }
        }
        UserCommand::Disable { username } => {
            let user = find(ctx, &username).await?;
            let event = cli_event(ctx, AuditKind::UserDisabled).user(user.id.as_str());
            if !ctx.store.disable_user(&user.id, &event).await? {
                bail!("no user named {username:?}");
            }
            println!(
                "Disabled user {}; their sessions have ended.",
                user.username
            );
        }
        UserCommand::SetPassword {
            username,
            password_stdin: _,
        } => {
            let user = find(ctx, &username).await?;
            let hash = hash_new_password(ctx, user.username.as_str()).await?;
            let event = cli_event(ctx, AuditKind::PasswordChanged).user(user.id.as_str());
            // A reset from the command line ends every session of the user.
            if !ctx
                .store
                .set_password_hash(&user.id, &hash, None, &event)
                .await?
            {
                bail!("no user named {username:?}");
            }
            println!("Set the password of {}.", user.username);
        }
    }
    Ok(())
}

/// An audit event for something done from the command line.
pub fn cli_event(ctx: &Ctx, kind: AuditKind) -> NewAuditEvent {
    let actor = Actor {
        ip: None,
        user_agent: Some("lanyard command line".to_owned()),
    };
    NewAuditEvent::new(ctx.now(), kind).actor(actor)
}

async fn find(ctx: &Ctx, username: &str) -> anyhow::Result<User> {
    let parsed =
        Username::parse(username).with_context(|| format!("no user named {username:?}"))?;
    match ctx.store.user_by_username(&parsed).await? {
        Some(u) => Ok(u),
        None => bail!("no user named {username:?}"),
    }
}

async fn hash_new_password(ctx: &Ctx, username: &str) -> anyhow::Result<String> {
    let password = password_from_stdin()?;
    let hasher = PasswordHasher::new(ctx.config.password.clone())?;
    hasher.check_new_for(&password, username)?;
    // Argon2 is CPU-bound: keep it off the async workers even in a one-shot command.
    let hash = tokio::task::spawn_blocking(move || hasher.hash(&password)).await??;
    Ok(hash)
}

fn print_users(users: &[User]) {
    if users.is_empty() {
        println!(
            "No users yet. Create one with: lanyard user add --username U --email E --password-stdin"
        );
        return;
    }
    println!(
        "{:<24} {:<32} {:<24} {:<9} CREATED",
        "USERNAME", "EMAIL", "NAME", "STATUS"
    );
    for u in users {
        println!(
            "{:<24} {:<32} {:<24} {:<9} {}",
            u.username,
            u.email.as_str(),
            u.display_name.as_ref().map_or("-", |d| d.as_str()),
            if u.disabled { "disabled" } else { "active" },
            u.created_at
        );
    }
}
