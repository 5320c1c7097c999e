//! `nvg eval`: quality measurement of generated images with a classifier trained on the real images
//! (`nvg::eval`, docs/evaluation.md).
//!
//! - `nvg eval train-classifier`: trains the classifier on an ImageFolder, logs every epoch (JSONL beside
//!   the output), writes the classifier atomically after every epoch and, with `--val`, reports the
//!   Fréchet distance between the training and validation features (the floor a generator can reach).
//! - `nvg eval score`: the accuracy of the intended class (overall, balanced, per class) of an
//!   ImageFolder or an `nvg generate` output folder, and with `--real` the Fréchet distance between the
//!   real images' features and the scored ones'.

use crate::progress::Progress;
use crate::tokenize::image_folder;
use anyhow::{Context, Result, bail, ensure};
use nvg::eval::classifier::{Classifier, ClassifierConfig, ClassifierTrainSettings, ClassifierTrainer, Embedding};
use nvg::eval::{AccuracyReport, FeatureStats, FrechetDistance, frechet_distance};
use nvg::image::ImageSet;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The `nvg eval` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EvalCommand {
    /// Train the evaluation classifier on an ImageFolder of real images (e.g. target/emoji/train).
    ///
    /// A small CNN (conv / group norm / SiLU ×4, mean pool, linear) trained with AdamW on a cross-entropy
    /// weighted by inverse class frequency, with random ±--shift px translations (white fill). Logs every
    /// epoch to OUT.log.jsonl (OUT without its extension) and rewrites OUT atomically after every epoch.
    TrainClassifier(TrainClassifierOptions),
    /// Score images with a trained classifier: accuracy of the intended class and, with --real, the
    /// Fréchet distance between real and scored images in the classifier's feature space.
    ///
    /// --images is the output folder of `nvg generate` (CCCC_IIIII.png, class CCCC) or an ImageFolder
    /// (one sub-folder per class, named as the classifier's classes or starting with the class id);
    /// several --images folders are scored as one pool (`--images s8/ --images s9/` for two seeds' jobs).
    Score(ScoreOptions),
}

/// Options of `nvg eval train-classifier`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainClassifierOptions {
    /// Training images: an ImageFolder (one sub-folder per class; sorted names are the classes).
    #[arg(long)]
    pub images: PathBuf,
    /// Validation images (an ImageFolder with the same class folders): accuracy every epoch, and the
    /// train-vs-val Fréchet distance at the end.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// The classifier file to write (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training images.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate (warmup over 5% of the steps, then linear decay to a tenth).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f32,
    /// AdamW weight decay (convolution and linear weights).
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Seed of the initial weights, the data order and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side (images of another size are resized as a whole).
    #[arg(long, default_value_t = 64)]
    pub resolution: usize,
    /// Largest random translation in pixels (0: no augmentation).
    #[arg(long, default_value_t = 4)]
    pub shift: usize,
    /// Plain cross-entropy instead of weighting each image by the inverse frequency of its class.
    #[arg(long)]
    pub no_balance: bool,
    /// Stage widths, comma-separated (the first keeps the resolution, each later one halves it).
    #[arg(long, default_value = "32,64,128,128")]
    pub widths: String,
}

/// Options of `nvg eval score`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreOptions {
    /// The classifier (from `nvg eval train-classifier`); default: the built-in emoji model's
    /// (models/emoji/classifier.safetensors, or in $NVG_MODEL_DIR).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Images to score: an `nvg generate` output folder or an ImageFolder. Repeat it to pool several
    /// folders into one score (e.g. two `nvg generate` jobs at different seeds: their images may share
    /// names, each is scored once).
    #[arg(long, required = true)]
    pub images: Vec<PathBuf>,
    /// Real images (an ImageFolder such as target/emoji/val, or a generate-style folder) for the Fréchet
    /// distance.
    #[arg(long)]
    pub real: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

