//! Tokenizer training (`nvg::tokenizer::train`): a tiny f2 tokenizer on an 8×8 latent grid (7 stages)
//! learns to reconstruct a handful of images, its checkpoint resumes bit for bit, and its exported
//! weights load as an ordinary tokenizer.

use nvg::config::Grid;
use nvg::image::ImageSet;
use nvg::tokenizer::train::{
    TokenizerTrainSettings, TokenizerTrainState, TrainedPart, initial_weights, reconstruction_psnr,
};
use nvg::tokenizer::{Tokenizer, TokenizerConfig};
use nvg_testkit::fresh_dir;

fn config() -> TokenizerConfig {
    TokenizerConfig {
        base_channels: 32,
        channel_mult: vec![1, 2],
        res_blocks: 1,
        latent_channels: 8,
        codebook_size: 64,
    }
}

/// Eight 16×16 test images: smooth colour ramps with a bright square at a different place in each.
fn images() -> ImageSet {
    let (n, r) = (8, 16);
    let mut px = Vec::with_capacity(n * r * r * 3);
    for i in 0..n {
        for y in 0..r {
            for x in 0..r {
                let inside = (x / 4 == i % 4) && (y / 8 == i / 4);
                let rgb = if inside {
                    [250, 240, 30]
                } else {
                    [(x * 15) as u8, (y * 15) as u8, (40 + 20 * i) as u8]
                };
                px.extend_from_slice(&rgb);
            }
        }
    }
    ImageSet::from_pixels(r, px, vec![0; n]).unwrap()
}

fn settings(steps: u64) -> TokenizerTrainSettings {
    TokenizerTrainSettings {
        lr: 2e-3,
        warmup: 5,
        steps,
        batch: 8,
        clip: 1.0,
        seed: 3,
    }
}

#[test]
fn initial_weights_follow_the_pytorch_defaults() {
    let w = initial_weights(&config(), 1).unwrap();
    let v = |n: &str| w[n].to_f32_vec().unwrap();
    assert!(v("encoder.norm_out.norm.weight").iter().all(|&x| x == 1.0));
    assert!(v("encoder.norm_out.norm.bias").iter().all(|&x| x == 0.0));
    let code_bound = 1.0 / 64.0;
    assert!(v("quantize.embedding.weight").iter().all(|x| x.abs() <= code_bound));
    // conv_in: fan-in 3·3·3 = 27.
    let bound = 1.0 / 27f32.sqrt();
    let conv = v("encoder.conv_in.conv.weight");
    assert!(conv.iter().all(|x| x.abs() <= bound) && conv.iter().any(|x| x.abs() > 0.5 * bound));
    assert!(v("encoder.conv_in.conv.bias").iter().all(|x| x.abs() <= bound));
    assert_eq!(
        initial_weights(&config(), 1).unwrap()["encoder.conv_in.conv.weight"]
            .to_f32_vec()
            .unwrap(),
        conv
    );
}

