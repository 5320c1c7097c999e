//! Integration tests of the tensor data model (construction, strided views, copies, dtype conversion,
//! devices), of safetensors I/O (bit-exact round trips, memory mapping, malformed files, atomic writes)
//! and of the counter-based RNG (independence from threads and chunking, distribution moments).
//! Views are checked against naive index arithmetic on a base tensor whose element `i` holds `i`.

mod common;

use common::{err_msg, rand, rand_strided, ravel, unravel, vals};
use half::{bf16, f16};
use nvg_engine::io::safetensors::{SafetensorsFile, load, save};
use nvg_engine::rng::{Distribution, RngStream, philox4x32_10};
use nvg_engine::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// -------------------------------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------------------------------

/// A tensor of `dtype` and shape `dims` whose row-major element `i` is `i + start` (exact in every dtype
/// for the small sizes used here).
fn iota(dims: &[usize], dtype: DType, start: i64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<i64> = (0..n as i64).map(|i| i + start).collect();
    Tensor::from_vec(v, dims).unwrap().to_dtype(dtype).unwrap()
}

/// Values of any tensor as f64 (floats via f32, integers via i64).
fn as_f64(t: &Tensor) -> Vec<f64> {
    if t.dtype().is_float() {
        t.to_f32_vec().unwrap().iter().map(|&v| v as f64).collect()
    } else {
        t.to_i64_vec().unwrap().iter().map(|&v| v as f64).collect()
    }
}

/// Expected values of a view of an `iota(.., start = 0)` base: element at multi-index `j` of the view
/// (shape `dims`) is the base element at flat position `f(j)`, i.e. the value `f(j)`.
fn expect(dims: &[usize], f: impl Fn(&[usize]) -> usize) -> Vec<f64> {
    let n: usize = dims.iter().product();
    (0..n).map(|p| f(&unravel(p, dims)) as f64).collect()
}

/// The same values as `t` in a non-contiguous layout (stored transposed in the last two dims).
fn strided(t: &Tensor) -> Tensor {
    let v = t
        .transpose(-1, -2)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(-1, -2)
        .unwrap();
    assert!(!v.is_contiguous());
    v
}

/// Raw bits of every element (for bit-exact comparisons, NaN payloads included).
fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F32 => t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits() as u64).collect(),
        DType::BF16 => t.to_vec::<bf16>().unwrap().iter().map(|v| v.to_bits() as u64).collect(),
        DType::F16 => t.to_vec::<f16>().unwrap().iter().map(|v| v.to_bits() as u64).collect(),
        DType::I64 => t.to_vec::<i64>().unwrap().iter().map(|&v| v as u64).collect(),
        DType::U8 => t.to_vec::<u8>().unwrap().iter().map(|&v| v as u64).collect(),
    }
}

/// A fresh, unique temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("nvg-engine-tensor_core-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Sorted names of the directory's entries (hidden ones included).
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// -------------------------------------------------------------------------------------------------
// Construction
// -------------------------------------------------------------------------------------------------

#[test]
fn from_vec_with_a_length_mismatch_is_an_error_naming_the_shape() {
    let m = err_msg(Tensor::from_vec(vec![1.0f32; 5], &[2, 3]));
    assert!(
        m.contains("from_vec") && m.contains("[2, 3]") && m.contains('5') && m.contains('6'),
        "{m}"
    );
    let m = err_msg(Tensor::from_slice(&[1i64, 2], &[]));
    assert!(m.contains("from_vec") && m.contains("[]"), "{m}");
    let m = err_msg(Tensor::from_vec(vec![0u8; 1], &[0, 4]));
    assert!(m.contains("from_vec") && m.contains("[0, 4]"), "{m}");
}

#[test]
fn constructors_give_the_right_shape_dtype_and_values() {
    let t = Tensor::from_vec(vec![1i64, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    assert_eq!(
        (t.dims(), t.dtype(), t.device(), t.rank(), t.numel()),
        (&[2usize, 3][..], DType::I64, Device::Cpu, 2, 6)
    );
    assert!(t.is_contiguous() && !t.is_mapped());
    let s = Tensor::from_vec(vec![7.5f32], &[]).unwrap();
    assert_eq!((s.rank(), s.numel(), s.to_scalar().unwrap()), (0, 1, 7.5));
    let e = Tensor::from_vec(Vec::<bf16>::new(), &[0, 3]).unwrap();
    assert_eq!((e.numel(), e.dtype()), (0, DType::BF16));
    for dt in [DType::F32, DType::BF16, DType::F16, DType::I64, DType::U8] {
        let z = Tensor::zeros(&[2, 2], dt, Device::Cpu).unwrap();
        let o = Tensor::ones(&[3], dt, Device::Cpu).unwrap();
        let f = Tensor::full(300.0, &[2], dt, Device::Cpu).unwrap();
        assert_eq!((z.dtype(), o.dtype(), f.dtype()), (dt, dt, dt));
        assert_eq!(as_f64(&z), vec![0.0; 4]);
        assert_eq!(as_f64(&o), vec![1.0; 3]);
        // u8 clamps 300 to 255; f16 holds 300 exactly; bf16 rounds 300 to 300 (representable).
        let want = if dt == DType::U8 { 255.0 } else { 300.0 };
        assert_eq!(as_f64(&f), vec![want; 2], "{dt}");
    }
    assert_eq!(Tensor::arange(-2, 3).to_vec::<i64>().unwrap(), vec![-2, -1, 0, 1, 2]);
    assert_eq!(Tensor::arange(5, 2).dims(), &[0]);
    assert_eq!(Tensor::scalar(2.5).dims(), &[] as &[usize]);
    assert_eq!(t.dim(-1).unwrap(), 3);
    let m = err_msg(t.dim(2));
    assert!(m.contains("[2, 3]"), "{m}");
    let m = err_msg(t.dims_n::<3>("my_op"));
    assert!(m.contains("my_op") && m.contains("[2, 3]"), "{m}");
}

// -------------------------------------------------------------------------------------------------
// Views
// -------------------------------------------------------------------------------------------------

#[test]
fn reshape_of_a_contiguous_tensor_is_a_view_sharing_storage() {
    let t = iota(&[2, 3, 4], DType::F32, 0);
    let r = t.reshape(&[4, 6]).unwrap();
    assert!(r.shares_storage(&t) && r.is_contiguous());
    assert_eq!(r.dims(), &[4, 6]);
    assert_eq!(as_f64(&r), expect(&[4, 6], |j| j[0] * 6 + j[1]));
    // A contiguous narrow (offset > 0) reshapes as a view too, keeping its offset.
    let n = t.narrow(0, 1, 1).unwrap().reshape(&[3, 4]).unwrap();
    assert!(n.shares_storage(&t));
    assert_eq!(as_f64(&n), expect(&[3, 4], |j| 12 + j[0] * 4 + j[1]));
    let m = err_msg(t.reshape(&[5, 5]));
    assert!(
        m.contains("reshape") && m.contains("[2, 3, 4]") && m.contains("[5, 5]"),
        "{m}"
    );
}

#[test]
fn reshape_of_a_permuted_tensor_copies_in_row_major_order() {
    for dt in [DType::F32, DType::BF16, DType::I64] {
        let t = iota(&[2, 3, 4], dt, 0);
        let p = t.permute(&[2, 0, 1]).unwrap(); // [4, 2, 3]
        let r = p.reshape(&[4, 6]).unwrap();
        assert!(!r.shares_storage(&t) && r.is_contiguous());
        assert_eq!(r.dtype(), dt);
        // r[a, b*3 + c] = p[a, b, c] = t[b, c, a].
        assert_eq!(
            as_f64(&r),
            expect(&[4, 6], |j| ravel(&[j[1] / 3, j[1] % 3, j[0]], &[2, 3, 4])),
            "{dt}"
        );
        let f = p.flatten(1, 2).unwrap();
        assert_eq!(as_f64(&f), as_f64(&r), "{dt} flatten");
    }
}

#[test]
fn permute_and_transpose_match_naive_index_arithmetic() {
    let dims = [2usize, 3, 4, 5];
    let t = iota(&dims, DType::F32, 0);
    for perm in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]] {
        let p = t.permute(&perm).unwrap();
        let pd: Vec<usize> = perm.iter().map(|&a| dims[a]).collect();
        assert_eq!(p.dims(), &pd[..]);
        assert!(p.shares_storage(&t));
        let want = expect(&pd, |j| {
            let mut k = [0usize; 4];
            for i in 0..4 {
                k[perm[i]] = j[i];
            }
            ravel(&k, &dims)
        });
        assert_eq!(as_f64(&p), want, "perm {perm:?}");
    }
    let tr = t.transpose(-1, 1).unwrap();
    assert_eq!(tr.dims(), &[2, 5, 4, 3]);
    assert_eq!(
        as_f64(&tr),
        expect(&[2, 5, 4, 3], |j| ravel(&[j[0], j[3], j[2], j[1]], &dims))
    );
    let m = err_msg(t.permute(&[0, 1, 1, 2]));
    assert!(
        m.contains("permute") && m.contains("[0, 1, 1, 2]") && m.contains("[2, 3, 4, 5]"),
        "{m}"
    );
    let m = err_msg(t.permute(&[0, 1, 2]));
    assert!(m.contains("permute"), "{m}");
    let m = err_msg(t.transpose(0, 4));
    assert!(m.contains("transpose") && m.contains('4'), "{m}");
}