pub fn run(cmd: &EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::TrainClassifier(o) => {
            train_classifier(o)?;
        }
        EvalCommand::Score(o) => {
            let report = score(o)?;
            if o.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.render());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Image listings
// ---------------------------------------------------------------------------------------------------

/// How a folder of images gives each image its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    /// `nvg generate` output: `CCCC_IIIII.png`, class CCCC.
    Generated,
    /// One sub-folder per class.
    ImageFolder,
    /// Pooled folders of both kinds.
    Mixed,
}

impl FolderKind {
    pub fn name(self) -> &'static str {
        match self {
            FolderKind::Generated => "generated",
            FolderKind::ImageFolder => "image-folder",
            FolderKind::Mixed => "mixed",
        }
    }
}

/// (class, index) of an `nvg generate` image name (`CCCC_IIIII.png`: at least 4 and 5 digits); `None` for
/// any other name (the `_stages.png` strips, grids, job.json).
pub fn parse_generated_name(name: &str) -> Option<(usize, usize)> {
    let stem = name.strip_suffix(".png")?;
    let (c, i) = stem.split_once('_')?;
    let digits = |s: &str, min: usize| s.len() >= min && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(c, 4) || !digits(i, 5) {
        return None;
    }
    Some((c.parse().ok()?, i.parse().ok()?))
}

/// The class id of an ImageFolder sub-folder: its position in `classes` when it is one of them, else the
/// number it starts with (`3`, `3-food-drink`).
fn folder_class(name: &str, classes: &[String]) -> Option<usize> {
    if let Some(i) = classes.iter().position(|c| c == name) {
        return Some(i);
    }
    let digits: String = name.chars().take_while(|c| c.is_ascii_digit()).collect();
    let rest = &name[digits.len()..];
    if digits.is_empty() || !(rest.is_empty() || rest.starts_with(['-', '_', ' ', '.'])) {
        return None;
    }
    digits.parse().ok()
}

/// The images of `dir` with their intended classes (ids into `classes`): an `nvg generate` output folder
/// (recognised by its `CCCC_IIIII.png` files) or an ImageFolder. Fails when the folder holds no images or
/// an image's class is not one of `classes`.
pub fn scored_images(dir: &Path, classes: &[String]) -> Result<(FolderKind, Vec<(PathBuf, usize)>)> {
    ensure!(dir.is_dir(), "{}: not a folder", dir.display());
    let mut generated = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some((class, index)) = parse_generated_name(name) {
            generated.push((class, index, path));
        }
    }
    if !generated.is_empty() {
        generated.sort();
        if let Some((c, _, p)) = generated.iter().find(|(c, _, _)| *c >= classes.len()) {
            bail!(
                "{}: class {c} is not one of the classifier's {} classes (0..{})",
                p.display(),
                classes.len(),
                classes.len() - 1
            );
        }
        return Ok((
            FolderKind::Generated,
            generated.into_iter().map(|(c, _, p)| (p, c)).collect(),
        ));
    }
    let has_subfolders = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .any(|e| e.path().is_dir());
    if !has_subfolders {
        bail!(
            "{}: no images to score: expected the output folder of `nvg generate` (CCCC_IIIII.png) or an \
             ImageFolder (one sub-folder of .png/.jpg images per class)",
            dir.display()
        );
    }
    let folder = image_folder(dir)?;
    let mut ids = Vec::with_capacity(folder.classes.len());
    for name in &folder.classes {
        let id = folder_class(name, classes)
            .filter(|&id| id < classes.len())
            .with_context(|| {
                format!(
                    "{}: class folder `{name}` is not one of the classifier's classes ({}) and does not start \
                     with a class id below {}",
                    dir.display(),
                    classes.join(", "),
                    classes.len()
                )
            })?;
        ids.push(id);
    }
    let files: Vec<(PathBuf, usize)> = folder.files.into_iter().map(|(p, c)| (p, ids[c])).collect();
    ensure!(
        !files.is_empty(),
        "{}: no images to score: the class sub-folders hold no .png/.jpg images",
        dir.display()
    );
    Ok((FolderKind::ImageFolder, files))
}

fn load_set(files: &[(PathBuf, usize)], resolution: usize, what: &Path) -> Result<ImageSet> {
    ImageSet::load(files, resolution).with_context(|| format!("reading {}", what.display()))
}

