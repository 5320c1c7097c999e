//! Images: PNG/JPEG reading, PNG writing, the official preprocessing (shorter side to 1.125× the
//! resolution with Lanczos-4, then a centre or random crop), conversion to and from model tensors, and
//! the drawing helpers behind `nvg reconstruct --stages` (grids, structure-map colours).

use anyhow::{Context, Result, bail, ensure};
use nvg_engine::Tensor;
use nvg_engine::rng::{Distribution, RngStream};
use std::io::{BufReader, Cursor};
use std::path::Path;

/// An 8-bit RGB image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    /// `height · width · 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize) -> RgbImage {
        RgbImage {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    pub fn set(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        let i = (y * self.width + x) * 3;
        self.data[i..i + 3].copy_from_slice(&rgb);
    }
}

/// Reads a PNG or JPEG file (recognised by content, not name) as RGB. Grey images are expanded;
/// transparent pixels are composited onto white.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_image(&bytes).with_context(|| format!("decoding {}", path.display()))
}

/// Decodes PNG or JPEG bytes (see `read_image`).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) {
        decode_png(bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes)
    } else {
        bail!("not a PNG or JPEG image")
    }
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage> {
    let mut decoder = png::Decoder::new(BufReader::new(Cursor::new(bytes)));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader.next_frame(&mut buf)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => bail!("unexpected indexed output after expansion"),
    };
    Ok(to_rgb(&buf[..w * h * channels], w, h, channels))
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage> {
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    // The decoder is not guaranteed panic-free on hostile input; a panic becomes an error.
    let result = std::panic::catch_unwind(|| {
        let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut dec = zune_jpeg::JpegDecoder::new_with_options(Cursor::new(bytes), opts);
        let pixels = dec.decode().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let info = dec.info().context("JPEG without header")?;
        Ok::<_, anyhow::Error>((pixels, info.width as usize, info.height as usize))
    });
    let (pixels, w, h) = match result {
        Ok(r) => r?,
        Err(_) => bail!("the JPEG decoder failed on this file"),
    };
    if pixels.len() != w * h * 3 {
        bail!("JPEG decoded to {} bytes for {w}×{h} RGB", pixels.len());
    }
    Ok(RgbImage {
        width: w,
        height: h,
        data: pixels,
    })
}

