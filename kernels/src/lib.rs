//! CUDA kernel sources of nvg-rs.
//!
//! The `.cu` files and the `build.rs` that compiles them to PTX arrive with the CUDA backend (issue 7).
//! Until then this crate only tells callers that no PTX was built, so the engine can report
//! "kernels not built" instead of guessing.

/// PTX modules embedded at build time, as `(module name, PTX text)`. Empty: no kernels are built yet.
pub const PTX_MODULES: &[(&str, &str)] = &[];

/// Whether this build carries compiled PTX.
pub fn kernels_built() -> bool {
    !PTX_MODULES.is_empty()
}
