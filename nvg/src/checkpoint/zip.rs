//! A minimal ZIP reader for PyTorch checkpoints: `torch.save` writes an uncompressed ("stored") ZIP
//! archive (ZIP64 when large). Only what that needs is supported; everything is bounds-checked, so a
//! truncated or corrupt file is an error, never a panic or an out-of-bounds read.

use anyhow::{Context, Result, bail, ensure};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::Path;

/// One stored entry: where its bytes are in the file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    len: usize,
}

/// A memory-mapped ZIP archive whose entries are all stored (uncompressed).
pub struct ZipArchive {
    map: Mmap,
    entries: BTreeMap<String, Entry>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(at..at + 2)
            .context("unexpected end of the ZIP structure")?
            .try_into()?,
    ))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(at..at + 4)
            .context("unexpected end of the ZIP structure")?
            .try_into()?,
    ))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        b.get(at..at + 8)
            .context("unexpected end of the ZIP structure")?
            .try_into()?,
    ))
}

const EOCD: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

impl ZipArchive {
    pub fn open(path: &Path) -> Result<ZipArchive> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: read-only map of a file we do not modify.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let entries = Self::index(&map).with_context(|| {
            format!(
                "{}: not a readable ZIP archive (a PyTorch checkpoint is one)",
                path.display()
            )
        })?;
        Ok(ZipArchive { map, entries })
    }

    fn index(b: &[u8]) -> Result<BTreeMap<String, Entry>> {
        ensure!(b.len() >= 22, "file too short ({} bytes)", b.len());
        // End of central directory: scan back over a possible comment (at most 64 KiB).
        let lowest = b.len().saturating_sub(22 + 65_535);
        let eocd = (lowest..=b.len() - 22)
            .rev()
            .find(|&i| u32_at(b, i).ok() == Some(EOCD))
            .context("no end-of-central-directory record (truncated file?)")?;
        let mut count = u16_at(b, eocd + 10)? as u64;
        let mut cd_size = u32_at(b, eocd + 12)? as u64;
        let mut cd_offset = u32_at(b, eocd + 16)? as u64;
        if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            ensure!(
                eocd >= 20 && u32_at(b, eocd - 20)? == ZIP64_LOCATOR,
                "ZIP64 archive without a ZIP64 locator"
            );
            let z = u64_at(b, eocd - 20 + 8)? as usize;
            ensure!(u32_at(b, z)? == ZIP64_EOCD, "bad ZIP64 end-of-central-directory record");
            count = u64_at(b, z + 32)?;
            cd_size = u64_at(b, z + 40)?;
            cd_offset = u64_at(b, z + 48)?;
        }
        let (cd_offset, cd_size) = (usize::try_from(cd_offset)?, usize::try_from(cd_size)?);
        ensure!(
            cd_offset.checked_add(cd_size).is_some_and(|e| e <= b.len()),
            "central directory outside the file (truncated?)"
        );
        let mut entries = BTreeMap::new();
        let mut at = cd_offset;
        for _ in 0..count {
            ensure!(u32_at(b, at)? == CENTRAL, "corrupt central directory at byte {at}");
            let method = u16_at(b, at + 10)?;
            let mut csize = u32_at(b, at + 20)? as u64;
            let mut usize_ = u32_at(b, at + 24)? as u64;
            let (nlen, elen, clen) = (
                u16_at(b, at + 28)? as usize,
                u16_at(b, at + 30)? as usize,
                u16_at(b, at + 32)? as usize,
            );
            let mut local = u32_at(b, at + 42)? as u64;
            let name =
                std::str::from_utf8(b.get(at + 46..at + 46 + nlen).context("truncated entry name")?)?.to_string();
            // ZIP64 extra field: the 64-bit values of the fields saturated above, in this order.
            let mut extra = at + 46 + nlen;
            let extra_end = extra + elen;
            while extra + 4 <= extra_end {
                let (id, size) = (u16_at(b, extra)?, u16_at(b, extra + 2)? as usize);
                if id == 0x0001 {
                    let mut f = extra + 4;
                    for field in [&mut usize_, &mut csize, &mut local] {
                        if *field == 0xFFFF_FFFF {
                            *field = u64_at(b, f)?;
                            f += 8;
                        }
                    }
                }
                extra += 4 + size;
            }
            if method != 0 {
                bail!("entry `{name}` is compressed (method {method}); PyTorch writes stored (uncompressed) entries");
            }
            ensure!(csize == usize_, "entry `{name}`: stored sizes disagree");
            let local = usize::try_from(local)?;
            ensure!(u32_at(b, local)? == LOCAL, "entry `{name}`: bad local header");
            let data = local + 30 + u16_at(b, local + 26)? as usize + u16_at(b, local + 28)? as usize;
            let len = usize::try_from(csize)?;
            ensure!(
                data.checked_add(len).is_some_and(|e| e <= b.len()),
                "entry `{name}` runs past the end of the file (truncated?)"
            );
            entries.insert(name, Entry { start: data, len });
            at += 46 + nlen + elen + clen;
        }
        Ok(entries)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The bytes of entry `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries.get(name).map(|e| &self.map[e.start..e.start + e.len])
    }
}
