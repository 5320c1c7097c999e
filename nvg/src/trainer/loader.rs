//! The training data loader over a memory-mapped `.nvgtok` dataset.
//!
//! **Order.** Every epoch visits the records in a permutation of `0..len` drawn by a Fisher–Yates
//! shuffle whose random numbers come from the Philox RNG keyed by the loader's seed, with the epoch as
//! the stream ([`epoch_order`]). The order is therefore a pure function of `(len, seed, epoch)`: it does
//! not depend on the batch size, the prefetch depth, or where a run was interrupted. With a class
//! balance (`class_balance` > 0) an epoch is `len` draws with the classes' shares evened out instead
//! ([`ClassBalance`], module `class_balance`), a pure function of `(classes, strength, seed, epoch)`.
//!
//! **Batches.** Batch `k` of an epoch is `order[k·B .. (k+1)·B]`. Like the official loader
//! (`drop_last=True`), a final partial batch is dropped, so an epoch has `len / B` batches and every
//! batch has exactly `B` records; a dataset with fewer than `B` records is refused.
//!
//! **Resume.** [`LoaderState`] `{ epoch, position }` says where the next batch starts: at `position` in
//! epoch `epoch`'s order. Each [`LoadedBatch`] carries the state *after* it — what a checkpoint saved
//! after training on that batch must store; a loader started from it yields exactly the batches the
//! original would have yielded next, across epoch boundaries too. An epoch that has no full batch left
//! (`position + B > len`) continues with epoch + 1 at position 0, so a state saved after an epoch's last
//! batch reads `{ epoch + 1, 0 }`.
//!
//! **Prefetch.** A worker thread reads records (zero-copy from the mapped file), checks them and rebuilds
//! canvases and targets with [`rebuild`] into a bounded channel of `prefetch` batches (at most one more
//! is being built). Worker errors — a corrupt record, a record that does not fit the quantiser — reach
//! the consumer as errors from [`Loader::next_batch`]; dropping the loader stops the worker (it finishes
//! at most the batch it is building) and joins it.

use super::class_balance::ClassBalance;
use crate::dataset::{Dataset, RebuiltBatch, rebuild};
use crate::tokenizer::Quantizer;
use anyhow::{Context, Result, anyhow, bail, ensure};
use nvg_engine::rng::RngStream;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvError, SyncSender, sync_channel};
use std::thread::JoinHandle;

// The worker shares the dataset and the quantiser with the consumer and sends batches back.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    fn sendable<T: Send>() {}
    shareable::<Dataset>();
    shareable::<Quantizer>();
    sendable::<RebuiltBatch>();
    sendable::<anyhow::Error>();
};

/// Upper half of the Philox counter index of the shuffle's draws (ASCII "SHUF"): it keeps them apart
/// from other draws made with the same seed and stream, whose indices are small offsets.
const SHUFFLE_TAG: u64 = 0x5348_5546;

/// A uniform integer in `0..n` from a Philox block: the 64 bits of words 0 and 1 scaled by `n`
/// (multiply-high). The bias is below `n / 2^64`, i.e. under `2^-32` for any dataset this allows.
pub(crate) fn below(words: [u32; 4], n: u64) -> u64 {
    let x = words[0] as u64 | (words[1] as u64) << 32;
    ((x as u128 * n as u128) >> 64) as u64
}

/// Epoch `epoch`'s visiting order of a dataset of `len` records: a permutation of `0..len`.
///
/// Fisher–Yates from the back: for `i = len−1, …, 1`, swap position `i` with a uniform `j` in `0..=i`,
/// where `j` comes from the Philox block at counter index `SHUFFLE_TAG·2³² + i` of the stream
/// `(seed, epoch)`. Every draw is a pure function of `(seed, epoch, i)`.
///
/// Panics if `len` exceeds 2³² (the draw index lives in 32 bits; [`Loader::new`] refuses such datasets
/// with an error).
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    assert!(
        len as u64 <= 1 << 32,
        "epoch_order: {len} records exceed the shuffle's 2^32"
    );
    let mut order: Vec<usize> = (0..len).collect();
    shuffle(&mut order, &RngStream::new(seed, epoch));
    order
}

