//! `nvg tokenize`: an ImageFolder (one sub-folder per class) → a pre-tokenized dataset for training.

use crate::progress::Progress;
use anyhow::{Context, Result, bail, ensure};
use nvg::dataset::{DatasetHeader, DatasetWriter, Record};
use nvg::image::{Crop, preprocess, read_image, to_tensor};
use nvg::structure_map::{ChildOrder, order_children, stage_labels};
use nvg::tokenizer::Tokenizer;
use nvg_engine::Tensor;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `nvg tokenize`.
#[derive(Debug, Clone)]
pub struct TokenizeOptions {
    pub images: PathBuf,
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    /// Crops per image: 1 = the centre crop; more = that many random crops.
    pub crops: usize,
    /// Image side after preprocessing (must map onto a power-of-two latent grid).
    pub resolution: usize,
    /// Tokenize at most this many images (in folder order).
    pub limit: Option<usize>,
    /// Seed of the random crops.
    pub seed: u64,
    /// Images encoded together.
    pub batch: usize,
    /// Resize each image as a whole instead of the official resize-and-crop (`crops` must be 1).
    pub whole: bool,
    /// How the children of every split are named (the official merge order, or outside first).
    pub child_order: ChildOrder,
    /// Also write each crop mirrored left to right, as the record after it (data augmentation).
    pub mirror: bool,
}

/// `--child-order` of `nvg tokenize` (see `nvg::structure_map::ChildOrder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChildOrderArg {
    /// The official tokenizer's names: the child merged first is cluster 2p.
    Merge,
    /// Our extension: the child lying farther out from the centre is cluster 2p (bit 0).
    OutsideFirst,
}

impl From<ChildOrderArg> for ChildOrder {
    fn from(a: ChildOrderArg) -> ChildOrder {
        match a {
            ChildOrderArg::Merge => ChildOrder::Merge,
            ChildOrderArg::OutsideFirst => ChildOrder::OutsideFirst,
        }
    }
}

