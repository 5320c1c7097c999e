//! The sampler is a pure function of (seed, class, image index): the same at any batch size, in any
//! order, on any thread count; different seeds give different images. Given structure maps (structure-
//! level control) reproduce a sample from its own maps and refuse maps that are not cluster trees; a
//! small structure noise scale leaves the splits to the model.

use nvg::model::Generator;
use nvg::sampler::{Generation, ImageNoise, SamplerConfig, generate, generate_with_structure};
use nvg::tokenizer::Quantizer;
use nvg_testkit::Fixtures;

struct Setup {
    generator: Generator,
    quantizer: Quantizer,
}

fn setup() -> Setup {
    let (generator, quantizer) = Fixtures::open().sampler_models();
    Setup { generator, quantizer }
}

/// Official settings with fewer flow steps (the test runs many samples) and random (not greedy) codes.
fn sampling_config(s: &Setup, gumbel: bool) -> SamplerConfig {
    let mut cfg = SamplerConfig::official(&s.generator.config.grid);
    cfg.structure_steps = 4;
    cfg.temperature = 1.3;
    cfg.gumbel_split = gumbel;
    cfg
}

fn run(s: &Setup, cfg: &SamplerConfig, seed: u64, images: &[(usize, u64)]) -> Generation {
    let grid = s.generator.config.grid;
    let classes: Vec<usize> = images.iter().map(|&(c, _)| c).collect();
    let noise: Vec<ImageNoise> = images
        .iter()
        .map(|&(_, i)| ImageNoise::for_image(&grid, seed, i))
        .collect();
    generate(&s.generator, &s.quantizer, cfg, &classes, &noise).unwrap()
}

/// Final canvas, and codes and labels of every stage, of image `k` of a generation.
fn image(g: &Generation, k: usize) -> (Vec<f32>, Vec<i64>) {
    let canvas = g.canvas.narrow(0, k, 1).unwrap().to_f32_vec().unwrap();
    let mut ints = Vec::new();
    for st in &g.stages {
        ints.extend(st.codes.narrow(0, k, 1).unwrap().to_i64_vec().unwrap());
        ints.extend(st.labels.narrow(0, k, 1).unwrap().to_i64_vec().unwrap());
    }
    (canvas, ints)
}

#[test]
fn an_image_is_the_same_alone_or_in_any_batch() {
    let s = setup();
    for gumbel in [false, true] {
        let cfg = sampling_config(&s, gumbel);
        let images = [(207usize, 0u64), (360, 1), (1000, 2)];
        let batch = run(&s, &cfg, 42, &images);
        let reversed = run(&s, &cfg, 42, &[images[2], images[1], images[0]]);
        for (k, &img) in images.iter().enumerate() {
            let alone = run(&s, &cfg, 42, &[img]);
            assert!(
                image(&alone, 0) == image(&batch, k),
                "image {k} alone vs in a batch of 3 (gumbel {gumbel})"
            );
            assert!(
                image(&reversed, 2 - k) == image(&batch, k),
                "image {k} at another batch position"
            );
        }
    }
}

#[test]
fn the_thread_count_does_not_change_an_image() {
    let s = setup();
    let cfg = sampling_config(&s, false);
    let images = [(5usize, 7u64), (6, 8)];
    let with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run(&s, &cfg, 9, &images))
    };
    let (one, three) = (with(1), with(3));
    for k in 0..2 {
        assert!(image(&one, k) == image(&three, k), "image {k}: 1 thread vs 3 threads");
    }
}

#[test]
fn seeds_and_indices_select_different_images_and_repeat_exactly() {
    let s = setup();
    let cfg = sampling_config(&s, false);
    let a = run(&s, &cfg, 1, &[(207, 0)]);
    assert!(
        image(&a, 0) == image(&run(&s, &cfg, 1, &[(207, 0)]), 0),
        "a rerun differs"
    );
    assert!(
        image(&a, 0) != image(&run(&s, &cfg, 2, &[(207, 0)]), 0),
        "another seed gives the same image"
    );
    assert!(
        image(&a, 0) != image(&run(&s, &cfg, 1, &[(207, 1)]), 0),
        "another index gives the same image"
    );
}

