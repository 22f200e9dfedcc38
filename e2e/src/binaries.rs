//! Where the workspace's real binaries are, for tests that run them inside the NAT lab.
//!
//! Cargo only hands a package's tests the paths of that package's own binaries
//! (`CARGO_BIN_EXE_*`). The end-to-end tests run other packages' binaries (`quickp2p-stun`, the
//! `quickp2p` CLI), which `cargo test --workspace` builds next to the test executables because
//! their own packages have integration tests. This module finds them there.

use std::path::PathBuf;

/// The path of workspace binary `name` in the profile directory the running test or program was
/// built in (`target/debug` for `cargo test`, `target/release` for a release benchmark).
///
/// # Errors
/// A message saying how to build it, when it is not there.
pub fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the test binary: {e}"))?;
    // a test: target/<profile>/deps/<test> → target/<profile>/<name>;
    // a program (benchmark): target/<profile>/<program> → target/<profile>/<name>
    let dir = exe
        .parent()
        .ok_or_else(|| format!("unexpected binary location {}", exe.display()))?;
    let profile_dir = if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent()
            .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?
    } else {
        dir
    };
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
