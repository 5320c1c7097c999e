//! `nvg generate`: class-conditional images at scale — resumable, shardable, deterministic per image.
//!
//! The job is the list of (class, index) pairs, class by class. Image (c, i) is a pure function of
//! (seed, c, i): its randomness comes from its own counter-based streams and the engine is
//! batch-invariant, so it comes out the same in any batch, shard, or run. Each image is written
//! atomically as `CCCC_IIIII.png`; a re-run skips images that exist, so an interrupted job resumes.
//! With class groups (`--class-groups`, or the built-in model's), the job's classes are groups of the
//! generator's classes and image (c, i) is conditioned on the member class chosen from (seed, c, i).

use crate::class_groups::ClassGroups;
use crate::progress::Progress;
use anyhow::{Context, Result, bail, ensure};
use nvg::dataset::Dataset;
use nvg::image::{from_tensor, read_image, structure_map_image, tile, write_png};
use nvg::model::Generator;
use nvg::sampler::schedule::Schedule;
use nvg::sampler::{Generation, ImageNoise, MAX_STRUCTURE_STEPS, SamplerConfig, generate_with_structure, guidance};
use nvg::tokenizer::Tokenizer;
use nvg::weights::WeightSet;
use nvg_engine::Tensor;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Options of `nvg generate` (each flag documented once, here; clap builds `--help` from it).
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateOptions {
    /// Generator weights (.safetensors from `nvg convert`, official key names). Leave out both this and
    /// --tokenizer for the built-in emoji model (models/emoji, or $NVG_MODEL_DIR): 64×64 images of the 9
    /// emoji categories (its classes.json's `groups` gather the generator's classes — a class per category
    /// and emoji style — into the categories, each drawn in the google style).
    #[arg(long, requires = "tokenizer")]
    pub generator: Option<PathBuf>,
    /// Tokenizer weights (.safetensors from `nvg convert` of ae.ckpt): its decoder turns canvases into
    /// images.
    #[arg(long, requires = "generator")]
    pub tokenizer: Option<PathBuf>,
    /// Use the generator file's EMA weights (`ema_model.nvgformer.*`) when it holds both sets.
    #[arg(long)]
    pub ema: bool,
    /// Classes: ids and ranges (`207,360`, `0-9`), `all`, or `null` for unconditional samples. With
    /// class groups these are group ids.
    #[arg(long, default_value = "all")]
    pub classes: String,
    /// Class groups: a JSON file whose `groups` list (`[{"name": ..., "classes": [ids]}, ...]`) gathers
    /// the generator's classes into the job's classes, e.g. emoji categories of a generator trained on
    /// their subcategories. --classes, --per-class, the file names and the grid then count groups, and
    /// each image is conditioned on one member class, in turn from a start drawn from (seed, group).
    /// The built-in model uses its classes.json when that has groups.
    #[arg(long)]
    pub class_groups: Option<PathBuf>,
    /// Images per class (or group; indices 0..N).
    #[arg(long, default_value_t = 1)]
    pub per_class: usize,
    /// Seed: with the class and the index, it determines an image.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Content guidance per stage: a constant, a range `a-b` over the stages, or a list. A schedule
    /// that is 1 everywhere turns guidance off (no unconditional pass).
    #[arg(long, default_value = "1-3.5")]
    pub cfg: String,
    /// Structure-flow guidance per stage (same forms as --cfg).
    #[arg(long, default_value = "1-2.5")]
    pub structure_cfg: String,
    /// Nucleus sampling per stage: a constant, a range `a-b` (the official negative-log schedule), or a
    /// list; 1 keeps every code.
    #[arg(long, default_value = "1-0.5")]
    pub top_p: String,
    /// Keep only the K most likely codes (0: all; 1: greedy).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Softmax temperature of the code draws.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Euler steps of the structure flow at each stage that has one.
    #[arg(long, default_value_t = 25)]
    pub structure_steps: usize,
    /// Scale of the structure flow's starting noise: 1 is the official sampler; lower values let the
    /// model's prediction, not the noise, decide where clusters split (a structure temperature; our
    /// extension).
    #[arg(long, default_value_t = 1.0)]
    pub structure_noise: f32,
    /// Draw every image N times and keep the candidate the generator itself finds most typical of its
    /// class: the highest class evidence, the log-likelihood ratio of the candidate's codes under its
    /// class and under the null class (the implicit classifier that classifier-free guidance steers by;
    /// no other model is asked). Candidate j is the image this job would draw with a seed derived from
    /// (--seed, j), candidate 0 the one it draws with --seed itself, so `--best-of 1` is the plain job.
    /// N times the work; needs content guidance (--cfg not 1); unconditional images keep candidate 0.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub best_of: usize,
    /// With --best-of: rank the candidates by the evidence of their first K stages only (the coarse
    /// stages that lay out the image and its colours; default: every stage).
    #[arg(long, value_name = "K")]
    pub evidence_stages: Option<usize>,
    /// Images (with --best-of: candidates) generated together (does not change any image).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a grid of the job's images (up to 32 classes × 16 images) to this PNG.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Also write each image's stage-by-stage strip (decoded after every stage, over its structure
    /// map) as OUT/CCCC_IIIII_stages.png.
    #[arg(long)]
    pub progressive: bool,
    /// Generate only part i of n of the job (image j when j mod n = i), e.g. for a job array; run
    /// every shard into the same --out.
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    pub shard: (usize, usize),
    /// Also write every image of the job (all shards must be done) as an ADM-evaluator batch: uint8
    /// N×H×W×3 under key arr_0.
    #[arg(long)]
    pub npz: Option<PathBuf>,
    /// Structure-level control: take every image's structure map (its cluster tree) from a record of its
    /// class in this tokenized dataset (`nvg tokenize`, same grid) instead of sampling it with the
    /// structure flow; the content transformer then paints codes onto real images' structures. Which
    /// record is a pure function of (seed, class, index); the null class draws from every record.
    #[arg(long)]
    pub structure_from: Option<PathBuf>,
    /// Where the models run: cpu, cuda (GPU 0), cuda:N (needs a build with --features cuda) or cuda-emu
    /// (the kernels' host emulation: a correctness tool, far slower than the CPU). Devices agree with
    /// the CPU to rounding, so a pixel may differ by one level between runs on different devices.
    #[arg(long, default_value = "cpu", value_parser = crate::bench::parse_device)]
    pub device: nvg_engine::Device,
    /// How a device's matmuls multiply: f32 (the SIMT GEMM, results equal to the CPU's to rounding) or
    /// bf16 (operands rounded to bf16, f32 accumulation on the tensor cores: faster, and the images
    /// differ from f32 ones, so a job records it). The CPU always computes in f32.
    #[arg(long, default_value = "f32", value_parser = crate::bench::parse_matmul)]
    pub matmul: nvg_engine::cuda::MatmulPrecision,
}

