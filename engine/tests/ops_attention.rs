//! Integration tests of attention and rotary embeddings on the CPU: `sdpa` (fused, flash-style, with
//! segment ids) against a naive f64 attention that materialises the scores, `rope_tables` against a
//! naive f64 evaluation of the frequencies, and `Tensor::rope` against a naive pair rotation.
//!
//! Tolerances: attention outputs are convex combinations of v (|v| < 1), computed in f32 with an
//! online softmax: `atol 1e-5 + rtol 1e-4` against the f64 reference. bf16 outputs allow their final
//! rounding (relative 2⁻⁸). RoPE tables are computed in f64 and rounded once: `atol 1e-6`.

mod common;

use common::*;
use nvg_engine::cpu::attention::KV_BLOCK;
use nvg_engine::{DType, Tensor, rope_tables, sdpa};

const ATT_ATOL: f64 = 1e-5;
const ATT_RTOL: f64 = 1e-4;

/// Attention by the definition, f64: `softmax(q·kᵀ·scale)·v` per (batch, head) over the keys whose
/// segment id equals the query's. q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]` (any
/// layout; their logical values are read) → `[B, H, Nq, Dv]` row-major.
fn naive_sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, segs: Option<(&[i64], &[i64])>) -> Vec<f64> {
    let [b, h, nq, d] = <[usize; 4]>::try_from(q.dims()).unwrap();
    let nk = k.dims()[2];
    let dv = v.dims()[3];
    let (qv, kv, vv) = (vals(q), vals(k), vals(v));
    let mut out = vec![0.0f64; b * h * nq * dv];
    let mut s = vec![0.0f64; nk];
    for bi in 0..b {
        for hi in 0..h {
            let bh = bi * h + hi;
            for i in 0..nq {
                let qrow = &qv[(bh * nq + i) * d..(bh * nq + i + 1) * d];
                for (j, sj) in s.iter_mut().enumerate() {
                    if let Some((qs, ks)) = segs
                        && qs[bi * nq + i] != ks[bi * nk + j]
                    {
                        *sj = f64::NEG_INFINITY;
                        continue;
                    }
                    let krow = &kv[(bh * nk + j) * d..(bh * nk + j + 1) * d];
                    *sj = qrow.iter().zip(krow).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale;
                }
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                assert!(m > f64::NEG_INFINITY, "test bug: query {i} of batch {bi} sees no key");
                let w: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
                let z: f64 = w.iter().sum();
                let o = &mut out[(bh * nq + i) * dv..(bh * nq + i + 1) * dv];
                for (j, &wj) in w.iter().enumerate() {
                    if wj == 0.0 {
                        continue;
                    }
                    let vrow = &vv[(bh * nk + j) * dv..(bh * nk + j + 1) * dv];
                    for (oe, &ve) in o.iter_mut().zip(vrow) {
                        *oe += wj / z * ve as f64;
                    }
                }
            }
        }
    }
    out
}

/// An i64 `[B, N]` tensor of segment ids.
fn ids(v: &[i64], b: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[b, v.len() / b]).unwrap()
}

/// Segment ids of contiguous segments of the given lengths (ids 0, 1, 2, ...).
fn contiguous_ids(lens: &[usize]) -> Vec<i64> {
    lens.iter()
        .enumerate()
        .flat_map(|(s, &l)| std::iter::repeat_n(s as i64, l))
        .collect()
}

/// q, k, v as independent random packed tensors.
fn qkv(b: usize, h: usize, nq: usize, nk: usize, d: usize, dv: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    (
        rand(&[b, h, nq, d], seed),
        rand(&[b, h, nk, d], seed + 1),
        rand(&[b, h, nk, dv], seed + 2),
    )
}

#[track_caller]
fn check_sdpa(got: &Tensor, want: &[f64], what: &str) {
    assert_close64(&vals(got), want, ATT_ATOL, ATT_RTOL, what);
}

// ---------------------------------------------------------------------------------------------------
// sdpa: values
// ---------------------------------------------------------------------------------------------------

