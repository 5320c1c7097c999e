//! `nvg bench engine`: GFLOP/s of the engine's CPU kernels at NVG's hot shapes, each compared with a
//! reference (PyTorch / NumPy on the same machine, same thread count) timed in the same process
//! window: the two sides alternate round by round, so a drifting VM affects both equally.

use anyhow::{Context, Result, bail};
use nvg_engine::rng::{Distribution, RngStream};
use nvg_engine::{AttentionKernel, ConvKernel, Padding, Tensor, sdpa, sdpa_with_kernel};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Options of an engine benchmark run.
#[derive(Debug, Clone)]
pub struct EngineBenchOptions {
    /// Worker threads for both sides.
    pub threads: usize,
    /// Alternating rounds per case (the reported time is the median over rounds).
    pub rounds: usize,
    /// Least timed runs per round and side (the round keeps the best); short cases run more, so that
    /// a round lasts at least 50 ms.
    pub iters: usize,
    /// Python interpreter for the reference, or `None` to skip it.
    pub python: Option<PathBuf>,
    /// Only cases whose name contains this text.
    pub filter: Option<String>,
}

/// Shortest time one side of a round should take (the per-round iteration count grows to reach it).
const MIN_ROUND_S: f64 = 0.05;

/// One benchmark case: a name, its floating-point work and a closure that runs it once.
struct Case {
    name: String,
    flops: f64,
    run: Box<dyn Fn() -> nvg_engine::Result<Tensor> + Send + Sync>,
}

fn randn(dims: &[usize], stream: u64) -> Tensor {
    Tensor::random(dims, Distribution::Normal, RngStream::new(0, stream), 0).expect("benchmark tensor")
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    // d16 content blocks with CFG (2 × 257 tokens): linear1 (1024 → 7·1024) and linear2 (5·1024 → 1024);
    // structure blocks (2 × 513 tokens, width 512): linear1 (512 → 7·512).
    for (i, &(m, k, n)) in [(514usize, 1024usize, 7168usize), (514, 5120, 1024), (1026, 512, 3584)]
        .iter()
        .enumerate()
    {
        let (x, w, b) = (
            randn(&[m, k], 3 * i as u64),
            randn(&[n, k], 3 * i as u64 + 1),
            randn(&[n], 3 * i as u64 + 2),
        );
        out.push(Case {
            name: format!("linear {m}x{k}·{k}x{n}"),
            flops: 2.0 * (m * k * n) as f64,
            run: Box::new(move || x.linear(&w, Some(&b))),
        });
    }
    // Attention of the content (16 heads, 257 tokens) and structure (8 heads, 513 tokens) transformers.
    for (i, &(b, h, n)) in [(2usize, 16usize, 257usize), (2, 8, 513)].iter().enumerate() {
        let d = 64;
        let (q, k, v) = (
            randn(&[b, h, n, d], 20 + i as u64),
            randn(&[b, h, n, d], 30 + i as u64),
            randn(&[b, h, n, d], 40 + i as u64),
        );
        out.push(Case {
            name: format!("attention B{b} H{h} N{n} D{d}"),
            flops: 4.0 * (b * h * n * n * d) as f64,
            run: Box::new(move || sdpa(&q, &k, &v, None, None)),
        });
    }
    // Tokenizer convolutions: the 16×16 bottleneck and the full-resolution 128-channel level.
    for (i, &(c, hw)) in [(512usize, 16usize), (128, 256)].iter().enumerate() {
        let (x, w, b) = (
            randn(&[1, c, hw, hw], 50 + i as u64),
            randn(&[c, c, 3, 3], 60 + i as u64),
            randn(&[c], 70 + i as u64),
        );
        out.push(Case {
            name: format!("conv3x3 {c}->{c} {hw}x{hw}"),
            flops: 2.0 * (c * c * 9 * hw * hw) as f64,
            run: Box::new(move || x.conv2d(&w, Some(&b), 1, Padding::uniform(1))),
        });
    }
    // A linear layer's bias gradient in emoji-model training: the [rows, features] output gradient of a
    // fused projection (32 images × 65 tokens of a content stage; linear1's 7·256 features: q, k, v and
    // the MLP input) summed over its rows.
    let (m, n) = (2080usize, 1792usize);
    let g = randn(&[m, n], 80);
    out.push(Case {
        name: format!("row sum {m}x{n}"),
        flops: (m * n) as f64,
        run: Box::new(move || g.sum(0, false)),
    });
    out
}

