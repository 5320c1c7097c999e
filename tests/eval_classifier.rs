//! The evaluation classifier and the Fréchet distance (`nvg::eval`, docs/evaluation.md) on synthetic
//! data: the classifier learns which colour a square has, wherever it is; save → load keeps every logit;
//! the Fréchet distance matches closed forms; `nvg eval score`'s folder reading (an `nvg generate`
//! output folder or an ImageFolder) and its refusals.

use nvg::eval::classifier::{
    Classifier, ClassifierConfig, ClassifierTrainSettings, ClassifierTrainer, epoch_order, shift_of, translate,
};
use nvg::eval::frechet::{psd_sqrt, symmetric_eigen, trace_sqrt_product};
use nvg::eval::{AccuracyReport, FeatureStats, frechet_distance};
use nvg::image::{ImageSet, RgbImage, write_png};
use nvg_engine::Tensor;
use nvg_engine::rng::{Distribution, RngStream};
use nvg_tools::eval::{FolderKind, ScoreOptions, parse_generated_name, score, scored_images};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const RES: usize = 16;
const COLOURS: [[u8; 3]; 3] = [[220, 30, 30], [30, 190, 40], [40, 40, 220]];

fn names() -> Vec<String> {
    vec!["0-red".into(), "1-green".into(), "2-blue".into()]
}

/// A white `RES²` image with a 5×5 square of class `class`'s colour at a place drawn from (seed, index).
fn square(class: usize, seed: u64, index: u64) -> RgbImage {
    let rng = RngStream::new(seed, 0x5100);
    let w = rng.words(index);
    let side = 5;
    let (x0, y0) = ((w[0] as usize) % (RES - side + 1), (w[1] as usize) % (RES - side + 1));
    let mut img = RgbImage::new(RES, RES);
    img.data.fill(255);
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            img.set(x, y, COLOURS[class]);
        }
    }
    img
}

/// `per_class` squares of each class (class-major), from `seed`.
fn square_set(per_class: usize, seed: u64) -> ImageSet {
    let (mut pixels, mut classes) = (Vec::new(), Vec::new());
    for c in 0..3 {
        for i in 0..per_class {
            pixels.extend(square(c, seed, (c * per_class + i) as u64).data);
            classes.push(c);
        }
    }
    ImageSet::from_pixels(RES, pixels, classes).unwrap()
}

fn settings() -> ClassifierTrainSettings {
    ClassifierTrainSettings {
        epochs: 4,
        batch: 16,
        lr: 3e-3,
        seed: 7,
        shift: 2,
        ..ClassifierTrainSettings::default()
    }
}

/// One classifier trained on the squares, shared by the tests (trained once per test binary), with its
/// per-epoch losses.
fn trained() -> &'static (Classifier, Vec<f64>) {
    static TRAINED: OnceLock<(Classifier, Vec<f64>)> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let train = square_set(40, 1);
        let config = ClassifierConfig::new(names(), RES).unwrap();
        let s = settings();
        let mut trainer = ClassifierTrainer::new(config, s.clone(), &train).unwrap();
        let losses = (0..s.epochs)
            .map(|e| trainer.train_epoch(&train, e, |_| {}).unwrap().loss)
            .collect();
        (trainer.classifier, losses)
    })
}

fn temp_dir(name: &str) -> PathBuf {
    nvg_testkit::fresh_dir("eval", name)
}

#[test]
fn the_classifier_learns_the_colour_of_a_square_wherever_it_is() {
    let (clf, losses) = trained();
    // Held-out squares at other places.
    let val = square_set(30, 99);
    let e = clf.embed(&val, 32).unwrap();
    let report = AccuracyReport::new(&e.predictions(), &val.classes, 3).unwrap();
    assert!(
        report.accuracy() >= 0.9,
        "held-out accuracy {:.3} (per class {:?}); epoch losses {losses:?}",
        report.accuracy(),
        report.correct
    );
    assert!(
        losses.last().unwrap() < &(0.5 * losses[0]),
        "the loss did not fall: {losses:?}"
    );
    assert_eq!((e.count, e.feature_width, e.num_classes), (90, 128, 3));
    assert_eq!(e.features.len(), 90 * 128);
}

