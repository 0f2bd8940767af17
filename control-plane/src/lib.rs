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
use std::path::Path;

use anyhow::Context as _;
use axum::Router;
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
/// health, metrics) and the background reconcilers.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
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
    tracing::info!(%addr, "mooring control plane listening");

    let state = AppState::new(store, config).with_master_key(master_key);
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = spawn_background(&state, addr, stop_rx);
    let app = http::router(state.clone()).merge(extra_routes(&state));

    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP");
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for task in background {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "a background task ended abnormally");
        }
    }
    state.store.close().await;
    served
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
