//! The optimisers (`engine::optim`) against naive scalar references written here with plain loops in f64:
//! AdamW (PyTorch's update order, weight decay on ndim ≥ 2 only; plus a bit-exact check of the f32
//! operation order), global-norm clipping, the official
//! learning-rate schedule and the EMA; checkpoint round trips of the AdamW and EMA state; errors for bad
//! input; independence from the thread count; and a small convergence run.
//!
//! Tolerances (the references run in f64 from the same f32 inputs):
//! - AdamW: each step rounds p, m and v to f32 (≤ 0.5 ulp, 6e-8 for |p| ≤ 1) and m / denom carries a few
//!   f32 roundings (relative ~1e-6 of an update of size ≤ lr); over 6 steps with lr ≤ 0.03 that stays
//!   below 1e-6 absolute for |p| ≤ 1.5, which is what we allow (plus 1e-6 relative);
//! - clipping: the norm is the f32 rounding of an f64 sum (1 ulp); scaled gradients add one f32 rounding
//!   of the coefficient and one of the product: rtol 1e-6;
//! - schedule: f64 arithmetic rounded to f32 once, against the f64 formula: rtol 1e-6;
//! - EMA: one f32 rounding of the lerp per update on values ≤ 1: atol 2e-7 per update.

mod common;

use common::*;
use nvg_engine::io::safetensors;
use nvg_engine::optim::{
    AdamW, AdamWConfig, Ema, LrSchedule, OFFICIAL_EMA_DECAY, OFFICIAL_WARMUP_STEPS, clip_grad_norm, grad_norm,
};
use nvg_engine::{DType, Device, Tensor};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------------
// Helpers and references
// ---------------------------------------------------------------------------------------------------

fn map(entries: Vec<(&str, Tensor)>) -> BTreeMap<String, Tensor> {
    entries.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

/// Parameters of several ranks and odd sizes: 2-D (one large enough for the parallel path, one strided),
/// 3-D, 1-D and 0-D.
fn test_params(seed: u64) -> BTreeMap<String, Tensor> {
    map(vec![
        ("blocks.0.linear.weight", rand(&[7, 13], seed)),
        ("blocks.0.linear.bias", rand(&[11], seed + 1)),
        ("start_embed", rand(&[1, 5, 3], seed + 2)),
        ("big.weight", rand(&[181, 191], seed + 3)),
        ("strided.weight", rand_strided(&[9, 6], seed + 4)),
        ("norm.scale", rand(&[], seed + 5)),
    ])
}

/// Gradients for `params` (same names and shapes), drawn from `seed`.
fn grads_like(params: &BTreeMap<String, Tensor>, seed: u64) -> BTreeMap<String, Tensor> {
    params
        .iter()
        .enumerate()
        .map(|(i, (n, p))| (n.clone(), rand(p.dims(), seed * 1000 + i as u64)))
        .collect()
}

/// One AdamW step with gradients `grads_like(params, seed)`.
fn step_seeded(opt: &mut AdamW, params: &mut BTreeMap<String, Tensor>, seed: u64, lr: f32) -> nvg_engine::Result<()> {
    let grads = grads_like(params, seed);
    opt.step(params, &grads, lr)
}

fn bits(t: &Tensor) -> Vec<u32> {
    vals(t).iter().map(|x| x.to_bits()).collect()
}

#[track_caller]
fn assert_same_bits(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: names differ"
    );
    for (n, t) in a {
        assert_eq!(t.dims(), b[n].dims(), "{what}: `{n}` shape");
        assert_eq!(bits(t), bits(&b[n]), "{what}: `{n}` differs");
    }
}

/// Naive AdamW state for one tensor, in f64.
struct RefAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    decay: bool,
}

