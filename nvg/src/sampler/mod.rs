//! The stage-by-stage NVG sampler (NVG-SPEC §5.1): for every stage, the content transformer picks one
//! code per cluster and the canvas grows by that stage's `Phi` increment; then the structure flow
//! splits every cluster in two (a random balanced split at the second-to-last stage, none at the last).
//!
//! Every image's randomness comes from its own counter-based streams (`ImageNoise`), and the engine's
//! arithmetic is batch-invariant, so an image is the same whatever batch it is generated in.
//!
//! Structure-level control (`generate_with_structure`): given structure maps (e.g. of real images from a
//! tokenized dataset) replace the structure flow and the random split, so the content transformer paints
//! codes onto a chosen cluster tree.

pub mod flow;
pub mod schedule;

use crate::config::Grid;
use crate::model::Generator;
use crate::structure_map::{cluster_split, structure_features};
use crate::tokenizer::Quantizer;
use anyhow::{Context, Result, bail};
use nvg_engine::rng::{Distribution, RngStream};
use nvg_engine::{CategoricalSampling, DType, Tensor};
use schedule::{Schedule, round_bf16};

/// The most Euler steps of the structure flow a sampler takes: far past where more steps change the
/// maps (the official sampler takes 25), and small enough that the step schedule is an ordinary
/// allocation.
pub const MAX_STRUCTURE_STEPS: usize = 10_000;

/// Sampling settings, per stage where the official code has per-stage schedules.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Content classifier-free-guidance scale per stage; `None` runs no unconditional pass.
    pub content_cfg: Option<Vec<f32>>,
    /// Structure guidance scale per stage (entries of stages without a flow are unused).
    pub structure_cfg: Option<Vec<f32>>,
    pub temperature: f32,
    /// Per stage: 1 = greedy, 0 = off.
    pub top_k: Vec<usize>,
    /// Per stage: 1 = off.
    pub top_p: Vec<f32>,
    /// Euler steps of the structure flow at every stage that has one.
    pub structure_steps: usize,
    /// Rank split scores with Gumbel noise instead of deterministically.
    pub gumbel_split: bool,
    /// Scale of the structure flow's starting noise (the unknown bits at t = 1): 1 is the official
    /// flow; below 1 the model's prediction outweighs the noise in where a cluster splits (a
    /// temperature for the structure, our extension). The random second-to-last split ranks the raw
    /// noise of each pair and is the same at any positive scale.
    pub structure_noise: f32,
    /// Keep each stage's (guided) code logits in the result: large, for tests and inspection.
    pub keep_logits: bool,
    /// Score every image's codes by the generator's own class evidence (`Generation::class_evidence`);
    /// needs content guidance, whose unconditional pass it reuses.
    pub class_evidence: bool,
}

impl SamplerConfig {
    /// The official README sampling settings (NVG-SPEC §5.2): content CFG `1-3.5`, structure CFG
    /// `1-2.5`, top-p `1-0.5` (negative-log schedule), no top-k, temperature 1, 25 flow steps.
    pub fn official(grid: &Grid) -> SamplerConfig {
        let n = grid.stages();
        let parse = |s: &str| Schedule::parse(s).expect("built-in schedule");
        SamplerConfig {
            content_cfg: Some(guidance(&parse("1-3.5"), n).expect("9 stages")),
            structure_cfg: Some(guidance(&parse("1-2.5"), n).expect("9 stages")),
            temperature: 1.0,
            top_k: vec![0; n],
            top_p: parse("1-0.5").negative_log(n).expect("9 stages"),
            structure_steps: 25,
            gumbel_split: false,
            structure_noise: 1.0,
            keep_logits: false,
            class_evidence: false,
        }
    }

    /// Greedy codes (top-k = 1), no guidance.
    pub fn greedy(grid: &Grid, structure_steps: usize) -> SamplerConfig {
        let n = grid.stages();
        SamplerConfig {
            content_cfg: None,
            structure_cfg: None,
            temperature: 1.0,
            top_k: vec![1; n],
            top_p: vec![1.0; n],
            structure_steps,
            gumbel_split: false,
            structure_noise: 1.0,
            keep_logits: false,
            class_evidence: false,
        }
    }

