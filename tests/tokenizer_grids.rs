//! Tokenizers other than the official f16 one: a small f8 tokenizer for 64×64 images on an 8×8 latent
//! grid (7 stages) loads from its weights alone and runs the whole pipeline with NVG's invariants.

use nvg::tokenizer::{Tokenizer, TokenizerConfig};
use nvg_engine::Tensor;
use nvg_engine::rng::{Distribution, RngStream};

#[test]
fn an_f8_tokenizer_on_an_8x8_grid_loads_from_its_weights_and_keeps_the_invariants() {
    let config = TokenizerConfig {
        base_channels: 32,
        channel_mult: vec![1, 2, 2, 2],
        res_blocks: 1,
        latent_channels: 8,
        codebook_size: 64,
    };
    assert_eq!(config.downsample(), 8);
    let weights = Tokenizer::synthetic_weights(&config, 5).unwrap();
    let dir = std::env::temp_dir().join(format!("nvg-f8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f8.safetensors");
    nvg_engine::io::safetensors::save(&path, weights.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();

    let tok = Tokenizer::load_for_resolution(&path, 64).unwrap();
    assert_eq!(tok.config, config, "configuration read off the weights");
    let grid = tok.grid();
    assert_eq!((grid.side(), grid.stages()), (8, 7));
    assert!(
        Tokenizer::load_for_resolution(&path, 48).is_err(),
        "48/8 = 6 is not a power of two"
    );

    let images = Tensor::random(&[3, 3, 64, 64], Distribution::Uniform, RngStream::new(1, 2), 0)
        .unwrap()
        .affine(2.0, -1.0)
        .unwrap();
    let f = tok.encode(&images).unwrap();
    assert_eq!(f.dims(), &[3, 8, 8, 8]);
    let tokens = tok.tokenize(&f).unwrap();
    for img in &tokens.labels {
        assert_eq!(img.len(), 7);
        for s in 0..7 {
            for (l, &lab) in img[s].iter().enumerate() {
                assert_eq!(lab, img[6][l] >> (6 - s), "labels nest");
            }
            for k in 0..1i64 << s {
                assert_eq!(img[s].iter().filter(|&&x| x == k).count(), 64 >> s, "balanced clusters");
            }
        }
    }
    let q = &tokens.quantized;
    let per_token: Vec<&Tensor> = q.codes_per_token.iter().collect();
    let rebuilt = tok
        .quantizer
        .latent_from_codes(&Tensor::stack(&per_token, 1).unwrap())
        .unwrap();
    assert_eq!(rebuilt.to_f32_vec().unwrap(), q.latent.to_f32_vec().unwrap());
    let out = tok.decode(&q.latent).unwrap();
    assert_eq!(out.dims(), &[3, 3, 64, 64]);
    assert!(out.to_f32_vec().unwrap().iter().all(|v| (-1.0..=1.0).contains(v)));
    std::fs::remove_dir_all(dir).unwrap();
}
