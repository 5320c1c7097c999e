//! Integration tests of `sample_categorical` (temperature, top-k, top-p, multinomial draw) and of the
//! counter-based random tensors. The draw is checked against a naive reference: the filtered
//! distribution is written out from its definition (softmax of logits / T, the k largest, the smallest
//! nucleus of mass > p), and a sweep of uniforms over [0, 1) must pick each category exactly as often
//! as its cumulative-probability interval is wide.

use nvg_engine::rng::{Distribution, RngStream};
use nvg_engine::{CategoricalSampling, Device, Tensor};

fn sampling(temperature: f32, top_k: usize, top_p: f32) -> CategoricalSampling {
    CategoricalSampling {
        temperature,
        top_k,
        top_p,
    }
}

/// The filtered distribution by definition: probabilities (f64) of softmax(x / T) restricted to the
/// categories that survive top-k (ties with the k-th survive) and top-p (the most likely categories
/// until their mass exceeds p), renormalised. Written independently of the engine: sorting by value
/// with an explicit index tie-break.
fn naive_distribution(x: &[f32], s: CategoricalSampling) -> Vec<f64> {
    let t = s.temperature.max(1e-5);
    let l: Vec<f32> = x.iter().map(|v| v / t).collect();
    let mut ranked: Vec<usize> = (0..l.len()).collect();
    ranked.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap().then(a.cmp(&b)));
    let mut keep = vec![true; l.len()];
    if s.top_k > 0 && s.top_k < l.len() {
        let kth = l[ranked[s.top_k - 1]];
        for i in 0..l.len() {
            keep[i] = l[i] >= kth;
        }
    }
    if s.top_p < 1.0 {
        let m = l[ranked[0]] as f64;
        let w: Vec<f64> = ranked
            .iter()
            .map(|&i| if keep[i] { (l[i] as f64 - m).exp() } else { 0.0 })
            .collect();
        let z: f64 = w.iter().sum();
        let mut mass = 0.0;
        for (r, &i) in ranked.iter().enumerate() {
            if r > 0 && mass > s.top_p as f64 {
                keep[i] = false;
            }
            mass += w[r] / z;
        }
    }
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = (0..l.len())
        .map(|i| if keep[i] { (l[i] as f64 - m).exp() } else { 0.0 })
        .collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|v| v / z).collect()
}

/// Deterministic logits in about [-3, 3].
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
        })
        .collect()
}

/// Draws one row with each of `n` evenly spaced uniforms and returns how often each category came up.
fn sweep(x: &[f32], s: CategoricalSampling, n: usize) -> Vec<usize> {
    let rows = Tensor::from_vec(x.repeat(n), &[n, x.len()]).unwrap();
    let u: Vec<f32> = (0..n).map(|j| (j as f32 + 0.5) / n as f32).collect();
    let ids = rows
        .sample_categorical(s, &Tensor::from_vec(u, &[n]).unwrap())
        .unwrap()
        .to_i64_vec()
        .unwrap();
    let mut counts = vec![0; x.len()];
    for id in ids {
        counts[id as usize] += 1;
    }
    counts
}

#[test]
fn draws_follow_the_filtered_distribution() {
    let n = 20_000;
    for (seed, s) in [
        (1, sampling(1.0, 0, 1.0)),
        (2, sampling(0.7, 0, 1.0)),
        (3, sampling(1.3, 5, 1.0)),
        (4, sampling(1.0, 0, 0.6)),
        (5, sampling(0.9, 8, 0.8)),
        (6, sampling(2.0, 3, 0.3)),
    ] {
        let x = logits(17, seed);
        let want = naive_distribution(&x, s);
        let counts = sweep(&x, s, n);
        for (i, (&c, &p)) in counts.iter().zip(&want).enumerate() {
            // Evenly spaced uniforms: the count is the interval width times n, give or take one.
            let expected = p * n as f64;
            assert!(
                (c as f64 - expected).abs() <= 1.0 + 1e-9 * n as f64,
                "{s:?} category {i}: drawn {c} times, expected {expected:.2} (p = {p:.5})"
            );
            if p == 0.0 {
                assert_eq!(c, 0, "{s:?}: filtered-out category {i} was drawn");
            }
        }
    }
}

#[test]
fn draws_pick_by_the_cumulative_distribution_in_index_order() {
    let s = sampling(1.0, 0, 1.0);
    let two = Tensor::from_vec(vec![0.0f32, 0.0, 0.0, 0.0], &[2, 2]).unwrap();
    let u = Tensor::from_vec(vec![0.25f32, 0.75], &[2]).unwrap();
    assert_eq!(two.sample_categorical(s, &u).unwrap().to_i64_vec().unwrap(), vec![0, 1]);
}