    /// Checks the settings against a model's grid: schedule lengths, ranges. Sampling runs it too; a job
    /// calls it first so that a bad flag is refused before anything is written.
    pub fn validate(&self, grid: &Grid) -> Result<()> {
        let n = grid.stages();
        let lens = [
            ("content CFG", self.content_cfg.as_ref().map_or(n, Vec::len)),
            ("structure CFG", self.structure_cfg.as_ref().map_or(n, Vec::len)),
            ("top-k", self.top_k.len()),
            ("top-p", self.top_p.len()),
        ];
        for (what, len) in lens {
            if len != n {
                bail!("the {what} schedule has {len} values; the model has {n} stages");
            }
        }
        if self.structure_steps == 0 {
            bail!("the structure flow needs at least one step");
        }
        if self.structure_steps > MAX_STRUCTURE_STEPS {
            bail!(
                "{} structure flow steps is more than {MAX_STRUCTURE_STEPS} (the official sampler takes 25)",
                self.structure_steps
            );
        }
        for (what, schedule) in [
            ("content CFG", &self.content_cfg),
            ("structure CFG", &self.structure_cfg),
        ] {
            if let Some(w) = schedule.iter().flatten().find(|w| !(w.is_finite() && **w >= 0.0)) {
                bail!("the {what} scale must be a finite number >= 0 (1: no guidance), got {w}");
            }
        }
        if let Some(p) = self.top_p.iter().find(|p| !(**p > 0.0 && **p <= 1.0)) {
            bail!("top-p must be in (0, 1], got {p}");
        }
        if !(self.structure_noise > 0.0 && self.structure_noise.is_finite()) {
            bail!("the structure noise scale must be > 0, got {}", self.structure_noise);
        }
        if self.class_evidence && self.content_cfg.is_none() {
            bail!("class evidence needs content guidance (its unconditional pass); the content CFG is off");
        }
        if self.temperature.is_nan() || self.temperature < 0.0 {
            bail!("temperature must be >= 0, got {}", self.temperature);
        }
        Ok(())
    }
}

/// Guidance scales for `n` stages from a schedule (linear ranges), rounded to bf16 as the official
/// sampler does.
pub fn guidance(s: &Schedule, n: usize) -> Result<Vec<f32>> {
    Ok(s.linear(n)?.into_iter().map(round_bf16).collect())
}

/// The randomness of one image: its structure noise `[T, bits]` (channel s seeds the split after
/// stage s; the second-to-last split uses its channel directly) and its streams for code draws and
/// Gumbel split noise.
#[derive(Debug, Clone)]
pub struct ImageNoise {
    pub structure: Vec<f32>,
    pub codes: RngStream,
    pub gumbel: RngStream,
}

/// Stream ids per image: `index · 4 + purpose`.
const STREAM_STRUCTURE: u64 = 0;
const STREAM_CODES: u64 = 1;
const STREAM_GUMBEL: u64 = 2;

impl ImageNoise {
    /// The noise of image `index` under `seed`: a pure function of the two.
    pub fn for_image(grid: &Grid, seed: u64, index: u64) -> ImageNoise {
        let stream = |purpose: u64| RngStream::new(seed, index.wrapping_mul(4).wrapping_add(purpose));
        let mut structure = vec![0.0f32; grid.tokens() * grid.bits()];
        stream(STREAM_STRUCTURE).fill(Distribution::Normal, 0, &mut structure);
        ImageNoise {
            structure,
            codes: stream(STREAM_CODES),
            gumbel: stream(STREAM_GUMBEL),
        }
    }

    /// Given structure noise (e.g. from a fixture) and streams for the rest.
    pub fn with_structure(structure: Vec<f32>, seed: u64, index: u64) -> ImageNoise {
        let stream = |purpose: u64| RngStream::new(seed, index.wrapping_mul(4).wrapping_add(purpose));
        ImageNoise {
            structure,
            codes: stream(STREAM_CODES),
            gumbel: stream(STREAM_GUMBEL),
        }
    }

