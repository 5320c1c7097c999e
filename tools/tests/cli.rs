//! The `nvg` program end to end: help text, `inspect`, `bench engine` and error reporting.

use nvg_engine::{DType, Device, Tensor};
use std::path::PathBuf;

fn nvg(args: &[&str]) -> (bool, String, String) {
    nvg_testkit::run_program(env!("CARGO_BIN_EXE_nvg"), args)
}

fn temp_dir(name: &str) -> PathBuf {
    nvg_testkit::fresh_dir("cli", name)
}

#[test]
fn help_lists_every_subcommand_and_each_has_its_own_help() {
    let (ok, out, _) = nvg(&["--help"]);
    assert!(ok);
    for sub in ["inspect", "bench"] {
        assert!(out.contains(sub), "--help does not mention {sub}:\n{out}");
    }
    for args in [
        &["inspect", "--help"][..],
        &["bench", "--help"],
        &["bench", "engine", "--help"],
    ] {
        let (ok, out, err) = nvg(args);
        assert!(ok && out.contains("Usage"), "{args:?}: {out}{err}");
    }
    let (_, out, _) = nvg(&["bench", "engine", "--help"]);
    for flag in [
        "--threads",
        "--rounds",
        "--iters",
        "--python",
        "--no-reference",
        "--filter",
        "--out",
    ] {
        assert!(out.contains(flag), "bench engine --help does not explain {flag}");
    }
}

#[test]
fn inspect_lists_tensors_dtypes_shapes_and_the_parameter_count() {
    let dir = temp_dir("inspect");
    let path = dir.join("m.safetensors");
    let w = Tensor::zeros(&[3, 4], DType::F32, Device::Cpu).unwrap();
    let e = Tensor::zeros(&[5], DType::BF16, Device::Cpu).unwrap();
    nvg_engine::io::safetensors::save(&path, [("layer.weight", &w), ("embed", &e)], None).unwrap();
    let (ok, out, err) = nvg(&["inspect", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("layer.weight") && out.contains("F32") && out.contains("[3, 4]"),
        "{out}"
    );
    assert!(
        out.contains("embed") && out.contains("BF16") && out.contains("[5]"),
        "{out}"
    );
    assert!(out.contains("2 tensors, 17 parameters"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_of_a_missing_or_corrupt_file_fails_with_the_path_in_the_message() {
    let dir = temp_dir("inspect-bad");
    let missing = dir.join("nope.safetensors");
    let (ok, _, err) = nvg(&["inspect", missing.to_str().unwrap()]);
    assert!(!ok && err.contains("nope.safetensors"), "{err}");
    // The engine's I/O error names the path and the OS error once, also through anyhow's `{:#}` chain.
    let Err(e) = nvg_engine::io::safetensors::SafetensorsFile::open(&missing) else {
        panic!("opened a missing file")
    };
    let e = anyhow::Error::from(e);
    let msg = format!("{e:#}");
    assert!(msg.contains("nope.safetensors"), "{msg}");
    assert_eq!(msg.matches("(os error 2)").count(), 1, "{msg}");
    let corrupt = dir.join("bad.safetensors");
    std::fs::write(&corrupt, b"not a safetensors file at all").unwrap();
    let (ok, _, err) = nvg(&["inspect", corrupt.to_str().unwrap()]);
    assert!(
        !ok && err.contains("bad.safetensors") && err.contains("safetensors"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_engine_runs_a_filtered_case_and_writes_the_table() {
    let dir = temp_dir("bench");
    let table = dir.join("t.md");
    let (ok, out, err) = nvg(&[
        "bench",
        "engine",
        "--no-reference",
        "--rounds",
        "1",
        "--iters",
        "1",
        "--threads",
        "1",
        "--filter",
        "512->512",
        "--out",
        table.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("conv3x3 512->512 16x16") && !out.contains("linear"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&table).unwrap(), out);
    let (ok, _, err) = nvg(&["bench", "engine", "--rounds", "0"]);
    assert!(!ok && err.contains("--rounds"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_and_inspect_recognise_the_official_checkpoint() {
    let fx = nvg_testkit::Fixtures::open();
    let dir = temp_dir("convert");
    let out = dir.join("g.safetensors");
    let ckpt = fx.path("generator_lightning.ckpt");
    let (ok, stdout, stderr) = nvg(&[
        "convert",
        "--input",
        ckpt.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        ok && stdout.contains("NVG generator (raw weights)") && stdout.contains("kept 59 tensors"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, _) = nvg(&["inspect", out.to_str().unwrap()]);
    assert!(
        ok && stdout.contains("kind: NVG generator — depth 2") && stdout.contains("nvg.weights = raw"),
        "{stdout}"
    );
    let (ok, stdout, _) = nvg(&["inspect", ckpt.to_str().unwrap()]);
    assert!(ok && stdout.contains("convert it with `nvg convert`"), "{stdout}");
    // A safetensors input (e.g. an `nvg train` checkpoint) converts too; --dtype sets the storage.
    let half = dir.join("g-bf16.safetensors");
    let (ok, stdout, stderr) = nvg(&[
        "convert",
        "--input",
        out.to_str().unwrap(),
        "--output",
        half.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(ok && stdout.contains("kept 59 tensors"), "{stdout}{stderr}");
    let (ok, stdout, _) = nvg(&["inspect", half.to_str().unwrap()]);
    assert!(ok && stdout.contains(" BF16 ") && !stdout.contains(" F32 "), "{stdout}");
    assert!(std::fs::metadata(&half).unwrap().len() < std::fs::metadata(&out).unwrap().len() * 6 / 10);
    let (ok, _, stderr) = nvg(&[
        "convert",
        "--input",
        out.to_str().unwrap(),
        "--output",
        half.to_str().unwrap(),
        "--dtype",
        "int8",
    ]);
    assert!(!ok && stderr.contains("expected f32, bf16 or f16"), "{stderr}");
    // A .ckpt that is not a PyTorch archive.
    let fake = dir.join("fake.ckpt");
    std::fs::copy(fx.path("generator.safetensors"), &fake).unwrap();
    let (ok, _, stderr) = nvg(&[
        "convert",
        "--input",
        fake.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("ZIP"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
