//! Pre-tokenized datasets: one file of fixed-size records that training maps into memory instead of
//! re-encoding every image at every step (the format is described in docs/dataset-format.md).
//!
//! A record holds what cannot be recomputed cheaply — the class, the leaf structure labels and every
//! cluster's code; canvases and the regression target are rebuilt from codes with the tokenizer's
//! codebook and `Phi` convolutions. Files are written atomically: a dataset that is being written, or
//! whose writer failed, never exists under its final name.

use crate::config::Grid;
use crate::structure_map::ChildOrder;
use crate::tokenizer::Quantizer;
use anyhow::{Context, Result, bail, ensure};
use memmap2::Mmap;
use nvg_engine::Tensor;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first eight bytes of every dataset file.
pub const MAGIC: [u8; 8] = *b"NVGTOKS\0";
/// Format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the header; records start here.
pub const HEADER_SIZE: usize = 64;
/// Header flag: the writer finished (the count is final).
const FLAG_COMPLETE: u32 = 1;
/// Header flag: the children of every split are named outside-first (`ChildOrder::OutsideFirst`); clear:
/// the official merge order. Files written before the flag existed read as merge order, whatever they hold.
const FLAG_OUTSIDE_FIRST: u32 = 2;
/// Every flag this build knows; a file with another bit set comes from a newer build.
const KNOWN_FLAGS: u32 = FLAG_COMPLETE | FLAG_OUTSIDE_FIRST;

/// The most classes a dataset header may declare (ImageNet has 1,000; a per-image class set of a
/// million images fits).
pub const MAX_CLASSES: usize = 1 << 20;

/// What a dataset file declares about its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetHeader {
    pub grid_side: usize,
    pub stages: usize,
    pub codebook_size: usize,
    pub num_classes: usize,
    pub count: usize,
    pub tokenizer_hash: u64,
    /// How the tokenizer named the two children of every split (what the structure labels mean).
    pub child_order: ChildOrder,
}

impl DatasetHeader {
    pub fn grid(&self) -> Result<Grid> {
        Grid::new(self.grid_side)
    }

    fn tokens(&self) -> usize {
        self.grid_side * self.grid_side
    }

    /// Bytes per code: 2 when every code fits in a u16, else 4.
    pub fn code_bytes(&self) -> usize {
        if self.codebook_size <= 1 << 16 { 2 } else { 4 }
    }

    /// Bytes per leaf label: 1 when every token index fits in a u8, else 2.
    pub fn label_bytes(&self) -> usize {
        if self.tokens() <= 1 << 8 { 1 } else { 2 }
    }

    /// Codes per record: one per cluster of every stage, `2^stages − 1`.
    pub fn codes_per_record(&self) -> usize {
        (1 << self.stages) - 1
    }

    /// Record size in bytes (class, leaf labels, codes; padded to 8).
    pub fn record_size(&self) -> usize {
        (4 + self.tokens() * self.label_bytes() + self.codes_per_record() * self.code_bytes()).div_ceil(8) * 8
    }

    fn child_order_flag(&self) -> u32 {
        match self.child_order {
            ChildOrder::Merge => 0,
            ChildOrder::OutsideFirst => FLAG_OUTSIDE_FIRST,
        }
    }

