//! The structure flow's time grid (FLUX `get_schedule` with NVG's shift), evaluated in f32 with the same
//! operations as the official code so the times match bit for bit.

use super::schedule::linspace_f32;

/// `steps + 1` times from 1 (noise) to 0 (data): a linear grid shifted toward the noise end,
/// `t' = e^μ / (e^μ + (1/t − 1))` with `μ` interpolated from 0.5 at 256 tokens to 1.15 at 4096.
///
/// PyTorch evaluates `scalar / tensor` as `reciprocal(tensor) · scalar`; this does the same (it differs
/// from a plain division in the last bit for some t).
pub fn flow_timesteps(steps: usize, tokens: usize) -> Vec<f32> {
    let (x1, y1, x2, y2) = (256.0f64, 0.5f64, 4096.0f64, 1.15f64);
    let m = (y2 - y1) / (x2 - x1);
    let mu = m * tokens as f64 + (y1 - m * x1);
    let e = mu.exp() as f32;
    linspace_f32(1.0, 0.0, steps + 1)
        .into_iter()
        .map(|t| (1.0 / (e + (1.0 / t - 1.0))) * e)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::approx_constant)] // 0.5236 is a table value that happens to be close to π/6
    fn twenty_five_steps_match_the_spec_table() {
        // NVG-SPEC §5.1 (4 decimals).
        let want = [
            1.0, 0.9754, 0.9499, 0.9236, 0.8964, 0.8683, 0.8393, 0.8091, 0.7780, 0.7456, 0.7121, 0.6772, 0.6411,
            0.6035, 0.5644, 0.5236, 0.4812, 0.4369, 0.3907, 0.3424, 0.2919, 0.2390, 0.1836, 0.1254, 0.0643, 0.0,
        ];
        let got = flow_timesteps(25, 256);
        assert_eq!(got.len(), 26);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 6e-5, "{got:?}");
        }
    }
}
