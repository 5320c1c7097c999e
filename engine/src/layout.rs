//! Shapes and strided views. A `Layout` maps a multi-index to an element offset in the storage:
//! `offset + Σ index[d] · strides[d]`. Views (reshape of contiguous data, permute, narrow, broadcast)
//! only change the layout; `Tensor::contiguous` copies when an op needs packed rows.

use crate::error::{Error, Result, fmt_shape};

/// Shape, strides (in elements) and start offset of a tensor view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dims: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of a shape.
pub fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; dims.len()];
    let mut acc = 1;
    for d in (0..dims.len()).rev() {
        strides[d] = acc;
        acc *= dims[d];
    }
    strides
}

impl Layout {
    /// A packed row-major layout starting at offset 0.
    pub fn contiguous(dims: &[usize]) -> Self {
        Layout {
            dims: dims.to_vec(),
            strides: contiguous_strides(dims),
            offset: 0,
        }
    }

    pub fn new(dims: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(dims.len(), strides.len());
        Layout { dims, strides, offset }
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.dims.len()
    }
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether elements are packed row-major (size-1 dimensions may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for d in (0..self.dims.len()).rev() {
            if self.dims[d] != 1 && self.strides[d] != acc {
                return false;
            }
            acc *= self.dims[d];
        }
        true
    }

