//! The one error type of the NAT lab.

use std::io;

/// Why building, changing or using a NAT lab failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The machine cannot host a lab (not root, `ip` or `nft` missing, no namespaces); the text
    /// says which. Tests print `SKIP: <reason>` and pass.
    #[error("NAT lab unavailable: {0}")]
    Unavailable(String),
    /// The builder was given something the lab cannot build.
    #[error("invalid NAT lab configuration: {0}")]
    Config(String),
    /// A tool (`ip`, `nft`, `tc`, …) could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A tool ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}