    /// Counter of the draw for (stage, item): stages never share counters.
    fn counter(stage: usize, item: usize) -> u64 {
        ((stage as u64) << 32) | item as u64
    }
}

/// What one stage did, for a batch of B images.
pub struct StageRecord {
    /// Labels the stage used `[B, T]` (i64).
    pub labels: Tensor,
    /// Chosen code of every cluster `[B, 2^s]` (i64).
    pub codes: Tensor,
    /// The cluster's code at every token `[B, T]` (i64).
    pub codes_per_token: Tensor,
    /// The canvas after this stage's content `[B, T, C]`.
    pub canvas: Tensor,
    /// The content branch's predicted final canvas `[R, T, C]` (R = 2B with content guidance: rows
    /// B..2B are the unconditional pass).
    pub x0_hat: Tensor,
    /// The scores the split after this stage ranked `[B, T]` (channel s of the flow state, or the raw
    /// noise for the random split); `None` at the last stage.
    pub split_scores: Option<Tensor>,
    /// The (guided) code logits `[B, 2^s, V]`, when `SamplerConfig::keep_logits`.
    pub logits: Option<Tensor>,
}

/// The result of sampling B images.
pub struct Generation {
    /// The final canvas `[B, T, C]` (token-major), ready for the tokenizer's decoder.
    pub canvas: Tensor,
    pub stages: Vec<StageRecord>,
    /// Per image and stage (`[B][stages]`), when `SamplerConfig::class_evidence`: how much more likely
    /// the stage's drawn codes are under the image's class than under the null class — the
    /// log-likelihood ratio of the implicit classifier that classifier-free guidance steers by — as
    /// `mean_tokens [log p(code | class) − log p(code | ∅)]`, the ratio of each token's cluster code
    /// (unguided, temperature-1 probabilities). The mean over tokens weighs every stage alike when the
    /// stages are summed; a plain sum over clusters would be ruled by the last stages' many small
    /// clusters (it picked worse samples: docs/emoji-demo.md, best-of).
    pub class_evidence: Option<Vec<Vec<f32>>>,
}

/// Rows `[cond; uncond]` of a per-image tensor when guiding, else the tensor itself.
fn rows(t: &Tensor, guided: bool) -> Result<Tensor> {
    Ok(if guided { Tensor::cat(&[t, t], 0)? } else { t.clone() })
}

/// `uncond + scale·(cond − uncond)` over the two halves of `v` (`[2B·n]` → `[B·n]`), or `v` unguided.
fn guide(v: Vec<f32>, scale: Option<f32>) -> Vec<f32> {
    match scale {
        None => v,
        Some(s) => {
            let half = v.len() / 2;
            let (cond, uncond) = v.split_at(half);
            cond.iter().zip(uncond).map(|(&c, &u)| u + s * (c - u)).collect()
        }
    }
}

/// `uncond + scale·(cond − uncond)` over the two halves (along dim 0) of `t`, or `t` unguided; the
/// same f32 operations as `guide`, on `t`'s device.
fn guide_rows(t: &Tensor, scale: Option<f32>) -> Result<Tensor> {
    Ok(match scale {
        None => t.clone(),
        Some(s) => {
            let half = t.dims()[0] / 2;
            let (cond, uncond) = (t.narrow(0, 0, half)?, t.narrow(0, half, half)?);
            uncond.add(&cond.sub(&uncond)?.mul_scalar(s)?)?
        }
    })
}

/// Samples one image per entry of `classes` (class ids; the generator's null class gives
/// unconditional samples) with the randomness in `noise`.
pub fn generate(
    generator: &Generator,
    quant: &Quantizer,
    cfg: &SamplerConfig,
    classes: &[usize],
    noise: &[ImageNoise],
) -> Result<Generation> {
    generate_with_structure(generator, quant, cfg, classes, noise, None)
}

