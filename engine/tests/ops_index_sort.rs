//! Integration tests of the indexing and ordering ops: embedding, index_select, gather, scatter_add,
//! segment_mean, argsort and topk. Every result is checked against a naive reference written with plain
//! loops over multi-indices (no engine code involved); error cases must be `Err`, never a panic, with a
//! message that names the op and the offending value or shape.

mod common;

use common::{assert_close, assert_close64, err_msg, rand, rand_strided, ravel, unravel, vals, values};
use nvg_engine::{DType, Tensor};

// -------------------------------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------------------------------

/// Deterministic indices in `0..bound` (an LCG independent of the engine).
fn ids_in(n: usize, bound: usize, seed: u64) -> Vec<i64> {
    let mut s = seed.wrapping_mul(2862933555777941757).wrapping_add(3037000493);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % bound as u64) as i64
        })
        .collect()
}

fn i64_tensor(v: Vec<i64>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(v, dims).unwrap()
}

/// The same values as `t` in a non-contiguous layout (stored transposed in the last two dims, viewed
/// back). Works for any dtype; requires rank >= 2.
fn strided(t: &Tensor) -> Tensor {
    let v = t
        .transpose(-1, -2)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(-1, -2)
        .unwrap();
    assert_eq!(v.dims(), t.dims());
    v
}

/// Equal as f32 values, treating NaN as equal to NaN.
fn same(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

#[track_caller]
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(same(g, w), "{what}: element {i}: got {g}, want {w}");
    }
}

/// Naive gather: `out[p] = src[p with coordinate dim replaced by index[p]]`.
fn gather_ref<T: Copy>(src: &[T], src_dims: &[usize], index: &[i64], index_dims: &[usize], dim: usize) -> Vec<T> {
    (0..index.len())
        .map(|p| {
            let mut c = unravel(p, index_dims);
            c[dim] = index[p] as usize;
            src[ravel(&c, src_dims)]
        })
        .collect()
}

/// Naive scatter-add in f64 (row-major order over `index`).
fn scatter_add_ref(
    base: &[f64],
    dims: &[usize],
    index: &[i64],
    index_dims: &[usize],
    src: &[f64],
    dim: usize,
) -> Vec<f64> {
    let mut out = base.to_vec();
    for p in 0..index.len() {
        let mut c = unravel(p, index_dims);
        c[dim] = index[p] as usize;
        out[ravel(&c, dims)] += src[p];
    }
    out
}

/// Naive index_select: `out[c] = src[c with coordinate dim replaced by ids[c[dim]]]`.
fn index_select_ref<T: Copy>(src: &[T], dims: &[usize], dim: usize, ids: &[i64]) -> (Vec<T>, Vec<usize>) {
    let mut out_dims = dims.to_vec();
    out_dims[dim] = ids.len();
    let n: usize = out_dims.iter().product();
    let out = (0..n)
        .map(|p| {
            let mut c = unravel(p, &out_dims);
            c[dim] = ids[c[dim]] as usize;
            src[ravel(&c, dims)]
        })
        .collect();
    (out, out_dims)
}

