//! guard: run a risky command under LVM snapshots; keep the change on success, roll back on
//! failure. `main.rs` only calls `cli::main_with_args`; everything lives here so that it can be
//! tested.
pub mod child;
pub mod cli;
pub mod consistency;
pub mod dm;
pub mod error;
pub mod exec;
pub mod fault;
pub mod freeze;
pub mod hooks;
pub mod journal;
pub mod keepwatch;
pub mod lock;
pub mod log;
pub mod lvm;
pub mod manpage;
pub mod model;
pub mod mounts;
pub mod ops;
pub mod plan;
pub mod policy;
pub mod recover;
pub mod report;
pub mod rollback;
pub mod saved;
pub mod size;
pub mod status;
pub mod store;
pub mod transaction;
pub mod ui;
pub mod watcher;
