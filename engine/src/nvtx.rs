//! NVTX ranges for Nsight Systems (cargo feature `nvtx`).
//!
//! `let _r = nvtx::range_c(c"name");` opens a range on the calling thread that ends when the guard
//! drops; `nsys profile -t cuda,nvtx` shows it on the thread's NVTX row, above the kernels it launched.
//! With the feature the calls go to NVTX3 (`nvtxRangePushA` / `nvtxRangePop`, header-only, built by
//! nvg-kernels); NVTX looks for a tool on the first call and, without one, every call is a cheap no-op.
//! Without the feature every function here is an inlined no-op and `Range` is an empty struct.
//!
//! The engine opens one range per kernel launch, named after the kernel (`nvg_gemm_f32`, ...), in
//! `cuda::launch`; the model opens ranges around its stages (docs/cuda.md lists them).

use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;

/// Whether this build has NVTX (feature `nvtx`).
pub const ENABLED: bool = cfg!(feature = "nvtx");

/// What `push` and `pop` return when no tool is attached, or in a build without the feature
/// (`NVTX_NO_PUSH_POP_TRACKING` of `nvToolsExt.h`).
pub const NO_PUSH_POP_TRACKING: i32 = -2;

/// An open NVTX range of the current thread; dropping it ends the range. Not `Send`: NVTX ranges
/// are per thread, so the guard must drop on the thread that opened it.
#[must_use = "the range ends when this guard is dropped"]
pub struct Range {
    _not_send: PhantomData<*const ()>,
}

impl Range {
    #[inline]
    fn opened() -> Range {
        Range { _not_send: PhantomData }
    }
}

#[cfg(feature = "nvtx")]
impl Drop for Range {
    #[inline]
    fn drop(&mut self) {
        pop();
    }
}

impl fmt::Debug for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nvtx::Range")
    }
}

/// Starts a range named `name` (a `c"..."` literal: no copy) until the guard drops.
#[inline]
pub fn range_c(name: &CStr) -> Range {
    push(name);
    Range::opened()
}

/// Starts a range named `name` until the guard drops. The name is copied, NUL-terminated, into a
/// buffer on the stack (no allocation; names longer than 255 bytes are cut at a character boundary,
/// and an interior NUL ends the name). Without the feature nothing is copied.
#[inline]
pub fn range(name: &str) -> Range {
    #[cfg(feature = "nvtx")]
    {
        let mut buf = NameBuf::new();
        fmt::Write::write_str(&mut buf, name).expect("NameBuf::write_str never fails");
        push(buf.as_c_str());
    }
    #[cfg(not(feature = "nvtx"))]
    let _ = name;
    Range::opened()
}

/// Starts a range whose name is formatted from `args` (`format_args!("content stage {s}")`) until
/// the guard drops. Formatted on the stack as `range` copies; without the feature `args` is not
/// formatted at all.
#[inline]
pub fn range_fmt(args: fmt::Arguments<'_>) -> Range {
    #[cfg(feature = "nvtx")]
    {
        let mut buf = NameBuf::new();
        fmt::Write::write_fmt(&mut buf, args).expect("NameBuf::write_str never fails");
        push(buf.as_c_str());
    }
    #[cfg(not(feature = "nvtx"))]
    let _ = args;
    Range::opened()
}

/// Starts a range without a guard: the 0-based nesting level when a tool is attached, a negative
/// value otherwise (`NO_PUSH_POP_TRACKING` when there is no tool, and always without the feature).
/// Pair it with `pop` on the same thread; prefer the guards.
#[inline]
pub fn push(name: &CStr) -> i32 {
    #[cfg(feature = "nvtx")]
    return nvg_kernels::nvtx::push(name);
    #[cfg(not(feature = "nvtx"))]
    {
        let _ = name;
        NO_PUSH_POP_TRACKING
    }
}

/// Ends the calling thread's innermost range: its level when a tool is attached, negative otherwise.
#[inline]
pub fn pop() -> i32 {
    #[cfg(feature = "nvtx")]
    return nvg_kernels::nvtx::pop();
    #[cfg(not(feature = "nvtx"))]
    NO_PUSH_POP_TRACKING
}

/// A NUL-terminated name of at most `NameBuf::CAP` bytes, built on the stack.
#[cfg(feature = "nvtx")]
struct NameBuf {
    buf: [u8; NameBuf::CAP + 1],
    len: usize,
}

#[cfg(feature = "nvtx")]
impl NameBuf {
    const CAP: usize = 255;

    fn new() -> NameBuf {
        NameBuf {
            buf: [0; NameBuf::CAP + 1],
            len: 0,
        }
    }

    /// The name up to its first NUL (the terminator, or an interior NUL of the input).
    fn as_c_str(&self) -> &CStr {
        // The byte at `len` is 0 and is never overwritten, so a NUL exists.
        CStr::from_bytes_until_nul(&self.buf[..=self.len]).expect("NUL-terminated")
    }
}

#[cfg(feature = "nvtx")]
impl fmt::Write for NameBuf {
    /// Appends as much of `s` as fits, cut at a character boundary; never fails.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = NameBuf::CAP - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(all(test, feature = "nvtx"))]
mod tests {
    use super::NameBuf;
    use std::fmt::Write;

    #[test]
    fn names_are_cut_at_a_char_boundary_and_at_nul() {
        let mut b = NameBuf::new();
        b.write_str(&"é".repeat(200)).unwrap(); // 400 bytes: 127 whole characters fit in 255
        assert_eq!(b.as_c_str().to_bytes().len(), 254);
        assert!(std::str::from_utf8(b.as_c_str().to_bytes()).is_ok());
        let mut b = NameBuf::new();
        b.write_str("ab\0cd").unwrap();
        assert_eq!(b.as_c_str().to_bytes(), b"ab");
        let mut b = NameBuf::new();
        write!(b, "stage {}", 3).unwrap();
        assert_eq!(b.as_c_str().to_bytes(), b"stage 3");
    }
}