/// Total order of the sort ops: NaN is larger than every number and equal to NaN.
fn less(a: f32, b: f32) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (_, true) => !a.is_nan(),
        (true, false) => false,
        _ => a < b,
    }
}
fn equal(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

/// Stable sort order of one lane computed by ranks (O(n²), independent of any sort routine): the rank of
/// element i is the number of elements that must come before it, ties broken by index in both directions.
fn order_ref(lane: &[f32], descending: bool) -> Vec<i64> {
    let n = lane.len();
    let mut out = vec![-1i64; n];
    for i in 0..n {
        let mut rank = 0;
        for j in 0..n {
            let before = if descending {
                less(lane[i], lane[j])
            } else {
                less(lane[j], lane[i])
            };
            if before || (j < i && equal(lane[j], lane[i])) {
                rank += 1;
            }
        }
        assert_eq!(out[rank], -1, "reference ranks must be a permutation");
        out[rank] = i as i64;
    }
    out
}

/// Reference argsort along `dim` of a row-major tensor given as f32 values.
fn argsort_ref(x: &[f32], dims: &[usize], dim: usize, descending: bool) -> Vec<i64> {
    let mut out = vec![0i64; x.len()];
    for p in 0..x.len() {
        let c = unravel(p, dims);
        if c[dim] != 0 {
            continue;
        }
        let lane_pos: Vec<usize> = (0..dims[dim])
            .map(|r| {
                let mut cc = c.clone();
                cc[dim] = r;
                ravel(&cc, dims)
            })
            .collect();
        let lane: Vec<f32> = lane_pos.iter().map(|&q| x[q]).collect();
        for (r, &src) in order_ref(&lane, descending).iter().enumerate() {
            out[lane_pos[r]] = src;
        }
    }
    out
}

/// Reference topk along `dim`: the first k entries of the descending stable order.
fn topk_ref(x: &[f32], dims: &[usize], dim: usize, k: usize) -> (Vec<f32>, Vec<i64>, Vec<usize>) {
    let order = argsort_ref(x, dims, dim, true);
    let mut out_dims = dims.to_vec();
    out_dims[dim] = k;
    let n: usize = out_dims.iter().product();
    let mut vals_out = Vec::with_capacity(n);
    let mut idx_out = Vec::with_capacity(n);
    for p in 0..n {
        let c = unravel(p, &out_dims);
        let i = order[ravel(&c, dims)];
        let mut src = c.clone();
        src[dim] = i as usize;
        idx_out.push(i);
        vals_out.push(x[ravel(&src, dims)]);
    }
    (vals_out, idx_out, out_dims)
}

// -------------------------------------------------------------------------------------------------
// embedding
// -------------------------------------------------------------------------------------------------

fn embedding_ref(table: &[f32], width: usize, ids: &[i64]) -> Vec<f32> {
    let mut out = Vec::new();
    for &i in ids {
        for j in 0..width {
            out.push(table[i as usize * width + j]);
        }
    }
    out
}

#[test]
fn embedding_looks_up_rows_for_ids_of_any_shape() {
    let (v, d) = (11, 5);
    let table = rand(&[v, d], 1);
    let tv = vals(&table);
    for (k, ids_dims) in [vec![], vec![1], vec![7], vec![2, 3], vec![2, 3, 4], vec![0], vec![3, 0]]
        .iter()
        .enumerate()
    {
        let n: usize = ids_dims.iter().product();
        let ids = ids_in(n, v, 10 + k as u64);
        let out = table.embedding(&i64_tensor(ids.clone(), ids_dims)).unwrap();
        let mut want_dims = ids_dims.clone();
        want_dims.push(d);
        assert_eq!(out.dims(), &want_dims[..], "ids shape {ids_dims:?}");
        assert_eq!(out.dtype(), DType::F32);
        assert_eq!(vals(&out), embedding_ref(&tv, d, &ids), "ids shape {ids_dims:?}");
    }
}

#[test]
fn embedding_handles_strided_table_and_ids_repeated_ids_and_bf16() {
    let (v, d) = (6, 4);
    let table = rand_strided(&[v, d], 2);
    assert!(!table.is_contiguous());
    let tv = vals(&table);
    // Ids stored transposed: a non-contiguous [3, 4] view; values read row-major.
    let stored = i64_tensor(vec![0, 5, 5, 1, 2, 2, 3, 0, 4, 4, 1, 5], &[4, 3]);
    let ids = stored.transpose(0, 1).unwrap();
    assert!(!ids.is_contiguous());
    let idv = ids.to_vec::<i64>().unwrap();
    let out = table.embedding(&ids).unwrap();
    assert_eq!(out.dims(), &[3, 4, d]);
    assert_eq!(vals(&out), embedding_ref(&tv, d, &idv));

    let tb = table.to_dtype(DType::BF16).unwrap();
    let out = tb.embedding(&ids).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    assert_eq!(vals(&out), embedding_ref(&vals(&tb), d, &idv));
}

#[test]
fn embedding_rejects_bad_ids_and_tables_with_errors() {
    let table = rand(&[5, 3], 3);
    let m = err_msg(table.embedding(&i64_tensor(vec![0, 4, 7], &[3])));
    assert!(m.contains("embedding") && m.contains('7') && m.contains("0..5"), "{m}");
    let m = err_msg(table.embedding(&i64_tensor(vec![1, -1], &[2])));
    assert!(m.contains("embedding") && m.contains("-1"), "{m}");
    let m = err_msg(table.embedding(&Tensor::from_vec(vec![0.0f32, 1.0], &[2]).unwrap()));
    assert!(m.contains("embedding") && m.contains("f32"), "{m}");
    let m = err_msg(rand(&[2, 3, 4], 4).embedding(&i64_tensor(vec![0], &[1])));
    assert!(m.contains("embedding") && m.contains("[2, 3, 4]"), "{m}");
}

// -------------------------------------------------------------------------------------------------
// index_select
// -------------------------------------------------------------------------------------------------

#[test]
fn index_select_matches_naive_along_every_dim_for_float_dtypes() {
    let dims = [3usize, 4, 5];
    let base = rand(&dims, 5);
    for dt in common::FLOAT_DTYPES {
        for contiguous in [true, false] {
            let x = base.to_dtype(dt).unwrap();
            let x = if contiguous { x } else { strided(&x) };
            let xv = vals(&x);
            for dim in 0..3 {
                for (k, n) in [0usize, 1, 3, 8].into_iter().enumerate() {
                    let ids = ids_in(n, dims[dim], 100 + k as u64);
                    let out = x.index_select(dim as isize, &i64_tensor(ids.clone(), &[n])).unwrap();
                    let (want, want_dims) = index_select_ref(&xv, &dims, dim, &ids);
                    assert_eq!(out.dims(), &want_dims[..]);
                    assert_eq!(out.dtype(), dt);
                    assert_eq!(vals(&out), want, "{dt} dim {dim} ids {ids:?} contiguous {contiguous}");
                }
            }
        }
    }
}

#[test]
fn index_select_works_on_i64_and_u8_and_negative_dims() {
    let dims = [2usize, 5, 3];
    let data: Vec<i64> = (0..30).map(|i| i * 1_000_000_007 - 5).collect();
    let x = strided(&i64_tensor(data.clone(), &dims));
    let ids = vec![4i64, 0, 0, 2];
    let out = x.index_select(-2, &i64_tensor(ids.clone(), &[4])).unwrap();
    let (want, want_dims) = index_select_ref(&data, &dims, 1, &ids);
    assert_eq!(out.dims(), &want_dims[..]);
    assert_eq!(out.to_vec::<i64>().unwrap(), want);

    let bytes: Vec<u8> = (0..30).map(|i| (i * 8) as u8).collect();
    let x = Tensor::from_vec(bytes.clone(), &dims).unwrap();
    // u8 ids are accepted as integer ids too.
    let ids_u8 = Tensor::from_vec(vec![2u8, 1], &[2]).unwrap();
    let out = x.index_select(-1, &ids_u8).unwrap();
    let (want, _) = index_select_ref(&bytes, &dims, 2, &[2, 1]);
    assert_eq!(out.dtype(), DType::U8);
    assert_eq!(out.to_vec::<u8>().unwrap(), want);
}

#[test]
fn index_select_errors_name_the_op_the_index_and_the_shape() {
    let x = rand(&[3, 4], 6);
    let m = err_msg(x.index_select(1, &i64_tensor(vec![0, 4], &[2])));
    assert!(
        m.contains("index_select") && m.contains('4') && m.contains("[3, 4]") && m.contains("position 1"),
        "{m}"
    );
    let m = err_msg(x.index_select(0, &i64_tensor(vec![-2], &[1])));
    assert!(m.contains("index_select") && m.contains("-2"), "{m}");
    let m = err_msg(x.index_select(0, &i64_tensor(vec![0, 1], &[1, 2])));
    assert!(m.contains("index_select") && m.contains("[1, 2]"), "{m}");
    let m = err_msg(x.index_select(2, &i64_tensor(vec![0], &[1])));
    assert!(m.contains("index_select") && m.contains("[3, 4]"), "{m}");
    let m = err_msg(x.index_select(0, &rand(&[2], 7)));
    assert!(m.contains("index_select") && m.contains("f32"), "{m}");
}

// -------------------------------------------------------------------------------------------------
// gather / scatter_add
// -------------------------------------------------------------------------------------------------

/// For a source of shape `dims` and gather dim `dim`: an index shape that is smaller than the source
/// outside `dim` (and larger along it).
fn smaller_index_dims(dims: &[usize], dim: usize) -> Vec<usize> {
    dims.iter()
        .enumerate()
        .map(|(a, &s)| if a == dim { s + 3 } else { s - 1 })
        .collect()
}

#[test]
fn gather_f32_matches_naive_along_dims_0_1_and_last_with_a_smaller_index() {
    let dims = [4usize, 5, 6];
    for contiguous in [true, false] {
        let x = if contiguous {
            rand(&dims, 8)
        } else {
            rand_strided(&dims, 8)
        };
        let xv = vals(&x);
        for dim in [0usize, 1, 2] {
            for idx_dims in [smaller_index_dims(&dims, dim), dims.to_vec(), vec![1, 1, 1]] {
                let n: usize = idx_dims.iter().product();
                let idx = ids_in(n, dims[dim], 20 + dim as u64);
                let index = i64_tensor(idx.clone(), &idx_dims);
                let index = if contiguous { index } else { strided(&index) };
                let out = x.gather(dim as isize, &index).unwrap();
                assert_eq!(out.dims(), &idx_dims[..]);
                assert_eq!(out.dtype(), DType::F32);
                assert_eq!(
                    vals(&out),
                    gather_ref(&xv, &dims, &idx, &idx_dims, dim),
                    "dim {dim} index {idx_dims:?}"
                );
            }
        }
        // dim -1 is the last dim.
        let idx_dims = smaller_index_dims(&dims, 2);
        let idx = ids_in(idx_dims.iter().product(), dims[2], 30);
        let out = x.gather(-1, &i64_tensor(idx.clone(), &idx_dims)).unwrap();
        assert_eq!(vals(&out), gather_ref(&xv, &dims, &idx, &idx_dims, 2));
    }
}

#[test]
fn gather_i64_and_bf16_match_naive() {
    let dims = [3usize, 4, 5];
    let data: Vec<i64> = (0..60).map(|i| (i * 7919) ^ (1 << 40)).collect();
    let x = i64_tensor(data.clone(), &dims);
    for dim in [0usize, 1, 2] {
        let idx_dims = smaller_index_dims(&dims, dim);
        let idx = ids_in(idx_dims.iter().product(), dims[dim], 40 + dim as u64);
        let out = x.gather(dim as isize, &i64_tensor(idx.clone(), &idx_dims)).unwrap();
        assert_eq!(out.dtype(), DType::I64);
        assert_eq!(
            out.to_vec::<i64>().unwrap(),
            gather_ref(&data, &dims, &idx, &idx_dims, dim)
        );
    }
    let xb = rand(&dims, 9).to_dtype(DType::BF16).unwrap();
    let idx_dims = smaller_index_dims(&dims, 1);
    let idx = ids_in(idx_dims.iter().product(), dims[1], 50);
    let out = xb.gather(1, &i64_tensor(idx.clone(), &idx_dims)).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    assert_eq!(vals(&out), gather_ref(&vals(&xb), &dims, &idx, &idx_dims, 1));
}

#[test]
fn gather_errors_name_the_op_and_the_shapes() {
    let x = rand(&[3, 4], 10);
    let m = err_msg(x.gather(1, &i64_tensor(vec![0, 1, 4, 2], &[2, 2])));
    assert!(
        m.contains("gather") && m.contains('4') && m.contains("0..4") && m.contains("position 2"),
        "{m}"
    );
    let m = err_msg(x.gather(0, &i64_tensor(vec![-1], &[1, 1])));
    assert!(m.contains("gather") && m.contains("-1"), "{m}");
    // Index larger than the source outside the gather dim.
    let m = err_msg(x.gather(0, &i64_tensor(vec![0; 5], &[1, 5])));
    assert!(
        m.contains("gather") && m.contains("[1, 5]") && m.contains("[3, 4]"),
        "{m}"
    );
    // Rank mismatch.
    let m = err_msg(x.gather(0, &i64_tensor(vec![0; 2], &[2])));
    assert!(m.contains("gather") && m.contains("[2]") && m.contains("[3, 4]"), "{m}");
    let m = err_msg(x.gather(0, &rand(&[1, 1], 11)));
    assert!(m.contains("gather") && m.contains("f32"), "{m}");
    let m = err_msg(x.gather(2, &i64_tensor(vec![0], &[1, 1])));
    assert!(m.contains("gather") && m.contains("[3, 4]"), "{m}");
}

#[test]
fn scatter_add_f32_matches_naive_with_duplicate_indices_along_dims_0_1_and_last() {
    let dims = [4usize, 5, 6];
    for contiguous in [true, false] {
        let base = if contiguous {
            rand(&dims, 12)
        } else {
            rand_strided(&dims, 12)
        };
        let bv: Vec<f64> = vals(&base).iter().map(|&v| v as f64).collect();
        for dim in [0usize, 1, 2] {
            // Larger than the target along `dim`, so indices repeat and accumulate.
            let idx_dims = smaller_index_dims(&dims, dim);
            let n: usize = idx_dims.iter().product();
            let idx = ids_in(n, dims[dim], 60 + dim as u64);
            let src = rand(&idx_dims, 70 + dim as u64);
            let sv: Vec<f64> = vals(&src).iter().map(|&v| v as f64).collect();
            let index = i64_tensor(idx.clone(), &idx_dims);
            let (index, src) = if contiguous {
                (index, src)
            } else {
                (strided(&index), strided(&src))
            };
            let out = base.scatter_add(dim as isize, &index, &src).unwrap();
            assert_eq!(out.dims(), &dims);
            assert_eq!(out.dtype(), DType::F32);
            let want = scatter_add_ref(&bv, &dims, &idx, &idx_dims, &sv, dim);
            assert_close64(&vals(&out), &want, 1e-5, 1e-5, &format!("scatter_add dim {dim}"));
        }
    }
    // The input is not modified.
    let base = rand(&dims, 13);
    let before = vals(&base);
    let _ = base
        .scatter_add(-1, &i64_tensor(vec![0; 120], &[4, 5, 6]), &rand(&dims, 14))
        .unwrap();
    assert_eq!(vals(&base), before);
}

#[test]
fn scatter_add_i64_is_exact() {
    let dims = [3usize, 4, 5];
    let base: Vec<i64> = (0..60).map(|i| i * 1_000_003 - (1 << 33)).collect();
    let x = i64_tensor(base.clone(), &dims);
    for dim in [0usize, 1, 2] {
        let idx_dims = smaller_index_dims(&dims, dim);
        let n: usize = idx_dims.iter().product();
        let idx = ids_in(n, dims[dim], 80 + dim as u64);
        let src: Vec<i64> = (0..n as i64).map(|i| (i - 7) * (1 << 35) + i).collect();
        let out = x
            .scatter_add(
                dim as isize,
                &i64_tensor(idx.clone(), &idx_dims),
                &i64_tensor(src.clone(), &idx_dims),
            )
            .unwrap();
        let mut want = base.clone();
        for p in 0..n {
            let mut c = unravel(p, &idx_dims);
            c[dim] = idx[p] as usize;
            want[ravel(&c, &dims)] += src[p];
        }
        assert_eq!(out.dtype(), DType::I64);
        assert_eq!(out.to_vec::<i64>().unwrap(), want, "dim {dim}");
    }
}

#[test]
fn scatter_add_errors_name_the_op_and_the_shapes() {
    let x = rand(&[3, 4], 15);
    let idx = i64_tensor(vec![0, 1, 2, 3], &[2, 2]);
    let m = err_msg(x.scatter_add(0, &idx, &rand(&[2, 2], 16)));
    assert!(
        m.contains("scatter_add") && m.contains('3') && m.contains("0..3"),
        "{m}"
    );
    let m = err_msg(x.scatter_add(1, &idx, &rand(&[2, 3], 16)));
    assert!(
        m.contains("scatter_add") && m.contains("[2, 2]") && m.contains("[2, 3]"),
        "{m}"
    );
    let m = err_msg(x.scatter_add(1, &idx, &i64_tensor(vec![1; 4], &[2, 2])));
    assert!(
        m.contains("scatter_add") && m.contains("i64") && m.contains("f32"),
        "{m}"
    );
    let m = err_msg(x.scatter_add(1, &rand(&[2, 2], 17), &rand(&[2, 2], 16)));
    assert!(m.contains("scatter_add") && m.contains("f32"), "{m}");
    let m = err_msg(x.scatter_add(0, &i64_tensor(vec![0; 5], &[1, 5]), &rand(&[1, 5], 18)));
    assert!(
        m.contains("scatter_add") && m.contains("[1, 5]") && m.contains("[3, 4]"),
        "{m}"
    );
}

// -------------------------------------------------------------------------------------------------
// segment_mean
// -------------------------------------------------------------------------------------------------

/// Naive segment mean in f64 over `[batch, n, c]` rows.
fn segment_mean_ref(x: &[f32], labels: &[i64], batch: usize, n: usize, c: usize, segs: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; batch * segs * c];
    for b in 0..batch {
        for s in 0..segs {
            let mut count = 0usize;
            let mut sum = vec![0.0f64; c];
            for t in 0..n {
                if labels[b * n + t] == s as i64 {
                    count += 1;
                    for j in 0..c {
                        sum[j] += x[(b * n + t) * c + j] as f64;
                    }
                }
            }
            for j in 0..c {
                out[(b * segs + s) * c + j] = if count == 0 { 0.0 } else { sum[j] / count as f64 };
            }
        }
    }
    out
}

