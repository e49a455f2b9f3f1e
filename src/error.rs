//! A plain user-facing error for the command layer and library code that has no error type of
//! its own. Which failures count as the user's (exit code 2) is decided in `cli::exit`.

/// An error the user can fix (a bad argument, file or setting), as opposed to an internal one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

/// Shorthand for returning a [`UserError`].
pub fn user(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}
