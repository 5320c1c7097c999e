//! Helpers shared by the workspace's integration tests and benchmarks: locating the fixtures of the
//! official implementation, reading their manifest, and comparing tensors with error reports that say
//! how far off a result is.

use nvg_engine::Tensor;
use nvg_engine::io::safetensors::SafetensorsFile;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The fixture directory: `NVG_FIXTURES` if set, else the shared `nvg-tiny` set beside the checkout
/// (`../shared/fixtures/nvg-tiny`), else `/work/shared/fixtures/nvg-tiny`.
pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("NVG_FIXTURES") {
        return PathBuf::from(p);
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/nvg-tiny");
    if beside.join("manifest.json").exists() {
        return beside;
    }
    PathBuf::from("/work/shared/fixtures/nvg-tiny")
}

/// A fixture set: its directory and parsed `manifest.json`.
pub struct Fixtures {
    pub dir: PathBuf,
    pub manifest: Value,
}

impl Fixtures {
    /// Opens the fixture set; panics with instructions if it cannot be found (parity tests must not
    /// pass silently without their reference data).
    pub fn open() -> Fixtures {
        let dir = fixtures_dir();
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the fixture manifest {} ({e}); set NVG_FIXTURES to a fixture directory",
                path.display()
            )
        });
        let manifest = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fixtures { dir, manifest }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The fixture generator (raw weights) and its tokenizer's quantiser on the CPU: what the sampler
    /// needs.
    pub fn sampler_models(&self) -> (nvg::model::Generator, nvg::tokenizer::Quantizer) {
        let generator =
            nvg::model::Generator::load(&self.path("generator.safetensors"), nvg::weights::WeightSet::Raw).unwrap();
        let quantizer =
            nvg::tokenizer::Quantizer::load(&self.path("tokenizer.safetensors"), generator.config.grid).unwrap();
        (generator, quantizer)
    }

    /// A fixture safetensors file.
    pub fn file(&self, file: &str) -> FixtureFile {
        let path = self.path(file);
        FixtureFile {
            inner: SafetensorsFile::open(&path).unwrap_or_else(|e| panic!("{e}")),
            path,
        }
    }

    /// `files.<file>.hyperparameters`.
    pub fn hyper(&self, file: &str) -> &Value {
        &self.manifest["files"][file]["hyperparameters"]
    }
}

/// An open fixture file whose lookups panic with the file and tensor name.
pub struct FixtureFile {
    inner: SafetensorsFile,
    path: PathBuf,
}

impl FixtureFile {
    pub fn get(&self, name: &str) -> Tensor {
        self.inner
            .get(name)
            .unwrap_or_else(|e| panic!("fixture {}: {e}", self.path.display()))
    }
    pub fn has(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Largest absolute and relative error of `got` against `want` (relative to max(|want|, floor)).
pub fn errors(got: &[f32], want: &[f32], floor: f32) -> (f32, f32) {
    got.iter().zip(want).fold((0.0f32, 0.0f32), |(a, r), (&g, &w)| {
        let d = (g - w).abs();
        (a.max(d), r.max(d / w.abs().max(floor)))
    })
}

/// Asserts `|got − want| ≤ atol + rtol·|want|` everywhere, reporting the worst element and the error
/// statistics on failure.
#[track_caller]
pub fn assert_close(got: &Tensor, want: &Tensor, atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let excess = (a - b).abs() - (atol + rtol * b.abs());
        if (excess > 0.0 || a.is_nan() != b.is_nan()) && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        let (abs, rel) = errors(&g, &w, 1e-3);
        panic!(
            "{what}: element {i}: got {}, want {} (atol {atol}, rtol {rtol}); max abs err {abs:e}, max rel err {rel:e}",
            g[i], w[i]
        );
    }
}

/// Asserts two integer tensors are equal, naming the first difference.
#[track_caller]
pub fn assert_same_ints(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (got.to_i64_vec().unwrap(), want.to_i64_vec().unwrap());
    if let Some(i) = g.iter().zip(&w).position(|(a, b)| a != b) {
        let n = g.iter().zip(&w).filter(|(a, b)| a != b).count();
        panic!(
            "{what}: {n} of {} values differ; first at {i}: got {}, want {}",
            g.len(),
            g[i],
            w[i]
        );
    }
}

/// Runs a program (the `nvg` binary under test: `env!("CARGO_BIN_EXE_nvg")`) with `args`; returns
/// whether it succeeded, its stdout and its stderr.
pub fn run_program(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh, empty directory `nvg-<suite>-<pid>-<name>` under the system temp directory.
pub fn fresh_dir(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nvg-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

/// Writes `records` as a dataset at `path`: a `side`×`side` grid, merge-order children, no tokenizer
/// hash (datasets made up by tests).
pub fn write_dataset(
    path: &Path,
    side: usize,
    codebook_size: usize,
    num_classes: usize,
    records: &[nvg::dataset::Record],
) {
    use nvg::dataset::{DatasetHeader, DatasetWriter};
    let grid = nvg::config::Grid::new(side).expect("a power-of-two grid side");
    let header = DatasetHeader {
        grid_side: side,
        stages: grid.stages(),
        codebook_size,
        num_classes,
        count: 0,
        tokenizer_hash: 0,
        child_order: nvg::structure_map::ChildOrder::Merge,
    };
    let mut w = DatasetWriter::create(path, header).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    for r in records {
        w.push(r).unwrap();
    }
    w.finish().unwrap();
}