#[test]
fn narrow_matches_naive_on_every_dim_and_rejects_out_of_range() {
    let dims = [3usize, 4, 5];
    let t = iota(&dims, DType::F32, 0);
    for d in 0..3 {
        for (start, len) in [(0, 1), (1, dims[d] - 1), (dims[d] - 1, 1), (2, 0)] {
            let n = t.narrow(d as isize, start, len).unwrap();
            let mut nd = dims.to_vec();
            nd[d] = len;
            assert_eq!(n.dims(), &nd[..]);
            assert!(n.shares_storage(&t));
            let want = expect(&nd, |j| {
                let mut k = j.to_vec();
                k[d] += start;
                ravel(&k, &dims)
            });
            assert_eq!(as_f64(&n), want, "dim {d} {start}..+{len}");
        }
    }
    // Narrow of a transposed view.
    let v = t.transpose(0, 2).unwrap().narrow(-1, 1, 2).unwrap(); // [5, 4, 2]
    assert_eq!(
        as_f64(&v),
        expect(&[5, 4, 2], |j| ravel(&[j[2] + 1, j[1], j[0]], &dims))
    );
    let m = err_msg(t.narrow(1, 3, 2));
    assert!(
        m.contains("narrow") && m.contains("3..5") && m.contains("[3, 4, 5]"),
        "{m}"
    );
    let m = err_msg(t.narrow(1, usize::MAX, 2));
    assert!(m.contains("narrow"), "{m}");
    let m = err_msg(t.narrow(3, 0, 1));
    assert!(m.contains("narrow") && m.contains("[3, 4, 5]"), "{m}");
}

#[test]
fn broadcast_as_matches_naive_and_rejects_incompatible_shapes() {
    let t = iota(&[3, 1], DType::F32, 0);
    let b = t.broadcast_as(&[2, 3, 4]).unwrap();
    assert!(b.shares_storage(&t) && !b.is_contiguous());
    assert_eq!(as_f64(&b), expect(&[2, 3, 4], |j| j[1]));
    // Broadcast of a strided view: the transposed [4, 3] seen as [1, 4, 3] stretched to [2, 4, 3].
    let s = iota(&[3, 4], DType::I64, 0)
        .transpose(0, 1)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let b = s.broadcast_as(&[2, 4, 3]).unwrap();
    assert_eq!(as_f64(&b), expect(&[2, 4, 3], |j| j[2] * 4 + j[1]));
    // 0-d to any shape.
    let z = Tensor::scalar(4.0).broadcast_as(&[2, 2]).unwrap();
    assert_eq!(vals(&z), vec![4.0; 4]);
    let m = err_msg(iota(&[3, 2], DType::F32, 0).broadcast_as(&[3, 3]));
    assert!(
        m.contains("broadcast_as") && m.contains("[3, 2]") && m.contains("[3, 3]"),
        "{m}"
    );
    let m = err_msg(iota(&[2, 3], DType::F32, 0).broadcast_as(&[3]));
    assert!(
        m.contains("broadcast_as") && m.contains("[2, 3]") && m.contains("[3]"),
        "{m}"
    );
}

#[test]
fn unsqueeze_squeeze_and_flatten_match_naive_on_strided_views() {
    let dims = [2usize, 3, 4];
    let t = iota(&dims, DType::F32, 0);
    let p = t.permute(&[2, 0, 1]).unwrap(); // [4, 2, 3], p[a,b,c] = t[b,c,a]
    let base = |a: usize, b: usize, c: usize| ravel(&[b, c, a], &dims);
    for d in 0..=3 {
        let u = p.unsqueeze(d).unwrap();
        let mut ud = vec![4usize, 2, 3];
        ud.insert(d, 1);
        assert_eq!(u.dims(), &ud[..]);
        assert!(u.shares_storage(&t));
        let want = expect(&ud, |j| {
            let mut k = j.to_vec();
            k.remove(d);
            base(k[0], k[1], k[2])
        });
        assert_eq!(as_f64(&u), want, "unsqueeze {d}");
        assert_eq!(as_f64(&u.squeeze(d as isize).unwrap()), as_f64(&p), "squeeze {d}");
    }
    // Squeeze of a narrowed size-1 dim of a strided view.
    let s = p.narrow(1, 1, 1).unwrap().squeeze(1).unwrap(); // [4, 3]
    assert_eq!(as_f64(&s), expect(&[4, 3], |j| base(j[0], 1, j[1])));
    for (a, b) in [(0usize, 1usize), (1, 2), (0, 2), (1, 1)] {
        let f = p.flatten(a, b).unwrap();
        let pd = [4usize, 2, 3];
        let mut fd: Vec<usize> = pd[..a].to_vec();
        fd.push(pd[a..=b].iter().product());
        fd.extend_from_slice(&pd[b + 1..]);
        assert_eq!(f.dims(), &fd[..]);
        // Row-major order is unchanged by flattening.
        assert_eq!(as_f64(&f), as_f64(&p), "flatten {a}..={b}");
    }
    let m = err_msg(p.unsqueeze(4));
    assert!(m.contains("unsqueeze") && m.contains("[4, 2, 3]"), "{m}");
    let m = err_msg(p.squeeze(0));
    assert!(m.contains("squeeze") && m.contains("[4, 2, 3]"), "{m}");
    let m = err_msg(p.flatten(2, 3));
    assert!(m.contains("flatten") && m.contains("[4, 2, 3]"), "{m}");
    let m = err_msg(p.flatten(2, 1));
    assert!(m.contains("flatten"), "{m}");
}