/// [`generate`], with the structure of every image given instead of sampled when `leaf_labels` is
/// `Some`: one leaf labelling per image (the last stage's labels, a permutation of `0..T`, as stored in
/// a tokenized dataset); stage s then uses `leaf >> (stages − 1 − s)` and no flow runs.
pub fn generate_with_structure(
    generator: &Generator,
    quant: &Quantizer,
    cfg: &SamplerConfig,
    classes: &[usize],
    noise: &[ImageNoise],
    leaf_labels: Option<&[Vec<i64>]>,
) -> Result<Generation> {
    let gc = &generator.config;
    let grid = gc.grid;
    cfg.validate(&grid)?;
    let (b, t, bits, c) = (classes.len(), grid.tokens(), grid.bits(), gc.latent_channels);
    if noise.len() != b {
        bail!("{} noise entries for {b} images", noise.len());
    }
    if let Some(n) = noise.iter().find(|n| n.structure.len() != t * bits) {
        bail!("structure noise has {} values, expected {t}×{bits}", n.structure.len());
    }
    if let Some(&bad) = classes.iter().find(|&&k| k > gc.null_class()) {
        bail!(
            "class id {bad} is out of range 0..={} ({} is the null class)",
            gc.null_class(),
            gc.null_class()
        );
    }
    if quant.channels() != c || quant.codebook_size() != gc.vocab_size {
        bail!(
            "the tokenizer's codebook is {}×{}, the generator expects {}×{c}",
            quant.codebook_size(),
            quant.channels(),
            gc.vocab_size
        );
    }
    let with_null = |guided: bool| -> Vec<usize> {
        let mut r = classes.to_vec();
        if guided {
            r.extend(std::iter::repeat_n(gc.null_class(), b));
        }
        r
    };
    let (content_rows, structure_rows) = (
        with_null(cfg.content_cfg.is_some()),
        with_null(cfg.structure_cfg.is_some()),
    );
    if let Some(leaves) = leaf_labels {
        if leaves.len() != b {
            bail!("{} structure maps for {b} images", leaves.len());
        }
        let last = grid.stages() - 1;
        for (i, leaf) in leaves.iter().enumerate() {
            let row = Tensor::from_vec(leaf.clone(), &[1, leaf.len()])?;
            crate::structure_map::check_labels(&grid, &row, last)
                .with_context(|| format!("the structure map of image {i}"))?;
        }
    }
    let times = flow::flow_timesteps(cfg.structure_steps, t);

    // Everything per stage runs where the generator's weights are; host-side work is limited to the
    // structure map (labels, splits) and the flow's small state.
    let device = generator.device();
    if quant.device() != device {
        bail!(
            "the tokenizer's quantiser is on {} and the generator on {device}: load both on one device",
            quant.device()
        );
    }
    let mut canvas = Tensor::zeros(&[b, t, c], DType::F32, device)?;
    let mut labels = vec![0i64; b * t];
    let mut stages = Vec::with_capacity(grid.stages());
    let mut evidence = cfg.class_evidence.then(|| vec![Vec::with_capacity(grid.stages()); b]);
    for s in 0..grid.stages() {
        let _stage = nvg_engine::nvtx::range_fmt(format_args!("generate stage {s}"));
        // Labels stay on the host (the model moves what it needs); the gather below needs a device copy.
        let labels_t = Tensor::from_vec(labels.clone(), &[b, t])?;
        // Content: one code per cluster, then the canvas update.
        let guided = cfg.content_cfg.is_some();
        let out = generator.content.forward(
            &rows(&canvas, guided)?,
            &rows(&labels_t, guided)?,
            &content_rows,
            s,
            None,
        )?;
        let logits = guide_rows(&out.logits, cfg.content_cfg.as_ref().map(|v| v[s]))?;
        let (clusters, vocab) = (grid.clusters(s), gc.vocab_size);
        let sampling = CategoricalSampling {
            temperature: cfg.temperature,
            top_k: cfg.top_k[s],
            top_p: cfg.top_p[s],
        };
        let uniforms: Vec<f32> = (0..b * clusters)
            .map(|r| {
                noise[r / clusters]
                    .codes
                    .sample(Distribution::Uniform, ImageNoise::counter(s, r % clusters))
            })
            .collect();
        debug_assert_eq!(logits.dims(), [b, clusters, vocab]);
        let codes_t = logits.sample_categorical(
            sampling,
            &Tensor::from_vec(uniforms, &[b, clusters])?.to_device(device)?,
        )?;
        if let Some(ev) = evidence.as_mut() {
            // Rows 0..B of the logits are conditional, B..2B unconditional (guidance is on: validated).
            let picked = code_log_probs(&out.logits, &codes_t)?;
            let sizes = cluster_sizes(&labels, b, t, clusters);
            for (i, e) in ev.iter_mut().enumerate() {
                let ratio = |k: usize| picked[i * clusters + k] - picked[(b + i) * clusters + k];
                e.push(
                    (0..clusters)
                        .map(|k| ratio(k) * sizes[i * clusters + k] as f32)
                        .sum::<f32>()
                        / t as f32,
                );
            }
        }
        let codes_per_token = codes_t.gather(1, &labels_t.to_device(device)?)?;
        canvas = quant.next_canvas(&canvas, &codes_per_token, s)?;

        // Structure: split every cluster in two for the next stage (or take the given maps' next level).
        if let Some(leaves) = leaf_labels
            && s + 1 < grid.stages()
        {
            let shift = grid.stages() - 2 - s;
            labels = leaves.iter().flat_map(|leaf| leaf.iter().map(|l| l >> shift)).collect();
        }
        let split_scores = if leaf_labels.is_some() {
            None
        } else if s < grid.flow_stages() {
            Some(structure_flow(
                generator,
                cfg,
                &times,
                &canvas,
                &labels_t,
                &labels,
                noise,
                &structure_rows,
                s,
            )?)
        } else if s == grid.flow_stages() {
            // The last split is random: the raw noise channel decides it.
            Some(
                noise
                    .iter()
                    .flat_map(|n| (0..t).map(move |l| n.structure[l * bits + s]))
                    .collect(),
            )
        } else {
            None
        };
        if let Some(scores) = &split_scores {
            let mut next = Vec::with_capacity(b * t);
            for i in 0..b {
                let gumbel: Option<Vec<f32>> = cfg.gumbel_split.then(|| {
                    (0..t)
                        .map(|l| {
                            let u = noise[i].gumbel.sample(Distribution::Uniform, ImageNoise::counter(s, l));
                            -(-(u + 1e-8).ln() + 1e-8).ln()
                        })
                        .collect()
                });
                let row = &labels[i * t..(i + 1) * t];
                next.extend(cluster_split(
                    &grid,
                    row,
                    &scores[i * t..(i + 1) * t],
                    s,
                    gumbel.as_deref(),
                ));
            }
            labels = next;
        }
        stages.push(StageRecord {
            labels: labels_t,
            codes: codes_t,
            codes_per_token,
            canvas: canvas.clone(),
            x0_hat: out.x0_hat,
            split_scores: split_scores.map(|v| Tensor::from_vec(v, &[b, t])).transpose()?,
            logits: cfg.keep_logits.then_some(logits),
        });
    }
    Ok(Generation {
        canvas,
        stages,
        class_evidence: evidence,
    })
}

