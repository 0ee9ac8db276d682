//! End-to-end tests of carepath: the real binary and the real pathways.
//!
//! One test binary (like ripgrep's), with modules per area. Golden files are rewritten with
//! `UPDATE_EXPECT=1 cargo test -p carepath-tests`; review the diff before committing.

mod suite;