    fn encode(&self, flags: u32) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[0..8].copy_from_slice(&MAGIC);
        let u32s = [
            (8, VERSION),
            (12, HEADER_SIZE as u32),
            (16, self.grid_side as u32),
            (20, self.stages as u32),
            (24, self.codebook_size as u32),
            (28, self.code_bytes() as u32),
            (32, self.label_bytes() as u32),
            (36, self.record_size() as u32),
            (56, self.num_classes as u32),
            (60, flags | self.child_order_flag()),
        ];
        for (at, v) in u32s {
            h[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        h[40..48].copy_from_slice(&(self.count as u64).to_le_bytes());
        h[48..56].copy_from_slice(&self.tokenizer_hash.to_le_bytes());
        h
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub class: usize,
    /// The last stage's labels (a permutation of the tokens); stage s is `leaf >> (stages − 1 − s)`.
    pub leaf_labels: Vec<i64>,
    /// Per stage, the code of every cluster (`2^s` codes at stage s).
    pub codes: Vec<Vec<i64>>,
}

impl Record {
    /// Labels of stage `s`.
    pub fn labels(&self, stage: usize) -> Vec<i64> {
        let shift = self.codes.len() - 1 - stage;
        self.leaf_labels.iter().map(|l| l >> shift).collect()
    }
}

/// Writes a dataset to a temporary file beside `path` and renames it into place in `finish`.
pub struct DatasetWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    header: DatasetHeader,
}

impl DatasetWriter {
    /// Starts a dataset; `header.count` is ignored (it counts the records written).
    pub fn create(path: &Path, mut header: DatasetHeader) -> Result<DatasetWriter> {
        header.count = 0;
        header.grid()?;
        ensure!(
            header.stages == header.grid()?.stages(),
            "a {}×{} grid has {} stages, not {}",
            header.grid_side,
            header.grid_side,
            header.grid()?.stages(),
            header.stages
        );
        ensure!(
            (1..=MAX_CLASSES).contains(&header.num_classes),
            "a dataset holds 1 to {MAX_CLASSES} classes, not {}",
            header.num_classes
        );
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file path", path.display()))?;
        let tmp = path.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::new(file);
        // An incomplete header first: a crash leaves a file no reader accepts.
        out.write_all(&header.encode(0))?;
        Ok(DatasetWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            header,
        })
    }

    pub fn count(&self) -> usize {
        self.header.count
    }

    /// Appends a record.
    pub fn push(&mut self, r: &Record) -> Result<()> {
        let h = &self.header;
        ensure!(
            r.class < h.num_classes,
            "class {} is outside 0..{}",
            r.class,
            h.num_classes
        );
        ensure!(
            r.leaf_labels.len() == h.tokens(),
            "{} leaf labels, expected {}",
            r.leaf_labels.len(),
            h.tokens()
        );
        ensure!(
            r.codes.len() == h.stages,
            "{} stages of codes, expected {}",
            r.codes.len(),
            h.stages
        );
        let mut buf = Vec::with_capacity(h.record_size());
        buf.extend_from_slice(&(r.class as u32).to_le_bytes());
        for &l in &r.leaf_labels {
            ensure!(
                l >= 0 && (l as usize) < h.tokens(),
                "leaf label {l} outside 0..{}",
                h.tokens()
            );
            match h.label_bytes() {
                1 => buf.push(l as u8),
                _ => buf.extend_from_slice(&(l as u16).to_le_bytes()),
            }
        }
        for (s, codes) in r.codes.iter().enumerate() {
            ensure!(
                codes.len() == 1 << s,
                "stage {s} has {} codes, expected {}",
                codes.len(),
                1 << s
            );
            for &c in codes {
                ensure!(
                    c >= 0 && (c as usize) < h.codebook_size,
                    "code {c} outside 0..{}",
                    h.codebook_size
                );
                match h.code_bytes() {
                    2 => buf.extend_from_slice(&(c as u16).to_le_bytes()),
                    _ => buf.extend_from_slice(&(c as u32).to_le_bytes()),
                }
            }
        }
        buf.resize(h.record_size(), 0);
        self.out.as_mut().expect("open writer").write_all(&buf)?;
        self.header.count += 1;
        Ok(())
    }

    /// Writes the final header, flushes to disk and renames the file into place.
    pub fn finish(mut self) -> Result<DatasetHeader> {
        let mut out = self.out.take().expect("open writer");
        out.flush()?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&self.header.encode(FLAG_COMPLETE))?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| format!("renaming into {}", self.path.display()))?;
        Ok(self.header.clone())
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        // Not finished: remove the partial file.
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A memory-mapped dataset.
pub struct Dataset {
    path: PathBuf,
    map: Mmap,
    pub header: DatasetHeader,
}

