//! `nvg inspect`: what a safetensors file holds.

use anyhow::Result;
use nvg_engine::io::safetensors::SafetensorsFile;
use std::fmt::Write;
use std::path::Path;

/// A listing of every tensor (name, dtype, shape, elements), the total parameter count and the
/// header metadata.
pub fn inspect(path: &Path) -> Result<String> {
    let f = SafetensorsFile::open(path)?;
    let mut out = String::new();
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
    Ok(out)
}