#[test]
fn greedy_takes_the_first_maximum_and_ignores_the_uniform() {
    let x = Tensor::from_vec(vec![0.1f32, 3.0, 3.0, -1.0], &[1, 4]).unwrap();
    for u in [0.0f32, 0.5, 0.999] {
        let ids = x
            .sample_categorical(sampling(1.0, 1, 1.0), &Tensor::from_vec(vec![u], &[1]).unwrap())
            .unwrap();
        assert_eq!(ids.to_i64_vec().unwrap(), vec![1]);
    }
}

#[test]
fn top_k_keeps_ties_with_the_kth_value() {
    // k = 2 with a tie for second place: three categories survive, in equal thirds of [0, 1) after the
    // first one's larger share.
    let x = [2.0f32, 1.0, 1.0, 0.5, -4.0];
    let s = sampling(1.0, 2, 1.0);
    let p = naive_distribution(&x, s);
    assert!(p[1] > 0.0 && p[2] > 0.0 && p[3] == 0.0 && p[4] == 0.0);
    let counts = sweep(&x, s, 1000);
    assert_eq!(counts[3] + counts[4], 0);
    assert!(counts[1] > 0 && counts[2] > 0);
}

#[test]
fn top_p_always_keeps_the_most_likely_category() {
    let x = [4.0f32, 3.0, 2.0, 1.0, 0.0];
    // p(first) ≈ 0.64 > 0.5: only it survives.
    assert_eq!(sweep(&x, sampling(1.0, 0, 0.5), 100)[0], 100);
    // Even a tiny p keeps one category.
    assert_eq!(sweep(&x, sampling(1.0, 0, 1e-6), 100)[0], 100);
}

#[test]
fn leading_dimensions_are_kept_and_bad_arguments_are_errors() {
    let x = Tensor::from_vec(logits(2 * 3 * 7, 9), &[2, 3, 7]).unwrap();
    let u = Tensor::random(&[2, 3], Distribution::Uniform, RngStream::new(1, 2), 0).unwrap();
    let ids = x.sample_categorical(sampling(1.0, 0, 1.0), &u).unwrap();
    assert_eq!(ids.dims(), &[2, 3]);
    assert!(ids.to_i64_vec().unwrap().iter().all(|&i| (0..7).contains(&i)));

    let msg = |r: nvg_engine::Result<Tensor>| r.unwrap_err().to_string();
    let wrong_u = Tensor::from_vec(vec![0.5f32; 5], &[5]).unwrap();
    let e = msg(x.sample_categorical(sampling(1.0, 0, 1.0), &wrong_u));
    assert!(e.contains("sample_categorical") && e.contains("uniforms"), "{e}");
    let e = msg(x.sample_categorical(sampling(1.0, 0, 0.0), &u));
    assert!(e.contains("top_p"), "{e}");
    let e = msg(x.sample_categorical(sampling(f32::NAN, 0, 1.0), &u));
    assert!(e.contains("temperature"), "{e}");
    let empty = Tensor::from_vec(Vec::<f32>::new(), &[2, 0]).unwrap();
    let e = msg(empty.sample_categorical(sampling(1.0, 0, 1.0), &Tensor::from_vec(vec![0.5f32; 2], &[2]).unwrap()));
    assert!(e.contains("no categories"), "{e}");
    let ints = Tensor::from_vec(vec![1i64, 2], &[1, 2]).unwrap();
    let e = msg(ints.sample_categorical(sampling(1.0, 0, 1.0), &Tensor::from_vec(vec![0.5f32], &[1]).unwrap()));
    assert!(e.contains("float"), "{e}");
}

#[test]
fn random_tensors_are_a_function_of_stream_and_offset() {
    let rng = RngStream::new(42, 7);
    let whole = Tensor::random(&[10], Distribution::Normal, rng, 100)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    let tail = Tensor::random(&[4], Distribution::Normal, rng, 106)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    assert_eq!(&whole[6..], &tail[..]);
    for (i, v) in whole.iter().enumerate() {
        assert_eq!(*v, rng.sample(Distribution::Normal, 100 + i as u64));
    }
    let cpu = Tensor::random_on(&[3], Distribution::Uniform, rng, 0, Device::Cpu).unwrap();
    assert_eq!(cpu.device(), Device::Cpu);
    assert_eq!(
        cpu.to_f32_vec().unwrap(),
        Tensor::random(&[3], Distribution::Uniform, rng, 0)
            .unwrap()
            .to_f32_vec()
            .unwrap()
    );
}
