//! `nvg train` end to end: an image folder made by the test is tokenized with the fixture tokenizer, a
//! depth-2 generator trains on it (the loss falls), an interrupted run resumes to the same weights bit
//! for bit, and the checkpoint samples through `nvg generate` (raw and EMA weights).

use nvg::image::{RgbImage, write_png};
use nvg_engine::io::safetensors::SafetensorsFile;
use nvg_testkit::Fixtures;
use std::path::{Path, PathBuf};

fn nvg(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = nvg_testkit::run_program(env!("CARGO_BIN_EXE_nvg"), args);
    (ok, format!("{out}{err}"))
}

fn temp_dir(name: &str) -> PathBuf {
    nvg_testkit::fresh_dir("train", name)
}

/// Two classes of four 256×256 images: colour gradients and discs.
fn image_folder(dir: &Path) {
    for (class, name) in ["discs", "gradients"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for i in 0..4 {
            let side = 256;
            let mut data = Vec::with_capacity(side * side * 3);
            for y in 0..side {
                for x in 0..side {
                    let px = if class == 0 {
                        let (cx, cy, r) = (96 + 20 * i, 128, 50 + 10 * i);
                        let inside = (x as i64 - cx as i64).pow(2) + (y as i64 - cy as i64).pow(2) < (r * r) as i64;
                        if inside {
                            [230, 40 + 40 * i as u8, 40]
                        } else {
                            [20, 20, 60]
                        }
                    } else {
                        [(x * 255 / side) as u8, (y * 255 / side) as u8, (60 * i) as u8]
                    };
                    data.extend_from_slice(&px);
                }
            }
            write_png(
                &dir.join(name).join(format!("{i}.png")),
                &RgbImage {
                    width: side,
                    height: side,
                    data,
                },
            )
            .unwrap();
        }
    }
}