impl GenerateOptions {
    /// The generator and tokenizer files: the given ones, or the built-in emoji model's.
    pub fn weight_files(&self) -> Result<(PathBuf, PathBuf)> {
        match (&self.generator, &self.tokenizer) {
            (Some(g), Some(t)) => Ok((g.clone(), t.clone())),
            (None, None) => {
                use crate::builtin_model::{GENERATOR_FILE, TOKENIZER_FILE, model_file};
                let flags = "--generator and --tokenizer";
                Ok((model_file(GENERATOR_FILE, flags)?, model_file(TOKENIZER_FILE, flags)?))
            }
            _ => bail!("--generator and --tokenizer go together (leave both out for the built-in emoji model)"),
        }
    }
}

/// What a run did.
#[derive(Debug)]
pub struct GenerateReport {
    pub job_images: usize,
    pub shard_images: usize,
    pub generated: usize,
    pub skipped_existing: usize,
    pub seconds: f64,
}

/// Parses `--shard i/n`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s
        .split_once('/')
        .with_context(|| format!("--shard `{s}`: expected i/n, e.g. 0/4"))?;
    let (i, n): (usize, usize) = (
        i.trim().parse().context("--shard index")?,
        n.trim().parse().context("--shard count")?,
    );
    ensure!(n > 0 && i < n, "--shard {i}/{n}: the index must be in 0..{n}");
    Ok((i, n))
}