#[test]
fn segment_mean_matches_naive_with_batched_leading_dims_and_an_empty_segment_gives_zeros() {
    let (n, c, segs) = (10usize, 4usize, 6usize);
    let x = rand(&[2, 3, n, c], 20);
    // Labels in 0..5 only: segment 5 is empty everywhere; segment 4 is made empty in batch row 0.
    let mut labels = ids_in(2 * 3 * n, 5, 21);
    for l in labels[..n].iter_mut() {
        if *l == 4 {
            *l = 0;
        }
    }
    let lab = i64_tensor(labels.clone(), &[2, 3, n]);
    let out = x.segment_mean(&lab, segs).unwrap();
    assert_eq!(out.dims(), &[2, 3, segs, c]);
    assert_eq!(out.dtype(), DType::F32);
    let got = vals(&out);
    assert_close64(
        &got,
        &segment_mean_ref(&vals(&x), &labels, 6, n, c, segs),
        1e-6,
        1e-5,
        "segment_mean",
    );
    for b in 0..6 {
        assert!(
            got[(b * segs + 5) * c..(b * segs + 6) * c].iter().all(|&v| v == 0.0),
            "empty segment 5, batch {b}"
        );
    }
    assert!(
        got[4 * c..5 * c].iter().all(|&v| v == 0.0),
        "empty segment 4 of batch row 0"
    );
}