/// Any 8-bit layout with 1–4 channels to RGB, alpha composited onto white.
fn to_rgb(buf: &[u8], w: usize, h: usize, channels: usize) -> RgbImage {
    let mut data = Vec::with_capacity(w * h * 3);
    for px in buf.chunks(channels) {
        let (rgb, a) = match channels {
            1 => ([px[0]; 3], 255),
            2 => ([px[0]; 3], px[1]),
            3 => ([px[0], px[1], px[2]], 255),
            _ => ([px[0], px[1], px[2]], px[3]),
        };
        for c in rgb {
            let v = (c as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255;
            data.push(v as u8);
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

/// Writes an RGB image as PNG, atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    nvg_engine::io::atomic_write(path, |f| {
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(std::io::Error::other)?;
        w.write_image_data(&img.data).map_err(std::io::Error::other)?;
        w.finish().map_err(std::io::Error::other)
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Preprocessing
// ---------------------------------------------------------------------------------------------------

/// OpenCV's `INTER_LANCZOS4` weights for a fractional offset `x` ∈ [0, 1): 8 taps at −3..=4.
fn lanczos4(x: f64) -> [f32; 8] {
    if x < f64::from(f32::EPSILON) {
        return [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    }
    let mut w = [0.0f64; 8];
    for (i, wi) in w.iter_mut().enumerate() {
        let d = x + 3.0 - i as f64; // distance to tap i
        let y = std::f64::consts::PI * d;
        *wi = (y.sin() / y) * ((y / 4.0).sin() / (y / 4.0));
    }
    let sum: f64 = w.iter().sum();
    w.map(|v| (v / sum) as f32)
}

/// For each output coordinate, the first source tap and the 8 weights (OpenCV's pixel-centre mapping
/// `src = (dst + 0.5)·scale − 0.5`; taps outside the image are clamped to the border).
fn resample_plan(src: usize, dst: usize) -> Vec<([usize; 8], [f32; 8])> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let fx = (d as f64 + 0.5) * scale - 0.5;
            let sx = fx.floor();
            let w = lanczos4(fx - sx);
            let idx = std::array::from_fn(|k| (sx as isize + k as isize - 3).clamp(0, src as isize - 1) as usize);
            (idx, w)
        })
        .collect()
}

impl RgbImage {
    /// Resizes to `width × height` with Lanczos-4 (OpenCV `INTER_LANCZOS4`: 8×8 taps, no anti-aliasing
    /// prefilter — what the official preprocessing uses), separably in f32, rounding to 8 bits.
    pub fn resize(&self, width: usize, height: usize) -> RgbImage {
        let (px, py) = (resample_plan(self.width, width), resample_plan(self.height, height));
        // Horizontal pass into f32 rows, then vertical pass.
        let mut tmp = vec![0.0f32; self.height * width * 3];
        for y in 0..self.height {
            for (x, (idx, w)) in px.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for k in 0..8 {
                        acc += w[k] * self.data[(y * self.width + idx[k]) * 3 + c] as f32;
                    }
                    tmp[(y * width + x) * 3 + c] = acc;
                }
            }
        }
        let mut out = RgbImage::new(width, height);
        for (y, (idx, w)) in py.iter().enumerate() {
            for x in 0..width {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for k in 0..8 {
                        acc += w[k] * tmp[(idx[k] * width + x) * 3 + c];
                    }
                    out.data[(y * width + x) * 3 + c] = acc.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }

    /// Resizes so the shorter side is `size` (the longer side scaled to match, rounded).
    pub fn resize_shorter_side(&self, size: usize) -> RgbImage {
        let short = self.width.min(self.height) as f64;
        let scale = size as f64 / short;
        let (w, h) = if self.width <= self.height {
            (size, ((self.height as f64 * scale).round() as usize).max(size))
        } else {
            (((self.width as f64 * scale).round() as usize).max(size), size)
        };
        self.resize(w, h)
    }

    /// The image mirrored left to right (pixel (x, y) moves to (width − 1 − x, y)): the data
    /// augmentation of `nvg tokenize --mirror`.
    pub fn mirrored(&self) -> RgbImage {
        let mut out = RgbImage::new(self.width, self.height);
        for y in 0..self.height {
            for x in 0..self.width {
                out.set(self.width - 1 - x, y, self.pixel(x, y));
            }
        }
        out
    }

    /// The `w × h` window at (x, y).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> RgbImage {
        let mut out = RgbImage::new(w, h);
        for r in 0..h {
            let src = ((y + r) * self.width + x) * 3;
            out.data[r * w * 3..(r + 1) * w * 3].copy_from_slice(&self.data[src..src + w * 3]);
        }
        out
    }
}

/// Where to cut the square crop from the resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// No crop: the whole image resized to `resolution²` (kept as it is when already that size); for
    /// small square datasets such as the emoji demo set.
    Whole,
    Center,
    /// A uniformly random position drawn from `(seed, stream)`.
    Random {
        seed: u64,
        stream: u64,
    },
}

/// The official preprocessing: shorter side to `round(1.125 · resolution)` (Lanczos-4), then a
/// `resolution × resolution` crop (or, with `Crop::Whole`, the whole image resized).
pub fn preprocess(img: &RgbImage, resolution: usize, crop: Crop) -> Result<RgbImage> {
    if img.width == 0 || img.height == 0 {
        bail!("empty image");
    }
    if crop == Crop::Whole {
        return Ok(if img.width == resolution && img.height == resolution {
            img.clone()
        } else {
            img.resize(resolution, resolution)
        });
    }
    let resized = img.resize_shorter_side((1.125 * resolution as f64).round() as usize);
    let (mx, my) = (resized.width - resolution, resized.height - resolution);
    let (x, y) = match crop {
        Crop::Whole | Crop::Center => (mx / 2, my / 2),
        Crop::Random { seed, stream } => {
            let r = RngStream::new(seed, stream);
            let pick =
                |i: u64, m: usize| ((r.sample(Distribution::Uniform, i) as f64 * (m + 1) as f64) as usize).min(m);
            (pick(0, mx), pick(1, my))
        }
    };
    Ok(resized.crop(x, y, resolution, resolution))
}