#[test]
fn training_reduces_the_reconstruction_error_and_resumes_exactly() {
    let data = images();
    let batch = data.batch(&(0..8).collect::<Vec<_>>()).unwrap();
    let grid = Grid::new(8).unwrap();
    let s = settings(40);
    let mut state = TokenizerTrainState::new(&config(), grid, s.seed).unwrap();
    let psnr_before = reconstruction_psnr(&state.tokenizer().unwrap(), &batch).unwrap();
    let mut first = None;
    let mut last = None;
    for _ in 0..30 {
        let (losses, norm) = state.train_step(&batch, &s).unwrap();
        assert!(losses.total.is_finite() && norm.is_finite());
        first.get_or_insert(losses);
        last = Some(losses);
    }
    let (first, last) = (first.unwrap(), last.unwrap());
    let psnr_after = reconstruction_psnr(&state.tokenizer().unwrap(), &batch).unwrap();
    eprintln!(
        "loss {:.4} → {:.4}; PSNR {psnr_before:.2} → {psnr_after:.2} dB",
        first.total, last.total
    );
    assert!(
        last.l1 + last.mse < 0.6 * (first.l1 + first.mse),
        "reconstruction loss {first:?} → {last:?}"
    );
    assert!(
        psnr_after > psnr_before + 3.0,
        "PSNR {psnr_before:.2} → {psnr_after:.2} dB"
    );

    // Checkpoint and resume: the next step is bit-identical.
    let dir = fresh_dir("tokenizer_training", "resume");
    let ckpt = dir.join("last.safetensors");
    state.save(&ckpt, &s).unwrap();
    let mut resumed = TokenizerTrainState::load(&ckpt).unwrap();
    assert_eq!(resumed.step, state.step);
    let (a, _) = state.train_step(&batch, &s).unwrap();
    let (b, _) = resumed.train_step(&batch, &s).unwrap();
    assert_eq!(a, b, "losses after resuming");
    for (name, t) in &state.params {
        assert_eq!(
            t.to_f32_vec().unwrap(),
            resumed.params[name].to_f32_vec().unwrap(),
            "{name} after resuming"
        );
    }

    // The exported weights are an ordinary tokenizer file.
    let path = dir.join("tokenizer.safetensors");
    state.export(&path).unwrap();
    let tok = Tokenizer::load_for_resolution(&path, 16).unwrap();
    assert_eq!(tok.config, config());
    assert_eq!(tok.grid(), grid);
    let p = reconstruction_psnr(&tok, &batch).unwrap();
    let q = reconstruction_psnr(&state.tokenizer().unwrap(), &batch).unwrap();
    assert_eq!(p, q, "the exported tokenizer reconstructs like the training state");
}

/// Every stage's codes and structure maps of `batch` under the state's tokenizer.
fn codes_of(state: &TokenizerTrainState, batch: &nvg_engine::Tensor) -> (Vec<Vec<i64>>, Vec<Vec<Vec<i64>>>) {
    let tok = state.tokenizer().unwrap();
    let tokens = tok.tokenize(&tok.encode(batch).unwrap()).unwrap();
    let codes = tokens.quantized.codes.iter().map(|c| c.to_i64_vec().unwrap()).collect();
    (codes, tokens.labels)
}

