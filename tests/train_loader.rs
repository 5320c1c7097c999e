//! The training data loader: per-epoch orders that depend only on (seed, epoch), batches equal to a direct
//! `rebuild` of the same records, dropped partial batches, exact resumption from a saved state (also
//! across an epoch boundary), prefetch depth without effect on the batches, clear errors, and a prompt
//! stop when the loader is dropped.

use nvg::config::Grid;
use nvg::dataset::{Dataset, HEADER_SIZE, Record, rebuild};
use nvg::tokenizer::Quantizer;
use nvg::trainer::class_balance::{ClassBalance, class_quotas};
use nvg::trainer::loader::{LoadedBatch, Loader, LoaderState, epoch_order};
use nvg_engine::rng::RngStream;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records in the test dataset: 5 full batches of 4 and 3 records left over per epoch.
const LEN: usize = 23;
const B: usize = 4;
const SEED: u64 = 1234;
const SIDE: usize = 4;
const VOCAB: usize = 32;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("nvg-train-loader-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len` made-up records on a 4×4 grid (5 stages): a random class, a random permutation of the tokens
/// as leaf labels and random codes.
fn records(len: usize) -> Vec<Record> {
    let grid = Grid::new(SIDE).unwrap();
    let rng = RngStream::new(99, 7);
    let mut draw = 0u64;
    let mut next = |n: usize| {
        draw += 1;
        rng.words(draw)[0] as usize % n
    };
    (0..len)
        .map(|_| {
            let mut leaf: Vec<i64> = (0..grid.tokens() as i64).collect();
            for i in (1..leaf.len()).rev() {
                leaf.swap(i, next(i + 1));
            }
            Record {
                class: next(10),
                leaf_labels: leaf,
                codes: (0..grid.stages())
                    .map(|s| (0..1 << s).map(|_| next(VOCAB) as i64).collect())
                    .collect(),
            }
        })
        .collect()
}

fn write_dataset(path: &Path, len: usize) {
    nvg_testkit::write_dataset(path, SIDE, VOCAB, 10, &records(len));
}

/// A dataset of `len` records in `dir` and the synthetic quantiser that fits it.
fn fixture(dir: &TempDir, len: usize) -> (Arc<Dataset>, Arc<Quantizer>) {
    let path = dir.0.join("d.nvgtok");
    write_dataset(&path, len);
    let quantizer = Quantizer::synthetic(Grid::new(SIDE).unwrap(), VOCAB, 8, 5);
    (Arc::new(Dataset::open(&path, None).unwrap()), Arc::new(quantizer))
}

fn loader(ds: &Arc<Dataset>, q: &Arc<Quantizer>, start: LoaderState, prefetch: usize) -> Loader {
    Loader::new(ds.clone(), q.clone(), B, SEED, start, prefetch, 0.0).unwrap()
}

fn take(l: &mut Loader, n: usize) -> Vec<LoadedBatch> {
    (0..n).map(|_| l.next_batch().unwrap()).collect()
}

fn bits(t: &nvg_engine::Tensor) -> Vec<u32> {
    t.to_f32_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Panics unless two loaded batches are the same records rebuilt to the same bits, at the same place.
fn assert_same(a: &LoadedBatch, b: &LoadedBatch, what: &str) {
    assert_eq!(a.indices, b.indices, "{what}: records");
    assert_eq!(
        (a.epoch, a.step, a.state_after),
        (b.epoch, b.step, b.state_after),
        "{what}: place"
    );
    assert_eq!(a.batch.classes, b.batch.classes, "{what}: classes");
    assert_eq!(
        a.batch.labels.to_i64_vec().unwrap(),
        b.batch.labels.to_i64_vec().unwrap(),
        "{what}: labels"
    );
    assert_eq!(
        a.batch.codes_per_token.to_i64_vec().unwrap(),
        b.batch.codes_per_token.to_i64_vec().unwrap(),
        "{what}: codes"
    );
    assert_eq!(bits(&a.batch.canvases), bits(&b.batch.canvases), "{what}: canvases");
    assert_eq!(bits(&a.batch.target), bits(&b.batch.target), "{what}: target");
}

fn loader_err(ds: &Arc<Dataset>, q: &Arc<Quantizer>, batch: usize, start: LoaderState, prefetch: usize) -> String {
    match Loader::new(ds.clone(), q.clone(), batch, SEED, start, prefetch, 0.0) {
        Ok(_) => panic!("the loader started but should not"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn epoch_orders_are_permutations_that_change_with_the_epoch_and_the_seed() {
    let mut seen = BTreeSet::new();
    for seed in [0, 1, SEED] {
        for epoch in 0..4 {
            let order = epoch_order(LEN, seed, epoch);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..LEN).collect::<Vec<_>>(),
                "seed {seed} epoch {epoch}: a permutation"
            );
            assert_eq!(
                order,
                epoch_order(LEN, seed, epoch),
                "a pure function of (len, seed, epoch)"
            );
            assert!(seen.insert(order), "seed {seed} epoch {epoch} repeats an earlier order");
        }
    }
    // Every position is reachable: over many epochs each record lands first at least once.
    let firsts: BTreeSet<usize> = (0..400).map(|e| epoch_order(LEN, SEED, e)[0]).collect();
    assert_eq!(firsts.len(), LEN);
    assert!(epoch_order(0, SEED, 0).is_empty());
    assert_eq!(epoch_order(1, SEED, 3), vec![0]);
}

#[test]
fn batches_follow_the_epoch_order_drop_the_partial_batch_and_equal_a_direct_rebuild() {
    let dir = TempDir::new("order");
    let (ds, q) = fixture(&dir, LEN);
    let mut l = loader(&ds, &q, LoaderState::default(), 2);
    assert_eq!(l.batches_per_epoch(), LEN / B);
    assert_eq!(l.batches_per_epoch(), 5);
    for epoch in 0..2u64 {
        let order = epoch_order(LEN, SEED, epoch);
        let mut visited = BTreeSet::new();
        for step in 0..l.batches_per_epoch() {
            let got = l.next_batch().unwrap();
            assert_eq!((got.epoch, got.step), (epoch, step));
            assert_eq!(
                got.indices,
                order[step * B..(step + 1) * B],
                "epoch {epoch} step {step}"
            );
            let after = if step + 1 == l.batches_per_epoch() {
                // The 3 records left over are dropped: the next batch is the next epoch's first.
                LoaderState {
                    epoch: epoch + 1,
                    position: 0,
                }
            } else {
                LoaderState {
                    epoch,
                    position: (step + 1) * B,
                }
            };
            assert_eq!(got.state_after, after);
            assert_eq!(l.state(), after);
            let records: Vec<Record> = got.indices.iter().map(|&i| ds.record(i).unwrap()).collect();
            let direct = rebuild(&records, &q).unwrap();
            assert_eq!(got.batch.classes, direct.classes);
            assert_eq!(
                got.batch.labels.to_i64_vec().unwrap(),
                direct.labels.to_i64_vec().unwrap()
            );
            assert_eq!(
                got.batch.codes_per_token.to_i64_vec().unwrap(),
                direct.codes_per_token.to_i64_vec().unwrap()
            );
            assert_eq!(got.batch.canvases.dims(), [B, 5, SIDE * SIDE, 8]);
            assert_eq!(bits(&got.batch.canvases), bits(&direct.canvases));
            assert_eq!(bits(&got.batch.target), bits(&direct.target));
            visited.extend(got.indices);
        }
        let dropped: BTreeSet<usize> = order[LEN - LEN % B..].iter().copied().collect();
        assert_eq!(visited.len(), LEN - LEN % B, "epoch {epoch}: no record twice");
        assert!(
            visited.is_disjoint(&dropped),
            "epoch {epoch}: the partial batch is dropped"
        );
    }
}

#[test]
fn a_loader_resumed_from_a_saved_state_yields_the_batches_the_original_would_have() {
    let dir = TempDir::new("resume");
    let (ds, q) = fixture(&dir, LEN);
    let reference = take(&mut loader(&ds, &q, LoaderState::default(), 3), 14);
    assert_eq!(reference[13].epoch, 2);
    // After 0 batches, mid-epoch, just before and just after an epoch boundary, and in a later epoch.
    for k in [1, 3, 4, 5, 6, 9, 11] {
        let saved = reference[k - 1].state_after;
        let json = serde_json::to_string(&saved.to_json()).unwrap();
        let state = LoaderState::from_json(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(state, saved);
        let mut resumed = loader(&ds, &q, state, 2);
        assert_eq!(resumed.state(), saved);
        for (i, want) in reference[k..].iter().enumerate() {
            assert_same(
                &resumed.next_batch().unwrap(),
                want,
                &format!("resumed after {k}, batch {i}"),
            );
        }
    }
    // A state at the leftover of an epoch (saved by a run with another batch size, or at the very end)
    // continues with the next epoch.
    for position in [LEN - 2, LEN] {
        let mut l = loader(&ds, &q, LoaderState { epoch: 0, position }, 1);
        assert_eq!(l.state(), LoaderState { epoch: 1, position: 0 });
        assert_same(&l.next_batch().unwrap(), &reference[5], "from the leftover of epoch 0");
    }
}

#[test]
fn the_prefetch_depth_does_not_change_the_batches() {
    let dir = TempDir::new("prefetch");
    let (ds, q) = fixture(&dir, LEN);
    let one = take(&mut loader(&ds, &q, LoaderState::default(), 1), 12);
    let four = take(&mut loader(&ds, &q, LoaderState::default(), 4), 12);
    for (i, (a, b)) in one.iter().zip(&four).enumerate() {
        assert_same(a, b, &format!("batch {i}"));
    }
}

#[test]
fn a_dataset_smaller_than_one_batch_and_bad_settings_are_refused_clearly() {
    let dir = TempDir::new("small");
    let (ds, q) = fixture(&dir, 3);
    let msg = loader_err(&ds, &q, B, LoaderState::default(), 2);
    assert!(
        msg.contains("3 records are fewer than one batch of 4") && msg.contains("d.nvgtok"),
        "{msg}"
    );
    assert!(Loader::new(ds.clone(), q.clone(), 3, SEED, LoaderState::default(), 1, 0.0).is_ok());
    assert!(loader_err(&ds, &q, 0, LoaderState::default(), 2).contains("batch size"));
    assert!(loader_err(&ds, &q, 1, LoaderState::default(), 0).contains("prefetch"));
    let past = LoaderState { epoch: 2, position: 4 };
    assert!(loader_err(&ds, &q, 1, past, 1).contains("past the 3 records"));
    let other = Arc::new(Quantizer::synthetic(Grid::new(8).unwrap(), VOCAB, 8, 5));
    assert!(loader_err(&ds, &other, 1, LoaderState::default(), 1).contains("does not fit"));
}

#[test]
fn loader_states_round_trip_through_json_and_bad_ones_are_refused() {
    let s = LoaderState { epoch: 7, position: 12 };
    assert_eq!(s.to_json(), serde_json::json!({"epoch": 7, "position": 12}));
    assert_eq!(LoaderState::from_json(&s.to_json()).unwrap(), s);
    for bad in [
        serde_json::json!({"epoch": 7}),
        serde_json::json!({"epoch": -1, "position": 0}),
        serde_json::json!({"epoch": 1.5, "position": 0}),
        serde_json::json!([7, 12]),
    ] {
        let msg = format!("{:#}", LoaderState::from_json(&bad).unwrap_err());
        assert!(msg.contains("loader state"), "{msg}");
    }
}

#[test]
fn a_corrupt_record_reaches_the_consumer_as_an_error() {
    let dir = TempDir::new("corrupt");
    let path = dir.0.join("d.nvgtok");
    write_dataset(&path, LEN);
    // A record of epoch 0's second batch gets 200 as its first leaf label on a 16-token grid (rebuilding
    // it would index out of bounds).
    let bad = epoch_order(LEN, SEED, 0)[B + 1];
    let record_size = Dataset::open(&path, None).unwrap().header.record_size();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_SIZE + bad * record_size + 4] = 200;
    std::fs::write(&path, bytes).unwrap();
    let ds = Arc::new(Dataset::open(&path, None).unwrap());
    let q = Arc::new(Quantizer::synthetic(Grid::new(SIDE).unwrap(), VOCAB, 8, 5));
    let mut l = loader(&ds, &q, LoaderState::default(), 2);
    l.next_batch().unwrap();
    let msg = format!(
        "{:#}",
        l.next_batch().err().expect("the corrupt record fails its batch")
    );
    assert!(
        msg.contains(&format!("record {bad} is corrupt")) && msg.contains("leaf labels"),
        "{msg}"
    );
    let again = format!("{:#}", l.next_batch().err().expect("the loader stays stopped"));
    assert!(again.contains("stopped after an error"), "{again}");
}

#[test]
fn dropping_a_loader_mid_epoch_returns_promptly() {
    let dir = TempDir::new("drop");
    let (ds, q) = fixture(&dir, LEN);
    for (consumed, prefetch) in [(0, 1), (2, 1), (2, 4)] {
        let mut l = loader(&ds, &q, LoaderState::default(), prefetch);
        take(&mut l, consumed);
        // Let the worker fill the channel and block on it.
        std::thread::sleep(Duration::from_millis(200));
        // Dropped on another thread, so that a hang fails the test instead of stalling it.
        let t = Instant::now();
        let (done, dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(l);
            let _ = done.send(());
        });
        assert!(
            dropped.recv_timeout(Duration::from_secs(5)).is_ok(),
            "dropping the loader hangs (consumed {consumed}, prefetch {prefetch})"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn class_quotas_give_shares_by_the_power_of_the_class_sizes_and_sum_to_the_epoch() {
    let counts = [60, 30, 10, 0];
    // S = 0: the data's own mix; S = 1: equal shares (33.3 each, the spare draw to the lowest id);
    // S = 0.5: √60 : √30 : √10 = 47.27 : 33.43 : 19.30 of 100, the spare draw to the largest remainder.
    assert_eq!(class_quotas(&counts, 0.0, 100), [60, 30, 10, 0]);
    assert_eq!(class_quotas(&counts, 1.0, 100), [34, 33, 33, 0]);
    assert_eq!(class_quotas(&counts, 0.5, 100), [47, 34, 19, 0]);
    for s in [0.0, 0.25, 0.5, 0.75, 1.0] {
        for len in [1, 7, 100, 13_564] {
            let q = class_quotas(&counts, s, len);
            assert_eq!(q.iter().sum::<usize>(), len, "S {s} len {len}");
            assert_eq!(q[3], 0, "a class without records is never drawn");
            assert!(q[0] >= q[1] && q[1] >= q[2], "S {s} len {len}: {q:?}");
        }
    }
}

/// The classes of the fixture's records, read back through `Dataset::class_of`.
fn classes_of(ds: &Dataset) -> Vec<usize> {
    (0..ds.len()).map(|i| ds.class_of(i).unwrap()).collect()
}

#[test]
fn a_class_balanced_epoch_draws_every_class_its_quota_from_its_own_records() {
    let dir = TempDir::new("balance");
    let (ds, q) = fixture(&dir, LEN);
    let classes = classes_of(&ds);
    assert_eq!(classes, records(LEN).iter().map(|r| r.class).collect::<Vec<_>>());
    let classes_with_records = classes.iter().collect::<BTreeSet<_>>().len();
    assert!(classes_with_records >= 5, "the fixture has uneven classes");
    let balance = ClassBalance::new(&classes, 10, 1.0).unwrap();
    let mut orders = BTreeSet::new();
    for epoch in 0..6 {
        let order = balance.epoch_order(SEED, epoch);
        assert_eq!(order.len(), LEN, "one draw per record");
        assert_eq!(
            order,
            balance.epoch_order(SEED, epoch),
            "a pure function of (seed, epoch)"
        );
        for (c, &quota) in balance.quotas().iter().enumerate() {
            let members: Vec<usize> = (0..LEN).filter(|&i| classes[i] == c).collect();
            let drawn: Vec<usize> = order.iter().copied().filter(|&i| classes[i] == c).collect();
            assert_eq!(drawn.len(), quota, "epoch {epoch} class {c}");
            if members.is_empty() {
                continue;
            }
            // LEN / classes_with_records each (±1): every record of the class ⌊q/n⌋ or ⌈q/n⌉ times.
            assert!(quota.abs_diff(LEN / classes_with_records) <= 1, "class {c}: {quota}");
            for &m in &members {
                let times = drawn.iter().filter(|&&i| i == m).count();
                assert!(
                    times == quota / members.len() || times == quota.div_ceil(members.len()),
                    "epoch {epoch}: record {m} of class {c} drawn {times} times for a quota of {quota} over {} records",
                    members.len()
                );
            }
        }
        orders.insert(order);
    }
    assert_eq!(orders.len(), 6, "every epoch has its own order");
    // The fixture has classes made larger (quota above their records: repeated) and smaller (a subset),
    // and a smaller class draws a different subset in different epochs.
    let sizes: Vec<usize> = (0..10).map(|c| classes.iter().filter(|&&k| k == c).count()).collect();
    let quotas = balance.quotas();
    assert!(
        (0..10).any(|c| sizes[c] > 0 && quotas[c] > sizes[c]),
        "{sizes:?} {quotas:?}"
    );
    let smaller = (0..10)
        .find(|&c| quotas[c] < sizes[c])
        .unwrap_or_else(|| panic!("no class made smaller: {sizes:?} {quotas:?}"));
    let subsets: BTreeSet<Vec<usize>> = (0..6)
        .map(|e| {
            let mut s: Vec<usize> = balance
                .epoch_order(SEED, e)
                .into_iter()
                .filter(|&i| classes[i] == smaller)
                .collect();
            s.sort_unstable();
            s
        })
        .collect();
    assert!(
        subsets.len() > 1,
        "class {smaller} draws the same subset every epoch: {subsets:?}"
    );
    assert_ne!(balance.epoch_order(SEED + 1, 0), balance.epoch_order(SEED, 0));
    // Strength 0 draws the data's own mix: a permutation of the records.
    let plain = ClassBalance::new(&classes, 10, 0.0).unwrap().epoch_order(SEED, 0);
    let mut sorted = plain.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..LEN).collect::<Vec<_>>());

    // The loader follows the balanced order and resumes it exactly.
    let balanced = |start, prefetch| Loader::new(ds.clone(), q.clone(), B, SEED, start, prefetch, 1.0).unwrap();
    let reference = take(&mut balanced(LoaderState::default(), 2), 12);
    for (k, got) in reference.iter().enumerate() {
        let order = balance.epoch_order(SEED, got.epoch);
        assert_eq!(got.indices, order[got.step * B..(got.step + 1) * B], "batch {k}");
    }
    for k in [3, 5, 6, 11] {
        let mut resumed = balanced(reference[k - 1].state_after, 1);
        for (i, want) in reference[k..].iter().enumerate() {
            assert_same(
                &resumed.next_batch().unwrap(),
                want,
                &format!("resumed after {k}, batch {i}"),
            );
        }
    }
}

#[test]
fn a_class_balance_outside_zero_to_one_is_refused_clearly() {
    let dir = TempDir::new("balance-bad");
    let (ds, q) = fixture(&dir, LEN);
    for bad in [-0.1, 1.5, f32::NAN] {
        let msg = match Loader::new(ds.clone(), q.clone(), B, SEED, LoaderState::default(), 1, bad) {
            Ok(_) => panic!("--class-balance {bad} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(msg.contains("from 0 to 1") && msg.contains("d.nvgtok"), "{msg}");
    }
    let msg = format!("{:#}", ClassBalance::new(&[0, 1, 12], 10, 1.0).unwrap_err());
    assert!(msg.contains("record 2 has class 12"), "{msg}");
}