fn embed(classifier: &Classifier, set: &ImageSet, batch: usize, label: &str) -> Result<Embedding> {
    let mut progress = Progress::new(label, "images", set.len());
    let e = classifier.embed_with(set, batch, |n| progress.add(n))?;
    progress.finish();
    Ok(e)
}

/// The log written beside a classifier file: `clf.safetensors` → `clf.log.jsonl`.
pub fn log_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.log.jsonl"))
}

fn per_class_json(report: &AccuracyReport, classes: &[String]) -> Value {
    Value::Array(
        (0..classes.len())
            .map(|c| {
                json!({
                    "class": c, "name": classes[c], "images": report.total[c], "correct": report.correct[c],
                    "accuracy": report.class_accuracy(c),
                })
            })
            .collect(),
    )
}

fn fd_json(fd: &FrechetDistance) -> Value {
    json!({ "distance": fd.distance, "mean_term": fd.mean_term, "cov_term": fd.cov_term })
}

// ---------------------------------------------------------------------------------------------------
// train-classifier
// ---------------------------------------------------------------------------------------------------

/// What `nvg eval train-classifier` measured at the end.
#[derive(Debug, Clone)]
pub struct TrainClassifierReport {
    pub classifier: Classifier,
    /// Validation accuracy after the last epoch (with --val).
    pub val: Option<AccuracyReport>,
    /// Fréchet distance between the training and validation features (with --val).
    pub fd_train_val: Option<FrechetDistance>,
    pub seconds: f64,
}

fn parse_widths(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|w| {
            w.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("--widths: `{w}` is not a positive integer"))
        })
        .collect()
}