#[test]
fn sdpa_matches_naive_across_sequence_lengths_including_the_key_block_boundary() {
    for (b, h, n) in [
        (2, 3, 1),
        (2, 3, 7),
        (1, 2, 48),
        (2, 2, 49),
        (1, 2, 257),
        (1, 1, 513),
        (1, 2, 600),
        (1, 1, KV_BLOCK),
        (1, 1, KV_BLOCK + 77),
    ] {
        let (q, k, v) = qkv(b, h, n, n, 64, 64, n as u64);
        let got = sdpa(&q, &k, &v, None, None).unwrap();
        assert_eq!(got.dims(), &[b, h, n, 64]);
        check_sdpa(
            &got,
            &naive_sdpa(&q, &k, &v, 1.0 / 8.0, None),
            &format!("B={b} H={h} N={n} D=64"),
        );
    }
}

#[test]
fn sdpa_with_sharp_scores_matches_naive() {
    // Scale 1 on D = 64 gives scores of std ≈ 2.7: a peaked softmax whose running max changes between
    // key blocks, exercising the online rescaling.
    for n in [49, 700, KV_BLOCK + 100] {
        let (q, k, v) = qkv(1, 2, n, n, 64, 64, 70 + n as u64);
        let got = sdpa(&q, &k, &v, Some(1.0), None).unwrap();
        check_sdpa(&got, &naive_sdpa(&q, &k, &v, 1.0, None), &format!("scale 1, N={n}"));
    }
}

#[test]
fn sdpa_with_odd_head_dim_different_value_dim_and_query_count() {
    for (b, h, nq, nk, d, dv) in [
        (1, 2, 37, 530, 40, 24),
        (2, 3, 100, 3, 40, 72),
        (1, 1, 1, 600, 40, 8),
        (2, 1, 49, 49, 7, 5),
        (1, 2, 50, 1, 40, 40),
    ] {
        let (q, k, v) = qkv(b, h, nq, nk, d, dv, (nq * nk) as u64);
        let got = sdpa(&q, &k, &v, None, None).unwrap();
        assert_eq!(got.dims(), &[b, h, nq, dv]);
        let want = naive_sdpa(&q, &k, &v, 1.0 / (d as f64).sqrt(), None);
        check_sdpa(&got, &want, &format!("B={b} H={h} Nq={nq} Nk={nk} D={d} Dv={dv}"));
    }
}

#[test]
fn sdpa_default_scale_is_inverse_sqrt_head_dim_and_explicit_scale_is_used() {
    let (q, k, v) = qkv(1, 2, 30, 41, 40, 16, 5);
    let got = sdpa(&q, &k, &v, None, None).unwrap();
    check_sdpa(
        &got,
        &naive_sdpa(&q, &k, &v, 1.0 / 40f64.sqrt(), None),
        "default scale 1/√40",
    );
    for scale in [0.37f32, 2.0, 0.0] {
        let got = sdpa(&q, &k, &v, Some(scale), None).unwrap();
        check_sdpa(
            &got,
            &naive_sdpa(&q, &k, &v, scale as f64, None),
            &format!("scale {scale}"),
        );
    }
}

#[test]
fn sdpa_reads_heads_of_a_fused_qkv_tensor_in_place() {
    // NVG's layout: one projection [B, N, 3, H, D], split into q, k, v and permuted to [B, H, N, D].
    for (b, n, h, d) in [(2, 49, 3, 64), (1, 513, 2, 40)] {
        let fused = rand(&[b, n, 3, h, d], n as u64);
        let parts: Vec<Tensor> = fused
            .chunk(3, 2)
            .unwrap()
            .iter()
            .map(|t| t.squeeze(2).unwrap().permute(&[0, 2, 1, 3]).unwrap())
            .collect();
        let (q, k, v) = (&parts[0], &parts[1], &parts[2]);
        assert_eq!(q.dims(), &[b, h, n, d]);
        assert!(!q.is_contiguous() && q.shares_storage(&fused));
        let got = sdpa(q, k, v, None, None).unwrap();
        check_sdpa(
            &got,
            &naive_sdpa(q, k, v, 1.0 / (d as f64).sqrt(), None),
            &format!("fused B={b} N={n} H={h} D={d}"),
        );
    }
}

