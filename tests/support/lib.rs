//! Helpers shared by the workspace's integration tests and benchmarks.

use std::path::PathBuf;

/// The fixture directory: `NVG_FIXTURES` if set, else the shared `nvg-tiny` set beside the checkout.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("NVG_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/nvg-tiny"),
    }
}