impl RefAdamW {
    fn new(p: &Tensor) -> Self {
        let n = p.numel();
        RefAdamW {
            p: vals(p).iter().map(|&x| x as f64).collect(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            decay: p.rank() >= 2,
        }
    }

    /// Step number `t` (1-based) of torch.optim.AdamW, in f64.
    fn step(&mut self, g: &[f32], t: u64, lr: f64, cfg: &AdamWConfig, with_decay: bool) {
        let bc1 = 1.0 - cfg.beta1.powi(t as i32);
        let bc2 = 1.0 - cfg.beta2.powi(t as i32);
        for i in 0..self.p.len() {
            let g = g[i] as f64;
            if self.decay && with_decay {
                self.p[i] *= 1.0 - lr * cfg.weight_decay;
            }
            self.m[i] += (g - self.m[i]) * (1.0 - cfg.beta1);
            self.v[i] = self.v[i] * cfg.beta2 + (1.0 - cfg.beta2) * g * g;
            let denom = self.v[i].sqrt() / bc2.sqrt() + cfg.eps;
            self.p[i] -= lr / bc1 * self.m[i] / denom;
        }
    }
}

/// Runs `steps` AdamW steps on `test_params(seed)` with the engine and with the reference (decay on or
/// off in the reference), returning both.
fn run_adamw(steps: u64, with_decay: bool) -> (BTreeMap<String, Tensor>, BTreeMap<String, RefAdamW>) {
    let cfg = AdamWConfig::default();
    let mut params = test_params(10);
    let mut refs: BTreeMap<String, RefAdamW> = params.iter().map(|(n, p)| (n.clone(), RefAdamW::new(p))).collect();
    let mut opt = AdamW::new(cfg).unwrap();
    for t in 1..=steps {
        let lr = 0.01 + 0.004 * t as f32;
        let grads = grads_like(&params, t);
        opt.step(&mut params, &grads, lr).unwrap();
        for (n, r) in refs.iter_mut() {
            r.step(&vals(&grads[n]), t, lr as f64, &cfg, with_decay);
        }
        assert_eq!(opt.steps_taken(), t);
    }
    (params, refs)
}

/// The learning rate of the official schedule, written out from NVG-SPEC §4.4 in f64 (hold counted after
/// the 1000 warmup steps).
fn ref_official_lr(lr: f64, total: u64, spe: u64, max_epochs: u32, step: u64) -> f64 {
    let warmup = 1000u64;
    let hold = if max_epochs > 300 {
        200 * spe - 1000
    } else {
        (0.8 * total as f64).floor() as u64
    };
    let fin = if max_epochs < 300 { 0.1 * lr } else { 0.01 * lr };
    let start = 0.005 * lr;
    let hold_end = warmup + hold;
    if step < warmup {
        start + (lr - start) * step as f64 / warmup as f64
    } else if step < hold_end {
        lr
    } else if step < total {
        lr + (fin - lr) * (step - hold_end) as f64 / (total - hold_end) as f64
    } else {
        fin
    }
}

#[track_caller]
fn assert_rel(got: f32, want: f64, rtol: f64, what: &str) {
    assert!(
        (got as f64 - want).abs() <= rtol * want.abs(),
        "{what}: got {got}, want {want} (rtol {rtol})"
    );
}

// ---------------------------------------------------------------------------------------------------
// AdamW
// ---------------------------------------------------------------------------------------------------

#[test]
fn adamw_matches_scalar_reference_with_decay_on_ndim_ge_2_only() {
    let (params, refs) = run_adamw(6, true);
    let (_, refs_no_decay) = run_adamw(6, false);
    for (n, p) in &params {
        let got = vals(p);
        assert_close64(&got, &refs[n].p, 1e-6, 1e-6, n);
        // Decay must be visible on the tensors with ndim >= 2 and absent on the others.
        let max_diff = got
            .iter()
            .zip(&refs_no_decay[n].p)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        if p.rank() >= 2 {
            assert!(max_diff > 1e-4, "{n}: weight decay not applied (max diff {max_diff})");
        } else {
            assert!(
                max_diff <= 1e-6,
                "{n}: weight decay applied to a tensor of rank {}",
                p.rank()
            );
        }
    }
}

/// One element of PyTorch's single-tensor AdamW step in f32, operation by operation as its scalar CPU
/// kernels evaluate them (unfused): python-float scalars are computed in f64 and rounded to f32 where they
/// meet a tensor.
#[allow(clippy::too_many_arguments)]
fn torch_f32_element(p: f32, m: f32, v: f32, g: f32, t: u64, lr: f32, cfg: &AdamWConfig, decay: bool) -> [f32; 3] {
    let lr64 = lr as f64;
    let mut p = p;
    if decay {
        p *= (1.0 - lr64 * cfg.weight_decay) as f32; // param.mul_(1 - lr * wd)
    }
    let w = (1.0 - cfg.beta1) as f32; // exp_avg.lerp_(grad, 1 - beta1), weight < 0.5
    let m = m + w * (g - m);
    let v = v * cfg.beta2 as f32; // exp_avg_sq.mul_(beta2)
    let v = v + (1.0 - cfg.beta2) as f32 * g * g; // .addcmul_(grad, grad, value=1 - beta2)
    let bc1 = 1.0 - cfg.beta1.powf(t as f64);
    let bc2 = 1.0 - cfg.beta2.powf(t as f64);
    let step_size = lr64 / bc1;
    let denom = v.sqrt() / bc2.sqrt() as f32 + cfg.eps as f32; // (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
    let p = p + (-step_size) as f32 * m / denom; // param.addcdiv_(exp_avg, denom, value=-step_size)
    [p, m, v]
}

#[test]
fn adamw_follows_pytorch_f32_operation_order_bit_exactly() {
    let cfg = AdamWConfig::default();
    let mut params = map(vec![("w", rand(&[5, 3], 1)), ("b", rand(&[4], 2))]);
    let mut want: BTreeMap<String, Vec<[f32; 3]>> = params
        .iter()
        .map(|(n, p)| (n.clone(), vals(p).iter().map(|&x| [x, 0.0, 0.0]).collect()))
        .collect();
    let mut opt = AdamW::new(cfg).unwrap();
    for t in 1..=4 {
        let lr = 0.003 * t as f32;
        let grads = grads_like(&params, t);
        opt.step(&mut params, &grads, lr).unwrap();
        for (n, w) in want.iter_mut() {
            let decay = params[n].rank() >= 2;
            for (e, g) in w.iter_mut().zip(vals(&grads[n])) {
                *e = torch_f32_element(e[0], e[1], e[2], g, t, lr, &cfg, decay);
            }
        }
    }
    let state: BTreeMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
    for (n, w) in &want {
        let p: Vec<u32> = w.iter().map(|e| e[0].to_bits()).collect();
        let m: Vec<u32> = w.iter().map(|e| e[1].to_bits()).collect();
        let v: Vec<u32> = w.iter().map(|e| e[2].to_bits()).collect();
        assert_eq!(bits(&params[n]), p, "{n}: parameter");
        assert_eq!(bits(&state[&format!("adamw.m.{n}")]), m, "{n}: first moment");
        assert_eq!(bits(&state[&format!("adamw.v.{n}")]), v, "{n}: second moment");
    }
}

#[test]
fn adamw_state_round_trip_gives_bit_identical_steps() {
    let cfg = AdamWConfig::default();
    let mut params = test_params(20);
    let mut opt = AdamW::new(cfg).unwrap();
    for t in 1..=3 {
        step_seeded(&mut opt, &mut params, t, 0.02).unwrap();
    }

    // Through a safetensors file, as a checkpoint would store it.
    let state = opt.state_tensors().unwrap();
    assert_eq!(state.len(), 1 + 2 * params.len());
    let step = state.iter().find(|(n, _)| n == "adamw.step").unwrap();
    assert_eq!(
        (step.1.dtype(), step.1.dims(), step.1.to_i64_vec().unwrap()),
        (DType::I64, &[][..], vec![3])
    );
    assert!(state.iter().any(|(n, _)| n == "adamw.m.big.weight"));
    assert!(state.iter().any(|(n, _)| n == "adamw.v.norm.scale"));
    let path = std::env::temp_dir().join(format!("nvg-optim-adamw-{}.safetensors", std::process::id()));
    safetensors::save(&path, state.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
    let loaded = safetensors::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut resumed = AdamW::from_state_tensors(cfg, loaded).unwrap();
    assert_eq!(resumed.steps_taken(), 3);
    resumed.check_params(&params).unwrap();

    let mut params2 = params.clone();
    for t in 4..=6 {
        let grads = grads_like(&params, t);
        opt.step(&mut params, &grads, 0.015).unwrap();
        resumed.step(&mut params2, &grads, 0.015).unwrap();
    }
    assert_same_bits(&params, &params2, "parameters after resuming");
    let a: BTreeMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
    let b: BTreeMap<String, Tensor> = resumed.state_tensors().unwrap().into_iter().collect();
    assert_eq!(
        a["adamw.step"].to_i64_vec().unwrap(),
        b["adamw.step"].to_i64_vec().unwrap()
    );
    let floats = |m: &BTreeMap<String, Tensor>| -> BTreeMap<String, Tensor> {
        m.iter()
            .filter(|(n, _)| *n != "adamw.step")
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    };
    assert_same_bits(&floats(&a), &floats(&b), "moments after resuming");
}

#[test]
fn adamw_errors_name_the_parameter_and_change_nothing() {
    let mut params = test_params(30);
    let before = params.clone();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();

    // A missing gradient.
    let mut grads = grads_like(&params, 1);
    grads.remove("blocks.0.linear.bias");
    let err = opt.step(&mut params, &grads, 0.01).unwrap_err().to_string();
    assert!(
        err.contains("`blocks.0.linear.bias`") && err.contains("no gradient"),
        "{err}"
    );

    // A gradient of the wrong shape.
    let mut grads = grads_like(&params, 1);
    grads.insert("blocks.0.linear.weight".into(), rand(&[7, 12], 3));
    let err = opt.step(&mut params, &grads, 0.01).unwrap_err().to_string();
    assert!(
        err.contains("`blocks.0.linear.weight`") && err.contains("[7, 12]"),
        "{err}"
    );

    // A gradient without a parameter, a bf16 gradient, a bad learning rate.
    let mut grads = grads_like(&params, 1);
    grads.insert("stray".into(), rand(&[2], 3));
    let err = opt.step(&mut params, &grads, 0.01).unwrap_err().to_string();
    assert!(err.contains("`stray`"), "{err}");
    let mut grads = grads_like(&params, 1);
    let g = grads["start_embed"].to_dtype(DType::BF16).unwrap();
    grads.insert("start_embed".into(), g);
    let err = opt.step(&mut params, &grads, 0.01).unwrap_err().to_string();
    assert!(err.contains("`start_embed`") && err.contains("bf16"), "{err}");
    assert!(step_seeded(&mut opt, &mut params, 1, f32::NAN).is_err());
    assert!(step_seeded(&mut opt, &mut params, 1, -1.0).is_err());

    assert_eq!(opt.steps_taken(), 0);
    assert_eq!(opt.state_tensors().unwrap().len(), 1);
    assert_same_bits(&params, &before, "parameters after failed steps");

    // Once state exists, the parameter set and shapes must stay the same.
    step_seeded(&mut opt, &mut params, 1, 0.01).unwrap();
    let mut grown = params.clone();
    grown.insert("new.weight".into(), rand(&[2, 2], 5));
    let err = step_seeded(&mut opt, &mut grown, 2, 0.01).unwrap_err().to_string();
    assert!(
        err.contains("`new.weight`") && err.contains("no optimiser state"),
        "{err}"
    );
    let mut reshaped = params.clone();
    reshaped.insert("start_embed".into(), rand(&[5, 3], 5));
    let err = step_seeded(&mut opt, &mut reshaped, 2, 0.01).unwrap_err().to_string();
    assert!(err.contains("`start_embed`") && err.contains("[1, 5, 3]"), "{err}");
    let mut shrunk = params.clone();
    shrunk.remove("norm.scale");
    let err = step_seeded(&mut opt, &mut shrunk, 2, 0.01).unwrap_err().to_string();
    assert!(err.contains("`norm.scale`"), "{err}");
    assert_eq!(opt.steps_taken(), 1);

    // Bad configurations.
    for cfg in [
        AdamWConfig {
            beta1: 1.0,
            ..Default::default()
        },
        AdamWConfig {
            beta2: -0.1,
            ..Default::default()
        },
        AdamWConfig {
            eps: f64::NAN,
            ..Default::default()
        },
        AdamWConfig {
            weight_decay: -0.05,
            ..Default::default()
        },
    ] {
        assert!(AdamW::new(cfg).is_err(), "{cfg:?}");
    }
}

#[test]
fn adamw_state_errors_name_the_entry() {
    let cfg = AdamWConfig::default();
    let mut params = test_params(40);
    let mut opt = AdamW::new(cfg).unwrap();
    step_seeded(&mut opt, &mut params, 1, 0.01).unwrap();
    let state: BTreeMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
    let with = |f: &dyn Fn(&mut BTreeMap<String, Tensor>)| {
        let mut s = state.clone();
        f(&mut s);
        AdamW::from_state_tensors(cfg, s).map(|_| ()).unwrap_err().to_string()
    };

    let err = with(&|s| {
        s.remove("adamw.v.start_embed");
    });
    assert!(err.contains("adamw.v.start_embed"), "{err}");
    let err = with(&|s| {
        s.remove("adamw.m.big.weight");
    });
    assert!(err.contains("adamw.m.big.weight"), "{err}");
    let err = with(&|s| {
        s.remove("adamw.step");
    });
    assert!(err.contains("adamw.step"), "{err}");
    let err = with(&|s| {
        s.insert("adamw.m.start_embed".into(), rand(&[5, 3], 1));
    });
    assert!(err.contains("adamw.m.start_embed") && err.contains("[5, 3]"), "{err}");
    let err = with(&|s| {
        s.insert("adamw.step".into(), Tensor::scalar(1.0));
    });
    assert!(err.contains("adamw.step"), "{err}");
    let err = with(&|s| {
        s.insert("adamw.step".into(), Tensor::from_vec(vec![-1i64], &[]).unwrap());
    });
    assert!(err.contains("negative"), "{err}");
    let err = with(&|s| {
        s.insert("model.weight".into(), rand(&[2], 1));
    });
    assert!(err.contains("model.weight"), "{err}");
    let err = with(&|s| {
        let m = s["adamw.m.norm.scale"].to_dtype(DType::F16).unwrap();
        s.insert("adamw.m.norm.scale".into(), m);
    });
    assert!(err.contains("adamw.m.norm.scale") && err.contains("f16"), "{err}");

    // Well-formed state whose shapes do not fit the parameters is refused when checked or stepped.
    let mut s = state.clone();
    s.insert("adamw.m.start_embed".into(), rand(&[15], 1));
    s.insert("adamw.v.start_embed".into(), rand(&[15], 2));
    let mut resumed = AdamW::from_state_tensors(cfg, s).unwrap();
    let err = resumed.check_params(&params).unwrap_err().to_string();
    assert!(err.contains("`start_embed`") && err.contains("[15]"), "{err}");
    let before = params.clone();
    assert!(step_seeded(&mut resumed, &mut params, 2, 0.01).is_err());
    assert_same_bits(&params, &before, "parameters after a refused step");
}

#[test]
fn adamw_minimises_a_quadratic() {
    // f(p) = ½ Σ a_i (p_i − t_i)² over a 2-D weight (decayed) and a 1-D bias, with curvatures a_i in
    // [0.5, 1.5]; AdamW with the default config under a warmup / hold / decay schedule.
    let dims: [&[usize]; 2] = [&[9, 7], &[5]];
    let names = ["w", "b"];
    let targets: Vec<Vec<f32>> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| values(d.iter().product(), 50 + i as u64))
        .collect();
    let curv: Vec<Vec<f32>> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| values(t.len(), 60 + i as u64).iter().map(|x| 1.0 + 0.5 * x).collect())
        .collect();
    let mut params = map(names
        .iter()
        .zip(dims)
        .map(|(n, d)| (*n, Tensor::zeros(d, DType::F32, Device::Cpu).unwrap()))
        .collect());
    let loss_and_grads = |params: &BTreeMap<String, Tensor>| {
        let mut loss = 0.0f64;
        let mut grads = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let p = vals(&params[*n]);
            let g: Vec<f32> = (0..p.len()).map(|j| curv[i][j] * (p[j] - targets[i][j])).collect();
            loss += (0..p.len())
                .map(|j| 0.5 * curv[i][j] as f64 * ((p[j] - targets[i][j]) as f64).powi(2))
                .sum::<f64>();
            grads.insert(n.to_string(), Tensor::from_vec(g, params[*n].dims()).unwrap());
        }
        (loss, grads)
    };
    let schedule = LrSchedule::new(0.05, 0.00025, 20, 200, 400, 0.0005);
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let (initial, _) = loss_and_grads(&params);
    for step in 0..400 {
        let (_, grads) = loss_and_grads(&params);
        opt.step(&mut params, &grads, schedule.lr(step)).unwrap();
    }
    let (last, _) = loss_and_grads(&params);
    // Observed: the loss falls from ≈ 12.8 to ≈ 1.3e-9; require a factor of 10^6.
    assert!(last * 1e6 < initial, "loss fell only from {initial} to {last}");
}