#[test]
fn sdpa_reads_operands_with_non_unit_column_stride() {
    // k and v stored with the sequence innermost ([B, H, D, N] transposed back), q likewise.
    let (b, h, nq, nk, d, dv) = (2, 2, 33, 70, 24, 16);
    let q = rand_strided(&[b, h, nq, d], 1);
    let k = rand_strided(&[b, h, nk, d], 2);
    let v = rand_strided(&[b, h, nk, dv], 3);
    let got = sdpa(&q, &k, &v, Some(0.3), None).unwrap();
    check_sdpa(&got, &naive_sdpa(&q, &k, &v, 0.3, None), "transposed q, k, v");
    // Heads broadcast from one shared k/v (stride 0 over heads).
    let k1 = rand(&[b, 1, nk, d], 4).broadcast_as(&[b, h, nk, d]).unwrap();
    let v1 = rand(&[b, 1, nk, dv], 5).broadcast_as(&[b, h, nk, dv]).unwrap();
    let q = rand(&[b, h, nq, d], 6);
    let got = sdpa(&q, &k1, &v1, None, None).unwrap();
    check_sdpa(
        &got,
        &naive_sdpa(&q, &k1, &v1, 1.0 / (d as f64).sqrt(), None),
        "broadcast k/v heads",
    );
}

#[test]
fn sdpa_output_is_b_h_nq_dv_and_merges_heads_with_a_free_transpose_reshape() {
    let (b, h, nq, nk, d, dv) = (2, 3, 11, 13, 16, 8);
    let (q, k, v) = qkv(b, h, nq, nk, d, dv, 9);
    let out = sdpa(&q, &k, &v, None, None).unwrap();
    assert_eq!(out.dims(), &[b, h, nq, dv]);
    let merged = out.transpose(1, 2).unwrap().reshape(&[b, nq, h * dv]).unwrap();
    assert_eq!(merged.dims(), &[b, nq, h * dv]);
    assert!(
        merged.shares_storage(&out),
        "the head merge should be a view, not a copy"
    );
    // merged[b, n, hh·dv + e] = attention of head hh at query n.
    let want = naive_sdpa(&q, &k, &v, 0.25, None);
    let mut want_merged = vec![0.0f64; want.len()];
    for (i, &w) in want.iter().enumerate() {
        let [bi, hi, ni, e] = <[usize; 4]>::try_from(unravel(i, &[b, h, nq, dv])).unwrap();
        want_merged[ravel(&[bi, ni, hi * dv + e], &[b, nq, h * dv])] = w;
    }
    assert_close64(&vals(&merged), &want_merged, ATT_ATOL, ATT_RTOL, "merged heads");
}

#[test]
fn sdpa_of_bf16_inputs_returns_bf16_close_to_naive() {
    let (q, k, v) = qkv(1, 2, 57, 520, 64, 64, 11);
    let (q, k, v) = (
        q.to_dtype(DType::BF16).unwrap(),
        k.to_dtype(DType::BF16).unwrap(),
        v.to_dtype(DType::BF16).unwrap(),
    );
    let got = sdpa(&q, &k, &v, None, None).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    assert_eq!(got.dims(), &[1, 2, 57, 64]);
    // Reference on the bf16 values themselves; the output is rounded to bf16 once.
    let want = naive_sdpa(&q, &k, &v, 0.125, None);
    assert_close64(&vals(&got), &want, ATT_ATOL, 1.0 / 256.0, "bf16 sdpa");
}

// ---------------------------------------------------------------------------------------------------
// sdpa: segment ids
// ---------------------------------------------------------------------------------------------------

#[test]
fn sdpa_with_contiguous_packed_segments_matches_masked_naive() {
    // Batch 0 packs three sequences, batch 1 two (one of a single token).
    let (b, h, n, d) = (2, 2, 300, 32);
    let (q, k, v) = qkv(b, h, n, n, d, d, 21);
    let mut seg = contiguous_ids(&[100, 57, 143]);
    seg.extend(contiguous_ids(&[1, 299]).iter().map(|s| s + 5));
    let (qs, ks) = (ids(&seg, b), ids(&seg, b));
    let got = sdpa(&q, &k, &v, None, Some((&qs, &ks))).unwrap();
    let want = naive_sdpa(&q, &k, &v, 1.0 / (d as f64).sqrt(), Some((&seg, &seg)));
    check_sdpa(&got, &want, "packed contiguous segments");
}

