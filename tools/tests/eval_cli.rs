//! `nvg eval` end to end on synthetic squares: `train-classifier` writes the classifier and its JSONL log,
//! `score --json` reads an `nvg generate`-style folder and reports accuracy and the Fréchet distance,
//! several `--images` folders are scored as one pool, and a folder without images (or one given twice) is
//! refused with a clear message.

use nvg::image::{RgbImage, write_png};
use std::path::Path;

fn nvg(args: &[&str]) -> (bool, String, String) {
    nvg_testkit::run_program(env!("CARGO_BIN_EXE_nvg"), args)
}

const COLOURS: [[u8; 3]; 3] = [[220, 30, 30], [30, 190, 40], [40, 40, 220]];

/// A white 16×16 image with a 5×5 square of colour `class` at a place given by `k`.
fn square(class: usize, k: usize) -> RgbImage {
    let mut img = RgbImage::new(16, 16);
    img.data.fill(255);
    let (x0, y0) = ((k * 7 + class * 3) % 12, (k * 5 + class) % 12);
    for y in y0..y0 + 5 {
        for x in x0..x0 + 5 {
            img.set(x, y, COLOURS[class]);
        }
    }
    img
}

fn image_folder(dir: &Path, per_class: usize, offset: usize) {
    for (c, name) in ["0-red", "1-green", "2-blue"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for i in 0..per_class {
            write_png(&dir.join(name).join(format!("{i:03}.png")), &square(c, offset + i)).unwrap();
        }
    }
}

