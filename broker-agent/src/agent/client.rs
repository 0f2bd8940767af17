//! HTTP client for the control plane's agent API (see `mooring_agent_protocol`).

use anyhow::{bail, Context};
use mooring_agent_protocol::{
    route, ApplyReport, DesiredConfig, DesiredPointer, Heartbeat, NodeId, RegisterRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// A request that takes longer than this is treated as a failed attempt and retried later.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    http: reqwest::Client,
    base: String,
    node: NodeId,
    token: String,
}

impl ControlPlaneClient {
    pub fn new(base: &str, node: NodeId, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(ControlPlaneClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            node,
            token,
        })
    }

    pub async fn register(&self, req: &RegisterRequest) -> anyhow::Result<DesiredPointer> {
        self.post("register", req).await
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> anyhow::Result<DesiredPointer> {
        self.post("heartbeat", hb).await
    }

    pub async fn fetch_config(&self) -> anyhow::Result<DesiredConfig> {
        let resp = self
            .http
            .get(self.url("config"))
            .bearer_auth(&self.token)
            .send()
            .await
            .context("GET config")?;
        decode(resp).await
    }

    pub async fn report(&self, report: &ApplyReport) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(self.url("applied"))
            .bearer_auth(&self.token)
            .json(report)
            .send()
            .await
            .context("POST applied")?;
        check(resp).await.map(|_| ())
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        leaf: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        let resp = self
            .http
            .post(self.url(leaf))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {leaf}"))?;
        decode(resp).await
    }

    fn url(&self, leaf: &str) -> String {
        format!("{}{}", self.base, route(&self.node, leaf))
    }
}

async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let url = resp.url().path().to_string();
    let body = resp.text().await.unwrap_or_default();
    bail!(
        "{url} answered {status}: {}",
        body.chars().take(200).collect::<String>()
    )
}

async fn decode<R: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<R> {
    let resp = check(resp).await?;
    resp.json()
        .await
        .context("decoding the control plane's answer")
}
