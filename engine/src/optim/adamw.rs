//! AdamW with decoupled weight decay, following PyTorch's `torch.optim.AdamW` (single-tensor path, not
//! foreach or fused, `amsgrad=False`) operation for operation.

use super::{Buffer, CHUNK, PAR_ELEMS, f32_values, lerp};
use crate::error::{Error, Result, fmt_shape};
use crate::storage::CpuStorage;
use crate::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Name of the step-count entry in [`AdamW::state_tensors`].
const STEP_NAME: &str = "adamw.step";
/// Prefix of the first-moment entries (`adamw.m.<param>`).
const M_PREFIX: &str = "adamw.m.";
/// Prefix of the second-moment entries (`adamw.v.<param>`).
const V_PREFIX: &str = "adamw.v.";

/// AdamW hyper-parameters. They are `f64` because PyTorch keeps them as Python floats: the scalar
/// arithmetic on them (bias corrections, step size, `1 − lr·wd`) runs in f64 and each result is rounded to
/// f32 once, where PyTorch hands it to an f32 tensor op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Applied to parameters with ndim ≥ 2 only (NVG-SPEC §4.4); biases and norm scales get none.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The official NVG settings: betas (0.9, 0.95), eps 1e-8, weight decay 0.05.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges PyTorch checks: 0 ≤ beta < 1, eps ≥ 0, weight_decay ≥ 0 (all finite).
    pub fn validate(&self) -> Result<()> {
        let op = "AdamW";
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::arg(op, format!("{name} must be in [0, 1), got {b}")));
            }
        }
        for (name, x) in [("eps", self.eps), ("weight_decay", self.weight_decay)] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(Error::arg(op, format!("{name} must be finite and >= 0, got {x}")));
            }
        }
        Ok(())
    }
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
struct Moments {
    dims: Vec<usize>,
    m: Buffer,
    v: Buffer,
}

/// The AdamW optimiser. Its state is a step count shared by all parameters (every parameter is updated at
/// every step, so PyTorch's per-parameter counts are all equal) and the moments `m`, `v` of each parameter.
///
/// State is created (zeros) at the first step for exactly the parameters given; from then on the
/// parameter set must stay the same (an optimiser whose parameters change between steps would apply the
/// wrong bias correction to the newcomers, so that is an error rather than a silent restart).
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    state: BTreeMap<String, Moments>,
}

/// The per-step scalars, each rounded to f32 where PyTorch passes it to a tensor op (the CPU loop and the
/// device kernel, `cuda::training::adamw_update`, take the same).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Coeffs {
    /// `1 − lr·weight_decay` (for parameters that decay).
    pub decay: f32,
    /// `1 − beta1`, the lerp weight of the first moment.
    pub w1: f32,
    pub beta2: f32,
    /// `1 − beta2`.
    pub c2: f32,
    /// `−lr / (1 − beta1^step)`.
    pub neg_step_size: f32,
    /// `sqrt(1 − beta2^step)`.
    pub bc2_sqrt: f32,
    pub eps: f32,
}

/// One AdamW update of a slice of elements, in PyTorch's order of operations:
/// `p *= 1 − lr·wd; m.lerp_(g, 1 − β1); v = v·β2 + (1 − β2)·g·g; p += (−step_size·m) / (sqrt(v)/sqrt(bc2) + eps)`.
fn update_slice(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Coeffs, decay: bool) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let mut pi = *p;
        if decay {
            pi *= c.decay;
        }
        let mi = lerp(*m, g, c.w1);
        // addcmul: v + value·g·g, evaluated as (value·g)·g.
        let vi = *v * c.beta2 + c.c2 * g * g;
        let denom = vi.sqrt() / c.bc2_sqrt + c.eps;
        // addcdiv: p + value·m / denom, evaluated as (value·m) / denom.
        *p = pi + c.neg_step_size * mi / denom;
        *m = mi;
        *v = vi;
    }
}

