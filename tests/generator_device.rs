//! The NVG generator on the CUDA backend's emulated device (`Device::CudaEmu`: the CUDA kernels' host
//! build, launched through the same path as on a GPU) against the same generator on the CPU: the
//! content forward at first, middle and last stage and a structure-flow step, with the fixture weights.
//! This is the whole-model check of the kernels; a GPU run (tools/gpu-check.sh) adds `Device::Cuda`.
//!
//! Tolerance: both backends compute in f32 but sum in different orders (SIMT GEMM tiles vs the CPU's
//! blocked GEMM; online vs blocked softmax) through two blocks of the model: |Δ| ≤ 1e-4 + 1e-4·|cpu|
//! (measured: printed by the test).

use nvg::model::Generator;
use nvg::weights::{WeightMap, WeightSet};
use nvg_engine::rng::{Distribution, RngStream};
use nvg_engine::{Device, Tensor};
use nvg_testkit::{Fixtures, assert_close, errors};

fn load(fx: &Fixtures, device: Device) -> Generator {
    let w = WeightMap::generator(&fx.path("generator.safetensors"), WeightSet::Raw).unwrap();
    let tensors = w
        .into_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(device).unwrap()))
        .collect();
    Generator::from_weights(WeightMap::new("fixture generator", tensors)).unwrap()
}

fn randn(dims: &[usize], stream: u64, scale: f32) -> Tensor {
    let mut v = vec![0.0f32; dims.iter().product()];
    RngStream::new(7, stream).fill(Distribution::Normal, 0, &mut v);
    Tensor::from_vec(v.iter().map(|x| x * scale).collect::<Vec<_>>(), dims).unwrap()
}

#[test]
fn content_and_structure_forwards_on_the_emulated_device_match_the_cpu() {
    let fx = Fixtures::open();
    let cpu = load(&fx, Device::Cpu);
    let dev = load(&fx, Device::CudaEmu);
    let cfg = cpu.config.clone();
    let grid = cfg.grid;
    let (t, c, bits) = (grid.tokens(), cfg.latent_channels, grid.bits());
    // One image: a random leaf order (any permutation is a valid balanced structure map).
    let rng = RngStream::new(3, 3);
    let mut leaf: Vec<i64> = (0..t as i64).collect();
    for i in (1..t).rev() {
        leaf.swap(i, rng.words(i as u64)[0] as usize % (i + 1));
    }
    let labels_at =
        |s: usize| Tensor::from_vec(leaf.iter().map(|l| l >> (bits - s)).collect::<Vec<_>>(), &[1, t]).unwrap();
    let canvas = randn(&[1, t, c], 1, 0.3);
    let classes = [7usize];
    let mut worst = 0.0f32;
    for stage in [0, grid.stages() / 2, grid.stages() - 1] {
        let labels = labels_at(stage);
        let want = cpu.content.forward(&canvas, &labels, &classes, stage, None).unwrap();
        let got = dev
            .content
            .forward(
                &canvas.to_device(Device::CudaEmu).unwrap(),
                &labels,
                &classes,
                stage,
                None,
            )
            .unwrap();
        assert_eq!(got.x0_hat.device(), Device::CudaEmu);
        for (what, g, w) in [
            ("x0_hat", &got.x0_hat, &want.x0_hat),
            ("logits", &got.logits, &want.logits),
        ] {
            assert_close(g, w, 1e-4, 1e-4, &format!("content {what} at stage {stage}"));
            worst = worst.max(errors(&g.to_f32_vec().unwrap(), &w.to_f32_vec().unwrap(), 1.0).1);
        }
    }
    let stage = 3;
    let z = randn(&[1, t, bits], 2, 1.0);
    let canvas_next = randn(&[1, t, c], 4, 0.3);
    let want = cpu
        .structure
        .forward(&z, &[0.4], &canvas_next, &labels_at(stage), &classes, stage, None)
        .unwrap();
    let on = |x: &Tensor| x.to_device(Device::CudaEmu).unwrap();
    let got = dev
        .structure
        .forward(
            &on(&z),
            &[0.4],
            &on(&canvas_next),
            &labels_at(stage),
            &classes,
            stage,
            None,
        )
        .unwrap();
    assert_close(&got, &want, 1e-4, 1e-4, "structure velocity");
    worst = worst.max(errors(&got.to_f32_vec().unwrap(), &want.to_f32_vec().unwrap(), 1.0).1);
    eprintln!("largest difference relative to max(|cpu|, 1): {worst:e}");
}