#[test]
fn segment_mean_nvg_case_256_tokens_in_power_of_two_equal_clusters() {
    let (batch, n, c) = (2usize, 256usize, 8usize);
    // Strided values, as a stage residual computed from a transposed activation would be.
    let x = rand_strided(&[batch, n, c], 22);
    let xv = vals(&x);
    for s in 0..=8u32 {
        let segs = 1usize << s;
        // Equal-size clusters scattered over the tokens: a fixed permutation of token positions, with
        // cluster id = rank mod 2^s, so every cluster holds exactly 256 / 2^s tokens.
        let mut labels = vec![0i64; batch * n];
        for b in 0..batch {
            for t in 0..n {
                let rank = (t * 97 + 13 * b + 5) % n; // 97 is odd: a permutation of 0..256
                labels[b * n + t] = (rank % segs) as i64;
            }
            for seg in 0..segs as i64 {
                assert_eq!(
                    labels[b * n..(b + 1) * n].iter().filter(|&&l| l == seg).count(),
                    n / segs
                );
            }
        }
        let out = x.segment_mean(&i64_tensor(labels.clone(), &[batch, n]), segs).unwrap();
        assert_eq!(out.dims(), &[batch, segs, c]);
        let want = segment_mean_ref(&xv, &labels, batch, n, c, segs);
        assert_close64(&vals(&out), &want, 1e-6, 1e-5, &format!("2^{s} clusters"));
    }
    // One cluster: the mean over all tokens; 256 clusters: the tokens themselves, reordered.
    let one = x.segment_mean(&i64_tensor(vec![0; batch * n], &[batch, n]), 1).unwrap();
    assert_close(
        &vals(&one),
        &vals(&x.mean(1, true).unwrap()),
        1e-6,
        1e-5,
        "one cluster = mean",
    );
    let ident: Vec<i64> = (0..batch * n).map(|i| (i % n) as i64).collect();
    let all = x.segment_mean(&i64_tensor(ident, &[batch, n]), n).unwrap();
    assert_eq!(vals(&all), xv, "256 singleton clusters reproduce the tokens exactly");
}

