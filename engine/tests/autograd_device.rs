//! Every backward rule on a device against the same graph on the CPU: gradients of `Σ f(x)·r` (a fixed
//! projection `r`) computed with the inputs on `Device::CudaEmu` — the CUDA kernels' host build, through
//! the same launch path as a GPU — and on `Device::Cuda(0)` where there is one, must stay on the device
//! and match the CPU's. The CPU rules are
//! checked against finite differences in `autograd.rs`; here the device rules (`autograd/device.rs`,
//! `kernels/cuda/training.cu`, the tape's device accumulation) are checked against them.
//!
//! Tolerance: the CPU rules keep row statistics in f64, the device ones compute in f32, and atomic
//! adds sum repeated indices in another order, so they agree to a few f32 roundings of the result:
//! `|device − cpu| ≤ 1e-5 + 1e-4·|cpu|` (a wrong rule is off by O(1)).

mod common;

use common::*;
use nvg_engine::{DType, Device, Padding, Result, Tensor, Unary, rope_tables, sdpa};

/// `CudaEmu`, and the GPU where the build and machine can drive one (the GPU check, tools/gpu-check.sh).
fn devices() -> Vec<Device> {
    let mut v = vec![Device::CudaEmu];
    match nvg_engine::cuda::check_device("autograd", Device::Cuda(0)) {
        Ok(()) => v.push(Device::Cuda(0)),
        Err(e) => eprintln!("skipping Device::Cuda(0): {e}"),
    }
    v
}

/// Gradients of `Σ f(inputs)·r` with respect to every input, with everything on `dev`.
fn grads_on(dev: Device, inputs: &[Tensor], f: &impl Fn(&[Tensor], Device) -> Result<Tensor>) -> Vec<Vec<f32>> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_device(dev).unwrap().requires_grad())
        .collect();
    let y = f(&leaves, dev).expect("forward");
    let r = rand(y.dims(), 0x5EED_CAFE).to_device(dev).unwrap();
    let loss = y.mul(&r).unwrap().reshape(&[y.numel()]).unwrap().sum(0, false).unwrap();
    let grads = loss.backward().expect("backward");
    leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let g = grads.get(l).unwrap_or_else(|| panic!("no gradient for input {i}"));
            assert_eq!(g.device(), dev, "the gradient of input {i} left the device");
            assert_eq!(g.dims(), l.dims());
            vals(g)
        })
        .collect()
}

/// Asserts that the device's gradients equal the CPU's (see the module docs).
#[track_caller]
fn same_on_device(what: &str, inputs: &[Tensor], f: impl Fn(&[Tensor], Device) -> Result<Tensor>) {
    let want = grads_on(Device::Cpu, inputs, &f);
    for dev in devices() {
        let got = grads_on(dev, inputs, &f);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(g, w, 1e-5, 1e-4, &format!("{what}: gradient of input {i} on {dev}"));
        }
    }
}

fn on(dev: Device, t: &Tensor) -> Tensor {
    t.to_device(dev).unwrap()
}

fn ids(v: &[i64], dims: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), dims).unwrap()
}

fn scaled(dims: &[usize], seed: u64, s: f32) -> Tensor {
    rand(dims, seed).mul_scalar(s).unwrap()
}

/// Values in [0.5, 1.5).
fn positive(dims: &[usize], seed: u64) -> Tensor {
    rand(dims, seed).mul_scalar(0.5).unwrap().add_scalar(1.0).unwrap()
}

#[test]
fn every_unary_op_and_scalar_op() {
    let dims = [3, 37];
    let ops = [
        Unary::Neg,
        Unary::Abs,
        Unary::Exp,
        Unary::Sqr,
        Unary::Tanh,
        Unary::Sin,
        Unary::Cos,
        Unary::Sigmoid,
        Unary::Silu,
        Unary::GeluTanh,
        Unary::Relu,
    ];
    for (i, op) in ops.into_iter().enumerate() {
        same_on_device(op.name(), &[scaled(&dims, 31 + i as u64, 3.0)], |t, _| t[0].unary(op));
    }
    for (i, op) in [Unary::Log, Unary::Sqrt, Unary::Rsqrt, Unary::Recip]
        .into_iter()
        .enumerate()
    {
        same_on_device(op.name(), &[positive(&dims, 50 + i as u64)], |t, _| t[0].unary(op));
    }
    same_on_device("silu of a strided view", &[rand_strided(&[5, 3], 46)], |t, _| {
        t[0].silu()
    });
    same_on_device("affine", &[rand(&dims, 60)], |t, _| t[0].affine(-1.5, 0.25));
    same_on_device("div_scalar", &[rand(&dims, 61)], |t, _| t[0].div_scalar(3.0));
    same_on_device("powf", &[positive(&dims, 62)], |t, _| t[0].powf(2.5));
    same_on_device("clamp", &[scaled(&dims, 63, 2.0)], |t, _| t[0].clamp(-0.5, 0.75));
}

