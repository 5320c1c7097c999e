//! Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//!
//! A value is a pure function of (seed, stream, offset): element `i` of a draw at `offset` uses the
//! Philox block at counter `(offset + i, stream)` keyed by `seed`. Results therefore do not depend on
//! the thread count, on how the work is chunked, on the batch an image lands in, or on the device
//! (the CUDA kernels use the same function). Transforms are computed in f64 and rounded once, so the
//! CPU and GPU agree bit for bit.

use crate::error::Result;
use crate::{Device, Tensor};
use rayon::prelude::*;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: 4 random words from a 128-bit counter and a 64-bit key.
pub fn philox4x32_10(key: [u32; 2], ctr: [u32; 4]) -> [u32; 4] {
    let (mut k, mut c) = (key, ctr);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// Which random-number distribution to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Uniform on [0, 1), 24-bit resolution.
    Uniform,
    /// Standard normal (Box–Muller on two 24-bit uniforms, cosine branch).
    Normal,
    /// Standard Gumbel, −ln(−ln u) with u in (0, 1).
    Gumbel,
}

/// A random stream: a seed and a stream id (e.g. the purpose and the image index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RngStream {
    pub seed: u64,
    pub stream: u64,
}

const TWO_M24: f64 = 1.0 / (1u64 << 24) as f64;

impl RngStream {
    pub fn new(seed: u64, stream: u64) -> Self {
        RngStream { seed, stream }
    }

    /// The stream of a named tensor's initial values: the stream id is the FNV-1a hash of `name`, so
    /// every tensor has its own stream and adding a tensor does not change the others.
    pub fn for_name(seed: u64, name: &str) -> Self {
        let stream = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        RngStream::new(seed, stream)
    }

    /// The 4 words at counter `index`.
    pub fn words(&self, index: u64) -> [u32; 4] {
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let ctr = [
            index as u32,
            (index >> 32) as u32,
            self.stream as u32,
            (self.stream >> 32) as u32,
        ];
        philox4x32_10(key, ctr)
    }

    /// The value of element `index` of `dist`.
    pub fn sample(&self, dist: Distribution, index: u64) -> f32 {
        let w = self.words(index);
        match dist {
            Distribution::Uniform => ((w[0] >> 8) as f64 * TWO_M24) as f32,
            Distribution::Normal => {
                let u1 = ((w[0] >> 8) as f64 + 1.0) * TWO_M24; // (0, 1]
                let u2 = (w[1] >> 8) as f64 * TWO_M24; // [0, 1)
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            }
            Distribution::Gumbel => {
                let u = ((w[0] >> 8) as f64 + 0.5) * TWO_M24; // (0, 1)
                (-(-u.ln()).ln()) as f32
            }
        }
    }

    /// Fills `out[i]` with element `offset + i`; parallel for long outputs (same values either way).
    pub fn fill(&self, dist: Distribution, offset: u64, out: &mut [f32]) {
        const CHUNK: usize = 4096;
        let work = |(c, chunk): (usize, &mut [f32])| {
            let base = offset + (c * CHUNK) as u64;
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = self.sample(dist, base + i as u64);
            }
        };
        if out.len() > 4 * CHUNK {
            out.par_chunks_mut(CHUNK).enumerate().for_each(work);
        } else {
            out.chunks_mut(CHUNK).enumerate().for_each(work);
        }
    }
}

impl Tensor {
    /// An f32 tensor of shape `dims` whose row-major element `i` is element `offset + i` of `rng`.
    pub fn random(dims: &[usize], dist: Distribution, rng: RngStream, offset: u64) -> Result<Tensor> {
        let mut v = vec![0.0f32; dims.iter().product()];
        rng.fill(dist, offset, &mut v);
        Tensor::from_vec(v, dims)
    }

    /// [`Tensor::random`] drawn on `device` (on a GPU by the Philox kernel: the same values, see
    /// `kernels/cuda/random.cu`).
    pub fn random_on(
        dims: &[usize],
        dist: Distribution,
        rng: RngStream,
        offset: u64,
        device: Device,
    ) -> Result<Tensor> {
        if device.is_cpu() {
            return Tensor::random(dims, dist, rng, offset);
        }
        crate::cuda::check_device("random", device)?;
        crate::cuda::sample::random(device, dims, dist, rng, offset)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_named_stream_is_keyed_by_the_fnv1a_hash_of_the_name() {
        // FNV-1a 64 test vectors: "" and "a".
        assert_eq!(RngStream::for_name(7, "").stream, 0xcbf2_9ce4_8422_2325);
        assert_eq!(RngStream::for_name(7, "a"), RngStream::new(7, 0xaf63_dc4c_8601_ec8c));
    }

    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answers() {
        // Known-answer vectors of Random123 (kat_vectors, philox4x32_10).
        assert_eq!(
            philox4x32_10([0, 0], [0, 0, 0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([0xffffffff, 0xffffffff], [0xffffffff; 4]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0xa4093822, 0x299f31d0],
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }
}