impl Dataset {
    /// Opens and validates a dataset: magic, version, sizes, flags (complete, none unknown) and length; with
    /// `tokenizer_hash`, that it was made with that tokenizer.
    pub fn open(path: &Path, tokenizer_hash: Option<u64>) -> Result<Dataset> {
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("opening dataset {name}"))?;
        // SAFETY: read-only map; datasets are not modified while in use (documented).
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {name}"))?;
        ensure!(
            map.len() >= HEADER_SIZE,
            "{name}: {} bytes is too short for a dataset header ({HEADER_SIZE} bytes)",
            map.len()
        );
        ensure!(map[0..8] == MAGIC, "{name}: not an nvg-rs dataset (wrong magic bytes)");
        let u32_at = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().unwrap()) as usize;
        let u64_at = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().unwrap());
        let version = u32_at(8) as u32;
        ensure!(
            version == VERSION,
            "{name}: dataset format version {version}; this build reads version {VERSION}"
        );
        ensure!(
            u32_at(12) == HEADER_SIZE,
            "{name}: header size {} (expected {HEADER_SIZE})",
            u32_at(12)
        );
        let flags = u32_at(60) as u32;
        ensure!(
            flags & !KNOWN_FLAGS == 0,
            "{name}: header flags {flags:#x} include bits this build does not know (a newer nvg-rs wrote it)"
        );
        ensure!(
            flags & FLAG_COMPLETE != 0,
            "{name}: the writer did not finish this file"
        );
        let header = DatasetHeader {
            grid_side: u32_at(16),
            stages: u32_at(20),
            codebook_size: u32_at(24),
            num_classes: u32_at(56),
            count: u64_at(40) as usize,
            tokenizer_hash: u64_at(48),
            child_order: if flags & FLAG_OUTSIDE_FIRST != 0 {
                ChildOrder::OutsideFirst
            } else {
                ChildOrder::Merge
            },
        };
        let grid = header.grid().with_context(|| format!("{name}: bad grid"))?;
        ensure!(
            header.stages == grid.stages(),
            "{name}: {} stages for a {}×{} grid",
            header.stages,
            header.grid_side,
            header.grid_side
        );
        ensure!(
            header.codebook_size > 0 && header.num_classes > 0,
            "{name}: empty codebook or class set"
        );
        // A class count is a table size everywhere downstream (class embeddings, per-class counts).
        ensure!(
            header.num_classes <= MAX_CLASSES,
            "{name}: {} classes is more than the {MAX_CLASSES} a dataset may hold (a damaged header?)",
            header.num_classes
        );
        let declared = [
            (28, header.code_bytes(), "code size"),
            (32, header.label_bytes(), "label size"),
            (36, header.record_size(), "record size"),
        ];
        for (at, want, what) in declared {
            ensure!(
                u32_at(at) == want,
                "{name}: {what} {} does not match the header's sizes ({want})",
                u32_at(at)
            );
        }
        let want_len = header
            .count
            .checked_mul(header.record_size())
            .and_then(|n| n.checked_add(HEADER_SIZE))
            .with_context(|| format!("{name}: the header's record count {} is impossibly large", header.count))?;
        ensure!(
            map.len() == want_len,
            "{name}: truncated or padded: {} records of {} bytes need {want_len} bytes, the file has {}",
            header.count,
            header.record_size(),
            map.len()
        );
        if let Some(h) = tokenizer_hash {
            ensure!(
                h == header.tokenizer_hash,
                "{name}: made with another tokenizer (hash {:016x}; the given tokenizer's is {h:016x})",
                header.tokenizer_hash
            );
        }
        Ok(Dataset {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn len(&self) -> usize {
        self.header.count
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record `i`, validated: the class is in range, the leaf labels are a permutation of the tokens and
    /// every code is in the codebook (what `rebuild` relies on), so a corrupt file gives an error naming
    /// the record instead of wrong training data.
    pub fn record(&self, i: usize) -> Result<Record> {
        let r = self.read_record(i)?;
        self.check(&r)
            .with_context(|| format!("{}: record {i} is corrupt", self.path.display()))?;
        Ok(r)
    }

    /// The class of record `i` (read without the rest of the record), checked to be in range.
    pub fn class_of(&self, i: usize) -> Result<usize> {
        let h = &self.header;
        ensure!(i < h.count, "{}: record {i} of {}", self.path.display(), h.count);
        let start = HEADER_SIZE + i * h.record_size();
        let class = u32::from_le_bytes(self.map[start..start + 4].try_into().unwrap()) as usize;
        ensure!(
            class < h.num_classes,
            "{}: record {i} is corrupt: class {class} outside 0..{}",
            self.path.display(),
            h.num_classes
        );
        Ok(class)
    }

    fn check(&self, r: &Record) -> Result<()> {
        let h = &self.header;
        ensure!(
            r.class < h.num_classes,
            "class {} outside 0..{}",
            r.class,
            h.num_classes
        );
        let tokens = r.leaf_labels.len();
        let mut seen = vec![false; tokens];
        for &l in &r.leaf_labels {
            ensure!(
                (0..tokens as i64).contains(&l) && !seen[l as usize],
                "leaf labels are not a permutation of 0..{tokens} (label {l})"
            );
            seen[l as usize] = true;
        }
        if let Some(c) = r
            .codes
            .iter()
            .flatten()
            .find(|&&c| c < 0 || c as usize >= h.codebook_size)
        {
            bail!("code {c} outside the codebook 0..{}", h.codebook_size);
        }
        Ok(())
    }

    fn read_record(&self, i: usize) -> Result<Record> {
        let h = &self.header;
        ensure!(i < h.count, "{}: record {i} of {}", self.path.display(), h.count);
        let start = HEADER_SIZE + i * h.record_size();
        let rec = &self.map[start..start + h.record_size()];
        let class = u32::from_le_bytes(rec[0..4].try_into().unwrap()) as usize;
        let mut at = 4;
        let mut leaf_labels = Vec::with_capacity(h.tokens());
        for _ in 0..h.tokens() {
            leaf_labels.push(match h.label_bytes() {
                1 => rec[at] as i64,
                _ => u16::from_le_bytes(rec[at..at + 2].try_into().unwrap()) as i64,
            });
            at += h.label_bytes();
        }
        let mut codes = Vec::with_capacity(h.stages);
        for s in 0..h.stages {
            let mut stage = Vec::with_capacity(1 << s);
            for _ in 0..1 << s {
                stage.push(match h.code_bytes() {
                    2 => u16::from_le_bytes(rec[at..at + 2].try_into().unwrap()) as i64,
                    _ => u32::from_le_bytes(rec[at..at + 4].try_into().unwrap()) as i64,
                });
                at += h.code_bytes();
            }
            codes.push(stage);
        }
        Ok(Record {
            class,
            leaf_labels,
            codes,
        })
    }
}

/// Records made ready for the generator: classes, every stage's labels and codes per token, every stage's
/// input canvas and the final latent (the regression target), batched.
pub struct RebuiltBatch {
    pub classes: Vec<usize>,
    /// `[B, stages, T]` i64.
    pub labels: Tensor,
    /// `[B, stages, T]` i64: the cluster's code at every token.
    pub codes_per_token: Tensor,
    /// `[B, stages, T, C]`: the canvas each stage starts from.
    pub canvases: Tensor,
    /// `[B, T, C]`.
    pub target: Tensor,
}

/// Rebuilds canvases and targets of `records` with the tokenizer's quantiser.
pub fn rebuild(records: &[Record], quantizer: &Quantizer) -> Result<RebuiltBatch> {
    let grid = quantizer.grid();
    let (b, t, stages) = (records.len(), grid.tokens(), grid.stages());
    if let Some(r) = records
        .iter()
        .find(|r| r.codes.len() != stages || r.leaf_labels.len() != t)
    {
        bail!(
            "a record with {} stages and {} tokens does not fit a {stages}-stage, {t}-token quantiser",
            r.codes.len(),
            r.leaf_labels.len()
        );
    }
    let mut labels = Vec::with_capacity(b * stages * t);
    let mut per_token = Vec::with_capacity(b * stages * t);
    for r in records {
        for s in 0..stages {
            let lab = r.labels(s);
            per_token.extend(lab.iter().map(|&l| r.codes[s][l as usize]));
            labels.extend(lab);
        }
    }
    let labels = Tensor::from_vec(labels, &[b, stages, t])?;
    let codes_per_token = Tensor::from_vec(per_token, &[b, stages, t])?;
    let c = quantizer.channels();
    let mut canvas = Tensor::zeros(&[b, t, c], nvg_engine::DType::F32, nvg_engine::Device::Cpu)?;
    let mut canvases = Vec::with_capacity(stages);
    for s in 0..stages {
        canvases.push(canvas.clone());
        let codes = codes_per_token.narrow(1, s, 1)?.squeeze(1)?;
        canvas = quantizer.next_canvas(&canvas, &codes, s)?;
    }
    let refs: Vec<&Tensor> = canvases.iter().collect();
    Ok(RebuiltBatch {
        classes: records.iter().map(|r| r.class).collect(),
        labels,
        codes_per_token,
        canvases: Tensor::stack(&refs, 1)?,
        target: canvas,
    })
}