#[test]
fn sdpa_with_packed_segments_equals_each_segment_run_separately() {
    // Segments spanning several key blocks, so whole key blocks are skipped.
    let (h, d) = (2, 16);
    let lens = [KV_BLOCK + 76, 37, KV_BLOCK - 24];
    let n: usize = lens.iter().sum();
    let (q, k, v) = qkv(1, h, n, n, d, d, 31);
    let seg = contiguous_ids(&lens);
    let (qs, ks) = (ids(&seg, 1), ids(&seg, 1));
    let packed = sdpa(&q, &k, &v, None, Some((&qs, &ks))).unwrap();
    let mut start = 0;
    for &len in &lens {
        let part = |t: &Tensor| t.narrow(2, start, len).unwrap();
        let (qp, kp, vp) = (part(&q), part(&k), part(&v));
        let alone = sdpa(&qp, &kp, &vp, None, None).unwrap();
        let packed_part = part(&packed);
        let want = naive_sdpa(&qp, &kp, &vp, 0.25, None);
        check_sdpa(&alone, &want, &format!("segment at {start} (len {len}) alone"));
        check_sdpa(&packed_part, &want, &format!("segment at {start} (len {len}) packed"));
        assert_close(
            &vals(&packed_part),
            &vals(&alone),
            1e-5,
            1e-4,
            &format!("packed vs alone at {start}"),
        );
        start += len;
    }
}

#[test]
fn sdpa_with_interleaved_segment_ids_matches_masked_naive() {
    // Non-contiguous ids (a pattern and a pseudo-random one), Nq ≠ Nk, keys crossing a key block.
    let (b, h, nq, nk, d, dv) = (2, 2, 77, KV_BLOCK + 88, 40, 24);
    let (q, k, v) = qkv(b, h, nq, nk, d, dv, 41);
    let mut qseg: Vec<i64> = (0..nq).map(|i| (i % 3) as i64).collect();
    qseg.extend((0..nq).map(|i| ((i * 7 + i / 5) % 4) as i64));
    let mut kseg: Vec<i64> = (0..nk).map(|j| ((j / 7) % 3) as i64).collect();
    kseg.extend(values(nk, 3).iter().map(|&x| ((x + 1.0) * 2.0).floor().min(3.0) as i64));
    for s in 0..4 {
        assert!(kseg[nk..].contains(&s), "test bug: segment {s} has no key");
    }
    let (qs, ks) = (ids(&qseg, b), ids(&kseg, b));
    let got = sdpa(&q, &k, &v, Some(0.2), Some((&qs, &ks))).unwrap();
    check_sdpa(
        &got,
        &naive_sdpa(&q, &k, &v, 0.2, Some((&qseg, &kseg))),
        "interleaved segments",
    );
    // u8 ids are integers too.
    let to_u8 = |t: &Tensor| t.to_dtype(DType::U8).unwrap();
    let got = sdpa(&q, &k, &v, Some(0.2), Some((&to_u8(&qs), &to_u8(&ks)))).unwrap();
    check_sdpa(
        &got,
        &naive_sdpa(&q, &k, &v, 0.2, Some((&qseg, &kseg))),
        "interleaved u8 segments",
    );
}

#[test]
fn sdpa_segments_with_strided_fused_inputs_match_masked_naive() {
    let (b, n, h, d) = (1, 130, 2, 64);
    let fused = rand(&[b, n, 3, h, d], 51);
    let parts: Vec<Tensor> = fused
        .split(2, &[1, 1, 1])
        .unwrap()
        .iter()
        .map(|t| t.squeeze(2).unwrap().permute(&[0, 2, 1, 3]).unwrap())
        .collect();
    let seg: Vec<i64> = (0..n).map(|i| (i * i % 5) as i64).collect();
    let s = ids(&seg, b);
    let got = sdpa(&parts[0], &parts[1], &parts[2], None, Some((&s, &s))).unwrap();
    let want = naive_sdpa(&parts[0], &parts[1], &parts[2], 0.125, Some((&seg, &seg)));
    check_sdpa(&got, &want, "fused inputs with segments");
}

// ---------------------------------------------------------------------------------------------------
// sdpa: errors
// ---------------------------------------------------------------------------------------------------

