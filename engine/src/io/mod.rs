//! File I/O: atomic writes and the safetensors format.

pub mod npz;
pub mod safetensors;
pub mod zip;

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes a file atomically: `write` fills a temporary file in the same directory, which is flushed to
/// disk and then renamed over `path`. A crash or an error leaves either the old file or none, never a
/// partial one; the temporary file is removed on error.
pub fn atomic_write(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let name = path.display().to_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::format(&name, "not a file path"))?;
    // Unique per call (process id + counter), so concurrent writers never share a temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{n}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        write(&mut f)?;
        f.flush()?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(name, e)
    })
}

/// A fast 64-bit hash for fingerprinting data (not cryptographic): 8 bytes per step with a
/// multiply-rotate mix and a SplitMix64 finaliser.
#[derive(Debug, Clone)]
pub struct Hasher64 {
    state: u64,
    len: u64,
    tail: Vec<u8>,
}

impl Default for Hasher64 {
    fn default() -> Self {
        Hasher64::new()
    }
}

impl Hasher64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    pub fn new() -> Hasher64 {
        Hasher64 {
            state: 0x243F_6A88_85A3_08D3,
            len: 0,
            tail: Vec::with_capacity(8),
        }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(Self::K).rotate_left(29);
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.tail.is_empty() {
            let need = 8 - self.tail.len();
            let take = need.min(bytes.len());
            self.tail.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.tail.len() == 8 {
                let w = u64::from_le_bytes(self.tail[..].try_into().unwrap());
                self.mix(w);
                self.tail.clear();
            }
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().unwrap()));
        }
        self.tail.extend_from_slice(chunks.remainder());
    }

    pub fn finish(&self) -> u64 {
        let mut s = self.clone();
        if !s.tail.is_empty() {
            let mut w = [0u8; 8];
            w[..s.tail.len()].copy_from_slice(&s.tail);
            s.mix(u64::from_le_bytes(w));
        }
        let mut z = s.state ^ s.len;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