#[test]
fn training_is_a_pure_function_of_the_seed() {
    let train = square_set(8, 3);
    let config = ClassifierConfig::new(names(), RES).unwrap();
    let s = ClassifierTrainSettings {
        epochs: 1,
        batch: 8,
        ..settings()
    };
    let run = || {
        let mut t = ClassifierTrainer::new(config.clone(), s.clone(), &train).unwrap();
        let stats = t.train_epoch(&train, 0, |_| {}).unwrap();
        (t.classifier.params, stats.loss)
    };
    let (a, la) = run();
    let (b, lb) = run();
    assert_eq!(la, lb);
    for (name, t) in &a {
        assert_eq!(t.to_f32_vec().unwrap(), b[name].to_f32_vec().unwrap(), "{name}");
    }
    // The order is a permutation that changes with the epoch; shifts stay within bounds.
    let (o0, o1) = (epoch_order(24, 7, 0), epoch_order(24, 7, 1));
    let mut sorted = o0.clone();
    sorted.sort();
    assert_eq!(sorted, (0..24).collect::<Vec<_>>());
    assert_ne!(o0, o1);
    for id in 0..200 {
        let (dx, dy) = shift_of(7, 0, id, 4);
        assert!(dx.abs() <= 4 && dy.abs() <= 4);
    }
}

#[test]
fn translation_moves_the_content_and_fills_with_white() {
    // A 3×3 picture of the values 10..18 (row-major) in each of the 3 channels.
    let v: Vec<f32> = (0..27).map(|i| (10 + i % 9) as f32).collect();
    let t = Tensor::from_vec(v, &[1, 3, 3, 3]).unwrap();
    let out = translate(&t, &[(1, -1)]).unwrap().to_f32_vec().unwrap();
    // Moved right by one and up by one: column 0 and the last row are white (1.0).
    for c in 0..3 {
        assert_eq!(
            &out[c * 9..(c + 1) * 9],
            &[1.0, 13.0, 14.0, 1.0, 16.0, 17.0, 1.0, 1.0, 1.0]
        );
    }
    assert_eq!(
        translate(&t, &[(0, 0)]).unwrap().to_f32_vec().unwrap(),
        t.to_f32_vec().unwrap()
    );
}

#[test]
fn save_then_load_gives_identical_logits_and_metadata() {
    let (clf, _) = trained();
    let dir = temp_dir("save");
    let path = dir.join("clf.safetensors");
    let mut clf = clf.clone();
    clf.info = serde_json::json!({ "note": "test" });
    clf.save(&path).unwrap();
    let loaded = Classifier::load(&path).unwrap();
    assert_eq!(loaded.config, clf.config);
    assert_eq!(loaded.info, clf.info);
    let images = square_set(5, 42).batch(&(0..15).collect::<Vec<_>>()).unwrap();
    let (fa, la) = clf.forward(&images).unwrap();
    let (fb, lb) = loaded.forward(&images).unwrap();
    assert_eq!(la.to_f32_vec().unwrap(), lb.to_f32_vec().unwrap());
    assert_eq!(fa.to_f32_vec().unwrap(), fb.to_f32_vec().unwrap());
    // Scores do not depend on how the images are batched.
    let set = square_set(5, 42);
    assert_eq!(loaded.embed(&set, 4).unwrap(), loaded.embed(&set, 15).unwrap());
    let meta = nvg_engine::io::safetensors::SafetensorsFile::open(&path)
        .unwrap()
        .metadata()
        .clone();
    let cfg: serde_json::Value = serde_json::from_str(&meta["nvg.classifier"]).unwrap();
    assert_eq!(cfg["classes"], serde_json::json!(names()));
    assert_eq!(
        (cfg["resolution"].as_u64(), cfg["feature_width"].as_u64()),
        (Some(16), Some(128))
    );
    assert_eq!(meta["nvg.kind"], "classifier");
    // A file that is not a classifier is refused by name.
    let other = dir.join("other.safetensors");
    nvg_engine::io::safetensors::save(&other, [("x", &images)], None).unwrap();
    let err = format!("{:#}", Classifier::load(&other).unwrap_err());
    assert!(err.contains("not a classifier"), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// Fréchet distance
// ---------------------------------------------------------------------------------------------------

fn random_rows(n: usize, d: usize, seed: u64, scale: &[f32], offset: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; n * d];
    RngStream::new(seed, 1).fill(Distribution::Normal, 0, &mut v);
    for (i, x) in v.iter_mut().enumerate() {
        // Correlate neighbouring dimensions so the covariance is not diagonal.
        *x = *x * scale[i % d] + offset;
    }
    for r in 0..n {
        for j in 1..d {
            v[r * d + j] += 0.5 * v[r * d + j - 1];
        }
    }
    v
}

#[test]
fn frechet_of_a_set_with_itself_is_zero() {
    let d = 128;
    let scale: Vec<f32> = (0..d).map(|i| 0.2 + (i % 7) as f32 * 0.3).collect();
    let rows = random_rows(400, d, 5, &scale, 0.1);
    let s = FeatureStats::from_rows(&rows, d).unwrap();
    let fd = frechet_distance(&s, &s).unwrap();
    assert!(fd.distance.abs() < 1e-9 && fd.cov_term.abs() < 1e-9, "{fd:?}");
    assert_eq!(fd.mean_term, 0.0);
    // Equal weights are the plain statistics.
    let w = FeatureStats::weighted(&rows, d, &vec![2.5; 400]).unwrap();
    for (a, b) in w.cov.iter().zip(&s.cov) {
        assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()));
    }
}

