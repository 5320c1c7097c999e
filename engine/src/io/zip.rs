//! Uncompressed ("stored") ZIP archives, the container of PyTorch checkpoints (`torch.save`) and of
//! NumPy's `.npz`. Reading supports what those need (stored entries, ZIP64); every offset is
//! bounds-checked, so a truncated or corrupt file is an error, never a panic or an out-of-bounds read.
//! Writing produces one ZIP64 archive of stored entries, streamed, with CRC-32s.

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
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

const EOCD: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// Little-endian field reader over the archive bytes; reading past the end is an error.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn bytes(&self, at: usize, n: usize) -> std::result::Result<&[u8], String> {
        at.checked_add(n)
            .and_then(|e| self.0.get(at..e))
            .ok_or_else(|| format!("ZIP structure runs past the end of the file at byte {at} (truncated?)"))
    }
    fn u16(&self, at: usize) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.bytes(at, 2)?.try_into().unwrap()))
    }
    fn u32(&self, at: usize) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(at, 4)?.try_into().unwrap()))
    }
    fn u64(&self, at: usize) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(at, 8)?.try_into().unwrap()))
    }
}

impl ZipArchive {
    pub fn open(path: &Path) -> Result<ZipArchive> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| Error::io(&name, e))?;
        // SAFETY: read-only map of a file we do not modify.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&name, e))?;
        let entries =
            Self::index(&map).map_err(|m| Error::format(&name, format!("not a readable ZIP archive: {m}")))?;
        Ok(ZipArchive { map, entries })
    }

    fn index(b: &[u8]) -> std::result::Result<BTreeMap<String, Entry>, String> {
        let f = Fields(b);
        if b.len() < 22 {
            return Err(format!("file too short ({} bytes)", b.len()));
        }
        // End of central directory: scan back over a possible comment (at most 64 KiB).
        let lowest = b.len().saturating_sub(22 + 65_535);
        let eocd = (lowest..=b.len() - 22)
            .rev()
            .find(|&i| f.u32(i) == Ok(EOCD))
            .ok_or("no end-of-central-directory record (truncated file?)")?;
        let mut count = f.u16(eocd + 10)? as u64;
        let mut cd_size = f.u32(eocd + 12)? as u64;
        let mut cd_offset = f.u32(eocd + 16)? as u64;
        if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            if eocd < 20 || f.u32(eocd - 20)? != ZIP64_LOCATOR {
                return Err("ZIP64 archive without a ZIP64 locator".into());
            }
            let z = f.u64(eocd - 20 + 8)? as usize;
            if f.u32(z)? != ZIP64_EOCD {
                return Err("bad ZIP64 end-of-central-directory record".into());
            }
            count = f.u64(z + 32)?;
            cd_size = f.u64(z + 40)?;
            cd_offset = f.u64(z + 48)?;
        }
        let (cd_offset, cd_size) = (cd_offset as usize, cd_size as usize);
        if cd_offset.checked_add(cd_size).is_none_or(|e| e > b.len()) {
            return Err("central directory outside the file (truncated?)".into());
        }
        let mut entries = BTreeMap::new();
        let mut at = cd_offset;
        for _ in 0..count {
            if f.u32(at)? != CENTRAL {
                return Err(format!("corrupt central directory at byte {at}"));
            }
            let method = f.u16(at + 10)?;
            let mut csize = f.u32(at + 20)? as u64;
            let mut usize_ = f.u32(at + 24)? as u64;
            let (nlen, elen, clen) = (
                f.u16(at + 28)? as usize,
                f.u16(at + 30)? as usize,
                f.u16(at + 32)? as usize,
            );
            let mut local = f.u32(at + 42)? as u64;
            let name = std::str::from_utf8(f.bytes(at + 46, nlen)?)
                .map_err(|_| "entry name is not UTF-8".to_string())?
                .to_string();
            // ZIP64 extra field: the 64-bit values of the saturated fields, in this order.
            let mut extra = at + 46 + nlen;
            let extra_end = extra + elen;
            while extra + 4 <= extra_end {
                let (id, size) = (f.u16(extra)?, f.u16(extra + 2)? as usize);
                if id == 0x0001 {
                    let mut p = extra + 4;
                    for field in [&mut usize_, &mut csize, &mut local] {
                        if *field == 0xFFFF_FFFF {
                            *field = f.u64(p)?;
                            p += 8;
                        }
                    }
                }
                extra += 4 + size;
            }
            if method != 0 {
                return Err(format!(
                    "entry `{name}` is compressed (method {method}); only stored entries are read"
                ));
            }
            if csize != usize_ {
                return Err(format!("entry `{name}`: stored sizes disagree"));
            }
            let local = local as usize;
            if f.u32(local)? != LOCAL {
                return Err(format!("entry `{name}`: bad local header"));
            }
            let data = local + 30 + f.u16(local + 26)? as usize + f.u16(local + 28)? as usize;
            let len = csize as usize;
            if data.checked_add(len).is_none_or(|e| e > b.len()) {
                return Err(format!("entry `{name}` runs past the end of the file (truncated?)"));
            }
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

/// CRC-32 (IEEE 802.3, as ZIP uses), incremental.
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Crc32(0xFFFF_FFFF)
    }
}