#[test]
fn decoder_only_training_keeps_the_codes_and_sharpens_the_reconstruction() {
    let data = images();
    let batch = data.batch(&(0..8).collect::<Vec<_>>()).unwrap();
    let grid = Grid::new(8).unwrap();
    let s = settings(40);
    // A briefly trained tokenizer, exported as `nvg train-tokenizer` writes it.
    let mut whole = TokenizerTrainState::new(&config(), grid, s.seed).unwrap();
    for _ in 0..10 {
        whole.train_step(&batch, &s).unwrap();
    }
    let dir = fresh_dir("tokenizer_training", "decoder_only");
    let path = dir.join("tokenizer.safetensors");
    whole.export(&path).unwrap();

    let mut dec = TokenizerTrainState::from_tokenizer_file(&path, 16, TrainedPart::Decoder).unwrap();
    assert_eq!((dec.config.clone(), dec.grid, dec.step), (config(), grid, 0));
    let codes_before = codes_of(&dec, &batch);
    assert_eq!(
        codes_before,
        codes_of(&whole, &batch),
        "the file reproduces the exported tokenizer"
    );
    let psnr_before = reconstruction_psnr(&dec.tokenizer().unwrap(), &batch).unwrap();
    for _ in 0..20 {
        dec.train_step(&batch, &s).unwrap();
    }
    let psnr_after = reconstruction_psnr(&dec.tokenizer().unwrap(), &batch).unwrap();
    eprintln!("decoder only: PSNR {psnr_before:.2} → {psnr_after:.2} dB");
    assert!(
        psnr_after > psnr_before + 1.0,
        "PSNR {psnr_before:.2} → {psnr_after:.2} dB"
    );
    let mut decoder_changed = 0;
    for (name, t) in &dec.params {
        let (now, then) = (t.to_f32_vec().unwrap(), whole.params[name].to_f32_vec().unwrap());
        if name.starts_with("decoder.") {
            decoder_changed += usize::from(now != then);
        } else {
            assert_eq!(now, then, "{name} is frozen in a decoder-only run");
        }
    }
    let decoder_tensors = dec.params.keys().filter(|n| n.starts_with("decoder.")).count();
    assert!(
        decoder_changed * 10 >= decoder_tensors * 9,
        "{decoder_changed} of {decoder_tensors} decoder tensors changed"
    );
    assert_eq!(
        codes_of(&dec, &batch),
        codes_before,
        "a decoder-only run keeps every code"
    );

    // The checkpoint keeps the part, and the optimiser state covers the decoder alone.
    let ckpt = dir.join("last.safetensors");
    dec.save(&ckpt, &s).unwrap();
    let mut resumed = TokenizerTrainState::load(&ckpt).unwrap();
    assert_eq!(resumed.part, TrainedPart::Decoder);
    let (a, _) = dec.train_step(&batch, &s).unwrap();
    let (b, _) = resumed.train_step(&batch, &s).unwrap();
    assert_eq!(a, b, "losses after resuming");
    assert_eq!(
        dec.params["decoder.conv_out.conv.weight"].to_f32_vec().unwrap(),
        resumed.params["decoder.conv_out.conv.weight"].to_f32_vec().unwrap()
    );
    // The exported tokenizer has a new decoder but the same codes fingerprint, so it reads the
    // datasets of the tokenizer it came from (and those written before the fingerprint left the
    // decoder out, which hold the fingerprint of all the weights).
    let tuned_path = dir.join("tuned.safetensors");
    dec.export(&tuned_path).unwrap();
    let (old, tuned) = (
        Tokenizer::load(&path, 8).unwrap(),
        Tokenizer::load(&tuned_path, 8).unwrap(),
    );
    assert_eq!(tuned.codes_hash, old.codes_hash);
    assert_ne!(tuned.hash, old.hash);
    assert!(tuned.assigns_codes_of(old.codes_hash) && tuned.assigns_codes_of(tuned.hash));
    assert!(
        !tuned.assigns_codes_of(old.hash),
        "the old file's full fingerprint names another decoder"
    );
    let other = TokenizerTrainState::new(&config(), grid, s.seed + 1).unwrap();
    other.export(&dir.join("other.safetensors")).unwrap();
    let other = Tokenizer::load(&dir.join("other.safetensors"), 8).unwrap();
    assert!(!tuned.assigns_codes_of(other.codes_hash) && !tuned.assigns_codes_of(other.hash));

    // A whole-tokenizer checkpoint says so.
    let whole_ckpt = dir.join("whole.safetensors");
    whole.save(&whole_ckpt, &s).unwrap();
    assert_eq!(TokenizerTrainState::load(&whole_ckpt).unwrap().part, TrainedPart::Whole);

    // A file that is not a whole tokenizer is refused with the missing tensor's name.
    let mut partial = whole.params.clone();
    partial.remove("decoder.conv_out.conv.weight");
    let bad = dir.join("partial.safetensors");
    nvg_engine::io::safetensors::save(&bad, partial.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
    let err = TokenizerTrainState::from_tokenizer_file(&bad, 16, TrainedPart::Decoder)
        .err()
        .expect("a partial tokenizer file");
    assert!(format!("{err:#}").contains("decoder.conv_out.conv.weight"), "{err:#}");
}

#[test]
fn batches_are_epoch_permutations() {
    let (n, b) = (10, 3);
    // Three batches per epoch (one image dropped), each epoch a permutation.
    let epoch: Vec<usize> = (0..3)
        .flat_map(|s| TokenizerTrainState::batch_ids(n, b, 7, s))
        .collect();
    let mut sorted = epoch.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 9, "{epoch:?}");
    let next: Vec<usize> = (3..6)
        .flat_map(|s| TokenizerTrainState::batch_ids(n, b, 7, s))
        .collect();
    assert_ne!(epoch, next, "a new permutation every epoch");
    assert_eq!(
        TokenizerTrainState::batch_ids(n, b, 7, 4),
        TokenizerTrainState::batch_ids(n, b, 7, 4)
    );
}

