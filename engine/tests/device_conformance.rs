//! Conformance of the device backends with the CPU reference: every op that has a CUDA kernel runs on
//! each available device and is compared with the same op on the CPU, on odd shapes, strided views and
//! broadcasting. `CudaEmu` (the kernels' host build, launched through the CUDA backend) is always
//! available; a real `Cuda` device is tested when this build can drive one, and otherwise the test says
//! why it is skipped.
//!
//! Tolerance: both sides compute in f32; they differ in summation order (block reductions, GEMM tiles)
//! and in transcendental implementations (libm on the device side, the engine's vectorised polynomials
//! on the CPU), a few ulps per element. `|device − cpu| ≤ 1e-5 + 1e-5·|cpu|` (3e-5 relative for
//! reductions over hundreds of elements and for GEMMs with k up to 300).

use nvg_engine::{Binary, DType, Device, Tensor, Unary};

fn devices() -> Vec<Device> {
    let mut v = vec![Device::CudaEmu];
    match nvg_engine::cuda::check_device("conformance", Device::Cuda(0)) {
        Ok(()) => v.push(Device::Cuda(0)),
        Err(e) => eprintln!("skipping Device::Cuda(0): {e}"),
    }
    v
}

/// Deterministic values in about [-2, 2].
fn rand(dims: &[usize], seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, dims).unwrap()
}

#[track_caller]
fn check(what: &str, dev: Device, got: &Tensor, want: &Tensor, rtol: f32) {
    assert_eq!(got.device(), dev, "{what}: result not on {dev}");
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a - b).abs() <= 1e-5 + rtol * b.abs() || (a.is_nan() && b.is_nan()) || a == b;
        assert!(ok, "{what} on {dev}: element {i}: {a} vs CPU {b}");
    }
}

fn on(dev: Device, t: &Tensor) -> Tensor {
    t.to_device(dev).unwrap()
}

#[test]
fn transfers_round_trip_every_dtype() {
    for dev in devices() {
        let f = rand(&[3, 5], 1);
        let g = on(dev, &f);
        assert_eq!(g.device(), dev);
        assert_eq!(g.to_f32_vec().unwrap(), f.to_f32_vec().unwrap());
        let ids = Tensor::from_vec(vec![3i64, -1, 7, 1 << 40], &[2, 2]).unwrap();
        assert_eq!(on(dev, &ids).to_i64_vec().unwrap(), ids.to_i64_vec().unwrap());
        let h = f.to_dtype(DType::BF16).unwrap();
        let back = on(dev, &h).to_device(Device::Cpu).unwrap();
        assert_eq!(back.dtype(), DType::BF16);
        assert_eq!(back.to_f32_vec().unwrap(), h.to_f32_vec().unwrap());
        let z = Tensor::zeros(&[4], DType::F32, dev).unwrap();
        assert_eq!(z.device(), dev);
        assert_eq!(z.to_f32_vec().unwrap(), vec![0.0; 4]);
        // A strided view goes over packed.
        let t = rand(&[4, 6, 5], 2);
        let view = t.permute(&[2, 0, 1]).unwrap().narrow(1, 1, 2).unwrap();
        check(
            "strided view transfer",
            dev,
            &on(dev, &view),
            &view.contiguous().unwrap(),
            0.0,
        );
    }
}

#[test]
fn contiguous_copies_strided_views_on_the_device() {
    for dev in devices() {
        let t = rand(&[5, 7, 3], 3);
        let d = on(dev, &t);
        for (name, cpu, gpu) in [
            (
                "permute",
                t.permute(&[2, 0, 1]).unwrap(),
                d.permute(&[2, 0, 1]).unwrap(),
            ),
            ("narrow", t.narrow(1, 2, 4).unwrap(), d.narrow(1, 2, 4).unwrap()),
            (
                "transpose+narrow",
                t.transpose(0, 2).unwrap().narrow(0, 1, 2).unwrap(),
                d.transpose(0, 2).unwrap().narrow(0, 1, 2).unwrap(),
            ),
            (
                "broadcast",
                t.narrow(0, 0, 1).unwrap().broadcast_as(&[4, 7, 3]).unwrap(),
                d.narrow(0, 0, 1).unwrap().broadcast_as(&[4, 7, 3]).unwrap(),
            ),
        ] {
            check(name, dev, &gpu.contiguous().unwrap(), &cpu.contiguous().unwrap(), 0.0);
        }
    }
}

