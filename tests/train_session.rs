//! The training session on a small made-up dataset (4×4 grid, synthetic quantiser, depth-2 model):
//! gradient accumulation is equivalent to a larger batch, the training noise of an image depends only on
//! (seed, step, position in the step), DropPath follows the official per-block rates, and the official
//! initialisation builds a loadable generator, and a training checkpoint converts to bf16 inference
//! weights (`nvg convert`), and our optional position embeddings.

use nvg::config::{GeneratorConfig, Grid};
use nvg::dataset::{Dataset, DatasetHeader, DatasetWriter, Record};
use nvg::model::Generator;
use nvg::structure_map::ChildOrder;
use nvg::tokenizer::Quantizer;
use nvg::trainer::init::{OFFICIAL_SCALE_FACTORS, initial_parameters};
use nvg::trainer::objective::{DropPath, TrainNoise, drop_path_rates};
use nvg::trainer::session::{StepLog, TrainSettings, TrainState, train};
use nvg::weights::WeightMap;
use nvg_engine::Device;
use nvg_engine::cuda::MatmulPrecision;
use nvg_engine::rng::RngStream;
use std::path::PathBuf;
use std::sync::Arc;

const SIDE: usize = 4;
const VOCAB: usize = 32;
const CHANNELS: usize = 8;
const CLASSES: usize = 5;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nvg-train-session-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `len` records: random classes, random permutations as leaf labels, random codes.
fn dataset(name: &str, len: usize) -> (Arc<Dataset>, PathBuf) {
    let grid = Grid::new(SIDE).unwrap();
    let dir = temp_dir(name);
    let path = dir.join("d.nvgtok");
    let header = DatasetHeader {
        grid_side: SIDE,
        stages: grid.stages(),
        codebook_size: VOCAB,
        num_classes: CLASSES,
        count: 0,
        tokenizer_hash: 0,
        child_order: ChildOrder::Merge,
    };
    let rng = RngStream::new(3, 1);
    let mut k = 0u64;
    let mut next = |n: usize| {
        k += 1;
        rng.words(k)[0] as usize % n
    };
    let mut w = DatasetWriter::create(&path, header).unwrap();
    for _ in 0..len {
        let mut leaf: Vec<i64> = (0..grid.tokens() as i64).collect();
        for i in (1..leaf.len()).rev() {
            leaf.swap(i, next(i + 1));
        }
        let codes = (0..grid.stages())
            .map(|s| (0..1 << s).map(|_| next(VOCAB) as i64).collect())
            .collect();
        w.push(&Record {
            class: next(CLASSES),
            leaf_labels: leaf,
            codes,
        })
        .unwrap();
    }
    w.finish().unwrap();
    (Arc::new(Dataset::open(&path, None).unwrap()), dir)
}

fn config() -> GeneratorConfig {
    let mut c = GeneratorConfig::from_depth(2).unwrap();
    c.grid = Grid::new(SIDE).unwrap();
    c.vocab_size = VOCAB;
    c.latent_channels = CHANNELS;
    c.num_classes = CLASSES;
    c
}

fn settings(batch: usize, accum: usize, steps: u64) -> TrainSettings {
    TrainSettings {
        batch,
        accum,
        steps,
        lr: 1e-3,
        warmup: 0,
        hold_end: steps,
        final_lr: 1e-4,
        clip: 1.0,
        ema_decay: 0.99,
        drop_path: DropPath::Official,
        class_balance: 0.0,
        seed: 17,
        checkpoint_every: 1000,
        log_every: 1,
        prefetch: 1,
        stop_after: None,
        stop_after_seconds: None,
        device: Device::Cpu,
        matmul: MatmulPrecision::F32,
    }
}

/// One step of `batch × accum` images; returns its log and the state after it.
fn one_step(data: &Arc<Dataset>, dir: &std::path::Path, batch: usize, accum: usize) -> (StepLog, TrainState) {
    let quantizer = Arc::new(Quantizer::synthetic(Grid::new(SIDE).unwrap(), VOCAB, CHANNELS, 5));
    let mut state = TrainState::new(&config(), None, 1, 0.99).unwrap();
    let mut logs = Vec::new();
    let ckpt = dir.join(format!("b{batch}a{accum}.safetensors"));
    train(
        &mut state,
        data.clone(),
        quantizer,
        &settings(batch, accum, 1),
        &ckpt,
        |l| logs.push(l.clone()),
    )
    .unwrap();
    (logs.pop().unwrap(), state)
}