pub fn train_classifier(o: &TrainClassifierOptions) -> Result<TrainClassifierReport> {
    let t0 = Instant::now();
    ensure!(o.epochs > 0 && o.batch > 0, "--epochs and --batch must be at least 1");
    crate::check_learning_rate(o.lr)?;
    // Decoupled decay multiplies the weights by 1 − lr·wd each step: at 1 or more they vanish or flip.
    ensure!(
        o.weight_decay.is_finite() && o.weight_decay >= 0.0 && (o.lr as f64) * o.weight_decay < 1.0,
        "--weight-decay must be a finite number >= 0 with --lr × --weight-decay below 1, not {}",
        o.weight_decay
    );
    ensure!(
        o.resolution == 0 || o.shift < o.resolution, // a resolution of 0 is refused by the config below
        "--shift {} moves every image out of its {} px frame (it must be less than --resolution)",
        o.shift,
        o.resolution
    );
    let folder = image_folder(&o.images)?;
    ensure!(
        !folder.files.is_empty(),
        "{}: no images in the class folders",
        o.images.display()
    );
    let mut config = ClassifierConfig::new(folder.classes.clone(), o.resolution)?;
    config.widths = parse_widths(&o.widths)?;
    config.validate().context("--widths / --resolution")?;
    let settings = ClassifierTrainSettings {
        epochs: o.epochs,
        batch: o.batch,
        lr: o.lr,
        weight_decay: o.weight_decay,
        seed: o.seed,
        shift: o.shift,
        balance: !o.no_balance,
        ..ClassifierTrainSettings::default()
    };
    let train = load_set(&folder.files, o.resolution, &o.images)?;
    let val = match &o.val {
        Some(dir) => {
            let vf = image_folder(dir)?;
            ensure!(
                vf.classes == folder.classes,
                "{}: the class folders ({}) differ from those of {} ({})",
                dir.display(),
                vf.classes.join(", "),
                o.images.display(),
                folder.classes.join(", ")
            );
            ensure!(
                !vf.files.is_empty(),
                "{}: no images in the class folders",
                dir.display()
            );
            Some(load_set(&vf.files, o.resolution, dir)?)
        }
        None => None,
    };
    let mut trainer = ClassifierTrainer::new(config.clone(), settings.clone(), &train)?;
    let params: usize = trainer.classifier.params.values().map(|t| t.numel()).sum();
    eprintln!(
        "training a classifier ({:.3} M parameters, widths {:?}, {}-d features) on {} images of {} classes at {}²: \
         {} epochs of {} steps of {}, lr {:.1e}{}",
        params as f64 / 1e6,
        config.widths,
        config.feature_width(),
        train.len(),
        config.num_classes(),
        o.resolution,
        o.epochs,
        trainer.steps_per_epoch(),
        o.batch,
        o.lr,
        if settings.balance { ", class-balanced loss" } else { "" }
    );
    if let Some(parent) = o.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let log_file = log_path(&o.out);
    let mut log = std::fs::File::create(&log_file).with_context(|| log_file.display().to_string())?;
    let mut progress = Progress::new("train-classifier", "images", train.len() * o.epochs);
    let mut last_val = None;
    let info_base = json!({
        "train_images": train.len(), "train_dir": o.images.display().to_string(),
        "val_images": val.as_ref().map(|v| v.len()),
        "val_dir": o.val.as_ref().map(|p| p.display().to_string()),
        "settings": settings.describe(),
    });
    for epoch in 0..o.epochs {
        let stats = trainer.train_epoch(&train, epoch, |n| progress.add(n))?;
        let mut entry = json!({
            "epoch": epoch + 1, "loss": stats.loss, "train_accuracy": stats.accuracy, "lr": stats.lr_end,
            "step": trainer.step, "seconds": t0.elapsed().as_secs_f64(),
        });
        let mut line = format!(
            "epoch {}/{}: loss {:.4}, train accuracy {:.3}",
            epoch + 1,
            o.epochs,
            stats.loss,
            stats.accuracy
        );
        if let Some(v) = &val {
            let e = trainer.classifier.embed(v, o.batch)?;
            let report = AccuracyReport::new(&e.predictions(), &v.classes, config.num_classes())?;
            let val_loss = e.mean_cross_entropy(&v.classes);
            entry["val_loss"] = val_loss.into();
            entry["val_accuracy"] = report.accuracy().into();
            entry["val_balanced_accuracy"] = report.balanced_accuracy().into();
            entry["val_per_class"] = (0..config.num_classes())
                .map(|c| report.class_accuracy(c))
                .collect::<Vec<_>>()
                .into();
            line += &format!(
                ", val loss {:.4}, val accuracy {:.3} (balanced {:.3})",
                val_loss,
                report.accuracy(),
                report.balanced_accuracy()
            );
            last_val = Some(report);
        }
        writeln!(log, "{entry}")?;
        progress.message(&line);
        let mut info = info_base.clone();
        info["epochs_done"] = (epoch + 1).into();
        info["last_epoch"] = entry;
        trainer.classifier.info = info;
        trainer.classifier.save(&o.out)?;
    }
    progress.finish();
    let mut fd_train_val = None;
    if let Some(v) = &val {
        let clf = &trainer.classifier;
        let et = embed(clf, &train, o.batch, "train features")?;
        let ev = embed(clf, v, o.batch, "val features")?;
        let fd = frechet_distance(
            &FeatureStats::from_rows(&et.features, et.feature_width)?,
            &FeatureStats::from_rows(&ev.features, ev.feature_width)?,
        )?;
        let train_report = AccuracyReport::new(&et.predictions(), &train.classes, config.num_classes())?;
        let entry = json!({
            "final": true, "fd_train_val": fd_json(&fd),
            "train_accuracy_clean": train_report.accuracy(),
            "train_balanced_accuracy_clean": train_report.balanced_accuracy(),
            "seconds": t0.elapsed().as_secs_f64(),
        });
        writeln!(log, "{entry}")?;
        trainer.classifier.info["fd_train_val"] = fd_json(&fd);
        trainer.classifier.info["train_accuracy_clean"] = train_report.accuracy().into();
        trainer.classifier.save(&o.out)?;
        eprintln!(
            "Fréchet distance train vs val features: {:.4} (mean term {:.4}, covariance term {:.4}); train accuracy \
             without augmentation {:.3}",
            fd.distance,
            fd.mean_term,
            fd.cov_term,
            train_report.accuracy()
        );
        if let Some(r) = &last_val {
            eprint!("{}", render_accuracy(r, &config.classes));
        }
        fd_train_val = Some(fd);
    }
    let seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "classifier → {} (log {}) in {:.0} s",
        o.out.display(),
        log_file.display(),
        seconds
    );
    Ok(TrainClassifierReport {
        classifier: trainer.classifier,
        val: last_val,
        fd_train_val,
        seconds,
    })
}