#[test]
fn cat_and_true_division() {
    let a = rand(&[2, 3, 4], 31);
    let b = rand(&[2, 5, 4], 32);
    let c = rand(&[4, 2, 3], 33).permute(&[1, 2, 0]).unwrap(); // strided [2, 3, 4]
    for dev in devices() {
        let (da, db) = (on(dev, &a), on(dev, &b));
        let dc = on(dev, &rand(&[4, 2, 3], 33)).permute(&[1, 2, 0]).unwrap();
        check(
            "cat dim 1",
            dev,
            &Tensor::cat(&[&da, &db, &da], 1).unwrap(),
            &Tensor::cat(&[&a, &b, &a], 1).unwrap(),
            0.0,
        );
        check(
            "cat dim 2 strided",
            dev,
            &Tensor::cat(&[&da, &dc], 2).unwrap(),
            &Tensor::cat(&[&a, &c], 2).unwrap(),
            0.0,
        );
        check(
            "cat dim 0",
            dev,
            &Tensor::cat(&[&da, &dc], 0).unwrap(),
            &Tensor::cat(&[&a, &c], 0).unwrap(),
            0.0,
        );
        // A true division (not a multiplication by the reciprocal): bit-equal to the CPU.
        check(
            "div_scalar",
            dev,
            &da.div_scalar(1.6080).unwrap(),
            &a.div_scalar(1.6080).unwrap(),
            0.0,
        );
    }
}

#[test]
fn unary_ops() {
    let x = rand(&[3, 37], 4);
    let pos = x.abs().unwrap().add_scalar(0.1).unwrap(); // for log, sqrt, rsqrt, recip
    for dev in devices() {
        for op in [
            Unary::Neg,
            Unary::Abs,
            Unary::Exp,
            Unary::Log,
            Unary::Sqrt,
            Unary::Rsqrt,
            Unary::Recip,
            Unary::Sqr,
            Unary::Tanh,
            Unary::Sin,
            Unary::Cos,
            Unary::Sigmoid,
            Unary::Silu,
            Unary::GeluTanh,
            Unary::Relu,
        ] {
            let input = if matches!(op, Unary::Log | Unary::Sqrt | Unary::Rsqrt | Unary::Recip) {
                &pos
            } else {
                &x
            };
            check(
                op.name(),
                dev,
                &on(dev, input).unary(op).unwrap(),
                &input.unary(op).unwrap(),
                1e-5,
            );
        }
        check(
            "affine",
            dev,
            &on(dev, &x).affine(1.5, -0.25).unwrap(),
            &x.affine(1.5, -0.25).unwrap(),
            1e-6,
        );
        check(
            "powf",
            dev,
            &on(dev, &pos).powf(2.5).unwrap(),
            &pos.powf(2.5).unwrap(),
            1e-5,
        );
        // clamp: values on both sides, at the bounds, and a NaN (passes through on both backends).
        let mut cv = x.to_f32_vec().unwrap();
        cv[0] = f32::NAN;
        cv[1] = -0.5;
        let cx = Tensor::from_vec(cv, x.dims()).unwrap();
        check(
            "clamp",
            dev,
            &on(dev, &cx).clamp(-0.5, 0.75).unwrap(),
            &cx.clamp(-0.5, 0.75).unwrap(),
            0.0,
        );
    }
}

#[test]
fn binary_ops_with_broadcasting_and_strided_operands() {
    let a = rand(&[4, 1, 9], 5);
    let b = rand(&[3, 9], 6).abs().unwrap().add_scalar(0.5).unwrap();
    let wide = rand(&[9, 3], 7).transpose(0, 1).unwrap(); // strided [3, 9]
    for dev in devices() {
        for op in [
            Binary::Add,
            Binary::Sub,
            Binary::Mul,
            Binary::Div,
            Binary::Maximum,
            Binary::Minimum,
        ] {
            check(
                op.name(),
                dev,
                &on(dev, &a).binary(&on(dev, &b), op).unwrap(),
                &a.binary(&b, op).unwrap(),
                1e-6,
            );
            let dw = on(dev, &rand(&[9, 3], 7)).transpose(0, 1).unwrap();
            check(
                &format!("{} strided rhs", op.name()),
                dev,
                &on(dev, &a).binary(&dw, op).unwrap(),
                &a.binary(&wide, op).unwrap(),
                1e-6,
            );
        }
        let s = Tensor::scalar(2.5);
        check(
            "scalar rhs",
            dev,
            &on(dev, &a).mul(&on(dev, &s)).unwrap(),
            &a.mul(&s).unwrap(),
            1e-6,
        );
    }
}