impl AdamW {
    /// A fresh optimiser (no state; it is created at the first step).
    pub fn new(config: AdamWConfig) -> Result<AdamW> {
        config.validate()?;
        Ok(AdamW {
            config,
            step: 0,
            state: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Number of steps taken so far (PyTorch's `state['step']`).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Whether a parameter of this shape gets weight decay: ndim ≥ 2 (NVG-SPEC §4.4).
    pub fn decays(dims: &[usize]) -> bool {
        dims.len() >= 2
    }

    /// Checks that the optimiser state fits `params`: every parameter is an f32 tensor and, once state
    /// exists, has state of its own shape, and there is no state without a parameter. [`AdamW::step`] runs
    /// this check itself; call it after [`AdamW::from_state_tensors`] to fail at resume time.
    pub fn check_params(&self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        let op = "AdamW";
        super::common_device(op, params)?;
        for (name, p) in params {
            if p.dtype() != DType::F32 {
                return Err(Error::dtype(
                    op,
                    format!("an f32 tensor for parameter `{name}`"),
                    p.dtype(),
                ));
            }
        }
        if self.step == 0 && self.state.is_empty() {
            return Ok(());
        }
        for (name, p) in params {
            let st = self.state.get(name).ok_or_else(|| {
                Error::arg(
                    op,
                    format!("parameter `{name}` has no optimiser state (the parameter set changed after step 1)"),
                )
            })?;
            if st.dims != p.dims() {
                return Err(Error::shape(
                    op,
                    format!(
                        "optimiser state of `{name}` has shape {} but the parameter has shape {}",
                        fmt_shape(&st.dims),
                        fmt_shape(p.dims())
                    ),
                ));
            }
        }
        if let Some(name) = self.state.keys().find(|n| !params.contains_key(*n)) {
            return Err(Error::arg(
                op,
                format!("optimiser state for `{name}`, which is not among the parameters"),
            ));
        }
        Ok(())
    }

    /// Checks that every parameter has an f32 gradient of its shape and every gradient a parameter.
    fn check_grads(params: &BTreeMap<String, Tensor>, grads: &BTreeMap<String, Tensor>) -> Result<()> {
        let op = "AdamW::step";
        for (name, p) in params {
            let g = grads
                .get(name)
                .ok_or_else(|| Error::arg(op, format!("parameter `{name}` has no gradient")))?;
            if g.dtype() != DType::F32 {
                return Err(Error::dtype(
                    op,
                    format!("an f32 tensor for gradient `{name}`"),
                    g.dtype(),
                ));
            }
            if g.device() != p.device() {
                return Err(Error::arg(
                    op,
                    format!(
                        "gradient of `{name}` is on {} but the parameter on {}",
                        g.device(),
                        p.device()
                    ),
                ));
            }
            if g.dims() != p.dims() {
                return Err(Error::shape(
                    op,
                    format!(
                        "gradient of `{name}` has shape {} but the parameter has shape {}",
                        fmt_shape(g.dims()),
                        fmt_shape(p.dims())
                    ),
                ));
            }
        }
        if let Some(name) = grads.keys().find(|n| !params.contains_key(*n)) {
            return Err(Error::arg(op, format!("gradient `{name}` has no parameter")));
        }
        Ok(())
    }

    /// One AdamW step with learning rate `lr`: every parameter is replaced by its updated value.
    ///
    /// Every parameter needs a gradient of its shape and every gradient a parameter (no silent skipping);
    /// all checks run before anything changes, so on error `params` and the state are untouched.
    pub fn step(
        &mut self,
        params: &mut BTreeMap<String, Tensor>,
        grads: &BTreeMap<String, Tensor>,
        lr: f32,
    ) -> Result<()> {
        let op = "AdamW::step";
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::arg(
                op,
                format!("learning rate must be finite and >= 0, got {lr}"),
            ));
        }
        self.check_params(params)?;
        Self::check_grads(params, grads)?;
        if self.step == 0 && self.state.is_empty() {
            for (name, p) in params.iter() {
                let n = p.numel();
                let moments = Moments {
                    dims: p.dims().to_vec(),
                    m: Buffer::Host(vec![0.0; n]),
                    v: Buffer::Host(vec![0.0; n]),
                };
                self.state.insert(name.clone(), moments);
            }
        }

        self.step += 1;
        let cfg = self.config;
        let lr = lr as f64;
        let t = self.step as f64;
        let bias_correction1 = 1.0 - cfg.beta1.powf(t);
        let bias_correction2 = 1.0 - cfg.beta2.powf(t);
        let coeffs = Coeffs {
            decay: (1.0 - lr * cfg.weight_decay) as f32,
            w1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            c2: (1.0 - cfg.beta2) as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
            bc2_sqrt: bias_correction2.sqrt() as f32,
            eps: cfg.eps as f32,
        };
        // With no decay the multiply by 1 − lr·0 = 1 is exact, so it is left out.
        let decay_on = cfg.weight_decay != 0.0;

        // One job per parameter (the checks above guarantee state and gradient exist with its shape).
        // Both maps hold the same names (checked), so iterating them side by side pairs them up.
        let mut jobs: Vec<(&String, &mut Tensor, &mut Moments, &Tensor)> = Vec::with_capacity(params.len());
        for ((name, p), (state_name, st)) in params.iter_mut().zip(self.state.iter_mut()) {
            debug_assert_eq!(name, state_name);
            jobs.push((name, p, st, &grads[name]));
        }
        let device = jobs.first().map_or(Device::Cpu, |j| j.1.device());
        if !device.is_cpu() {
            // One update kernel per parameter, in name order.
            for (_, p, st, g) in jobs {
                let decay = decay_on && Self::decays(&st.dims);
                let (m, v) = (st.m.on_device(device, &st.dims)?, st.v.on_device(device, &st.dims)?);
                let (pn, mn, vn) = crate::cuda::training::adamw_update(p, &m, &v, g, coeffs, decay)?;
                *p = pn;
                (st.m, st.v) = (Buffer::Device(mn), Buffer::Device(vn));
            }
            return Ok(());
        }
        jobs.par_iter_mut().try_for_each(|(name, p, st, g)| -> Result<()> {
            let mut data = f32_values(op, "parameter", name, p)?.into_owned();
            let g = f32_values(op, "gradient", name, g)?;
            let decay = decay_on && Self::decays(&st.dims);
            let Moments { m, v, .. } = &mut **st;
            let (m, v) = (m.host_mut()?, v.host_mut()?);
            if data.len() >= PAR_ELEMS {
                data.par_chunks_mut(CHUNK)
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .zip(g.par_chunks(CHUNK))
                    .for_each(|(((p, m), v), g)| update_slice(p, m, v, g, coeffs, decay));
            } else {
                update_slice(&mut data, m, v, &g, coeffs, decay);
            }
            **p = super::f32_tensor(data, &st.dims);
            Ok(())
        })
    }

    /// The state as named tensors for a checkpoint: `adamw.step` (an i64 scalar), then `adamw.m.<param>`
    /// and `adamw.v.<param>` (f32, the parameter's shape) for each parameter in name order.
    /// CPU tensors, copied from the device where the state lives there.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let step = i64::try_from(self.step).unwrap_or(i64::MAX);
        let mut out = Vec::with_capacity(1 + 2 * self.state.len());
        out.push((
            STEP_NAME.to_string(),
            Tensor::from_cpu(CpuStorage::I64(vec![step]), &[]),
        ));
        for (name, st) in &self.state {
            out.push((format!("{M_PREFIX}{name}"), st.m.to_host_tensor(&st.dims)?));
            out.push((format!("{V_PREFIX}{name}"), st.v.to_host_tensor(&st.dims)?));
        }
        Ok(out)
    }

    /// Rebuilds an optimiser from [`AdamW::state_tensors`]' entries (in any order). Every entry must be one
    /// of them: `adamw.step` (an integer scalar ≥ 0, required) and pairs `adamw.m.<p>` / `adamw.v.<p>` of f32
    /// tensors of equal shape. The moments are taken bit for bit, so the steps that follow are identical to
    /// those of the optimiser that was saved.
    pub fn from_state_tensors(
        config: AdamWConfig,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<AdamW> {
        let op = "AdamW::from_state_tensors";
        config.validate()?;
        let mut step = None;
        let mut ms: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut vs: BTreeMap<String, Tensor> = BTreeMap::new();
        for (key, t) in tensors {
            if key == STEP_NAME {
                if !t.dtype().is_int() || t.numel() != 1 {
                    return Err(Error::arg(
                        op,
                        format!(
                            "`{STEP_NAME}` must be an integer scalar, got dtype {} shape {}",
                            t.dtype(),
                            fmt_shape(t.dims())
                        ),
                    ));
                }
                let s = t.to_i64_vec()?[0];
                let s = u64::try_from(s).map_err(|_| Error::arg(op, format!("`{STEP_NAME}` is negative ({s})")))?;
                if step.replace(s).is_some() {
                    return Err(Error::arg(op, format!("`{STEP_NAME}` given twice")));
                }
                continue;
            }
            let (map, name) = if let Some(name) = key.strip_prefix(M_PREFIX) {
                (&mut ms, name)
            } else if let Some(name) = key.strip_prefix(V_PREFIX) {
                (&mut vs, name)
            } else {
                return Err(Error::arg(op, format!("unexpected entry `{key}` in AdamW state")));
            };
            if t.dtype() != DType::F32 {
                return Err(Error::dtype(op, format!("an f32 tensor for `{key}`"), t.dtype()));
            }
            if map.insert(name.to_string(), t).is_some() {
                return Err(Error::arg(op, format!("`{key}` given twice")));
            }
        }
        let step = step.ok_or_else(|| Error::arg(op, format!("missing `{STEP_NAME}`")))?;
        if let Some(name) = vs.keys().find(|n| !ms.contains_key(*n)) {
            return Err(Error::arg(
                op,
                format!("missing `{M_PREFIX}{name}` (`{V_PREFIX}{name}` is present)"),
            ));
        }
        let mut state = BTreeMap::new();
        for (name, m) in ms {
            let v = vs.remove(&name).ok_or_else(|| {
                Error::arg(
                    op,
                    format!("missing `{V_PREFIX}{name}` (`{M_PREFIX}{name}` is present)"),
                )
            })?;
            if m.dims() != v.dims() {
                return Err(Error::shape(
                    op,
                    format!(
                        "`{M_PREFIX}{name}` has shape {} but `{V_PREFIX}{name}` has shape {}",
                        fmt_shape(m.dims()),
                        fmt_shape(v.dims())
                    ),
                ));
            }
            let moments = Moments {
                dims: m.dims().to_vec(),
                m: Buffer::Host(f32_values(op, "first moment", &name, &m)?.into_owned()),
                v: Buffer::Host(f32_values(op, "second moment", &name, &v)?.into_owned()),
            };
            state.insert(name, moments);
        }
        Ok(AdamW { config, step, state })
    }
}