#[test]
fn segment_mean_keeps_bf16_and_accepts_u8_labels() {
    let x = rand(&[5, 3], 23).to_dtype(DType::BF16).unwrap();
    let labels = Tensor::from_vec(vec![1u8, 0, 1, 2, 1], &[5]).unwrap();
    let out = x.segment_mean(&labels, 3).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let want = segment_mean_ref(&vals(&x), &[1, 0, 1, 2, 1], 1, 5, 3, 3);
    // Output rounded to bf16: relative 2^-8.
    assert_close64(&vals(&out), &want, 1e-6, 1.0 / 256.0, "bf16 segment_mean");
}

#[test]
fn segment_mean_errors_name_the_op_and_the_shapes() {
    let x = rand(&[2, 4, 3], 24);
    let m = err_msg(x.segment_mean(&i64_tensor(vec![0; 4], &[4]), 2));
    assert!(
        m.contains("segment_mean") && m.contains("[4]") && m.contains("[2, 4, 3]"),
        "{m}"
    );
    let m = err_msg(x.segment_mean(&i64_tensor(vec![0, 1, 0, 1, 0, 2, 1, 0], &[2, 4]), 2));
    assert!(
        m.contains("segment_mean") && m.contains("label 2") && m.contains("0..2"),
        "{m}"
    );
    let m = err_msg(x.segment_mean(&i64_tensor(vec![0, -1, 0, 1, 0, 1, 1, 0], &[2, 4]), 2));
    assert!(m.contains("segment_mean") && m.contains("-1"), "{m}");
    let m = err_msg(x.segment_mean(&rand(&[2, 4], 25), 2));
    assert!(m.contains("segment_mean") && m.contains("f32"), "{m}");
    let m = err_msg(rand(&[4], 26).segment_mean(&i64_tensor(vec![], &[0]), 2));
    assert!(m.contains("segment_mean") && m.contains("[4]"), "{m}");
}

