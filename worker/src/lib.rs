//! # carepath-worker
//!
//! The carepath application around the pure engine:
//!
//! - [`load`]: reading pathway folders from disk;
//! - [`store`]: everything kept, behind one [`store::Storage`] interface (SQLite by default);
//! - [`clock`]: the system clock in production, virtual and accelerated clocks for tests,
//!   simulation and the demo;
//! - [`config`]: the configuration file: the notifier's sections and the API's tokens;
//! - [`catalog`]: the pathway versions a database knows, checked and with compiled templates;
//! - [`runtime`]: enrolment, events and timers applied exactly once, in batches;
//! - [`bulk`]: hold, resume or cancel many families at once, by a selection, dry run first;
//! - [`directory`]: the organisations' contacts that play a role for every family;
//! - [`migration`]: running families moved onto a corrected version of their pathway;
//! - [`delivery`]: queued notices out through their channels, retried, held, dead-lettered;
//! - [`lateness`]: how late timers fire, kept in a fixed-size histogram;
//! - [`metrics`]: counters and gauges for Prometheus;
//! - [`worker`]: the loop that sleeps until the next due time and wakes when work arrives;
//! - [`simulate`]: a family's whole pathway on the real runtime and virtual time;
//! - [`forecast`]: capacity: the notices each role will get in the coming weeks, by stepping
//!   the active families forward in memory;
//! - [`api`]: the HTTP API beside the worker (inbound SMS webhooks, health);
//! - [`web`]: the coordinators' and professionals' pages, beside the API;
//! - [`cli`]: the `carepath` command line.
//!
//! ```no_run
//! let sources = carepath_worker::load::load(&["pathways".into()]).unwrap();
//! let report = carepath_engine::check(&sources);
//! assert!(!report.has_errors());
//! ```

pub mod api;
pub mod bulk;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod forecast;
pub mod lateness;
pub mod load;
pub mod metrics;
pub mod migration;
pub mod runtime;
pub mod simulate;
pub mod store;
pub mod web;
pub mod worker;