#[test]
fn split_and_chunk_give_views_matching_naive() {
    let dims = [2usize, 6, 3];
    let t = iota(&dims, DType::BF16, 0);
    let parts = t.split(1, &[1, 3, 0, 2]).unwrap();
    let mut start = 0;
    for (p, &len) in parts.iter().zip(&[1usize, 3, 0, 2]) {
        assert!(p.shares_storage(&t));
        assert_eq!(p.dims(), &[2, len, 3]);
        assert_eq!(
            as_f64(p),
            expect(&[2, len, 3], |j| ravel(&[j[0], j[1] + start, j[2]], &dims))
        );
        start += len;
    }
    let ch = t.chunk(3, -1).unwrap();
    assert_eq!(ch.len(), 3);
    for (c, p) in ch.iter().enumerate() {
        assert_eq!(p.dims(), &[2, 6, 1]);
        assert_eq!(as_f64(p), expect(&[2, 6, 1], |j| ravel(&[j[0], j[1], c], &dims)));
    }
    let m = err_msg(t.split(1, &[2, 2]));
    assert!(m.contains("split") && m.contains("[2, 6, 3]"), "{m}");
    let m = err_msg(t.chunk(4, 1));
    assert!(m.contains("chunk") && m.contains("[2, 6, 3]") && m.contains('4'), "{m}");
    let m = err_msg(t.chunk(0, 1));
    assert!(m.contains("chunk"), "{m}");
}

/// Naive concatenation of row-major pieces along `dim`.
fn cat_ref(pieces: &[(Vec<f64>, Vec<usize>)], dim: usize) -> (Vec<f64>, Vec<usize>) {
    let mut dims = pieces[0].1.clone();
    dims[dim] = pieces.iter().map(|p| p.1[dim]).sum();
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    for q in 0..n {
        let mut j = unravel(q, &dims);
        let mut k = 0;
        while j[dim] >= pieces[k].1[dim] {
            j[dim] -= pieces[k].1[dim];
            k += 1;
        }
        out.push(pieces[k].0[ravel(&j, &pieces[k].1)]);
    }
    (out, dims)
}

#[test]
fn cat_of_non_contiguous_pieces_matches_naive_for_every_dim_and_dtype() {
    for dt in [DType::F32, DType::BF16, DType::F16, DType::I64, DType::U8] {
        for dim in 0..3usize {
            let mut a_dims = vec![2usize, 3, 4];
            let mut b_dims = a_dims.clone();
            b_dims[dim] = 1;
            a_dims[dim] = 2;
            let mut c_dims = a_dims.clone();
            c_dims[dim] = 3;
            // a: strided; b: a narrow of a bigger tensor (offset, strided); c: contiguous; e: empty.
            let a = strided(&iota(&a_dims, dt, 0));
            let mut big = b_dims.clone();
            big[(dim + 1) % 3] += 2;
            let b = iota(&big, dt, 100)
                .narrow(((dim + 1) % 3) as isize, 1, b_dims[(dim + 1) % 3])
                .unwrap();
            let c = iota(&c_dims, dt, 50);
            let mut e_dims = a_dims.clone();
            e_dims[dim] = 0;
            let e = Tensor::zeros(&e_dims, dt, Device::Cpu).unwrap();
            let pieces: Vec<(Vec<f64>, Vec<usize>)> = [&a, &b, &e, &c]
                .iter()
                .map(|t| (as_f64(t), t.dims().to_vec()))
                .collect();
            let (want, want_dims) = cat_ref(&pieces, dim);
            for d in [dim as isize, dim as isize - 3] {
                let out = Tensor::cat(&[&a, &b, &e, &c], d).unwrap();
                assert_eq!(out.dims(), &want_dims[..]);
                assert_eq!(out.dtype(), dt);
                assert!(out.is_contiguous());
                assert_eq!(as_f64(&out), want, "{dt} dim {d}");
            }
        }
    }
}

#[test]
fn cat_errors_name_the_op_shapes_and_dtypes() {
    let a = iota(&[2, 3], DType::F32, 0);
    let m = err_msg(Tensor::cat(&[], 0));
    assert!(m.contains("cat"), "{m}");
    let m = err_msg(Tensor::cat(&[&a, &iota(&[3, 3], DType::F32, 0)], 1));
    assert!(m.contains("cat") && m.contains("[3, 3]") && m.contains("[2, 3]"), "{m}");
    let m = err_msg(Tensor::cat(&[&a, &iota(&[2], DType::F32, 0)], 0));
    assert!(m.contains("cat") && m.contains("[2]"), "{m}");
    let m = err_msg(Tensor::cat(&[&a, &iota(&[2, 3], DType::I64, 0)], 0));
    assert!(m.contains("cat") && m.contains("f32") && m.contains("i64"), "{m}");
    let m = err_msg(Tensor::cat(&[&a], 2));
    assert!(m.contains("cat") && m.contains("[2, 3]"), "{m}");
}

#[test]
fn stack_matches_naive_for_every_new_dim() {
    for dt in [DType::F32, DType::BF16, DType::I64] {
        let xs: Vec<Tensor> = (0..3).map(|k| strided(&iota(&[2, 4], dt, 10 * k))).collect();
        let refs: Vec<&Tensor> = xs.iter().collect();
        for dim in 0..=2usize {
            let out = Tensor::stack(&refs, dim).unwrap();
            let mut od = vec![2usize, 4];
            od.insert(dim, 3);
            assert_eq!(out.dims(), &od[..]);
            assert_eq!(out.dtype(), dt);
            // out[.., k, ..] = xs[k] = 10k + flat index of the remaining coordinates.
            let want = expect(&od, |j| {
                let mut r = j.to_vec();
                let k = r.remove(dim);
                10 * k + ravel(&r, &[2, 4])
            });
            assert_eq!(as_f64(&out), want, "{dt} dim {dim}");
        }
    }
}

#[test]
fn stack_errors_name_stack() {
    let a = iota(&[2, 3], DType::F32, 0);
    let b = iota(&[2, 4], DType::F32, 0);
    let m = err_msg(Tensor::stack(&[&a, &a], 3));
    assert!(m.contains("stack") && m.contains("[2, 3]"), "{m}");
    let m = err_msg(Tensor::stack(&[&a, &b], 0));
    assert!(
        m.contains("stack") && m.contains("[2, 3]") && m.contains("[2, 4]"),
        "{m}"
    );
    let m = err_msg(Tensor::stack(&[], 0));
    assert!(m.contains("stack"), "{m}");
}

