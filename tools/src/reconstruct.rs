//! `nvg reconstruct`: encode → quantise → decode one image; with `--stages`, the picture that explains
//! NVG — the image decoded after every stage, above that stage's structure map.

use anyhow::{Context, Result};
use nvg::image::{
    Crop, RgbImage, from_tensor, preprocess, read_image, structure_map_image, tile, to_tensor, write_png,
};
use nvg::tokenizer::Tokenizer;
use nvg_engine::Tensor;
use std::path::Path;

/// PSNR in dB of two images of the same size.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse: f64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Reconstructs `image` (preprocessed to `resolution`² by `crop`) with the tokenizer and writes a PNG to
/// `out`; returns a one-line summary.
pub fn reconstruct(
    tokenizer: &Path,
    image: &Path,
    out: &Path,
    stages: bool,
    resolution: usize,
    crop: Crop,
) -> Result<String> {
    let tok = Tokenizer::load_for_resolution(tokenizer, resolution)
        .with_context(|| format!("--resolution {}", resolution))?;
    let input = preprocess(&read_image(image)?, resolution, crop)?;
    let x = to_tensor(&input)?.unsqueeze(0)?;
    let features = tok.encode(&x)?;
    let tokens = tok.tokenize(&features)?;
    let q = &tokens.quantized;
    let recon = from_tensor(&tok.decode(&q.latent)?.squeeze(0)?)?;
    let quality = psnr(&input, &recon);
    if !stages {
        write_png(out, &recon)?;
        // The encoder's features decoded as they are: what the autoencoder loses, apart from quantising.
        let unquantised = from_tensor(&tok.decode(&tok.token_major(&features)?)?.squeeze(0)?)?;
        return Ok(format!(
            "wrote {} ({resolution}×{resolution}, PSNR {quality:.2} dB against the preprocessed input; {:.2} dB without quantisation)",
            out.display(),
            psnr(&input, &unquantised)
        ));
    }
    // The latent after stage s is the canvas stage s+1 starts from; after the last stage, the final latent.
    let grid = tok.grid();
    let n = grid.stages();
    let mut latents = Vec::with_capacity(n);
    for s in 1..n {
        latents.push(q.canvases.narrow(1, s, 1)?.squeeze(1)?);
    }
    latents.push(q.latent.clone());
    let refs: Vec<&Tensor> = latents.iter().collect();
    let decoded = tok.decode(&Tensor::cat(&refs, 0)?)?;
    let mut tiles = Vec::with_capacity(2 * n);
    for s in 0..n {
        tiles.push(from_tensor(&decoded.narrow(0, s, 1)?.squeeze(0)?)?);
    }
    for s in 0..n {
        tiles.push(structure_map_image(&tokens.labels[0][s], grid.side(), s, resolution));
    }
    write_png(out, &tile(&tiles, n, 2))?;
    Ok(format!(
        "wrote {}: the image after each of the {n} stages above its structure map (final PSNR {quality:.2} dB)",
        out.display()
    ))
}