#[test]
fn binary_ops_with_broadcasting_and_ties() {
    let (da, db) = ([3, 1, 5], [4, 1]);
    same_on_device("add", &[rand(&da, 70), rand(&db, 71)], |t, _| t[0].add(&t[1]));
    same_on_device("sub", &[rand(&da, 72), rand(&db, 73)], |t, _| t[0].sub(&t[1]));
    same_on_device("mul", &[rand(&da, 74), rand(&db, 75)], |t, _| t[0].mul(&t[1]));
    same_on_device("div", &[rand(&da, 76), positive(&db, 77)], |t, _| t[0].div(&t[1]));
    same_on_device("maximum", &[rand(&da, 78), rand(&db, 79)], |t, _| t[0].maximum(&t[1]));
    same_on_device("minimum", &[rand(&da, 80), rand(&db, 81)], |t, _| t[0].minimum(&t[1]));
    // Every element a tie: the gradient splits ½/½.
    same_on_device("maximum(x, x)", &[rand(&[4, 3], 82)], |t, _| t[0].maximum(&t[0]));
    same_on_device("x·x − x", &[rand(&[3, 7], 83)], |t, _| t[0].mul(&t[0])?.sub(&t[0]));
    same_on_device(
        "mul by a rank-0 tensor",
        &[rand(&[2, 3], 84), Tensor::scalar(0.7)],
        |t, _| t[0].mul(&t[1]),
    );
}

#[test]
fn matmul_and_linear() {
    same_on_device(
        "matmul, batched with a broadcast operand",
        &[rand(&[2, 3, 5, 4], 90), rand(&[4, 6], 91)],
        |t, _| t[0].matmul(&t[1]),
    );
    same_on_device(
        "matmul of a transposed view",
        &[rand(&[2, 4, 5], 92).transpose(1, 2).unwrap(), rand(&[2, 4, 3], 93)],
        |t, _| t[0].matmul(&t[1]),
    );
    same_on_device(
        "linear with bias",
        &[rand(&[2, 3, 7], 94), rand(&[5, 7], 95), rand(&[5], 96)],
        |t, _| t[0].linear(&t[1], Some(&t[2])),
    );
    same_on_device(
        "linear without bias",
        &[rand(&[4, 7], 97), rand(&[5, 7], 98)],
        |t, _| t[0].linear(&t[1], None),
    );
}

#[test]
fn layer_rms_and_group_norms() {
    let x = || scaled(&[4, 13], 100, 2.0);
    let (w, b) = (|| positive(&[13], 101), || rand(&[13], 102));
    same_on_device("layer_norm with weight and bias", &[x(), w(), b()], |t, _| {
        t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5)
    });
    same_on_device("layer_norm without affine", &[x()], |t, _| {
        t[0].layer_norm(None, None, 1e-5)
    });
    same_on_device(
        "layer_norm of a strided view, large eps",
        &[rand_strided(&[3, 2, 7], 103), rand(&[7], 104)],
        |t, _| t[0].layer_norm(Some(&t[1]), None, 0.1),
    );
    same_on_device("rms_norm", &[rand(&[3, 2, 11], 105), positive(&[11], 106)], |t, _| {
        t[0].rms_norm(&t[1], 1e-6)
    });
    let gx = || scaled(&[2, 6, 3, 5], 107, 2.0);
    same_on_device(
        "group_norm with weight and bias",
        &[gx(), positive(&[6], 108), rand(&[6], 109)],
        |t, _| t[0].group_norm(3, Some(&t[1]), Some(&t[2]), 1e-5),
    );
    same_on_device("group_norm without affine", &[gx()], |t, _| {
        t[0].group_norm(2, None, None, 1e-5)
    });
}

#[test]
fn attention_and_rope() {
    let q = rand(&[2, 5, 3, 4], 110).transpose(1, 2).unwrap();
    let (k, v) = (scaled(&[2, 3, 7, 4], 111, 1.5), rand(&[2, 3, 7, 6], 112));
    same_on_device("sdpa, cross-attention, scale 0.7", &[q, k, v], |t, _| {
        sdpa(&t[0], &t[1], &t[2], Some(0.7), None)
    });
    let pos = rand(&[5, 2], 113).mul_scalar(4.0).unwrap();
    let (cos, sin) = rope_tables(&pos, &[2, 4], 100.0).unwrap();
    same_on_device("rope", &[rand(&[2, 3, 5, 6], 114)], |t, dev| {
        t[0].rope(&on(dev, &cos), &on(dev, &sin))
    });
}

