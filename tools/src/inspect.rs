//! `nvg inspect`: what a safetensors file or a PyTorch checkpoint holds, and which model it is; or what a
//! pre-tokenized dataset holds.

use anyhow::Result;
use nvg::checkpoint::{ModelKind, TorchCheckpoint, detect_kind};
use nvg::dataset::Dataset;
use nvg::structure_map::ChildOrder;
use nvg_engine::io::safetensors::SafetensorsFile;
use std::fmt::Write;
use std::path::Path;

/// Does the file start with `magic`?
fn starts_with(path: &Path, magic: &[u8]) -> Result<bool> {
    use std::io::Read;
    let mut head = vec![0u8; magic.len()];
    let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        match f
            .read(&mut head[n..])
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        {
            0 => break,
            k => n += k,
        }
    }
    Ok(n == magic.len() && head == magic)
}

/// Is this a ZIP archive (a `torch.save` checkpoint) rather than safetensors?
fn is_zip(path: &Path) -> Result<bool> {
    starts_with(path, b"PK\x03\x04")
}

/// A pre-tokenized dataset's header and its records per class (every record is read and validated).
fn inspect_dataset(path: &Path) -> Result<String> {
    let ds = Dataset::open(path, None)?;
    let h = &ds.header;
    let mut per_class = vec![0usize; h.num_classes];
    for i in 0..ds.len() {
        // `record` validates the whole record (class, structure map, codes): inspect doubles as a check.
        per_class[ds.record(i)?.class] += 1;
    }
    let mut out = String::new();
    writeln!(
        out,
        "kind: pre-tokenized dataset (format version {}) — {} records, {}×{} grid ({} stages), {} codes, {} classes, \
         tokenizer fingerprint {:016x}, children named {}",
        nvg::dataset::VERSION,
        ds.len(),
        h.grid_side,
        h.grid_side,
        h.stages,
        h.codebook_size,
        h.num_classes,
        h.tokenizer_hash,
        match h.child_order {
            ChildOrder::Merge =>
                "in merge order (official; a file from before the header recorded the order reads so whatever it holds)",
            ChildOrder::OutsideFirst => "outside-first",
        }
    )?;
    for (class, n) in per_class.iter().enumerate() {
        writeln!(out, "class {class}: {n} records")?;
    }
    Ok(out)
}

/// A listing of every tensor (name, dtype, shape, elements), the parameter count, the header metadata,
/// and the detected model kind with its configuration; for a `.nvgtok` dataset, its header and classes.
pub fn inspect(path: &Path) -> Result<String> {
    if starts_with(path, &nvg::dataset::MAGIC)? {
        return inspect_dataset(path);
    }
    let mut out = String::new();
    let names: Vec<String> = if is_zip(path)? {
        let ckpt = TorchCheckpoint::open(path)?;
        let entries = ckpt.state_dict()?;
        let width = entries.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut total = 0usize;
        for (name, r) in &entries {
            let n: usize = r.size.iter().product();
            total += n;
            writeln!(
                out,
                "{name:<width$}  {:<5}  {:<20}  {n}",
                format!("{:?}", r.dtype),
                format!("{:?}", r.size)
            )?;
        }
        writeln!(
            out,
            "PyTorch checkpoint: {} tensors in its state dict, {total} parameters ({:.2} M)",
            entries.len(),
            total as f64 / 1e6
        )?;
        entries.into_iter().map(|(n, _)| n).collect()
    } else {
        let f = SafetensorsFile::open(path)?;
        let width = f.names().map(str::len).max().unwrap_or(0);
        let mut total = 0usize;
        for name in f.names() {
            let info = f.info(name).expect("listed name");
            let n: usize = info.shape.iter().product();
            total += n;
            writeln!(
                out,
                "{name:<width$}  {:<5}  {:<20}  {n}",
                format!("{:?}", info.dtype),
                format!("{:?}", info.shape)
            )?;
        }
        writeln!(
            out,
            "{} tensors, {} parameters ({:.2} M)",
            f.len(),
            total,
            total as f64 / 1e6
        )?;
        let mut meta: Vec<_> = f.metadata().iter().collect();
        meta.sort();
        for (k, v) in meta {
            writeln!(out, "metadata {k} = {v}")?;
        }
        f.names().map(str::to_string).collect()
    };
    match detect_kind(names.iter().map(String::as_str)) {
        None => writeln!(out, "kind: unknown (neither an NVG generator nor an NVG tokenizer)")?,
        Some(kind) if is_zip(path)? => writeln!(
            out,
            "kind: NVG {} checkpoint — convert it with `nvg convert`",
            kind.name()
        )?,
        Some(ModelKind::Generator) => {
            let w = nvg::weights::WeightMap::generator(path, nvg::weights::WeightSet::Raw)?;
            let c = nvg::model::infer_config(&w)?;
            writeln!(
                out,
                "kind: NVG generator — depth {}, width {} ({} heads), structure width {} ({} heads), {}×{} grid ({} stages), {} codes × {} channels, {} classes{}; {:.2} M inference parameters",
                c.depth,
                c.width,
                c.heads,
                c.structure_width,
                c.structure_heads,
                c.grid.side(),
                c.grid.side(),
                c.grid.stages(),
                c.vocab_size,
                c.latent_channels,
                c.num_classes,
                if c.position_embedding {
                    ", learned position embeddings"
                } else {
                    ""
                },
                c.parameter_count() as f64 / 1e6
            )?;
        }
        Some(ModelKind::Tokenizer) => {
            let c = nvg::tokenizer::TokenizerConfig::infer(&nvg::weights::WeightMap::from_file(path, "")?)?;
            writeln!(
                out,
                "kind: NVG tokenizer — f{} (base width {}, multipliers {:?}, {} blocks per level), {} codes × {} channels",
                c.downsample(),
                c.base_channels,
                c.channel_mult,
                c.res_blocks,
                c.codebook_size,
                c.latent_channels
            )?;
        }
    }
    Ok(out)
}