/// `log softmax(logits)[code]` for every row of `logits` `[R, n, V]` (R = 2B: conditional rows, then
/// unconditional) at the codes `[B, n]` drawn for the B images: `[R·n]` on the host.
fn code_log_probs(logits: &Tensor, codes: &Tensor) -> Result<Vec<f32>> {
    let (r, n) = (logits.dims()[0], logits.dims()[1]);
    // The index is built on the host (device kernels concatenate floats only), then moved.
    let codes = codes.to_i64_vec()?;
    let index: Vec<i64> = codes.iter().copied().cycle().take(r * n).collect();
    let index = Tensor::from_vec(index, &[r, n, 1])?.to_device(logits.device())?;
    Ok(logits.log_softmax(-1)?.gather(2, &index)?.to_f32_vec()?)
}

/// Tokens per cluster `[B·n]` of labels `[B·T]` with n clusters.
fn cluster_sizes(labels: &[i64], b: usize, t: usize, n: usize) -> Vec<usize> {
    let mut sizes = vec![0usize; b * n];
    for (j, &l) in labels.iter().enumerate() {
        sizes[(j / t) * n + l as usize] += 1;
    }
    sizes
}

/// Runs the structure flow after stage `s` and returns channel s of the final flow state `[B·T]`.
#[allow(clippy::too_many_arguments)]
fn structure_flow(
    generator: &Generator,
    cfg: &SamplerConfig,
    times: &[f32],
    canvas: &Tensor,
    labels_t: &Tensor,
    labels: &[i64],
    noise: &[ImageNoise],
    row_classes: &[usize],
    s: usize,
) -> Result<Vec<f32>> {
    let grid = generator.config.grid;
    let (b, t, bits) = (noise.len(), grid.tokens(), grid.bits());
    // Known bits (k < s) are ±1 and stay clamped; the unknown ones start from the image's noise.
    let mut z = Vec::with_capacity(b * t * bits);
    let mut known = Vec::with_capacity(b * t * bits);
    for (i, n) in noise.iter().enumerate() {
        let features = structure_features(&grid, &labels[i * t..(i + 1) * t], s);
        for (j, &f) in features.iter().enumerate() {
            known.push(f - 1.0);
            z.push(if j % bits < s {
                f - 1.0
            } else {
                cfg.structure_noise * n.structure[j]
            });
        }
    }
    let guided = cfg.structure_cfg.is_some();
    let flow = generator
        .structure
        .prepare(&rows(canvas, guided)?, &rows(labels_t, guided)?, row_classes, s)?;
    for pair in times.windows(2) {
        let (t_cur, t_next) = (pair[0], pair[1]);
        let z_t = Tensor::from_vec(z.clone(), &[b, t, bits])?.to_device(canvas.device())?;
        let row_t = vec![t_cur; row_classes.len()];
        let v = generator.structure.step(&flow, &rows(&z_t, guided)?, &row_t, None)?;
        let v = guide(v.to_f32_vec()?, cfg.structure_cfg.as_ref().map(|c| c[s]));
        // Euler step; the step is the f64 difference of the two times, rounded once (as in the official
        // loop over Python floats).
        let dt = (t_next as f64 - t_cur as f64) as f32;
        for (j, (zj, vj)) in z.iter_mut().zip(&v).enumerate() {
            *zj = if j % bits < s { known[j] } else { *zj + dt * vj };
        }
    }
    Ok(z.chunks(bits).map(|tok| tok[s]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_what_no_sampler_can_run_and_takes_the_official_settings() {
        for grid in [Grid::official(), Grid::new(8).unwrap()] {
            let ok = SamplerConfig::official(&grid);
            ok.validate(&grid).unwrap();
            let refused = |change: &dyn Fn(&mut SamplerConfig), expect: &str| {
                let mut cfg = ok.clone();
                change(&mut cfg);
                let err = cfg.validate(&grid).unwrap_err().to_string();
                assert!(err.contains(expect), "expected `{expect}` in: {err}");
            };
            refused(&|c| c.structure_steps = 0, "at least one step");
            refused(&|c| c.structure_steps = MAX_STRUCTURE_STEPS + 1, "is more than 10000");
            refused(
                &|c| {
                    c.top_k.pop();
                },
                "top-k schedule has",
            );
            refused(&|c| c.temperature = f32::NAN, "temperature");
            refused(
                &|c| {
                    c.content_cfg = None;
                    c.class_evidence = true
                },
                "class evidence needs content guidance",
            );
            let mut max = ok.clone();
            max.structure_steps = MAX_STRUCTURE_STEPS;
            max.validate(&grid).unwrap();
        }
    }
}