/// The whole sampler with the official content settings (guidance, top-p, temperature) on the
/// emulated device against the CPU: every stage's labels and codes must agree exactly and the canvas
/// within the forward tolerance, and so must every stage's class evidence. To keep the emulator fast
/// (each forward takes seconds there): one image, no structure guidance (the content pass covers the
/// guided path) and one Euler step per flow stage; the device code does not depend on either.
#[test]
fn whole_generation_on_the_emulated_device_matches_the_cpu() {
    use nvg::sampler::{ImageNoise, SamplerConfig, generate};
    use nvg::tokenizer::Tokenizer;
    let fx = Fixtures::open();
    let (cpu, dev) = (load(&fx, Device::Cpu), load(&fx, Device::CudaEmu));
    let grid = cpu.config.grid;
    let tok_path = fx.path("tokenizer.safetensors");
    let tok_cpu = Tokenizer::load(&tok_path, grid.side()).unwrap();
    let tok_dev = Tokenizer::load_on(&tok_path, grid.side(), Device::CudaEmu).unwrap();
    assert_eq!(dev.device(), Device::CudaEmu);
    assert_eq!(tok_dev.quantizer.device(), Device::CudaEmu);
    let mut cfg = SamplerConfig::official(&grid);
    cfg.structure_steps = 1;
    cfg.structure_cfg = None;
    cfg.class_evidence = true; // the device's log-softmax and gather at the drawn codes (`--best-of`)
    let classes = [3];
    let noise: Vec<ImageNoise> = (0..classes.len() as u64)
        .map(|i| ImageNoise::for_image(&grid, 11, i))
        .collect();
    let want = generate(&cpu, &tok_cpu.quantizer, &cfg, &classes, &noise).unwrap();
    let got = generate(&dev, &tok_dev.quantizer, &cfg, &classes, &noise).unwrap();
    assert_eq!(got.canvas.device(), Device::CudaEmu);
    for (s, (g, w)) in got.stages.iter().zip(&want.stages).enumerate() {
        assert_eq!(
            g.labels.to_i64_vec().unwrap(),
            w.labels.to_i64_vec().unwrap(),
            "labels at stage {s}"
        );
        assert_eq!(
            g.codes.to_i64_vec().unwrap(),
            w.codes.to_i64_vec().unwrap(),
            "codes at stage {s}"
        );
        assert_close(&g.canvas, &w.canvas, 1e-4, 1e-4, &format!("canvas at stage {s}"));
    }
    let (ge, we) = (got.class_evidence.unwrap(), want.class_evidence.unwrap());
    for (s, (g, w)) in ge[0].iter().zip(&we[0]).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "class evidence at stage {s}: {g} against {w}"
        );
    }
    eprintln!(
        "final canvas: largest difference relative to max(|cpu|, 1): {:e}",
        errors(
            &got.canvas.to_f32_vec().unwrap(),
            &want.canvas.to_f32_vec().unwrap(),
            1.0
        )
        .1
    );
    // A generator and a quantiser on different devices are refused, not silently mixed.
    let e = generate(&cpu, &tok_dev.quantizer, &cfg, &classes, &noise)
        .err()
        .expect("mixed devices must fail")
        .to_string();
    assert!(e.contains("cuda-emu") && e.contains("cpu"), "{e}");
}

/// The tokenizer's decoder (convolutions, group norms, upsampling, the mid-block attention) on the
/// emulated device against the CPU, on a 4x4 latent grid (64-pixel images) to keep the emulator fast.
#[test]
fn tokenizer_decoder_on_the_emulated_device_matches_the_cpu() {
    use nvg::tokenizer::Tokenizer;
    let fx = Fixtures::open();
    let path = fx.path("tokenizer.safetensors");
    let side = 4;
    let cpu = Tokenizer::load(&path, side).unwrap();
    let dev = Tokenizer::load_on(&path, side, Device::CudaEmu).unwrap();
    let latent = randn(&[1, side * side, cpu.config.latent_channels], 9, 1.0);
    let want = cpu.decode(&latent).unwrap();
    let got = dev.decode(&latent.to_device(Device::CudaEmu).unwrap()).unwrap();
    assert_eq!(got.device(), Device::CudaEmu);
    assert_close(&got, &want, 1e-4, 1e-4, "decoded image");
    eprintln!(
        "decoded image: largest difference relative to max(|cpu|, 1): {:e}",
        errors(&got.to_f32_vec().unwrap(), &want.to_f32_vec().unwrap(), 1.0).1
    );
}
