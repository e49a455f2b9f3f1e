//! Sorting failures into the user's (bad input: exit code 2) and ours (exit code 1). Library
//! error types say which they are; anything unknown counts as internal.

use std::process::ExitCode;

use crate::error::UserError;

/// Whether the user can fix `err` (a bad argument, file or setting).
pub fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<crate::model::ModelError>() {
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
        if let Some(e) = cause.downcast_ref::<crate::train::step::StepError>() {
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

/// The process exit code for a failed command.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    if is_user_error(err) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