#[test]
fn convolution_and_upsampling() {
    let (x, w, b) = (
        rand(&[2, 3, 6, 5], 120),
        scaled(&[4, 3, 3, 3], 121, 0.5),
        rand(&[4], 122),
    );
    same_on_device(
        "conv2d stride 1, padding 1",
        &[x.clone(), w.clone(), b.clone()],
        |t, _| t[0].conv2d(&t[1], Some(&t[2]), 1, Padding::uniform(1)),
    );
    // Stride 2 (the input gradient through col2im), asymmetric padding, and padding as wide as the kernel
    // (no stride-1 transposed convolution exists for it).
    same_on_device("conv2d stride 2", &[x.clone(), w.clone(), b.clone()], |t, _| {
        t[0].conv2d(&t[1], Some(&t[2]), 2, Padding::uniform(1))
    });
    let asym = Padding {
        top: 0,
        bottom: 2,
        left: 1,
        right: 0,
    };
    same_on_device(
        "conv2d stride 2, asymmetric padding",
        &[x.clone(), w.clone()],
        |t, _| t[0].conv2d(&t[1], None, 2, asym),
    );
    same_on_device(
        "conv2d stride 1, padding 3 on a 3×3 kernel",
        &[x.clone(), w.clone()],
        |t, _| t[0].conv2d(&t[1], None, 1, Padding::uniform(3)),
    );
    same_on_device(
        "upsample then conv2d 1×1",
        &[rand(&[2, 3, 2, 3], 123), scaled(&[2, 3, 1, 1], 124, 0.5)],
        |t, _| t[0].upsample_nearest2x()?.conv2d(&t[1], None, 1, Padding::uniform(0)),
    );
}

#[test]
fn index_ops_and_segment_means() {
    // Segment 3 is empty in batch 0, segment 0 in batch 1.
    let labels = ids(&[0, 2, 1, 0, 2, 2, 0, 1, 1, 3, 2, 3, 1, 2], &[2, 7]);
    same_on_device("segment_mean", &[rand(&[2, 7, 3], 130)], |t, dev| {
        t[0].segment_mean(&on(dev, &labels), 4)
    });
    same_on_device(
        "index_select dim 1, repeated ids",
        &[rand(&[2, 6, 3], 131)],
        |t, dev| t[0].index_select(1, &on(dev, &ids(&[4, 0, 4, 2, 4], &[5]))),
    );
    let tok = ids(&[5, 1, 1, 0, 5, 5], &[2, 3]);
    same_on_device("embedding", &[rand(&[6, 4], 132)], |t, dev| {
        t[0].embedding(&on(dev, &tok))
    });
    let index = ids(&[4, 0, 4, 1, 2, 2, 2, 3, 0, 1, 3, 3], &[3, 4]);
    same_on_device("gather dim 1", &[rand(&[3, 5], 133)], |t, dev| {
        t[0].gather(1, &on(dev, &index))
    });
}

#[test]
fn reductions_softmax_and_views() {
    let x = || rand_strided(&[3, 4, 5], 140);
    same_on_device("sum dim 0", &[x()], |t, _| t[0].sum(0, false));
    same_on_device("mean dim 1 keepdim", &[x()], |t, _| t[0].mean(1, true));
    same_on_device("softmax last dim", &[scaled(&[3, 7], 141, 3.0)], |t, _| {
        t[0].softmax(-1)
    });
    same_on_device("log_softmax first dim", &[scaled(&[4, 5], 142, 3.0)], |t, _| {
        t[0].log_softmax(0)
    });
    // A fused projection split into narrowed views: each view's gradient is added into its slice.
    same_on_device("split, permute, cat", &[rand(&[2, 9, 4], 143)], |t, _| {
        let p = t[0].split(1, &[2, 3, 4])?;
        Tensor::cat(
            &[
                &p[2].permute(&[0, 2, 1])?.sum(-1, true)?,
                &p[0].mean(1, true)?.transpose(1, 2)?,
            ],
            1,
        )
    });
    same_on_device("chunk with an unused chunk", &[rand(&[3, 6], 144)], |t, _| {
        let c = t[0].chunk(3, -1)?;
        c[0].mul(&c[2])
    });
    same_on_device("broadcast_as, bf16 round trip", &[rand(&[3, 1], 145)], |t, _| {
        t[0].broadcast_as(&[2, 3, 4])?
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F32)
    });
}

#[test]
fn transformer_block_end_to_end() {
    let (b, n, c, h) = (2usize, 5usize, 8usize, 2usize);
    let d = c / h;
    let pos = rand(&[n, 2], 150).mul_scalar(4.0).unwrap();
    let (cos, sin) = rope_tables(&pos, &[2, 2], 100.0).unwrap();
    let inputs = [
        rand(&[b, n, c], 151),
        positive(&[c], 152),
        scaled(&[c], 153, 0.1),
        scaled(&[3 * c, c], 154, 0.5),
        scaled(&[3 * c], 155, 0.1),
        positive(&[d], 156),
        positive(&[d], 157),
        scaled(&[c, c], 158, 0.5),
        scaled(&[c], 159, 0.1),
        positive(&[c], 160),
        scaled(&[2 * c, c], 161, 0.5),
        scaled(&[2 * c], 162, 0.1),
        scaled(&[c, 2 * c], 163, 0.5),
        scaled(&[c], 164, 0.1),
    ];
    same_on_device("transformer block", &inputs, |t, dev| {
        transformer_block(t, &on(dev, &cos), &on(dev, &sin), h)
    });
}