/// Parses `--classes` against a model with `num_classes` classes (null class = `num_classes`).
pub fn parse_classes(s: &str, num_classes: usize) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "all" => out.extend(0..num_classes),
            "null" | "uncond" => out.push(num_classes),
            _ => {
                let (a, b) = match part.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (part, part),
                };
                let parse = |x: &str| {
                    x.trim()
                        .parse::<usize>()
                        .with_context(|| format!("--classes: `{x}` is not a class id"))
                };
                let (a, b) = (parse(a)?, parse(b)?);
                ensure!(a <= b, "--classes: empty range {part}");
                ensure!(
                    b < num_classes,
                    "--classes: class {b} is out of range (the model has classes 0..{}; use `null` for unconditional)",
                    num_classes - 1
                );
                out.extend(a..=b);
            }
        }
    }
    ensure!(!out.is_empty(), "--classes: no class given");
    // A class listed twice would draw the same images twice (same names, same seeds): a skewed FID set.
    let mut seen = std::collections::BTreeSet::new();
    if let Some(c) = out.iter().find(|&&c| !seen.insert(c)) {
        bail!("--classes {s}: class {c} is listed twice (its images would be drawn twice)");
    }
    Ok(out)
}

/// File name of image (class, index).
pub fn image_name(class: usize, index: usize) -> String {
    format!("{class:04}_{index:05}.png")
}

/// Guidance scales, or `None` when the schedule is 1 at every stage (no unconditional pass needed).
fn guidance_or_none(s: &str, stages: usize, flag: &str) -> Result<Option<Vec<f32>>> {
    let v =
        guidance(&Schedule::parse(s).with_context(|| flag.to_string())?, stages).with_context(|| flag.to_string())?;
    Ok(if v.iter().all(|&x| x == 1.0) { None } else { Some(v) })
}

/// The settings that define the job's images; a re-run into the same directory must match them.
fn job_description(
    o: &GenerateOptions,
    generator: &Path,
    classes: &[usize],
    generator_hash: u64,
    structures: Option<&StructureBank>,
    groups: Option<&ClassGroups>,
) -> serde_json::Value {
    let mut job = serde_json::json!({
        "structure_from": structures.map(|b| format!("{:016x}", b.fingerprint)),
        "generator": generator.file_name().map(|f| f.to_string_lossy().into_owned()),
        "generator_fingerprint": format!("{generator_hash:016x}"),
        "ema": o.ema,
        "classes": classes,
        "per_class": o.per_class,
        "seed": o.seed,
        "cfg": o.cfg,
        "structure_cfg": o.structure_cfg,
        "top_p": o.top_p,
        "top_k": o.top_k,
        "temperature": o.temperature,
        "structure_steps": o.structure_steps,
        "structure_noise": o.structure_noise,
    });
    // Only grouped jobs name their groups (and only best-of jobs their N), so the records of earlier
    // jobs stay valid.
    if let Some(g) = groups {
        job["class_groups"] = format!("{:016x}", g.fingerprint()).into();
    }
    if o.best_of > 1 {
        job["best_of"] = o.best_of.into();
        if let Some(k) = o.evidence_stages {
            job["evidence_stages"] = k.into();
        }
    }
    // bf16 matmuls change the images beyond rounding (only on a device: the CPU computes in f32).
    if o.matmul == nvg_engine::cuda::MatmulPrecision::Bf16 && !o.device.is_cpu() {
        job["matmul"] = "bf16".into();
    }
    job
}