/// Every kind of view of an `iota([2, 3, 4])` base, with its naive expected values.
fn all_views(t: &Tensor) -> Vec<(&'static str, Tensor, Vec<f64>)> {
    let d = [2usize, 3, 4];
    let r = |a: usize, b: usize, c: usize| ravel(&[a, b, c], &d);
    vec![
        (
            "permute",
            t.permute(&[2, 0, 1]).unwrap(),
            expect(&[4, 2, 3], |j| r(j[1], j[2], j[0])),
        ),
        (
            "transpose",
            t.transpose(-1, -2).unwrap(),
            expect(&[2, 4, 3], |j| r(j[0], j[2], j[1])),
        ),
        (
            "narrow middle",
            t.narrow(1, 1, 2).unwrap(),
            expect(&[2, 2, 4], |j| r(j[0], j[1] + 1, j[2])),
        ),
        (
            "narrow last",
            t.narrow(2, 1, 2).unwrap(),
            expect(&[2, 3, 2], |j| r(j[0], j[1], j[2] + 1)),
        ),
        (
            "narrow first (packed, offset)",
            t.narrow(0, 1, 1).unwrap(),
            expect(&[1, 3, 4], |j| r(1, j[1], j[2])),
        ),
        (
            "narrow then transpose",
            t.narrow(2, 1, 2).unwrap().transpose(0, 1).unwrap(),
            expect(&[3, 2, 2], |j| r(j[1], j[0], j[2] + 1)),
        ),
        (
            "broadcast",
            t.narrow(1, 2, 1).unwrap().broadcast_as(&[3, 2, 5, 4]).unwrap(),
            expect(&[3, 2, 5, 4], |j| r(j[1], 2, j[3])),
        ),
        (
            "broadcast then permute",
            t.narrow(0, 0, 1)
                .unwrap()
                .broadcast_as(&[2, 3, 4])
                .unwrap()
                .permute(&[2, 1, 0])
                .unwrap(),
            expect(&[4, 3, 2], |j| r(0, j[1], j[0])),
        ),
        (
            "unsqueeze of transpose",
            t.transpose(0, 2).unwrap().unsqueeze(1).unwrap(),
            expect(&[4, 1, 3, 2], |j| r(j[3], j[2], j[0])),
        ),
        (
            "squeeze of narrow",
            t.narrow(1, 2, 1).unwrap().squeeze(1).unwrap(),
            expect(&[2, 4], |j| r(j[0], 2, j[1])),
        ),
        (
            "split piece",
            t.split(2, &[1, 3]).unwrap()[1].clone(),
            expect(&[2, 3, 3], |j| r(j[0], j[1], j[2] + 1)),
        ),
        (
            "chunk piece",
            t.chunk(3, 1).unwrap()[2].clone(),
            expect(&[2, 1, 4], |j| r(j[0], 2, j[2])),
        ),
        (
            "empty narrow",
            t.narrow(1, 1, 0).unwrap().transpose(0, 2).unwrap(),
            vec![],
        ),
        (
            "double transpose with offset",
            t.narrow(0, 1, 1)
                .unwrap()
                .narrow(2, 1, 3)
                .unwrap()
                .transpose(1, 2)
                .unwrap(),
            expect(&[1, 3, 3], |j| r(1, j[2], j[1] + 1)),
        ),
    ]
}

