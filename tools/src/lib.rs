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