#[test]
fn a_sample_regenerated_from_its_own_structure_maps_is_the_same_image() {
    let s = setup();
    let cfg = sampling_config(&s, false);
    let grid = s.generator.config.grid;
    let images = [(207usize, 0u64), (360, 1)];
    let sampled = run(&s, &cfg, 9, &images);
    let last = sampled.stages.last().unwrap();
    let t = grid.tokens();
    let leaves: Vec<Vec<i64>> = last
        .labels
        .to_i64_vec()
        .unwrap()
        .chunks(t)
        .map(<[i64]>::to_vec)
        .collect();
    let classes: Vec<usize> = images.iter().map(|&(c, _)| c).collect();
    let noise: Vec<ImageNoise> = images
        .iter()
        .map(|&(_, i)| ImageNoise::for_image(&grid, 9, i))
        .collect();
    let given = generate_with_structure(&s.generator, &s.quantizer, &cfg, &classes, &noise, Some(&leaves)).unwrap();
    // Same labels at every stage, hence the same code draws and the same canvas; no flow ran.
    for k in 0..images.len() {
        assert_eq!(image(&given, k), image(&sampled, k), "image {k}");
    }
    assert!(given.stages.iter().all(|st| st.split_scores.is_none()));

    // Maps that are not a tree over the tokens are refused, naming the image.
    let mut bad = leaves.clone();
    bad[1][0] = bad[1][1];
    let err = generate_with_structure(&s.generator, &s.quantizer, &cfg, &classes, &noise, Some(&bad))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("structure map of image 1"), "{err:#}");
    let err = generate_with_structure(&s.generator, &s.quantizer, &cfg, &classes, &noise, Some(&leaves[..1]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("1 structure maps for 2 images"), "{err}");
}

/// `structure_noise` scales the flow's starting noise. With greedy codes every image of a class has the
/// same canvas, so as the scale goes to 0 the first split becomes the model's alone and the images of
/// a class share it; at the official scale 1 their noise tells them apart. Non-positive scales are
/// refused.
#[test]
fn a_small_structure_noise_leaves_the_splits_to_the_model() {
    let s = setup();
    let grid = s.generator.config.grid;
    let mut cfg = SamplerConfig::greedy(&grid, 4);
    let first_split = |cfg: &SamplerConfig| -> Vec<Vec<i64>> {
        let g = run(&s, cfg, 5, &[(3, 0), (3, 1), (3, 2), (3, 3)]);
        (0..4)
            .map(|k| g.stages[1].labels.narrow(0, k, 1).unwrap().to_i64_vec().unwrap())
            .collect()
    };
    // Tokens whose stage-1 label differs from image 0's.
    let apart = |maps: &[Vec<i64>]| -> Vec<usize> {
        maps.iter()
            .map(|m| m.iter().zip(&maps[0]).filter(|(a, b)| a != b).count())
            .collect()
    };
    let official = apart(&first_split(&cfg));
    cfg.structure_noise = 1e-4;
    let quiet = apart(&first_split(&cfg));
    // At scale 1 the noise decides: about half the tokens change sides (measured 120–130 of 256). At
    // 1e-4 only near-ties of the model's scores are left to the noise (measured 4–6 tokens).
    let t = grid.tokens();
    assert!(
        official[1..].iter().all(|&n| n > t / 4) && quiet[1..].iter().all(|&n| n < t / 32),
        "tokens split apart from image 0: {official:?} at scale 1, {quiet:?} at 1e-4"
    );
    for bad in [0.0, -1.0, f32::NAN] {
        cfg.structure_noise = bad;
        let noise = vec![ImageNoise::for_image(&grid, 0, 0)];
        let err = generate(&s.generator, &s.quantizer, &cfg, &[0], &noise).err().unwrap();
        assert!(format!("{err:#}").contains("structure noise"), "{err:#}");
    }
}
