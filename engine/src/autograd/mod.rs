//! Reverse-mode automatic differentiation.
//!
//! A tensor made with [`Tensor::requires_grad`] is a *leaf*. Every op whose inputs include a tracked
//! tensor (a leaf or the result of such an op) attaches a [`Node`] to its output that records the op
//! and its inputs — the tape is the graph of nodes reachable from a result. [`Tensor::backward`] walks
//! it from a scalar in reverse topological order and applies each op's backward rule (all rules live
//! in `rules.rs`). Ops on untracked tensors record nothing: inference pays one `Option` check per op.
//!
//! Ops without a backward rule do not silently cut the graph: their output carries an
//! [`Op::Unsupported`] node, and `backward` fails with the op's name if a gradient reaches it.

mod device;
mod kernels;
mod rules;

use crate::error::{Error, Result};
use crate::ops::conv::Padding;
use crate::ops::elementwise::{Binary, Unary};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What produced a tracked tensor, with the inputs its backward rule needs.
pub(crate) enum Op {
    /// A tensor created by `requires_grad`.
    Leaf,
    /// Any view or copy that keeps the elements in row-major order (reshape, (un)squeeze, unflatten).
    Reshape(Tensor),
    Permute(Tensor, Vec<usize>),
    /// `narrow(dim, start, _)`.
    Narrow(Tensor, usize, usize),
    Broadcast(Tensor),
    /// A copy of the same shape, possibly to another float dtype (`contiguous`, `to_dtype`).
    Copy(Tensor),
    Cat(Vec<Tensor>, usize),
    /// Input and (detached) output.
    Unary(Tensor, Tensor, Unary),
    Binary(Tensor, Tensor, Binary),
    /// `x · mul + add`.
    Affine(Tensor, f32),
    DivScalar(Tensor, f32),
    Powf(Tensor, f32),
    Clamp(Tensor, f32, f32),
    Matmul(Tensor, Tensor),
    Linear(Tensor, Tensor, Option<Tensor>),
    LayerNorm(Tensor, Option<Tensor>, Option<Tensor>, f32),
    RmsNorm(Tensor, Tensor, f32),
    /// x, weight, bias, groups, eps.
    GroupNorm(Tensor, Option<Tensor>, Option<Tensor>, usize, f32),
    /// x, weight, bias, stride, padding (NCHW).
    Conv2d(Tensor, Tensor, Option<Tensor>, usize, Padding),
    /// Nearest-neighbour ×2 upsampling of `[B, C, H, W]`.
    Upsample2x(Tensor),
    Rope(Tensor, Tensor, Tensor),
    /// q, k, v and the softmax scale.
    Sdpa(Tensor, Tensor, Tensor, f32),
    /// x, labels, number of segments.
    SegmentMean(Tensor, Tensor, usize),
    IndexSelect(Tensor, usize, Tensor),
    Gather(Tensor, usize, Tensor),
    Sum(Tensor, usize, bool),
    /// Input, (detached) output and dim.
    Softmax(Tensor, Tensor, usize),
    LogSoftmax(Tensor, Tensor, usize),
    /// An op without a backward rule, and its inputs.
    Unsupported(&'static str, Vec<Tensor>),
}

impl Op {
    /// The inputs a gradient flows to, in the order `rules::backward` returns their gradients.
    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Leaf => vec![],
            Op::Reshape(x)
            | Op::Permute(x, _)
            | Op::Narrow(x, ..)
            | Op::Broadcast(x)
            | Op::Copy(x)
            | Op::Unary(x, ..)
            | Op::Affine(x, _)
            | Op::DivScalar(x, _)
            | Op::Powf(x, _)
            | Op::Clamp(x, ..)
            | Op::SegmentMean(x, ..)
            | Op::IndexSelect(x, ..)
            | Op::Gather(x, ..)
            | Op::Sum(x, ..)
            | Op::Softmax(x, ..)
            | Op::LogSoftmax(x, ..)
            | Op::Upsample2x(x) => vec![x],
            Op::Cat(xs, _) | Op::Unsupported(_, xs) => xs.iter().collect(),
            Op::Binary(a, b, _) | Op::Matmul(a, b) => vec![a, b],
            Op::Linear(x, w, b) => [Some(x), Some(w), b.as_ref()].into_iter().flatten().collect(),
            Op::LayerNorm(x, w, b, _) | Op::GroupNorm(x, w, b, ..) => {
                [Some(x), w.as_ref(), b.as_ref()].into_iter().flatten().collect()
            }
            Op::Conv2d(x, w, b, ..) => [Some(x), Some(w), b.as_ref()].into_iter().flatten().collect(),
            Op::RmsNorm(x, s, _) => vec![x, s],
            Op::Rope(x, c, s) => vec![x, c, s],
            Op::Sdpa(q, k, v, _) => vec![q, k, v],
        }
    }
}

