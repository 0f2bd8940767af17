//! Where the binaries under test are.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The directory holding the debug binaries: `$MOORING_BIN_DIR`, else
/// `$CARGO_TARGET_DIR/debug`, else the workspace's `target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MOORING_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// The path of a built binary. A missing binary is an error, never a skip: the Makefile builds
/// every binary before the tests run, so a missing one means a broken build.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --bins` (or make build) first, or set MOORING_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}