#[test]
fn row_reductions_softmax_and_norms() {
    for (rows, cols) in [(1, 1), (3, 31), (5, 257), (2, 1000)] {
        let x = rand(&[rows, cols], 8 + cols as u64).mul_scalar(3.0).unwrap();
        let w = rand(&[cols], 9);
        let b = rand(&[cols], 10);
        for dev in devices() {
            let d = on(dev, &x);
            check("sum", dev, &d.sum(-1, false).unwrap(), &x.sum(-1, false).unwrap(), 3e-5);
            check(
                "sum keepdim",
                dev,
                &d.sum(1, true).unwrap(),
                &x.sum(1, true).unwrap(),
                3e-5,
            );
            check(
                "mean",
                dev,
                &d.mean(-1, false).unwrap(),
                &x.mean(-1, false).unwrap(),
                3e-5,
            );
            check("softmax", dev, &d.softmax(-1).unwrap(), &x.softmax(-1).unwrap(), 3e-5);
            // Other dims: moved to the last one for the row kernels.
            check(
                "sum dim 0",
                dev,
                &d.sum(0, false).unwrap(),
                &x.sum(0, false).unwrap(),
                3e-5,
            );
            check(
                "log_softmax dim 0",
                dev,
                &d.log_softmax(0).unwrap(),
                &x.log_softmax(0).unwrap(),
                3e-5,
            );
            check(
                "log_softmax",
                dev,
                &d.log_softmax(-1).unwrap(),
                &x.log_softmax(-1).unwrap(),
                3e-5,
            );
            let (dw, db) = (on(dev, &w), on(dev, &b));
            check(
                "layer_norm affine",
                dev,
                &d.layer_norm(Some(&dw), Some(&db), 1e-6).unwrap(),
                &x.layer_norm(Some(&w), Some(&b), 1e-6).unwrap(),
                3e-5,
            );
            check(
                "layer_norm",
                dev,
                &d.layer_norm(None, None, 1e-6).unwrap(),
                &x.layer_norm(None, None, 1e-6).unwrap(),
                3e-5,
            );
            check(
                "rms_norm",
                dev,
                &d.rms_norm(&dw, 1e-6).unwrap(),
                &x.rms_norm(&w, 1e-6).unwrap(),
                3e-5,
            );
        }
    }
}

#[test]
fn rope_with_batched_and_shared_tables() {
    let (b, h, n, d) = (2, 3, 5, 8);
    let x = rand(&[b, h, n, d], 11);
    let angles = rand(&[b, n, d / 2], 12);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    for dev in devices() {
        let (dc, ds) = (on(dev, &cos), on(dev, &sin));
        check(
            "rope batched table",
            dev,
            &on(dev, &x).rope(&dc, &ds).unwrap(),
            &x.rope(&cos, &sin).unwrap(),
            1e-6,
        );
        let (c1, s1) = (
            cos.narrow(0, 0, 1).unwrap().squeeze(0).unwrap(),
            sin.narrow(0, 0, 1).unwrap().squeeze(0).unwrap(),
        );
        check(
            "rope shared table",
            dev,
            &on(dev, &x).rope(&on(dev, &c1), &on(dev, &s1)).unwrap(),
            &x.rope(&c1, &s1).unwrap(),
            1e-6,
        );
        // A head view of a fused projection (strided input).
        let fused = rand(&[b, n, 2 * h * d], 13);
        let view = |t: &Tensor| {
            t.narrow(2, h * d, h * d)
                .unwrap()
                .unflatten(2, &[h, d])
                .unwrap()
                .permute(&[0, 2, 1, 3])
                .unwrap()
        };
        check(
            "rope strided",
            dev,
            &view(&on(dev, &fused)).rope(&dc, &ds).unwrap(),
            &view(&fused).rope(&cos, &sin).unwrap(),
            1e-6,
        );
    }
}

#[test]
fn matmul_and_linear() {
    for (m, k, n) in [(1, 1, 1), (7, 13, 5), (65, 70, 129), (3, 300, 2)] {
        let a = rand(&[m, k], 14 + m as u64);
        let b = rand(&[k, n], 15 + n as u64);
        for dev in devices() {
            check(
                &format!("matmul {m}x{k}x{n}"),
                dev,
                &on(dev, &a).matmul(&on(dev, &b)).unwrap(),
                &a.matmul(&b).unwrap(),
                3e-5,
            );
        }
    }
    let a = rand(&[2, 3, 9, 11], 16);
    let b = rand(&[11, 6], 17);
    let bt = rand(&[3, 6, 11], 18).transpose(-1, -2).unwrap();
    let w = rand(&[6, 11], 19);
    let bias = rand(&[6], 20);
    for dev in devices() {
        check(
            "matmul batch × matrix",
            dev,
            &on(dev, &a).matmul(&on(dev, &b)).unwrap(),
            &a.matmul(&b).unwrap(),
            3e-5,
        );
        let dbt = on(dev, &rand(&[3, 6, 11], 18)).transpose(-1, -2).unwrap();
        check(
            "matmul broadcast batch, strided rhs",
            dev,
            &on(dev, &a).matmul(&dbt).unwrap(),
            &a.matmul(&bt).unwrap(),
            3e-5,
        );
        check(
            "linear",
            dev,
            &on(dev, &a).linear(&on(dev, &w), Some(&on(dev, &bias))).unwrap(),
            &a.linear(&w, Some(&bias)).unwrap(),
            3e-5,
        );
    }
}

