//! # carepath-engine
//!
//! The carepath pathway language: the model a coordinator writes, the checker that reads it
//! like a compiler, and the pure step function that moves one family's instance on.
//!
//! This crate does no I/O and reads no clock: the caller hands it file texts and the current
//! time, and receives diagnostics or effects. It knows nothing of SQL, SMTP, HTTP or tokio.
//!
//! ```
//! use carepath_engine::{check, start, step, Input, PathwaySource, SourceFile};
//!
//! let text = r#"{
//!   "id": "tiny", "version": 1, "title": "Tiny", "horizon": "P1M",
//!   "roles": {"midwife": {"sector": "region"}},
//!   "events": {"seen": {}},
//!   "initial": "waiting",
//!   "states": {
//!     "waiting": {"owner": "midwife", "on": [{"event": "seen", "to": "done"}],
//!                 "timers": [{"after": "P14D", "to": "done"}]},
//!     "done": {"terminal": true}
//!   }
//! }"#;
//! let source = PathwaySource {
//!     pathway: SourceFile { path: "tiny/pathway.json".into(), text: text.into() },
//!     templates: vec![],
//! };
//! let report = check(&[source]);
//! assert!(!report.has_errors(), "{:?}", report.diagnostics);
//! let pathway = &report.pathways[0];
//!
//! let now: jiff::Timestamp = "2027-03-01T09:00:00Z".parse().unwrap();
//! let enrolled = start(pathway, Default::default(), now).unwrap();
//! assert_eq!(enrolled.instance.state, "waiting");
//! let seen = Input::Event { name: "seen".into(), payload: serde_json::Value::Null };
//! let effects = step(pathway, &enrolled.instance, &seen, now).unwrap();
//! assert_eq!(effects.instance.state, "done");
//! ```

pub use check::{CheckedPathway, PathwaySource, Report, SourceFile, check};
pub use diagnostic::{Code, Diagnostic, Severity};
pub use duration::IsoDuration;
pub use pathway::Pathway;
pub use step::{Effects, Input, Instance, StepError, migrate, start, step};

pub mod calendar;
pub mod catalogue;
pub mod check;
pub mod cron;
pub mod decode;
pub mod diagnostic;
pub mod duration;
pub mod expr;
pub mod graph;
pub mod json;
pub mod pathway;
pub mod privacy;
pub mod step;
pub mod template;
pub mod time;

/// The JSON Schema of `pathway.json`, generated from [`Pathway`].
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Pathway);
    serde_json::to_value(schema).unwrap_or_default()
}