#[test]
fn train_a_classifier_then_score_a_generate_folder() {
    let dir = nvg_testkit::fresh_dir("eval-cli", "run");
    let (train, val, generated) = (dir.join("train"), dir.join("val"), dir.join("generated"));
    image_folder(&train, 12, 0);
    image_folder(&val, 4, 100);
    std::fs::create_dir_all(&generated).unwrap();
    for c in 0..3 {
        for i in 0..4 {
            write_png(&generated.join(format!("{c:04}_{i:05}.png")), &square(c, 200 + i)).unwrap();
        }
    }
    std::fs::write(generated.join("job.json"), "{}").unwrap();
    let clf = dir.join("clf.safetensors");
    let clf_s = clf.to_str().unwrap();
    let (ok, out, err) = nvg(&[
        "eval",
        "train-classifier",
        "--images",
        train.to_str().unwrap(),
        "--val",
        val.to_str().unwrap(),
        "--out",
        clf_s,
        "--resolution",
        "16",
        "--widths",
        "8,16",
        "--epochs",
        "3",
        "--batch",
        "8",
    ]);
    assert!(ok, "train-classifier failed:\n{out}\n{err}");
    assert!(
        err.contains("epoch 3/3") && err.contains("Fréchet distance train vs val"),
        "{err}"
    );
    assert!(clf.exists());
    let log = std::fs::read_to_string(dir.join("clf.log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert_eq!(lines[2]["epoch"], 3);
    assert!(lines[2]["val_accuracy"].as_f64().is_some() && lines[2]["loss"].as_f64().is_some());
    assert!(lines[3]["fd_train_val"]["distance"].as_f64().unwrap() >= 0.0);

    // `nvg eval score --classifier clf ARGS...`, with every path as a string.
    let score = |args: &[&Path], flags: &[&str]| {
        let mut a: Vec<String> = ["eval", "score", "--classifier", clf_s].map(String::from).to_vec();
        for p in args {
            a.extend(["--images".to_string(), p.to_str().unwrap().to_string()]);
        }
        a.extend(flags.iter().map(|f| f.to_string()));
        nvg(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ok, out, err) = score(&[&generated], &["--real", val.to_str().unwrap(), "--json"]);
    assert!(ok, "score failed:\n{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["kind"], "generated");
    assert_eq!(report["count"], 12);
    let acc = report["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(report["per_class"].as_array().unwrap().len(), 3);
    assert_eq!(report["per_class"][2]["name"], "2-blue");
    assert_eq!(report["frechet"]["real_images"], 12);
    assert!(report["frechet"]["distance"].as_f64().unwrap() >= 0.0);

    // The text report.
    let (ok, out, _) = score(&[&val], &[]);
    assert!(
        ok && out.contains("12 images (image-folder)") && out.contains("2-blue"),
        "{out}"
    );

    // Several --images folders are one pool: its per-class counts are the sums of the folders' own,
    // whatever their layouts, and a second generate job's images may share the first one's names.
    let again = dir.join("generated-again");
    std::fs::create_dir_all(&again).unwrap();
    for entry in std::fs::read_dir(&generated).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, again.join(p.file_name().unwrap())).unwrap();
    }
    let score_json = |folders: &[&Path]| -> serde_json::Value {
        let (ok, out, err) = score(folders, &["--json"]);
        assert!(ok, "score of {folders:?} failed:\n{out}\n{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let correct = |r: &serde_json::Value, c: usize| r["per_class"][c]["correct"].as_u64().unwrap();
    let (g, v) = (score_json(&[&generated]), score_json(&[&val]));
    let pooled = score_json(&[&generated, &val]);
    assert_eq!(pooled["count"], 24);
    assert_eq!(pooled["kind"], "mixed");
    assert_eq!(pooled["images"].as_array().unwrap().len(), 2);
    for c in 0..3 {
        assert_eq!(correct(&pooled, c), correct(&g, c) + correct(&v, c), "class {c}");
    }
    let twice = score_json(&[&generated, &again]);
    assert_eq!(
        (twice["count"].as_u64(), twice["kind"].as_str()),
        (Some(24), Some("generated"))
    );
    assert_eq!(twice["accuracy"], g["accuracy"]);
    let (ok, out, _) = score(&[&generated, &val], &[]);
    assert!(
        ok && out.contains("24 images (mixed) in ") && out.contains(" + "),
        "{out}"
    );
    // The same folder twice would count its images twice: refused.
    let (ok, _, err) = score(&[&generated, &dir.join("generated/../generated")], &[]);
    assert!(!ok && err.contains("given twice to --images"), "{err}");

    // No images: a clear refusal.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, _, err) = score(&[&empty], &[]);
    assert!(!ok && err.contains("no images to score"), "{err}");

    // Without --classifier: the built-in model's classifier, or a clear error where there is none.
    let (ok, out, err) = nvg(&["eval", "score", "--images", generated.to_str().unwrap()]);
    assert!(
        ok && out.contains("12 images (generated)") && out.contains("smileys"),
        "{out}{err}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nvg"))
        .args(["eval", "score", "--images", generated.to_str().unwrap()])
        .env("NVG_MODEL_DIR", &empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--classifier") && err.contains("classifier.safetensors"),
        "{err}"
    );
}

#[test]
fn train_classifier_refuses_bad_settings_before_reading_images() {
    let dir = nvg_testkit::fresh_dir("eval-cli", "refused");
    let missing = dir.join("no-such-folder");
    let clf = dir.join("clf.safetensors");
    for (flags, expect) in [
        (&["--epochs", "0"][..], "--epochs and --batch must be at least 1"),
        (&["--lr", "NaN"], "--lr must be a finite number > 0, not NaN"),
        (
            &["--lr", "0.5", "--weight-decay", "2"],
            "--lr × --weight-decay below 1, not 2",
        ),
        (
            &["--resolution", "64", "--shift", "64"],
            "--shift 64 moves every image out of its 64 px frame",
        ),
    ] {
        let mut args = vec![
            "eval",
            "train-classifier",
            "--images",
            missing.to_str().unwrap(),
            "--out",
            clf.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let (ok, out, err) = nvg(&args);
        assert!(
            !ok && err.contains(expect),
            "{flags:?}: expected `{expect}` in:\n{out}{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