#[test]
fn sdpa_mismatched_k_v_shapes_are_an_error_naming_the_shapes() {
    let q = rand(&[1, 2, 5, 8], 1);
    let m = err_msg(sdpa(&q, &rand(&[1, 2, 6, 8], 2), &rand(&[1, 2, 7, 8], 3), None, None));
    assert!(
        m.contains("sdpa") && m.contains("[1, 2, 6, 8]") && m.contains("[1, 2, 7, 8]"),
        "{m}"
    );
    // k head dim differs from q's.
    let m = err_msg(sdpa(&q, &rand(&[1, 2, 6, 4], 2), &rand(&[1, 2, 6, 8], 3), None, None));
    assert!(
        m.contains("sdpa") && m.contains("[1, 2, 5, 8]") && m.contains("[1, 2, 6, 4]"),
        "{m}"
    );
    // Head count differs.
    let m = err_msg(sdpa(&q, &rand(&[1, 3, 6, 8], 2), &rand(&[1, 3, 6, 8], 3), None, None));
    assert!(m.contains("sdpa") && m.contains("[1, 3, 6, 8]"), "{m}");
    // Not 4-d.
    let m = err_msg(sdpa(
        &rand(&[2, 5, 8], 1),
        &rand(&[2, 5, 8], 2),
        &rand(&[2, 5, 8], 3),
        None,
        None,
    ));
    assert!(m.contains("sdpa") && m.contains("[2, 5, 8]"), "{m}");
}

#[test]
fn sdpa_wrong_segment_id_shapes_are_an_error_naming_the_shapes() {
    let (q, k, v) = qkv(2, 1, 5, 6, 8, 8, 1);
    let good_q = ids(&[0; 10], 2);
    let good_k = ids(&[0; 12], 2);
    let m = err_msg(sdpa(&q, &k, &v, None, Some((&ids(&[0; 8], 2), &good_k))));
    assert!(
        m.contains("sdpa") && m.contains("[2, 5]") && m.contains("[2, 4]"),
        "{m}"
    );
    let m = err_msg(sdpa(&q, &k, &v, None, Some((&good_q, &ids(&[0; 10], 2)))));
    assert!(
        m.contains("sdpa") && m.contains("[2, 6]") && m.contains("[2, 5]"),
        "{m}"
    );
    let flat = Tensor::from_vec(vec![0i64; 10], &[10]).unwrap();
    let m = err_msg(sdpa(&q, &k, &v, None, Some((&flat, &good_k))));
    assert!(m.contains("sdpa") && m.contains("[10]"), "{m}");
}

#[test]
fn sdpa_float_segment_ids_or_integer_inputs_are_a_dtype_error() {
    let (q, k, v) = qkv(1, 1, 5, 5, 8, 8, 1);
    let fseg = Tensor::zeros(&[1, 5], DType::F32, nvg_engine::Device::Cpu).unwrap();
    let iseg = ids(&[0; 5], 1);
    let m = err_msg(sdpa(&q, &k, &v, None, Some((&fseg, &iseg))));
    assert!(m.contains("sdpa") && m.contains("f32") && m.contains("segment"), "{m}");
    let m = err_msg(sdpa(&q, &k, &v, None, Some((&iseg, &fseg))));
    assert!(m.contains("sdpa") && m.contains("f32") && m.contains("segment"), "{m}");
    let qi = Tensor::from_vec(vec![1i64; 40], &[1, 1, 5, 8]).unwrap();
    let m = err_msg(sdpa(&qi, &k, &v, None, None));
    assert!(m.contains("sdpa") && m.contains("i64"), "{m}");
}

#[test]
fn sdpa_over_zero_keys_is_an_error() {
    let (q, k, v) = qkv(1, 1, 3, 0, 8, 8, 1);
    let m = err_msg(sdpa(&q, &k, &v, None, None));
    assert!(m.contains("sdpa"), "{m}");
}

// ---------------------------------------------------------------------------------------------------
// rope_tables
// ---------------------------------------------------------------------------------------------------

/// NVG's rotary axes: token type, 8 structure bits, row, column.
const NVG_AXES: [usize; 11] = [8, 2, 2, 2, 2, 2, 2, 2, 2, 20, 20];
const NVG_THETA: f32 = 10000.0;

/// NVG position rows for one image: token 0 (all ones), then `rows × cols` image tokens
/// `[0, bits(code)..., row, col]` (8 bits of `code + token index`, most significant first).
fn nvg_positions(rows: usize, cols: usize, code: usize) -> Vec<f32> {
    let mut p = vec![1.0f32; 11];
    for r in 0..rows {
        for c in 0..cols {
            let bits = (code + r * cols + c) & 0xff;
            p.push(0.0);
            p.extend((0..8).rev().map(|i| ((bits >> i) & 1) as f32));
            p.push(r as f32);
            p.push(c as f32);
        }
    }
    p
}

