//! Parity of the NVG generator with the official PyTorch implementation, on the fixture set in
//! `NVG_FIXTURES` (default: the shared `nvg-tiny` set). Sizes, classes, times and schedules come from the
//! fixture files and `manifest.json`, so a set made the same way with another depth, batch, step count
//! or schedule passes through these tests unchanged.
//!
//! Tolerances. Both sides compute in f32; they differ in summation order (GEMM blocking, attention,
//! reductions) and in a few transcendental implementations, so results agree to a few ulps per
//! operation, accumulated over the blocks. On `nvg-tiny` the largest absolute error over all 96 float
//! comparisons is 1.7e-6 (x0_hat, whose values reach 4), i.e. ~4e-7 relative to the data's scale;
//! `|err| ≤ 5e-6 + 2e-5·|want|` leaves a 3× margin. Discrete outputs — codes and labels — must match
//! exactly: the fixtures were chosen so that no argmax or split decision is closer than 1e-5 relative
//! (manifest `checks`), far above these errors.

use nvg::config::Grid;
use nvg::model::{Generator, Trace};
use nvg::sampler::{ImageNoise, SamplerConfig, generate, guidance, schedule::Schedule};
use nvg::tokenizer::Quantizer;
use nvg::weights::WeightSet;
use nvg_engine::Tensor;
use nvg_testkit::{Fixtures, assert_close, assert_same_ints, errors};

const TOL_ABS: f32 = 5e-6;
const TOL_REL: f32 = 2e-5;

fn generator(fx: &Fixtures) -> Generator {
    Generator::load(&fx.path("generator.safetensors"), WeightSet::Raw).unwrap()
}

fn classes(t: &Tensor) -> Vec<usize> {
    t.to_i64_vec().unwrap().into_iter().map(|c| c as usize).collect()
}

fn usize_of(v: &serde_json::Value) -> usize {
    v.as_u64()
        .unwrap_or_else(|| panic!("manifest value {v} is not an integer")) as usize
}

/// Labels of stage s from the leaf labels: `labels_leaf >> (bits − s)`.
fn stage_labels(leaf: &Tensor, grid: &Grid, s: usize) -> Tensor {
    let v: Vec<i64> = leaf
        .to_i64_vec()
        .unwrap()
        .into_iter()
        .map(|l| l >> (grid.bits() - s))
        .collect();
    Tensor::from_vec(v, leaf.dims()).unwrap()
}

/// `[.., 32, 2, 2]` rotation tables `[[cos, −sin], [sin, cos]]` → (cos, sin) `[.., 32]`.
fn split_rope_table(table: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let v = table.to_f32_vec().unwrap();
    let (cos, sin) = v.chunks(4).map(|m| (m[0], m[2])).unzip();
    (cos, sin)
}

#[test]
fn config_read_off_the_weights_matches_the_manifest() {
    let fx = Fixtures::open();
    let g = generator(&fx);
    let derived = &fx.manifest["generator_derived"];
    let params = &fx.manifest["generator_config"]["params"];
    assert_eq!(g.config.depth, usize_of(&params["depth"]));
    assert_eq!(g.config.width, usize_of(&derived["hidden_size"]));
    assert_eq!(g.config.heads, usize_of(&derived["num_heads"]));
    assert_eq!(g.config.structure_width, usize_of(&derived["structure_hidden_size"]));
    assert_eq!(g.config.structure_heads, usize_of(&derived["structure_num_heads"]));
    assert_eq!(g.config.vocab_size, usize_of(&params["vocab_size"]));
    assert_eq!(
        g.config.grid.rope_axes(),
        derived["rope_axes_dim"]
            .as_array()
            .unwrap()
            .iter()
            .map(usize_of)
            .collect::<Vec<_>>()
    );
    // The manifest counts the official module's parameters (buffers excluded).
    assert_eq!(g.config.parameter_count(), usize_of(&derived["num_parameters"]));
}

