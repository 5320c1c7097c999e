//! NumPy `.npz` output: one `uint8` array `arr_0` of shape `[N, H, W, 3]`, the batch format of the
//! ADM evaluator (FID, IS, precision/recall). Written atomically and streamed image by image, so a
//! 50,000-image batch (~9.8 GB at 256×256) never has to fit in memory.

use super::atomic_write;
use super::zip::write_single_entry;
use crate::error::{Error, Result};
use std::path::Path;

/// The `.npy` (format 1.0) header of a C-order `uint8` array of `shape`, padded to 64 bytes.
pub fn npy_header_u8(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic (6) + version (2) + length (2) + dict + '\n', padded with spaces to a multiple of 64.
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    dict.extend(std::iter::repeat_n(' ', total - 10 - dict.len() - 1));
    dict.push('\n');
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h
}

/// Writes `arr_0` = `count` images of `height × width × 3` bytes to `path`; `image(i)` supplies image
/// i's RGB bytes (row-major, `height · width · 3` of them).
pub fn write_images_npz(
    path: &Path,
    count: usize,
    height: usize,
    width: usize,
    mut image: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let header = npy_header_u8(&[count, height, width, 3]);
    let per = height * width * 3;
    let size = (header.len() + count * per) as u64;
    let mut failure: Option<Error> = None;
    let res = atomic_write(path, |f| {
        write_single_entry(f, "arr_0.npy", size, |w| {
            w(&header)?;
            for i in 0..count {
                let px = match image(i) {
                    Ok(px) => px,
                    Err(e) => {
                        failure = Some(e);
                        return Err(std::io::Error::other("image unavailable"));
                    }
                };
                if px.len() != per {
                    return Err(std::io::Error::other(format!(
                        "image {i} has {} bytes, expected {per}",
                        px.len()
                    )));
                }
                w(&px)?;
            }
            Ok(())
        })
    });
    match (failure, res) {
        (Some(e), _) => Err(e),
        (None, r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_describes_the_array() {
        let h = npy_header_u8(&[2, 4, 4, 3]);
        assert_eq!(h.len() % 64, 0);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(text.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 4, 4, 3), }"));
        assert!(text.ends_with('\n'));
    }
}
