//! Optimisers for training: AdamW, global-norm gradient clipping, the learning-rate schedule and EMA.
