//! Library side of the `nvg` program: the subcommands' implementations, so benchmarks and tests can
//! call them directly. `main.rs` only parses arguments.

pub mod bench;
pub mod builtin_model;
pub mod class_groups;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod malloc;
pub mod pool;
pub mod progress;
pub mod reconstruct;
pub mod tokenize;
pub mod train;
pub mod train_tokenizer;

/// Refuses a `--lr` that no optimiser step can use (NaN, infinite, zero or negative), before any data is
/// read; the trainers' optimisers would only find out at their first step.
pub fn check_learning_rate(lr: f32) -> anyhow::Result<()> {
    anyhow::ensure!(lr.is_finite() && lr > 0.0, "--lr must be a finite number > 0, not {lr}");
    Ok(())
}