/// What `nvg tokenize` did.
#[derive(Debug)]
pub struct TokenizeReport {
    pub classes: Vec<String>,
    pub images: usize,
    pub records: usize,
    /// Files that could not be read, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    pub seconds: f64,
    pub encode_seconds: f64,
    pub cluster_seconds: f64,
    pub quantize_seconds: f64,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// An ImageFolder: class names by id, and every image file with its class id.
pub struct ImageFolder {
    pub classes: Vec<String>,
    pub files: Vec<(PathBuf, usize)>,
}

/// Class folders (sorted names → class ids) and their image files (sorted).
pub fn image_folder(root: &Path) -> Result<ImageFolder> {
    let mut classes: Vec<String> = std::fs::read_dir(root)
        .with_context(|| format!("reading image folder {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        bail!(
            "{}: no class sub-folders (expected one folder of images per class)",
            root.display()
        );
    }
    let mut files = Vec::new();
    for (id, name) in classes.iter().enumerate() {
        let mut imgs: Vec<PathBuf> = std::fs::read_dir(root.join(name))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        imgs.sort();
        files.extend(imgs.into_iter().map(|p| (p, id)));
    }
    Ok(ImageFolder { classes, files })
}

/// The most random crops `--crops` takes per image (each is a record: 64 of one image is already a lot).
pub const MAX_CROPS: usize = 64;

pub fn tokenize(opts: &TokenizeOptions) -> Result<TokenizeReport> {
    let t0 = Instant::now();
    if opts.crops == 0 || opts.batch == 0 {
        bail!("--crops and --batch must be at least 1");
    }
    // Every crop of a batch's images is encoded at once (batch × crops × (1 + mirror) views).
    if opts.crops > MAX_CROPS {
        bail!("--crops {} is more than {MAX_CROPS} crops per image", opts.crops);
    }
    if opts.whole && opts.crops != 1 {
        bail!(
            "--whole takes each image once, as a whole: it does not go with --crops {}",
            opts.crops
        );
    }
    ensure!(opts.limit != Some(0), "--limit must be at least 1");
    let ImageFolder { classes, mut files } = image_folder(&opts.images)?;
    if let Some(n) = opts.limit {
        files.truncate(n);
    }
    if files.is_empty() {
        bail!(
            "{}: no .png/.jpg/.jpeg images in the class folders",
            opts.images.display()
        );
    }
    let tok = Tokenizer::load_for_resolution(&opts.tokenizer, opts.resolution)
        .with_context(|| format!("--resolution {}", opts.resolution))?;
    let grid = tok.grid();
    let header = DatasetHeader {
        grid_side: grid.side(),
        stages: grid.stages(),
        codebook_size: tok.config.codebook_size,
        num_classes: classes.len(),
        count: 0,
        tokenizer_hash: tok.codes_hash,
        child_order: opts.child_order,
    };
    let mut writer = DatasetWriter::create(&opts.out, header)?;
    eprintln!(
        "tokenizing {} images of {} classes from {} at {}×{} ({} crop{} each{}) into {}",
        files.len(),
        classes.len(),
        opts.images.display(),
        opts.resolution,
        opts.resolution,
        opts.crops,
        if opts.crops == 1 { "" } else { "s" },
        if opts.mirror { ", and each mirrored" } else { "" },
        opts.out.display()
    );
    let mut progress = Progress::new("tokenize", "images", files.len());
    let mut report = TokenizeReport {
        classes: classes.clone(),
        images: 0,
        records: 0,
        skipped: Vec::new(),
        seconds: 0.0,
        encode_seconds: 0.0,
        cluster_seconds: 0.0,
        quantize_seconds: 0.0,
    };
    for (chunk_index, chunk) in files.chunks(opts.batch).enumerate() {
        // Decode and crop in parallel; unreadable files are reported and skipped.
        let loaded: Vec<Result<Vec<Tensor>>> = chunk
            .par_iter()
            .enumerate()
            .map(|(k, (path, _))| {
                let img = read_image(path)?;
                let index = (chunk_index * opts.batch + k) as u64;
                let mut views = Vec::with_capacity(opts.crops * (1 + opts.mirror as usize));
                for c in 0..opts.crops {
                    let crop = if opts.whole {
                        Crop::Whole
                    } else if opts.crops == 1 {
                        Crop::Center
                    } else {
                        Crop::Random {
                            seed: opts.seed,
                            stream: index * opts.crops as u64 + c as u64,
                        }
                    };
                    let pre = preprocess(&img, opts.resolution, crop)?;
                    views.push(to_tensor(&pre)?);
                    if opts.mirror {
                        views.push(to_tensor(&pre.mirrored())?);
                    }
                }
                Ok(views)
            })
            .collect();
        let mut tensors = Vec::new();
        let mut labels_of = Vec::new();
        for ((path, class), r) in chunk.iter().zip(loaded) {
            match r {
                Ok(ts) => {
                    labels_of.extend(std::iter::repeat_n(*class, ts.len()));
                    tensors.extend(ts);
                    report.images += 1;
                }
                Err(e) => report.skipped.push((path.clone(), format!("{e:#}"))),
            }
        }
        if !tensors.is_empty() {
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let batch = Tensor::stack(&refs, 0)?;
            let t = Instant::now();
            let features = tok.encode(&batch)?;
            report.encode_seconds += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let tokens = tok.token_major(&features)?;
            let mut maps = tok.structure_maps(&tokens)?;
            if opts.child_order != ChildOrder::Merge {
                // Renaming before quantisation: every cluster keeps its tokens, so its code is the same.
                for map in &mut maps {
                    let leaf = order_children(&grid, &map[grid.stages() - 1], opts.child_order);
                    *map = stage_labels(&grid, &leaf);
                }
            }
            report.cluster_seconds += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let q = tok.quantizer.quantize(&tokens, &maps)?;
            report.quantize_seconds += t.elapsed().as_secs_f64();
            let codes: Vec<Vec<i64>> = q
                .codes
                .iter()
                .map(|c| c.to_i64_vec())
                .collect::<nvg_engine::Result<_>>()?;
            for (i, (map, &class)) in maps.iter().zip(&labels_of).enumerate() {
                let per_stage = codes
                    .iter()
                    .enumerate()
                    .map(|(s, c)| c[i << s..(i + 1) << s].to_vec())
                    .collect();
                writer.push(&Record {
                    class,
                    leaf_labels: map[grid.stages() - 1].clone(),
                    codes: per_stage,
                })?;
            }
        }
        progress.add(chunk.len());
    }
    progress.finish();
    report.records = writer.count();
    if report.records == 0 {
        bail!(
            "no image could be read ({} skipped); no dataset written",
            report.skipped.len()
        );
    }
    writer.finish()?;
    write_sidecars(&opts.out, &report)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// `OUT.classes.json` (class names by id) and, when images were skipped, `OUT.skipped.txt`.
fn write_sidecars(out: &Path, report: &TokenizeReport) -> Result<()> {
    let side = |ext: &str| {
        let mut name = out.file_name().unwrap_or_default().to_os_string();
        name.push(ext);
        out.with_file_name(name)
    };
    let json = serde_json::json!({ "classes": report.classes, "images": report.images, "records": report.records });
    let text = serde_json::to_string_pretty(&json)?;
    nvg_engine::io::atomic_write(&side(".classes.json"), |f| {
        std::io::Write::write_all(f, text.as_bytes())
    })?;
    if !report.skipped.is_empty() {
        let list: String = report
            .skipped
            .iter()
            .map(|(p, e)| format!("{}\t{e}\n", p.display()))
            .collect();
        nvg_engine::io::atomic_write(&side(".skipped.txt"), |f| std::io::Write::write_all(f, list.as_bytes()))?;
    }
    Ok(())
}