// -------------------------------------------------------------------------------------------------
// argsort
// -------------------------------------------------------------------------------------------------

#[test]
fn argsort_small_known_cases_with_ties_and_nan() {
    let x = Tensor::from_vec(vec![3.0f32, 1.0, 2.0, 1.0, f32::NAN, 3.0, -0.0, 0.0], &[8]).unwrap();
    let asc = x.argsort(0, false).unwrap();
    assert_eq!(asc.dtype(), DType::I64);
    // Ties keep index order (1 before 3, 0 before 5, -0.0 (6) before 0.0 (7)); NaN last.
    assert_eq!(asc.to_vec::<i64>().unwrap(), vec![6, 7, 1, 3, 2, 0, 5, 4]);
    let desc = x.argsort(0, true).unwrap();
    // Descending: NaN first, ties STILL in index order (0 before 5, 1 before 3, 6 before 7).
    assert_eq!(desc.to_vec::<i64>().unwrap(), vec![4, 0, 5, 2, 1, 3, 6, 7]);
}

#[test]
fn argsort_is_stable_in_both_directions_on_heavily_tied_data() {
    // Few distinct levels plus NaNs: almost every comparison is a tie.
    let n = 64;
    let mut v: Vec<f32> = ids_in(n, 4, 30).iter().map(|&i| i as f32 - 1.5).collect();
    for i in [3, 17, 40, 41] {
        v[i] = f32::NAN;
    }
    let x = Tensor::from_vec(v.clone(), &[n]).unwrap();
    for desc in [false, true] {
        let got = x.argsort(-1, desc).unwrap().to_vec::<i64>().unwrap();
        assert_eq!(got, order_ref(&v, desc), "descending {desc}");
        // Stability spelled out: within a run of equal values the indices increase.
        for w in got.windows(2) {
            let (a, b) = (v[w[0] as usize], v[w[1] as usize]);
            if equal(a, b) {
                assert!(w[0] < w[1], "descending {desc}: tie {a} at {} before {}", w[0], w[1]);
            }
        }
    }
}

