//! `volsnap-api`: parse the command line, then serve, migrate or manage tokens.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sqlx::PgPool;
use volsnap_api::{Limits, ServeConfig};
use volsnap_shared::db;
use volsnap_shared::domain::Role;

/// volsnap control plane: HTTP API, auth, job status, metrics.
#[derive(Debug, Parser)]
#[command(name = "volsnap-api", version)]
struct Cli {
    /// PostgreSQL connection URL. When unset, a private PostgreSQL cluster is started
    /// (once) under `$VOLSNAP_STATE_DIR/postgres` and used — the embedded default for
    /// trying volsnap out on one machine.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// volsnap's state directory (the embedded PostgreSQL lives here when DATABASE_URL
    /// is unset).
    #[arg(
        long,
        env = "VOLSNAP_STATE_DIR",
        global = true,
        default_value = "/var/lib/volsnap"
    )]
    state_dir: std::path::PathBuf,

    /// Most database connections this process opens.
    #[arg(
        long,
        env = "VOLSNAP_DB_MAX_CONNECTIONS",
        default_value_t = 8,
        global = true
    )]
    db_max_connections: u32,

    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "VOLSNAP_API_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,

    /// Seconds a request may take, on top of its own `?wait=`.
    #[arg(long, env = "VOLSNAP_API_REQUEST_TIMEOUT", default_value_t = 30)]
    request_timeout_secs: u64,

    /// Largest request body in bytes.
    #[arg(long, env = "VOLSNAP_API_BODY_LIMIT", default_value_t = 1024 * 1024)]
    body_limit: usize,

    /// Seconds a revoked token may still be accepted (the in-memory auth cache's age).
    #[arg(long, env = "VOLSNAP_API_TOKEN_CACHE_SECS", default_value_t = 2)]
    token_cache_secs: u64,

    /// Seconds from a request's first byte to the end of its headers before the
    /// connection is closed (slow-header clients).
    #[arg(long, env = "VOLSNAP_API_HEADER_TIMEOUT", default_value_t = 10.0)]
    header_timeout_secs: f64,

    /// Seconds a connection may sit with no request in flight and no traffic before it
    /// is closed.
    #[arg(long, env = "VOLSNAP_API_IDLE_TIMEOUT", default_value_t = 60.0)]
    idle_timeout_secs: f64,

    /// Most open client connections (more wait in the kernel's accept queue).
    #[arg(long, env = "VOLSNAP_API_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,

    /// Most requests held by `?wait=` at once (more get 503 with Retry-After).
    #[arg(long, env = "VOLSNAP_API_MAX_WAITERS", default_value_t = 2048)]
    max_waiters: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (what a bare `volsnap-api` does).
    Serve(ServeArgs),
    /// Apply the database migrations.
    Migrate,
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; it is printed once, alone on the last line of stdout.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke the token with this id, or every active token with this name.
    Revoke { id_or_name: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse::<Role>().map_err(|_| "admin or viewer".to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    volsnap_shared::telemetry::init();
    let cli = Cli::parse();
    let pool = volsnap_shared::database::connect(
        cli.database_url.as_deref(),
        &cli.state_dir,
        cli.db_max_connections,
    )
    .await
    .context("connecting to the database")?;
    match cli.command {
        None => serve(pool, cli.serve).await,
        Some(Command::Serve(args)) => serve(pool, args).await,
        Some(Command::Migrate) => migrate(&pool).await,
        Some(Command::Token(cmd)) => token(&pool, cmd).await,
    }
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        anyhow::bail!("--{flag} must be a number of seconds above 0 and at most 86400");
    }
    Ok(Duration::from_secs_f64(v))
}

async fn serve(pool: PgPool, args: ServeArgs) -> anyhow::Result<()> {
    if args.max_connections == 0 || args.max_waiters == 0 {
        anyhow::bail!("--max-connections and --max-waiters must be at least 1");
    }
    let cfg = ServeConfig {
        addr: args.addr,
        limits: Limits {
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            body_limit: args.body_limit,
            header_read_timeout: seconds("header-timeout-secs", args.header_timeout_secs)?,
            idle_timeout: seconds("idle-timeout-secs", args.idle_timeout_secs)?,
            max_connections: args.max_connections,
            max_waiters: args.max_waiters,
        },
        token_cache_ttl: Duration::from_secs(args.token_cache_secs),
    };
    let server = volsnap_api::build(pool, &cfg).await?;
    tracing::info!(addr = %server.local_addr(), "volsnap-api listening");
    server.run(shutdown_signal()).await.context("serving")?;
    tracing::info!("volsnap-api stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let before = db::schema::status(pool).await?;
    volsnap_shared::MIGRATOR
        .run(pool)
        .await
        .context("applying migrations")?;
    eprintln!(
        "migrations applied: {} new, schema is current",
        before.pending.len()
    );
    Ok(())
}

async fn token(pool: &PgPool, cmd: TokenCommand) -> anyhow::Result<()> {
    volsnap_shared::database::ensure_migrated(pool).await?;
    match cmd {
        TokenCommand::Create { name, role } => {
            if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
                anyhow::bail!("--name must be 1 to 100 characters without control characters");
            }
            let (secret, hash) = volsnap_api::auth::generate_token();
            let row = db::tokens::insert(pool, &name, role, &hash).await?;
            eprintln!(
                "created {} token {:?} (id {}); it is shown once, below — store it now",
                row.role, row.name, row.id
            );
            println!("{secret}");
        }
        TokenCommand::List => {
            println!(
                "{:<36}  {:<6}  {:<25}  {:<25}  NAME",
                "ID", "ROLE", "CREATED", "REVOKED"
            );
            for t in db::tokens::list(pool).await? {
                println!(
                    "{:<36}  {:<6}  {:<25}  {:<25}  {}",
                    t.id,
                    t.role,
                    t.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    t.revoked_at
                        .map(|r| r.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| "-".into()),
                    t.name
                );
            }
        }
        TokenCommand::Revoke { id_or_name } => {
            let revoked = db::tokens::revoke(pool, &id_or_name).await?;
            if revoked.is_empty() {
                anyhow::bail!("no active token has the id or name {id_or_name:?}");
            }
            for t in &revoked {
                eprintln!("revoked {} token {:?} (id {})", t.role, t.name, t.id);
            }
            eprintln!(
                "running API servers stop accepting it within their token cache time (2 s by default)"
            );
        }
    }
    Ok(())
}
