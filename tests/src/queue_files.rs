//! The on-disk layout of a queue's log, as far as crash tests need it: each durable queue has a
//! directory under `<data-dir>/queues/` holding a `meta` file (JSON with `vhost` and `name`)
//! and numbered segment files `NNNNNNNNNN.seg` with their `.ack` companions.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The log directory of queue `name` in vhost `vhost`, if it exists.
pub fn queue_dir(data_dir: &Path, vhost: &str, name: &str) -> Result<Option<PathBuf>> {
    let queues = data_dir.join("queues");
    let entries = match std::fs::read_dir(&queues) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", queues.display())),
    };
    for entry in entries {
        let dir = entry?.path();
        let Ok(meta) = std::fs::read(dir.join("meta")) else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_slice(&meta)
            .with_context(|| format!("parsing {}/meta", dir.display()))?;
        if meta["vhost"] == vhost && meta["name"] == name {
            return Ok(Some(dir));
        }
    }
    Ok(None)
}

/// The segment files of a queue's log, oldest first (their names sort by number).
pub fn segments(queue_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(queue_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "seg") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
