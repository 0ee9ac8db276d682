//! Embedding carepath as a library, in a few lines: load a pathway folder, check it like
//! `carepath validate`, and run one family through it on virtual time like `carepath simulate`
//! (the real runtime on a temporary SQLite file; notices go through quiet hours to a file).
//!
//! ```text
//! cargo run -p carepath-example-embedding
//! ```

use std::path::{Path, PathBuf};

use carepath_worker::simulate::{self, Entry};

/// The checkout's root, so the example runs from anywhere.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // 1. Load and check: every problem with file, line, column and a hint.
    let pathway = root().join("pathways/red-cross-good-start");
    let sources = carepath_worker::load::load(&[root().join("pathways")])?;
    let report = carepath_engine::check(&sources);
    for d in &report.diagnostics {
        eprintln!("{}", d.render());
    }
    anyhow::ensure!(!report.has_errors(), "the pathways have errors");
    println!("checked {} pathways", report.pathways.len());

    // 2. Simulate a family: enrolment, scripted events, timers, notices.
    let family =
        simulate::read_family(&root().join("examples/families/red-cross-good-start.json"))?;
    let script =
        simulate::read_script(&root().join("examples/families/red-cross-good-start.events.json"))?;
    let timeline = simulate::simulate(&pathway, &family, &script, "P9M").await?;

    // 3. Read the timeline: here, who was told what, and when.
    for entry in &timeline.entries {
        if let Entry::Notice {
            at,
            to,
            template,
            status,
            ..
        } = entry
        {
            println!("{at}  {template} to {to} [{status}]");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        assert!(super::main().is_ok());
    }
}
