//! Class-balanced epochs: `nvg train --class-balance S`.
//!
//! A dataset's classes can be very uneven (the emoji set: People & Body, with its skin-tone variants,
//! holds 60 % of the images; Activities 2 %), so a plain shuffle spends most steps on the largest class.
//! With a strength `S` in `[0, 1]`, an epoch still has one draw per record (`len` draws, so epochs,
//! batches per epoch and [`LoaderState`](super::loader::LoaderState) mean what they meant), but class
//! `c` gets a share proportional to `n_c^(1−S)` of them: `S = 0` is the records' own mix, `S = 1`
//! gives every class with records the same share, `S = 0.5` a share proportional to `√n_c`.
//!
//! **Draws.** Class `c`'s quota `q_c` comes from [`class_quotas`] (largest remainders, so the quotas
//! sum to `len` exactly). A class draws every one of its records `⌊q_c / n_c⌋` times, and the
//! remaining `q_c mod n_c` records are a uniform subset (a partial Fisher–Yates shuffle of the class's
//! records); then the whole epoch is shuffled. Every random number is a Philox block of the stream
//! `(seed, epoch)`, at counter indices of their own, so the order is a pure function of
//! `(classes, S, seed, epoch)`, like the plain shuffle's.

use super::loader::{below, shuffle};
use anyhow::{Result, ensure};
use nvg_engine::rng::RngStream;

/// Upper half of the Philox counter index of the subset draws (ASCII "BALA").
const SUBSET_TAG: u64 = 0x4241_4C41;

/// Per-class draws of an epoch of `len` records for classes of `counts[c]` records each: shares
/// proportional to `counts[c]^(1−strength)` (classes without records get none), rounded by largest
/// remainder (ties to the lower class id) so they sum to `len`.
///
/// Panics unless `strength` is in `[0, 1]` and some class has records.
pub fn class_quotas(counts: &[usize], strength: f32, len: usize) -> Vec<usize> {
    assert!(
        (0.0..=1.0).contains(&strength),
        "class_quotas: strength {strength} outside [0, 1]"
    );
    let weight: Vec<f64> = counts
        .iter()
        .map(|&n| {
            if n == 0 {
                0.0
            } else {
                (n as f64).powf(1.0 - strength as f64)
            }
        })
        .collect();
    let total: f64 = weight.iter().sum();
    assert!(total > 0.0, "class_quotas: no class has records");
    let exact: Vec<f64> = weight.iter().map(|w| w / total * len as f64).collect();
    let mut quota: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let short = len.saturating_sub(quota.iter().sum());
    let mut by_remainder: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] > 0).collect();
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - quota[a] as f64, exact[b] - quota[b] as f64);
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &c in by_remainder.iter().cycle().take(short) {
        quota[c] += 1;
    }
    quota
}

/// The records of each class and the per-epoch quotas of a class-balanced loader.
#[derive(Debug, Clone)]
pub struct ClassBalance {
    members: Vec<Vec<usize>>,
    quota: Vec<usize>,
    len: usize,
}

impl ClassBalance {
    /// From the class of every record (`classes[i]` < `num_classes`) and a strength in `[0, 1]`.
    pub fn new(classes: &[usize], num_classes: usize, strength: f32) -> Result<ClassBalance> {
        ensure!(
            strength.is_finite() && (0.0..=1.0).contains(&strength),
            "the class-balance strength must be a number from 0 to 1, not {strength}"
        );
        ensure!(!classes.is_empty(), "class balance: the dataset has no records");
        // The draw indices live in the low 32 bits of the Philox counter index.
        ensure!(
            classes.len() as u64 <= 1 << 32,
            "class balance: {} records; at most 2^32",
            classes.len()
        );
        let mut members = vec![Vec::new(); num_classes];
        for (i, &c) in classes.iter().enumerate() {
            ensure!(
                c < num_classes,
                "class balance: record {i} has class {c}, outside 0..{num_classes}"
            );
            members[c].push(i);
        }
        let counts: Vec<usize> = members.iter().map(Vec::len).collect();
        let quota = class_quotas(&counts, strength, classes.len());
        Ok(ClassBalance {
            members,
            quota,
            len: classes.len(),
        })
    }

    /// Draws per epoch of each class.
    pub fn quotas(&self) -> &[usize] {
        &self.quota
    }

    /// Epoch `epoch`'s order: `len` record indices, class `c` drawn `quotas()[c]` times (see the
    /// module notes).
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let rng = RngStream::new(seed, epoch);
        let mut order = Vec::with_capacity(self.len);
        let mut draw = 0u64;
        for (members, &q) in self.members.iter().zip(&self.quota) {
            if q == 0 {
                continue;
            }
            let n = members.len();
            for _ in 0..q / n {
                order.extend_from_slice(members);
            }
            let rest = q % n;
            if rest > 0 {
                let mut pool = members.clone();
                for i in 0..rest {
                    let j = i + below(rng.words(SUBSET_TAG << 32 | draw), (n - i) as u64) as usize;
                    draw += 1;
                    pool.swap(i, j);
                }
                order.extend_from_slice(&pool[..rest]);
            }
        }
        debug_assert_eq!(order.len(), self.len);
        shuffle(&mut order, &rng);
        order
    }
}
