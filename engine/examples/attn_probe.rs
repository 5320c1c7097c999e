use nvg_engine::{Tensor, sdpa};
use std::time::Instant;
fn main() {
    let (b, h, n, d) = (2usize, 16usize, 257usize, 64usize);
    let mk = |s: usize| {
        Tensor::from_vec(
            (0..b * h * n * d)
                .map(|i| (((i * 7919 + s) % 1000) as f32) / 500.0 - 1.0)
                .collect::<Vec<f32>>(),
            &[b, h, n, d],
        )
        .unwrap()
    };
    let (q, k, v) = (mk(1), mk(2), mk(3));
    let mut best = f64::MAX;
    for _ in 0..200 {
        let t = Instant::now();
        let _ = sdpa(&q, &k, &v, None, None).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{:.3} ms {:.1} GF/s",
        best * 1e3,
        4.0 * (b * h * n * n * d) as f64 / best / 1e9
    );
}
