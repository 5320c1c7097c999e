//! The whole pipeline of the emoji demo on a grid other than 16×16, through the `nvg` program: a tiny
//! tokenizer (f2, 16-pixel images → 8×8 grid, 7 stages) is trained with `nvg train-tokenizer`, the
//! images are tokenized with `--whole`, its decoder is fine-tuned alone (`--decoder-only`), a depth-2
//! generator trains on the dataset with `nvg train`, and `nvg generate` samples 16×16 images with their
//! stage strips through the fine-tuned decoder.

use nvg::image::{RgbImage, read_image, write_png};
use std::path::Path;

fn nvg(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = nvg_testkit::run_program(env!("CARGO_BIN_EXE_nvg"), args);
    (ok, format!("{out}{err}"))
}

/// Two classes of six 16×16 images: a warm square on a dark ground, a cool ramp.
fn image_folder(dir: &Path) {
    for (class, name) in ["squares", "ramps"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for i in 0..6 {
            let mut img = RgbImage::new(16, 16);
            for y in 0..16 {
                for x in 0..16 {
                    let px = if class == 0 {
                        let inside = (x / 4 == i % 4) && (y / 8 == i / 4);
                        if inside { [240, 200, 30] } else { [20, 20, 50] }
                    } else {
                        [(x * 12) as u8, (100 + y * 8) as u8, (200 - 20 * i) as u8]
                    };
                    img.set(x, y, px);
                }
            }
            write_png(&dir.join(name).join(format!("{i}.png")), &img).unwrap();
        }
    }
}