/// cos and sin by the definition: pair j of axis a (width w) turns by `pos[a]·θ^(−2j/w)`.
fn naive_rope_tables(pos: &[f32], axes: &[usize], theta: f64) -> (Vec<f64>, Vec<f64>) {
    let a_n = axes.len();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for t in 0..pos.len() / a_n {
        for (a, &w) in axes.iter().enumerate() {
            for j in 0..w / 2 {
                let freq = theta.powf(-(2.0 * j as f64) / w as f64);
                let ang = pos[t * a_n + a] as f64 * freq;
                cos.push(ang.cos());
                sin.push(ang.sin());
            }
        }
    }
    (cos, sin)
}

#[test]
fn rope_tables_match_naive_for_nvg_positions() {
    let (rows, cols) = (6, 7);
    let n = 1 + rows * cols;
    let mut pos = nvg_positions(rows, cols, 0);
    pos.extend(nvg_positions(rows, cols, 0x5a));
    let positions = Tensor::from_vec(pos.clone(), &[2, n, 11]).unwrap();
    let (cos, sin) = rope_tables(&positions, &NVG_AXES, NVG_THETA).unwrap();
    let pairs = NVG_AXES.iter().sum::<usize>() / 2;
    assert_eq!(pairs, 32);
    assert_eq!(cos.dims(), &[2, n, pairs]);
    assert_eq!(sin.dims(), &[2, n, pairs]);
    let (wc, ws) = naive_rope_tables(&pos, &NVG_AXES, NVG_THETA as f64);
    assert_close64(&vals(&cos), &wc, 1e-6, 0.0, "cos");
    assert_close64(&vals(&sin), &ws, 1e-6, 0.0, "sin");
    // Token 0 (all positions 1): the first pair of every axis turns by exactly 1 radian.
    let c = vals(&cos);
    for first_pair in [0, 4, 5, 12] {
        assert!((c[first_pair] as f64 - 1f64.cos()).abs() < 1e-6, "pair {first_pair}");
    }
}

#[test]
fn rope_tables_accept_unbatched_and_large_positions() {
    let axes = [4, 6, 2];
    let pos: Vec<f32> = (0..3 * 25).map(|i| (i * 37 % 1001) as f32 - 300.0).collect();
    let positions = Tensor::from_vec(pos.clone(), &[25, 3]).unwrap();
    let (cos, sin) = rope_tables(&positions, &axes, 500.0).unwrap();
    assert_eq!(cos.dims(), &[25, 6]);
    let (wc, ws) = naive_rope_tables(&pos, &axes, 500.0);
    assert_close64(&vals(&cos), &wc, 1e-6, 0.0, "cos");
    assert_close64(&vals(&sin), &ws, 1e-6, 0.0, "sin");
    // Positions given as a strided view.
    let strided = Tensor::from_vec(pos.clone(), &[3, 25])
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    let want: Vec<f32> = (0..75).map(|i| pos[(i % 3) * 25 + i / 3]).collect();
    let (cos, _) = rope_tables(&strided, &axes, 500.0).unwrap();
    let (wc, _) = naive_rope_tables(&want, &axes, 500.0);
    assert_close64(&vals(&cos), &wc, 1e-6, 0.0, "cos of strided positions");
}

#[test]
fn rope_tables_positions_not_matching_axes_are_an_error_naming_the_shape() {
    let pos = Tensor::zeros(&[5, 10], DType::F32, nvg_engine::Device::Cpu).unwrap();
    let m = err_msg(rope_tables(&pos, &NVG_AXES, NVG_THETA));
    assert!(
        m.contains("rope_tables") && m.contains("[5, 10]") && m.contains("11"),
        "{m}"
    );
}

#[test]
fn rope_tables_odd_axis_width_is_an_error_naming_it() {
    let pos = Tensor::zeros(&[5, 2], DType::F32, nvg_engine::Device::Cpu).unwrap();
    let m = err_msg(rope_tables(&pos, &[8, 3], NVG_THETA));
    assert!(m.contains("rope_tables") && m.contains('3') && m.contains("odd"), "{m}");
}