/// `nvg train-tokenizer --device`: two steps with the weights on `CudaEmu` (the CUDA kernels' host
/// build: strided convolutions, group norm, upsampling and the quantiser's straight-through path, all
/// differentiated on the device) follow the CPU: the same losses and gradient norms to f32 rounding,
/// weights that stay on the device and agree after the steps, and an export that loads as a tokenizer.
/// One 8-pixel image (a 4×4 grid) keeps the emulation to about a minute.
///
/// Weights: AdamW's first steps move every element by about ±lr whatever the gradient's size, so an
/// element whose gradient is near zero may step the other way on the other device (measured once:
/// 1.0e-4 after two steps on 16-pixel images at these rates). The check is therefore that the mean
/// difference is at rounding level and no element differs by more than the two steps' full size.
#[test]
fn training_on_a_device_follows_the_cpu() {
    use nvg_engine::Device;
    let (n, r) = (1, 8);
    let px: Vec<u8> = (0..n * r * r * 3).map(|i| ((i * 37 + i / 5) % 251) as u8).collect();
    let batch = ImageSet::from_pixels(r, px, vec![0; n]).unwrap().batch(&[0]).unwrap();
    let grid = Grid::new(4).unwrap();
    // No warmup: both steps move the weights (a warmup's first learning rate is 0).
    let s = TokenizerTrainSettings {
        warmup: 0,
        ..settings(10)
    };
    let mut cpu = TokenizerTrainState::new(&config(), grid, s.seed).unwrap();
    let mut dev = TokenizerTrainState::new(&config(), grid, s.seed).unwrap();
    dev.to_device(Device::CudaEmu).unwrap();
    for step in 0..2 {
        let (a, na) = cpu.train_step(&batch, &s).unwrap();
        let (b, nb) = dev.train_step(&batch, &s).unwrap();
        let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * x.abs().max(1e-3);
        assert!(
            close(a.total, b.total) && close(a.l1, b.l1) && close(a.codebook, b.codebook),
            "step {step}: {a:?} on the CPU, {b:?} on the device"
        );
        assert!(close(na, nb), "step {step}: gradient norm {na} vs {nb}");
    }
    let (mut worst, mut sum, mut count) = (0.0f32, 0.0f64, 0usize);
    for (name, t) in &cpu.params {
        let d = &dev.params[name];
        assert_eq!(d.device(), Device::CudaEmu, "{name} left the device");
        for (p, q) in t.to_f32_vec().unwrap().iter().zip(&d.to_f32_vec().unwrap()) {
            worst = worst.max((p - q).abs());
            sum += (p - q).abs() as f64;
            count += 1;
        }
    }
    let mean = sum / count as f64;
    let full_steps = 2.0 * (s.schedule().lr(0) + s.schedule().lr(1));
    eprintln!(
        "weights after two steps on the device: mean difference {mean:e}, largest {worst:e} (bound {full_steps:e})"
    );
    assert!(mean <= 1e-6, "weights differ by {mean} on average");
    assert!(
        worst <= full_steps,
        "weights differ by {worst}, more than two full steps"
    );
    let dir = fresh_dir("tokenizer_training", "device");
    let out = dir.join("tokenizer.safetensors");
    dev.export(&out).unwrap();
    let tok = Tokenizer::load(&out, grid.side()).unwrap();
    assert_eq!(tok.config, config());
}
