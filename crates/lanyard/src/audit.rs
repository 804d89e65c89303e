//! `lanyard audit`: the audit log, newest first.

use anyhow::bail;
use clap::Args;
use lanyard_core::user::Username;

use crate::cli::{Ctx, JsonFlag};

#[derive(Args)]
pub struct AuditArgs {
    /// Only events about this user.
    #[arg(long)]
    user: Option<String>,
    /// How many events to print.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    #[command(flatten)]
    json: JsonFlag,
}

pub async fn run(ctx: &Ctx, args: AuditArgs) -> anyhow::Result<()> {
    let user = match &args.user {
        Some(name) => {
            let found = match Username::parse(name) {
                Ok(u) => ctx.store.user_by_username(&u).await?,
                Err(_) => None,
            };
            match found {
                Some(u) => Some(u.id),
                None => bail!("no user named {name:?}"),
            }
        }
        None => None,
    };
    let events = ctx.store.list_audit(user.as_ref(), args.limit).await?;
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    for e in &events {
        println!(
            "{} {:<22} user={} client={} ip={} {}",
            e.at,
            e.kind,
            e.user_id.as_deref().unwrap_or("-"),
            e.client_id.as_deref().unwrap_or("-"),
            e.ip.as_deref().unwrap_or("-"),
            e.detail
        );
    }
    Ok(())
}