/// The class groups of the job: --class-groups, else the built-in model's when it is the one used and
/// its classes.json has groups.
fn class_groups(o: &GenerateOptions, num_classes: usize) -> Result<Option<ClassGroups>> {
    use crate::builtin_model::{CLASSES_FILE, optional_model_file};
    let path = match (&o.class_groups, &o.generator) {
        (Some(p), _) => Some(p.clone()),
        (None, None) => optional_model_file(CLASSES_FILE).filter(|p| ClassGroups::present_in(p)),
        (None, Some(_)) => None,
    };
    path.map(|p| ClassGroups::load(&p, num_classes).context("--class-groups"))
        .transpose()
}

/// A cheap fingerprint of a weights file (size and the first and last MiB), to tell jobs apart.
fn file_fingerprint(path: &Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let len = f.metadata()?.len();
    let mut h = nvg_engine::io::Hasher64::new();
    h.update(&len.to_le_bytes());
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    f.read_exact(&mut buf)?;
    h.update(&buf);
    f.seek(SeekFrom::End(-(buf.len() as i64)))?;
    f.read_exact(&mut buf)?;
    h.update(&buf);
    Ok(h.finish())
}

/// The most images one `nvg generate` job lists (a 50,000-image FID job is 0.5 % of it): its image list
/// is held in memory, so a mistyped `--per-class` is refused instead of aborting on the allocation.
pub const MAX_JOB_IMAGES: usize = 10_000_000;
/// The most candidates `--best-of` draws per image (each is a whole image's work).
pub const MAX_BEST_OF: usize = 1024;

/// The seed candidate `j` of a `--best-of` job draws with: the job's own seed for candidate 0 (so
/// `--best-of 1` is the plain job), a hash of (seed, j) for the others.
pub fn candidate_seed(seed: u64, j: usize) -> u64 {
    if j == 0 {
        return seed;
    }
    let mut h = nvg_engine::io::Hasher64::new();
    h.update(b"best-of");
    h.update(&seed.to_le_bytes());
    h.update(&(j as u64).to_le_bytes());
    h.finish()
}

/// Whether a candidate with class evidence `e` takes the lead from one with `lead`: only by being
/// higher (the first of equals stays), and NaN never leads while a number is there.
pub fn beats(e: f32, lead: f32) -> bool {
    e > lead || lead.is_nan() && !e.is_nan()
}