// ---------------------------------------------------------------------------------------------------
// Tensor::rope
// ---------------------------------------------------------------------------------------------------

/// Pair p = dims (2p, 2p+1) of x `[B, H, N, D]` turned by (cos, sin) of token n: tables `[B, N, D/2]`
/// or, when `shared`, `[N, D/2]`.
fn naive_rope(x: &Tensor, cos: &[f32], sin: &[f32], shared: bool) -> Vec<f64> {
    let [b, h, n, d] = <[usize; 4]>::try_from(x.dims()).unwrap();
    let xv = vals(x);
    let half = d / 2;
    let mut out = vec![0.0f64; xv.len()];
    for bi in 0..b {
        for hi in 0..h {
            for ni in 0..n {
                let row = ((bi * h + hi) * n + ni) * d;
                let t = if shared { ni } else { bi * n + ni } * half;
                for p in 0..half {
                    let (c, s) = (cos[t + p] as f64, sin[t + p] as f64);
                    let (x0, x1) = (xv[row + 2 * p] as f64, xv[row + 2 * p + 1] as f64);
                    out[row + 2 * p] = c * x0 - s * x1;
                    out[row + 2 * p + 1] = s * x0 + c * x1;
                }
            }
        }
    }
    out
}

#[test]
fn rope_with_per_batch_tables_matches_naive_rotation() {
    // Arbitrary (not unit-norm) tables, so a swapped cos/sin or sign shows.
    let (b, h, n, d) = (2, 3, 10, 64);
    let x = rand(&[b, h, n, d], 1);
    let cos = rand(&[b, n, d / 2], 2);
    let sin = rand(&[b, n, d / 2], 3);
    let got = x.rope(&cos, &sin).unwrap();
    assert_eq!(got.dims(), &[b, h, n, d]);
    assert!(got.is_contiguous());
    assert_close64(
        &vals(&got),
        &naive_rope(&x, &vals(&cos), &vals(&sin), false),
        1e-6,
        1e-6,
        "per-batch tables",
    );
}

#[test]
fn rope_with_a_shared_table_broadcasts_over_the_batch() {
    let (b, h, n, d) = (3, 2, 7, 8);
    let x = rand(&[b, h, n, d], 4);
    let cos = rand(&[n, d / 2], 5);
    let sin = rand(&[n, d / 2], 6);
    let got = x.rope(&cos, &sin).unwrap();
    assert_close64(
        &vals(&got),
        &naive_rope(&x, &vals(&cos), &vals(&sin), true),
        1e-6,
        1e-6,
        "shared tables",
    );
    // Strided tables are read by value.
    let (cs, ss) = (rand_strided(&[n, d / 2], 5), rand_strided(&[n, d / 2], 6));
    let got = x.rope(&cs, &ss).unwrap();
    assert_close64(
        &vals(&got),
        &naive_rope(&x, &vals(&cos), &vals(&sin), true),
        1e-6,
        1e-6,
        "strided tables",
    );
}

#[test]
fn rope_reads_strided_inputs() {
    // q of a fused [B, N, 3, H, D] projection, permuted to [B, H, N, D]; large enough to go parallel.
    let (b, n, h, d) = (2, 300, 3, 64);
    let fused = rand(&[b, n, 3, h, d], 7);
    let q = fused
        .narrow(2, 0, 1)
        .unwrap()
        .squeeze(2)
        .unwrap()
        .permute(&[0, 2, 1, 3])
        .unwrap();
    assert!(!q.is_contiguous());
    let cos = rand(&[b, n, d / 2], 8);
    let sin = rand(&[b, n, d / 2], 9);
    let got = q.rope(&cos, &sin).unwrap();
    assert_close64(
        &vals(&got),
        &naive_rope(&q, &vals(&cos), &vals(&sin), false),
        1e-6,
        1e-6,
        "fused q",
    );
    // Head dim stored non-contiguously.
    let xs = rand_strided(&[1, 2, 12, 10], 10);
    let (c, s) = (rand(&[12, 5], 11), rand(&[12, 5], 12));
    let got = xs.rope(&c, &s).unwrap();
    assert_close64(
        &vals(&got),
        &naive_rope(&xs, &vals(&c), &vals(&s), true),
        1e-6,
        1e-6,
        "transposed x",
    );
}