#[test]
fn attention_with_and_without_segment_ids() {
    let (b, h, nq, nk, d) = (2, 3, 9, 11, 16);
    let q = rand(&[b, h, nq, d], 24);
    let k = rand(&[b, h, nk, d], 25);
    let v = rand(&[b, h, nk, 8], 26);
    // Packed sequences: queries and keys in segments 0..3 (every query has a key in its segment).
    let qs = Tensor::from_vec((0..b * nq).map(|i| (i % nq % 3) as i64).collect::<Vec<_>>(), &[b, nq]).unwrap();
    let ks = Tensor::from_vec((0..b * nk).map(|i| (i % nk % 3) as i64).collect::<Vec<_>>(), &[b, nk]).unwrap();
    for dev in devices() {
        let (dq, dk, dvv) = (on(dev, &q), on(dev, &k), on(dev, &v));
        let want = nvg_engine::sdpa(&q, &k, &v, None, None).unwrap();
        check(
            "sdpa",
            dev,
            &nvg_engine::sdpa(&dq, &dk, &dvv, None, None).unwrap(),
            &want,
            3e-5,
        );
        let want = nvg_engine::sdpa(&q, &k, &v, Some(0.3), Some((&qs, &ks))).unwrap();
        let got = nvg_engine::sdpa(&dq, &dk, &dvv, Some(0.3), Some((&on(dev, &qs), &on(dev, &ks)))).unwrap();
        check("sdpa with segment ids", dev, &got, &want, 3e-5);
        // Heads of a fused projection (strided q/k/v views), as the model calls it.
        let fused = rand(&[b, nq, 3 * h * d], 27);
        let head = |t: &Tensor, i: usize| {
            t.narrow(2, i * h * d, h * d)
                .unwrap()
                .unflatten(2, &[h, d])
                .unwrap()
                .permute(&[0, 2, 1, 3])
                .unwrap()
        };
        let df = on(dev, &fused);
        let want = nvg_engine::sdpa(&head(&fused, 0), &head(&fused, 1), &head(&fused, 2), None, None).unwrap();
        let got = nvg_engine::sdpa(&head(&df, 0), &head(&df, 1), &head(&df, 2), None, None).unwrap();
        check("sdpa on head views", dev, &got, &want, 3e-5);
        // The model's next step: [B, H, N, D] → [B, N, H·D].
        check(
            "sdpa output reshaped",
            dev,
            &got.transpose(1, 2).unwrap().reshape(&[b, nq, h * d]).unwrap(),
            &want.transpose(1, 2).unwrap().reshape(&[b, nq, h * d]).unwrap(),
            3e-5,
        );
    }
}

#[test]
fn tiled_and_baseline_attention_kernels_across_tile_boundaries() {
    use nvg_engine::{AttentionKernel, sdpa_with_kernel};
    // 70 queries (a second, partial query block) against 150 keys (two full K tiles and a partial one
    // whose length is not a multiple of the 8-key chunk), for every tiled head dim.
    let (b, h, nq, nk) = (2, 2, 70, 150);
    // Segments in runs of 5 keys: some 8-key chunks see no key of a query's segment.
    let qs = Tensor::from_vec((0..b * nq).map(|i| (i % nq % 4) as i64).collect::<Vec<_>>(), &[b, nq]).unwrap();
    let ks = Tensor::from_vec(
        (0..b * nk).map(|i| (i % nk / 5 % 4) as i64).collect::<Vec<_>>(),
        &[b, nk],
    )
    .unwrap();
    for d in [16, 32, 64] {
        let q = rand(&[b, h, nq, d], 80 + d as u64);
        let k = rand(&[b, h, nk, d], 81 + d as u64);
        let v = rand(&[b, h, nk, d], 82 + d as u64);
        let plain = nvg_engine::sdpa(&q, &k, &v, None, None).unwrap();
        let segmented = nvg_engine::sdpa(&q, &k, &v, Some(0.2), Some((&qs, &ks))).unwrap();
        for dev in devices() {
            let (dq, dk, dvv) = (on(dev, &q), on(dev, &k), on(dev, &v));
            let (dqs, dks) = (on(dev, &qs), on(dev, &ks));
            for kernel in [AttentionKernel::Tiled, AttentionKernel::Baseline] {
                let what = format!("{kernel:?} sdpa d={d}");
                let got = sdpa_with_kernel(&dq, &dk, &dvv, None, None, kernel).unwrap();
                check(&what, dev, &got, &plain, 3e-5);
                let got = sdpa_with_kernel(&dq, &dk, &dvv, Some(0.2), Some((&dqs, &dks)), kernel).unwrap();
                check(&format!("{what} with segment ids"), dev, &got, &segmented, 3e-5);
            }
        }
    }
    // The tiled kernel refuses head dims it has no instantiation for.
    let q = on(Device::CudaEmu, &rand(&[1, 1, 4, 8], 90));
    let e = sdpa_with_kernel(&q, &q, &q, None, None, AttentionKernel::Tiled)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tiled") && e.contains("8"), "{e}");
}

