//! Mooring's control plane: Amazon MQ's public API over a desired-state store, and the
//! reconcilers that converge broker nodes to it.
//!
//! `http/` parses and answers, `app/` holds the rules, `store/` the SQL, `catalog/` what
//! brokers can be made of; `plan/` decides (pure), `provider/` runs nodes, `auth/`
//! verifies requests. [`serve`] wires them together.

pub mod api;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod provider;
pub mod reconcile;
pub mod store;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::config::ServeConfig;
use crate::store::Store;

/// Opens the configured database and applies migrations.
pub async fn open_store(database: &config::DatabaseConfig) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&database.data_dir)
        .with_context(|| format!("creating data directory {}", database.data_dir.display()))?;
    let store = Store::connect(&database.url()).await?;
    store.migrate().await?;
    Ok(store)
}

/// Runs the control plane until `shutdown` resolves: the HTTP API (public, agent,
/// health, metrics) and the background tasks (reconcilers, audit retention).
///
/// With `--tls-cert`/`--tls-key` the API listener speaks HTTPS only, and the agent
/// API is also served on a plain-HTTP loopback listener of its own, which the local
/// agents are given. Every request knows its peer address (`ConnectInfo`), which the
/// policies see as `aws:SourceIp`, and over TLS carries the marker they see as
/// `aws:SecureTransport`.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    // Read the certificate first: a bad one should stop us before anything starts.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let store = open_store(&config.database).await?;
    let master_key = app::principals::load_master_key(
        config.master_key_file.as_deref(),
        &config.database.data_dir,
    )?;
    app::principals::bootstrap(
        &store,
        &master_key,
        &config.partition,
        &config.account_id,
        &config.database.data_dir,
    )
    .await
    .context("bootstrapping the admin credentials")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    write_listen_file(&config.database.data_dir, &addr.to_string())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "mooring control plane listening");

    let state = AppState::new(store, config).with_master_key(master_key);
    // Every server stops when `shutdown` resolves, or when this task drops the
    // sender (the API server ended on its own).
    let (quit_tx, quit_rx) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = quit_tx.send(true);
    });
    let (agent_addr, agent_server) = if tls.is_some() {
        let agent_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the agent listener")?;
        let agent_addr = agent_listener
            .local_addr()
            .context("reading the agent listener's address")?;
        tracing::info!(%agent_addr, "agent API listening (plain HTTP, loopback)");
        let server = tokio::spawn(serve_plain(
            agent_listener,
            extra_routes(&state),
            quit_rx.clone(),
        ));
        (agent_addr, Some(server))
    } else {
        (addr, None)
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = spawn_background(&state, agent_addr, stop_rx.clone());
    background.extend(app::audit::spawn_retention(
        state.store.clone(),
        state.config.audit_retention_days,
        stop_rx,
    ));
    let app = http::router(state.clone()).merge(extra_routes(&state));

    let served = match tls {
        None => serve_plain(listener, app, quit_rx).await,
        Some(tls) => {
            let listener = http::tls::TlsListener::new(listener, tls)
                .context("starting the TLS listener")?
                .tap_io(|_| {});
            let app = app.layer(Extension(http::tls::SecureTransport));
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(quit(quit_rx))
            .await
        }
    }
    .context("serving HTTP");
    tracing::info!("shutting down");
    signal.abort();
    if let Some(server) = agent_server {
        match server.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the agent listener failed"),
            Err(e) => tracing::warn!(error = %e, "the agent listener ended abnormally"),
            Ok(Ok(())) => {}
        }
    }
    let _ = stop_tx.send(true);
    for task in background {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "a background task ended abnormally");
        }
    }
    // The last requests' records (reads are written within ~100 ms) before closing.
    state.audit.shutdown().await;
    state.store.close().await;
    served
}

/// Serves `app` over plain HTTP on `listener` until `quit` turns true or closes,
/// with the peer address known to every request.
async fn serve_plain(
    listener: TcpListener,
    app: Router,
    quit_rx: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Small request/response exchanges: do not let Nagle hold back the answer.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(quit(quit_rx))
    .await
}

async fn quit(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Starts the reconcilers (see `reconcile`): they get the state (store, config,
/// metrics, `reconcile_wakeups()`), the address agents reach the control plane on, and
/// a receiver that turns `true` on shutdown, after which they return soon.
fn spawn_background(
    state: &AppState,
    listen: std::net::SocketAddr,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let sessions = tokio::spawn(app::sessions::cleanup_loop(
        state.store.clone(),
        stop.clone(),
    ));
    let mut tasks = reconcile::spawn(state, listen, stop);
    tasks.push(sessions);
    tasks
}

/// Routes served beside the public API: the agent API.
fn extra_routes(state: &AppState) -> Router {
    http::agent::router(state.clone())
}

/// `<data-dir>/listen` holds the bound address, so that tests and scripts started with
/// port 0 can find it. Written atomically (temp file, then rename).
fn write_listen_file(data_dir: &Path, addr: &str) -> anyhow::Result<()> {
    let tmp = data_dir.join("listen.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, data_dir.join("listen")).context("publishing the listen file")?;
    Ok(())
}
