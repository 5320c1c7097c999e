//! The training loader with a consumer that is the only worker of rayon's global pool — how `nvg train`
//! runs under `RAYON_NUM_THREADS=1` (the program runs its command on a pool worker). The loader's
//! thread builds batches with the engine's parallel ops; had they run on the global pool, they would
//! wait forever for the worker blocked in `next_batch`.
//!
//! A test binary of its own: it builds the global pool with one thread, which must happen before any
//! other test of the process touches rayon.

use nvg::config::Grid;
use nvg::dataset::{Dataset, Record};
use nvg::tokenizer::Quantizer;
use nvg::trainer::loader::{Loader, LoaderState};
use std::sync::Arc;
use std::time::Duration;

const SIDE: usize = 4;
const VOCAB: usize = 32;

/// `len` records on a 4×4 grid: class, leaf labels (a rotation of the tokens) and codes from the index.
fn records(len: usize) -> Vec<Record> {
    let grid = Grid::new(SIDE).unwrap();
    (0..len)
        .map(|i| Record {
            class: i % 10,
            leaf_labels: (0..grid.tokens()).map(|t| ((t + i) % grid.tokens()) as i64).collect(),
            codes: (0..grid.stages())
                .map(|s| (0..1usize << s).map(|k| ((i * 7 + s * 3 + k) % VOCAB) as i64).collect())
                .collect(),
        })
        .collect()
}

#[test]
fn a_consumer_that_is_the_global_pools_only_worker_gets_its_batches() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("this test binary's global pool is built here first");
    let dir = nvg_testkit::fresh_dir("train-loader", "one-worker");
    let path = dir.join("d.nvgtok");
    nvg_testkit::write_dataset(&path, SIDE, VOCAB, 10, &records(130));
    let ds = Arc::new(Dataset::open(&path, None).unwrap());
    let q = Arc::new(Quantizer::synthetic(Grid::new(SIDE).unwrap(), VOCAB, 8, 5));
    // 128 records × 5 stages × 16 tokens × 8 channels of canvases: above the engine's parallel
    // threshold, so rebuilding a batch runs parallel copies.
    let batch = 128;
    let (done, got) = std::sync::mpsc::channel();
    {
        let (ds, q) = (ds.clone(), q.clone());
        // The consumer on the pool's worker, watched from a thread of its own so that a deadlock
        // fails the test instead of stalling it.
        std::thread::spawn(move || {
            let classes = rayon::scope(|_| {
                assert!(rayon::current_thread_index().is_some());
                let mut l = Loader::new(ds, q, batch, 5, LoaderState::default(), 2, 0.0).unwrap();
                (0..3)
                    .map(|_| l.next_batch().unwrap().batch.classes)
                    .collect::<Vec<_>>()
            });
            let _ = done.send(classes);
        });
    }
    let classes = got
        .recv_timeout(Duration::from_secs(60))
        .expect("the loader never delivered a batch to a consumer on the global pool's only worker");
    assert_eq!(classes.len(), 3);
    assert!(classes.iter().all(|c| c.len() == batch));
    let _ = std::fs::remove_dir_all(&dir);
}
