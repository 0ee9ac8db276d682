//! The `carepath` command line: one `match` over subcommands, doc comments as `--help`.
//!
//! Exit codes: 0 success; 1 the input was read and found wrong (a pathway with errors); 2 a
//! usage or I/O error (the input could not be read at all).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use carepath_engine::{Diagnostic, Report, diagnostic, graph};

use crate::load;

/// carepath: cross-sector care pathways from pregnancy to the child's 18th month.
#[derive(Debug, Parser)]
#[command(name = "carepath", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pathways like a compiler: every problem, with file, line, column and a hint.
    ///
    /// PATH is a pathway folder (pathway.json and templates/), a pathway.json, or a folder of
    /// pathway folders. Pathways given together are checked together, so `enroll` actions may
    /// name one another. Exit 0 when there are no errors, 1 when there are, 2 when a path
    /// cannot be read.
    Validate {
        /// Pathway folders or files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output: text for people, json for tools.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Draw a pathway's state graph: states grouped by the owner's sector, edges labelled
    /// with the event or timer (timers dashed).
    Graph {
        /// A pathway folder or its pathway.json.
        path: PathBuf,
        /// Graphviz DOT (`| dot -Tsvg`) or Mermaid (for Markdown).
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the JSON Schema of pathway.json (what docs/pathway.schema.json holds), for
    /// editors' completion.
    Schema,
}

/// How diagnostics are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// With the source line and a caret.
    Text,
    /// `{"diagnostics": [...]}`.
    Json,
}

/// How a graph is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("carepath: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Validate { paths, format } => {
            let sources = load::load(&paths)?;
            let report = carepath_engine::check(&sources);
            print_report(&mut out, &report, format, sources.len())?;
            Ok(if report.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Graph { path, format } => {
            let sources = load::load(std::slice::from_ref(&path))?;
            let [source] = &sources[..] else {
                anyhow::bail!(
                    "{} holds {} pathways: name one pathway folder",
                    path.display(),
                    sources.len()
                );
            };
            let decoded =
                carepath_engine::decode::decode(&source.pathway.path, &source.pathway.text);
            let Some(pathway) = decoded.pathway else {
                let mut err = std::io::stderr().lock();
                for d in &decoded.diagnostics {
                    write!(err, "{}", d.render())?;
                }
                return Ok(ExitCode::from(1));
            };
            let text = match format {
                GraphFormat::Dot => graph::to_dot(&pathway),
                GraphFormat::Mermaid => graph::to_mermaid(&pathway),
            };
            out.write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            writeln!(out, "{}", schema_text())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The schema as committed in `docs/pathway.schema.json`.
pub fn schema_text() -> String {
    serde_json::to_string_pretty(&carepath_engine::schema()).unwrap_or_default()
}

fn print_report(
    out: &mut impl Write,
    report: &Report,
    format: Format,
    pathways: usize,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let text = serde_json::to_string_pretty(&diagnostic::to_json(&report.diagnostics))
                .unwrap_or_default();
            writeln!(out, "{text}")
        }
        Format::Text => {
            for d in &report.diagnostics {
                writeln!(out, "{}", d.render())?;
            }
            let (errors, warnings) = report.counts();
            writeln!(
                out,
                "checked {pathways} pathway{}: {errors} error{}, {warnings} warning{}",
                plural(pathways),
                plural(errors),
                plural(warnings)
            )
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Renders diagnostics as text, for callers that refuse to start on them.
pub fn render_all(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(Diagnostic::render)
        .collect::<Vec<_>>()
        .join("\n")
}