/// A node of the autograd graph: an op and its inputs, attached to the op's output.
pub(crate) struct Node {
    id: u64,
    op: Op,
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Tensor {
    /// A leaf of the autograd graph with this tensor's values: ops on it are recorded and
    /// `backward` computes its gradient. Each call makes a new leaf.
    pub fn requires_grad(&self) -> Tensor {
        self.detach().with_node(Node {
            id: next_id(),
            op: Op::Leaf,
        })
    }

    /// The same values, cut from the autograd graph.
    pub fn detach(&self) -> Tensor {
        let mut t = self.clone();
        t.node = None;
        t
    }

    /// Whether the tensor is part of an autograd graph (a leaf or computed from one).
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }

    fn with_node(mut self, node: Node) -> Tensor {
        self.node = Some(Arc::new(node));
        self
    }

    /// Attaches the op to `self` (an op's fresh output) when any of `inputs` is tracked; `op` is only
    /// built then.
    pub(crate) fn record(self, inputs: &[&Tensor], op: impl FnOnce() -> Op) -> Tensor {
        if !inputs.iter().any(|t| t.is_tracked()) {
            return self;
        }
        let op = op();
        self.with_node(Node { id: next_id(), op })
    }

    /// Like `record` for ops whose rule uses their output (`self`, stored detached).
    pub(crate) fn record_with_output(self, inputs: &[&Tensor], op: impl FnOnce(Tensor) -> Op) -> Tensor {
        if !inputs.iter().any(|t| t.is_tracked()) {
            return self;
        }
        let op = op(self.detach());
        self.with_node(Node { id: next_id(), op })
    }

    /// Marks the output of an op that has no backward rule (see the module docs).
    pub(crate) fn record_unsupported(self, name: &'static str, inputs: &[&Tensor]) -> Tensor {
        self.record(inputs, || {
            Op::Unsupported(name, inputs.iter().map(|t| (*t).clone()).collect())
        })
    }

    /// Gradients of this scalar (a one-element tensor) with respect to every leaf it depends on. Gradients
    /// are f32 whatever the dtype of the leaves and intermediates.
    pub fn backward(&self) -> Result<Gradients> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!("the output must be a scalar (one element), got shape {:?}", self.dims()),
            ));
        }
        let seed = Tensor::ones(self.dims(), crate::DType::F32, self.device())?;
        self.backward_with(seed)
    }

    /// Gradients with respect to every leaf, given the gradient `grad` of this tensor (same shape).
    pub fn backward_with(&self, grad: Tensor) -> Result<Gradients> {
        let Some(root) = &self.node else {
            return Err(Error::arg(
                "backward",
                "the tensor is not tracked: no input was made with requires_grad",
            ));
        };
        if grad.dims() != self.dims() {
            return Err(Error::shape(
                "backward",
                format!(
                    "gradient shape {:?} for a tensor of shape {:?}",
                    grad.dims(),
                    self.dims()
                ),
            ));
        }
        let order = topological_order(root);
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        pending.insert(root.id, Pending::Tensor(grad.detach().to_dtype(crate::DType::F32)?));
        let mut leaves = HashMap::new();
        for node in order.iter().rev() {
            let Some(g) = pending.remove(&node.id) else {
                continue; // no gradient reaches this node
            };
            let g = g.into_tensor()?;
            if let Op::Leaf = node.op {
                leaves.insert(node.id, g);
                continue;
            }
            // A narrowed view's gradient is added into its slice of the input's accumulator instead of
            // being padded to the input's shape (fused projections are split into several views).
            if let Op::Narrow(x, dim, start) = &node.op {
                if let Some(xn) = &x.node {
                    let acc = match pending.entry(xn.id) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(Pending::zeros(x.dims(), g.device())?),
                    };
                    acc.add_slice(x.dims(), *dim, *start, &g)?;
                }
                continue;
            }
            let inputs = node.op.inputs();
            let grads = rules::backward(node, &g)?;
            debug_assert_eq!(grads.len(), inputs.len());
            for (x, gx) in inputs.into_iter().zip(grads) {
                let (Some(xn), Some(gx)) = (&x.node, gx) else { continue };
                if gx.dims() != x.dims() {
                    return Err(Error::shape(
                        "backward",
                        format!(
                            "internal: gradient {:?} for input {:?} of {}",
                            gx.dims(),
                            x.dims(),
                            rules::name(&node.op)
                        ),
                    ));
                }
                match pending.remove(&xn.id) {
                    Some(mut acc) => {
                        acc.add(&gx)?;
                        pending.insert(xn.id, acc);
                    }
                    None => {
                        pending.insert(xn.id, Pending::Tensor(gx));
                    }
                }
            }
        }
        Ok(Gradients { by_leaf: leaves })
    }
}

/// A gradient being accumulated: the first contribution as it came, then (on the CPU) an owned buffer
/// that later contributions are added into in place. On a device it stays a tensor, and contributions
/// are added with device ops.
enum Pending {
    Tensor(Tensor),
    Buffer(Vec<f32>, Vec<usize>),
}

