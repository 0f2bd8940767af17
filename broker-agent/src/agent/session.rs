//! The agent's conversation with the control plane: register, heartbeat, and fetch-and-apply
//! whenever the control plane's desired generation is ahead of the applied one.
//!
//! Every failure is retried with backoff and jitter; the loop never ends because the control
//! plane is down, and the node keeps serving from the configuration it holds meanwhile.

use super::backoff::Backoff;
use super::client::ControlPlaneClient;
use super::ledger::{held_generation, judge, Ledger, Verdict};
use super::node::Node;
use mooring_agent_protocol::{
    ApplyReport, DesiredConfig, DesiredPointer, Generation, Heartbeat, RegisterRequest, Rejection,
    HURRY_INTERVAL,
};
use std::future::Future;
use std::time::{Duration, Instant};

/// Delays between failed attempts: first about this long...
const RETRY_BASE: Duration = Duration::from_millis(200);
/// ...doubling up to this. Bounds how long an agent stays quiet after the control plane returns.
const RETRY_CAP: Duration = Duration::from_secs(5);

pub struct Session<N> {
    client: ControlPlaneClient,
    node: N,
    ledger: Ledger,
    /// The configuration applied to the node and stored in the ledger (always both).
    held: Option<DesiredConfig>,
    /// The last refused configuration, reported in heartbeats until one is applied.
    rejected: Option<Rejection>,
    /// The desired generation the control plane pointed at when we last refused; we do not
    /// fetch again until it points higher (generations only grow, so a fix comes as a new one).
    refused_at: Generation,
    register: RegisterRequest,
    registered: bool,
    interval: Duration,
    /// The control plane asked for quick heartbeats (a leadership hand-over is under way).
    hurry: bool,
}

impl<N: Node> Session<N> {
    /// `held` must already be applied to `node` (restored from `ledger` at start).
    pub fn new(
        client: ControlPlaneClient,
        node: N,
        ledger: Ledger,
        held: Option<DesiredConfig>,
        mut register: RegisterRequest,
        interval: Duration,
    ) -> Self {
        register.applied_generation = held_generation(held.as_ref());
        Session {
            client,
            node,
            ledger,
            held,
            rejected: None,
            refused_at: Generation(0),
            register,
            registered: false,
            interval,
            hurry: false,
        }
    }

    /// Runs until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        let nudge = self.node.nudge();
        loop {
            let delay = match self.step().await {
                Ok(()) => {
                    backoff.reset();
                    if self.hurry {
                        HURRY_INTERVAL.min(self.interval)
                    } else {
                        self.interval
                    }
                }
                Err(e) => {
                    tracing::warn!("control plane round failed, retrying: {e:#}");
                    backoff.next_delay()
                }
            };
            let nudged = async {
                match &nudge {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
                _ = nudged => {}
            }
        }
    }

    /// One round: register (first time), else heartbeat; then catch up if behind.
    pub async fn step(&mut self) -> anyhow::Result<()> {
        // The lease in the answer counts from before the request left (see `LeaseGrant`).
        let sent_at = Instant::now();
        let desired = if self.registered {
            self.client.heartbeat(&self.heartbeat()).await?
        } else {
            let pointer = self.client.register(&self.register).await?;
            tracing::info!(desired = %pointer.desired_generation, "registered with the control plane");
            self.registered = true;
            pointer
        };
        self.hurry = desired.hurry;
        self.node.on_pointer(sent_at, &desired);
        if self.should_fetch(&desired) {
            self.sync(desired.desired_generation).await?;
        }
        Ok(())
    }

    pub fn held(&self) -> Option<&DesiredConfig> {
        self.held.as_ref()
    }

    pub fn rejected(&self) -> Option<&Rejection> {
        self.rejected.as_ref()
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            applied_generation: held_generation(self.held.as_ref()),
            engine: self.node.status(),
            rejected: self.rejected.clone(),
            replication: self.node.replication(),
        }
    }

    fn should_fetch(&self, desired: &DesiredPointer) -> bool {
        let want = desired.desired_generation;
        let held = held_generation(self.held.as_ref());
        if want < held {
            tracing::warn!(%want, %held, "control plane asks for an older generation; keeping ours");
        }
        want > held && want > self.refused_at
    }

    async fn sync(&mut self, pointer: Generation) -> anyhow::Result<()> {
        let config = self.client.fetch_config().await?;
        let generation = config.generation;
        let report = match judge(self.held.as_ref(), &config) {
            Verdict::Apply => {
                // Ledger first: the held generation must never move backwards across a crash.
                self.ledger.store(&config)?;
                self.node.apply(&config)?;
                tracing::info!(%generation, users = config.users.len(), "applied configuration");
                self.held = Some(config);
                self.rejected = None;
                ApplyReport::Applied { generation }
            }
            // The control plane may have missed our report; say it again.
            Verdict::Same => ApplyReport::Applied { generation },
            Verdict::Refuse(reason) => {
                tracing::error!(%generation, "refusing configuration: {reason}");
                let rejection = Rejection { generation, reason };
                self.rejected = Some(rejection.clone());
                self.refused_at = pointer;
                ApplyReport::Rejected(rejection)
            }
        };
        self.client.report(&report).await
    }
}