#[test]
fn frechet_with_diagonal_covariances_matches_the_closed_form() {
    // FD = Σ (μ1 − μ2)² + Σ (σ1 − σ2)² per dimension when both covariances are diagonal.
    let d = 6;
    let mk = |mean: Vec<f64>, var: Vec<f64>| {
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            cov[i * d + i] = var[i];
        }
        FeatureStats {
            dim: d,
            count: 100,
            mean,
            cov,
        }
    };
    let a = mk(vec![0.0, 1.0, 2.0, -1.0, 0.5, 3.0], vec![1.0, 4.0, 0.25, 9.0, 2.0, 0.0]);
    let b = mk(vec![1.0, 1.0, 0.0, -1.5, 0.5, 2.0], vec![4.0, 1.0, 0.25, 1.0, 8.0, 3.0]);
    let want_mean: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let want_cov: f64 = (0..d)
        .map(|i| (a.cov[i * d + i].sqrt() - b.cov[i * d + i].sqrt()).powi(2))
        .sum();
    let fd = frechet_distance(&a, &b).unwrap();
    assert!((fd.mean_term - want_mean).abs() < 1e-12, "{fd:?}");
    assert!((fd.cov_term - want_cov).abs() < 1e-12, "{fd:?} vs {want_cov}");
    assert!((fd.distance - want_mean - want_cov).abs() < 1e-12);
    // Symmetric in its arguments.
    let back = frechet_distance(&b, &a).unwrap();
    assert!((back.distance - fd.distance).abs() < 1e-12);
}

#[test]
fn trace_of_the_square_root_matches_the_2x2_closed_form() {
    // For 2×2 M with real non-negative eigenvalues, Tr(M^{1/2}) = sqrt(Tr M + 2·sqrt(det M)).
    let s1: [f64; 4] = [2.0, 0.7, 0.7, 1.0];
    let s2: [f64; 4] = [1.5, -0.4, -0.4, 0.8];
    let m = [
        s1[0] * s2[0] + s1[1] * s2[2],
        s1[0] * s2[1] + s1[1] * s2[3],
        s1[2] * s2[0] + s1[3] * s2[2],
        s1[2] * s2[1] + s1[3] * s2[3],
    ];
    let det = m[0] * m[3] - m[1] * m[2];
    let want = (m[0] + m[3] + 2.0 * det.sqrt()).sqrt();
    let got = trace_sqrt_product(&s1, &s2, 2).unwrap();
    assert!((got - want).abs() < 1e-13, "{got} vs {want}");
}

