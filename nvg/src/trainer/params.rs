//! The generator's trainable parameters as named tensors: which names are parameters (the rest are
//! buffers), autograd leaves for a step, and the gradients gathered back by name.

use anyhow::Result;
use nvg_engine::{DType, Gradients, Tensor};
use std::collections::BTreeMap;

/// Tensors the model carries but does not learn.
pub const BUFFERS: [&str; 2] = ["scale_factors", "rope_ids"];

/// Whether a named tensor of the generator is learned.
pub fn is_parameter(name: &str) -> bool {
    !BUFFERS.contains(&name)
}

/// The tensors of a step: every parameter as a fresh autograd leaf, buffers as they are.
pub fn leaves(params: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    params
        .iter()
        .map(|(n, t)| (n.clone(), if is_parameter(n) { t.requires_grad() } else { t.clone() }))
        .collect()
}

/// The gradient of every parameter by name. A parameter the loss does not reach gets zeros (this
/// happens only for a configuration that leaves a module unused).
pub fn gradients(leaves: &BTreeMap<String, Tensor>, grads: &Gradients) -> Result<BTreeMap<String, Tensor>> {
    gradients_of(leaves.iter().filter(|(n, _)| is_parameter(n)), grads)
}

/// The f32 gradient of each named leaf (zeros for a leaf the loss does not reach); shared by every
/// trainer (generator, tokenizer, evaluation classifier).
pub fn gradients_of<'a>(
    leaves: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
    grads: &Gradients,
) -> Result<BTreeMap<String, Tensor>> {
    leaves
        .into_iter()
        .map(|(name, leaf)| {
            let g = match grads.get(leaf) {
                Some(g) => g.to_dtype(DType::F32)?.contiguous()?,
                None => Tensor::zeros(leaf.dims(), DType::F32, leaf.device())?,
            };
            Ok((name.clone(), g))
        })
        .collect()
}