/// DIR/data.nvgtok: the image folder DIR/images tokenized with the tokenizer at `tok`.
fn tokenized_folder(dir: &Path, tok: &str) -> PathBuf {
    let images = dir.join("images");
    image_folder(&images);
    let data = dir.join("data.nvgtok");
    let (ok, log) = nvg(&[
        "tokenize",
        "--images",
        images.to_str().unwrap(),
        "--tokenizer",
        tok,
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    data
}

fn losses(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn train_from_a_tokenized_folder_resume_exactly_and_sample_the_checkpoint() {
    let fx = Fixtures::open();
    let dir = temp_dir("e2e");
    let tokenizer = fx.path("tokenizer.safetensors");
    let tok = tokenizer.to_str().unwrap();
    let data = tokenized_folder(&dir, tok);
    let data = data.to_str().unwrap();
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            data,
            "--tokenizer",
            tok,
            "--config",
            "depth=2",
            "--batch",
            "4",
            "--lr",
            "2e-3",
            "--warmup",
            "2",
            "--log-every",
            "5",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        nvg(&args)
    };

    // The loss falls on a dataset the model can memorise.
    let run = dir.join("run");
    let (ok, log) = train(&run, &["--steps", "24", "--checkpoint-every", "8"]);
    assert!(ok, "{log}");
    assert!(log.contains("step 24/24") && log.contains("img/s"), "{log}");
    let l = losses(&run.join("log.jsonl"));
    assert_eq!(l.len(), 24);
    let first = l[..3].iter().sum::<f64>() / 3.0;
    let last = l[21..].iter().sum::<f64>() / 3.0;
    eprintln!("loss: first 3 steps {first:.4}, last 3 steps {last:.4}");
    assert!(
        last < 0.8 * first,
        "the loss should fall by over 20%: first steps {first:.4}, last steps {last:.4}"
    );

    // An interrupted run (stopped after 3 of 6 steps) resumes to the weights of an uninterrupted one.
    let straight = dir.join("straight");
    let (ok, log) = train(&straight, &["--steps", "6"]);
    assert!(ok, "{log}");
    let split = dir.join("split");
    let (ok, log) = train(&split, &["--steps", "6", "--stop-after", "3"]);
    assert!(ok, "{log}");
    let (ok, log) = train(&split, &["--steps", "6"]);
    assert!(
        !ok && log.contains("--resume"),
        "re-running without --resume must be refused: {log}"
    );
    let (ok, log) = train(&split, &["--steps", "6", "--resume"]);
    assert!(ok && log.contains("resuming") && log.contains("at step 3"), "{log}");
    let a = SafetensorsFile::open(straight.join("last.safetensors")).unwrap();
    let b = SafetensorsFile::open(split.join("last.safetensors")).unwrap();
    let names: Vec<&str> = a.names().collect();
    assert!(names.iter().any(|n| n.starts_with("ema_model.")) && names.iter().any(|n| n.starts_with("adamw.")));
    assert_eq!(names.len(), b.names().count());
    for name in names {
        let (x, y) = (a.get(name).unwrap(), b.get(name).unwrap());
        assert_eq!(x.dims(), y.dims(), "{name}");
        let same = if x.dtype().is_float() {
            x.to_f32_vec().unwrap() == y.to_f32_vec().unwrap()
        } else {
            x.to_i64_vec().unwrap() == y.to_i64_vec().unwrap()
        };
        assert!(same, "{name} differs between the straight and the resumed run");
    }
    assert_eq!(losses(&straight.join("log.jsonl")), losses(&split.join("log.jsonl")));
    // A time limit stops after the first step that ends past it, with a checkpoint to resume from.
    let timed = dir.join("timed");
    let (ok, log) = train(&timed, &["--steps", "6", "--stop-after-minutes", "1e-9"]);
    assert!(
        ok && log.contains("stopped at step 1 of 6") && log.contains("--resume"),
        "{log}"
    );
    let (ok, log) = train(&timed, &["--steps", "6", "--resume"]);
    assert!(ok && log.contains("at step 1"), "{log}");
    assert_eq!(losses(&straight.join("log.jsonl")), losses(&timed.join("log.jsonl")));

    // The checkpoint samples through `nvg generate`, with raw and with EMA weights.
    let ckpt = run.join("last.safetensors");
    for ema in [false, true] {
        let out = dir.join(if ema { "samples-ema" } else { "samples" });
        let mut args = vec![
            "generate",
            "--generator",
            ckpt.to_str().unwrap(),
            "--tokenizer",
            tok,
            "--classes",
            "0,1",
            "--structure-steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        if ema {
            args.push("--ema");
        }
        let (ok, log) = nvg(&args);
        assert!(ok, "{log}");
        assert!(out.join("0000_00000.png").exists() && out.join("0001_00000.png").exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_refuses_bad_settings_clearly() {
    let fx = Fixtures::open();
    let dir = temp_dir("refuse");
    let tok = fx.path("tokenizer.safetensors");
    let missing = dir.join("missing.nvgtok");
    let out = dir.join("o");
    // `nvg train` on a dataset that does not exist, with `extra` flags.
    let train_missing = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            missing.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        nvg(&args)
    };
    let (ok, log) = train_missing(&["--steps", "1"]);
    assert!(!ok && log.contains("missing.nvgtok"), "{log}");
    let (ok, log) = train_missing(&["--epochs", "0"]);
    assert!(!ok && log.contains("--epochs must be at least 1"), "{log}");
    let (ok, log) = train_missing(&["--steps", "0"]);
    assert!(!ok && log.contains("--steps and --epochs must be at least 1"), "{log}");
    let (ok, log) = train_missing(&["--steps", "1", "--class-balance", "1.5"]);
    assert!(!ok && log.contains("--class-balance must be a number from 0"), "{log}");
    let (ok, log) = train_missing(&["--steps", "1", "--class-balance", "-0.1"]);
    assert!(!ok && log.contains("--class-balance must be a number from 0"), "{log}");
    let (ok, log) = train_missing(&["--steps", "1", "--drop-path", "1"]);
    assert!(!ok && log.contains("--drop-path must be a rate in [0, 1)"), "{log}");
    let (ok, log) = train_missing(&["--steps", "1", "--drop-path", "0.2", "--no-drop-path"]);
    assert!(!ok && log.contains("cannot be used with"), "{log}");
    for (flags, expect) in [
        (
            &["--steps", "1", "--lr=-1"][..],
            "--lr must be a finite number > 0, not -1",
        ),
        (
            &["--steps", "1", "--lr", "inf"],
            "--lr must be a finite number > 0, not inf",
        ),
        (
            &["--steps", "1", "--checkpoint-every", "0"],
            "--checkpoint-every and --stop-after must be at least 1",
        ),
        (
            &["--steps", "1", "--stop-after", "0"],
            "--checkpoint-every and --stop-after must be at least 1",
        ),
        (
            &["--steps", "1", "--stop-after-minutes", "0"],
            "--stop-after-minutes must be a number of minutes > 0, not 0",
        ),
    ] {
        let (ok, log) = train_missing(flags);
        assert!(!ok && log.contains(expect), "{flags:?}: expected `{expect}` in:\n{log}");
    }
    let (ok, log) = train_missing(&["--steps", "1", "--config", "depth=1000000"]);
    assert!(!ok && log.contains("depth 1000000 is more than 48"), "{log}");
    let (ok, log) = train_missing(&["--init-classes", "0,0,1"]);
    assert!(
        !ok && log.contains("--init-classes") && log.contains("give --init too"),
        "{log}"
    );
    // A device the build or machine cannot drive is refused before the data is read.
    let (ok, log) = train_missing(&["--steps", "1", "--device", "cuda:7"]);
    assert!(
        !ok && log.contains("cuda:7") && !log.contains("missing.nvgtok"),
        "{log}"
    );
    let (ok, log) = train_missing(&["--steps", "1", "--device", "tpu"]);
    assert!(!ok && log.contains("expected cpu, cuda, cuda:N or cuda-emu"), "{log}");
    let (ok, log) = train_missing(&["--steps", "1", "--matmul", "fp8"]);
    assert!(!ok && log.contains("expected f32 or bf16"), "{log}");
    let (ok, _) = nvg(&["train", "--help"]);
    assert!(ok);
    let (_, help) = nvg(&["train", "--help"]);
    for flag in [
        "--data",
        "--tokenizer",
        "--config",
        "--batch",
        "--accum",
        "--lr",
        "--steps",
        "--epochs",
        "--out",
        "--resume",
        "--init",
        "--init-classes",
        "--class-balance",
        "--drop-path",
        "--stop-after",
        "--stop-after-minutes",
        "--device",
        "--matmul",
    ] {
        assert!(help.contains(flag), "train --help does not explain {flag}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--resume` and `--init` take the model's shape (depth, position tables) from the model they continue
/// when `--config`/`--position-embedding` are not given; a `--config` that contradicts it is refused.
#[test]
fn train_continues_a_model_without_restating_its_shape() {
    let fx = Fixtures::open();
    let dir = temp_dir("continue");
    let tok = fx.path("tokenizer.safetensors");
    let tok = tok.to_str().unwrap();
    let data = tokenized_folder(&dir, tok);
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--tokenizer",
            tok,
            "--batch",
            "4",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        nvg(&args)
    };
    let has_tables = |ckpt: &Path| {
        SafetensorsFile::open(ckpt)
            .unwrap()
            .names()
            .any(|n| n.ends_with("content_pos_embed"))
    };

    let first = dir.join("first");
    let (ok, log) = train(&first, &["--config", "depth=2", "--position-embedding", "--steps", "2"]);
    assert!(ok && log.contains("training depth 2"), "{log}");
    let first_ckpt = first.join("last.safetensors");
    assert!(has_tables(&first_ckpt));

    // Resumed with neither flag: still depth 2 with tables.
    let (ok, log) = train(&first, &["--steps", "3", "--resume"]);
    assert!(
        ok && log.contains("at step 2") && log.contains("training depth 2"),
        "{log}"
    );

    // A new run from its weights with neither flag: depth 2, tables kept.
    let second = dir.join("second");
    let init = first_ckpt.to_str().unwrap();
    let extra = ["--class-balance", "1", "--drop-path", "0.25"];
    let (ok, log) = train(&second, &[&["--init", init, "--steps", "1"], &extra[..]].concat());
    assert!(
        ok && log.contains("training depth 2") && log.contains("class balance 1") && log.contains("top rate 0.250"),
        "{log}"
    );
    assert!(has_tables(&second.join("last.safetensors")));
    let recorded = nvg::trainer::session::checkpoint_settings(&second.join("last.safetensors")).unwrap();
    assert_eq!(recorded["class_balance"], 1.0, "{recorded}");
    assert_eq!(recorded["drop_path_top"], 0.25, "{recorded}");
    // Resumed without them: the changes of the data order and the DropPath rates are announced.
    let (ok, log) = train(&second, &["--steps", "2", "--resume"]);
    assert!(
        ok && log.contains("class_balance was 1.0") && log.contains("drop_path_top was 0.25"),
        "{log}"
    );

    // --resume of a folder without a checkpoint yet starts from --init, with its shape.
    let fresh = dir.join("fresh");
    let (ok, log) = train(&fresh, &["--init", init, "--steps", "1", "--resume"]);
    assert!(ok && log.contains("training depth 2"), "{log}");
    assert!(has_tables(&fresh.join("last.safetensors")));

    // Tables cannot be added on resume: the error names the --init way.
    let plain = dir.join("plain");
    let (ok, log) = train(&plain, &["--config", "depth=2", "--steps", "1"]);
    assert!(ok && !has_tables(&plain.join("last.safetensors")), "{log}");
    let (ok, log) = train(&plain, &["--steps", "2", "--resume", "--position-embedding"]);
    assert!(
        !ok && log.contains("without position embeddings") && log.contains("--init"),
        "{log}"
    );

    // A --config that contradicts the model is refused, naming both shapes.
    let third = dir.join("third");
    let (ok, log) = train(&third, &["--init", init, "--config", "depth=4", "--steps", "1"]);
    assert!(!ok && log.contains("depth-2") && log.contains("depth-4"), "{log}");
    let (ok, log) = train(&first, &["--config", "depth=4", "--steps", "4", "--resume"]);
    assert!(!ok && log.contains("depth-2") && log.contains("depth-4"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}