#[test]
fn frechet_is_invariant_under_rotations_of_the_features() {
    let d = 24;
    let scale: Vec<f32> = (0..d).map(|i| 0.5 + (i % 5) as f32 * 0.2).collect();
    let x = random_rows(300, d, 11, &scale, 0.0);
    let y = random_rows(250, d, 12, &scale.iter().rev().copied().collect::<Vec<_>>(), 0.3);
    // A random orthogonal matrix: the eigenvectors of a random symmetric one.
    let mut a = vec![0.0f32; d * d];
    RngStream::new(3, 3).fill(Distribution::Normal, 0, &mut a);
    let sym: Vec<f64> = (0..d * d)
        .map(|k| (a[k] as f64 + a[(k % d) * d + k / d] as f64) / 2.0)
        .collect();
    let (_, r) = symmetric_eigen(&sym, d).unwrap();
    // R is orthogonal: RᵀR = I.
    for i in 0..d {
        for j in 0..d {
            let dot: f64 = (0..d).map(|k| r[k * d + i] * r[k * d + j]).sum();
            assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
        }
    }
    let rotate = |rows: &[f32]| -> Vec<f32> {
        rows.chunks_exact(d)
            .flat_map(|row| {
                (0..d)
                    .map(|j| (0..d).map(|k| row[k] as f64 * r[k * d + j]).sum::<f64>() as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let stats = |rows: &[f32]| FeatureStats::from_rows(rows, d).unwrap();
    let plain = frechet_distance(&stats(&x), &stats(&y)).unwrap().distance;
    let rotated = frechet_distance(&stats(&rotate(&x)), &stats(&rotate(&y)))
        .unwrap()
        .distance;
    assert!(plain > 0.1, "{plain}");
    // The rotated features are rounded to f32, so agreement is to f32 precision.
    assert!((plain - rotated).abs() < 1e-5 * plain, "{plain} vs {rotated}");
    // psd_sqrt of a covariance squares back to it.
    let s = stats(&x);
    let root = psd_sqrt(&s.cov, d).unwrap();
    for i in 0..d {
        for j in 0..d {
            let v: f64 = (0..d).map(|k| root[i * d + k] * root[k * d + j]).sum();
            assert!((v - s.cov[i * d + j]).abs() < 1e-10);
        }
    }
}

#[test]
fn frechet_refuses_what_it_cannot_measure() {
    let one = FeatureStats::from_rows(&[1.0, 2.0], 2);
    assert!(format!("{:#}", one.unwrap_err()).contains("at least 2"));
    let a = FeatureStats::from_rows(&[1.0, 2.0, 3.0, 4.0], 2).unwrap();
    let b = FeatureStats::from_rows(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3).unwrap();
    assert!(frechet_distance(&a, &b).is_err());
}

// ---------------------------------------------------------------------------------------------------
// Scoring folders
// ---------------------------------------------------------------------------------------------------

#[test]
fn generate_names_give_class_and_index() {
    assert_eq!(parse_generated_name("0002_00017.png"), Some((2, 17)));
    assert_eq!(parse_generated_name("1000_123456.png"), Some((1000, 123456)));
    for other in [
        "0002_00017_stages.png",
        "grid.png",
        "job.json",
        "2_17.png",
        "0002_00017.jpg",
        "ab12_00001.png",
    ] {
        assert_eq!(parse_generated_name(other), None, "{other}");
    }
}

/// A folder laid out as `nvg generate` writes it: `CCCC_IIIII.png` per image, plus files to ignore.
fn generate_folder(dir: &Path, per_class: usize) {
    for c in 0..3 {
        for i in 0..per_class {
            let img = square(c, 500, (c * 1000 + i) as u64);
            write_png(&dir.join(format!("{c:04}_{i:05}.png")), &img).unwrap();
        }
    }
    std::fs::write(dir.join("job.json"), "{}").unwrap();
    write_png(&dir.join("0000_00000_stages.png"), &RgbImage::new(4, 4)).unwrap();
    write_png(&dir.join("grid.png"), &RgbImage::new(4, 4)).unwrap();
}

fn image_folder(dir: &Path, per_class: usize, seed: u64) {
    for (c, name) in names().iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for i in 0..per_class {
            write_png(
                &dir.join(name).join(format!("{i}.png")),
                &square(c, seed, (c * 1000 + i) as u64),
            )
            .unwrap();
        }
    }
}

#[test]
fn score_reads_a_generate_folder_and_measures_the_distance_to_real_images() {
    let dir = temp_dir("score");
    let (gen_dir, real_dir) = (dir.join("generated"), dir.join("real"));
    std::fs::create_dir_all(&gen_dir).unwrap();
    generate_folder(&gen_dir, 10);
    image_folder(&real_dir, 12, 77);
    let (kind, files) = scored_images(&gen_dir, &names()).unwrap();
    assert_eq!(kind, FolderKind::Generated);
    assert_eq!(files.len(), 30);
    assert!(files.iter().all(|(p, c)| {
        p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!("{c:04}_"))
    }));
    let (kind, files) = scored_images(&real_dir, &names()).unwrap();
    assert_eq!((kind, files.len()), (FolderKind::ImageFolder, 36));

    let (clf, _) = trained();
    let path = dir.join("clf.safetensors");
    clf.save(&path).unwrap();
    let opts = ScoreOptions {
        classifier: Some(path.clone()),
        images: vec![gen_dir.clone()],
        real: Some(real_dir.clone()),
        json: true,
        batch: 7,
    };
    let report = score(&opts).unwrap();
    assert_eq!(report.accuracy.total, vec![10, 10, 10]);
    assert!(report.accuracy.accuracy() >= 0.9, "{:?}", report.accuracy);
    let fd = report.frechet.as_ref().unwrap();
    assert_eq!(fd.real_images, 36);
    assert!(fd.distance.distance.is_finite() && fd.distance.distance >= 0.0);
    // Same class mix on both sides: the class-matched distance equals the plain one.
    let matched = fd.class_matched.unwrap();
    assert!(
        (matched.distance - fd.distance.distance).abs() < 1e-9 * (1.0 + fd.distance.distance),
        "{matched:?} vs {:?}",
        fd.distance
    );
    let json = report.to_json();
    assert_eq!(json["kind"], "generated");
    assert_eq!(json["count"], 30);
    assert_eq!(json["per_class"][1]["images"], 10);
    // Scoring the real folder against itself: distance 0.
    let same = score(&ScoreOptions {
        images: vec![real_dir.clone()],
        ..opts.clone()
    })
    .unwrap();
    assert!(same.frechet.unwrap().distance.distance < 1e-6);
    assert!(report.render().contains("accuracy of the intended class"));
}

#[test]
fn score_refuses_folders_without_images_or_with_unknown_classes() {
    let dir = temp_dir("refuse");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("job.json"), "{}").unwrap();
    let err = format!("{:#}", scored_images(&empty, &names()).unwrap_err());
    assert!(err.contains("no images to score"), "{err}");
    // Class folders without images.
    let hollow = dir.join("hollow");
    std::fs::create_dir_all(hollow.join("0-red")).unwrap();
    let err = format!("{:#}", scored_images(&hollow, &names()).unwrap_err());
    assert!(err.contains("no images to score"), "{err}");
    // A generated class beyond the classifier's classes.
    let beyond = dir.join("beyond");
    std::fs::create_dir_all(&beyond).unwrap();
    write_png(&beyond.join("0007_00000.png"), &square(0, 1, 1)).unwrap();
    let err = format!("{:#}", scored_images(&beyond, &names()).unwrap_err());
    assert!(
        err.contains("class 7 is not one of the classifier's 3 classes"),
        "{err}"
    );
    // An ImageFolder whose folder names are neither class names nor class ids.
    let odd = dir.join("odd");
    std::fs::create_dir_all(odd.join("cats")).unwrap();
    write_png(&odd.join("cats").join("a.png"), &square(0, 1, 1)).unwrap();
    let err = format!("{:#}", scored_images(&odd, &names()).unwrap_err());
    assert!(err.contains("`cats`"), "{err}");
    // Folders named by class id map to those ids.
    let ids = dir.join("ids");
    std::fs::create_dir_all(ids.join("2")).unwrap();
    write_png(&ids.join("2").join("a.png"), &square(2, 1, 1)).unwrap();
    let (_, files) = scored_images(&ids, &names()).unwrap();
    assert_eq!(files[0].1, 2);
    assert!(scored_images(&dir.join("missing"), &names()).is_err());
}

#[test]
fn classifier_shapes_that_cannot_run_are_refused_with_the_reason() {
    let config = |widths: Vec<usize>, resolution: usize| ClassifierConfig {
        classes: vec!["a".into(), "b".into()],
        resolution,
        widths,
        groups: 8,
    };
    assert!(config(vec![32, 64], 64).validate().is_ok());
    let refused = |c: ClassifierConfig, needle: &str| {
        let err = format!("{:#}", c.validate().unwrap_err());
        assert!(err.contains(needle), "{:?}: {err}", c.widths);
    };
    refused(config(vec![32; 17], 64), "17 convolution stages");
    refused(config(vec![], 64), "at least one convolution stage");
    refused(config(vec![32, 60], 64), "not a positive multiple of the 8 norm groups");
    refused(config(vec![32, 64, 64], 30), "resolution 30");
}
