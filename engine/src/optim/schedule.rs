//! The per-step learning-rate schedule of NVG-SPEC §4.4: linear warmup, hold, linear decay.

/// Warmup length of the official schedule, in optimiser steps.
pub const OFFICIAL_WARMUP_STEPS: u64 = 1000;

/// The official warmup starts at this fraction of the peak learning rate.
pub const OFFICIAL_WARMUP_START_FACTOR: f64 = 0.005;

/// A piecewise-linear learning rate over optimiser steps.
///
/// `step` counts the optimiser steps already taken: the first step uses `lr(0)`. This is how a
/// `LambdaLR` stepped after every optimiser step behaves (it applies `lambda(0)` at construction).
///
/// | steps | learning rate |
/// |---|---|
/// | `0 ≤ s < warmup_steps` | `warmup_start_lr + (lr − warmup_start_lr)·s / warmup_steps` |
/// | `warmup_steps ≤ s < hold_end` | `lr` |
/// | `hold_end ≤ s < total_steps` | `lr + (final_lr − lr)·(s − hold_end) / (total_steps − hold_end)` |
/// | `s ≥ total_steps` | `final_lr` |
///
/// The rows are tried in that order, so odd settings stay well defined: a hold that ends at or after
/// `total_steps` leaves no decay (the rate drops to `final_lr` at `total_steps`), and a warmup longer than
/// the run is cut off there. Past the end the rate stays at `final_lr` (no extrapolation). Values are
/// computed in f64 and rounded to f32 once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate, reached at the end of the warmup and held until `hold_end`.
    pub lr: f32,
    /// Learning rate at step 0.
    pub warmup_start_lr: f32,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// First step of the decay (the step after the last one at `lr`); an absolute step, not a length.
    pub hold_end: u64,
    /// Step at which the decay reaches `final_lr`.
    pub total_steps: u64,
    /// Learning rate from `total_steps` on.
    pub final_lr: f32,
}

impl LrSchedule {
    /// A schedule with explicit phases (see the type's table).
    pub fn new(
        lr: f32,
        warmup_start_lr: f32,
        warmup_steps: u64,
        hold_end: u64,
        total_steps: u64,
        final_lr: f32,
    ) -> LrSchedule {
        LrSchedule {
            lr,
            warmup_start_lr,
            warmup_steps,
            hold_end,
            total_steps,
            final_lr,
        }
    }

    /// The official NVG schedule (NVG-SPEC §4.4) for peak rate `lr`, `total_steps` optimiser steps in all,
    /// `steps_per_epoch` optimiser steps per epoch and `max_epochs` epochs.
    ///
    /// Warmup: 1000 steps from 0.005·lr to lr. Then a hold at lr and a linear decay to `final_lr` at
    /// `total_steps`:
    ///
    /// | max_epochs | hold length | final_lr |
    /// |---|---|---|
    /// | < 300 | `int(0.8·total_steps)` | 0.1·lr |
    /// | = 300 | `int(0.8·total_steps)` | 0.01·lr |
    /// | > 300 | `200·steps_per_epoch − 1000` | 0.01·lr |
    ///
    /// **Interpretation:** the hold length is counted *after* the warmup, so the decay starts at
    /// `hold_end = 1000 + hold`. The > 300 rule is what decides it: its `− 1000` only makes sense if the
    /// warmup is added back, which makes the hold end exactly at the end of epoch 200
    /// (`hold_end = 200·steps_per_epoch`). For < 300 the same reading gives
    /// `hold_end = 1000 + int(0.8·total_steps)` (for d16: 1000 + 266,880 of ≈ 333,600 steps).
    /// `int(0.8·total_steps)` truncates the f64 product as Python's `int` does; a negative
    /// `200·steps_per_epoch − 1000` counts as 0. A `hold_end` at or past `total_steps` (tiny runs) means
    /// no decay phase (see the type's table).
    pub fn official(lr: f32, total_steps: u64, steps_per_epoch: u64, max_epochs: u32) -> LrSchedule {
        let hold = if max_epochs > 300 {
            steps_per_epoch
                .saturating_mul(200)
                .saturating_sub(OFFICIAL_WARMUP_STEPS)
        } else {
            (0.8 * total_steps as f64) as u64
        };
        let final_factor = if max_epochs < 300 { 0.1 } else { 0.01 };
        let peak = lr as f64;
        LrSchedule {
            lr,
            warmup_start_lr: (OFFICIAL_WARMUP_START_FACTOR * peak) as f32,
            warmup_steps: OFFICIAL_WARMUP_STEPS,
            hold_end: OFFICIAL_WARMUP_STEPS.saturating_add(hold),
            total_steps,
            final_lr: (final_factor * peak) as f32,
        }
    }

    /// The learning rate for the optimiser step that follows `step` completed steps.
    pub fn lr(&self, step: u64) -> f32 {
        let (peak, start, fin) = (self.lr as f64, self.warmup_start_lr as f64, self.final_lr as f64);
        let s = step as f64;
        let v = if step < self.warmup_steps.min(self.total_steps) {
            start + (peak - start) * s / self.warmup_steps as f64
        } else if step < self.hold_end.min(self.total_steps) {
            peak
        } else if step < self.total_steps {
            let span = (self.total_steps - self.hold_end) as f64;
            peak + (fin - peak) * (s - self.hold_end as f64) / span
        } else {
            fin
        };
        v as f32
    }
}
