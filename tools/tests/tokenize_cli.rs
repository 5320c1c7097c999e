//! `nvg tokenize` and `nvg reconstruct` end to end on an image folder made by the test (PNG and JPEG
//! images, an unreadable file, a non-image file), with the fixture tokenizer.

use nvg::dataset::{Dataset, Record};
use nvg::image::{Crop, RgbImage, decode_image, from_tensor, preprocess, read_image, to_tensor, write_png};
use nvg::structure_map::{ChildOrder, order_children};
use nvg::tokenizer::{Tokenizer, Tokens};
use nvg_engine::Tensor;
use nvg_testkit::Fixtures;
use std::path::{Path, PathBuf};

fn nvg(args: &[&str]) -> (bool, String, String) {
    nvg_testkit::run_program(env!("CARGO_BIN_EXE_nvg"), args)
}

fn asset(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/assets")
        .join(name)
}

/// A class folder tree: `cat/` with the two fixture images as PNG, `dog/` with the JPEG asset, an
/// unreadable `.png` and a text file.
fn image_folder(dir: &Path, fx: &Fixtures) -> Vec<(PathBuf, usize)> {
    let images = fx.file("tokenizer_io.safetensors").get("images");
    std::fs::create_dir_all(dir.join("cat")).unwrap();
    std::fs::create_dir_all(dir.join("dog")).unwrap();
    let mut files = Vec::new();
    for i in 0..2 {
        let p = dir.join("cat").join(format!("{i}.png"));
        write_png(
            &p,
            &from_tensor(&images.narrow(0, i, 1).unwrap().squeeze(0).unwrap()).unwrap(),
        )
        .unwrap();
        files.push((p, 0));
    }
    let jpg = dir.join("dog").join("a.jpg");
    std::fs::copy(asset("gradient_disc.jpg"), &jpg).unwrap();
    files.push((jpg, 1));
    std::fs::write(
        dir.join("dog").join("broken.png"),
        b"\x89PNG\r\n\x1a\nthis is not a png",
    )
    .unwrap();
    std::fs::write(dir.join("dog").join("notes.txt"), b"not an image").unwrap();
    files
}

/// The library's tokens of the files, each preprocessed as `nvg tokenize` does by default (centre crop at
/// 256) and then passed through `view`.
fn library_tokens(tok: &Tokenizer, files: &[(PathBuf, usize)], view: impl Fn(RgbImage) -> RgbImage) -> Tokens {
    let inputs: Vec<Tensor> = files
        .iter()
        .map(|(p, _)| to_tensor(&view(preprocess(&read_image(p).unwrap(), 256, Crop::Center).unwrap())).unwrap())
        .collect();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    tok.tokenize(&tok.encode(&Tensor::stack(&refs, 0).unwrap()).unwrap())
        .unwrap()
}

/// `record` holds image `i` of `tokens` (class, last-stage structure map, every stage's codes).
fn assert_record_is(record: &Record, tokens: &Tokens, i: usize, class: usize) {
    assert_eq!(record.class, class, "image {i}");
    assert_eq!(record.leaf_labels, *tokens.labels[i].last().unwrap(), "image {i}");
    assert_eq!(record.codes.len(), tokens.quantized.codes.len(), "image {i}: stages");
    for (s, codes) in tokens.quantized.codes.iter().enumerate() {
        assert_eq!(
            record.codes[s],
            codes.to_i64_vec().unwrap()[i << s..(i + 1) << s],
            "image {i} stage {s}"
        );
    }
}

#[test]
fn jpeg_decoding_matches_a_reference_decoder() {
    let ours = read_image(&asset("gradient_disc.jpg")).unwrap();
    let pillow = read_image(&asset("gradient_disc_jpg_decoded_by_pillow.png")).unwrap();
    assert_eq!((ours.width, ours.height), (300, 200));
    let diffs: Vec<i32> = ours
        .data
        .iter()
        .zip(&pillow.data)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .collect();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    // Decoders differ in IDCT rounding and chroma upsampling, by a level or two.
    assert!(
        mean < 1.0 && *diffs.iter().max().unwrap() <= 12,
        "mean {mean}, max {:?}",
        diffs.iter().max()
    );
    assert!(
        decode_image(b"GIF89a...")
            .unwrap_err()
            .to_string()
            .contains("not a PNG or JPEG")
    );
    let truncated = std::fs::read(asset("gradient_disc.jpg")).unwrap()[..400].to_vec();
    assert!(decode_image(&truncated).is_err());
}

