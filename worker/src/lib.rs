//! # carepath-worker
//!
//! The carepath application around the pure engine: reading pathway folders, and the
//! `carepath` command line. Storage, the durable runtime, the delivery loop and the HTTP API
//! live here too as they arrive.
//!
//! ```no_run
//! let sources = carepath_worker::load::load(&["pathways".into()]).unwrap();
//! let report = carepath_engine::check(&sources);
//! assert!(!report.has_errors());
//! ```

pub mod cli;
pub mod load;