// ---------------------------------------------------------------------------------------------------
// Gradient clipping
// ---------------------------------------------------------------------------------------------------

fn ref_norm(grads: &BTreeMap<String, Tensor>) -> f64 {
    grads
        .values()
        .flat_map(vals)
        .map(|x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn clip_below_threshold_leaves_gradients_unchanged() {
    let mut grads = grads_like(&test_params(70), 7);
    let before = grads.clone();
    let norm = ref_norm(&grads);
    let got = clip_grad_norm(&mut grads, (2.0 * norm) as f32).unwrap();
    assert_rel(got, norm, 1e-6, "returned norm");
    assert_eq!(got, grad_norm(&before).unwrap());
    assert_same_bits(&grads, &before, "gradients below the threshold");
}

#[test]
fn clip_above_threshold_scales_to_max_norm() {
    let mut grads = grads_like(&test_params(80), 8);
    let before = grads.clone();
    let norm = ref_norm(&grads);
    let max_norm = 1.0f32;
    assert!(norm > 10.0);
    let got = clip_grad_norm(&mut grads, max_norm).unwrap();
    assert_rel(got, norm, 1e-6, "returned norm");
    let coef = max_norm as f64 / (norm + 1e-6);
    for (n, g) in &grads {
        assert_eq!(g.dims(), before[n].dims());
        let want: Vec<f64> = vals(&before[n]).iter().map(|&x| x as f64 * coef).collect();
        assert_close64(&vals(g), &want, 0.0, 1e-6, n);
    }
    assert_rel(grad_norm(&grads).unwrap(), max_norm as f64, 1e-5, "norm after clipping");

    // Zero max_norm zeroes the gradients; a negative or NaN one is an error; a bf16 gradient is refused.
    let mut zeroed = before.clone();
    clip_grad_norm(&mut zeroed, 0.0).unwrap();
    assert!(zeroed.values().flat_map(vals).all(|x| x == 0.0));
    assert!(clip_grad_norm(&mut grads.clone(), -1.0).is_err());
    assert!(clip_grad_norm(&mut grads.clone(), f32::NAN).is_err());
    let mut mixed = before.clone();
    mixed.insert("half".into(), rand(&[3], 1).to_dtype(DType::BF16).unwrap());
    let err = clip_grad_norm(&mut mixed, 1.0).unwrap_err().to_string();
    assert!(err.contains("`half`"), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// Learning-rate schedule
// ---------------------------------------------------------------------------------------------------

#[test]
fn schedule_official_below_300_epochs() {
    // d16: lr 3e-4, 1668 steps per epoch, 200 epochs.
    let (lr, spe, epochs) = (3.0e-4f32, 1668u64, 200u32);
    let total = spe * epochs as u64;
    let s = LrSchedule::official(lr, total, spe, epochs);
    assert_eq!(s.warmup_steps, OFFICIAL_WARMUP_STEPS);
    assert_eq!(s.hold_end, 1000 + 266_880);
    assert_rel(s.final_lr, 0.1 * lr as f64, 1e-7, "final_lr");
    let lr64 = lr as f64;
    let hold_end = s.hold_end;
    let mid = hold_end + (total - hold_end) / 2;
    let checks = [
        (0, 0.005 * lr64),
        (1, 0.005 * lr64 + 0.995 * lr64 / 1000.0),
        (500, 0.005 * lr64 + 0.995 * lr64 * 0.5),
        (999, 0.005 * lr64 + 0.995 * lr64 * 0.999),
        (1000, lr64),
        (100_000, lr64),
        (hold_end - 1, lr64),
        (hold_end, lr64),
        (mid, 0.55 * lr64),
        (
            total - 1,
            lr64 * (1.0 - 0.9 * (total - 1 - hold_end) as f64 / (total - hold_end) as f64),
        ),
        (total, 0.1 * lr64),
        (total + 12_345, 0.1 * lr64),
        (u64::MAX, 0.1 * lr64),
    ];
    for (step, want) in checks {
        assert_rel(s.lr(step), want, 1e-6, &format!("step {step}"));
        if step < u64::MAX {
            assert_rel(
                s.lr(step),
                ref_official_lr(lr64, total, spe, epochs, step),
                1e-6,
                &format!("ref step {step}"),
            );
        }
    }
}

#[test]
fn schedule_official_above_300_epochs() {
    // d24: lr 3.375e-4, 1482 steps per epoch, 350 epochs: the hold ends at epoch 200.
    let (lr, spe, epochs) = (3.375e-4f32, 1482u64, 350u32);
    let total = spe * epochs as u64;
    let s = LrSchedule::official(lr, total, spe, epochs);
    assert_eq!(s.hold_end, 200 * spe);
    assert_rel(s.final_lr, 0.01 * lr as f64, 1e-7, "final_lr");
    let lr64 = lr as f64;
    let mid = s.hold_end + (total - s.hold_end) / 2;
    let checks = [
        (0, 0.005 * lr64),
        (250, 0.005 * lr64 + 0.995 * lr64 * 0.25),
        (1000, lr64),
        (200 * spe - 1, lr64),
        (mid, 0.505 * lr64),
        (total, 0.01 * lr64),
        (total + 1, 0.01 * lr64),
    ];
    for (step, want) in checks {
        assert_rel(s.lr(step), want, 1e-6, &format!("step {step}"));
        assert_rel(
            s.lr(step),
            ref_official_lr(lr64, total, spe, epochs, step),
            1e-6,
            &format!("ref step {step}"),
        );
    }
    // Exactly 300 epochs: the 0.8 hold with the 0.01 final rate.
    let s300 = LrSchedule::official(lr, 300 * spe, spe, 300);
    assert_eq!(s300.hold_end, 1000 + (0.8 * (300 * spe) as f64) as u64);
    assert_rel(s300.final_lr, 0.01 * lr64, 1e-7, "final_lr at 300 epochs");
    for step in [0, 700, 1000, s300.hold_end, s300.hold_end + 20_000, 300 * spe] {
        assert_rel(
            s300.lr(step),
            ref_official_lr(lr64, 300 * spe, spe, 300, step),
            1e-6,
            "300 epochs",
        );
    }
}

#[test]
fn schedule_plain_constructor_and_degenerate_phases() {
    let s = LrSchedule::new(1.0, 0.1, 10, 30, 50, 0.2);
    let want = [
        (0, 0.1),
        (5, 0.55),
        (10, 1.0),
        (29, 1.0),
        (30, 1.0),
        (40, 0.6),
        (49, 0.24),
        (50, 0.2),
        (99, 0.2),
    ];
    for (step, w) in want {
        assert_rel(s.lr(step), w, 1e-6, &format!("step {step}"));
    }
    // No warmup, no hold: a pure linear decay.
    let d = LrSchedule::new(2.0, 0.0, 0, 0, 4, 0.0);
    assert_eq!([d.lr(0), d.lr(1), d.lr(2), d.lr(3), d.lr(4)], [2.0, 1.5, 1.0, 0.5, 0.0]);
    // A hold past the end (a tiny official run): no decay phase, final rate from total_steps on.
    let tiny = LrSchedule::official(1e-3, 2000, 10, 200);
    assert_eq!(tiny.hold_end, 2600);
    assert_rel(tiny.lr(1999), 1e-3, 1e-6, "tiny hold");
    assert_rel(tiny.lr(2000), 1e-4, 1e-6, "tiny end");
    // A warmup longer than the run stops at the end.
    let short = LrSchedule::new(1.0, 0.0, 100, 100, 50, 0.5);
    assert_rel(short.lr(49), 0.49, 1e-6, "short warmup");
    assert_eq!(short.lr(50), 0.5);
}

// ---------------------------------------------------------------------------------------------------
// EMA
// ---------------------------------------------------------------------------------------------------

#[test]
fn ema_matches_scalar_reference() {
    for decay in [0.9, OFFICIAL_EMA_DECAY] {
        let mut params = test_params(90);
        let mut ema = Ema::new(decay, &params).unwrap();
        assert_same_bits(&ema.tensors().unwrap(), &params, "initial EMA");
        let mut refs: BTreeMap<String, Vec<f64>> = params
            .iter()
            .map(|(n, p)| (n.clone(), vals(p).iter().map(|&x| x as f64).collect()))
            .collect();
        let updates = 5;
        for u in 0..updates {
            params = grads_like(&params, 100 + u); // new parameter values
            ema.update(&params).unwrap();
            for (n, r) in refs.iter_mut() {
                for (e, p) in r.iter_mut().zip(vals(&params[n])) {
                    *e += (p as f64 - *e) * (1.0 - decay);
                }
            }
        }
        let initial = test_params(90);
        for (n, r) in &refs {
            let got = vals(&ema.get(n).unwrap().unwrap());
            assert_close64(&got, r, 2e-7 * updates as f64, 0.0, &format!("{n} (decay {decay})"));
            // It moved, by up to about 5·(1 − decay)·|p − ema| (checked where there are enough elements
            // for the largest move to be sure to exceed 1 − decay).
            let moved = got
                .iter()
                .zip(vals(&initial[n]))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                r.len() < 10 || moved as f64 > (1.0 - decay),
                "{n}: EMA did not move ({moved})"
            );
        }
        assert_eq!(ema.names().count(), params.len());
        assert_eq!(ema.decay(), decay);
    }
}

#[test]
fn ema_state_round_trip_and_errors() {
    let mut params = test_params(110);
    let mut ema = Ema::new(0.99, &params).unwrap();
    params = grads_like(&params, 1);
    ema.update(&params).unwrap();
    let mut resumed = Ema::from_tensors(0.99, ema.state_tensors().unwrap()).unwrap();
    for u in 2..4 {
        params = grads_like(&params, u);
        ema.update(&params).unwrap();
        resumed.update(&params).unwrap();
    }
    assert_same_bits(&ema.tensors().unwrap(), &resumed.tensors().unwrap(), "resumed EMA");

    let before = ema.tensors().unwrap();
    let mut missing = params.clone();
    missing.remove("start_embed");
    let err = ema.update(&missing).unwrap_err().to_string();
    assert!(err.contains("`start_embed`"), "{err}");
    let mut extra = params.clone();
    extra.insert("extra".into(), rand(&[2], 1));
    let err = ema.update(&extra).unwrap_err().to_string();
    assert!(err.contains("`extra`"), "{err}");
    let mut reshaped = params.clone();
    reshaped.insert("blocks.0.linear.weight".into(), rand(&[13, 7], 1));
    let err = ema.update(&reshaped).unwrap_err().to_string();
    assert!(
        err.contains("`blocks.0.linear.weight`") && err.contains("[13, 7]"),
        "{err}"
    );
    assert_same_bits(&ema.tensors().unwrap(), &before, "EMA after refused updates");
    assert!(Ema::new(1.5, &params).is_err());
    let ids = map(vec![("ids", Tensor::arange(0, 4))]);
    assert!(Ema::new(0.9, &ids).is_err());
}

// ---------------------------------------------------------------------------------------------------
// Thread-count independence
// ---------------------------------------------------------------------------------------------------

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut params = test_params(120);
            let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
            let mut ema = Ema::new(0.999, &params).unwrap();
            let mut norms = Vec::new();
            for t in 1..=3 {
                let mut grads = grads_like(&params, t);
                norms.push(clip_grad_norm(&mut grads, 20.0).unwrap().to_bits());
                opt.step(&mut params, &grads, 0.01).unwrap();
                ema.update(&params).unwrap();
            }
            (params, ema.tensors().unwrap(), norms)
        })
    };
    let (p1, e1, n1) = run(1);
    let (p3, e3, n3) = run(3);
    assert_same_bits(&p1, &p3, "parameters");
    assert_same_bits(&e1, &e3, "EMA");
    assert_eq!(n1, n3, "gradient norms");
}