/// Fisher–Yates from the back with the draws described at [`epoch_order`] (`v.len()` ≤ 2³²).
pub(crate) fn shuffle(v: &mut [usize], rng: &RngStream) {
    for i in (1..v.len()).rev() {
        let j = below(rng.words(SHUFFLE_TAG << 32 | i as u64), i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// Where the next batch starts: at `position` in epoch `epoch`'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LoaderState {
    pub epoch: u64,
    pub position: usize,
}

impl LoaderState {
    /// `{"epoch": E, "position": P}`.
    pub fn to_json(&self) -> Value {
        json!({ "epoch": self.epoch, "position": self.position as u64 })
    }

    /// Reads what [`LoaderState::to_json`] wrote.
    pub fn from_json(v: &Value) -> Result<LoaderState> {
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_u64)
                .with_context(|| format!("loader state {v}: `{name}` must be a non-negative integer"))
        };
        let position = field("position")?;
        Ok(LoaderState {
            epoch: field("epoch")?,
            position: usize::try_from(position).with_context(|| format!("loader state: position {position}"))?,
        })
    }

    /// The state where the batch of `batch` records starting here actually starts: this one, or the next
    /// epoch's start if no full batch is left in this epoch (the partial batch is dropped).
    fn normalized(self, len: usize, batch: usize) -> Result<LoaderState> {
        if self.position + batch <= len {
            return Ok(self);
        }
        let epoch = self
            .epoch
            .checked_add(1)
            .context("loader state: the epoch counter overflows")?;
        Ok(LoaderState { epoch, position: 0 })
    }
}

/// One batch from the loader.
pub struct LoadedBatch {
    pub batch: RebuiltBatch,
    /// The records it holds, in batch order.
    pub indices: Vec<usize>,
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Its index within the epoch: `position / B` of where it starts (batches start at multiples of `B`
    /// unless a run was resumed with another batch size).
    pub step: usize,
    /// The state after this batch: what a checkpoint saved after training on it must store.
    pub state_after: LoaderState,
}

/// A shuffling, prefetching loader of rebuilt batches (see the module notes).
pub struct Loader {
    batch: usize,
    len: usize,
    /// The state of the next batch `next_batch` returns.
    state: LoaderState,
    rx: Option<Receiver<Result<LoadedBatch>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    /// Set once the worker reported an error or died: later calls repeat this.
    failed: Option<String>,
}

impl Loader {
    /// Starts a loader of batches of `batch` records from `start`, with `prefetch` batches buffered and
    /// epochs drawn with the class-balance strength `class_balance` (0: a plain shuffle; see the
    /// module notes).
    pub fn new(
        dataset: Arc<Dataset>,
        quantizer: Arc<Quantizer>,
        batch: usize,
        seed: u64,
        start: LoaderState,
        prefetch: usize,
        class_balance: f32,
    ) -> Result<Loader> {
        let name = dataset.path().display().to_string();
        let len = dataset.len();
        ensure!(batch > 0, "the batch size must be at least 1");
        ensure!(prefetch > 0, "the loader's prefetch depth must be at least 1");
        ensure!(
            len >= batch,
            "{name}: {len} records are fewer than one batch of {batch} (the last partial batch of an epoch \
             is dropped, so no batch could be made)"
        );
        ensure!(
            len as u64 <= 1 << 32,
            "{name}: {len} records; the loader shuffles at most 2^32"
        );
        ensure!(
            start.position <= len,
            "{name}: the loader state starts at position {} of epoch {}, past the {len} records of this \
             dataset (a state saved with another dataset?)",
            start.position,
            start.epoch
        );
        let (h, grid) = (&dataset.header, quantizer.grid());
        ensure!(
            h.grid_side == grid.side() && h.codebook_size == quantizer.codebook_size(),
            "{name}: a {}×{} grid with {} codes does not fit the quantiser's {}×{} grid with {} codes",
            h.grid_side,
            h.grid_side,
            h.codebook_size,
            grid.side(),
            grid.side(),
            quantizer.codebook_size()
        );
        let balance = if class_balance == 0.0 {
            None
        } else {
            let classes = (0..len).map(|i| dataset.class_of(i)).collect::<Result<Vec<_>>>()?;
            Some(
                ClassBalance::new(&classes, h.num_classes, class_balance)
                    .with_context(|| format!("{name}: --class-balance {class_balance}"))?,
            )
        };
        let state = start.normalized(len, batch)?;
        let (tx, rx) = sync_channel(prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            dataset,
            quantizer,
            batch,
            seed,
            balance,
            state,
            order: None,
            tx,
            stop: stop.clone(),
        };
        // The batches are rebuilt with the engine's parallel ops, which run on the rayon pool of the
        // thread that calls them. On the global pool they would wait for a free worker, and a consumer
        // that is that pool's only worker (the `nvg` program runs its command on a worker; with
        // RAYON_NUM_THREADS=1 there is one) sits blocked in `next_batch`: a deadlock. A one-thread
        // pool of the loader's own keeps it independent of the consumer's pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "nvg-loader-ops".into())
            .build()
            .context("starting the loader's thread pool")?;
        let handle = std::thread::Builder::new()
            .name("nvg-loader".into())
            .spawn(move || pool.install(|| worker.run()))
            .context("starting the loader thread")?;
        Ok(Loader {
            batch,
            len,
            state,
            rx: Some(rx),
            stop,
            worker: Some(handle),
            failed: None,
        })
    }