/// The reference process (tools/bench_reference.py in `--serve` mode).
struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    info: serde_json::Value,
}

impl Reference {
    fn start(python: &PathBuf, threads: usize) -> Result<Reference> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench_reference.py");
        let mut child = Command::new(python)
            .arg(&script)
            .args(["--serve", "--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let info: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("reference said: {line}"))?;
        if info["ready"] != true {
            bail!("reference did not start: {line}");
        }
        Ok(Reference {
            child,
            stdin,
            stdout,
            info,
        })
    }

    fn has(&self, case: &str) -> bool {
        self.info["cases"]
            .as_array()
            .is_some_and(|c| c.iter().any(|n| n == case))
    }

    /// Best-of-`iters` seconds of `case` and the library that ran it.
    fn time(&mut self, case: &str, iters: usize) -> Result<(f64, String)> {
        writeln!(self.stdin, "{}", serde_json::json!({"case": case, "iters": iters}))?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("reference said: {line}"))?;
        if let Some(e) = v.get("error") {
            bail!("reference failed on {case}: {e}");
        }
        Ok((
            v["seconds"].as_f64().unwrap_or(f64::NAN),
            v["impl"].as_str().unwrap_or("?").to_string(),
        ))
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub rows: Vec<BenchRow>,
    /// What the reference process reported about itself (library versions, cases).
    pub reference: Option<serde_json::Value>,
    /// Best micro-kernel ceiling seen during the run (see `microkernel_ceiling`).
    pub ceiling_gflops: f64,
}

/// One measured case.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub name: String,
    pub flops: f64,
    pub ours_s: f64,
    /// (library, seconds) of the reference, and of the NumPy variant where one exists.
    pub reference: Option<(String, f64)>,
    pub numpy_s: Option<f64>,
}

impl BenchRow {
    pub fn gflops(&self, seconds: f64) -> f64 {
        self.flops / seconds / 1e9
    }
    /// Our speed relative to the reference (> 1: we are faster).
    pub fn ratio(&self) -> Option<f64> {
        self.reference.as_ref().map(|(_, s)| s / self.ours_s)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the engine benchmark. Progress goes to stderr; the rows are returned.
pub fn engine_bench(opts: &EngineBenchOptions) -> Result<BenchReport> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(opts.threads).build()?;
    // The ceiling is sampled in every round and the best kept: a single sample taken while the VM
    // happens to be slow would understate it.
    let mut ceiling = microkernel_ceiling(&pool);
    let mut reference = match &opts.python {
        Some(py) => match Reference::start(py, opts.threads) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("reference unavailable ({e:#}); timing nvg-rs alone");
                None
            }
        },
        None => None,
    };
    let mut rows = Vec::new();
    for case in cases() {
        if opts.filter.as_ref().is_some_and(|f| !case.name.contains(f.as_str())) {
            continue;
        }
        eprint!("{:<34}", case.name);
        // Warm up (allocators, thread pools, page faults) and size the rounds: short cases run more
        // times per round, so that every round spans at least MIN_ROUND and a brief stall of the VM
        // cannot decide it.
        let t = Instant::now();
        pool.install(|| (case.run)())?;
        let once = t.elapsed().as_secs_f64();
        let iters = opts.iters.max((MIN_ROUND_S / once.max(1e-6)).ceil() as usize).min(1000);
        let numpy_name = format!("{} (numpy)", case.name);
        let (mut ours, mut refs, mut nps) = (Vec::new(), Vec::new(), Vec::new());
        let mut ref_impl = String::new();
        for _ in 0..opts.rounds {
            let mut best = f64::INFINITY;
            for _ in 0..iters {
                let t = Instant::now();
                pool.install(|| (case.run)())?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            ours.push(best);
            if let Some(r) = reference.as_mut() {
                if r.has(&case.name) {
                    let (s, imp) = r.time(&case.name, iters)?;
                    refs.push(s);
                    ref_impl = imp;
                }
                if r.has(&numpy_name) {
                    nps.push(r.time(&numpy_name, iters)?.0);
                }
            }
            ceiling = ceiling.max(microkernel_ceiling(&pool));
            // Let the reference's worker threads go idle before our next timed run.
            std::thread::sleep(std::time::Duration::from_millis(50));
            eprint!(".");
        }
        eprintln!();
        rows.push(BenchRow {
            name: case.name,
            flops: case.flops,
            ours_s: median(ours),
            reference: (!refs.is_empty()).then(|| (ref_impl, median(refs))),
            numpy_s: (!nps.is_empty()).then(|| median(nps)),
        });
    }
    Ok(BenchReport {
        rows,
        reference: reference.map(|r| r.info.clone()),
        ceiling_gflops: ceiling,
    })
}

