//! The `ferromq` binary: parse the command line, load and validate the whole
//! configuration, bind, serve until SIGTERM/SIGINT, shut down gracefully.
//!
//! Exit codes: 0 after a clean shutdown, 78 (`EX_CONFIG`) for an invalid configuration
//! (every problem is printed), including a TLS certificate, key or CA file that is
//! missing or unusable, or a password / ACL file that is missing, unreadable or
//! invalid (naming the file and its bad lines), 74 (`EX_IOERR`) when the data directory cannot be used (a
//! newer format, a corrupt store: nothing is overwritten), 1 when a listener cannot be
//! bound or the runtime fails. SIGHUP reloads certificates (see `ferromq::reload`).
//!
//! `ferromq ctl ...` is the admin API's command-line client instead ([`ferromq::ctl`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ferromq::Server;
use ferromq_config::{CliOverrides, LogFormat};
use tracing_subscriber::EnvFilter;

/// ferromq: a clustered MQTT 3.1 / 3.1.1 / 5.0 broker.
#[derive(Debug, Parser)]
#[command(name = "ferromq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file: `*.toml` (native) or a mosquitto.conf-style file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT listener address (repeatable); replaces the configured listeners.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<std::net::SocketAddr>,
    /// Data directory.
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log level or filter (overrides the config; `RUST_LOG` overrides both).
    #[arg(long = "log-level", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long = "log-format", value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    /// Write the bound listener addresses as JSON to this file once ready.
    #[arg(long = "ready-file", value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Address of the operators' HTTP listener (/metrics, /healthz, /readyz, admin
    /// API); the last one given wins.
    #[arg(
        long = "http-listen",
        value_name = "ADDR",
        overrides_with = "http_listen"
    )]
    http_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Talk to a running broker's admin API (status, clients, kick, retained, ...).
    Ctl(ferromq::ctl::CtlArgs),
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!(
            "unknown log format `{other}` (expected text or json)"
        )),
    }
}

const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Ctl(args)) = cli.command {
        return ferromq::ctl::run(args);
    }
    let overrides = CliOverrides {
        listen: cli.listen.clone(),
        data_dir: cli.data_dir.clone(),
        log_level: cli.log_level.clone(),
        log_format: cli.log_format,
        http_listen: cli.http_listen,
    };
    let config = match ferromq_config::load_from_process_env(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("ferromq: invalid configuration:\n{errors}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    init_logging(&config.log.level, config.log.format);
    for note in &config.notes {
        tracing::warn!("config: {note}");
    }
    // Every connection is a file descriptor: allow as many as the system does.
    let fd_limit = ferromq::limits::raise_fd_limit();
    let fd_table = ferromq::limits::reserve_fd_table(&config.limits, fd_limit);
    tracing::debug!(
        ?fd_limit,
        ?fd_table,
        "open-file limit, descriptor table reserved"
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.limits.worker_threads > 0 {
        builder.worker_threads(config.limits.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferromq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(Arc::new(config), cli.ready_file))
}

async fn run(config: Arc<ferromq_config::Config>, ready_file: Option<PathBuf>) -> ExitCode {
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e @ ferromq::server::ServerError::Security(_)) => {
            tracing::error!("{e}");
            eprintln!("ferromq: invalid configuration:\n{e}");
            return ExitCode::from(EX_CONFIG);
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ferromq: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if let Some(path) = ready_file
        && let Err(e) = server.write_ready_file(&path)
    {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "ferromq started");
    server.run(shutdown_signal()).await;
    tracing::info!("ferromq stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
