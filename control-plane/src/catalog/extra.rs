//! Engine versions added at runtime: `<data-dir>/catalog/engine-versions.json`.
//!
//! The built-in versions are compiled in; an operator (or a test) adds a version without a
//! new control-plane build by writing this file, for example when a new engine patch
//! release is installed:
//!
//! ```json
//! {"engineVersions": [{"engineType": "RABBITMQ", "version": "3.13.1"}]}
//! ```
//!
//! The file is looked at (one `stat`) whenever the catalog is read and re-read when its
//! modification time or size changed. A file that does not parse is logged and the last
//! good contents stay in force, so a half-written file never removes a version brokers run.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Deserialize;

use super::engine_versions::{EngineVersionSpec, Runner};
use crate::model::EngineType;

/// Where the file lives under the control plane's data directory.
pub fn extra_versions_path(data_dir: &Path) -> PathBuf {
    data_dir.join("catalog").join("engine-versions.json")
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    engine_versions: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry {
    engine_type: EngineType,
    version: String,
}

/// Versions are `major.minor[.patch]` numbers, as the built-in ones.
fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses the file's contents; every entry is checked, and one bad entry refuses the file.
pub fn parse(text: &str) -> Result<Vec<EngineVersionSpec>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    file.engine_versions
        .into_iter()
        .map(|e| {
            if !valid_version(&e.version) {
                return Err(format!(
                    "version {:?} is not major.minor[.patch]",
                    e.version
                ));
            }
            Ok(EngineVersionSpec {
                engine_type: e.engine_type,
                version: intern(e.version),
                runner: Runner::ConfiguredAgent,
            })
        })
        .collect()
}

/// Versions live as long as the process (catalog entries are `&'static`); each distinct
/// string is leaked once, so memory is bounded by the distinct versions ever configured.
fn intern(s: String) -> &'static str {
    static SEEN: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock();
    if let Some(v) = seen.iter().find(|v| **v == s) {
        return v;
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    seen.push(leaked);
    leaked
}

#[derive(Default)]
struct Cached {
    /// `(modified, len)` of the file last read; `None` when it was absent.
    stamp: Option<(Option<SystemTime>, u64)>,
    versions: Vec<EngineVersionSpec>,
}

/// The runtime versions of one control plane.
pub struct ExtraVersions {
    path: PathBuf,
    cached: Mutex<Cached>,
}

impl ExtraVersions {
    pub fn new(path: PathBuf) -> Self {
        ExtraVersions {
            path,
            cached: Mutex::new(Cached::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current extra versions, re-reading the file if it changed.
    pub fn current(&self) -> Vec<EngineVersionSpec> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        let mut cached = self.cached.lock();
        if cached.stamp != stamp {
            match &stamp {
                None => cached.versions.clear(),
                Some(_) => match std::fs::read_to_string(&self.path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse(&t))
                {
                    Ok(v) => {
                        tracing::info!(path = %self.path.display(), versions = ?v.iter().map(|v| v.version).collect::<Vec<_>>(), "engine catalog extended");
                        cached.versions = v;
                    }
                    Err(e) => tracing::warn!(
                        path = %self.path.display(),
                        "ignoring the engine catalog file (keeping its last good contents): {e}"
                    ),
                },
            }
            cached.stamp = stamp;
        }
        cached.versions.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let ok = parse(r#"{"engineVersions":[{"engineType":"RABBITMQ","version":"3.13.1"}]}"#)
            .expect("valid");
        assert_eq!(ok.len(), 1);
        assert_eq!(
            (ok[0].engine_type, ok[0].version),
            (EngineType::Rabbitmq, "3.13.1")
        );
        for bad in [
            "",
            "[]",
            r#"{"engineVersions":[{"engineType":"KAFKA","version":"3.13.1"}]}"#,
            r#"{"engineVersions":[{"engineType":"RABBITMQ","version":"3.13.x"}]}"#,
            r#"{"engineVersions":[{"engineType":"RABBITMQ","version":"3"}]}"#,
            r#"{"engineVersions":[{"engineType":"RABBITMQ","version":"3.13","binary":"/x"}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn rereads_on_change_and_keeps_last_good() {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra = ExtraVersions::new(extra_versions_path(dir.path()));
        assert!(extra.current().is_empty(), "no file, no versions");
        std::fs::create_dir_all(dir.path().join("catalog")).expect("mkdir");
        std::fs::write(
            extra.path(),
            r#"{"engineVersions":[{"engineType":"RABBITMQ","version":"3.13.1"}]}"#,
        )
        .expect("write");
        assert_eq!(
            extra
                .current()
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>(),
            ["3.13.1"]
        );
        std::fs::write(extra.path(), "{not json").expect("write");
        assert_eq!(
            extra.current().len(),
            1,
            "a broken file keeps the last good list"
        );
        std::fs::remove_file(extra.path()).expect("rm");
        assert!(
            extra.current().is_empty(),
            "a removed file removes its versions"
        );
    }
}