#[test]
fn argsort_along_a_middle_dim_matches_naive_for_f32_bf16_and_strided_input() {
    let dims = [3usize, 7, 4];
    let mut v = values(84, 31);
    for (i, x) in v.iter_mut().enumerate() {
        *x = (*x * 3.0).round(); // ties
        if i % 13 == 5 {
            *x = f32::NAN;
        }
    }
    let x = Tensor::from_vec(v.clone(), &dims).unwrap();
    for t in [x.clone(), strided(&x), x.to_dtype(DType::BF16).unwrap()] {
        let tv = vals(&t);
        for desc in [false, true] {
            for dim in [1isize, -2] {
                let got = t.argsort(dim, desc).unwrap();
                assert_eq!(got.dims(), &dims);
                assert_eq!(
                    got.to_vec::<i64>().unwrap(),
                    argsort_ref(&tv, &dims, 1, desc),
                    "desc {desc} dim {dim}"
                );
            }
        }
        for desc in [false, true] {
            for dim in [0usize, 2] {
                let got = t.argsort(dim as isize, desc).unwrap().to_vec::<i64>().unwrap();
                assert_eq!(got, argsort_ref(&tv, &dims, dim, desc), "desc {desc} dim {dim}");
            }
        }
    }
}

#[test]
fn argsort_of_i64_compares_exactly_beyond_f32_precision() {
    // 2^24 and 2^24 + 1 are equal as f32; an i64 sort must still order them.
    let big = 1i64 << 24;
    let data = vec![big + 1, big, -3, big + 1, i64::MAX, i64::MIN, big, 0];
    let x = i64_tensor(data.clone(), &[2, 4]);
    let asc = x.argsort(1, false).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(asc, vec![2, 1, 0, 3, 1, 3, 2, 0]);
    let desc = x.argsort(1, true).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(desc, vec![0, 3, 1, 2, 0, 2, 3, 1]);
    // Along dim 0 (the outer dim), ties keep index order.
    let y = i64_tensor(vec![5, 5, 5, 1, 5, 9], &[3, 2]);
    assert_eq!(
        y.argsort(0, true).unwrap().to_vec::<i64>().unwrap(),
        vec![0, 2, 1, 0, 2, 1]
    );
    assert_eq!(
        y.argsort(0, false).unwrap().to_vec::<i64>().unwrap(),
        vec![0, 1, 1, 0, 2, 2]
    );
}