#[test]
fn bf16_storage_with_f32_compute() {
    // bf16 tensors on the device are widened for the kernels and the results rounded back, as on the
    // CPU: both sides see the same bf16 inputs and round the same f32 results, so they agree to one
    // bf16 step (2^-8 relative) where the f32 results straddle a rounding boundary.
    let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let x = bf(rand(&[3, 40], 50));
    let y = bf(rand(&[1, 40], 51));
    let w = bf(rand(&[40], 52));
    let m = bf(rand(&[40, 9], 53));
    for dev in devices() {
        let (dx, dy, dw, dm) = (on(dev, &x), on(dev, &y), on(dev, &w), on(dev, &m));
        assert_eq!(dx.dtype(), DType::BF16);
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            ("silu", dx.silu().unwrap(), x.silu().unwrap()),
            (
                "mul",
                dx.mul(&dy).unwrap(),
                x.mul(&dy.to_device(Device::Cpu).unwrap()).unwrap(),
            ),
            ("softmax", dx.softmax(-1).unwrap(), x.softmax(-1).unwrap()),
            (
                "rms_norm",
                dx.rms_norm(&dw, 1e-6).unwrap(),
                x.rms_norm(&w, 1e-6).unwrap(),
            ),
            ("matmul", dx.matmul(&dm).unwrap(), x.matmul(&m).unwrap()),
            (
                "cat",
                Tensor::cat(&[&dx, &dx], 0).unwrap(),
                Tensor::cat(&[&x, &x], 0).unwrap(),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got.dtype(), DType::BF16, "{name} keeps bf16 on {dev}");
            check(&format!("bf16 {name}"), dev, &got, &want, 1.0 / 256.0);
        }
        // Conversions on the device round like the CPU's.
        let f = rand(&[5, 7], 54);
        check(
            "f32 -> bf16",
            dev,
            &on(dev, &f).to_dtype(DType::BF16).unwrap(),
            &bf(f.clone()),
            0.0,
        );
        check(
            "bf16 -> f32",
            dev,
            &dx.to_dtype(DType::F32).unwrap(),
            &x.to_dtype(DType::F32).unwrap(),
            0.0,
        );
    }
}

#[test]
fn tensor_core_matmul_with_bf16_operands() {
    // The device runs mma.sync m16n8k16 (emulated per lane under CudaEmu); the CPU rounds the operands
    // to bf16 and runs its f32 GEMM: the same products, summed in another order.
    for (m, k, n) in [(1, 1, 1), (16, 16, 8), (7, 13, 5), (65, 70, 129)] {
        let a = rand(&[m, k], 40 + m as u64);
        let b = rand(&[k, n], 41 + n as u64);
        let want = a.matmul_bf16(&b).unwrap();
        for dev in devices() {
            let got = on(dev, &a).matmul_bf16(&on(dev, &b)).unwrap();
            check(&format!("matmul_bf16 {m}x{k}x{n}"), dev, &got, &want, 3e-5);
        }
        if k >= 13 {
            // The rounding is real: the bf16 product differs from the f32 one.
            let f32_result = a.matmul(&b).unwrap().to_f32_vec().unwrap();
            let differs = want
                .to_f32_vec()
                .unwrap()
                .iter()
                .zip(&f32_result)
                .any(|(x, y)| (x - y).abs() > 1e-4);
            assert!(
                differs,
                "matmul_bf16 {m}x{k}x{n} equals the f32 product: operands were not rounded"
            );
        }
    }
    let a = rand(&[2, 3, 20, 33], 42);
    let b = rand(&[33, 17], 43);
    for dev in devices() {
        check(
            "matmul_bf16 batched",
            dev,
            &on(dev, &a).matmul_bf16(&on(dev, &b)).unwrap(),
            &a.matmul_bf16(&b).unwrap(),
            3e-5,
        );
    }
    // The thread's matmul precision switch: plain matmuls and linears on the device then take the
    // tensor-core path (the CPU's stay f32); switching back restores the f32 results.
    use nvg_engine::cuda::{MatmulPrecision, set_matmul_precision};
    let (x, w) = (rand(&[5, 33], 44), rand(&[17, 33], 45));
    let want_bf16 = x.matmul_bf16(&w.transpose(0, 1).unwrap()).unwrap();
    for dev in devices() {
        let prev = set_matmul_precision(MatmulPrecision::Bf16);
        let got = on(dev, &x).linear(&on(dev, &w), None).unwrap();
        let cpu = x.linear(&w, None).unwrap();
        set_matmul_precision(prev);
        check("linear at bf16 precision", dev, &got, &want_bf16, 3e-5);
        check(
            "the CPU's linear stays f32",
            Device::Cpu,
            &cpu,
            &x.matmul(&w.transpose(0, 1).unwrap()).unwrap(),
            1e-6,
        );
        let back = on(dev, &x).linear(&on(dev, &w), None).unwrap();
        check("linear back at f32", dev, &back, &cpu, 3e-5);
    }
}