// ---------------------------------------------------------------------------------------------------
// On a device
// ---------------------------------------------------------------------------------------------------

fn to_dev(m: &BTreeMap<String, Tensor>, dev: Device) -> BTreeMap<String, Tensor> {
    m.iter().map(|(n, t)| (n.clone(), t.to_device(dev).unwrap())).collect()
}

#[track_caller]
fn assert_maps_close(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>, tol: f32, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: names"
    );
    for (n, w) in want {
        assert_close(&vals(&got[n]), &vals(w), tol, tol, &format!("{what}: {n}"));
    }
}

/// Clipping, AdamW and the EMA with everything on `CudaEmu` (the CUDA kernels' host build; and on the GPU
/// where the build and machine can drive one) follow the
/// CPU step for step: parameters, moments and averages stay on the device and agree with the CPU's to
/// a few f32 roundings (the device's norm is an f32 sum, the CPU's an f64 one); state saved on the CPU
/// resumes on the device.
#[test]
fn clipping_adamw_and_ema_on_a_device_follow_the_cpu() {
    let mut devices = vec![Device::CudaEmu];
    match nvg_engine::cuda::check_device("optim", Device::Cuda(0)) {
        Ok(()) => devices.push(Device::Cuda(0)),
        Err(e) => eprintln!("skipping Device::Cuda(0): {e}"),
    }
    for dev in devices {
        optimisers_on(dev);
    }
}