/// `[3, H, W]` in [−1, 1] (`x / 127.5 − 1`).
pub fn to_tensor(img: &RgbImage) -> Result<Tensor> {
    let (w, h) = (img.width, img.height);
    let mut v = vec![0.0f32; 3 * w * h];
    for (i, px) in img.data.chunks(3).enumerate() {
        for c in 0..3 {
            v[c * w * h + i] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(Tensor::from_vec(v, &[3, h, w])?)
}

/// An image from `[3, H, W]` in [−1, 1]: `uint8(clamp(255·(x + 1)/2, 0, 255))`, truncating like the
/// official conversion.
pub fn from_tensor(t: &Tensor) -> Result<RgbImage> {
    let [c, h, w] = t.dims_n::<3>("from_tensor")?;
    if c != 3 {
        bail!("expected 3 channels, got {c}");
    }
    let v = t.to_f32_vec()?;
    let mut img = RgbImage::new(w, h);
    for i in 0..w * h {
        for ch in 0..3 {
            img.data[i * 3 + ch] = (255.0 * (v[ch * w * h + i] + 1.0) / 2.0).clamp(0.0, 255.0) as u8;
        }
    }
    Ok(img)
}

// ---------------------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------------------

/// A colour for cluster `p` of stage `s`: the hue is `p / 2^s`, so child 2p keeps its parent's hue and
/// 2p + 1 moves half the parent's hue range on, and odd clusters are drawn darker — the structure map
/// reads as a refinement from stage to stage, with the last split always visible.
pub fn cluster_colour(p: usize, s: usize) -> [u8; 3] {
    let hue = p as f64 / (1u64 << s) as f64;
    let (sat, val) = (0.65, if p % 2 == 1 { 0.72 } else { 0.97 });
    let h6 = hue * 6.0;
    let f = h6 - h6.floor();
    let (p_, q, t) = (val * (1.0 - sat), val * (1.0 - sat * f), val * (1.0 - sat * (1.0 - f)));
    let (r, g, b) = match h6.floor() as u32 % 6 {
        0 => (val, t, p_),
        1 => (q, val, p_),
        2 => (p_, val, t),
        3 => (p_, q, val),
        4 => (t, p_, val),
        _ => (val, p_, q),
    };
    [(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8]
}

/// A `side × side` structure map (labels in raster order) scaled up to `size × size`.
pub fn structure_map_image(labels: &[i64], side: usize, stage: usize, size: usize) -> RgbImage {
    let mut img = RgbImage::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let l = (y * side / size) * side + x * side / size;
            img.set(x, y, cluster_colour(labels[l] as usize, stage));
        }
    }
    img
}

/// Tiles in a grid of `cols` columns (rows fill in order), separated by `gap` white pixels.
pub fn tile(images: &[RgbImage], cols: usize, gap: usize) -> RgbImage {
    let (w, h) = (images[0].width, images[0].height);
    let rows = images.len().div_ceil(cols);
    let mut out = RgbImage::new(cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap);
    out.data.fill(255);
    for (i, img) in images.iter().enumerate() {
        let (ox, oy) = ((i % cols) * (w + gap), (i / cols) * (h + gap));
        for y in 0..h.min(img.height) {
            for x in 0..w.min(img.width) {
                out.set(ox + x, oy + y, img.pixel(x, y));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanczos_weights_sum_to_one_and_interpolate_at_integer_offsets() {
        for x in [0.0, 0.25, 0.5, 0.9] {
            let w = lanczos4(x);
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(lanczos4(0.0)[3], 1.0);
    }

    #[test]
    fn resizing_a_flat_image_keeps_it_flat_and_png_round_trips() {
        let mut img = RgbImage::new(40, 30);
        for p in img.data.chunks_mut(3) {
            p.copy_from_slice(&[10, 200, 77]);
        }
        let r = preprocess(&img, 16, Crop::Center).unwrap();
        assert_eq!((r.width, r.height), (16, 16));
        assert!(r.data.chunks(3).all(|p| p == [10, 200, 77]));
        let dir = std::env::temp_dir().join(format!("nvg-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.png");
        write_png(&path, &r).unwrap();
        assert_eq!(read_image(&path).unwrap(), r);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mirroring_moves_each_pixel_across_the_vertical_axis() {
        let mut img = RgbImage::new(3, 2);
        for (i, b) in img.data.iter_mut().enumerate() {
            *b = i as u8;
        }
        let m = img.mirrored();
        assert_eq!((m.width, m.height), (3, 2));
        for y in 0..2 {
            for x in 0..3 {
                assert_eq!(m.pixel(2 - x, y), img.pixel(x, y), "({x}, {y})");
            }
        }
        assert_eq!(m.mirrored(), img);
    }

    #[test]
    fn tensor_conversion_round_trips_bytes() {
        let mut img = RgbImage::new(5, 3);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = (i * 17 % 256) as u8;
        }
        let back = from_tensor(&to_tensor(&img).unwrap()).unwrap();
        // x/127.5 − 1 then 255(x+1)/2 truncated: exact for every byte except rounding below it.
        for (a, b) in img.data.iter().zip(&back.data) {
            assert!(a == b || *a == b + 1, "{a} -> {b}");
        }
    }

    #[test]
    fn the_first_child_keeps_its_parents_colour_and_siblings_differ() {
        assert_eq!(cluster_colour(2, 2), cluster_colour(4, 3));
        assert_ne!(cluster_colour(4, 3), cluster_colour(5, 3));
    }
}

/// Decoded images of one size held in memory as 8-bit RGB (`[N, R, R, 3]`), with a class per image:
/// small datasets (the emoji demo) for tokenizer and classifier training.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub resolution: usize,
    pixels: Vec<u8>,
    pub classes: Vec<usize>,
}

impl ImageSet {
    /// Reads `files` (with their classes), each resized as a whole to `resolution²` (no crop; images
    /// already of that size are kept as they are). Fails on the first unreadable file, naming it.
    pub fn load(files: &[(std::path::PathBuf, usize)], resolution: usize) -> Result<ImageSet> {
        use rayon::prelude::*;
        ensure!(resolution > 0, "resolution must be at least 1");
        let decoded: Vec<Vec<u8>> = files
            .par_iter()
            .map(|(path, _)| {
                let img = read_image(path)?;
                let img = if img.width == resolution && img.height == resolution {
                    img
                } else {
                    img.resize(resolution, resolution)
                };
                Ok(img.data)
            })
            .collect::<Result<_>>()?;
        Ok(ImageSet {
            resolution,
            pixels: decoded.concat(),
            classes: files.iter().map(|(_, c)| *c).collect(),
        })
    }

    /// An image set from raw `[N, R, R, 3]` pixels (tests, synthetic data).
    pub fn from_pixels(resolution: usize, pixels: Vec<u8>, classes: Vec<usize>) -> Result<ImageSet> {
        ensure!(
            pixels.len() == classes.len() * resolution * resolution * 3,
            "{} bytes for {} images of {resolution}²×3",
            pixels.len(),
            classes.len()
        );
        Ok(ImageSet {
            resolution,
            pixels,
            classes,
        })
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Images `ids` as `[B, 3, R, R]` in [−1, 1] (`x / 127.5 − 1`, as `to_tensor`).
    pub fn batch(&self, ids: &[usize]) -> Result<Tensor> {
        let r = self.resolution;
        let plane = r * r;
        let mut v = vec![0.0f32; ids.len() * 3 * plane];
        for (k, &i) in ids.iter().enumerate() {
            ensure!(i < self.len(), "image {i} of a set of {}", self.len());
            let px = &self.pixels[i * 3 * plane..(i + 1) * 3 * plane];
            for (p, rgb) in px.chunks(3).enumerate() {
                for c in 0..3 {
                    v[(k * 3 + c) * plane + p] = rgb[c] as f32 / 127.5 - 1.0;
                }
            }
        }
        Ok(Tensor::from_vec(v, &[ids.len(), 3, r, r])?)
    }
}
