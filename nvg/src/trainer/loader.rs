//! The training data loader over a memory-mapped `.nvgtok` dataset.