#[test]
fn tokenize_writes_a_dataset_reports_unreadable_images_and_reconstruct_draws_the_stages() {
    let fx = Fixtures::open();
    let dir = std::env::temp_dir().join(format!("nvg-tokenize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files = image_folder(&dir.join("images"), &fx);
    let tokenizer = fx.path("tokenizer.safetensors");
    let out = dir.join("data.nvgtok");
    // `nvg tokenize` of the test's folder into `out`, with `extra` flags.
    let tokenize = |out: &Path, extra: &[&str]| {
        let images = dir.join("images");
        let mut args = vec![
            "tokenize",
            "--images",
            images.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        nvg(&args)
    };
    let (ok, stdout, stderr) = tokenize(&out, &["--batch", "2"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("3 records from 3 images of 2 classes"), "{stdout}");
    assert!(
        stdout.contains("skipped 1") && stdout.contains("broken.png"),
        "{stdout}"
    );
    assert!(
        stderr.contains("tokenize") && stderr.contains("images/s"),
        "progress line: {stderr}"
    );
    let skipped = std::fs::read_to_string(dir.join("data.nvgtok.skipped.txt")).unwrap();
    assert!(skipped.contains("broken.png") && !skipped.contains("notes.txt"));
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("data.nvgtok.classes.json")).unwrap()).unwrap();
    assert_eq!(classes["classes"], serde_json::json!(["cat", "dog"]));

    // The records equal what the library computes for the same preprocessing.
    let tok = Tokenizer::load(&tokenizer, 16).unwrap();
    let ds = Dataset::open(&out, Some(tok.codes_hash)).unwrap();
    assert_eq!(ds.len(), 3);
    let tokens = library_tokens(&tok, &files, |img| img);
    for (i, (_, class)) in files.iter().enumerate() {
        let r = ds.record(i).unwrap();
        assert_record_is(&r, &tokens, i, *class);
    }

    // --child-order outside-first: the same clusters and codes under the renamed leaves
    // (nvg::structure_map::order_children, whose rule its unit test checks).
    let outside = dir.join("outside.nvgtok");
    let (ok, stdout, stderr) = tokenize(&outside, &["--child-order", "outside-first"]);
    assert!(ok, "{stdout}{stderr}");
    let grid = tok.grid();
    let renamed = Dataset::open(&outside, Some(tok.codes_hash)).unwrap();
    assert_eq!(
        renamed.header.child_order,
        ChildOrder::OutsideFirst,
        "recorded in the header"
    );
    assert_eq!(ds.header.child_order, ChildOrder::Merge);
    let mut changed = 0;
    for i in 0..3 {
        let (a, b) = (ds.record(i).unwrap(), renamed.record(i).unwrap());
        assert_eq!(a.class, b.class);
        let expect = order_children(&grid, &a.leaf_labels, ChildOrder::OutsideFirst);
        assert_eq!(b.leaf_labels, expect, "image {i}");
        changed += (b.leaf_labels != a.leaf_labels) as usize;
        for s in 0..9 {
            let (la, lb) = (a.labels(s), b.labels(s));
            for l in 0..grid.tokens() {
                assert_eq!(
                    a.codes[s][la[l] as usize], b.codes[s][lb[l] as usize],
                    "image {i} stage {s} token {l}"
                );
            }
        }
    }
    assert!(changed > 0, "outside-first renamed nothing");
    // --mirror: every image, then its mirror image, each tokenized as the library does the mirrored
    // preprocessed pixels.
    let mirrored = dir.join("mirrored.nvgtok");
    let (ok, stdout, stderr) = tokenize(&mirrored, &["--mirror", "--batch", "2"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("6 records from 3 images"), "{stdout}");
    let twice = Dataset::open(&mirrored, Some(tok.codes_hash)).unwrap();
    let flipped_tokens = library_tokens(&tok, &files, |img| img.mirrored());
    for (i, (_, class)) in files.iter().enumerate() {
        let (plain, mirror) = (twice.record(2 * i).unwrap(), twice.record(2 * i + 1).unwrap());
        assert_eq!(
            plain,
            ds.record(i).unwrap(),
            "image {i}: the unmirrored record comes first"
        );
        assert_record_is(&mirror, &flipped_tokens, i, *class);
        assert_ne!(
            mirror.codes[8], plain.codes[8],
            "image {i}: the mirror image has other codes"
        );
    }

    // `nvg inspect` describes both datasets from their headers.
    for (path, order) in [(&out, "merge order"), (&outside, "outside-first")] {
        let (ok, stdout, stderr) = nvg(&["inspect", path.to_str().unwrap()]);
        assert!(ok, "{stderr}");
        assert!(
            stdout.contains("3 records")
                && stdout.contains(order)
                && stdout.contains(&format!("{:016x}", tok.codes_hash)),
            "{stdout}"
        );
        let per_class: usize = files.iter().filter(|(_, c)| *c == 0).count();
        assert!(stdout.contains(&format!("class 0: {per_class} records")), "{stdout}");
    }

    // Reconstruction, plain and stage by stage.
    let png = dir.join("recon.png");
    let (ok, stdout, stderr) = nvg(&[
        "reconstruct",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--image",
        files[2].0.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(ok && stdout.contains("PSNR"), "{stdout}{stderr}");
    assert_eq!(
        (read_image(&png).unwrap().width, read_image(&png).unwrap().height),
        (256, 256)
    );
    // --whole: the image resized as a whole (no 1.125× crop); the reported PSNR is against that input.
    let whole = dir.join("whole.png");
    let (ok, stdout, stderr) = nvg(&[
        "reconstruct",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--image",
        files[2].0.to_str().unwrap(),
        "--out",
        whole.to_str().unwrap(),
        "--whole",
    ]);
    assert!(ok, "{stdout}{stderr}");
    let recon = read_image(&whole).unwrap();
    let input = read_image(&files[2].0).unwrap();
    let reported = |s: &str| s.split("PSNR ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    for (crop, should_match) in [(Crop::Whole, true), (Crop::Center, false)] {
        let psnr = nvg_tools::reconstruct::psnr(&preprocess(&input, 256, crop).unwrap(), &recon);
        assert_eq!(
            format!("{psnr:.2}") == reported(&stdout),
            should_match,
            "{crop:?}: {psnr:.2} dB vs `{stdout}`"
        );
    }
    // ... and the encoder's features decoded without quantisation, against the same input.
    let pre = preprocess(&input, 256, Crop::Whole).unwrap();
    let features = tok.encode(&to_tensor(&pre).unwrap().unsqueeze(0).unwrap()).unwrap();
    let decoded = tok.decode(&tok.token_major(&features).unwrap()).unwrap();
    let unquantised = nvg_tools::reconstruct::psnr(&pre, &from_tensor(&decoded.squeeze(0).unwrap()).unwrap());
    assert!(
        stdout.contains(&format!("; {unquantised:.2} dB without quantisation")),
        "{unquantised:.2} dB vs `{stdout}`"
    );
    let strip = dir.join("stages.png");
    let (ok, stdout, stderr) = nvg(&[
        "reconstruct",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--image",
        files[0].0.to_str().unwrap(),
        "--out",
        strip.to_str().unwrap(),
        "--stages",
    ]);
    assert!(ok, "{stdout}{stderr}");
    let s = read_image(&strip).unwrap();
    assert_eq!((s.width, s.height), (9 * 256 + 8 * 2, 2 * 256 + 2));

    // Errors: a missing folder, a folder without class sub-folders, a resolution the tokenizer cannot grid.
    let (ok, _, err) = nvg(&[
        "tokenize",
        "--images",
        dir.join("nope").to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, _, err) = nvg(&[
        "tokenize",
        "--images",
        dir.join("images/cat").to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no class sub-folders"), "{err}");
    let (ok, _, err) = tokenize(&out, &["--resolution", "200"]);
    assert!(!ok && err.contains("--resolution 200"), "{err}");

    // --whole: each image resized as a whole (no 1.125× resize and crop); the records equal the
    // library's tokenization of Crop::Whole, and an image already at the resolution is used as it is.
    let whole = dir.join("whole.nvgtok");
    let (ok, stdout, stderr) = tokenize(&whole, &["--whole"]);
    assert!(ok, "{stdout}{stderr}");
    let ds = Dataset::open(&whole, Some(tok.codes_hash)).unwrap();
    let inputs: Vec<Tensor> = files
        .iter()
        .map(|(p, _)| to_tensor(&preprocess(&read_image(p).unwrap(), 256, Crop::Whole).unwrap()).unwrap())
        .collect();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let tokens = tok
        .tokenize(&tok.encode(&Tensor::stack(&refs, 0).unwrap()).unwrap())
        .unwrap();
    for i in 0..files.len() {
        assert_eq!(
            ds.record(i).unwrap().leaf_labels,
            tokens.labels[i][8],
            "--whole record {i}"
        );
    }
    let img = read_image(&files[0].0).unwrap().resize(256, 256);
    assert_eq!(preprocess(&img, 256, Crop::Whole).unwrap(), img);
    let (ok, _, err) = tokenize(&whole, &["--whole", "--crops", "2"]);
    assert!(!ok && err.contains("--whole") && err.contains("--crops 2"), "{err}");
    let (ok, _, err) = tokenize(&whole, &["--limit", "0"]);
    assert!(!ok && err.contains("--limit must be at least 1"), "{err}");
    let (ok, _, err) = tokenize(&whole, &["--crops", "18446744073709551615"]);
    assert!(!ok && err.contains("is more than 64 crops per image"), "{err}");
    let (ok, _, err) = tokenize(&whole, &["--resolution", "1048576"]);
    assert!(
        !ok && err.contains("--resolution 1048576") && err.contains("larger than the 64×64"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
