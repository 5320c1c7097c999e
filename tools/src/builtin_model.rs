//! The built-in emoji model (models/emoji in the repository): what `nvg generate` uses when it is given
//! no --generator/--tokenizer, and what the shipped-model smoke test and `nvg eval` default to.
//!
//! The files are looked up in `$NVG_MODEL_DIR` when it is set, else in the repository the program was
//! built from (`models/emoji` beside this crate), so `cargo run` in a clone needs no flags and an
//! installed binary can be pointed at a copy of the folder.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// Environment variable naming a directory that holds the built-in model's files.
pub const MODEL_DIR_ENV: &str = "NVG_MODEL_DIR";

/// The generator weights file of a model directory.
pub const GENERATOR_FILE: &str = "generator.safetensors";
/// The tokenizer weights file of a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.safetensors";
/// The evaluation classifier of a model directory (`nvg eval score`).
pub const CLASSIFIER_FILE: &str = "classifier.safetensors";

/// The class names of a model directory, and for the emoji model the groups (categories) of its
/// generator's classes (subcategories) that `nvg generate` names its images by.
pub const CLASSES_FILE: &str = "classes.json";

/// `models/emoji` of the repository this program was built from.
pub fn repository_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join("emoji")
}

/// The built-in model's directory: `$NVG_MODEL_DIR` if set, else the repository's models/emoji.
fn model_dir() -> (PathBuf, String) {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(d) if !d.is_empty() => (PathBuf::from(d), format!("${MODEL_DIR_ENV}")),
        _ => (
            repository_model_dir(),
            "the repository this program was built from".to_string(),
        ),
    }
}

/// `file` of the built-in model (e.g. [`GENERATOR_FILE`]), or an error that says where it looked and
/// which `flags` give the weights instead.
pub fn model_file(file: &str, flags: &str) -> Result<PathBuf> {
    let (dir, from) = model_dir();
    let path = dir.join(file);
    if !path.is_file() {
        bail!(
            "the built-in emoji model is not at {} (from {from}): {file} is missing; pass {flags}, or set \
             ${MODEL_DIR_ENV} to a copy of the repository's models/emoji",
            dir.display()
        );
    }
    Ok(path)
}

/// `file` of the built-in model if it exists (for optional files such as [`CLASSES_FILE`]).
pub fn optional_model_file(file: &str) -> Option<PathBuf> {
    let path = model_dir().0.join(file);
    path.is_file().then_some(path)
}