#[test]
fn embedding_gather_segment_mean_and_argmax() {
    let table = rand(&[11, 6], 28);
    let ids = Tensor::from_vec(vec![3i64, 0, 10, 3], &[4]).unwrap();
    let x = rand(&[2, 16, 5], 29);
    let labels = Tensor::from_vec((0..32).map(|i| ((i * 7) % 16 / 4) as i64).collect::<Vec<_>>(), &[2, 16]).unwrap();
    let mut scores = rand(&[7, 33], 30).to_f32_vec().unwrap();
    scores[5] = scores[4]; // a tie: the first index wins on both sides
    let scores = Tensor::from_vec(scores, &[7, 33]).unwrap();
    for dev in devices() {
        let (dt, di) = (on(dev, &table), on(dev, &ids));
        check(
            "embedding",
            dev,
            &dt.embedding(&di).unwrap(),
            &table.embedding(&ids).unwrap(),
            0.0,
        );
        check(
            "index_select dim 1",
            dev,
            &dt.index_select(1, &on(dev, &Tensor::from_vec(vec![5i64, 1], &[2]).unwrap()))
                .unwrap(),
            &table
                .index_select(1, &Tensor::from_vec(vec![5i64, 1], &[2]).unwrap())
                .unwrap(),
            0.0,
        );
        check(
            "segment_mean (with an empty segment)",
            dev,
            &on(dev, &x).segment_mean(&on(dev, &labels), 5).unwrap(),
            &x.segment_mean(&labels, 5).unwrap(),
            1e-6,
        );
        let got = on(dev, &scores).argmax(-1, false).unwrap();
        assert_eq!(got.device(), dev);
        assert_eq!(
            got.to_i64_vec().unwrap(),
            scores.argmax(-1, false).unwrap().to_i64_vec().unwrap(),
            "argmax on {dev}"
        );
        // Out-of-range ids are refused before any launch.
        let bad = on(dev, &Tensor::from_vec(vec![11i64], &[1]).unwrap());
        let e = dt.embedding(&bad).unwrap_err().to_string();
        assert!(e.contains("11"), "{e}");
    }
}

