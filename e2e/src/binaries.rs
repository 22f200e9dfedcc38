//! Where the workspace's real binaries are, for tests that run them inside the NAT lab.
//!
//! Cargo only hands a package's tests the paths of that package's own binaries
//! (`CARGO_BIN_EXE_*`). The end-to-end tests run other packages' binaries (`quickp2p-stun`, the
//! `quickp2p` CLI), which `cargo test --workspace` builds next to the test executables because
//! their own packages have integration tests. This module finds them there.

use std::path::PathBuf;

/// The path of workspace binary `name` in the profile directory the running test was built in
/// (`target/debug` for `cargo test`).
///
/// # Errors
/// A message saying how to build it, when it is not there.
pub fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the test binary: {e}"))?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let path = profile_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built: run the whole suite (`cargo test --workspace`), or `cargo build --bins` first",
            path.display()
        ))
    }
}
