//! The errors that leave the gateway crate. A signal's own failures never
//! do: they are HTTP answers ([`crate::problem::Problem`]); what crosses to
//! the binary is why the gateway cannot start with its configuration.

use std::path::PathBuf;

/// Why the gateway's configuration is unusable; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("gateway.cloudwatch.trustedCertificateFiles: {}: {source}", path.display())]
    CertificateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gateway.cloudwatch.trustedCertificateFiles: {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("gateway.cloudwatch.replayWindowSeconds must be at least 1")]
    ReplayWindow,
    #[error("gateway.cloudwatch.targets[{index}]: {reason}")]
    TargetRule { index: usize, reason: String },
    #[error("cannot build the HTTPS client for SNS: {0}")]
    Https(#[source] reqwest::Error),
}