    /// Full batches per epoch, `len / B`.
    pub fn batches_per_epoch(&self) -> usize {
        self.len / self.batch
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Where the next batch starts (the `state_after` of the last batch returned).
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// The next batch, waiting for the worker if it is not ready yet.
    pub fn next_batch(&mut self) -> Result<LoadedBatch> {
        if let Some(msg) = &self.failed {
            bail!("the data loader stopped after an error: {msg}");
        }
        let rx = self.rx.as_ref().expect("receiver lives until drop");
        let got = match rx.recv() {
            Ok(got) => got,
            Err(RecvError) => Err(self.worker_died()),
        };
        match got {
            Ok(b) => {
                debug_assert_eq!(b.epoch, self.state.epoch);
                self.state = b.state_after;
                Ok(b)
            }
            Err(e) => {
                self.failed = Some(format!("{e:#}"));
                Err(e)
            }
        }
    }

    /// Why the worker hung up without an error message: it panicked.
    fn worker_died(&mut self) -> anyhow::Error {
        let why = match self.worker.take().map(JoinHandle::join) {
            Some(Err(panic)) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into()),
            _ => "it exited".into(),
        };
        anyhow!("the data loader's worker thread stopped unexpectedly: {why}")
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver wakes a worker blocked on a full channel (its send fails).
        self.rx.take();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

/// The worker thread's side: walks the epochs' orders and sends rebuilt batches.
struct Worker {
    dataset: Arc<Dataset>,
    quantizer: Arc<Quantizer>,
    batch: usize,
    seed: u64,
    /// Class-balanced epochs, if asked.
    balance: Option<ClassBalance>,
    /// Where the next batch starts (always with a full batch left in its epoch).
    state: LoaderState,
    /// The current epoch's order.
    order: Option<(u64, Vec<usize>)>,
    tx: SyncSender<Result<LoadedBatch>>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let item = self.make_batch();
            let failed = item.is_err();
            // A failed send means the loader was dropped.
            if self.tx.send(item).is_err() || failed {
                return;
            }
        }
    }

    fn make_batch(&mut self) -> Result<LoadedBatch> {
        let LoaderState { epoch, position } = self.state;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let order = match &self.balance {
                Some(b) => b.epoch_order(self.seed, epoch),
                None => epoch_order(self.dataset.len(), self.seed, epoch),
            };
            self.order = Some((epoch, order));
        }
        let order = &self.order.as_ref().expect("order of this epoch").1;
        let indices = order[position..position + self.batch].to_vec();
        let records = indices
            .iter()
            .map(|&i| self.dataset.record(i))
            .collect::<Result<Vec<_>>>()?;
        let batch = rebuild(&records, &self.quantizer)
            .with_context(|| format!("rebuilding epoch {epoch}'s batch at position {position}"))?;
        let state_after = LoaderState {
            epoch,
            position: position + self.batch,
        }
        .normalized(self.dataset.len(), self.batch)?;
        self.state = state_after;
        Ok(LoadedBatch {
            batch,
            indices,
            epoch,
            step: position / self.batch,
            state_after,
        })
    }
}
