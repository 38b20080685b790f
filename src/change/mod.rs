//! What a run changed: recorded while it runs (fanotify), compared from the snapshot, dpkg's
//! packages; and taking paths back from a snapshot (restore, preserve).
pub mod compare;
pub mod dpkg;
pub mod record;
pub mod restore;
pub mod view;