#[test]
fn content_forward_matches_the_official_model_at_every_stage() {
    let fx = Fixtures::open();
    let g = generator(&fx);
    let f = fx.file("content_forward.safetensors");
    let cls = classes(&f.get("class_label"));
    let leaf = f.get("labels_leaf");
    let debug_stage = usize_of(&fx.hyper("content_forward.safetensors")["debug_stage"]);
    let grid = g.config.grid;
    for s in 0..grid.stages() {
        let p = |n: &str| format!("stage{s}.{n}");
        let canvas = f.get(&p("canvas"));
        let labels = f.get(&p("labels"));
        assert_same_ints(
            &labels,
            &stage_labels(&leaf, &grid, s),
            &format!("stage {s}: fixture labels = leaf >> (bits - s)"),
        );
        let mut trace = Trace::default();
        let out = g.content.forward(&canvas, &labels, &cls, s, Some(&mut trace)).unwrap();
        assert_close(&out.x0_hat, &f.get(&p("x0_hat")), TOL_ABS, TOL_REL, &p("x0_hat"));
        assert_close(
            &out.cluster_mean,
            &f.get(&p("cluster_mean_residual")),
            TOL_ABS,
            TOL_REL,
            &p("cluster_mean_residual"),
        );
        let logits = if f.has(&p("logits")) {
            f.get(&p("logits"))
        } else {
            // Later stages store the first 16 clusters only.
            let want = f.get(&p("logits_first16_clusters"));
            assert_close(
                &out.logits.narrow(1, 0, want.dims()[1]).unwrap(),
                &want,
                TOL_ABS,
                TOL_REL,
                &p("logits (first clusters)"),
            );
            want
        };
        if logits.dims() == out.logits.dims() {
            assert_close(&out.logits, &logits, TOL_ABS, TOL_REL, &p("logits"));
        }
        assert_same_ints(
            &out.logits.argmax(-1, false).unwrap(),
            &f.get(&p("argmax_code")),
            &p("argmax code"),
        );
        if s == debug_stage {
            let d = |n: &str| f.get(&format!("stage{s}.debug.{n}"));
            assert_close(
                trace.get("tokens_in").unwrap(),
                &d("tokens_in"),
                TOL_ABS,
                TOL_REL,
                "debug tokens_in",
            );
            assert_close(trace.get("vec").unwrap(), &d("vec"), TOL_ABS, TOL_REL, "debug vec");
            assert_close(
                trace.get("hidden_after_block0").unwrap(),
                &d("hidden_after_block0"),
                TOL_ABS,
                TOL_REL,
                "debug block 0",
            );
            let inputs = g.content.embed(&canvas, &labels, &cls, s).unwrap();
            let (cos, sin) = split_rope_table(&d("rope_table"));
            let (ec, es) = (
                errors(&inputs.cos.to_f32_vec().unwrap(), &cos, 1.0),
                errors(&inputs.sin.to_f32_vec().unwrap(), &sin, 1.0),
            );
            assert!(ec.0 < 1e-6 && es.0 < 1e-6, "RoPE table: cos err {ec:?}, sin err {es:?}");
        }
    }
}

#[test]
fn structure_forward_matches_the_official_model_at_every_flow_stage() {
    let fx = Fixtures::open();
    let g = generator(&fx);
    let f = fx.file("structure_forward.safetensors");
    let cls = classes(&f.get("class_label"));
    let t = f.get("t").to_f32_vec().unwrap();
    let debug_stage = usize_of(&fx.hyper("structure_forward.safetensors")["debug_stage"]);
    for s in 0..g.config.grid.flow_stages() {
        let p = |n: &str| format!("stage{s}.{n}");
        let mut trace = Trace::default();
        let v = g
            .structure
            .forward(
                &f.get(&p("z")),
                &t,
                &f.get(&p("canvas_next")),
                &f.get(&p("labels")),
                &cls,
                s,
                Some(&mut trace),
            )
            .unwrap();
        assert_close(&v, &f.get(&p("velocity")), TOL_ABS, TOL_REL, &p("velocity"));
        if s == debug_stage {
            let d = |n: &str| f.get(&format!("stage{s}.debug.{n}"));
            assert_close(
                trace.get("tokens_in").unwrap(),
                &d("tokens_in"),
                TOL_ABS,
                TOL_REL,
                "debug tokens_in",
            );
            assert_close(trace.get("vec").unwrap(), &d("vec"), TOL_ABS, TOL_REL, "debug vec");
            assert_close(
                trace.get("hidden_after_block0").unwrap(),
                &d("hidden_after_block0"),
                TOL_ABS,
                TOL_REL,
                "debug block 0",
            );
        }
    }
}

