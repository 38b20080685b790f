//! guard: run a risky command under LVM snapshots; keep the change on success, roll back on
//! failure. `main.rs` only calls `cli::main_with_args`; everything lives here so that it can be
//! tested.
// The layout is the architecture:
//   model/  the run record and typed per-target states (no I/O)
//   store/  the journal, locks, saved copies, and the folders they live in (owner, mode)
//   lvm/    the lvm2 adapter (real and simulated); dm/ device-mapper ioctls, freeze, the hold
//   run/    the guarded run (plan, command, hooks, transaction)
//   watch/  the COW watcher: pure fill model, sampling, actions, meter, background watcher
//   ops/    commit, rollback, recover, status: each under the run's lock
//   boot/   trial boots: boot chain check, GRUB entries and counter, confirmation, fallback
//   cli/    the command line, report rendering, policy files, man page
pub mod boot;
pub mod change;
pub mod cli;
pub mod dm;
pub mod error;
pub mod exec;
pub mod fault;
pub mod log;
pub mod lvm;
pub mod model;
pub mod mounts;
pub mod ops;
pub mod run;
pub mod size;
pub mod store;
pub mod ui;
pub mod watch;