#[test]
fn categorical_sampling_and_random_numbers() {
    use nvg_engine::CategoricalSampling;
    use nvg_engine::rng::{Distribution, RngStream};
    // Rows of a vocabulary that is not a power of two (the kernel pads its sort), with ties and a
    // NaN-free range; every filter combination the sampler uses.
    let (rows, vocab) = (6, 45);
    let mut x = rand(&[rows, vocab], 70).to_f32_vec().unwrap();
    x[3] = x[7]; // a tie inside a row
    let logits = Tensor::from_vec(x, &[rows, vocab]).unwrap();
    let rng = RngStream::new(0x5eed, 3);
    let u = Tensor::random(&[rows], Distribution::Uniform, rng, 11).unwrap();
    let settings = [
        (1.0, 0, 1.0),
        (0.8, 0, 1.0),
        (1.0, 1, 1.0),
        (1.2, 5, 1.0),
        (1.0, 0, 0.5),
        (0.9, 10, 0.7),
        (1.0, 0, 1e-6),
        (1.0, vocab, 0.95),
    ];
    for dev in devices() {
        let (dl, du) = (on(dev, &logits), on(dev, &u));
        for (temperature, top_k, top_p) in settings {
            let s = CategoricalSampling {
                temperature,
                top_k,
                top_p,
            };
            let got = dl.sample_categorical(s, &du).unwrap();
            assert_eq!(got.device(), dev);
            assert_eq!(
                got.to_i64_vec().unwrap(),
                logits.sample_categorical(s, &u).unwrap().to_i64_vec().unwrap(),
                "sample_categorical {s:?} on {dev}"
            );
        }
        // Many uniforms over one row: every interval boundary of the distribution is crossed.
        let sweep_u: Vec<f32> = (0..64).map(|j| (j as f32 + 0.5) / 64.0).collect();
        let row = logits
            .narrow(0, 0, 1)
            .unwrap()
            .broadcast_as(&[64, vocab])
            .unwrap()
            .contiguous()
            .unwrap();
        let sweep_u = Tensor::from_vec(sweep_u, &[64]).unwrap();
        let s = CategoricalSampling {
            temperature: 0.5,
            top_k: 0,
            top_p: 1.0,
        };
        assert_eq!(
            on(dev, &row)
                .sample_categorical(s, &on(dev, &sweep_u))
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            row.sample_categorical(s, &sweep_u).unwrap().to_i64_vec().unwrap(),
            "uniform sweep on {dev}"
        );
        // Counter-based random numbers: uniforms bit for bit; normal / Gumbel within one f32 ulp (the
        // device's f64 log / cos may differ from the host libm in the last bit).
        for dist in [Distribution::Uniform, Distribution::Normal, Distribution::Gumbel] {
            let got = Tensor::random_on(&[3, 700], dist, rng, 1 << 33, dev).unwrap();
            assert_eq!(got.device(), dev);
            let want = Tensor::random(&[3, 700], dist, rng, 1 << 33)
                .unwrap()
                .to_f32_vec()
                .unwrap();
            for (i, (a, b)) in got.to_f32_vec().unwrap().iter().zip(&want).enumerate() {
                let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                let limit = if dist == Distribution::Uniform { 0 } else { 1 };
                assert!(ulps <= limit, "{dist:?} on {dev}: element {i}: {a} vs CPU {b}");
            }
        }
    }
}

#[test]
fn gather_and_scatter_add_along_every_dim() {
    // Index values from a fixed LCG; `index` smaller than the source outside `dim`, as PyTorch allows.
    let ids = |n: usize, bound: usize, seed: u64| -> Vec<i64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) % bound as u64) as i64
            })
            .collect()
    };
    let src = rand(&[4, 5, 6], 100);
    // A strided source (a transposed view) and the codes-per-token gather of the sampler (i64).
    let strided = rand(&[6, 5, 4], 101).permute(&[2, 1, 0]).unwrap();
    let codes = Tensor::from_vec(ids(2 * 8, 4096, 7), &[2, 8]).unwrap();
    let labels = Tensor::from_vec(ids(2 * 64, 8, 8), &[2, 64]).unwrap();
    for dev in devices() {
        for dim in 0..3 {
            let mut idims = vec![3, 4, 5];
            idims[dim] = 7;
            let index = Tensor::from_vec(ids(idims.iter().product(), src.dims()[dim], dim as u64), &idims).unwrap();
            let di = on(dev, &index);
            for (what, t) in [("gather", &src), ("gather of a strided view", &strided)] {
                let got = on(dev, t).gather(dim as isize, &di).unwrap();
                check(
                    &format!("{what} dim {dim}"),
                    dev,
                    &got,
                    &t.gather(dim as isize, &index).unwrap(),
                    0.0,
                );
            }
            let bf = src.to_dtype(DType::BF16).unwrap();
            let got = on(dev, &bf).gather(dim as isize, &di).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            check(
                &format!("bf16 gather dim {dim}"),
                dev,
                &got,
                &bf.gather(dim as isize, &index).unwrap(),
                0.0,
            );
            // scatter_add with repeated indices (sums of up to 7 values: f32 rounding only).
            let add = rand(&idims, 110 + dim as u64);
            let got = on(dev, &src).scatter_add(dim as isize, &di, &on(dev, &add)).unwrap();
            check(
                &format!("scatter_add dim {dim}"),
                dev,
                &got,
                &src.scatter_add(dim as isize, &index, &add).unwrap(),
                1e-6,
            );
        }
        // The destination is copied, never modified in place.
        let before = src.to_f32_vec().unwrap();
        let dsrc = on(dev, &src);
        let index = on(dev, &Tensor::from_vec(vec![0i64; 6], &[1, 1, 6]).unwrap());
        dsrc.scatter_add(0, &index, &on(dev, &rand(&[1, 1, 6], 120))).unwrap();
        assert_eq!(
            dsrc.to_f32_vec().unwrap(),
            before,
            "scatter_add modified its input on {dev}"
        );
        // i64: the sampler's codes-per-token gather and an exact integer scatter_add.
        let got = on(dev, &codes).gather(1, &on(dev, &labels)).unwrap();
        assert_eq!(got.device(), dev);
        assert_eq!(
            got.to_i64_vec().unwrap(),
            codes.gather(1, &labels).unwrap().to_i64_vec().unwrap()
        );
        let counts = Tensor::from_vec(vec![1i64 << 40; 2 * 8], &[2, 8]).unwrap();
        let ones = Tensor::from_vec(vec![-3i64; 2 * 64], &[2, 64]).unwrap();
        let got = on(dev, &counts)
            .scatter_add(1, &on(dev, &labels), &on(dev, &ones))
            .unwrap();
        assert_eq!(
            got.to_i64_vec().unwrap(),
            counts.scatter_add(1, &labels, &ones).unwrap().to_i64_vec().unwrap(),
            "i64 scatter_add on {dev}"
        );
        // Out-of-range values are refused before any launch, naming the value.
        let bad = on(dev, &Tensor::from_vec(vec![0i64, 9], &[1, 2]).unwrap());
        let e = on(dev, &codes).gather(1, &bad).unwrap_err().to_string();
        assert!(e.contains("gather") && e.contains('9'), "{e}");
    }
}