// ---------------------------------------------------------------------------------------------------
// score
// ---------------------------------------------------------------------------------------------------

/// The Fréchet distances of a score run.
#[derive(Debug, Clone)]
pub struct ScoreFrechet {
    pub real: PathBuf,
    pub real_images: usize,
    /// Between all real images and all scored images.
    pub distance: FrechetDistance,
    /// With the real images weighted to the scored images' class mix (`None` when a scored class has no
    /// real images).
    pub class_matched: Option<FrechetDistance>,
}

/// What `nvg eval score` measured.
#[derive(Debug, Clone)]
pub struct ScoreReport {
    pub classifier: PathBuf,
    /// The scored folders, pooled.
    pub images: Vec<PathBuf>,
    pub kind: FolderKind,
    pub classes: Vec<String>,
    pub accuracy: AccuracyReport,
    pub frechet: Option<ScoreFrechet>,
    pub seconds: f64,
}

impl ScoreReport {
    fn folder_names(&self) -> Vec<String> {
        self.images.iter().map(|p| p.display().to_string()).collect()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "classifier": self.classifier.display().to_string(),
            "images": self.folder_names(),
            "kind": self.kind.name(),
            "count": self.accuracy.images(),
            "accuracy": self.accuracy.accuracy(),
            "balanced_accuracy": self.accuracy.balanced_accuracy(),
            "per_class": per_class_json(&self.accuracy, &self.classes),
            "confusion": self.accuracy.confusion,
            "frechet": self.frechet.as_ref().map(|f| json!({
                "real": f.real.display().to_string(),
                "real_images": f.real_images,
                "distance": f.distance.distance,
                "mean_term": f.distance.mean_term,
                "cov_term": f.distance.cov_term,
                "class_matched": f.class_matched.as_ref().map(fd_json),
            })),
            "seconds": self.seconds,
        })
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "{} images ({}) in {}\naccuracy of the intended class: {:.4} ({}/{}), balanced over classes {:.4}\n",
            self.accuracy.images(),
            self.kind.name(),
            self.folder_names().join(" + "),
            self.accuracy.accuracy(),
            self.accuracy.correct.iter().sum::<usize>(),
            self.accuracy.images(),
            self.accuracy.balanced_accuracy()
        );
        s += &render_accuracy(&self.accuracy, &self.classes);
        if let Some(f) = &self.frechet {
            s += &format!(
                "Fréchet distance to {} ({} images): {:.4} (mean term {:.4}, covariance term {:.4})\n",
                f.real.display(),
                f.real_images,
                f.distance.distance,
                f.distance.mean_term,
                f.distance.cov_term
            );
            match &f.class_matched {
                Some(m) => {
                    s += &format!(
                        "  with the real images weighted to the scored class mix: {:.4}\n",
                        m.distance
                    )
                }
                None => s += "  (no class-matched distance: a scored class has no real images)\n",
            }
        }
        s
    }
}

/// A per-class table: images, right, accuracy and the most frequent wrong prediction.
pub fn render_accuracy(r: &AccuracyReport, classes: &[String]) -> String {
    let width = classes.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    let mut s = format!(
        "  {:>3}  {:<width$}  {:>6}  {:>6}  {:>8}  most often mistaken for\n",
        "id", "class", "images", "right", "accuracy"
    );
    for c in 0..classes.len() {
        if r.total[c] == 0 {
            continue;
        }
        let wrong = (0..classes.len())
            .filter(|&p| p != c && r.confusion[c][p] > 0)
            .max_by_key(|&p| (r.confusion[c][p], std::cmp::Reverse(p)));
        let wrong = wrong.map_or(String::new(), |p| format!("{} ({})", classes[p], r.confusion[c][p]));
        s += &format!(
            "  {:>3}  {:<width$}  {:>6}  {:>6}  {:>8.4}  {}\n",
            c,
            classes[c],
            r.total[c],
            r.correct[c],
            r.class_accuracy(c).unwrap_or(0.0),
            wrong
        );
    }
    s
}