/// The machine's practical GEMM ceiling: every thread of `pool` runs the engine's micro-kernel on its
/// own L1-resident panels (no packing, no memory traffic). GFLOP/s over all threads, one sample.
pub fn microkernel_ceiling(pool: &rayon::ThreadPool) -> f64 {
    use nvg_engine::cpu::gemm::{AlignedBuf, MicroKernel};
    use rayon::prelude::*;
    let threads = pool.current_num_threads();
    let kern = MicroKernel::for_isa(nvg_engine::cpu::simd::isa());
    let (kc, calls) = (256usize, 4000usize);
    let flops = 2.0 * (kc * kern.mr * kern.nr * calls * threads) as f64;
    let t = Instant::now();
    pool.install(|| {
        (0..threads).into_par_iter().for_each(|_| {
            let (mut a, mut b) = (AlignedBuf::new(kc * kern.mr), AlignedBuf::new(kc * kern.nr));
            a.as_mut_slice().fill(0.001);
            b.as_mut_slice().fill(0.002);
            let mut c = AlignedBuf::new(kern.mr * kern.nr);
            for _ in 0..calls {
                // SAFETY: `c` holds one full mr × nr tile with row stride nr.
                unsafe {
                    let cp = c.as_mut_slice().as_mut_ptr();
                    kern.run(kc, a.as_slice(), b.as_slice(), cp, kern.nr, kern.mr, kern.nr, true)
                };
            }
            std::hint::black_box(c.as_slice());
        })
    });
    flops / t.elapsed().as_secs_f64() / 1e9
}

