//! `mooring`: parse the command line, set up logging, run.

use clap::Parser as _;
use mooring_control_plane::config::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

/// Requests allocate many small, short-lived buffers; mimalloc's thread-local free lists
/// cost less per allocation than glibc malloc (whose `_int_malloc`/`free` took ~10% of a
/// DescribeBroker's CPU in `bench/profile-api.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Serve(c) => c.log_format,
        _ => LogFormat::Human,
    };
    init_tracing(format);
    let result = match cli.command {
        Command::Serve(config) => mooring_control_plane::serve(config, shutdown_signal()).await,
        Command::Migrate(database) => mooring_control_plane::open_store(&database)
            .await
            .map(|_| ()),
        Command::Openapi => {
            print!("{}", mooring_control_plane::http::openapi::document());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "mooring failed");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    // sqlx reports Postgres notices ("relation already exists, skipping") at info.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
