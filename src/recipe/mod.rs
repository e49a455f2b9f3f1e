//! YAML recipes: parsing into typed sections, `--set` overrides, and validation that reports
//! every problem with its file, line and column before anything is loaded or downloaded.

pub mod check;
pub mod dpo_loss;
pub mod node;
pub mod schema;
mod semantics;
pub mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use check::Issue;
pub use dpo_loss::{DpoLoss, DpoLosses, FDivergence};
pub use node::{Node, Origin};
pub use schema::*;
pub use values::*;

/// Everything wrong with a recipe.
#[derive(Debug, Error)]
pub struct RecipeError {
    pub file: PathBuf,
    pub issues: Vec<Issue>,
    /// A YAML syntax error (rendered by the parser, with a snippet).
    pub syntax: Option<String>,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if let Some(syntax) = &self.syntax {
            return write!(f, "{file}: invalid YAML: {syntax}");
        }
        let n = self.issues.len();
        write!(f, "{file}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            match &issue.origin {
                Origin::At { line, column } => write!(
                    f,
                    "\n  {file}:{line}:{column}: {}: {}",
                    issue.path, issue.message
                )?,
                other => write!(f, "\n  ({other}): {}: {}", issue.path, issue.message)?,
            }
        }
        Ok(())
    }
}

impl RecipeError {
    pub fn is_user_error(&self) -> bool {
        true
    }
}

/// A validated recipe with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    pub path: PathBuf,
    /// The document with overrides applied (for locating values later).
    pub tree: Node,
}

impl LoadedRecipe {
    /// Read, apply `--set key.path=value` overrides, validate. Nothing is downloaded or loaded.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError {
            file: path.to_path_buf(),
            issues: vec![],
            syntax: Some(format!("cannot read the file: {e}")),
        })?;
        Self::from_text(path, &text, overrides)
    }

    pub fn from_text(path: &Path, text: &str, overrides: &[String]) -> Result<Self, RecipeError> {
        let err = |issues: Vec<Issue>, syntax: Option<String>| RecipeError {
            file: path.to_path_buf(),
            issues,
            syntax,
        };
        let mut tree = node::parse(text).map_err(|e| err(vec![], Some(e)))?;
        let mut issues = check::Issues::default();
        for o in overrides {
            apply_override(&mut tree, o, &mut issues);
        }
        let recipe = check::check_section::<Recipe>(&tree, "", &mut issues);
        if let Some(recipe) = &recipe {
            semantics::check(recipe, &tree, path, &mut issues);
        }
        match recipe {
            Some(mut recipe) if issues.0.is_empty() => {
                if recipe.output.dir.is_empty() {
                    let stem = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "run".into());
                    recipe.output.dir = format!("checkpoints/{stem}");
                }
                Ok(Self {
                    recipe,
                    path: path.to_path_buf(),
                    tree,
                })
            }
            _ => Err(err(issues.0, None)),
        }
    }

    /// The recipe's folder, for resolving relative paths after the working directory.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// A path written in the recipe: relative to the working directory if it exists there,
    /// else relative to the recipe's folder.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        resolve_relative(&self.path, p)
    }
}

pub fn resolve_relative(recipe_path: &Path, p: &str) -> PathBuf {
    let direct = PathBuf::from(p);
    if direct.is_absolute() || direct.exists() {
        return direct;
    }
    let beside = recipe_path
        .parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| direct.clone());
    if beside.exists() { beside } else { direct }
}

/// `key.path=value`, the value parsed as YAML (so `1e-4`, `true`, `[q_proj, v_proj]` work).
fn apply_override(tree: &mut Node, spec: &str, issues: &mut check::Issues) {
    let origin = Origin::Override(spec.to_string());
    let Some((key, value)) = spec.split_once('=') else {
        issues.push(spec, &origin, "expected --set key.path=value");
        return;
    };
    let key = key.trim();
    let value = match node::parse(value) {
        Ok(v) => v.with_origin(&origin),
        Err(e) => {
            issues.push(key, &origin, format!("value is not valid YAML: {e}"));
            return;
        }
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        issues.push(key, &origin, "empty key in the path");
        return;
    }
    if let Err(e) = tree.set_path(&parts, value) {
        issues.push(key, &origin, e);
    }
}