#[test]
fn contiguous_of_every_kind_of_view_packs_the_right_values() {
    for dt in [DType::F32, DType::BF16, DType::F16, DType::I64, DType::U8] {
        let t = iota(&[2, 3, 4], dt, 0);
        for (name, v, want) in all_views(&t) {
            assert_eq!(as_f64(&v), want, "{dt} {name}: view values");
            let c = v.contiguous().unwrap();
            assert!(c.is_contiguous(), "{dt} {name}");
            assert_eq!(c.dims(), v.dims(), "{dt} {name}");
            assert_eq!(c.dtype(), dt, "{dt} {name}");
            assert_eq!(as_f64(&c), want, "{dt} {name}: contiguous values");
            if v.is_contiguous() {
                assert!(c.shares_storage(&t), "{dt} {name}: a packed view is returned as is");
            } else {
                assert!(!c.shares_storage(&t), "{dt} {name}: a strided view is copied");
                // The copy reshapes as a view.
                assert!(c.reshape(&[c.numel()]).unwrap().shares_storage(&c));
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Dtype conversion, data access, devices
// -------------------------------------------------------------------------------------------------

#[test]
fn to_dtype_f32_to_bf16_to_f32_is_within_bf16_rounding() {
    let mut x: Vec<f32> = Vec::new();
    for (k, scale) in [1e-30f32, 1e-3, 1.0, 7.0, 1e3, 1e30].iter().enumerate() {
        x.extend(common::values(200, k as u64).iter().map(|v| v * scale));
    }
    x.extend([0.0, -0.0, 1.0, -2.5, 0.15625, 65504.0]);
    let t = Tensor::from_vec(x.clone(), &[x.len()]).unwrap();
    let b = t.to_dtype(DType::BF16).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    let y = b.to_dtype(DType::F32).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    for (&a, &r) in x.iter().zip(&vals(&y)) {
        // Round to nearest with 8 significant bits: relative error at most 2^-9 (2^-8 used as bound).
        assert!((a - r).abs() <= a.abs() / 256.0, "{a} -> {r}");
        assert_eq!(a.is_sign_negative(), r.is_sign_negative(), "{a} -> {r}: sign");
    }
    // Exactly representable values survive, and a second round trip changes nothing.
    assert_eq!(&vals(&y)[x.len() - 6..], &[0.0, -0.0, 1.0, -2.5, 0.15625, 65536.0]);
    assert_eq!(bits(&y.to_dtype(DType::BF16).unwrap()), bits(&b));
    // Specials.
    let s = Tensor::from_vec(vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN], &[3]).unwrap();
    let r = vals(&s.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap());
    assert!(
        r[0] == f32::INFINITY && r[1] == f32::NEG_INFINITY && r[2].is_nan(),
        "{r:?}"
    );
}

#[test]
fn to_dtype_f32_to_f16_rounds_and_overflows_to_infinity() {
    let x = common::values(500, 40);
    let t = Tensor::from_vec(x.clone(), &[500]).unwrap();
    let h = t.to_dtype(DType::F16).unwrap();
    assert_eq!(h.dtype(), DType::F16);
    for (&a, &r) in x.iter().zip(&vals(&h)) {
        // 11 significant bits; values near 0 fall into the subnormal range (spacing 2^-24).
        assert!((a - r).abs() <= a.abs() / 2048.0 + 2f32.powi(-25), "{a} -> {r}");
    }
    let big = Tensor::from_vec(vec![65504.0f32, 1e5, -1e5, 1.0 + 1.0 / 4096.0], &[4]).unwrap();
    let r = vals(&big.to_dtype(DType::F16).unwrap());
    assert_eq!(r, vec![65504.0, f32::INFINITY, f32::NEG_INFINITY, 1.0]);
    // f16 -> bf16 goes through f32.
    let hb = h.to_dtype(DType::BF16).unwrap();
    assert_eq!(hb.dtype(), DType::BF16);
    for (&a, &r) in vals(&h).iter().zip(&vals(&hb)) {
        assert!((a - r).abs() <= a.abs() / 256.0, "{a} -> {r}");
    }
}

#[test]
fn to_dtype_float_to_i64_truncates_toward_zero_and_i64_to_f32_is_exact() {
    let t = Tensor::from_vec(vec![-2.7f32, -0.5, -0.0, 0.5, 2.9, 1e10, -1e10, 7.0], &[8]).unwrap();
    let i = t.to_dtype(DType::I64).unwrap();
    assert_eq!(i.dtype(), DType::I64);
    assert_eq!(
        i.to_vec::<i64>().unwrap(),
        vec![-2, 0, 0, 0, 2, 10_000_000_000, -10_000_000_000, 7]
    );
    let bi = t.to_dtype(DType::BF16).unwrap().to_dtype(DType::I64).unwrap();
    assert_eq!(bi.to_vec::<i64>().unwrap()[..5], [-2, 0, 0, 0, 2]);
    let j = Tensor::from_vec(vec![-3i64, 0, 7, 1 << 24, -(1 << 40)], &[5]).unwrap();
    let f = j.to_dtype(DType::F32).unwrap();
    assert_eq!(f.dtype(), DType::F32);
    assert_eq!(vals(&f), vec![-3.0, 0.0, 7.0, 16_777_216.0, -1_099_511_627_776.0]);
    // i64 -> bf16 rounds (257 is not representable in bf16; 256 is the nearest).
    let b = Tensor::from_vec(vec![257i64, -5], &[2])
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_eq!(vals(&b), vec![256.0, -5.0]);
    // A strided source converts in row-major order.
    let s = strided(&iota(&[3, 4], DType::F32, 0));
    assert_eq!(
        s.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(),
        (0..12).collect::<Vec<i64>>()
    );
}

#[test]
fn to_dtype_to_u8_clamps_and_u8_widens_exactly() {
    let f = Tensor::from_vec(vec![-5.0f32, 0.0, 3.7, 254.9, 255.0, 300.0, 1e9], &[7]).unwrap();
    assert_eq!(
        f.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(),
        vec![0, 0, 3, 254, 255, 255, 255]
    );
    let b = f.to_dtype(DType::BF16).unwrap().to_dtype(DType::U8).unwrap();
    assert_eq!(b.to_vec::<u8>().unwrap(), vec![0, 0, 3, 255, 255, 255, 255]); // 254.9 rounds to 255 in bf16
    let i = Tensor::from_vec(vec![-1i64, 0, 17, 255, 256, i64::MAX, i64::MIN], &[7]).unwrap();
    assert_eq!(
        i.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(),
        vec![0, 0, 17, 255, 255, 255, 0]
    );
    let u = Tensor::from_vec((0..=255u8).collect::<Vec<_>>(), &[16, 16]).unwrap();
    let wide: Vec<i64> = (0..=255).collect();
    assert_eq!(u.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(), wide);
    let wide_f: Vec<f32> = (0..=255).map(|v| v as f32).collect();
    assert_eq!(vals(&u.to_dtype(DType::F32).unwrap()), wide_f);
    assert_eq!(vals(&u.to_dtype(DType::F16).unwrap()), wide_f);
    assert_eq!(
        u.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(),
        u.to_vec::<u8>().unwrap()
    );
}

#[test]
fn to_dtype_to_the_same_dtype_shares_storage() {
    for dt in [DType::F32, DType::BF16, DType::F16, DType::I64, DType::U8] {
        let t = iota(&[2, 3], dt, 0);
        assert!(t.to_dtype(dt).unwrap().shares_storage(&t), "{dt}");
    }
}

#[test]
fn to_vec_with_the_wrong_element_type_is_an_error_naming_both_dtypes() {
    let f = iota(&[2, 2], DType::F32, 0);
    let m = err_msg(f.to_vec::<i64>());
    assert!(m.contains("to_vec") && m.contains("i64") && m.contains("f32"), "{m}");
    let m = err_msg(f.to_vec::<bf16>());
    assert!(m.contains("to_vec") && m.contains("bf16") && m.contains("f32"), "{m}");
    let i = iota(&[3], DType::I64, 0);
    let m = err_msg(i.to_vec::<f32>());
    assert!(m.contains("to_vec") && m.contains("i64") && m.contains("f32"), "{m}");
    let m = err_msg(iota(&[3], DType::U8, 0).to_vec::<i64>());
    assert!(m.contains("to_vec") && m.contains("u8"), "{m}");
    // Floats are never silently truncated to ids.
    let m = err_msg(f.to_i64_vec());
    assert!(m.contains("to_i64_vec") && m.contains("f32"), "{m}");
    let m = err_msg(f.to_scalar());
    assert!(m.contains("to_scalar") && m.contains("[2, 2]"), "{m}");
}

#[test]
fn to_f32_vec_converts_integer_tensors_as_documented() {
    // `Tensor::to_f32_vec` is documented as "The elements converted to f32 (any dtype)".
    let i = Tensor::from_vec(vec![-3i64, 0, 5], &[3]).unwrap();
    assert_eq!(i.to_f32_vec().unwrap(), vec![-3.0, 0.0, 5.0]);
    let u = Tensor::from_vec(vec![0u8, 200], &[2]).unwrap();
    assert_eq!(u.to_f32_vec().unwrap(), vec![0.0, 200.0]);
}

#[test]
#[cfg(not(feature = "cuda"))]
fn cuda_requests_fail_with_built_without_cuda_support() {
    let t = iota(&[2], DType::F32, 0);
    let m = err_msg(t.to_device(Device::Cuda(0)));
    assert!(
        m.contains("built without CUDA support") && m.contains("to_device") && m.contains("cuda:0"),
        "{m}"
    );
    let m = err_msg(Tensor::zeros(&[2, 2], DType::F32, Device::Cuda(0)));
    assert!(m.contains("built without CUDA support") && m.contains("cuda:0"), "{m}");
    let m = err_msg(Tensor::ones(&[1], DType::BF16, Device::Cuda(1)));
    assert!(m.contains("built without CUDA support") && m.contains("cuda:1"), "{m}");
    let c = t.to_device(Device::Cpu).unwrap();
    assert!(c.shares_storage(&t) && c.device() == Device::Cpu);
}

// -------------------------------------------------------------------------------------------------
// safetensors
// -------------------------------------------------------------------------------------------------

/// A set of tensors covering every dtype and the layout corner cases.
fn sample_tensors() -> Vec<(&'static str, Tensor)> {
    let f32s = vec![
        0.0f32,
        -0.0,
        1.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_1234), // NaN with a payload
        f32::MIN_POSITIVE / 4.0,     // subnormal
        f32::MAX,
    ];
    let bf16s: Vec<bf16> = [0x0000u16, 0x8000, 0x3fc0, 0x7f80, 0x7fc1, 0x0001]
        .iter()
        .map(|&b| bf16::from_bits(b))
        .collect();
    let f16s: Vec<f16> = [0x0000u16, 0x8000, 0x3c00, 0x7c00, 0x7e01, 0x0001, 0x7bff, 0xfbff]
        .iter()
        .map(|&b| f16::from_bits(b))
        .collect();
    vec![
        ("f32", Tensor::from_vec(f32s, &[2, 4]).unwrap()),
        ("bf16", Tensor::from_vec(bf16s, &[3, 2]).unwrap()),
        ("f16", Tensor::from_vec(f16s, &[2, 2, 2]).unwrap()),
        (
            "i64",
            Tensor::from_vec(vec![i64::MIN, -1, 0, 1, i64::MAX, 1 << 40], &[6]).unwrap(),
        ),
        (
            "u8",
            Tensor::from_vec((0..=255u8).collect::<Vec<_>>(), &[16, 16]).unwrap(),
        ),
        ("strided", rand_strided(&[3, 5], 50)),
        (
            "strided_bf16",
            strided(&rand(&[4, 3], 51).to_dtype(DType::BF16).unwrap()),
        ),
        ("narrowed_offset", rand(&[4, 3], 52).narrow(0, 1, 2).unwrap()),
        ("scalar", Tensor::scalar(3.25)),
        ("scalar_i64", Tensor::from_vec(vec![-7i64], &[]).unwrap()),
        ("empty", Tensor::zeros(&[0, 3], DType::F32, Device::Cpu).unwrap()),
        ("empty_i64", Tensor::zeros(&[2, 0], DType::I64, Device::Cpu).unwrap()),
    ]
}

#[test]
fn safetensors_round_trip_is_bit_exact_for_every_dtype_and_layout() {
    let dir = TempDir::new("round_trip");
    let path = dir.path("all.safetensors");
    let ts = sample_tensors();
    assert!(!ts[5].1.is_contiguous() && !ts[6].1.is_contiguous() && ts[7].1.layout().offset() > 0);
    save(&path, ts.iter().map(|(n, t)| (*n, t)), None).unwrap();
    let loaded = load(&path).unwrap();
    let mut names: Vec<&str> = ts.iter().map(|(n, _)| *n).collect();
    names.sort();
    assert_eq!(loaded.keys().map(String::as_str).collect::<Vec<_>>(), names);
    for (name, t) in &ts {
        let l = &loaded[*name];
        assert_eq!(l.dims(), t.dims(), "{name}");
        assert_eq!(l.dtype(), t.dtype(), "{name}");
        assert!(l.is_contiguous(), "{name}");
        assert_eq!(bits(l), bits(t), "{name}");
    }
}

#[test]
fn safetensors_loaded_tensors_are_memory_mapped_views() {
    let dir = TempDir::new("mapped");
    let path = dir.path("m.safetensors");
    let ts = sample_tensors();
    save(&path, ts.iter().map(|(n, t)| (*n, t)), None).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    for (name, t) in &ts {
        let l = file.get(name).unwrap();
        if t.dtype() == DType::F32 && t.numel() > 0 {
            assert!(l.is_mapped(), "f32 tensor {name} should be a view into the map");
        }
        if t.numel() > 0 {
            assert!(l.is_mapped(), "{name} ({}) is aligned and should be mapped", t.dtype());
        }
    }
    // Views of mapped data behave like any other: transpose + contiguous copies out of the map.
    let m = file.get("strided").unwrap();
    let src = vals(&rand(&[3, 5], 50));
    let tr = m.transpose(0, 1).unwrap();
    let c = tr.contiguous().unwrap();
    assert!(!c.is_mapped() && c.is_contiguous());
    let want: Vec<f32> = (0..15).map(|q| src[(q % 3) * 5 + q / 3]).collect();
    assert_eq!(vals(&c), want);
    let mb = file
        .get("strided_bf16")
        .unwrap()
        .permute(&[1, 0])
        .unwrap()
        .contiguous()
        .unwrap();
    assert_eq!(mb.dtype(), DType::BF16);
    let want: Vec<f32> = {
        let s = vals(&rand(&[4, 3], 51).to_dtype(DType::BF16).unwrap());
        (0..12).map(|q| s[(q % 4) * 3 + q / 4]).collect()
    };
    assert_eq!(vals(&mb), want);
    let sel = file
        .get("u8")
        .unwrap()
        .index_select(0, &Tensor::from_vec(vec![15i64, 0], &[2]).unwrap())
        .unwrap();
    assert_eq!(sel.to_vec::<u8>().unwrap()[..3], [240, 241, 242]);
}

#[test]
fn safetensors_file_lists_names_and_infos_and_names_a_missing_tensor() {
    let dir = TempDir::new("file_api");
    let path = dir.path("api.safetensors");
    let ts = sample_tensors();
    save(&path, ts.iter().map(|(n, t)| (*n, t)), None).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.path(), path.as_path());
    assert_eq!(file.len(), ts.len());
    assert!(!file.is_empty());
    let names: Vec<&str> = file.names().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "names come sorted");
    assert!(file.contains("bf16") && !file.contains("nope"));
    assert_eq!(file.info("f16").unwrap().shape, vec![2, 2, 2]);
    assert_eq!(file.info("u8").unwrap().len, 256);
    assert!(file.metadata().is_empty());
    let m = err_msg(file.get("nope"));
    assert!(m.contains("nope") && m.contains(&path_str(&path)), "{m}");
}