fn optimisers_on(dev: Device) {
    let (mut cpu, mut on) = (test_params(900), to_dev(&test_params(900), dev));
    let cfg = AdamWConfig::default();
    let (mut opt_cpu, mut opt_dev) = (AdamW::new(cfg).unwrap(), AdamW::new(cfg).unwrap());
    let (mut ema_cpu, mut ema_dev) = (Ema::new(0.9, &cpu).unwrap(), Ema::new(0.9, &on).unwrap());
    for step in 0..4u64 {
        let mut g_cpu = grads_like(&cpu, 910 + step);
        let mut g_dev = to_dev(&g_cpu, dev);
        // Max norm 1: the gradients (norm ≈ 5) are clipped at every step.
        let n_cpu = clip_grad_norm(&mut g_cpu, 1.0).unwrap();
        let n_dev = clip_grad_norm(&mut g_dev, 1.0).unwrap();
        assert!(n_cpu > 1.0, "the test must clip (norm {n_cpu})");
        assert_rel(n_dev, n_cpu as f64, 1e-6, "gradient norm on the device");
        assert!(g_dev.values().all(|g| g.device() == dev));
        opt_cpu.step(&mut cpu, &g_cpu, 0.02).unwrap();
        opt_dev.step(&mut on, &g_dev, 0.02).unwrap();
        ema_cpu.update(&cpu).unwrap();
        ema_dev.update(&on).unwrap();
        assert!(on.values().all(|p| p.device() == dev), "parameters left the device");
        assert_maps_close(&on, &cpu, 1e-6, &format!("parameters after step {step}"));
    }
    let state = |o: &AdamW| -> BTreeMap<String, Tensor> { o.state_tensors().unwrap().into_iter().collect() };
    assert_maps_close(&state(&opt_dev), &state(&opt_cpu), 1e-6, "AdamW moments");
    assert_maps_close(&ema_dev.tensors().unwrap(), &ema_cpu.tensors().unwrap(), 1e-6, "EMA");

    // A CPU checkpoint of the optimiser continues on the device as on the CPU.
    let mut resumed = AdamW::from_state_tensors(cfg, opt_cpu.state_tensors().unwrap()).unwrap();
    let (mut p_dev, g) = (to_dev(&cpu, dev), grads_like(&cpu, 950));
    resumed.step(&mut p_dev, &to_dev(&g, dev), 0.01).unwrap();
    opt_cpu.step(&mut cpu, &g, 0.01).unwrap();
    assert_maps_close(&p_dev, &cpu, 1e-6, "parameters after a resumed step on the device");

    // Parameters split over two devices are refused before anything changes.
    let mut mixed = to_dev(&cpu, dev);
    let first = mixed.keys().next().unwrap().clone();
    mixed.insert(first.clone(), cpu[&first].clone());
    let err = opt_cpu
        .step(&mut mixed, &grads_like(&cpu, 960), 0.01)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one device"), "{err}");
}