pub fn run(o: &GenerateOptions) -> Result<GenerateReport> {
    let t0 = std::time::Instant::now();
    ensure!(
        o.per_class > 0 && o.batch > 0 && o.structure_steps > 0,
        "--per-class, --batch and --structure-steps must be at least 1"
    );
    ensure!(
        o.structure_steps <= MAX_STRUCTURE_STEPS,
        "--structure-steps {} is more than {MAX_STRUCTURE_STEPS} (the official sampler takes 25)",
        o.structure_steps
    );
    ensure!(
        (1..=MAX_BEST_OF).contains(&o.best_of),
        "--best-of {} must be in 1..={MAX_BEST_OF} (candidates drawn per image)",
        o.best_of
    );
    ensure!(
        o.evidence_stages.is_none_or(|k| k > 0),
        "--evidence-stages 0 would rank by nothing (give 1 or more, or leave it out for every stage)"
    );
    ensure!(
        o.evidence_stages.is_none() || o.best_of > 1,
        "--evidence-stages ranks the candidates of --best-of N (N > 1)"
    );
    let set = if o.ema { WeightSet::Ema } else { WeightSet::Raw };
    nvg_engine::cuda::check_device("--device", o.device)?;
    // The device's matmul precision for this thread, which runs the sampler, until the job ends.
    let _precision = nvg_engine::cuda::scoped_matmul_precision(o.matmul);
    let (generator_path, tokenizer_path) = o.weight_files()?;
    let generator = Generator::load_on(&generator_path, set, o.device)?;
    let gc = &generator.config;
    let grid = gc.grid;
    let groups = class_groups(o, gc.num_classes)?;
    let classes = parse_classes(&o.classes, groups.as_ref().map_or(gc.num_classes, |g| g.len()))?;
    ensure!(
        classes
            .len()
            .checked_mul(o.per_class)
            .is_some_and(|n| n <= MAX_JOB_IMAGES),
        "--per-class {} × {} classes is more than the {MAX_JOB_IMAGES} images one job holds; \
         split the work into several jobs (other --out folders or --seed values)",
        o.per_class,
        classes.len()
    );
    // The generator class image (c, i) is conditioned on under `seed` (the job's, or a candidate's).
    let condition = |seed: u64, c: usize, i: usize| match &groups {
        Some(g) if c < g.len() => g.class_for(seed, c, i),
        Some(_) => gc.num_classes, // the null class
        None => c,
    };
    let tok = Tokenizer::load_on(&tokenizer_path, grid.side(), o.device)
        .with_context(|| format!("tokenizer {}", tokenizer_path.display()))?;
    let stages = grid.stages();
    if let Some(k) = o.evidence_stages {
        ensure!(k <= stages, "--evidence-stages {k}: the generator has {stages} stages");
    }
    let evidence_stages = o.evidence_stages.unwrap_or(stages);
    let mut cfg = SamplerConfig::official(&grid);
    cfg.content_cfg = guidance_or_none(&o.cfg, stages, "--cfg")?;
    cfg.structure_cfg = guidance_or_none(&o.structure_cfg, stages, "--structure-cfg")?;
    cfg.top_p = Schedule::parse(&o.top_p)
        .context("--top-p")?
        .negative_log(stages)
        .context("--top-p")?;
    cfg.top_k = vec![o.top_k; stages];
    cfg.temperature = o.temperature;
    cfg.structure_steps = o.structure_steps;
    cfg.structure_noise = o.structure_noise;
    cfg.class_evidence = o.best_of > 1;
    cfg.validate(&grid).context(
        "the sampler settings (--cfg, --structure-cfg, --top-p, --temperature, --structure-noise, --best-of)",
    )?;

    // The job, in canonical order; this shard's part; what is already done.
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let job_file = o.out.join("job.json");
    let structures = match &o.structure_from {
        Some(path) => Some(StructureBank::open(
            path,
            &grid,
            gc.num_classes,
            groups.as_ref().map(|g| g.len()),
        )?),
        None => None,
    };
    let job = job_description(
        o,
        &generator_path,
        &classes,
        file_fingerprint(&generator_path)?,
        structures.as_ref(),
        groups.as_ref(),
    );
    if job_file.exists() {
        let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&job_file)?)
            .with_context(|| job_file.display().to_string())?;
        if old != job {
            bail!(
                "{} holds images of another job ({} differs from these settings); use another --out",
                o.out.display(),
                job_file.display()
            );
        }
    } else {
        let text = serde_json::to_string_pretty(&job)?;
        nvg_engine::io::atomic_write(&job_file, |f| std::io::Write::write_all(f, text.as_bytes()))?;
    }
    let all: Vec<(usize, usize)> = classes
        .iter()
        .flat_map(|&c| (0..o.per_class).map(move |i| (c, i)))
        .collect();
    let (si, sn) = o.shard;
    let mine: Vec<(usize, usize)> = all
        .iter()
        .enumerate()
        .filter(|(j, _)| j % sn == si)
        .map(|(_, &ci)| ci)
        .collect();
    let done = |c: usize, i: usize| {
        o.out.join(image_name(c, i)).exists() && (!o.progressive || o.out.join(strip_name(c, i)).exists())
    };
    let todo: Vec<(usize, usize)> = mine.iter().copied().filter(|&(c, i)| !done(c, i)).collect();
    eprintln!(
        "{} images in the job, {} in shard {si}/{sn}, {} already there, {} to generate ({} stages, {} flow steps, CFG {}, batch {}{})",
        all.len(),
        mine.len(),
        mine.len() - todo.len(),
        todo.len(),
        stages,
        o.structure_steps,
        if cfg.content_cfg.is_some() { &o.cfg } else { "off" },
        o.batch,
        if o.best_of > 1 {
            format!(
                ", best of {} candidates by {evidence_stages} stages' evidence",
                o.best_of
            )
        } else {
            String::new()
        }
    );
    let mut progress = Progress::new("generate", "images", todo.len());
    // One generation of candidates (image class, index, candidate seed), at most --batch of them.
    let draw = |cands: &[(usize, usize, u64)]| -> Result<Generation> {
        let noise: Vec<ImageNoise> = cands
            .iter()
            .map(|&(c, i, seed)| ImageNoise::for_image(&grid, seed, image_key(c, i)))
            .collect();
        let classes: Vec<usize> = cands.iter().map(|&(c, i, seed)| condition(seed, c, i)).collect();
        let leaves = match &structures {
            Some(bank) => Some(
                cands
                    .iter()
                    .zip(&classes)
                    .map(|(&(group, i, seed), &c)| bank.pick(seed, if bank.per_group() { group } else { c }, i))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        generate_with_structure(&generator, &tok.quantizer, &cfg, &classes, &noise, leaves.as_deref())
    };
    // With --best-of N, about one batch of candidates per round, so images are written (and a killed
    // job resumes) and progress moves every batch, whatever N.
    let n = o.best_of;
    for batch in todo.chunks((o.batch / n).max(1)) {
        // Every candidate of these images, image by image; with --best-of 1 the images themselves.
        let cands: Vec<(usize, usize, u64)> = batch
            .iter()
            .flat_map(|&(c, i)| (0..n).map(move |j| (c, i, candidate_seed(o.seed, j))))
            .collect();
        // The leading candidate of each image so far: (evidence, its generation, row). Candidates are
        // drawn --batch at a time and only the leaders' generations are kept, so memory stays that of
        // a few batches at any N.
        let mut best: Vec<Option<(f32, Rc<Generation>, usize)>> = vec![None; batch.len()];
        for (part, chunk) in cands.chunks(o.batch).enumerate() {
            let g = Rc::new(draw(chunk)?);
            for r in 0..chunk.len() {
                let k = (part * o.batch + r) / n;
                let e = match &g.class_evidence {
                    Some(per_stage) => per_stage[r][..evidence_stages].iter().sum(),
                    None => 0.0, // --best-of 1: the only candidate
                };
                if best[k].as_ref().is_none_or(|(lead, _, _)| beats(e, *lead)) {
                    best[k] = Some((e, g.clone(), r));
                }
            }
        }
        let chosen: Vec<(Rc<Generation>, usize)> = best
            .into_iter()
            .map(|b| b.map(|(_, g, r)| (g, r)).context("an image without candidates"))
            .collect::<Result<_>>()?;
        let canvases = chosen
            .iter()
            .map(|(g, r)| g.canvas.narrow(0, *r, 1))
            .collect::<nvg_engine::Result<Vec<_>>>()?;
        let images = tok.decode(&Tensor::cat(&canvases.iter().collect::<Vec<_>>(), 0)?)?;
        for (k, &(c, i)) in batch.iter().enumerate() {
            if o.progressive {
                let (g, r) = &chosen[k];
                write_strip(&tok, g, *r, &o.out.join(strip_name(c, i)))?;
            }
            write_png(
                &o.out.join(image_name(c, i)),
                &from_tensor(&images.narrow(0, k, 1)?.squeeze(0)?)?,
            )?;
        }
        progress.add(batch.len());
    }
    progress.finish();

    if let Some(grid_path) = &o.grid {
        write_grid(o, &classes, grid_path)?;
    }
    if let Some(npz) = &o.npz {
        write_npz(o, &all, tok.resolution(), npz)?;
    }
    Ok(GenerateReport {
        job_images: all.len(),
        shard_images: mine.len(),
        generated: todo.len(),
        skipped_existing: mine.len() - todo.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The structure maps of a tokenized dataset, by class (`--structure-from`).
pub struct StructureBank {
    dataset: Dataset,
    /// Record indices of every class; the null class's entry holds every record.
    by_class: Vec<Vec<usize>>,
    /// The dataset's classes are the job's class groups, not the generator's classes.
    per_group: bool,
    fingerprint: u64,
}

impl StructureBank {
    /// Opens `path` and indexes its records by class; its grid must be `grid` and its classes those of
    /// a `num_classes`-class generator, or the job's `groups` (a dataset of the categories for a
    /// subcategory generator).
    pub fn open(
        path: &Path,
        grid: &nvg::config::Grid,
        num_classes: usize,
        groups: Option<usize>,
    ) -> Result<StructureBank> {
        let dataset = Dataset::open(path, None).with_context(|| format!("--structure-from {}", path.display()))?;
        let h = &dataset.header;
        ensure!(
            h.grid_side == grid.side(),
            "--structure-from {}: a {g}×{g} grid, but the generator's is {s}×{s}",
            path.display(),
            g = h.grid_side,
            s = grid.side()
        );
        let per_group = h.num_classes != num_classes && Some(h.num_classes) == groups;
        ensure!(
            h.num_classes == num_classes || per_group,
            "--structure-from {}: {} classes, but the generator has {num_classes}{}",
            path.display(),
            h.num_classes,
            groups.map_or(String::new(), |g| format!(" and the job {g} class groups"))
        );
        let n = h.num_classes;
        let mut by_class = vec![Vec::new(); n + 1];
        for i in 0..dataset.len() {
            let class = dataset.record(i)?.class;
            by_class[class].push(i);
            by_class[n].push(i);
        }
        Ok(StructureBank {
            fingerprint: file_fingerprint(path)?,
            dataset,
            by_class,
            per_group,
        })
    }

    /// Whether records are chosen by the job's class (group) rather than the generator's class.
    pub fn per_group(&self) -> bool {
        self.per_group
    }

    /// The leaf labels of the record image (class, index) uses under `seed`.
    pub fn pick(&self, seed: u64, class: usize, index: usize) -> Result<Vec<i64>> {
        let records = &self.by_class[class];
        ensure!(
            !records.is_empty(),
            "--structure-from {}: no record of class {class}",
            self.dataset.path().display()
        );
        let mut h = nvg_engine::io::Hasher64::new();
        h.update(&seed.to_le_bytes());
        h.update(&image_key(class, index).to_le_bytes());
        Ok(self
            .dataset
            .record(records[(h.finish() % records.len() as u64) as usize])?
            .leaf_labels)
    }
}

/// The 64-bit id that (with the seed) determines image `index` of `class`.
pub fn image_key(class: usize, index: usize) -> u64 {
    ((class as u64) << 32) | index as u64
}

fn strip_name(class: usize, index: usize) -> String {
    format!("{class:04}_{index:05}_stages.png")
}

/// Image `k` of a generation decoded after every stage, above that stage's structure map.
fn write_strip(tok: &Tokenizer, g: &Generation, k: usize, path: &Path) -> Result<()> {
    let n = g.stages.len();
    let side = tok.grid().side();
    let latents: Vec<Tensor> = g
        .stages
        .iter()
        .map(|st| st.canvas.narrow(0, k, 1))
        .collect::<nvg_engine::Result<_>>()?;
    let refs: Vec<&Tensor> = latents.iter().collect();
    let decoded = tok.decode(&Tensor::cat(&refs, 0)?)?;
    let res = tok.resolution();
    let mut tiles = Vec::with_capacity(2 * n);
    for s in 0..n {
        tiles.push(from_tensor(&decoded.narrow(0, s, 1)?.squeeze(0)?)?);
    }
    for (s, st) in g.stages.iter().enumerate() {
        tiles.push(structure_map_image(
            &st.labels.narrow(0, k, 1)?.to_i64_vec()?,
            side,
            s,
            res,
        ));
    }
    write_png(path, &tile(&tiles, n, 2))
}

/// A grid of the job's images (at most 32 classes as rows × 16 images as columns).
fn write_grid(o: &GenerateOptions, classes: &[usize], path: &Path) -> Result<()> {
    let cols = o.per_class.min(16);
    let mut tiles = Vec::new();
    for &c in classes.iter().take(32) {
        for i in 0..cols {
            let p = o.out.join(image_name(c, i));
            tiles.push(
                read_image(&p).with_context(|| {
                    format!("{} is missing for the grid (not generated in this shard?)", p.display())
                })?,
            );
        }
    }
    write_png(path, &tile(&tiles, cols, 2))
}

/// Every image of the job (all shards) as one ADM-evaluator batch.
fn write_npz(o: &GenerateOptions, all: &[(usize, usize)], res: usize, path: &Path) -> Result<()> {
    let missing = all
        .iter()
        .filter(|&&(c, i)| !o.out.join(image_name(c, i)).exists())
        .count();
    ensure!(
        missing == 0,
        "--npz: {missing} of the job's {} images are not in {} yet (run the other shards first)",
        all.len(),
        o.out.display()
    );
    eprintln!("writing {} images to {}", all.len(), path.display());
    nvg_engine::io::npz::write_images_npz(path, all.len(), res, res, |k| {
        let (c, i) = all[k];
        let img = read_image(&o.out.join(image_name(c, i)))
            .map_err(|e| nvg_engine::Error::format(image_name(c, i), format!("{e:#}")))?;
        if (img.width, img.height) != (res, res) {
            return Err(nvg_engine::Error::format(
                image_name(c, i),
                format!("is {}×{}, expected {res}×{res}", img.width, img.height),
            ));
        }
        Ok(img.data)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lead_goes_to_the_first_highest_evidence_and_never_to_nan() {
        let pick = |evidence: &[f32]| {
            (1..evidence.len()).fold(0, |lead, j| if beats(evidence[j], evidence[lead]) { j } else { lead })
        };
        assert_eq!(pick(&[0.5]), 0);
        assert_eq!(pick(&[0.1, 0.7, 0.3, 0.7]), 1);
        assert_eq!(pick(&[f32::NAN, -2.0, -1.0]), 2);
        assert_eq!(pick(&[1.0, f32::NAN, 0.5]), 0);
        assert_eq!(pick(&[0.0, 0.0, 0.0]), 0, "the null class's evidence is 0: candidate 0");
    }

    #[test]
    fn a_job_records_bf16_matmuls_on_a_device_only() {
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            o: GenerateOptions,
        }
        let job = |flags: &[&str]| {
            let args = ["generate", "--out", "x"].iter().chain(flags);
            let o = <Args as clap::Parser>::parse_from(args).o;
            job_description(&o, Path::new("g.safetensors"), &[0, 1], 7, None, None)
        };
        let plain = job(&[]);
        assert!(plain.get("matmul").is_none());
        assert_eq!(
            job(&["--device", "cuda-emu"]),
            plain,
            "f32 on a device is the CPU's job"
        );
        assert_eq!(
            job(&["--matmul", "bf16"]),
            plain,
            "the CPU computes in f32 whatever --matmul says"
        );
        assert_eq!(job(&["--device", "cuda-emu", "--matmul", "bf16"])["matmul"], "bf16");
    }

    #[test]
    fn candidate_zero_draws_with_the_job_seed_and_the_others_apart() {
        assert_eq!(candidate_seed(7, 0), 7);
        let seeds: std::collections::BTreeSet<u64> = (0..64).map(|j| candidate_seed(7, j)).collect();
        assert_eq!(seeds.len(), 64);
        assert_ne!(candidate_seed(7, 1), candidate_seed(8, 1));
    }
}
