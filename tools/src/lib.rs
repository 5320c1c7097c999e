//! Library side of the `nvg` program: the subcommands' implementations, so benches and tests can
//! call them directly.
