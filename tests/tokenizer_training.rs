//! Tokenizer training (`nvg::tokenizer::train`): a tiny f2 tokenizer on an 8×8 latent grid (7 stages)
//! learns to reconstruct a handful of images, its checkpoint resumes bit for bit, and its exported
//! weights load as an ordinary tokenizer.

use nvg::config::Grid;
use nvg::image::ImageSet;
use nvg::tokenizer::train::{TokenizerTrainSettings, TokenizerTrainState, initial_weights, reconstruction_psnr};
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