#[test]
fn accumulating_micro_batches_equals_one_larger_batch() {
    let (data, dir) = dataset("accum", 12);
    let (whole, a) = one_step(&data, &dir, 4, 1);
    let (split, b) = one_step(&data, &dir, 2, 2);
    let (quarter, _) = one_step(&data, &dir, 1, 4);
    // The same images with the same noise: equal losses and gradient norms up to summation order.
    for other in [&split, &quarter] {
        assert!(
            (whole.terms.total - other.terms.total).abs() <= 1e-5 * whole.terms.total.abs(),
            "loss {} vs {}",
            whole.terms.total,
            other.terms.total
        );
        assert!(
            (whole.grad_norm - other.grad_norm).abs() <= 1e-4 * whole.grad_norm,
            "gradient norm {} vs {} (a missing 1/accum would double it)",
            whole.grad_norm,
            other.grad_norm
        );
    }
    // The weights after the step agree too (AdamW's first step is ≈ lr·sign(g); compare closely).
    let mut worst = 0.0f32;
    for (name, t) in &a.params {
        let (x, y) = (t.to_f32_vec().unwrap(), b.params[name].to_f32_vec().unwrap());
        for (p, q) in x.iter().zip(&y) {
            worst = worst.max((p - q).abs());
        }
    }
    assert!(worst <= 1e-4, "weights differ by {worst} after one step");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `nvg train --device`: two steps of two one-image micro-batches (gradient accumulation, DropPath, learned position
/// tables) with everything on `CudaEmu` (the CUDA kernels' host build) follow the CPU run: the same losses
/// and gradient norms to f32 rounding, weights that stay on the device and agree after the steps, and a
/// checkpoint of host tensors that loads back as the device run's weights.
#[test]
fn training_on_a_device_follows_the_cpu() {
    let (data, dir) = dataset("device", 8);
    let mut cfg = config();
    cfg.position_embedding = true;
    let run = |device: Device| {
        let quantizer = Arc::new(Quantizer::synthetic(Grid::new(SIDE).unwrap(), VOCAB, CHANNELS, 5));
        let mut state = TrainState::new(&cfg, None, 1, 0.99).unwrap();
        let mut logs = Vec::new();
        let ckpt = dir.join(format!("{device}.safetensors"));
        let s = TrainSettings {
            device,
            ..settings(1, 2, 2)
        };
        train(&mut state, data.clone(), quantizer, &s, &ckpt, |l| logs.push(l.clone())).unwrap();
        (logs, state, ckpt)
    };
    let (cpu_logs, cpu, _) = run(Device::Cpu);
    let (dev_logs, dev, dev_ckpt) = run(Device::CudaEmu);
    for (c, d) in cpu_logs.iter().zip(&dev_logs) {
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
        assert!(
            close(c.terms.total, d.terms.total),
            "step {}: loss {} on the CPU, {} on the device",
            c.step,
            c.terms.total,
            d.terms.total
        );
        assert!(
            close(c.grad_norm, d.grad_norm),
            "step {}: gradient norm {} vs {}",
            c.step,
            c.grad_norm,
            d.grad_norm
        );
    }
    assert_eq!(dev_logs.len(), 2);
    let mut worst = 0.0f32;
    for (name, t) in &cpu.params {
        let d = &dev.params[name];
        assert_eq!(d.device(), Device::CudaEmu, "{name} left the device");
        for (p, q) in t.to_f32_vec().unwrap().iter().zip(&d.to_f32_vec().unwrap()) {
            worst = worst.max((p - q).abs());
        }
    }
    eprintln!("largest weight difference after two steps on the device: {worst:e}");
    assert!(worst <= 1e-4, "weights differ by {worst} after two steps");
    let loaded = TrainState::load(&dev_ckpt, 0.99).unwrap();
    assert_eq!(loaded.step, 2);
    for (name, t) in &loaded.params {
        assert_eq!(t.device(), Device::Cpu);
        assert_eq!(
            t.to_f32_vec().unwrap(),
            dev.params[name].to_f32_vec().unwrap(),
            "checkpoint of {name}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `nvg train --device … --matmul bf16`: a step with the device's matmuls on the tensor-core path (bf16
/// operands, f32 accumulation; emulated per lane on `CudaEmu`) stays within bf16 rounding of the f32 CPU
/// step — and differs from it, so the switch took effect — and leaves the thread at f32 afterwards.
#[test]
fn training_with_bf16_matmuls_on_a_device_stays_close() {
    let (data, dir) = dataset("bf16", 4);
    let run = |device: Device, matmul: MatmulPrecision| {
        let quantizer = Arc::new(Quantizer::synthetic(Grid::new(SIDE).unwrap(), VOCAB, CHANNELS, 5));
        let mut state = TrainState::new(&config(), None, 1, 0.99).unwrap();
        let mut logs = Vec::new();
        let ckpt = dir.join(format!("{device}-{matmul:?}.safetensors"));
        let s = TrainSettings {
            device,
            matmul,
            ..settings(1, 1, 1)
        };
        train(&mut state, data.clone(), quantizer, &s, &ckpt, |l| logs.push(l.clone())).unwrap();
        logs.pop().unwrap()
    };
    let cpu = run(Device::Cpu, MatmulPrecision::F32);
    let bf16 = run(Device::CudaEmu, MatmulPrecision::Bf16);
    assert_eq!(nvg_engine::cuda::matmul_precision(), MatmulPrecision::F32);
    let rel = |a: f32, b: f32| (a - b).abs() / a.abs();
    let (dl, dg) = (
        rel(cpu.terms.total, bf16.terms.total),
        rel(cpu.grad_norm, bf16.grad_norm),
    );
    eprintln!(
        "bf16 matmuls: loss {} vs {} (relative {dl:e}), gradient norm relative {dg:e}",
        cpu.terms.total, bf16.terms.total
    );
    assert!(
        dl <= 1e-2 && dg <= 5e-2,
        "bf16 matmuls moved the step too far: loss {dl:e}, gradient norm {dg:e}"
    );
    assert!(dl > 1e-7, "the loss is the f32 one: the tensor-core path was not taken");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_images_training_noise_depends_on_seed_step_and_position_only() {
    let grid = Grid::new(SIDE).unwrap();
    let all = TrainNoise::draw(&grid, 4, 0..6, 9, 3, DropPath::Official).unwrap();
    let tail = TrainNoise::draw(&grid, 4, 4..6, 9, 3, DropPath::Official).unwrap();
    assert_eq!(all.cfg_uniform[4..], tail.cfg_uniform[..]);
    assert_eq!(all.time_logit[4 * grid.flow_stages()..], tail.time_logit[..]);
    assert_eq!(
        all.structure_eps.narrow(0, 4, 2).unwrap().to_f32_vec().unwrap(),
        tail.structure_eps.to_f32_vec().unwrap()
    );
    for (s, blocks) in all.content_keep.iter().enumerate() {
        for (b, m) in blocks.iter().enumerate() {
            assert_eq!(
                m.narrow(0, 4, 2).unwrap().to_f32_vec().unwrap(),
                tail.content_keep[s][b].to_f32_vec().unwrap()
            );
        }
    }
    let other_step = TrainNoise::draw(&grid, 4, 4..6, 9, 4, DropPath::Official).unwrap();
    assert_ne!(other_step.time_logit, tail.time_logit);
    let other_seed = TrainNoise::draw(&grid, 4, 4..6, 10, 3, DropPath::Official).unwrap();
    assert_ne!(other_seed.time_logit, tail.time_logit);
}

#[test]
fn drop_path_follows_the_official_per_block_rates() {
    // Linear from 0 at the first block to 0.1·depth/24 at the last (spec §3.1: d16 0.0667, d24 0.1).
    let r24 = drop_path_rates(24);
    assert_eq!(r24[0], 0.0);
    assert!((r24[23] - 0.1).abs() < 1e-7);
    assert!((drop_path_rates(16)[15] - 0.1 * 16.0 / 24.0).abs() < 1e-7);
    let r = drop_path_rates(24);
    for w in r.windows(3) {
        assert!(((w[1] - w[0]) - (w[2] - w[1])).abs() < 1e-7, "not linear: {w:?}");
    }
    // Masks: 0 with probability `rate`, 1/(1 − rate) otherwise.
    let grid = Grid::new(SIDE).unwrap();
    let n = 20_000;
    let noise = TrainNoise::draw(&grid, 24, 0..n, 1, 0, DropPath::Official).unwrap();
    assert_eq!(noise.content_keep.len(), grid.stages());
    assert_eq!(noise.structure_keep.len(), grid.flow_stages());
    let last = noise.content_keep[0][23].to_f32_vec().unwrap();
    let dropped = last.iter().filter(|&&k| k == 0.0).count() as f64 / n as f64;
    // 5σ of a binomial proportion with p = 0.1 and n = 20 000 is 0.0106.
    assert!((dropped - 0.1).abs() < 0.0106, "dropped fraction {dropped}");
    assert!(last.iter().all(|&k| k == 0.0 || (k - 1.0 / 0.9).abs() < 1e-6));
    assert!(
        noise.content_keep[3][0].to_f32_vec().unwrap().iter().all(|&k| k == 1.0),
        "block 0 has rate 0"
    );
    let off = TrainNoise::draw(&grid, 24, 0..4, 1, 0, DropPath::Off).unwrap();
    assert!(off.content_keep.is_empty() && off.structure_keep.is_empty());
}

#[test]
fn drop_path_with_another_top_rate_ramps_to_it_and_drops_that_share() {
    // A depth-4 model's official top rate is 0.1·4/24; `--drop-path 0.3` ramps 0, 0.1, 0.2, 0.3 instead.
    assert_eq!(DropPath::Official.rates(4).unwrap(), drop_path_rates(4));
    assert!((DropPath::Official.top(4) - 0.1 * 4.0 / 24.0).abs() < 1e-12);
    let rates = DropPath::Top(0.3).rates(4).unwrap();
    for (got, want) in rates.iter().zip([0.0, 0.1, 0.2, 0.3]) {
        assert!((got - want).abs() < 1e-7, "{rates:?}");
    }
    assert_eq!(DropPath::Off.rates(4), None);
    let grid = Grid::new(SIDE).unwrap();
    let n = 20_000;
    let noise = TrainNoise::draw(&grid, 4, 0..n, 1, 0, DropPath::Top(0.3)).unwrap();
    for (block, rate) in [(1, 0.1), (3, 0.3)] {
        let keep = noise.structure_keep[0][block].to_f32_vec().unwrap();
        let dropped = keep.iter().filter(|&&k| k == 0.0).count() as f64 / n as f64;
        // 5σ of a binomial proportion with p = 0.3 and n = 20 000 is 0.0162.
        assert!(
            (dropped - rate).abs() < 0.0162,
            "block {block}: dropped {dropped}, rate {rate}"
        );
        let scale = 1.0 / (1.0 - rate as f32);
        assert!(keep.iter().all(|&k| k == 0.0 || (k - scale).abs() < 1e-5));
    }
    // The masks depend only on the rates: a ramp to the official top draws the official masks.
    let official = TrainNoise::draw(&grid, 4, 0..8, 1, 0, DropPath::Official).unwrap();
    let top = TrainNoise::draw(&grid, 4, 0..8, 1, 0, DropPath::Top(DropPath::Official.top(4) as f32)).unwrap();
    let masks = |n: &TrainNoise| {
        let all = [&n.content_keep, &n.structure_keep];
        all.iter()
            .flat_map(|k| k.iter().flatten())
            .map(|t| t.to_f32_vec().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(masks(&official).len(), (grid.stages() + grid.flow_stages()) * 4);
    assert_eq!(masks(&official), masks(&top));
    let msg = format!(
        "{:#}",
        TrainNoise::draw(&grid, 4, 0..2, 1, 0, DropPath::Top(1.0))
            .err()
            .unwrap()
    );
    assert!(msg.contains("[0, 1)"), "{msg}");
}

#[test]
fn the_official_initialisation_builds_a_generator() {
    let mut cfg = GeneratorConfig::from_depth(2).unwrap();
    cfg.num_classes = 10;
    let params = initial_parameters(&cfg, 4).unwrap();
    let g = Generator::from_weights(WeightMap::new("init", params.clone())).unwrap();
    assert_eq!(g.config, cfg);
    assert_eq!(params["scale_factors"].to_f32_vec().unwrap(), OFFICIAL_SCALE_FACTORS);
    let stats = |name: &str| {
        let v = params[name].to_f32_vec().unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        (mean, std, max)
    };
    // Embedding tables N(0, 0.02); the start canvas N(0, 1).
    let (m, s, _) = stats("content_class_embed.weight");
    assert!(
        m.abs() < 0.002 && (s - 0.02).abs() < 0.002,
        "class table mean {m} std {s}"
    );
    let (_, s, _) = stats("content_start_embed");
    assert!((s - 1.0).abs() < 0.05, "start canvas std {s}");
    // Xavier-uniform: |w| ≤ sqrt(6/(fan_in + fan_out)), std = bound/√3.
    let dims = params["content_blocks.0.linear1.weight"].dims().to_vec();
    let bound = (6.0 / (dims[0] + dims[1]) as f64).sqrt();
    let (_, s, max) = stats("content_blocks.0.linear1.weight");
    assert!(
        (max as f64) <= bound && (s - bound / 3f64.sqrt()).abs() < 0.02 * bound,
        "xavier std {s}"
    );
    assert_eq!(stats("content_blocks.0.linear1.bias").2, 0.0);
    assert!(
        params["content_blocks.0.norm.query_norm.scale"]
            .to_f32_vec()
            .unwrap()
            .iter()
            .all(|&x| x == 1.0)
    );
    // Seeded: the same seed gives the same weights, another seed others.
    let again = initial_parameters(&cfg, 4).unwrap();
    let other = initial_parameters(&cfg, 5).unwrap();
    let w =
        |p: &std::collections::BTreeMap<String, nvg_engine::Tensor>| p["x0_head.linear.weight"].to_f32_vec().unwrap();
    assert_eq!(w(&params), w(&again));
    assert_ne!(w(&params), w(&other));
}

#[test]
fn a_training_checkpoint_converts_to_bf16_inference_weights() {
    let (data, dir) = dataset("convert", 6);
    let (_, state) = one_step(&data, &dir, 2, 1);
    let ckpt = dir.join("trained.safetensors");
    state.save(&ckpt, &settings(2, 1, 1)).unwrap();
    let ema: std::collections::BTreeMap<String, nvg_engine::Tensor> = state.ema.tensors().unwrap();

    for (use_ema, expected) in [(false, &state.params), (true, &ema)] {
        let mut c = nvg::checkpoint::convert(&ckpt, use_ema).unwrap();
        assert_eq!(c.kind, nvg::checkpoint::ModelKind::Generator);
        // Every parameter and buffer under its bare name; the other set and the optimiser state left out.
        let names: Vec<&String> = c.tensors.keys().collect();
        assert_eq!(names, state.params.keys().collect::<Vec<_>>(), "ema = {use_ema}");
        assert!(c.dropped > 0);
        for (n, t) in expected {
            assert_eq!(c.tensors[n].to_f32_vec().unwrap(), t.to_f32_vec().unwrap(), "{n}");
        }
        c.cast_floats(nvg_engine::DType::BF16).unwrap();
        let out = dir.join(format!("weights-{use_ema}.safetensors"));
        nvg_engine::io::safetensors::save(&out, c.tensors.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
        let file = nvg_engine::io::safetensors::SafetensorsFile::open(&out).unwrap();
        for n in file.names() {
            let dtype = file.get(n).unwrap().dtype();
            assert_eq!(dtype, nvg_engine::DType::BF16, "{n} is stored as {dtype:?}");
        }
        // bf16 keeps 8 significant bits: every weight within 2^-8 relative of the f32 one.
        let loaded = Generator::load(&out, nvg::weights::WeightSet::Raw).unwrap();
        assert_eq!(loaded.config, config());
        for (n, t) in expected {
            let (a, b) = (file.get(n).unwrap().to_f32_vec().unwrap(), t.to_f32_vec().unwrap());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= y.abs() / 256.0, "{n}: {x} vs {y}");
            }
        }
    }
    assert!(
        nvg::checkpoint::convert(&ckpt, true)
            .unwrap()
            .cast_floats(nvg_engine::DType::I64)
            .is_err()
    );
}

/// Our `position_embedding` option: two learned `[1, T, width]` tables added to the image tokens. A
/// plain model plus zero tables computes exactly the plain model; the tables get trained; `--init`
/// from a plain model keeps every plain tensor and draws only the tables; the reverse is refused.
#[test]
fn position_embeddings_add_learned_tables_on_top_of_the_official_model() {
    let plain_cfg = config();
    let mut cfg = config();
    cfg.position_embedding = true;
    let plain = initial_parameters(&plain_cfg, 4).unwrap();
    let params = initial_parameters(&cfg, 4).unwrap();
    let (t, h, hs) = (plain_cfg.grid.tokens(), cfg.width, cfg.structure_width);
    assert_eq!(params["content_pos_embed"].dims(), [1, t, h]);
    assert_eq!(params["structure_pos_embed"].dims(), [1, t, hs]);
    let size = |p: &std::collections::BTreeMap<String, nvg_engine::Tensor>| {
        p.iter()
            .filter(|(n, _)| n.as_str() != "scale_factors")
            .map(|(_, t)| t.numel())
            .sum::<usize>()
    };
    assert_eq!(size(&params), cfg.parameter_count());
    assert_eq!(cfg.parameter_count() - plain_cfg.parameter_count(), t * (h + hs));
    for (n, x) in &plain {
        assert_eq!(x.to_f32_vec().unwrap(), params[n].to_f32_vec().unwrap(), "{n}");
    }

    // The forward of both branches: zero tables = the plain model; the drawn tables change it.
    let grid = cfg.grid;
    let canvas = nvg_engine::Tensor::from_vec(
        (0..2 * t * CHANNELS)
            .map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0)
            .collect(),
        &[2, t, CHANNELS],
    )
    .unwrap();
    let labels = nvg_engine::Tensor::from_vec(
        (0..2 * t).map(|l| ((l % t) >> (grid.bits() - 2)) as i64).collect(),
        &[2, t],
    )
    .unwrap();
    let z = nvg_engine::Tensor::from_vec(
        (0..2 * t * grid.bits())
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect(),
        &[2, t, grid.bits()],
    )
    .unwrap();
    let outputs = |p: &std::collections::BTreeMap<String, nvg_engine::Tensor>| {
        let g = Generator::from_weights(WeightMap::new("test", p.clone())).unwrap();
        let c = g.content.forward(&canvas, &labels, &[0, 3], 2, None).unwrap();
        let v = g
            .structure
            .forward(&z, &[0.3, 0.8], &canvas, &labels, &[0, 3], 2, None)
            .unwrap();
        (
            g.config.position_embedding,
            c.x0_hat.to_f32_vec().unwrap(),
            v.to_f32_vec().unwrap(),
        )
    };
    let mut zeroed = params.clone();
    for n in ["content_pos_embed", "structure_pos_embed"] {
        zeroed.insert(
            n.into(),
            nvg_engine::Tensor::zeros(params[n].dims(), nvg_engine::DType::F32, nvg_engine::Device::Cpu).unwrap(),
        );
    }
    let (p0, c0, v0) = outputs(&plain);
    let (pz, cz, vz) = outputs(&zeroed);
    let (pd, cd, vd) = outputs(&params);
    assert_eq!((p0, pz, pd), (false, true, true));
    assert_eq!((&c0, &v0), (&cz, &vz));
    assert_ne!(c0, cd);
    assert_ne!(v0, vd);

    // One training step moves both tables.
    let (data, dir) = dataset("position", 6);
    let quantizer = Arc::new(Quantizer::synthetic(grid, VOCAB, CHANNELS, 5));
    let mut state = TrainState::new(&cfg, None, 4, 0.99).unwrap();
    let ckpt = dir.join("pos.safetensors");
    train(&mut state, data, quantizer, &settings(3, 1, 1), &ckpt, |_| {}).unwrap();
    for n in ["content_pos_embed", "structure_pos_embed"] {
        assert_ne!(
            state.params[n].to_f32_vec().unwrap(),
            params[n].to_f32_vec().unwrap(),
            "{n} did not move"
        );
    }

    // --init from a plain model: its tensors kept, the tables drawn; a table model needs the option.
    let plain_file = dir.join("plain.safetensors");
    nvg_engine::io::safetensors::save(&plain_file, plain.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    let grown = TrainState::new(&cfg, Some(&plain_file), 9, 0.99).unwrap();
    assert_eq!(
        grown.params.keys().collect::<Vec<_>>(),
        params.keys().collect::<Vec<_>>()
    );
    for (n, x) in &plain {
        assert_eq!(x.to_f32_vec().unwrap(), grown.params[n].to_f32_vec().unwrap(), "{n}");
    }
    let drawn = initial_parameters(&cfg, 9).unwrap();
    assert_eq!(
        grown.params["structure_pos_embed"].to_f32_vec().unwrap(),
        drawn["structure_pos_embed"].to_f32_vec().unwrap()
    );
    // A file that lacks a tensor is refused before training, not completed with random values.
    let mut holed = plain.clone();
    holed.remove("x0_head.linear.bias");
    let holed_file = dir.join("holed.safetensors");
    nvg_engine::io::safetensors::save(&holed_file, holed.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    let err = TrainState::new(&cfg, Some(&holed_file), 9, 0.99).err().unwrap();
    assert!(format!("{err:#}").contains("x0_head.linear.bias"), "{err:#}");
    let mut other_classes = cfg.clone();
    other_classes.num_classes += 1;
    let err = TrainState::new(&other_classes, Some(&plain_file), 9, 0.99)
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("6 classes"), "{err:#}");
    let table_file = dir.join("tables.safetensors");
    nvg_engine::io::safetensors::save(&table_file, params.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    let err = TrainState::new(&plain_cfg, Some(&table_file), 9, 0.99).err().unwrap();
    assert!(format!("{err:#}").contains("configured without them"), "{err:#}");
}

/// `--init-classes`: a model of finer classes starts from a trained one, each new class from the
/// embedding rows of the class it refines; everything else is the --init model's.
#[test]
fn a_model_of_other_classes_starts_from_the_mapped_class_rows() {
    let coarse = config();
    let coarse_params = initial_parameters(&coarse, 3).unwrap();
    let dir = temp_dir("class-map");
    let file = dir.join("coarse.safetensors");
    nvg_engine::io::safetensors::save(&file, coarse_params.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    let map = [0usize, 0, 1, 4, 4, 4, 2];
    let mut fine = coarse.clone();
    fine.num_classes = map.len();
    let load = |rows: Option<&[usize]>, cfg: &GeneratorConfig| {
        TrainState::from_weights(
            cfg,
            WeightMap::generator(&file, nvg::weights::WeightSet::Raw).unwrap(),
            rows,
            9,
            0.99,
        )
    };
    let state = load(Some(&map), &fine).unwrap();
    state.generator().unwrap();
    for (n, x) in &coarse_params {
        let got = state.params[n].to_f32_vec().unwrap();
        let want = x.to_f32_vec().unwrap();
        if !n.ends_with("class_embed.weight") {
            assert_eq!(got, want, "{n} changed");
            continue;
        }
        let width = x.dims()[1];
        assert_eq!(state.params[n].dims(), &[map.len() + 1, width], "{n}");
        let row = |v: &[f32], r: usize| v[r * width..(r + 1) * width].to_vec();
        for (c, &from) in map.iter().enumerate() {
            assert_eq!(
                row(&got, c),
                row(&want, from),
                "{n}: class {c} should start from class {from}"
            );
        }
        assert_eq!(row(&got, map.len()), row(&want, CLASSES), "{n}: the null row");
    }
    // Wrong maps, and other classes without a map, are refused with the reason.
    let err = |r: Result<TrainState, anyhow::Error>| format!("{:#}", r.err().unwrap());
    let e = err(load(Some(&map[..3]), &fine));
    assert!(e.contains("3 entries") && e.contains("7 classes"), "{e}");
    let e = err(load(Some(&[0, 1, 5, 0, 0, 0, 0]), &fine));
    assert!(e.contains("sends class 2 to 5") && e.contains("classes 0..4"), "{e}");
    let e = err(load(None, &fine));
    assert!(e.contains("5 classes") && e.contains("--init-classes"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
