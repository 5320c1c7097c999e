//! `nvg generate` end to end with the fixture generator and tokenizer: every image is a pure function of
//! (seed, class, index) — byte-identical PNGs at any batch size and shard split — the job resumes after an
//! interruption, `--npz` holds exactly the PNGs, and wrong use is refused with a clear message.
//!
//! The jobs are tiny (two flow steps, a handful of images) to keep CI fast; the sampler's numerics are
//! covered by the parity tests.

use nvg::image::read_image;
use nvg_engine::io::zip::ZipArchive;
use nvg_testkit::Fixtures;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn nvg(args: &[&str]) -> (bool, String, String) {
    nvg_testkit::run_program(env!("CARGO_BIN_EXE_nvg"), args)
}

fn temp_dir(name: &str) -> PathBuf {
    nvg_testkit::fresh_dir("generate", name)
}

/// `nvg generate` on the fixture models with a tiny job; `extra` holds `--flag value` pairs that add to
/// or replace the job's defaults (an empty value passes a switch such as `--progressive` alone).
fn generate(fx: &Fixtures, out: &Path, extra: &[&str]) -> (bool, String) {
    let generator = fx.path("generator.safetensors");
    let tokenizer = fx.path("tokenizer.safetensors");
    let mut flags: Vec<(&str, &str)> = vec![
        ("--generator", generator.to_str().unwrap()),
        ("--tokenizer", tokenizer.to_str().unwrap()),
        ("--classes", "3,7"),
        ("--per-class", "2"),
        ("--seed", "11"),
        ("--structure-steps", "2"),
        ("--out", out.to_str().unwrap()),
    ];
    for pair in extra.chunks(2) {
        match flags.iter_mut().find(|(f, _)| *f == pair[0]) {
            Some(slot) => slot.1 = pair[1],
            None => flags.push((pair[0], pair[1])),
        }
    }
    let mut args = vec!["generate"];
    args.extend(flags.iter().flat_map(|&(f, v)| [f, v]).filter(|a| !a.is_empty()));
    let (ok, stdout, stderr) = nvg(&args);
    (ok, format!("{stdout}{stderr}"))
}

/// The PNGs of a directory by name (other files ignored).
fn pngs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

const JOB: [&str; 4] = ["0003_00000.png", "0003_00001.png", "0007_00000.png", "0007_00001.png"];