#[test]
fn conv2d_upsample_and_group_norm() {
    use nvg_engine::{ConvKernel, Padding};
    let x = rand(&[2, 3, 9, 7], 60);
    let w3 = rand(&[5, 3, 3, 3], 61);
    let w1 = rand(&[4, 3, 1, 1], 62);
    let bias = rand(&[5], 63);
    let asym = Padding {
        top: 0,
        bottom: 1,
        left: 0,
        right: 1,
    }; // the encoder's downsample padding
    for dev in devices() {
        let (dx, dw3, dw1, db) = (on(dev, &x), on(dev, &w3), on(dev, &w1), on(dev, &bias));
        for kernel in [ConvKernel::Direct, ConvKernel::Im2colGemm, ConvKernel::Auto] {
            let conv = |x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: Padding| {
                x.conv2d_with_kernel(w, b, stride, pad, kernel).unwrap()
            };
            check(
                &format!("{kernel:?} conv3x3 pad 1 bias"),
                dev,
                &conv(&dx, &dw3, Some(&db), 1, Padding::uniform(1)),
                &x.conv2d(&w3, Some(&bias), 1, Padding::uniform(1)).unwrap(),
                3e-5,
            );
            check(
                &format!("{kernel:?} conv3x3 stride 2 asymmetric pad"),
                dev,
                &conv(&dx, &dw3, None, 2, asym),
                &x.conv2d(&w3, None, 2, asym).unwrap(),
                3e-5,
            );
            check(
                &format!("{kernel:?} conv1x1"),
                dev,
                &conv(&dx, &dw1, None, 1, Padding::default()),
                &x.conv2d(&w1, None, 1, Padding::default()).unwrap(),
                3e-5,
            );
        }
        check(
            "upsample x2",
            dev,
            &dx.upsample_nearest2x().unwrap(),
            &x.upsample_nearest2x().unwrap(),
            0.0,
        );
        let g = rand(&[2, 6, 5, 4], 64)
            .mul_scalar(3.0)
            .unwrap()
            .add_scalar(1.0)
            .unwrap();
        let (gw, gb) = (rand(&[6], 65), rand(&[6], 66));
        let dg = on(dev, &g);
        check(
            "group_norm affine",
            dev,
            &dg.group_norm(3, Some(&on(dev, &gw)), Some(&on(dev, &gb)), 1e-6)
                .unwrap(),
            &g.group_norm(3, Some(&gw), Some(&gb), 1e-6).unwrap(),
            3e-5,
        );
        check(
            "group_norm",
            dev,
            &dg.group_norm(2, None, None, 1e-6).unwrap(),
            &g.group_norm(2, None, None, 1e-6).unwrap(),
            3e-5,
        );
    }
}

#[test]
fn ops_without_a_kernel_and_the_real_gpu_say_so() {
    let x = on(Device::CudaEmu, &rand(&[2, 3], 21));
    let e = x.argsort(-1, false).unwrap_err().to_string();
    assert!(e.contains("cuda-emu") && e.contains("to_device"), "{e}");
    let e = x.mul(&rand(&[2, 3], 22)).unwrap_err().to_string();
    assert!(e.contains("cpu") && e.contains("cuda-emu"), "mixing devices: {e}");
    if !nvg_engine::cuda::is_available(Device::Cuda(0)) {
        // Without the `cuda` feature, or without a driver or GPU: a clear error, never a panic.
        let e = rand(&[2], 23).to_device(Device::Cuda(0)).unwrap_err().to_string();
        assert!(
            e.contains("to_device") && e.contains("cuda:0") && e.contains("CudaEmu"),
            "{e}"
        );
    }
}
