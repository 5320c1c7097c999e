use nvg_engine::cpu::gemm::{Strided, matmul};
use nvg_engine::cpu::simd::isa;
use std::time::Instant;
fn main() {
    for &(m, k, n) in &[(514usize, 1024usize, 7168usize), (514, 5120, 1024), (1026, 512, 3584)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let mut best = f64::MAX;
        for _ in 0..8 {
            let t = Instant::now();
            matmul(
                isa(),
                Strided::row_major(&a, m, k),
                Strided::row_major(&w, n, k).t(),
                &mut c,
                n,
                false,
            );
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{m}x{k}x{n}: {:.1} GF/s", 2.0 * (m * k * n) as f64 / best / 1e9);
    }
}
