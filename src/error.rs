//! Sorting failures into the user's (bad input: exit code 2) and ours (exit code 1).

use crate::model::ModelError;

/// An error the user can fix (a bad argument, file or setting), as opposed to an internal one.
/// Library error types say which they are; anything unknown counts as internal.
pub fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<ModelError>() {
            return e.is_user_error();
        }
        if let Some(e) = cause.downcast_ref::<crate::data::DataError>() {
            return e.is_user_error();
        }
        if let Some(e) = cause.downcast_ref::<crate::lora::LoraError>() {
            return e.is_user_error();
        }
        if let Some(e) = cause.downcast_ref::<crate::recipe::RecipeError>() {
            return e.is_user_error();
        }
        if let Some(e) = cause.downcast_ref::<crate::hub::HubError>() {
            return e.is_user_error();
        }
        if let Some(e) = cause.downcast_ref::<crate::train::checkpoint::CheckpointError>() {
            return e.is_user_error();
        }
        if let Some(e) = cause.downcast_ref::<crate::export::ExportError>() {
            return e.is_user_error();
        }
        if cause.downcast_ref::<UserError>().is_some() {
            return true;
        }
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            )
        })
    })
}

/// A plain user-facing error raised by the command layer (bad combination of flags, etc.).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

/// Shorthand for returning a [`UserError`].
pub fn user(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}