/// The images of every folder in `dirs` (see `scored_images`), loaded as one set in the order given;
/// the kind is the folders' common kind, or `Mixed`. A folder given twice is refused: its images would
/// count twice.
fn pooled_images(dirs: &[PathBuf], classes: &[String], resolution: usize) -> Result<(FolderKind, ImageSet)> {
    ensure!(!dirs.is_empty(), "no --images folder given");
    let mut seen: Vec<PathBuf> = Vec::with_capacity(dirs.len());
    let mut kinds = Vec::with_capacity(dirs.len());
    let mut files = Vec::new();
    for dir in dirs {
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        ensure!(
            !seen.contains(&canonical),
            "{}: given twice to --images (its images would count twice)",
            dir.display()
        );
        seen.push(canonical);
        let (k, f) = scored_images(dir, classes)?;
        kinds.push(k);
        files.extend(f);
    }
    let kind = if kinds.iter().all(|&k| k == kinds[0]) {
        kinds[0]
    } else {
        FolderKind::Mixed
    };
    // `ImageSet::load` names the file it cannot read.
    let set = ImageSet::load(&files, resolution).context("reading the images to score")?;
    Ok((kind, set))
}

pub fn score(o: &ScoreOptions) -> Result<ScoreReport> {
    let t0 = Instant::now();
    ensure!(o.batch > 0, "--batch must be at least 1");
    let classifier_path = match &o.classifier {
        Some(p) => p.clone(),
        None => crate::builtin_model::model_file(crate::builtin_model::CLASSIFIER_FILE, "--classifier")?,
    };
    let classifier = Classifier::load(&classifier_path)?;
    let cfg = &classifier.config;
    let (kind, set) = pooled_images(&o.images, &cfg.classes, cfg.resolution)?;
    let e = embed(&classifier, &set, o.batch, "score")?;
    let accuracy = AccuracyReport::new(&e.predictions(), &set.classes, cfg.num_classes())?;
    let frechet = match &o.real {
        Some(real) => {
            let (_, real_files) = scored_images(real, &cfg.classes)?;
            let real_set = load_set(&real_files, cfg.resolution, real)?;
            let er = embed(&classifier, &real_set, o.batch, "real")?;
            let width = cfg.feature_width();
            let scored = FeatureStats::from_rows(&e.features, width).context("the scored images' features")?;
            let real_stats = FeatureStats::from_rows(&er.features, width).context("the real images' features")?;
            let distance = frechet_distance(&real_stats, &scored)?;
            // The real images reweighted so each class has its share among the scored images.
            let mut real_counts = vec![0usize; cfg.num_classes()];
            real_set.classes.iter().for_each(|&c| real_counts[c] += 1);
            let covered = (0..cfg.num_classes()).all(|c| accuracy.total[c] == 0 || real_counts[c] > 0);
            let class_matched = if covered {
                let n = accuracy.images() as f64;
                let weights: Vec<f64> = real_set
                    .classes
                    .iter()
                    .map(|&c| accuracy.total[c] as f64 / n / real_counts[c] as f64)
                    .collect();
                match FeatureStats::weighted(&er.features, width, &weights) {
                    Ok(stats) => Some(frechet_distance(&stats, &scored)?),
                    Err(_) => None,
                }
            } else {
                None
            };
            Some(ScoreFrechet {
                real: real.clone(),
                real_images: real_set.len(),
                distance,
                class_matched,
            })
        }
        None => None,
    };
    Ok(ScoreReport {
        classifier: classifier_path,
        images: o.images.clone(),
        kind,
        classes: cfg.classes.clone(),
        accuracy,
        frechet,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