    /// One past the largest storage offset this view touches (0 for an empty view).
    pub fn storage_end(&self) -> usize {
        if self.numel() == 0 {
            return self.offset;
        }
        self.offset
            + self
                .dims
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    /// Resolves a possibly negative dimension index.
    pub fn dim_index(&self, op: &'static str, dim: isize) -> Result<usize> {
        let rank = self.rank() as isize;
        let d = if dim < 0 { dim + rank } else { dim };
        if d < 0 || d >= rank {
            return Err(Error::index(
                op,
                format!("dimension {dim} for a tensor of shape {}", fmt_shape(&self.dims)),
            ));
        }
        Ok(d as usize)
    }

    /// Reshape without copying; only for contiguous views. `None` means the caller must copy first.
    pub fn reshaped(&self, dims: &[usize]) -> Option<Layout> {
        if !self.is_contiguous() {
            return None;
        }
        Some(Layout {
            dims: dims.to_vec(),
            strides: contiguous_strides(dims),
            offset: self.offset,
        })
    }

    pub fn permuted(&self, op: &'static str, perm: &[usize]) -> Result<Layout> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::arg(
                op,
                format!(
                    "{perm:?} is not a permutation of the {rank} dims of shape {}",
                    fmt_shape(&self.dims)
                ),
            ));
        }
        Ok(Layout {
            dims: perm.iter().map(|&p| self.dims[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    pub fn narrowed(&self, op: &'static str, dim: usize, start: usize, len: usize) -> Result<Layout> {
        let size = self.dims[dim];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::index(
                op,
                format!(
                    "range {start}..{} of dim {dim} (size {size}) of shape {}",
                    start.saturating_add(len),
                    fmt_shape(&self.dims)
                ),
            ));
        }
        let mut dims = self.dims.clone();
        dims[dim] = len;
        Ok(Layout {
            dims,
            strides: self.strides.clone(),
            offset: self.offset + start * self.strides[dim],
        })
    }

    /// Broadcast to `dims` (NumPy rules: align trailing dims; size-1 dims stretch with stride 0).
    pub fn broadcast_to(&self, op: &'static str, dims: &[usize]) -> Result<Layout> {
        if dims.len() < self.rank() {
            return Err(Error::shape(
                op,
                format!(
                    "cannot broadcast shape {} to {}",
                    fmt_shape(&self.dims),
                    fmt_shape(dims)
                ),
            ));
        }
        let lead = dims.len() - self.rank();
        let mut strides = vec![0; dims.len()];
        for (i, &d) in dims.iter().enumerate() {
            if i < lead {
                continue;
            }
            let own = self.dims[i - lead];
            if own == d {
                strides[i] = self.strides[i - lead];
            } else if own == 1 {
                strides[i] = 0;
            } else {
                return Err(Error::shape(
                    op,
                    format!(
                        "cannot broadcast shape {} to {}",
                        fmt_shape(&self.dims),
                        fmt_shape(dims)
                    ),
                ));
            }
        }
        Ok(Layout {
            dims: dims.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// Merges adjacent dimensions that are laid out as one (and drops size-1 dims), giving the
    /// fewest (dims, strides) pairs that visit the same offsets in the same order. Never empty.
    pub fn collapsed(&self) -> (Vec<usize>, Vec<usize>) {
        let mut dims: Vec<usize> = Vec::with_capacity(self.rank());
        let mut strides: Vec<usize> = Vec::with_capacity(self.rank());
        for (&d, &s) in self.dims.iter().zip(&self.strides) {
            if d == 1 {
                continue;
            }
            if let (Some(ld), Some(ls)) = (dims.last_mut(), strides.last_mut())
                && *ls == s * d
            {
                *ld *= d;
                *ls = s;
                continue;
            }
            dims.push(d);
            strides.push(s);
        }
        if dims.is_empty() {
            dims.push(1);
            strides.push(1);
        }
        (dims, strides)
    }

    /// Calls `f(storage_offset_of_row_start, row_len, row_stride)` for every innermost row, in
    /// row-major order. Rows are maximal runs after collapsing dimensions.
    pub fn for_each_row(&self, mut f: impl FnMut(usize, usize, usize)) {
        if self.numel() == 0 {
            return;
        }
        let (dims, strides) = self.collapsed();
        let r = dims.len();
        let (len, stride) = (dims[r - 1], strides[r - 1]);
        let outer = &dims[..r - 1];
        let mut idx = vec![0usize; outer.len()];
        let mut off = self.offset;
        loop {
            f(off, len, stride);
            // Odometer increment over the outer dims.
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                off += strides[d];
                if idx[d] < outer[d] {
                    break;
                }
                off -= strides[d] * outer[d];
                idx[d] = 0;
            }
        }
    }

    /// Storage offsets of every element in row-major order (for tests and small tensors).
    pub fn offsets(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.numel());
        self.for_each_row(|start, len, stride| out.extend((0..len).map(|i| start + i * stride)));
        out
    }
}

/// The broadcast shape of two shapes (NumPy rules), or an error naming the op and both shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    format!("shapes {} and {} do not broadcast", fmt_shape(a), fmt_shape(b)),
                ));
            }
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_merges_packed_dims() {
        let l = Layout::contiguous(&[2, 3, 4]);
        assert_eq!(l.collapsed(), (vec![24], vec![1]));
        let t = l.permuted("t", &[0, 2, 1]).unwrap();
        assert_eq!(t.collapsed(), (vec![2, 4, 3], vec![12, 1, 4]));
    }

    #[test]
    fn offsets_follow_row_major_order() {
        let l = Layout::contiguous(&[2, 3]).permuted("t", &[1, 0]).unwrap();
        assert_eq!(l.offsets(), vec![0, 3, 1, 4, 2, 5]);
        let b = Layout::contiguous(&[3]).broadcast_to("b", &[2, 3]).unwrap();
        assert_eq!(b.offsets(), vec![0, 1, 2, 0, 1, 2]);
        let n = Layout::contiguous(&[4, 5]).narrowed("n", 1, 1, 2).unwrap();
        assert_eq!(n.offsets(), vec![1, 2, 6, 7, 11, 12, 16, 17]);
    }

    #[test]
    fn broadcast_shapes_follow_numpy() {
        assert_eq!(broadcast_shapes("b", &[3, 1, 5], &[4, 1]).unwrap(), vec![3, 4, 5]);
        assert!(broadcast_shapes("b", &[3, 2], &[3]).is_err());
    }
}
