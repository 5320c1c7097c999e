//! The sampler's class evidence (what `nvg generate --best-of` ranks candidates by) against a naive
//! recomputation: every stage's content forward run again, once under the image's class and once under
//! the null class, on the canvas and structure map the sample had at that stage; log-softmax in f64;
//! each token counts the log-ratio of its cluster's drawn code; one token mean per stage.

use nvg::sampler::{ImageNoise, SamplerConfig, generate};
use nvg_engine::{DType, Tensor};
use nvg_testkit::Fixtures;

/// `log softmax(row)[k]` in f64.
fn log_prob(row: &[f32], k: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[k] as f64 - max - sum.ln()
}

#[test]
fn class_evidence_is_the_token_mean_log_ratio_of_each_stages_drawn_codes() {
    let (generator, quantizer) = Fixtures::open().sampler_models();
    let gc = &generator.config;
    let grid = gc.grid;
    let (t, vocab, null) = (grid.tokens(), gc.vocab_size, gc.null_class());
    let mut cfg = SamplerConfig::official(&grid);
    cfg.structure_steps = 2;
    cfg.temperature = 1.3; // varied codes, not only the likeliest
    cfg.class_evidence = true;
    let classes = [207usize, null, 360];
    let noise: Vec<ImageNoise> = (0..classes.len() as u64)
        .map(|i| ImageNoise::for_image(&grid, 5, i))
        .collect();
    let g = generate(&generator, &quantizer, &cfg, &classes, &noise).unwrap();
    let evidence = g.class_evidence.as_ref().expect("class evidence was asked for");
    assert_eq!(evidence.len(), classes.len());

    for (k, &class) in classes.iter().enumerate() {
        assert_eq!(evidence[k].len(), grid.stages());
        for (s, stage) in g.stages.iter().enumerate() {
            let canvas = if s == 0 {
                Tensor::zeros(&[1, t, gc.latent_channels], DType::F32, generator.device()).unwrap()
            } else {
                g.stages[s - 1].canvas.narrow(0, k, 1).unwrap()
            };
            let labels = stage.labels.narrow(0, k, 1).unwrap();
            let codes = stage.codes.narrow(0, k, 1).unwrap().to_i64_vec().unwrap();
            let logits = |c: usize| {
                let out = generator.content.forward(&canvas, &labels, &[c], s, None).unwrap();
                out.logits.to_f32_vec().unwrap()
            };
            let (cond, uncond) = (logits(class), logits(null));
            let mut stage_sum = 0.0f64;
            for &label in &labels.to_i64_vec().unwrap() {
                let (cluster, code) = (label as usize, codes[label as usize] as usize);
                let row = cluster * vocab..(cluster + 1) * vocab;
                stage_sum += log_prob(&cond[row.clone()], code) - log_prob(&uncond[row], code);
            }
            let (naive, got) = (stage_sum / t as f64, evidence[k][s] as f64);
            assert!(
                (got - naive).abs() <= 1e-4 * (1.0 + naive.abs()),
                "image {k} (class {class}) stage {s}: evidence {got}, naive {naive}"
            );
            if class == null {
                assert_eq!(
                    evidence[k][s], 0.0,
                    "the null class explains its own codes exactly as well"
                );
            }
        }
    }
    for k in [0, 2] {
        assert!(
            evidence[k].iter().all(|&e| e != 0.0),
            "class-conditional images carry evidence at every stage: {:?}",
            evidence[k]
        );
    }
}

#[test]
fn class_evidence_needs_guidance_and_does_not_change_the_images() {
    let (generator, quantizer) = Fixtures::open().sampler_models();
    let grid = generator.config.grid;
    let mut cfg = SamplerConfig::official(&grid);
    cfg.structure_steps = 2;
    let noise = vec![ImageNoise::for_image(&grid, 9, 0)];
    let plain = generate(&generator, &quantizer, &cfg, &[12], &noise).unwrap();
    assert!(plain.class_evidence.is_none());
    cfg.class_evidence = true;
    let scored = generate(&generator, &quantizer, &cfg, &[12], &noise).unwrap();
    assert_eq!(
        plain.canvas.to_f32_vec().unwrap(),
        scored.canvas.to_f32_vec().unwrap(),
        "scoring the codes must not change what is drawn"
    );
    cfg.content_cfg = None;
    let err = generate(&generator, &quantizer, &cfg, &[12], &noise)
        .err()
        .expect("no unconditional pass to compare with")
        .to_string();
    assert!(err.contains("content guidance"), "{err}");
}
