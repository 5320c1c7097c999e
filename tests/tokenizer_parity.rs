//! Parity of the tokenizer with the official implementation (fixture `tokenizer_io.safetensors`):
//! encoder, clustering, multi-stage quantisation, codes → latent, decoder. Sizes come from the fixture
//! files and `manifest.json`.
//!
//! Labels and codes must match exactly. As the manifest advises, the discrete steps are fed the fixture's
//! own encoder output (`encoder_f`), so an encoder difference cannot flip a near-tie downstream; the
//! encoder is compared separately. Floats: both sides are f32 convolutions with different summation
//! orders; see each tolerance.

use nvg::tokenizer::{Tokenizer, TokenizerConfig, clustering};
use nvg_engine::Tensor;
use nvg_testkit::{Fixtures, assert_close, assert_same_ints};

fn tokenizer(fx: &Fixtures) -> Tokenizer {
    let io = fx.file("tokenizer_io.safetensors");
    let side = io.get("encoder_f").dims()[2];
    Tokenizer::load(&fx.path("tokenizer.safetensors"), side).unwrap()
}

fn usize_of(v: &serde_json::Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not an integer")) as usize
}

/// `[B, C, side, side]` → token-major `[B, T, C]`.
fn token_major(f: &Tensor) -> Tensor {
    let [b, c, h, w] = f.dims_n::<4>("token_major").unwrap();
    f.reshape(&[b, c, h * w])
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
}

/// `[B, S, T]` i64 tensor → `[B][S][T]`.
fn nested(t: &Tensor) -> Vec<Vec<Vec<i64>>> {
    let [b, s, n] = t.dims_n::<3>("nested").unwrap();
    let v = t.to_i64_vec().unwrap();
    (0..b)
        .map(|i| {
            (0..s)
                .map(|j| v[(i * s + j) * n..(i * s + j + 1) * n].to_vec())
                .collect()
        })
        .collect()
}

#[test]
fn config_read_off_the_weights_matches_the_manifest() {
    let fx = Fixtures::open();
    let tok = tokenizer(&fx);
    let p = &fx.manifest["tokenizer_config"]["params"];
    let want = TokenizerConfig {
        base_channels: usize_of(&p["base_ch"]),
        channel_mult: p["encoder_ch_mult"].as_array().unwrap().iter().map(usize_of).collect(),
        res_blocks: usize_of(&p["num_res_blocks"]),
        latent_channels: usize_of(&p["embed_dim"]),
        codebook_size: usize_of(&p["n_embed"]),
    };
    assert_eq!(tok.config, want);
    assert_eq!(tok.config.downsample(), usize_of(&p["downsampled_size"]));
}

#[test]
fn encoder_matches_the_official_features() {
    let fx = Fixtures::open();
    let tok = tokenizer(&fx);
    let io = fx.file("tokenizer_io.safetensors");
    let f = tok.encode(&io.get("images")).unwrap();
    // ~15 convolutions and group norms in f32 on both sides, different summation orders: measured max
    // error 1.1e-5 on values up to 3.3; the bound leaves a 4x margin.
    assert_close(&f, &io.get("encoder_f"), 5e-5, 1e-4, "encoder output");
}

#[test]
fn clustering_reproduces_the_official_structure_maps() {
    let fx = Fixtures::open();
    let tok = tokenizer(&fx);
    let grid = tok.grid();
    let io = fx.file("tokenizer_io.safetensors");
    for (input, want) in [("clustering_features", "clustering_labels"), ("encoder_f", "labels")] {
        let f = io.get(input);
        let f = if f.rank() == 4 { token_major(&f) } else { f };
        let (t, c) = (grid.tokens(), f.dims()[2]);
        let got: Vec<i64> = f
            .to_f32_vec()
            .unwrap()
            .chunks(t * c)
            .flat_map(|img| clustering::cluster(img, t, c).unwrap().into_iter().flatten())
            .collect();
        let got = Tensor::from_vec(got, io.get(want).dims()).unwrap();
        assert_same_ints(&got, &io.get(want), &format!("labels from {input}"));
        // Invariants: nesting and balanced clusters.
        let labels = nested(&got);
        for img in &labels {
            for s in 0..grid.stages() {
                for (l, &lab) in img[s].iter().enumerate() {
                    assert_eq!(lab, img[grid.bits()][l] >> (grid.bits() - s));
                }
                for k in 0..grid.clusters(s) as i64 {
                    assert_eq!(img[s].iter().filter(|&&x| x == k).count(), grid.cluster_size(s));
                }
            }
        }
    }
}

#[test]
fn quantisation_reproduces_codes_canvases_and_the_final_latent() {
    let fx = Fixtures::open();
    let tok = tokenizer(&fx);
    let grid = tok.grid();
    let io = fx.file("tokenizer_io.safetensors");
    let tokens = tok.tokenize(&io.get("encoder_f")).unwrap();
    let labels = Tensor::from_vec(
        tokens.labels.iter().flatten().flatten().copied().collect(),
        io.get("labels").dims(),
    )
    .unwrap();
    assert_same_ints(&labels, &io.get("labels"), "labels");
    let q = &tokens.quantized;
    let per_token: Vec<&Tensor> = q.codes_per_token.iter().collect();
    let per_token = Tensor::stack(&per_token, 1).unwrap();
    assert_same_ints(&per_token, &io.get("codes_per_token"), "codes per token");
    for (s, codes) in q.codes.iter().enumerate() {
        assert_same_ints(
            codes,
            &io.get(&format!("codes_per_cluster.s{s}")),
            &format!("codes of stage {s}"),
        );
    }
    // nvg_input [B, S, T, 34]: canvases, then the code and the label of every token as floats.
    let nvg_input = io.get("nvg_input");
    let c = tok.config.latent_channels;
    // Sums of up to 9 Phi increments (each a 288-term convolution): measured max error 2.4e-7.
    assert_close(
        &q.canvases,
        &nvg_input.narrow(3, 0, c).unwrap().contiguous().unwrap(),
        5e-6,
        2e-5,
        "canvases",
    );
    let as_int = |ch: usize| {
        nvg_input
            .narrow(3, ch, 1)
            .unwrap()
            .squeeze(3)
            .unwrap()
            .to_dtype(nvg_engine::DType::I64)
            .unwrap()
    };
    assert_same_ints(&as_int(c), &per_token, "nvg_input code channel");
    assert_same_ints(&as_int(c + 1), &labels, "nvg_input label channel");
    assert_close(&q.latent, &io.get("f_hat_final"), 5e-6, 2e-5, "final latent");
    // codes -> latent rebuilds exactly what quantisation accumulated.
    let rebuilt = tok.quantizer.latent_from_codes(&per_token).unwrap();
    assert_eq!(
        rebuilt.to_f32_vec().unwrap(),
        q.latent.to_f32_vec().unwrap(),
        "latent_from_codes is bit-identical"
    );
    assert_eq!(grid.stages(), q.codes.len());
}

#[test]
fn decoder_matches_the_official_images() {
    let fx = Fixtures::open();
    let tok = tokenizer(&fx);
    let io = fx.file("tokenizer_io.safetensors");
    let img = tok.decode(&io.get("f_hat_final")).unwrap();
    // Pixels in [-1, 1] after ~20 convolutions and group norms: measured max error 2.3e-5 (about 0.003 of
    // one 8-bit level); the bound leaves a 4x margin.
    assert_close(&img, &io.get("decoded_image"), 1e-4, 1e-4, "decoded image");
}
