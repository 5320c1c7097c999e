//! Parity of one teacher-forced training step with the official `NVGenerator.shared_full_step`, on the
//! fixture `train_step.safetensors` (REPA and DropPath off, the official randomness injected): the
//! predictions, every loss term, the total, and the gradient of every parameter.
//!
//! Tolerances. The forward is the inference forward (parity 1.7e-6 in `generator_parity.rs`), run at 9
//! content stages and 7 flow instances; outputs are checked at `5e-6 + 2e-5·|want|`, as there. Loss terms
//! are means of many squared errors or log-probabilities and are checked at 1e-5 relative. Gradients sum
//! contributions of all tokens, stages and blocks in a different order than PyTorch (and our backward
//! of attention and norms computes row statistics in f64), so each parameter's gradient is compared as
//! a whole: `‖got − want‖ ≤ 1e-4 · ‖want‖` plus an element-wise bound `1e-5·max|want| + 1e-3·|want|`.

use nvg::dataset::RebuiltBatch;
use nvg::model::Generator;
use nvg::trainer::objective::{CFG_RATE, LossWeights, TrainNoise, training_forward};
use nvg::trainer::params;
use nvg::weights::WeightMap;
use nvg_engine::Tensor;
use nvg_engine::io::safetensors::SafetensorsFile;
use nvg_testkit::{Fixtures, assert_close};
use std::collections::BTreeMap;

fn fixture_params(fx: &Fixtures) -> BTreeMap<String, Tensor> {
    let file = SafetensorsFile::open(fx.path("generator.safetensors")).unwrap();
    let names: Vec<String> = file.names().map(str::to_string).collect();
    names
        .into_iter()
        .map(|n| {
            let t = file.get(&n).unwrap();
            let bare = n.strip_prefix("nvgformer.").unwrap_or(&n).to_string();
            (bare, t)
        })
        .collect()
}

/// The fixture's teacher-forcing tensor `[B, S, T, C + 2]` (canvas, code, label) as a batch.
fn fixture_batch(step: &nvg_testkit::FixtureFile) -> RebuiltBatch {
    let input = step.get("nvg_input");
    let [b, s, t, w] = <[usize; 4]>::try_from(input.dims()).unwrap();
    let c = w - 2;
    let ints = |ch: usize| {
        let v: Vec<i64> = input
            .narrow(3, ch, 1)
            .unwrap()
            .to_f32_vec()
            .unwrap()
            .into_iter()
            .map(|x| x as i64)
            .collect();
        Tensor::from_vec(v, &[b, s, t]).unwrap()
    };
    RebuiltBatch {
        classes: step
            .get("class_label")
            .to_i64_vec()
            .unwrap()
            .into_iter()
            .map(|c| c as usize)
            .collect(),
        labels: ints(c + 1),
        codes_per_token: ints(c),
        canvases: input.narrow(3, 0, c).unwrap().contiguous().unwrap(),
        target: step.get("f_hat_final"),
    }
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

#[test]
fn one_training_step_matches_the_official_losses_and_gradients() {
    let fx = Fixtures::open();
    let step = fx.file("train_step.safetensors");
    let batch = fixture_batch(&step);
    let b = batch.classes.len();
    let params = fixture_params(&fx);
    let leaves = params::leaves(&params);
    let generator = Generator::from_weights(WeightMap::new("fixture", leaves.clone())).unwrap();
    let grid = generator.config.grid;
    let (t, bits) = (grid.tokens(), grid.bits());
    let noise = TrainNoise {
        cfg_uniform: vec_of(&step.get("cfg_dropout_uniform")),
        structure_eps: step.get("structure_eps").reshape(&[b, t, bits]).unwrap(),
        time_logit: vec_of(&step.get("flow_time_logit_u")),
        content_keep: vec![],
        structure_keep: vec![],
    };
    let obj = training_forward(&generator, &batch, &noise, CFG_RATE, &LossWeights::uniform(&grid)).unwrap();

    let effective: Vec<usize> = step
        .get("class_label_effective")
        .to_i64_vec()
        .unwrap()
        .into_iter()
        .map(|c| c as usize)
        .collect();
    assert_eq!(obj.classes, effective, "classes after CFG dropout");
    let want_t = vec_of(&step.get("flow_time_t"));
    for (g, w) in obj.times.iter().zip(&want_t) {
        assert!((g - w).abs() <= 1e-7, "flow time {g} vs {w}");
    }

    // Predictions, rows image-major as in the fixture.
    let stages = grid.stages();
    let x0 = step.get("x0_hat");
    let flows = grid.flow_stages();
    let vel = step.get("structure_velocity");
    for i in 0..b {
        for s in 0..stages {
            let got = obj.x0_hat[s].narrow(0, i, 1).unwrap().squeeze(0).unwrap();
            let want = x0.narrow(0, i * stages + s, 1).unwrap().squeeze(0).unwrap();
            assert_close(&got, &want, 5e-6, 2e-5, &format!("x0_hat image {i} stage {s}"));
        }
        for s in 0..flows {
            let got = obj.velocity[s].narrow(0, i, 1).unwrap().squeeze(0).unwrap();
            let want = vel.narrow(0, i * flows + s, 1).unwrap().squeeze(0).unwrap();
            assert_close(&got, &want, 5e-6, 2e-5, &format!("velocity image {i} instance {s}"));
        }
    }

    // Loss terms and the total.
    let close = |got: &[f32], want: &Tensor, what: &str| {
        let want = vec_of(want);
        assert_eq!(got.len(), want.len(), "{what}");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1e-3),
                "{what}[{k}]: got {g}, want {w}"
            );
        }
    };
    close(&obj.terms.final_mse, &step.get("loss.final_mse"), "final MSE");
    close(&obj.terms.ce, &step.get("loss.ce"), "cross-entropy");
    close(
        &obj.terms.structure_mse,
        &step.get("loss.structure_mse"),
        "structure MSE",
    );
    close(&[obj.terms.total], &step.get("loss.total"), "total loss");

    // The gradient of every parameter.
    let grads = params::gradients(&leaves, &obj.loss.backward().unwrap()).unwrap();
    let mut checked = 0;
    let mut worst = (String::new(), 0.0f64);
    for (name, got) in &grads {
        let key = format!("grad.{name}");
        assert!(step.has(&key), "the fixture has no gradient for parameter {name}");
        let want = step.get(&key);
        assert_eq!(got.dims(), want.dims(), "{key}");
        let (g, w) = (vec_of(got), vec_of(&want));
        let diff = g
            .iter()
            .zip(&w)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = w.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
        let rel = diff / norm.max(1e-30);
        if rel > worst.1 {
            worst = (name.clone(), rel);
        }
        assert!(rel <= 1e-4, "{key}: ‖got − want‖ / ‖want‖ = {rel:e}");
        let peak = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close(got, &want, 1e-5 * peak, 1e-3, &key);
        checked += 1;
    }
    let expected = fx.manifest["files"]["train_step.safetensors"]["tensors"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("grad."))
        .count();
    assert_eq!(checked, expected, "every fixture gradient is checked");
    eprintln!("worst relative gradient error: {} {:e}", worst.0, worst.1);
}