#[test]
fn images_are_identical_at_any_batch_size_and_shard_split_and_the_job_resumes() {
    let fx = Fixtures::open();
    let a = temp_dir("batch3");
    let npz = a.join("samples.npz");
    let grid = a.join("grid.png");
    let (ok, log) = generate(
        &fx,
        &a,
        &[
            "--batch",
            "3",
            "--npz",
            npz.to_str().unwrap(),
            "--grid",
            grid.to_str().unwrap(),
        ],
    );
    assert!(ok, "{log}");
    let reference = pngs(&a);
    for name in JOB {
        assert!(
            reference.contains_key(name),
            "{name} missing after the batch-3 run:\n{log}"
        );
    }
    assert!(log.contains("4 to generate"), "{log}");
    assert!(grid.exists());
    // Different seeds of the job give different images (the test would pass trivially otherwise).
    assert_ne!(reference["0003_00000.png"], reference["0003_00001.png"]);
    assert_ne!(reference["0003_00000.png"], reference["0007_00000.png"]);

    // The same job one image at a time, split over two shards into one directory.
    let b = temp_dir("shards");
    let (ok, log0) = generate(&fx, &b, &["--batch", "1", "--shard", "0/2"]);
    assert!(ok && log0.contains("2 in shard 0/2"), "{log0}");
    assert_eq!(pngs(&b).len(), 2, "shard 0/2 should write half the job");
    let (ok, log1) = generate(&fx, &b, &["--batch", "1", "--shard", "1/2"]);
    assert!(ok, "{log1}");
    let sharded = pngs(&b);
    for name in JOB {
        assert!(
            sharded[name] == reference[name],
            "{name} differs between batch 3 and sharded batch 1"
        );
    }

    // An interrupted run: two images gone, a temp file left behind by a killed write.
    std::fs::remove_file(a.join(JOB[1])).unwrap();
    std::fs::remove_file(a.join(JOB[2])).unwrap();
    let leftover = a.join(format!(".{}.tmp-999-0", JOB[1]));
    std::fs::write(&leftover, b"half a png").unwrap();
    let before: BTreeMap<_, _> = JOB
        .iter()
        .filter_map(|n| std::fs::metadata(a.join(n)).ok().map(|m| (*n, m.modified().unwrap())))
        .collect();
    let (ok, log) = generate(&fx, &a, &["--batch", "2"]);
    assert!(ok && log.contains("2 already there, 2 to generate"), "{log}");
    let resumed = pngs(&a);
    for name in JOB {
        assert!(resumed[name] == reference[name], "{name} differs after resuming");
    }
    for (name, modified) in before {
        assert_eq!(
            std::fs::metadata(a.join(name)).unwrap().modified().unwrap(),
            modified,
            "{name} existed and should not have been rewritten"
        );
    }

    // The npz batch holds the job's images in job order, equal to the PNGs.
    let zip = ZipArchive::open(&npz).unwrap();
    let npy = zip.get("arr_0.npy").expect("arr_0.npy in the npz");
    assert!(npy.starts_with(b"\x93NUMPY"), "not an .npy entry");
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + header_len]).unwrap();
    let first = read_image(&a.join(JOB[0])).unwrap();
    let (h, w) = (first.height, first.width);
    assert!(header.contains("'descr': '|u1'"), "{header}");
    assert!(header.contains(&format!("'shape': (4, {h}, {w}, 3)")), "{header}");
    let data = &npy[10 + header_len..];
    assert_eq!(data.len(), 4 * h * w * 3);
    for (k, name) in JOB.iter().enumerate() {
        let img = read_image(&a.join(name)).unwrap();
        assert!(
            img.data == data[k * h * w * 3..(k + 1) * h * w * 3],
            "npz image {k} is not {name}"
        );
    }

    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn a_killed_job_completes_on_rerun_without_redoing_finished_images() {
    let fx = Fixtures::open();
    let dir = temp_dir("killed");
    let generator = fx.path("generator.safetensors");
    let tokenizer = fx.path("tokenizer.safetensors");
    let args = [
        "generate",
        "--generator",
        generator.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--classes",
        "0-3",
        "--per-class",
        "2",
        "--structure-steps",
        "2",
        "--batch",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nvg"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while pngs(&dir).is_empty() && start.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished: BTreeMap<String, std::time::SystemTime> = pngs(&dir)
        .keys()
        .map(|n| (n.clone(), std::fs::metadata(dir.join(n)).unwrap().modified().unwrap()))
        .collect();
    assert!(!finished.is_empty(), "no image within 120 s");
    let (ok, out, err) = nvg(&args);
    assert!(ok, "{out}{err}");
    assert!(err.contains(&format!("{} already there", finished.len())), "{err}");
    assert_eq!(pngs(&dir).len(), 8, "the re-run should complete the job");
    for (name, modified) in finished {
        let now = std::fs::metadata(dir.join(&name)).unwrap().modified().unwrap();
        assert_eq!(
            now, modified,
            "{name} was finished before the kill and should not be redone"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn progressive_strips_sit_beside_the_images() {
    let fx = Fixtures::open();
    let dir = temp_dir("progressive");
    let generator = fx.path("generator.safetensors");
    let tokenizer = fx.path("tokenizer.safetensors");
    let (ok, out, err) = nvg(&[
        "generate",
        "--generator",
        generator.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--classes",
        "5",
        "--structure-steps",
        "1",
        "--cfg",
        "1",
        "--structure-cfg",
        "1",
        "--progressive",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let image = read_image(&dir.join("0005_00000.png")).unwrap();
    let strip = read_image(&dir.join("0005_00000_stages.png")).unwrap();
    let stages = fx.manifest["generator_config"]["params"]["num_tokens"]
        .as_array()
        .unwrap()
        .len();
    // One column per stage, two rows (decoded canvas over structure map), tiles of the image's size.
    assert!(
        strip.width >= stages * image.width && strip.height >= 2 * image.height,
        "{}x{}",
        strip.width,
        strip.height
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_use_is_refused_with_a_clear_message() {
    let fx = Fixtures::open();
    let dir = temp_dir("refused");
    // An out-of-range class, a bad shard, a bad schedule: refused before anything is generated.
    for (flags, expect) in [
        (&["--classes", "3,5000"][..], "class 5000 is out of range"),
        (&["--shard", "2/2"], "--shard 2/2"),
        (&["--shard", "x"], "expected i/n"),
        (&["--matmul", "fp8"], "expected f32 or bf16"),
        (&["--cfg", "1-abc"], "--cfg"),
        (&["--batch", "0"], "at least 1"),
        // A job too large to list (2 classes × 5 M + 1) or whose size overflows: refused, not an abort.
        (
            &["--per-class", "5000001"],
            "more than the 10000000 images one job holds",
        ),
        (
            &["--per-class", "18446744073709551615"],
            "more than the 10000000 images one job holds",
        ),
        (
            &["--structure-steps", "100000000000"],
            "--structure-steps 100000000000 is more than 10000",
        ),
        (&["--classes", "3,1-4"], "class 3 is listed twice"),
        // Sampler settings are checked before job.json is written: the same folder takes the fixed flags.
        (&["--top-p", "0"], "top-p must be in (0, 1]"),
        (&["--temperature", "NaN"], "temperature must be >= 0"),
        (
            &["--cfg", "1,-1,1,1,1,1,1,1,1"],
            "content CFG scale must be a finite number >= 0",
        ),
        (
            &["--structure-cfg", "1,1,-2,1,1,1,1,1,1"],
            "structure CFG scale must be a finite number >= 0",
        ),
        (&["--device", "gpu"], "expected cpu, cuda, cuda:N or cuda-emu"),
        (&["--best-of", "0"], "--best-of 0 must be in 1..=1024"),
        (
            &["--best-of", "3", "--cfg", "1"],
            "class evidence needs content guidance",
        ),
        (&["--evidence-stages", "2"], "ranks the candidates of --best-of N"),
        (
            &["--best-of", "3", "--evidence-stages", "0"],
            "--evidence-stages 0 would rank by nothing",
        ),
        (
            &["--best-of", "3", "--evidence-stages", "10"],
            "--evidence-stages 10: the generator has 9 stages",
        ),
    ] {
        let (ok, log) = generate(&fx, &dir, flags);
        assert!(!ok && log.contains(expect), "{flags:?}: expected `{expect}` in:\n{log}");
        assert!(pngs(&dir).is_empty(), "{flags:?} wrote images");
        assert!(
            !dir.join("job.json").exists(),
            "{flags:?} claimed the folder for its job"
        );
    }
    // A CUDA device this build or machine cannot drive: a clear error, not a panic or a CPU fallback.
    let (ok, log) = generate(&fx, &dir, &["--device", "cuda:0"]);
    assert!(!ok && log.contains("cuda:0"), "{log}");
    assert!(pngs(&dir).is_empty(), "--device cuda:0 wrote images");
    // --npz from one shard of an unfinished job.
    let npz = dir.join("x.npz");
    let (ok, log) = generate(&fx, &dir, &["--shard", "0/4", "--npz", npz.to_str().unwrap()]);
    assert!(!ok && log.contains("not in") && log.contains("other shards"), "{log}");
    assert!(!npz.exists());
    // The directory now belongs to seed 11's job; another seed is refused instead of mixing images.
    let (ok, log) = generate(&fx, &dir, &["--shard", "0/4", "--seed", "12"]);
    assert!(!ok && log.contains("job.json"), "{log}");
    // A tokenizer that is not a tokenizer.
    let (ok, out, err) = nvg(&[
        "generate",
        "--generator",
        fx.path("generator.safetensors").to_str().unwrap(),
        "--tokenizer",
        fx.path("generator.safetensors").to_str().unwrap(),
        "--classes",
        "1",
        "--out",
        dir.join("other").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("tokenizer"), "{out}{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn best_of_writes_one_of_its_candidates_and_best_of_1_is_the_plain_job() {
    let fx = Fixtures::open();
    // Seed 12: the fixture generator's random weights barely tell classes apart (evidence ~0.005), and at
    // the suite's seed 11 all four images happen to keep candidate 0; at 12 they keep 1, 2, 1 and 0.
    let seed = "12";
    let plain = temp_dir("best-of-plain");
    let (ok, log) = generate(&fx, &plain, &["--seed", seed]);
    assert!(ok, "{log}");
    let one = temp_dir("best-of-1");
    let (ok, log) = generate(&fx, &one, &["--seed", seed, "--best-of", "1"]);
    assert!(ok, "{log}");
    assert_eq!(pngs(&one), pngs(&plain), "--best-of 1 must draw the plain job's images");
    assert_eq!(
        std::fs::read(one.join("job.json")).unwrap(),
        std::fs::read(plain.join("job.json")).unwrap(),
        "--best-of 1 is the plain job, so its record is too"
    );

    // Candidate j is the plain job's image at candidate_seed(12, j).
    let candidates: Vec<BTreeMap<String, Vec<u8>>> = (0..3)
        .map(|j| {
            let seed = nvg_tools::generate::candidate_seed(12, j).to_string();
            let dir = temp_dir(&format!("best-of-candidate-{j}"));
            let (ok, log) = generate(&fx, &dir, &["--seed", &seed, "--progressive", ""]);
            assert!(ok, "{log}");
            let images = pngs(&dir);
            std::fs::remove_dir_all(&dir).unwrap();
            images
        })
        .collect();
    let plain_images = pngs(&plain);
    for name in JOB {
        assert!(
            candidates[0][name] == plain_images[name],
            "candidate 0 of {name} is not the plain job's"
        );
    }
    let evidence = candidate_evidence(&fx, 12, 3);

    // Ranked by every stage, then by the first stage alone: each image is the candidate whose evidence
    // (from the library, summed over those stages) is highest.
    // With --progressive, each image's strip is its chosen candidate's.
    for (flags, stages) in [(&["--progressive", ""][..], 9), (&["--evidence-stages", "1"][..], 1)] {
        let dir = temp_dir(&format!("best-of-3-stages-{stages}"));
        let mut args = vec!["--seed", seed, "--best-of", "3", "--batch", "4"];
        args.extend_from_slice(flags);
        let (ok, log) = generate(&fx, &dir, &args);
        assert!(
            ok && log.contains(&format!("best of 3 candidates by {stages} stages' evidence")),
            "{log}"
        );
        let job: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
        assert_eq!(job["best_of"], 3);
        assert_eq!(job.get("evidence_stages").is_some(), stages == 1, "{job}");
        let best = pngs(&dir);
        let mut picked = Vec::new();
        for name in JOB {
            let j = (0..3).find(|&j| candidates[j][name] == best[name]);
            let j = j.unwrap_or_else(|| panic!("{name} of --best-of 3 is none of its 3 candidates"));
            if stages == 9 {
                let strip = name.replace(".png", "_stages.png");
                assert!(
                    best[&strip] == candidates[j][&strip],
                    "{strip} is not candidate {j}'s strip"
                );
            }
            let score = |j: usize| evidence[name][j][..stages].iter().sum::<f32>();
            let expected = (0..3).fold(0, |b, j| if score(j) > score(b) { j } else { b });
            assert_eq!(j, expected, "{name} ({stages} stages): evidence {:?}", evidence[name]);
            picked.push(j);
        }
        assert!(
            picked.iter().any(|&j| j != 0),
            "every image kept candidate 0 ({picked:?}): the choice would be untested"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    for dir in [plain, one] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Per image of `JOB` (by file name), per candidate, per stage: the class evidence of candidate j of
/// the test's job at `seed` (images (3, 0), (3, 1), (7, 0), (7, 1); 2 flow steps), from the library.
fn candidate_evidence(fx: &Fixtures, seed: u64, n: usize) -> BTreeMap<&'static str, Vec<Vec<f32>>> {
    use nvg::sampler::{ImageNoise, SamplerConfig, generate};
    use nvg_tools::generate::{candidate_seed, image_key};
    let (generator, quantizer) = fx.sampler_models();
    let grid = generator.config.grid;
    let mut cfg = SamplerConfig::official(&grid);
    cfg.structure_steps = 2;
    cfg.class_evidence = true;
    let images = [(3, 0), (3, 1), (7, 0), (7, 1)];
    let mut out = BTreeMap::new();
    for (name, &(c, i)) in JOB.iter().zip(&images) {
        let noise: Vec<ImageNoise> = (0..n)
            .map(|j| ImageNoise::for_image(&grid, candidate_seed(seed, j), image_key(c, i)))
            .collect();
        let g = generate(&generator, &quantizer, &cfg, &vec![c; n], &noise).unwrap();
        out.insert(*name, g.class_evidence.unwrap());
    }
    out
}

#[test]
fn without_weight_flags_the_builtin_emoji_model_is_used() {
    let dir = temp_dir("builtin");
    let (out, grid) = (dir.join("images"), dir.join("grid.png"));
    let (ok, stdout, stderr) = nvg(&[
        "generate",
        "--classes",
        "0,8",
        "--out",
        out.to_str().unwrap(),
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{stderr}");
    let images = pngs(&out);
    assert_eq!(images.keys().collect::<Vec<_>>(), ["0000_00000.png", "0008_00000.png"]);
    for name in images.keys() {
        let img = read_image(&out.join(name)).unwrap();
        assert_eq!((img.width, img.height), (64, 64), "{name}");
    }
    assert!(grid.is_file());

    // A model directory without the files: an error that names where it looked and what to do.
    let run_with_model_dir = |model_dir: &Path, args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_nvg"))
            .args(args)
            .env("NVG_MODEL_DIR", model_dir)
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let empty = dir.join("no-model");
    std::fs::create_dir_all(&empty).unwrap();
    let other_out = dir.join("other");
    let (ok, err) = run_with_model_dir(&empty, &["generate", "--out", other_out.to_str().unwrap()]);
    assert!(
        !ok && err.contains("no-model") && err.contains("NVG_MODEL_DIR") && err.contains("--generator"),
        "{err}"
    );
    // One weights flag without the other is refused (clap names the missing one).
    let (ok, _, err) = nvg(&[
        "generate",
        "--generator",
        "g.safetensors",
        "--out",
        other_out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--tokenizer"), "{err}");
    assert!(!other_out.exists() || pngs(&other_out).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The structure strip's bottom row (the structure maps) of `nvg generate --progressive`.
fn structure_row(strip: &Path) -> Vec<u8> {
    let img = read_image(strip).unwrap();
    let top = img.height / 2 + 2; // the maps sit below the decoded images
    img.data[top * img.width * 3..].to_vec()
}

#[test]
fn structure_from_takes_the_cluster_trees_of_dataset_records() {
    let dir = temp_dir("structure-from");
    // A 9-class ImageFolder for the built-in model (two images of coloured bars per class), tokenized.
    let images = dir.join("images");
    for c in 0..9 {
        let folder = images.join(format!("{c}-class"));
        std::fs::create_dir_all(&folder).unwrap();
        for k in 0..2 {
            let mut img = nvg::image::RgbImage::new(64, 64);
            for y in 0..64 {
                for x in 0..64 {
                    let on = (x / (4 + c + k) + y / 8) % 2 == 0;
                    img.set(
                        x,
                        y,
                        if on {
                            [200, 40 * k as u8, 20 * c as u8]
                        } else {
                            [255, 255, 255]
                        },
                    );
                }
            }
            nvg::image::write_png(&folder.join(format!("{k}.png")), &img).unwrap();
        }
    }
    let data = dir.join("bars.nvgtok");
    let tokenizer = nvg_tools::builtin_model::repository_model_dir().join("tokenizer.safetensors");
    let (ok, out, err) = nvg(&[
        "tokenize",
        "--images",
        images.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--resolution",
        "64",
        "--whole",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--classes",
            "2,5",
            "--per-class",
            "3",
            "--progressive",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = nvg(&args);
        assert!(ok, "{stdout}{stderr}");
    };
    let (given, given_again, sampled) = (dir.join("given"), dir.join("given-b1"), dir.join("sampled"));
    run(&given, &["--structure-from", data.to_str().unwrap()]);
    run(
        &given_again,
        &["--structure-from", data.to_str().unwrap(), "--batch", "1"],
    );
    run(&sampled, &[]);
    // Deterministic per image; the job records the structure source.
    assert_eq!(pngs(&given), pngs(&given_again));
    let job = std::fs::read_to_string(given.join("job.json")).unwrap();
    assert!(!job.contains("\"structure_from\": null"), "{job}");
    // The maps come from the dataset, not from the structure flow.
    for c in [2usize, 5] {
        for i in 0..3 {
            let name = format!("{c:04}_{i:05}_stages.png");
            let (g, s) = (structure_row(&given.join(&name)), structure_row(&sampled.join(&name)));
            assert_ne!(g, s, "{name}: the given structure should differ from the sampled one");
        }
    }
    // A dataset of another grid or class count is refused with a clear message.
    let fx = Fixtures::open();
    let (ok, _, err) = nvg(&[
        "generate",
        "--generator",
        fx.path("generator.safetensors").to_str().unwrap(),
        "--tokenizer",
        fx.path("tokenizer.safetensors").to_str().unwrap(),
        "--classes",
        "1",
        "--structure-from",
        data.to_str().unwrap(),
        "--out",
        dir.join("refused").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--structure-from") && err.contains("8×8"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn class_groups_name_images_by_group_and_condition_each_on_a_member_class() {
    let fx = Fixtures::open();
    let num_classes = fx
        .file("generator.safetensors")
        .get("content_class_embed.weight")
        .dims()[0]
        - 1;
    assert!(num_classes >= 8, "the test needs a generator of at least 8 classes");
    let dir = temp_dir("class-groups");
    let groups_file = dir.join("groups.json");
    std::fs::write(
        &groups_file,
        r#"{"groups": [{"name": "a", "classes": [0]}, {"name": "b", "classes": [1]}, {"name": "c", "classes": [2]},
                       {"name": "d", "classes": [3, 7]}]}"#,
    )
    .unwrap();
    let groups_arg = groups_file.to_str().unwrap();
    let (plain, grouped) = (dir.join("plain"), dir.join("grouped"));
    let job = ["--classes", "1,3", "--per-class", "4"];
    let (ok, out) = generate(&fx, &plain, &job);
    assert!(ok, "{out}");
    let (ok, out) = generate(&fx, &grouped, &[&job[..], &["--class-groups", groups_arg]].concat());
    assert!(ok, "{out}");
    let (p, g) = (pngs(&plain), pngs(&grouped));
    assert_eq!(
        p.keys().collect::<Vec<_>>(),
        g.keys().collect::<Vec<_>>(),
        "files are named by group"
    );
    // Group 1 holds class 1 alone: the same images as class 1 without groups.
    for i in 0..4 {
        let name = format!("0001_{i:05}.png");
        assert_eq!(p[&name], g[&name], "{name}");
    }
    // Group 3 holds classes 3 and 7: an image is class 3's exactly when its member is 3.
    let groups = nvg_tools::class_groups::ClassGroups::load(&groups_file, num_classes).unwrap();
    let members: Vec<usize> = (0..4).map(|i| groups.class_for(11, 3, i)).collect();
    assert!(members.contains(&3) && members.contains(&7), "{members:?}");
    for (i, &c) in members.iter().enumerate() {
        let name = format!("0003_{i:05}.png");
        assert_eq!(p[&name] == g[&name], c == 3, "{name}: member class {c}");
    }
    let job_json = std::fs::read_to_string(grouped.join("job.json")).unwrap();
    assert!(job_json.contains("class_groups"), "{job_json}");
    assert!(
        !std::fs::read_to_string(plain.join("job.json"))
            .unwrap()
            .contains("class_groups")
    );
    // Group ids past the last group, and groups naming classes the generator lacks, are refused.
    let (ok, out) = generate(
        &fx,
        &dir.join("past"),
        &["--classes", "4", "--class-groups", groups_arg],
    );
    assert!(
        !ok && out.contains("class 4 is out of range") && out.contains("0..3"),
        "{out}"
    );
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        format!(r#"{{"groups": [{{"name": "x", "classes": [0, {num_classes}]}}]}}"#),
    )
    .unwrap();
    let (ok, out) = generate(
        &fx,
        &dir.join("bad"),
        &["--classes", "0", "--class-groups", bad.to_str().unwrap()],
    );
    assert!(
        !ok && out.contains("--class-groups") && out.contains("bad.json"),
        "{out}"
    );
    assert!(out.contains(&format!("names class {num_classes}")), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_explains_every_flag() {
    let (ok, out, _) = nvg(&["generate", "--help"]);
    assert!(ok);
    for flag in [
        "--device",
        "--generator",
        "--tokenizer",
        "--ema",
        "--classes",
        "--per-class",
        "--seed",
        "--cfg",
        "--structure-cfg",
        "--top-p",
        "--top-k",
        "--temperature",
        "--structure-steps",
        "--batch",
        "--out",
        "--grid",
        "--progressive",
        "--shard",
        "--npz",
        "--structure-from",
        "--class-groups",
    ] {
        assert!(out.contains(flag), "generate --help does not explain {flag}");
    }
    assert!(out.contains("resum"), "--help should say the job resumes");
}