/// The CPU model name from /proc/cpuinfo (Linux), or "unknown CPU".
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// A Markdown table of the results with a header naming the machine and the reference.
pub fn render_table(report: &BenchReport, opts: &EngineBenchOptions) -> String {
    let (rows, reference) = (&report.rows, report.reference.as_ref());
    let mut s = String::new();
    let isa = nvg_engine::cpu::simd::isa().name();
    s.push_str(&format!(
        "machine: {}, {} threads, nvg-rs CPU kernels: {isa}\n",
        cpu_name(),
        opts.threads
    ));
    s.push_str(&format!(
        "micro-kernel ceiling (L1-resident tiles on every thread, best sample): {:.1} GFLOP/s\n",
        report.ceiling_gflops
    ));
    match reference {
        Some(r) => s.push_str(&format!(
            "reference: torch {} / numpy {} (same threads), interleaved, median of {} rounds × best of ≥{} (≥50 ms)\n\n",
            r["torch"].as_str().unwrap_or("absent"),
            r["numpy"].as_str().unwrap_or("?"),
            opts.rounds,
            opts.iters
        )),
        None => s.push_str(&format!(
            "no reference; median of {} rounds × best of ≥{} (≥50 ms)\n\n",
            opts.rounds, opts.iters
        )),
    }
    s.push_str(
        "| case | nvg-rs ms | nvg-rs GFLOP/s | reference | ref ms | ref GFLOP/s | nvg-rs / ref | numpy GFLOP/s |\n",
    );
    s.push_str("|---|---:|---:|---|---:|---:|---:|---:|\n");
    for r in rows {
        let (rname, rms, rgf) = match &r.reference {
            Some((imp, sec)) => (
                imp.clone(),
                format!("{:.3}", sec * 1e3),
                format!("{:.1}", r.gflops(*sec)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        s.push_str(&format!(
            "| {} | {:.3} | {:.1} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.ours_s * 1e3,
            r.gflops(r.ours_s),
            rname,
            rms,
            rgf,
            r.ratio().map_or("-".into(), |x| format!("{x:.2}x")),
            r.numpy_s.map_or("-".into(), |x| format!("{:.1}", r.gflops(x))),
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------------
// Model benchmark
// ---------------------------------------------------------------------------------------------------

/// Options of `nvg bench model`.
#[derive(Debug, Clone)]
pub struct ModelBenchOptions {
    /// Generator configuration (`d16`, `d20`, `d24` or `depth=N`).
    pub config: String,
    pub threads: usize,
    /// Timed repetitions of each forward (the best is reported).
    pub iters: usize,
    /// Also time one full sample with the official README settings.
    pub full_sample: bool,
}

fn best_of<T>(iters: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Times the content and structure forwards of a full-size generator with synthetic weights (one image
/// with classifier-free guidance: 2 rows), the engine's GEMMs at the same shapes, and optionally one
/// whole sample. Returns a Markdown report.
pub fn model_bench(opts: &ModelBenchOptions) -> Result<String> {
    use nvg::model::{Generator, content_flops, structure_flops};
    use nvg::sampler::{ImageNoise, SamplerConfig, generate};
    use nvg::tokenizer::Quantizer;
    let cfg = nvg::config::GeneratorConfig::preset(&opts.config)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(opts.threads).build()?;
    let grid = cfg.grid;
    let (t, c, bits, rows) = (grid.tokens(), cfg.latent_channels, grid.bits(), 2usize);
    eprintln!(
        "building {} with synthetic weights ({:.1} M parameters)",
        opts.config,
        cfg.parameter_count() as f64 / 1e6
    );
    let generator = Generator::synthetic(&cfg, 1);
    let classes = vec![7usize, cfg.null_class()];
    let canvas = randn(&[rows, t, c], 100).mul_scalar(0.3)?;
    let leaf: Vec<i64> = (0..rows * t).map(|i| (i % t) as i64).collect();
    let (content_stage, structure_stage) = (4usize, 3usize);
    let labels_at = |s: usize| Tensor::from_vec(leaf.iter().map(|l| l >> (bits - s)).collect::<Vec<_>>(), &[rows, t]);
    let (content_labels, structure_labels) = (labels_at(content_stage)?, labels_at(structure_stage)?);
    let z = randn(&[rows, t, bits], 101);

    let mut report = String::new();
    report.push_str(&format!(
        "machine: {}, {} threads; model {} (width {}, {} heads; structure width {}, {} heads), synthetic weights, f32\n\n",
        cpu_name(),
        opts.threads,
        opts.config,
        cfg.width,
        cfg.heads,
        cfg.structure_width,
        cfg.structure_heads
    ));
    report.push_str("| pass | rows × tokens | ms | tokens/s | GFLOP | GFLOP/s | GEMM-only GFLOP/s at the same shapes | model / GEMM |\n");
    report.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (name, width, n, mlp) in [
        ("content forward", cfg.width, t + 1, cfg.mlp_width()),
        (
            "structure forward (one flow step)",
            cfg.structure_width,
            2 * t + 1,
            cfg.mlp_ratio * cfg.structure_width,
        ),
    ] {
        eprintln!("timing {name}");
        let is_content = name.starts_with("content");
        let (secs, flops) = pool.install(|| -> Result<(f64, f64)> {
            if is_content {
                let s = best_of(opts.iters, || {
                    generator
                        .content
                        .forward(&canvas, &content_labels, &classes, content_stage, None)
                })?;
                Ok((s, content_flops(&cfg, rows, content_stage)))
            } else {
                let s = best_of(opts.iters, || {
                    generator.structure.forward(
                        &z,
                        &[0.5; 2],
                        &canvas,
                        &structure_labels,
                        &classes,
                        structure_stage,
                        None,
                    )
                })?;
                Ok((s, structure_flops(&cfg, rows)))
            }
        })?;
        // The two big GEMMs of a block at this pass's shapes, timed alone.
        let x1 = randn(&[rows * n, width], 200);
        let w1 = randn(&[3 * width + mlp, width], 201);
        let x2 = randn(&[rows * n, width + mlp], 202);
        let w2 = randn(&[width, width + mlp], 203);
        let gemm_flops = 2.0 * (rows * n) as f64 * width as f64 * ((3 * width + mlp) + (width + mlp)) as f64;
        let gemm_secs = pool.install(|| best_of(opts.iters, || Ok((x1.linear(&w1, None)?, x2.linear(&w2, None)?))))?;
        let (model_gf, gemm_gf) = (flops / secs / 1e9, gemm_flops / gemm_secs / 1e9);
        report.push_str(&format!(
            "| {name} | {rows} × {n} | {:.1} | {:.0} | {:.1} | {model_gf:.1} | {gemm_gf:.1} | {:.0}% |\n",
            secs * 1e3,
            (rows * n) as f64 / secs,
            flops / 1e9,
            100.0 * model_gf / gemm_gf
        ));
    }
    if opts.full_sample {
        eprintln!("timing one full sample (README settings: CFG 1-3.5 / 1-2.5, top-p 1-0.5, 25 flow steps)");
        let quant = Quantizer::synthetic(grid, cfg.vocab_size, c, 2);
        let sc = SamplerConfig::official(&grid);
        let noise = vec![ImageNoise::for_image(&grid, 0, 0)];
        let t0 = Instant::now();
        pool.install(|| generate(&generator, &quant, &sc, &[7], &noise))?;
        let secs = t0.elapsed().as_secs_f64();
        let flops: f64 = (0..grid.stages()).map(|s| content_flops(&cfg, 2, s)).sum::<f64>()
            + (grid.flow_stages() * sc.structure_steps) as f64 * structure_flops(&cfg, 2);
        report.push_str(&format!(
            "\nOne full sample, README settings (9 content passes and {}×{} flow steps, all with CFG): {:.1} s per image, \
             {:.2} TFLOP, {:.1} GFLOP/s.\n",
            grid.flow_stages(),
            sc.structure_steps,
            secs,
            flops / 1e12,
            flops / secs / 1e9
        ));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------------
// Tokenizer benchmark
// ---------------------------------------------------------------------------------------------------

/// Runs `nvg tokenize` on `images` synthetic 320×320 PNGs with an official-size tokenizer (synthetic
/// weights), reporting images/s split into encoder, clustering and quantisation, and the decoder's time
/// per image. Returns a Markdown report.
pub fn tokenizer_bench(images: usize, threads: usize) -> Result<String> {
    use nvg::image::{RgbImage, write_png};
    use nvg::tokenizer::{Tokenizer, TokenizerConfig};
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let dir = std::env::temp_dir().join(format!("nvg-bench-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("images/class0"))?;
    let config = TokenizerConfig::official();
    eprintln!("writing an official-size tokenizer with synthetic weights");
    let weights = Tokenizer::synthetic_weights(&config, 3)?;
    let tok_path = dir.join("tokenizer.safetensors");
    nvg_engine::io::safetensors::save(&tok_path, weights.iter().map(|(k, v)| (k.as_str(), v)), None)?;
    for i in 0..images {
        let mut img = RgbImage::new(320, 320);
        for y in 0..320 {
            for x in 0..320 {
                let v =
                    |f: f64| (127.0 + 120.0 * ((x as f64 * f + y as f64 * (1.0 - f) + i as f64) / 17.0).sin()) as u8;
                img.set(x, y, [v(0.3), v(0.6), v(0.9)]);
            }
        }
        write_png(&dir.join(format!("images/class0/{i:04}.png")), &img)?;
    }
    let opts = crate::tokenize::TokenizeOptions {
        images: dir.join("images"),
        tokenizer: tok_path.clone(),
        out: dir.join("data.nvgtok"),
        crops: 1,
        resolution: 256,
        limit: None,
        seed: 0,
        batch: 4,
        whole: false,
        child_order: nvg::structure_map::ChildOrder::Merge,
        mirror: false,
    };
    let r = pool.install(|| crate::tokenize::tokenize(&opts))?;
    let tok = Tokenizer::load(&tok_path, 16)?;
    let latent = randn(&[1, 256, 32], 7);
    let decode = pool.install(|| best_of(1, || tok.decode(&latent)))?;
    let other = r.seconds - r.encode_seconds - r.cluster_seconds - r.quantize_seconds;
    let mut s = format!(
        "machine: {}, {threads} threads; official-size tokenizer (f16, base 128, [1,2,4,4,4], 2 blocks; synthetic weights), {images} images of 320×320 → 256×256\n\n",
        cpu_name()
    );
    s.push_str("| stage | seconds | per image | share |\n|---|---:|---:|---:|\n");
    for (name, secs) in [
        ("encoder", r.encode_seconds),
        ("clustering", r.cluster_seconds),
        ("quantisation", r.quantize_seconds),
        ("reading, preprocessing, writing", other),
    ] {
        s.push_str(&format!(
            "| {name} | {secs:.2} | {:.3} s | {:.1}% |\n",
            secs / r.images as f64,
            100.0 * secs / r.seconds
        ));
    }
    s.push_str(&format!(
        "| **total** | {:.2} | {:.3} s | {:.2} images/s |\n\nDecoder (latent → 256×256 image): {:.2} s per image.\n",
        r.seconds,
        r.seconds / r.images as f64,
        r.images as f64 / r.seconds,
        decode
    ));
    std::fs::remove_dir_all(&dir)?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------------------
// Training benchmark
// ---------------------------------------------------------------------------------------------------

/// Options of `nvg bench train`.
#[derive(Debug, Clone)]
pub struct TrainBenchOptions {
    /// Generator configuration (`d16`, `d20`, `d24` or `depth=N`).
    pub config: String,
    pub batch: usize,
    /// Timed optimiser steps (after one untimed warm-up step).
    pub steps: usize,
    pub threads: usize,
}

/// The process's resident memory now and at its peak, in bytes (Linux; `None` elsewhere).
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Times full training steps (teacher-forced forward of all stages, backward, clipping, AdamW, EMA) of a
/// model with the official initialisation on made-up tokenized images, split into forward, backward and
/// optimiser time, with images/s, tokens/s, achieved GFLOP/s and memory. Returns a Markdown report.
pub fn train_bench(opts: &TrainBenchOptions) -> Result<String> {
    use nvg::dataset::{Record, rebuild};
    use nvg::model::{Generator, content_flops, structure_flops};
    use nvg::tokenizer::Quantizer;
    use nvg::trainer::objective::{CFG_RATE, DropPath, LossWeights, TrainNoise, training_forward};
    use nvg::trainer::{init, params, session::tokens_per_image};
    use nvg::weights::WeightMap;
    use nvg_engine::optim::{AdamW, AdamWConfig, Ema, clip_grad_norm};
    use std::collections::BTreeMap;

    let cfg = nvg::config::GeneratorConfig::preset(&opts.config)?;
    let grid = cfg.grid;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(opts.threads).build()?;
    let rss_start = rss();
    eprintln!(
        "building {} ({:.1} M parameters) with the official initialisation",
        opts.config,
        cfg.parameter_count() as f64 / 1e6
    );
    let quant = Quantizer::synthetic(grid, cfg.vocab_size, cfg.latent_channels, 2);
    let rng = nvg_engine::rng::RngStream::new(5, 5);
    let records: Vec<Record> = (0..opts.batch)
        .map(|b| {
            let mut leaf: Vec<i64> = (0..grid.tokens() as i64).collect();
            for i in (1..leaf.len()).rev() {
                leaf.swap(i, rng.words((b * 4096 + i) as u64)[0] as usize % (i + 1));
            }
            Record {
                class: b % cfg.num_classes,
                leaf_labels: leaf,
                codes: (0..grid.stages())
                    .map(|s| {
                        (0..1usize << s)
                            .map(|k| {
                                (rng.words((1 << 30) + (b * 4096 + s * 512 + k) as u64)[1] as usize % cfg.vocab_size)
                                    as i64
                            })
                            .collect()
                    })
                    .collect(),
            }
        })
        .collect();
    let batch = rebuild(&records, &quant)?;
    let mut params_map = init::initial_parameters(&cfg, 0)?;
    let trainable = |p: &BTreeMap<String, Tensor>| -> BTreeMap<String, Tensor> {
        p.iter()
            .filter(|(n, _)| params::is_parameter(n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    };
    let mut ema = Ema::new(0.9999, &trainable(&params_map))?;
    let mut adamw = AdamW::new(AdamWConfig::default())?;
    let weights = LossWeights::uniform(&grid);
    let rss_model = rss();

    let (mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..=opts.steps {
        eprintln!("step {step} of {} (step 0 is a warm-up)", opts.steps);
        let (tf, tb, to) = pool.install(|| -> Result<(f64, f64, f64)> {
            let t0 = Instant::now();
            let leaves = params::leaves(&params_map);
            let generator = Generator::from_weights(WeightMap::new("bench", leaves.clone()))?;
            let noise = TrainNoise::draw(&grid, cfg.depth, 0..opts.batch, 0, step as u64, DropPath::Official)?;
            let obj = training_forward(&generator, &batch, &noise, CFG_RATE, &weights)?;
            let t1 = Instant::now();
            let mut grads = params::gradients(&leaves, &obj.loss.backward()?)?;
            drop(obj);
            let t2 = Instant::now();
            clip_grad_norm(&mut grads, 1.0)?;
            let mut p = trainable(&params_map);
            adamw.step(&mut p, &grads, 1e-4)?;
            ema.update(&p)?;
            params_map.extend(p);
            let t3 = Instant::now();
            Ok((
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
            ))
        })?;
        if step > 0 {
            fwd.push(tf);
            bwd.push(tb);
            opt.push(to);
        }
    }
    let (tf, tb, to) = (median(fwd), median(bwd), median(opt));
    let total = tf + tb + to;
    let b = opts.batch as f64;
    let forward_flops = (0..grid.stages())
        .map(|s| content_flops(&cfg, opts.batch, s))
        .sum::<f64>()
        + grid.flow_stages() as f64 * structure_flops(&cfg, opts.batch);
    let mut report = format!(
        "machine: {}, {} threads; model {} ({:.1} M parameters), batch {}, f32, DropPath on; median of {} steps\n\n",
        cpu_name(),
        opts.threads,
        opts.config,
        cfg.parameter_count() as f64 / 1e6,
        opts.batch,
        opts.steps
    );
    report.push_str("| part | s per step | share | GFLOP/s |\n|---|---:|---:|---:|\n");
    report.push_str(&format!(
        "| forward (9 content stages + 7 flow instances per image) | {tf:.2} | {:.0}% | {:.1} |\n",
        100.0 * tf / total,
        forward_flops / tf / 1e9
    ));
    report.push_str(&format!(
        "| backward | {tb:.2} | {:.0}% | {:.1} (counting 2× the forward FLOPs) |\n",
        100.0 * tb / total,
        2.0 * forward_flops / tb / 1e9
    ));
    report.push_str(&format!(
        "| clip + AdamW + EMA | {to:.2} | {:.0}% | |\n",
        100.0 * to / total
    ));
    report.push_str(&format!(
        "\n**{:.3} images/s, {:.0} tokens/s, {:.1} GFLOP/s** for the whole step (training FLOPs counted as 3× the \
         forward's {:.1} GFLOP per image).\n",
        b / total,
        b * tokens_per_image(&cfg) as f64 / total,
        3.0 * forward_flops / total / 1e9,
        forward_flops / b / 1e9
    ));
    if let (Some((start, _)), Some((model, _)), Some((_, peak))) = (rss_start, rss_model, rss()) {
        report.push_str(&format!(
            "Memory: weights + EMA + optimiser state {:.2} GB after setup; peak resident {:.2} GB, i.e. {:.2} GB of \
             activations and gradients per image of the batch.\n",
            (model - start) as f64 / 1e9,
            peak as f64 / 1e9,
            (peak.saturating_sub(model)) as f64 / b / 1e9
        ));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------------
// Device benchmark
// ---------------------------------------------------------------------------------------------------

/// Parses `--device` of the device commands: `cuda` (GPU 0), `cuda:N` or `cuda-emu`.
pub fn parse_device(s: &str) -> Result<nvg_engine::Device> {
    use nvg_engine::Device;
    Ok(match s {
        "cpu" => Device::Cpu,
        "cuda-emu" => Device::CudaEmu,
        "cuda" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Device::Cuda(i),
            None => anyhow::bail!("--device {s}: expected cpu, cuda, cuda:N or cuda-emu"),
        },
    })
}

/// Parses `--matmul` of the commands that run models on a device: `f32` or `bf16`.
pub fn parse_matmul(s: &str) -> Result<nvg_engine::cuda::MatmulPrecision> {
    use nvg_engine::cuda::MatmulPrecision;
    match s {
        "f32" => Ok(MatmulPrecision::F32),
        "bf16" => Ok(MatmulPrecision::Bf16),
        _ => anyhow::bail!("--matmul {s}: expected f32 or bf16"),
    }
}

/// Times the device kernels at NVG-like shapes next to the CPU backend in the same process, and checks
/// each result against the CPU's (max relative error). Returns a Markdown report.
pub fn device_bench(device: nvg_engine::Device, scale: usize, iters: usize) -> Result<String> {
    use nvg_engine::Device;
    nvg_engine::cuda::check_device("bench device", device)?;
    // (name, flops, run) at `scale` (1 = small shapes for the emulator; 4 = d16-like on a GPU).
    let m = 64 * scale;
    let a = randn(&[m, 4 * m], 300);
    let b = randn(&[4 * m, m], 301);
    let x = randn(&[4 * m, 16 * scale], 302);
    let w = randn(&[16 * scale], 303);
    // Attention as in the content transformer (16 heads of 64, 64·scale + 1 tokens; keys = values).
    let (ah, an, ad) = (16, 64 * scale + 1, 64);
    let aq = randn(&[2, ah, an, ad], 304);
    let akv = randn(&[2, ah, an, ad], 305);
    let attention_flops = 4.0 * (2 * ah * an * an * ad) as f64;
    // A decoder-like 3x3 convolution, 16·scale channels at 32x32.
    let cc = 16 * scale;
    let cx = randn(&[1, cc, 32, 32], 308);
    let cw = randn(&[cc, cc, 3, 3], 309);
    let conv_flops = 2.0 * (cc * cc * 9 * 32 * 32) as f64;
    // One code per cluster of a batch of 8 at the 256-cluster stage, vocabulary 1024·scale.
    let logits = randn(&[8 * 256, 1024 * scale], 306);
    let uniforms = Tensor::random(&[8 * 256], Distribution::Uniform, RngStream::new(0, 307), 0)?;
    let nucleus = nvg_engine::CategoricalSampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.8,
    };
    type Case<'a> = (
        &'static str,
        f64,
        Box<dyn Fn(&Tensor, &Tensor) -> nvg_engine::Result<Tensor> + 'a>,
    );
    let cases: Vec<(Case, [&Tensor; 2])> = vec![
        (
            (
                "matmul (SIMT GEMM)",
                2.0 * (m * 4 * m * m) as f64,
                Box::new(|p: &Tensor, q: &Tensor| p.matmul(q)),
            ),
            [&a, &b],
        ),
        (
            (
                "matmul_bf16 (tensor cores)",
                2.0 * (m * 4 * m * m) as f64,
                Box::new(|p: &Tensor, q: &Tensor| p.matmul_bf16(q)),
            ),
            [&a, &b],
        ),
        (
            ("softmax rows", 0.0, Box::new(|p: &Tensor, _: &Tensor| p.softmax(-1))),
            [&x, &x],
        ),
        (
            (
                "rms_norm rows",
                0.0,
                Box::new(|p: &Tensor, q: &Tensor| p.rms_norm(q, 1e-6)),
            ),
            [&x, &w],
        ),
        (("silu", 0.0, Box::new(|p: &Tensor, _: &Tensor| p.silu())), [&x, &x]),
        (
            (
                "attention (baseline kernel)",
                attention_flops,
                Box::new(|p: &Tensor, q: &Tensor| sdpa_with_kernel(p, q, q, None, None, AttentionKernel::Baseline)),
            ),
            [&aq, &akv],
        ),
        (
            (
                "attention (tiled kernel)",
                attention_flops,
                Box::new(|p: &Tensor, q: &Tensor| sdpa_with_kernel(p, q, q, None, None, AttentionKernel::Tiled)),
            ),
            [&aq, &akv],
        ),
        (
            (
                "conv3x3 (direct kernel)",
                conv_flops,
                Box::new(|p: &Tensor, q: &Tensor| {
                    p.conv2d_with_kernel(q, None, 1, Padding::uniform(1), ConvKernel::Direct)
                }),
            ),
            [&cx, &cw],
        ),
        (
            (
                "conv3x3 (im2col + GEMM)",
                conv_flops,
                Box::new(|p: &Tensor, q: &Tensor| {
                    p.conv2d_with_kernel(q, None, 1, Padding::uniform(1), ConvKernel::Im2colGemm)
                }),
            ),
            [&cx, &cw],
        ),
        (
            (
                "sample_categorical top-p 0.8",
                0.0,
                Box::new(move |p: &Tensor, q: &Tensor| p.sample_categorical(nucleus, q)),
            ),
            [&logits, &uniforms],
        ),
    ];
    let mut report = format!(
        "device {device} vs cpu ({}), scale {scale}, best of {iters}\n\n| op | shape | {device} ms | cpu ms | {device} GFLOP/s | max rel err vs cpu |\n|---|---|---:|---:|---:|---:|\n",
        cpu_name()
    );
    for ((name, flops, f), [p, q]) in &cases {
        let (dp, dq) = (p.to_device(device)?, q.to_device(device)?);
        let want = f(p, q)?;
        let got = f(&dp, &dq)?;
        let (g, wv) = (got.to_f32_vec()?, want.to_f32_vec()?);
        let err = g
            .iter()
            .zip(&wv)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0.0f32, f32::max);
        let t_dev = best_of(iters, || Ok(f(&dp, &dq)?))?;
        let t_cpu = best_of(iters, || Ok(f(p, q)?))?;
        report.push_str(&format!(
            "| {name} | {:?} | {:.3} | {:.3} | {} | {err:.1e} |\n",
            p.dims(),
            t_dev * 1e3,
            t_cpu * 1e3,
            if *flops > 0.0 {
                format!("{:.1}", flops / t_dev / 1e9)
            } else {
                "-".into()
            }
        ));
    }
    if device == Device::CudaEmu {
        report.push_str(
            "\nCudaEmu runs each CUDA thread as a fiber on the CPU: a correctness tool, its times are not GPU times.\n",
        );
    }
    Ok(report)
}