#[test]
fn argsort_rejects_a_bad_dim_with_an_error() {
    let m = err_msg(rand(&[2, 3], 32).argsort(2, false));
    assert!(m.contains("argsort") && m.contains("[2, 3]"), "{m}");
    let m = err_msg(rand(&[2, 3], 32).argsort(-3, true));
    assert!(m.contains("argsort") && m.contains("-3"), "{m}");
}

// -------------------------------------------------------------------------------------------------
// topk
// -------------------------------------------------------------------------------------------------

#[test]
fn topk_gives_largest_first_ties_to_the_lower_index_and_nan_as_largest() {
    let x = Tensor::from_vec(vec![1.0f32, 5.0, 3.0, 5.0, f32::NAN, -2.0, 3.0], &[7]).unwrap();
    let (v, i) = x.topk(4, 0).unwrap();
    assert_eq!(i.dtype(), DType::I64);
    assert_eq!(v.dtype(), DType::F32);
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![4, 1, 3, 2]);
    assert_same(&vals(&v), &[f32::NAN, 5.0, 5.0, 3.0], "topk values");
    // All equal: the lowest indices win, in order.
    let (_, i) = Tensor::from_vec(vec![2.0f32; 6], &[6]).unwrap().topk(3, -1).unwrap();
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![0, 1, 2]);
}

#[test]
fn topk_along_a_middle_dim_matches_naive_including_k_0_and_k_equal_size() {
    let dims = [3usize, 6, 4];
    let mut v = values(72, 33);
    for (i, x) in v.iter_mut().enumerate() {
        *x = (*x * 2.0).round();
        if i % 11 == 3 {
            *x = f32::NAN;
        }
    }
    let x = Tensor::from_vec(v, &dims).unwrap();
    for t in [x.clone(), strided(&x), x.to_dtype(DType::BF16).unwrap()] {
        let tv = vals(&t);
        for k in [0usize, 1, 2, 5, 6] {
            let (val, idx) = t.topk(k, 1).unwrap();
            let (wv, wi, wdims) = topk_ref(&tv, &dims, 1, k);
            assert_eq!(val.dims(), &wdims[..], "k {k}");
            assert_eq!(idx.dims(), &wdims[..], "k {k}");
            assert_eq!(val.dtype(), t.dtype());
            assert_eq!(idx.to_vec::<i64>().unwrap(), wi, "k {k}");
            assert_same(&vals(&val), &wv, &format!("k {k}"));
        }
        // k = size is the full descending stable argsort.
        let (_, idx) = t.topk(6, -2).unwrap();
        assert_eq!(
            idx.to_vec::<i64>().unwrap(),
            t.argsort(1, true).unwrap().to_vec::<i64>().unwrap()
        );
    }
}

#[test]
fn topk_of_i64_returns_i64_values() {
    let big = 1i64 << 40;
    let x = i64_tensor(vec![3, big, -1, big, 7, big + 1], &[2, 3]);
    let (v, i) = x.topk(2, 1).unwrap();
    assert_eq!(v.dtype(), DType::I64);
    assert_eq!(v.to_vec::<i64>().unwrap(), vec![big, 3, big + 1, big]);
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, 0, 2, 0]);
}

#[test]
fn topk_rejects_k_larger_than_the_dim_and_a_bad_dim() {
    let x = rand(&[2, 4, 3], 34);
    let m = err_msg(x.topk(5, 1));
    assert!(
        m.contains("topk") && m.contains("k = 5") && m.contains("[2, 4, 3]") && m.contains("size 4"),
        "{m}"
    );
    let m = err_msg(x.topk(1, 3));
    assert!(m.contains("topk") && m.contains("[2, 4, 3]"), "{m}");
}

#[test]
fn topk_of_u8_returns_u8_values_like_argsort_accepts_u8() {
    // argsort orders u8 tensors (image bytes); topk should too, returning u8 values.
    let x = Tensor::from_vec(vec![7u8, 200, 7, 0, 255, 200], &[2, 3]).unwrap();
    assert_eq!(
        x.argsort(1, true).unwrap().to_vec::<i64>().unwrap(),
        vec![1, 0, 2, 1, 2, 0]
    );
    let (v, i) = x.topk(2, 1).unwrap();
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, 0, 1, 2]);
    assert_eq!(v.dtype(), DType::U8);
    assert_eq!(v.to_vec::<u8>().unwrap(), vec![200, 7, 255, 200]);
}