impl Crc32 {
    fn table() -> &'static [u32; 256] {
        static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| {
            let mut t = [0u32; 256];
            for (i, e) in t.iter_mut().enumerate() {
                let mut c = i as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                }
                *e = c;
            }
            t
        })
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let t = Self::table();
        for &b in bytes {
            self.0 = t[((self.0 ^ b as u32) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// Writes a ZIP64 archive with one stored entry whose size is known up front, streaming its data
/// (used for `.npz` files of any size). The caller writes exactly `size` bytes through `write`.
pub fn write_single_entry<W: Write + Seek>(
    out: &mut W,
    name: &str,
    size: u64,
    write: impl FnOnce(&mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let start = out.stream_position()?;
    let le16 = |v: u16| v.to_le_bytes();
    let le32 = |v: u32| v.to_le_bytes();
    let le64 = |v: u64| v.to_le_bytes();
    // Local header: sizes in the ZIP64 extra field; CRC patched after the data.
    let mut local = Vec::new();
    local.extend_from_slice(&le32(LOCAL));
    local.extend_from_slice(&le16(45)); // version needed: ZIP64
    local.extend_from_slice(&le16(0)); // flags
    local.extend_from_slice(&le16(0)); // stored
    local.extend_from_slice(&le32(0)); // time, date
    local.extend_from_slice(&le32(0)); // CRC placeholder (offset 14)
    local.extend_from_slice(&le32(0xFFFF_FFFF));
    local.extend_from_slice(&le32(0xFFFF_FFFF));
    local.extend_from_slice(&le16(name.len() as u16));
    local.extend_from_slice(&le16(20));
    local.extend_from_slice(name.as_bytes());
    local.extend_from_slice(&le16(0x0001));
    local.extend_from_slice(&le16(16));
    local.extend_from_slice(&le64(size));
    local.extend_from_slice(&le64(size));
    out.write_all(&local)?;
    let mut crc = Crc32::default();
    let mut written = 0u64;
    write(&mut |chunk: &[u8]| {
        crc.update(chunk);
        written += chunk.len() as u64;
        out.write_all(chunk)
    })?;
    if written != size {
        return Err(std::io::Error::other(format!(
            "entry `{name}`: wrote {written} bytes, declared {size}"
        )));
    }
    let crc = crc.finish();
    let end = out.stream_position()?;
    out.seek(SeekFrom::Start(start + 14))?;
    out.write_all(&le32(crc))?;
    out.seek(SeekFrom::Start(end))?;
    // Central directory with the ZIP64 extra field (sizes and the local header offset).
    let mut cd = Vec::new();
    cd.extend_from_slice(&le32(CENTRAL));
    cd.extend_from_slice(&le16(45));
    cd.extend_from_slice(&le16(45));
    cd.extend_from_slice(&le16(0));
    cd.extend_from_slice(&le16(0));
    cd.extend_from_slice(&le32(0));
    cd.extend_from_slice(&le32(crc));
    cd.extend_from_slice(&le32(0xFFFF_FFFF));
    cd.extend_from_slice(&le32(0xFFFF_FFFF));
    cd.extend_from_slice(&le16(name.len() as u16));
    cd.extend_from_slice(&le16(28));
    cd.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
    cd.extend_from_slice(&le32(0)); // external attributes
    cd.extend_from_slice(&le32(0xFFFF_FFFF));
    cd.extend_from_slice(name.as_bytes());
    cd.extend_from_slice(&le16(0x0001));
    cd.extend_from_slice(&le16(24));
    cd.extend_from_slice(&le64(size));
    cd.extend_from_slice(&le64(size));
    cd.extend_from_slice(&le64(start));
    let cd_offset = end;
    out.write_all(&cd)?;
    let z64 = out.stream_position()?;
    // ZIP64 end of central directory, its locator, and the classic record pointing to them.
    let mut tail = Vec::new();
    tail.extend_from_slice(&le32(ZIP64_EOCD));
    tail.extend_from_slice(&le64(44));
    tail.extend_from_slice(&le16(45));
    tail.extend_from_slice(&le16(45));
    tail.extend_from_slice(&le32(0));
    tail.extend_from_slice(&le32(0));
    tail.extend_from_slice(&le64(1));
    tail.extend_from_slice(&le64(1));
    tail.extend_from_slice(&le64(cd.len() as u64));
    tail.extend_from_slice(&le64(cd_offset));
    tail.extend_from_slice(&le32(ZIP64_LOCATOR));
    tail.extend_from_slice(&le32(0));
    tail.extend_from_slice(&le64(z64));
    tail.extend_from_slice(&le32(1));
    tail.extend_from_slice(&le32(EOCD));
    tail.extend_from_slice(&[0; 4]);
    tail.extend_from_slice(&le16(0xFFFF));
    tail.extend_from_slice(&le16(0xFFFF));
    tail.extend_from_slice(&le32(0xFFFF_FFFF));
    tail.extend_from_slice(&le32(0xFFFF_FFFF));
    tail.extend_from_slice(&le16(0));
    out.write_all(&tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        let mut c = Crc32::default();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn a_written_archive_reads_back() {
        let dir = std::env::temp_dir().join(format!("nvg-zip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.zip");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut f = std::fs::File::create(&path).unwrap();
        write_single_entry(&mut f, "arr_0.npy", data.len() as u64, |w| {
            for c in data.chunks(4096) {
                w(c)?;
            }
            Ok(())
        })
        .unwrap();
        drop(f);
        let z = ZipArchive::open(&path).unwrap();
        assert_eq!(z.get("arr_0.npy").unwrap(), &data[..]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
