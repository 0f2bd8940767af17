//! The last applied configuration, kept on disk, and the generation fence.
//!
//! The agent restores this at start and serves from it, so a node keeps its users and limits
//! when the control plane is unreachable. A fetched configuration is checked against it by
//! [`judge`] (pure) before anything changes: older generations and a known generation with
//! different contents are refused (DESIGN.md decision 3). It is written before it is applied,
//! so the generation the agent holds never moves backwards across a crash.

use anyhow::Context;
use mooring_agent_protocol::{DesiredConfig, Generation};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LEDGER_FILE: &str = "applied-config.json";

/// What to do with a fetched configuration, given the one held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Already applied: nothing to do.
    Same,
    Refuse(String),
}

pub fn judge(held: Option<&DesiredConfig>, incoming: &DesiredConfig) -> Verdict {
    let Some(held) = held else {
        return Verdict::Apply;
    };
    if incoming.generation < held.generation {
        Verdict::Refuse(format!(
            "generation {} is older than the applied generation {}",
            incoming.generation, held.generation
        ))
    } else if incoming.generation == held.generation {
        if incoming == held {
            Verdict::Same
        } else {
            Verdict::Refuse(format!(
                "generation {} was already applied with different contents",
                incoming.generation
            ))
        }
    } else {
        Verdict::Apply
    }
}

#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn new(data_dir: &Path) -> Self {
        Ledger {
            path: data_dir.join(LEDGER_FILE),
        }
    }

    pub fn load(&self) -> anyhow::Result<Option<DesiredConfig>> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Replaces the file atomically and durably: temp file, fsync, rename, fsync directory.
    pub fn store(&self, config: &DesiredConfig) -> anyhow::Result<()> {
        let dir = self.path.parent().context("ledger path has a parent")?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(config).context("encoding the configuration")?;
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes).context("writing the ledger")?;
        f.sync_all().context("syncing the ledger")?;
        fs::rename(&tmp, &self.path).context("renaming the ledger into place")?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .context("syncing the data directory")?;
        Ok(())
    }
}

/// The generation of a held configuration, 0 when there is none.
pub fn held_generation(held: Option<&DesiredConfig>) -> Generation {
    held.map(|c| c.generation).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mooring_agent_protocol::{EngineSettings, Limits, User};

    pub(crate) fn config(generation: u64, users: &[&str]) -> DesiredConfig {
        DesiredConfig {
            generation: Generation(generation),
            users: users
                .iter()
                .map(|u| User {
                    name: u.to_string(),
                    password_hash: mooring_agent_protocol::rabbit_password_hash(u, [1, 2, 3, 4]),
                    tags: vec![],
                    vhosts: vec!["/".into()],
                })
                .collect(),
            vhosts: vec!["/".into()],
            limits: Limits {
                max_connections: 100,
                max_channels_per_connection: 100,
                max_queues: 100,
                memory_bytes: 1 << 30,
            },
            engine: EngineSettings {
                engine_version: "3.13".into(),
                host_instance_type: "mq.m5.large".into(),
                configuration: None,
            },
            replication: None,
        }
    }

    #[test]
    fn verdicts() {
        let g2 = config(2, &["a"]);
        let cases = [
            (None, config(1, &["a"]), Verdict::Apply),
            (Some(g2.clone()), config(3, &["b"]), Verdict::Apply),
            (Some(g2.clone()), config(2, &["a"]), Verdict::Same),
        ];
        for (held, incoming, want) in cases {
            assert_eq!(
                judge(held.as_ref(), &incoming),
                want,
                "{held:?} vs {incoming:?}"
            );
        }
        assert!(
            matches!(judge(Some(&g2), &config(1, &["a"])), Verdict::Refuse(r) if r.contains("older"))
        );
        assert!(
            matches!(judge(Some(&g2), &config(2, &["b"])), Verdict::Refuse(r) if r.contains("different contents"))
        );
    }

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::new(dir.path());
        assert_eq!(ledger.load().expect("empty ledger"), None);
        ledger.store(&config(1, &["a"])).expect("store 1");
        ledger.store(&config(2, &["a", "b"])).expect("store 2");
        assert_eq!(ledger.load().expect("load"), Some(config(2, &["a", "b"])));
        assert!(!dir.path().join("applied-config.json.tmp").exists());
    }
}