#[test]
fn safetensors_metadata_round_trips() {
    let dir = TempDir::new("metadata");
    let path = dir.path("meta.safetensors");
    let meta: HashMap<String, String> = [("format", "pt"), ("step", "1200"), ("note", "ünïcödé, \"quoted\"")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let t = rand(&[2, 2], 53);
    save(&path, [("w", &t)], Some(meta.clone())).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.metadata(), &meta);
    assert_eq!(vals(&file.get("w").unwrap()), vals(&t));
}

#[test]
fn safetensors_duplicate_name_is_an_error_and_writes_nothing() {
    let dir = TempDir::new("duplicate");
    let path = dir.path("dup.safetensors");
    let (a, b) = (rand(&[2], 54), rand(&[3], 55));
    let m = err_msg(save(&path, [("w", &a), ("v", &b), ("w", &b)], None));
    assert!(m.contains("`w`") && m.contains(&path_str(&path)), "{m}");
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
    // Over an existing file, the failed save leaves the old file untouched.
    save(&path, [("old", &a)], None).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(save(&path, [("w", &a), ("w", &b)], None).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir.entries(), vec!["dup.safetensors".to_string()]);
}

#[test]
fn safetensors_truncated_garbage_empty_and_missing_files_are_errors_naming_the_path() {
    let dir = TempDir::new("malformed");
    let good = dir.path("good.safetensors");
    let ts = sample_tensors();
    save(&good, ts.iter().map(|(n, t)| (*n, t)), None).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert!(bytes.len() > 8 + header_len + 16);
    for (k, cut) in [
        0usize,
        4,
        8,
        8 + header_len / 2,
        8 + header_len,
        bytes.len() - 1,
        bytes.len() - 100,
    ]
    .iter()
    .enumerate()
    {
        let p = dir.path(&format!("truncated-{k}.safetensors"));
        std::fs::write(&p, &bytes[..*cut]).unwrap();
        let m = err_msg(load(&p));
        assert!(m.contains(&path_str(&p)), "cut at {cut}: {m}");
        let m = err_msg(SafetensorsFile::open(&p).map(|f| f.len()));
        assert!(m.contains(&path_str(&p)), "cut at {cut}: {m}");
    }
    let garbage = dir.path("garbage.safetensors");
    std::fs::write(
        &garbage,
        common::values(256, 56)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let m = err_msg(load(&garbage));
    assert!(m.contains(&path_str(&garbage)), "{m}");
    // A plausible header length followed by text that is not JSON.
    let not_json = dir.path("not_json.safetensors");
    let mut b = 16u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"this is no json!");
    std::fs::write(&not_json, b).unwrap();
    let m = err_msg(load(&not_json));
    assert!(m.contains(&path_str(&not_json)), "{m}");
    let missing = dir.path("missing.safetensors");
    let m = err_msg(load(&missing));
    assert!(m.contains(&path_str(&missing)), "{m}");
    let m = err_msg(load(&dir.0));
    assert!(m.contains(&path_str(&dir.0)), "{m}");
}

