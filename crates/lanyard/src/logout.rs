//! `lanyard logout deliveries`: the back-channel logout outbox, newest first.

use clap::Subcommand;

use crate::cli::{Ctx, JsonFlag};

#[derive(Subcommand)]
pub enum LogoutCommand {
    /// List back-channel logout deliveries and their state.
    Deliveries {
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        #[command(flatten)]
        json: JsonFlag,
    },
}

pub async fn run(ctx: &Ctx, cmd: LogoutCommand) -> anyhow::Result<()> {
    let LogoutCommand::Deliveries { limit, json } = cmd;
    let rows = ctx.store.logout_deliveries(limit).await?;
    if json.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("No back-channel logouts yet.");
        return Ok(());
    }
    println!(
        "{:<6} {:<10} {:<8} {:<34} {:<21} LAST ERROR",
        "ID", "STATE", "TRIES", "CLIENT", "CREATED"
    );
    for d in rows {
        println!(
            "{:<6} {:<10} {:<8} {:<34} {:<21} {}",
            d.id,
            d.state,
            d.attempts,
            d.client_id,
            d.created_at,
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
