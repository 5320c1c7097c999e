//! Output buffers that are written in full before anything reads them, allocated without the zero-fill
//! of `vec![0.0; n]`. Zeroing outputs that the next loop overwrites was 8.5 % of a CPU sampling run of
//! the emoji model (`perf`: `memset` under linear, cat and strided copies), and glibc's `calloc` cannot
//! skip it for memory the `nvg` program keeps for reuse (`tools/src/malloc.rs`).

use std::mem::{ManuallyDrop, MaybeUninit};

/// A `Vec<T>` of length `n`, every element written by `fill`, which receives the uninitialised buffer.
///
/// # Safety
/// `fill` must write every element of the slice it gets (with `MaybeUninit::write`, `write_copy_of_slice`
/// or through raw pointers) before it returns; elements it leaves unwritten would be read uninitialised.
pub unsafe fn vec_written_by<T: Copy>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut buf: Vec<MaybeUninit<T>> = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit<T>` needs no initialisation, and the capacity is `n`.
    unsafe { buf.set_len(n) };
    fill(&mut buf);
    let mut buf = ManuallyDrop::new(buf);
    // SAFETY: every element was initialised by `fill` (the caller's contract); `MaybeUninit<T>` has the
    // layout of `T`, and the pointer, length and capacity come from a live `Vec` that is not dropped.
    unsafe { Vec::from_raw_parts(buf.as_mut_ptr().cast::<T>(), buf.len(), buf.capacity()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_holds_what_fill_wrote() {
        // SAFETY: the loop writes every element.
        let v = unsafe {
            vec_written_by::<f32>(1000, |b| {
                for (i, x) in b.iter_mut().enumerate() {
                    x.write(i as f32 * 0.5);
                }
            })
        };
        assert_eq!(v.len(), 1000);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32 * 0.5));
        // SAFETY: an empty buffer has nothing to write.
        let e = unsafe { vec_written_by::<f32>(0, |_| {}) };
        assert!(e.is_empty());
    }
}