#[test]
fn safetensors_saves_are_atomic_and_leave_no_temporary_files() {
    let dir = TempDir::new("atomic");
    let path = dir.path("w.safetensors");
    let other = dir.path("other.safetensors");
    let (a, b) = (rand(&[64, 8], 57), rand(&[3, 3], 58));
    save(&other, [("keep", &a)], None).unwrap();
    let other_bytes = std::fs::read(&other).unwrap();
    save(&path, [("a", &a)], None).unwrap();
    // Keep a mapped tensor of the old file alive while the file is replaced.
    let old = load(&path).unwrap().remove("a").unwrap();
    assert!(old.is_mapped());
    save(&path, [("b", &b)], None).unwrap();
    assert_eq!(
        dir.entries(),
        vec!["other.safetensors".to_string(), "w.safetensors".to_string()]
    );
    let new = load(&path).unwrap();
    assert_eq!(new.keys().collect::<Vec<_>>(), vec!["b"]);
    assert_eq!(vals(&new["b"]), vals(&b));
    // The replaced file's data is still what the old mapping sees (rename, not truncate in place).
    assert_eq!(vals(&old), vals(&a));

    // A save into a directory that does not exist fails, names the path, and touches nothing else.
    let bad = dir.path("no_such_dir").join("x.safetensors");
    let m = err_msg(save(&bad, [("a", &a)], None));
    assert!(m.contains(&path_str(&bad)), "{m}");
    assert!(!bad.exists());
    // A save whose final rename fails (the target is a directory) removes its temporary file.
    let blocked = dir.path("blocked.safetensors");
    std::fs::create_dir(&blocked).unwrap();
    let m = err_msg(save(&blocked, [("a", &a)], None));
    assert!(m.contains(&path_str(&blocked)), "{m}");
    assert!(blocked.is_dir());
    assert_eq!(
        dir.entries(),
        vec![
            "blocked.safetensors".to_string(),
            "other.safetensors".to_string(),
            "w.safetensors".to_string()
        ]
    );
    assert_eq!(
        std::fs::read(&other).unwrap(),
        other_bytes,
        "an unrelated existing file is intact"
    );
    assert_eq!(
        vals(&load(&path).unwrap()["b"]),
        vals(&b),
        "the last good save is intact"
    );
}

#[test]
fn safetensors_concurrent_saves_to_one_path_all_succeed_with_a_complete_file() {
    let dir = TempDir::new("concurrent");
    let path = dir.path("c.safetensors");
    let ts: Vec<Tensor> = (0..4).map(|k| rand(&[256, 64], 60 + k)).collect();
    for _round in 0..5 {
        std::thread::scope(|s| {
            let handles: Vec<_> = ts
                .iter()
                .map(|t| {
                    let p = path.clone();
                    s.spawn(move || save(&p, [("t", t)], None))
                })
                .collect();
            for h in handles {
                let r = h.join().unwrap();
                assert!(r.is_ok(), "a concurrent save failed: {}", r.unwrap_err());
            }
        });
        let got = vals(&load(&path).unwrap()["t"]);
        assert!(
            ts.iter().any(|t| vals(t) == got),
            "the file holds none of the written tensors intact"
        );
        assert_eq!(dir.entries(), vec!["c.safetensors".to_string()]);
    }
}

#[test]
fn safetensors_reads_the_real_generator_fixture() {
    let dir = match std::env::var_os("NVG_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nvg-tiny"),
    };
    if !dir.is_dir() {
        println!(
            "skipping the fixture check: fixture directory {} does not exist",
            dir.display()
        );
        return;
    }
    let file = SafetensorsFile::open(dir.join("generator.safetensors")).unwrap();
    assert!(file.len() > 10, "{} tensors", file.len());
    assert!(file.metadata().contains_key("description"));
    // The class embedding table: [num_classes + 1, width], f32, memory-mapped, finite, not all zero.
    let emb = file.get("content_class_embed.weight").unwrap();
    assert_eq!(emb.dtype(), DType::F32);
    assert_eq!(emb.rank(), 2);
    assert!(emb.dims()[0] > 100 && emb.dims()[1] >= 8, "{:?}", emb.dims());
    assert!(emb.is_mapped());
    let v = vals(&emb);
    assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0));
    // Embedding lookups on the mapped table return its rows.
    let w = emb.dims()[1];
    let rows = emb
        .embedding(&Tensor::from_vec(vec![0i64, 1000, 3], &[3]).unwrap())
        .unwrap();
    let rv = vals(&rows);
    for (k, &id) in [0usize, 1000, 3].iter().enumerate() {
        if id < emb.dims()[0] {
            assert_eq!(&rv[k * w..(k + 1) * w], &v[id * w..(id + 1) * w]);
        }
    }
}

// -------------------------------------------------------------------------------------------------
// RNG
// -------------------------------------------------------------------------------------------------

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