/// Greedy sampling settings of one fixture run (`cfg_on` / `cfg_off`).
fn greedy_config(fx: &Fixtures, grid: &Grid, guided: bool) -> SamplerConfig {
    let h = fx.hyper("generate_greedy.safetensors");
    let range = |key: &str| {
        let r = h[key].as_array().unwrap();
        Schedule::Range(r[0].as_f64().unwrap() as f32, r[1].as_f64().unwrap() as f32)
    };
    let f32s = |key: &str| {
        h[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect::<Vec<_>>()
    };
    let mut cfg = SamplerConfig::greedy(grid, usize_of(&h["structure_sampling_step"]));
    cfg.top_k = h["top_k"].as_array().unwrap().iter().map(usize_of).collect();
    cfg.top_p = f32s("top_p");
    cfg.temperature = h["temperature"].as_f64().unwrap() as f32;
    cfg.gumbel_split = h["use_gumbel_topk"].as_bool().unwrap();
    cfg.keep_logits = true;
    if guided {
        cfg.content_cfg = Some(guidance(&range("content_cfg_range"), grid.stages()).unwrap());
        cfg.structure_cfg = Some(guidance(&range("structure_cfg_range"), grid.stages()).unwrap());
    }
    cfg
}

fn check_greedy_generation(guided: bool) {
    let fx = Fixtures::open();
    let g = generator(&fx);
    let grid = g.config.grid;
    let quant = Quantizer::load(&fx.path("tokenizer.safetensors"), grid).unwrap();
    let f = fx.file("generate_greedy.safetensors");
    let run = if guided { "cfg_on" } else { "cfg_off" };
    let cfg = greedy_config(&fx, &grid, guided);
    // The schedules we derive equal the official ones.
    let ones = vec![1.0; grid.stages()];
    assert_eq!(
        cfg.content_cfg.clone().unwrap_or(ones.clone()),
        f.get(&format!("{run}.content_cfg_scale")).to_f32_vec().unwrap()
    );
    assert_eq!(
        cfg.structure_cfg.clone().unwrap_or(ones),
        f.get(&format!("{run}.structure_cfg_scale")).to_f32_vec().unwrap()
    );
    assert_eq!(
        nvg::sampler::flow::flow_timesteps(cfg.structure_steps, grid.tokens()),
        f.get("flow_timesteps").to_f32_vec().unwrap(),
        "flow time grid"
    );

    let cls = classes(&f.get("class_label"));
    let noise_t = f.get("structure_noise");
    let per_image = grid.tokens() * grid.bits();
    let noise: Vec<ImageNoise> = noise_t
        .to_f32_vec()
        .unwrap()
        .chunks(per_image)
        .enumerate()
        .map(|(i, n)| ImageNoise::with_structure(n.to_vec(), 0, i as u64))
        .collect();
    let out = generate(&g, &quant, &cfg, &cls, &noise).unwrap();

    let labels = f.get(&format!("{run}.labels_at_stage"));
    let canvases = f.get(&format!("{run}.canvas_after_stage"));
    let per_token = f.get(&format!("{run}.codes_per_token"));
    for (s, st) in out.stages.iter().enumerate() {
        let at = |t: &Tensor| t.narrow(0, s, 1).unwrap().squeeze(0).unwrap();
        let w = |n: &str| format!("{run}.{n}.s{s}");
        assert_same_ints(&st.labels, &at(&labels), &format!("{run} stage {s}: labels"));
        assert_same_ints(
            &st.codes,
            &f.get(&w("codes_per_cluster")),
            &format!("{run} stage {s}: codes"),
        );
        assert_same_ints(
            &st.codes_per_token,
            &at(&per_token),
            &format!("{run} stage {s}: codes per token"),
        );
        assert_close(&st.x0_hat, &f.get(&w("x0_hat")), TOL_ABS, TOL_REL, &w("x0_hat"));
        assert_close(
            &st.canvas,
            &at(&canvases),
            TOL_ABS,
            TOL_REL,
            &format!("{run} stage {s}: canvas"),
        );
        if f.has(&w("split_scores")) {
            assert_close(
                st.split_scores.as_ref().unwrap(),
                &f.get(&w("split_scores")),
                TOL_ABS,
                TOL_REL,
                &w("split_scores"),
            );
        }
        if f.has(&w("final_logits")) {
            assert_close(
                st.logits.as_ref().unwrap(),
                &f.get(&w("final_logits")),
                TOL_ABS,
                TOL_REL,
                &w("final_logits"),
            );
        }
    }
    assert_close(
        &out.canvas,
        &f.get(&format!("{run}.final_canvas")),
        TOL_ABS,
        TOL_REL,
        &format!("{run} final canvas"),
    );
}

#[test]
fn greedy_generation_matches_the_official_sampler_without_guidance() {
    check_greedy_generation(false);
}

#[test]
fn greedy_generation_matches_the_official_sampler_with_guidance() {
    check_greedy_generation(true);
}
