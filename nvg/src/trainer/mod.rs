//! NVG training: the data loader over pre-tokenized datasets, the teacher-forced training forward and
//! losses, and the training loop.

pub mod class_balance;
pub mod init;
pub mod loader;
pub mod objective;
pub mod params;
pub mod session;
