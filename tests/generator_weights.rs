//! Loading generator weights: official prefixes, the EMA set, and clear errors for checkpoints that do
//! not fit (missing, mis-shaped, unexpected tensors; bad class ids; the wrong kind of file).

use nvg::model::Generator;
use nvg::sampler::{ImageNoise, SamplerConfig, generate};
use nvg::tokenizer::Quantizer;
use nvg::weights::WeightSet;
use nvg_engine::io::safetensors::{SafetensorsFile, save};
use nvg_engine::{DType, Device, Tensor};
use nvg_testkit::Fixtures;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nvg-weights-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tensors(path: &std::path::Path) -> BTreeMap<String, Tensor> {
    SafetensorsFile::open(path).unwrap().load_all().unwrap()
}

fn save_map(path: &std::path::Path, map: &BTreeMap<String, Tensor>) {
    save(path, map.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
}

fn load_err(path: &std::path::Path, set: WeightSet) -> String {
    match Generator::load(path, set) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_misshaped_and_unexpected_tensors_are_all_named_in_one_error() {
    let fx = Fixtures::open();
    let mut map = tensors(&fx.path("generator.safetensors"));
    map.remove("x0_head.linear.bias");
    let w = map["content_embed.weight"].dims().to_vec();
    map.insert(
        "content_embed.weight".into(),
        Tensor::zeros(&[w[0], w[1] - 1], DType::F32, Device::Cpu).unwrap(),
    );
    map.insert(
        "bogus.weight".into(),
        Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap(),
    );
    let dir = temp("broken");
    let path = dir.join("g.safetensors");
    save_map(&path, &map);
    let msg = load_err(&path, WeightSet::Raw);
    for needle in [
        "g.safetensors",
        "missing",
        "x0_head.linear.bias",
        "wrong shape",
        "content_embed.weight",
        "unexpected",
        "bogus.weight",
    ] {
        assert!(msg.contains(needle), "error does not mention `{needle}`:\n{msg}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn prefixed_files_load_the_raw_or_the_ema_set_on_request() {
    let fx = Fixtures::open();
    let raw = tensors(&fx.path("generator.safetensors"));
    let ema = tensors(&fx.path("generator_ema.safetensors"));
    // A Lightning-style layout: nvgformer.*, ema_model.nvgformer.*, and families that are not the generator.
    let mut map = BTreeMap::new();
    for (k, v) in &raw {
        map.insert(format!("nvgformer.{k}"), v.clone());
    }
    for (k, v) in &ema {
        map.insert(format!("ema_model.nvgformer.{k}"), v.clone());
    }
    map.insert(
        "first_stage_model.encoder.conv_in.conv.weight".into(),
        Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap(),
    );
    map.insert(
        "repa_encoder.cls_token".into(),
        Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap(),
    );
    let dir = temp("prefixed");
    let path = dir.join("lightning_layout.safetensors");
    save_map(&path, &map);
    // Loaded weights drive the forward pass: compare outputs on a fixed input against each set.
    let fx_in = fx.file("content_forward.safetensors");
    let (canvas, labels) = (fx_in.get("stage2.canvas"), fx_in.get("stage2.labels"));
    let classes = [3usize, 1000];
    let x0 = |g: &Generator| {
        g.content
            .forward(&canvas, &labels, &classes, 2, None)
            .unwrap()
            .x0_hat
            .to_f32_vec()
            .unwrap()
    };
    let want_raw = x0(&Generator::load(&fx.path("generator.safetensors"), WeightSet::Raw).unwrap());
    let want_ema = x0(&Generator::load(&fx.path("generator_ema.safetensors"), WeightSet::Raw).unwrap());
    assert_ne!(want_raw, want_ema, "the two sets should differ");
    assert_eq!(x0(&Generator::load(&path, WeightSet::Raw).unwrap()), want_raw);
    assert_eq!(x0(&Generator::load(&path, WeightSet::Ema).unwrap()), want_ema);
    // Asking for EMA weights from a file without them is an error naming the file.
    let msg = load_err(&fx.path("generator.safetensors"), WeightSet::Ema);
    assert!(msg.contains("generator.safetensors") && msg.contains("EMA"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_tokenizer_file_is_not_taken_for_a_generator() {
    let fx = Fixtures::open();
    let msg = load_err(&fx.path("tokenizer.safetensors"), WeightSet::Raw);
    assert!(msg.contains("not an NVG generator"), "{msg}");
    let msg = match Quantizer::load(&fx.path("generator.safetensors"), nvg::config::Grid::official()) {
        Ok(_) => panic!("a generator file loaded as a quantiser"),
        Err(e) => format!("{e:#}"),
    };
    assert!(msg.contains("codebook"), "{msg}");
}

#[test]
fn out_of_range_class_ids_are_errors_that_name_the_id() {
    let fx = Fixtures::open();
    let g = Generator::load(&fx.path("generator.safetensors"), WeightSet::Raw).unwrap();
    let null = g.config.null_class();
    let f = fx.file("content_forward.safetensors");
    let bad = null + 1;
    let err = match g
        .content
        .forward(&f.get("stage1.canvas"), &f.get("stage1.labels"), &[0, bad], 1, None)
    {
        Ok(_) => panic!("class {bad} accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&bad.to_string()) && err.contains("null class"), "{err}");
    let quant = Quantizer::load(&fx.path("tokenizer.safetensors"), g.config.grid).unwrap();
    let cfg = SamplerConfig::greedy(&g.config.grid, 1);
    let noise = vec![ImageNoise::for_image(&g.config.grid, 0, 0)];
    let err = match generate(&g, &quant, &cfg, &[5000], &noise) {
        Ok(_) => panic!("class 5000 accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("5000"), "{err}");
}