#[test]
fn rng_words_are_philox_of_seed_key_and_offset_stream_counter() {
    let r = RngStream::new(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
    for idx in [0u64, 1, 0xffff_ffff, 1 << 32, u64::MAX] {
        let want = philox4x32_10(
            [0x89ab_cdef, 0x0123_4567],
            [idx as u32, (idx >> 32) as u32, 0x7654_3210, 0xfedc_ba98],
        );
        assert_eq!(r.words(idx), want, "index {idx}");
    }
}

#[test]
fn rng_values_do_not_depend_on_the_thread_count() {
    let n = 50_003; // several parallel chunks and a ragged tail
    let rng = RngStream::new(42, 7);
    for dist in [Distribution::Uniform, Distribution::Normal, Distribution::Gumbel] {
        let want: Vec<u32> = (0..n as u64).map(|i| rng.sample(dist, 1000 + i).to_bits()).collect();
        for threads in [1, 2, 3] {
            let p = pool(threads);
            let t = p.install(|| Tensor::random(&[n], dist, rng, 1000)).unwrap();
            let got: Vec<u32> = vals(&t).iter().map(|v| v.to_bits()).collect();
            assert!(got == want, "{dist:?}: Tensor::random with {threads} threads differs");
            let mut buf = vec![0.0f32; n];
            p.install(|| rng.fill(dist, 1000, &mut buf));
            let got: Vec<u32> = buf.iter().map(|v| v.to_bits()).collect();
            assert!(got == want, "{dist:?}: fill with {threads} threads differs");
        }
    }
}

#[test]
fn rng_values_do_not_depend_on_chunking() {
    let n = 40_000;
    let rng = RngStream::new(3, 1);
    for dist in [Distribution::Uniform, Distribution::Normal, Distribution::Gumbel] {
        let mut whole = vec![0.0f32; n];
        rng.fill(dist, 0, &mut whole);
        for k in [1usize, 4095, 4096, 17_000, 39_999] {
            let mut a = vec![0.0f32; k];
            let mut b = vec![0.0f32; n - k];
            rng.fill(dist, 0, &mut a);
            rng.fill(dist, k as u64, &mut b);
            a.extend_from_slice(&b);
            assert!(
                a.iter().zip(&whole).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{dist:?} split at {k}"
            );
        }
        // Tensor::random at an offset is element `offset + i` of the stream, shaped as asked.
        let t = Tensor::random(&[3, 5, 7], dist, rng, 12_345).unwrap();
        assert_eq!(t.dims(), &[3, 5, 7]);
        assert_eq!(t.dtype(), DType::F32);
        let want: Vec<f32> = (0..105).map(|i| rng.sample(dist, 12_345 + i)).collect();
        assert!(
            vals(&t).iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{dist:?}"
        );
        assert!(
            vals(&t)
                .iter()
                .zip(&whole[12_345..])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{dist:?}"
        );
    }
}

#[test]
fn rng_different_streams_and_seeds_give_different_values() {
    let n = 10_000;
    let draw = |seed: u64, stream: u64| {
        let mut v = vec![0.0f32; n];
        RngStream::new(seed, stream).fill(Distribution::Uniform, 0, &mut v);
        v
    };
    let base = draw(1, 0);
    for (seed, stream) in [(1, 1), (2, 0), (1 | (1 << 32), 0), (1, 1 << 32), (0, 0)] {
        let other = draw(seed, stream);
        // Independent 24-bit uniforms coincide with probability 2^-24 per element.
        let same = base.iter().zip(&other).filter(|(a, b)| a == b).count();
        assert!(
            same <= 2,
            "seed {seed:#x} stream {stream:#x}: {same} equal values of {n}"
        );
    }
    // Neighbouring offsets of one stream differ too (no accidental reuse of counters).
    let shifted = {
        let mut v = vec![0.0f32; n];
        RngStream::new(1, 0).fill(Distribution::Uniform, 1, &mut v);
        v
    };
    assert!(base.iter().zip(&shifted).filter(|(a, b)| a == b).count() <= 2);
}

/// Sample mean and (unbiased) variance in f64.
fn moments(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

const N_SAMPLES: usize = 200_000;

#[test]
fn rng_uniform_is_in_0_1_on_a_24_bit_grid_with_mean_one_half_and_variance_one_twelfth() {
    let t = Tensor::random(&[N_SAMPLES], Distribution::Uniform, RngStream::new(11, 0), 0).unwrap();
    let v = vals(&t);
    assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
    assert!(
        v.iter().all(|&x| (x * 16_777_216.0).fract() == 0.0),
        "24-bit resolution"
    );
    let (mean, var) = moments(&v);
    let n = N_SAMPLES as f64;
    // SE of the mean: sqrt(1/12 / n) ≈ 6.5e-4; of the variance: sqrt((1/80 - 1/144) / n) ≈ 1.7e-4.
    let (se_mean, se_var) = ((1.0 / 12.0 / n).sqrt(), ((1.0 / 80.0 - 1.0 / 144.0) / n).sqrt());
    assert!((mean - 0.5).abs() < 5.0 * se_mean, "mean {mean}");
    assert!((var - 1.0 / 12.0).abs() < 5.0 * se_var, "variance {var}");
    // Ten equal bins each hold a tenth: binomial SE sqrt(0.1 * 0.9 / n).
    let mut bins = [0usize; 10];
    for &x in &v {
        bins[(x * 10.0) as usize] += 1;
    }
    let se_bin = (0.1 * 0.9 / n).sqrt();
    for (b, &c) in bins.iter().enumerate() {
        assert!((c as f64 / n - 0.1).abs() < 5.0 * se_bin, "bin {b}: {c}");
    }
}

#[test]
fn rng_normal_has_mean_zero_and_variance_one() {
    let t = Tensor::random(&[N_SAMPLES], Distribution::Normal, RngStream::new(12, 3), 77).unwrap();
    let v = vals(&t);
    assert!(v.iter().all(|x| x.is_finite()));
    let (mean, var) = moments(&v);
    let n = N_SAMPLES as f64;
    // SE of the mean: 1/sqrt(n) ≈ 2.2e-3; of the variance: sqrt(2/n) ≈ 3.2e-3 (normal kurtosis 3).
    assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
    assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {var}");
    // Symmetry and tails: P(x > 0) = 1/2, P(|x| > 1.96) ≈ 0.05.
    let pos = v.iter().filter(|&&x| x > 0.0).count() as f64 / n;
    assert!((pos - 0.5).abs() < 5.0 * (0.25 / n).sqrt(), "P(x > 0) = {pos}");
    let tail = v.iter().filter(|&&x| x.abs() > 1.959_964).count() as f64 / n;
    assert!(
        (tail - 0.05).abs() < 5.0 * (0.05 * 0.95 / n).sqrt(),
        "P(|x| > 1.96) = {tail}"
    );
}

#[test]
fn rng_gumbel_has_mean_euler_gamma_and_variance_pi_squared_over_six() {
    let t = Tensor::random(&[N_SAMPLES], Distribution::Gumbel, RngStream::new(13, 5), 0).unwrap();
    let v = vals(&t);
    assert!(v.iter().all(|x| x.is_finite()));
    let (mean, var) = moments(&v);
    let n = N_SAMPLES as f64;
    let gamma = 0.577_215_664_901_532_9;
    let pi2_6 = std::f64::consts::PI.powi(2) / 6.0;
    // SE of the mean: sqrt(π²/6 / n) ≈ 2.9e-3. Variance: the Gumbel excess kurtosis is 12/5, so
    // Var(s²) ≈ σ⁴ (2 + 12/5) / n, SE ≈ 7.7e-3.
    assert!((mean - gamma).abs() < 5.0 * (pi2_6 / n).sqrt(), "mean {mean}");
    assert!(
        (var - pi2_6).abs() < 5.0 * (pi2_6 * pi2_6 * 4.4 / n).sqrt(),
        "variance {var}"
    );
    // CDF at 0 is exp(-1).
    let below = v.iter().filter(|&&x| x <= 0.0).count() as f64 / n;
    let p = (-1.0f64).exp();
    assert!(
        (below - p).abs() < 5.0 * (p * (1.0 - p) / n).sqrt(),
        "P(x <= 0) = {below}"
    );
}

#[test]
fn unflatten_splits_a_dim_of_any_view_without_copying() {
    let base = Tensor::from_vec((0..2 * 5 * 12).map(|i| i as f32).collect::<Vec<_>>(), &[2, 5, 12]).unwrap();
    // A narrowed last dim (row stride 12, width 6) split into [2, 3], then permuted like attention heads.
    let q = base.narrow(2, 6, 6).unwrap().unflatten(2, &[2, 3]).unwrap();
    assert_eq!(q.dims(), &[2, 5, 2, 3]);
    assert!(q.shares_storage(&base));
    let got = q.to_f32_vec().unwrap();
    let mut want = Vec::new();
    for b in 0..2 {
        for n in 0..5 {
            for h in 0..2 {
                for d in 0..3 {
                    want.push((b * 60 + n * 12 + 6 + h * 3 + d) as f32);
                }
            }
        }
    }
    assert_eq!(got, want);
    let t = q.permute(&[0, 2, 1, 3]).unwrap().unflatten(-1, &[3, 1]).unwrap();
    assert_eq!(t.dims(), &[2, 2, 5, 3, 1]);
    let msg = err_msg(base.unflatten(1, &[2, 3]));
    assert!(msg.contains("unflatten") && msg.contains("[2, 5, 12]"), "{msg}");
}