/// Elements above which accumulation runs in parallel.
const PAR_ACC: usize = 1 << 16;

impl Pending {
    fn zeros(dims: &[usize], device: crate::Device) -> Result<Pending> {
        Ok(if device.is_cpu() {
            Pending::Buffer(vec![0.0; dims.iter().product()], dims.to_vec())
        } else {
            Pending::Tensor(Tensor::zeros(dims, crate::DType::F32, device)?)
        })
    }

    /// The accumulated tensor when it lives on a device (where contributions are added as tensors).
    fn on_device(&mut self) -> Option<&mut Tensor> {
        match self {
            Pending::Tensor(t) if !t.device().is_cpu() => Some(t),
            _ => None,
        }
    }

    fn buffer(&mut self) -> Result<&mut Vec<f32>> {
        if let Pending::Tensor(t) = self {
            *self = Pending::Buffer(t.to_f32_vec()?, t.dims().to_vec());
        }
        match self {
            Pending::Buffer(v, _) => Ok(v),
            Pending::Tensor(_) => unreachable!("converted above"),
        }
    }

    fn add(&mut self, g: &Tensor) -> Result<()> {
        if let Some(acc) = self.on_device() {
            *acc = acc.add(g)?;
            return Ok(());
        }
        let src = g.f32_data("backward")?;
        let dst = self.buffer()?;
        if dst.len() >= PAR_ACC {
            use rayon::prelude::*;
            dst.par_chunks_mut(4096)
                .zip(src.par_chunks(4096))
                .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
        } else {
            dst.iter_mut().zip(src.iter()).for_each(|(d, s)| *d += s);
        }
        Ok(())
    }

    /// Adds `g` into elements `start..start + g.dims()[dim]` of dimension `dim` of a tensor of shape `dims`.
    fn add_slice(&mut self, dims: &[usize], dim: usize, start: usize, g: &Tensor) -> Result<()> {
        if let Some(acc) = self.on_device() {
            // g padded with zeros to the whole of dimension `dim`, then added.
            let len = g.dims()[dim];
            let zeros = |n: usize| {
                let mut d = dims.to_vec();
                d[dim] = n;
                Tensor::zeros(&d, crate::DType::F32, g.device())
            };
            let (before, after) = (zeros(start)?, zeros(dims[dim] - start - len)?);
            *acc = acc.add(&Tensor::cat(
                &[&before, &g.to_dtype(crate::DType::F32)?, &after],
                dim as isize,
            )?)?;
            return Ok(());
        }
        let (outer, size, inner) = crate::ops::split_at_dim(dims, dim);
        let len = g.dims()[dim];
        let src = g.f32_data("backward")?;
        let dst = self.buffer()?;
        let row = |(o, d): (usize, &mut [f32])| {
            let s = &src[o * len * inner..(o + 1) * len * inner];
            d[start * inner..(start + len) * inner]
                .iter_mut()
                .zip(s)
                .for_each(|(d, s)| *d += s);
        };
        if size * inner == 0 {
            return Ok(());
        }
        if dst.len() >= PAR_ACC {
            use rayon::prelude::*;
            dst.par_chunks_mut(size * inner).enumerate().for_each(row);
        } else {
            dst.chunks_mut(size * inner).enumerate().for_each(row);
        }
        debug_assert_eq!(dst.len(), outer * size * inner);
        Ok(())
    }

    fn into_tensor(self) -> Result<Tensor> {
        match self {
            Pending::Tensor(t) => Ok(t),
            Pending::Buffer(v, dims) => Tensor::from_vec(v, &dims),
        }
    }
}

/// Nodes reachable from `root`, each after all nodes it depends on (iterative DFS: graphs of deep
/// models are thousands of nodes long).
fn topological_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut order = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // (node, inputs expanded?)
    let mut stack: Vec<(Arc<Node>, bool)> = vec![(root.clone(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if expanded {
            order.push(node);
            continue;
        }
        if !seen.insert(node.id) {
            continue;
        }
        stack.push((node.clone(), true));
        for x in node.op.inputs() {
            if let Some(n) = &x.node
                && !seen.contains(&n.id)
            {
                stack.push((n.clone(), false));
            }
        }
    }
    order
}

/// The gradients computed by `backward`, looked up by leaf.
pub struct Gradients {
    by_leaf: HashMap<u64, Tensor>,
}

impl Gradients {
    /// The gradient of `leaf` (a tensor made with `requires_grad`), or `None` if the output does not
    /// depend on it.
    pub fn get(&self, leaf: &Tensor) -> Option<&Tensor> {
        leaf.node.as_ref().and_then(|n| self.by_leaf.get(&n.id))
    }

    /// Number of leaves that received a gradient.
    pub fn len(&self) -> usize {
        self.by_leaf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_leaf.is_empty()
    }
}