#[test]
fn train_tokenizer_tokenize_train_and_generate_on_an_8x8_grid() {
    let dir = nvg_testkit::fresh_dir("small-grid", "pipeline");
    let images = dir.join("images");
    image_folder(&images);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let tok_dir = dir.join("tok");
    let (ok, log) = nvg(&[
        "train-tokenizer",
        "--images",
        &s(&images),
        "--val",
        &s(&images),
        "--out",
        &s(&tok_dir),
        "--resolution",
        "16",
        "--arch",
        "base=32,mult=1-2,res=1,latent=8,codebook=64",
        "--steps",
        "6",
        "--batch",
        "4",
        "--eval-every",
        "3",
        "--checkpoint-every",
        "3",
    ]);
    assert!(ok, "{log}");
    assert!(log.contains("held-out PSNR"), "{log}");
    let tokenizer = tok_dir.join("tokenizer.safetensors");
    let entries = std::fs::read_to_string(tok_dir.join("log.jsonl")).unwrap();
    assert_eq!(entries.lines().count(), 6, "one log line per step");
    let (images_arg, tok_arg) = (s(&images), s(&tok_dir));
    // `nvg train-tokenizer` into the same folder again, with `extra` flags.
    let again = |extra: &[&str]| {
        let mut args = vec![
            "train-tokenizer",
            "--images",
            &images_arg,
            "--out",
            &tok_arg,
            "--resolution",
            "16",
        ];
        args.extend_from_slice(&["--steps", "6", "--batch", "4"]);
        args.extend_from_slice(extra);
        nvg(&args)
    };
    // A second run without --resume is refused (the checkpoint is not overwritten).
    let (ok, log) = again(&["--arch", "base=32,mult=1-2,res=1,latent=8,codebook=64"]);
    assert!(!ok && log.contains("--resume"), "{log}");
    // Resuming a run that has done all its steps says so (and leaves the run as it is).
    let (ok, log) = again(&["--resume"]);
    assert!(
        !ok && log.contains("at step 6") && log.contains("raise --steps"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(tok_dir.join("log.jsonl")).unwrap(), entries);
    let (ok, log) = nvg(&[
        "train-tokenizer",
        "--images",
        &s(&images),
        "--val",
        &s(&images),
        "--out",
        &s(&dir.join("tok-no-eval")),
        "--eval-images",
        "0",
    ]);
    assert!(!ok && log.contains("--eval-images must be at least 1"), "{log}");
    for (flags, expect) in [
        (["--lr", "NaN"], "--lr must be a finite number > 0, not NaN"),
        (["--lr", "0"], "--lr must be a finite number > 0, not 0"),
        (["--stop-after", "0"], "--stop-after must be at least 1"),
        (["--resolution", "4096"], "larger than the 64×64"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--device", "tpu"], "expected cpu, cuda, cuda:N or cuda-emu"),
    ] {
        let out = dir.join("tok-refused");
        let (images_s, out_s) = (s(&images), s(&out));
        let mut args = vec!["train-tokenizer", "--images", &images_s, "--out", &out_s];
        args.extend_from_slice(&flags);
        let (ok, log) = nvg(&args);
        assert!(!ok && log.contains(expect), "{flags:?}: expected `{expect}` in:\n{log}");
        assert!(!out.exists(), "{flags:?} made its output folder");
    }

    let data = dir.join("data.nvgtok");
    let (ok, log) = nvg(&[
        "tokenize",
        "--images",
        &s(&images),
        "--tokenizer",
        &s(&tokenizer),
        "--out",
        &s(&data),
        "--resolution",
        "16",
        "--whole",
    ]);
    assert!(ok && log.contains("12 records from 12 images of 2 classes"), "{log}");

    // The decoder alone, fine-tuned from the exported tokenizer: the result reads the dataset made with
    // the original (the generator below trains and samples with it).
    let tuned_dir = dir.join("tok-decoder");
    let tune = |extra: &[&str]| {
        let mut args = vec![
            "train-tokenizer".to_string(),
            "--images".into(),
            s(&images),
            "--out".into(),
            s(&tuned_dir),
            "--resolution".into(),
            "16".into(),
            "--steps".into(),
            "3".into(),
            "--batch".into(),
            "4".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        nvg(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ok, log) = tune(&["--decoder-only"]);
    assert!(
        !ok && log.contains("--init"),
        "--decoder-only without a tokenizer to start from: {log}"
    );
    let (ok, log) = tune(&[
        "--decoder-only",
        "--init",
        &s(&tokenizer),
        "--arch",
        "base=32,mult=1-2,res=1,latent=16,codebook=64",
    ]);
    assert!(
        !ok && log.contains("--arch"),
        "an --arch that contradicts --init: {log}"
    );
    let (ok, log) = tune(&["--decoder-only", "--init", &s(&tokenizer), "--stop-after", "2"]);
    assert!(ok && log.contains("decoder only"), "{log}");
    let (ok, log) = tune(&["--resume"]);
    assert!(
        !ok && log.contains("--decoder-only"),
        "resuming a decoder-only run as a whole one: {log}"
    );
    let (ok, log) = tune(&["--resume", "--decoder-only"]);
    assert!(ok && log.contains("at step 2"), "{log}");
    let tuned = tuned_dir.join("tokenizer.safetensors");

    let run = dir.join("run");
    let (ok, log) = nvg(&[
        "train",
        "--data",
        &s(&data),
        "--tokenizer",
        &s(&tuned),
        "--config",
        "depth=2",
        "--batch",
        "4",
        "--steps",
        "2",
        "--out",
        &s(&run),
    ]);
    assert!(ok, "{log}");

    let out = dir.join("samples");
    let (ok, log) = nvg(&[
        "generate",
        "--generator",
        &s(&run.join("last.safetensors")),
        "--tokenizer",
        &s(&tuned),
        "--classes",
        "0,1",
        "--structure-steps",
        "2",
        "--progressive",
        "--out",
        &s(&out),
    ]);
    assert!(ok && log.contains("7 stages"), "{log}");
    for name in ["0000_00000.png", "0001_00000.png"] {
        let img = read_image(&out.join(name)).unwrap();
        assert_eq!((img.width, img.height), (16, 16), "{name}");
    }
    let strip = read_image(&out.join("0000_00000_stages.png")).unwrap();
    assert!(
        strip.width > 7 * 16,
        "a stage strip of 7 stages: {}×{}",
        strip.width,
        strip.height
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
