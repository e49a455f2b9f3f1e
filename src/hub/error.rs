//! Hub errors: each says what failed and what to do. Tokens never appear in them.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HubError {
    #[error(
        "{what}: authentication required (HTTP 401){detail}; the repo may be private or gated: set HF_TOKEN to a token with access"
    )]
    Unauthorized { what: String, detail: String },
    #[error(
        "{what}: access denied (HTTP 403){detail}; for a gated model accept its license on the model page, and check the token has {need} permission"
    )]
    Forbidden {
        what: String,
        detail: String,
        need: String,
    },
    #[error(
        "{what}: not found (HTTP 404){detail}; check the repo id, the revision and that the repo exists"
    )]
    NotFound { what: String, detail: String },
    #[error("{what}: the Hub answered HTTP {status}{detail}")]
    Status {
        what: String,
        status: u16,
        detail: String,
    },
    #[error(
        "{what}: cannot reach {endpoint} ({message}); check the network, or set HF_HUB_OFFLINE=1 to use the local cache only"
    )]
    Network {
        what: String,
        endpoint: String,
        message: String,
    },
    #[error(
        "{what}: HF_HUB_OFFLINE is set and {file} of {repo} is not in the cache ({cache}); fetch it first with `burnish download {repo}` on a machine with network"
    )]
    OfflineMiss {
        what: String,
        repo: String,
        file: String,
        cache: String,
    },
    #[error(
        "{what}: HF_HUB_OFFLINE is set, so burnish does not contact the Hub; unset it to publish (the files stay where they are, and `burnish push` can publish them later)"
    )]
    Offline { what: String },
    #[error("{0}")]
    Protocol(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl HubError {
    pub fn is_user_error(&self) -> bool {
        !matches!(self, HubError::Protocol(_))
    }

    /// Retrying can help (server hiccups, rate limits, dropped connections).
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::Status { status, .. } => *status == 429 || *status >= 500,
            HubError::Network { .. } => true,
            _ => false,
        }
    }

    /// Map an HTTP failure of `what` to a typed error. `need` is `read` or `write`.
    pub fn from_ureq(what: &str, endpoint: &str, need: &str, e: ureq::Error) -> Self {
        match e {
            ureq::Error::Status(status, resp) => {
                let message = resp
                    .header("X-Error-Message")
                    .map(str::to_string)
                    .or_else(|| {
                        resp.into_string()
                            .ok()
                            .map(|b| b.chars().take(300).collect())
                    })
                    .filter(|m| !m.trim().is_empty());
                let detail = message
                    .map(|m| format!(": {}", m.trim()))
                    .unwrap_or_default();
                let what = what.to_string();
                match status {
                    401 => HubError::Unauthorized { what, detail },
                    403 => HubError::Forbidden {
                        what,
                        detail,
                        need: need.into(),
                    },
                    404 => HubError::NotFound { what, detail },
                    _ => HubError::Status {
                        what,
                        status,
                        detail,
                    },
                }
            }
            ureq::Error::Transport(t) => HubError::Network {
                what: what.into(),
                endpoint: endpoint.into(),
                message: t.to_string(),
            },
        }
    }
}