#[test]
fn rope_with_nvg_tables_rotates_by_position_angles() {
    // End to end: NVG positions → tables → rotation, against angles computed here.
    let (rows, cols, h) = (4, 5, 2);
    let n = 1 + rows * cols;
    let pos = nvg_positions(rows, cols, 3);
    let positions = Tensor::from_vec(pos.clone(), &[1, n, 11]).unwrap();
    let (cos, sin) = rope_tables(&positions, &NVG_AXES, NVG_THETA).unwrap();
    let x = rand(&[1, h, n, 64], 13);
    let got = x.rope(&cos, &sin).unwrap();
    let (wc, ws) = naive_rope_tables(&pos, &NVG_AXES, NVG_THETA as f64);
    let (wc, ws): (Vec<f32>, Vec<f32>) = (
        wc.iter().map(|&c| c as f32).collect(),
        ws.iter().map(|&s| s as f32).collect(),
    );
    let want = naive_rope(&x, &wc, &ws, false);
    assert_close64(&vals(&got), &want, 2e-6, 1e-6, "NVG rope");
    // A rotation keeps the norm of every pair.
    let (xv, gv) = (vals(&x), vals(&got));
    for p in 0..xv.len() / 2 {
        let before = (xv[2 * p] as f64).hypot(xv[2 * p + 1] as f64);
        let after = (gv[2 * p] as f64).hypot(gv[2 * p + 1] as f64);
        assert!((before - after).abs() < 1e-5, "pair {p}: norm {before} → {after}");
    }
}

#[test]
fn rope_of_bf16_input_returns_bf16() {
    let x = rand(&[1, 2, 6, 16], 14).to_dtype(DType::BF16).unwrap();
    let (c, s) = (rand(&[6, 8], 15), rand(&[6, 8], 16));
    let got = x.rope(&c, &s).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    assert_close64(
        &vals(&got),
        &naive_rope(&x, &vals(&c), &vals(&s), true),
        1e-6,
        1.0 / 256.0,
        "bf16 rope",
    );
}

#[test]
fn rope_odd_head_dim_is_an_error_naming_the_shape() {
    let x = rand(&[1, 1, 4, 5], 1);
    let m = err_msg(x.rope(&rand(&[4, 2], 2), &rand(&[4, 2], 3)));
    assert!(
        m.contains("rope") && m.contains("[1, 1, 4, 5]") && m.contains("odd"),
        "{m}"
    );
}

#[test]
fn rope_wrong_table_shape_is_an_error_naming_the_shapes() {
    let x = rand(&[2, 1, 4, 8], 1);
    let m = err_msg(x.rope(&rand(&[4, 3], 2), &rand(&[4, 3], 3)));
    assert!(
        m.contains("rope") && m.contains("[4, 3]") && m.contains("[2, 1, 4, 8]"),
        "{m}"
    );
    // Batch of the table differs from the input's.
    let m = err_msg(x.rope(&rand(&[3, 4, 4], 2), &rand(&[3, 4, 4], 3)));
    assert!(m.contains("rope") && m.contains("[3, 4, 4]"), "{m}");
    // cos and sin of different (each acceptable) shapes.
    let m = err_msg(x.rope(&rand(&[4, 4], 2), &rand(&[2, 4, 4], 3)));
    assert!(
        m.contains("rope") && m.contains("[4, 4]") && m.contains("[2, 4, 4]"),
        "{m}"
    );
    // Input not 4-d.
    let m = err_msg(rand(&[4, 8], 1).rope(&rand(&[4, 4], 2), &rand(&[4, 4], 3)));
    assert!(m.contains("rope") && m.contains("[4, 8]"), "{m}");
}

#[test]
fn sdpa_of_a_batch_equals_each_element_alone_bit_for_bit() {
    let (b, h, n, d) = (3, 2, 257, 64);
    let (q, k, v) = qkv(b, h, n, n, d, d, 77);
    let all = vals(&sdpa(&q, &k, &v, None, None).unwrap());
    for i in 0..b {
        let one = |t: &Tensor| t.narrow(0, i, 1).unwrap();
        let alone = vals(&sdpa(&one(&q), &one(&k), &one(&v), None, None).unwrap());
        let per = h * n * d;
        assert!(alone == all[i * per..(i + 1) * per], "batch element {i}");
    }
}
