//! The `carepath` command line: one `match` over subcommands, doc comments as `--help`.
//!
//! Exit codes: 0 success; 1 the input was read and found wrong (a pathway with errors); 2 a
//! usage or I/O error (the input could not be read at all).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use carepath_engine::{Diagnostic, Report, diagnostic, graph};
use carepath_notifier::sms;

use crate::load;

mod commands;

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
        /// Warn when an SMS template needs more segments than this (default: the
        /// configuration's [sms] max_segments, else 3).
        #[arg(long)]
        max_segments: Option<usize>,
        /// The notifier's configuration, for [sms] max_segments.
        #[arg(long, env = "CAREPATH_CONFIG")]
        config: Option<PathBuf>,
        /// A directory file (`carepath directory load`'s): warn about roles a referral leaves
        /// without a contact that nobody in it plays.
        #[arg(long)]
        directory: Option<PathBuf>,
    },
    /// Draw a pathway's state graph: states grouped by the owner's sector, edges labelled
    /// with the event or timer (timers dashed).
    Graph {
        /// A pathway folder or its pathway.json.
        path: PathBuf,
        /// Mermaid (for Markdown), Graphviz DOT, or SVG (laid out by Graphviz's `dot`).
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Render the catalogue of offers from the pathway files alone: each offer, who runs it,
    /// who it is for, how a family is referred and how long it lasts (what docs/catalogue.md
    /// holds). Exit 1, with the diagnostics, when a pathway has errors.
    Catalogue {
        /// Pathway folders or files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Markdown (for docs/) or a standalone HTML page.
        #[arg(long, value_enum, default_value_t = CatalogueFormat::Markdown)]
        format: CatalogueFormat,
    },
    /// Print the JSON Schema of pathway.json (what docs/pathway.schema.json holds), for
    /// editors' completion.
    Schema,
    /// Run the worker: load and check the pathways (refusing to start if any fails), then
    /// fire timers as they come due and deliver notices through the configured channels,
    /// and with --listen serve the HTTP API, until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Manage the HTTP API's bearer tokens.
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Manage the web view's password users.
    User {
        /// What to do.
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print the HTTP API's OpenAPI document (what docs/openapi.json holds).
    Openapi,
    /// Data keys, which seal families' fields and event payloads in the database file.
    Key {
        /// What to do.
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Enrol a family: FAMILY.json holds ref, pathway, fields and contacts.
    Enroll {
        /// The family file.
        family: PathBuf,
        /// The pathway (overrides the file's).
        #[arg(long)]
        pathway: Option<String>,
        /// The database and the pathways.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Report an event for a family. Exit 0 when applied (or already applied under the same
    /// key), 1 when refused: the reason is printed and recorded.
    Event {
        /// The family's reference.
        reference: String,
        /// The event's name.
        event: String,
        /// The payload, as JSON.
        #[arg(long)]
        payload: Option<String>,
        /// Contacts assigned with the event, as JSON: `{"volunteer": {"name": "…", "email": "…"}}`.
        #[arg(long)]
        contacts: Option<String>,
        /// The pathway, when the family is on several that take the event.
        #[arg(long)]
        pathway: Option<String>,
        /// The idempotency key (default: a new one). Repeating a key applies the event once.
        #[arg(long)]
        key: Option<String>,
        /// The database and the pathways.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show a family: state, owner, history, upcoming timers, notices and refused events.
    Status {
        /// The family's reference.
        reference: String,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… [default: carepath.db, or
        /// DATABASE_URL when it is a PostgreSQL URL].
        #[arg(long, env = "CAREPATH_DB", hide_env_values = true, default_value_os_t = default_db(), hide_default_value = true)]
        db: PathBuf,
        /// Output.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Capacity: the notices each role will get in each of the coming weeks, from the active
    /// families stepped forward in memory by their own pathways (as the web view's Kapacitet).
    Forecast {
        /// The database and the clock (`--clock fixed:TIME` forecasts from that moment).
        #[command(flatten)]
        db: DbArgs,
        /// Weeks, the current one first.
        #[arg(long, default_value_t = 12)]
        weeks: usize,
        /// Output.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List outbox notices; `outbox show ID` for one notice's text and provenance, `outbox
    /// retry ID` to queue a dead or skipped notice again.
    Outbox {
        /// Show or retry one notice.
        #[command(subcommand)]
        action: Option<OutboxAction>,
        /// Only this status: queued, sent, skipped, expired, dead.
        #[arg(long, global = true)]
        status: Option<String>,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… (before or after
        /// `show`/`retry`) [default: carepath.db, or DATABASE_URL when it is a PostgreSQL URL].
        #[arg(
            long,
            env = "CAREPATH_DB",
            hide_env_values = true,
            default_value_os_t = default_db(),
            hide_default_value = true,
            global = true
        )]
        db: PathBuf,
        /// Output (before or after `show`/`retry`).
        #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
        format: Format,
    },
    /// Opt a family's phone number or email address out of a channel (or back in, with
    /// --undo). Their notices on it are then skipped, with the reason, not sent.
    Optout {
        /// The phone number (+45…) or email address.
        address: String,
        /// The channel: sms or email (default: sms for a phone number, email for an address).
        #[arg(long)]
        channel: Option<String>,
        /// Opt back in.
        #[arg(long)]
        undo: bool,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… [default: carepath.db, or
        /// DATABASE_URL when it is a PostgreSQL URL].
        #[arg(long, env = "CAREPATH_DB", hide_env_values = true, default_value_os_t = default_db(), hide_default_value = true)]
        db: PathBuf,
    },
    /// Move the running families of a pathway onto another of its versions: checked first,
    /// each family in one transaction; --dry-run prints what each family would get.
    Migrate {
        /// The pathway.
        #[arg(long)]
        pathway: String,
        /// The version to move to (loaded with `carepath run --pathways` or enroll).
        #[arg(long)]
        to_version: u32,
        /// A state of the old version and the state it becomes: OLD=NEW (repeat for several).
        #[arg(long = "map")]
        map: Vec<String>,
        /// Which families, by state, owner and enrolment date.
        #[command(flatten)]
        select: SelectArgs,
        /// Only say what would happen to each family.
        #[arg(long)]
        dry_run: bool,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… [default: carepath.db, or
        /// DATABASE_URL when it is a PostgreSQL URL].
        #[arg(long, env = "CAREPATH_DB", hide_env_values = true, default_value_os_t = default_db(), hide_default_value = true)]
        db: PathBuf,
    },
    /// Hold, resume or cancel every family still on a pathway that matches the selection;
    /// --dry-run counts them first. Each family gets its own line in the audit log.
    Bulk {
        /// What to do.
        #[arg(value_enum)]
        action: BulkVerb,
        /// Only families on this pathway (repeat for several).
        #[arg(long = "pathway")]
        pathways: Vec<String>,
        /// Which families, by state, owner and enrolment date.
        #[command(flatten)]
        select: SelectArgs,
        /// Why: required to cancel, for each family's history.
        #[arg(long)]
        reason: Option<String>,
        /// Only count and list the families it would act on.
        #[arg(long)]
        dry_run: bool,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… [default: carepath.db, or
        /// DATABASE_URL when it is a PostgreSQL URL].
        #[arg(long, env = "CAREPATH_DB", hide_env_values = true, default_value_os_t = default_db(), hide_default_value = true)]
        db: PathBuf,
    },
    /// The database itself: moving from one machine's SQLite file to PostgreSQL.
    Db {
        /// What to do.
        #[command(subcommand)]
        action: DbAction,
    },
    /// The directory: the organisations' contacts that play a role for every family (the Red
    /// Cross coordinator for Rødovre), taken when a referral leaves a role without a contact.
    Directory {
        /// Load a file or list what is loaded.
        #[command(subcommand)]
        action: DirectoryAction,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… [default: carepath.db, or
        /// DATABASE_URL when it is a PostgreSQL URL].
        #[arg(
            long,
            env = "CAREPATH_DB",
            hide_env_values = true,
            default_value_os_t = default_db(),
            hide_default_value = true,
            global = true
        )]
        db: PathBuf,
    },
    /// Assign a person to a role of a family from now on, on every active pathway of the
    /// family with the role (or --pathway's only); its dead letters for the role are retried.
    Assign {
        /// The family's reference.
        reference: String,
        /// The role, as the pathways name it (coordinator, volunteer, health_visitor, …).
        role: String,
        /// The person's name.
        #[arg(long)]
        name: String,
        /// Email address.
        #[arg(long)]
        email: Option<String>,
        /// Mobile number with country code (+45…).
        #[arg(long)]
        phone: Option<String>,
        /// The language notices to them are written in.
        #[arg(long, default_value = "da")]
        language: String,
        /// Only on this pathway.
        #[arg(long)]
        pathway: Option<String>,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… [default: carepath.db, or
        /// DATABASE_URL when it is a PostgreSQL URL].
        #[arg(long, env = "CAREPATH_DB", hide_env_values = true, default_value_os_t = default_db(), hide_default_value = true)]
        db: PathBuf,
    },
    /// Erase a family's personal data at its request, at once: every instance of the
    /// reference (see docs/operations.md for what is kept, and why).
    Erase {
        /// The family's reference.
        reference: String,
        /// Why, for the record (the request's case number, say).
        #[arg(long)]
        reason: String,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… [default: carepath.db, or
        /// DATABASE_URL when it is a PostgreSQL URL].
        #[arg(long, env = "CAREPATH_DB", hide_env_values = true, default_value_os_t = default_db(), hide_default_value = true)]
        db: PathBuf,
    },
    /// The audit log: who did what, when, for which family, through the CLI or the API.
    Audit {
        /// Only about this family.
        #[arg(long = "ref")]
        reference: Option<String>,
        /// Only from this moment on (RFC 3339, as 2027-03-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Text, or JSON lines.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// The database: a SQLite file or a PostgreSQL URL, postgres://… [default: carepath.db, or
        /// DATABASE_URL when it is a PostgreSQL URL].
        #[arg(long, env = "CAREPATH_DB", hide_env_values = true, default_value_os_t = default_db(), hide_default_value = true)]
        db: PathBuf,
    },
    /// Run one family through a pathway on virtual time, on the real runtime and a temporary
    /// SQLite file, and print the timeline: every transition and notice, in local time.
    Simulate {
        /// The pathway folder.
        pathway: PathBuf,
        /// The family file (ref, enrolled_at, fields, contacts).
        #[arg(long)]
        family: PathBuf,
        /// How long after enrolment to run.
        #[arg(long, default_value = "P27M")]
        until: String,
        /// Events to report on the way: [{"at": "P10D", "event": "…", "payload": {…}}].
        #[arg(long)]
        event_script: Option<PathBuf>,
        /// Output.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The demo: a fresh SQLite file, the pathways, a small cohort of families, and the real
    /// worker on an accelerated clock, so months of handoffs and reminders pass in seconds.
    Demo {
        /// The folder for the demo's database and notice log (emptied first).
        #[arg(long, default_value = "carepath-demo")]
        dir: PathBuf,
        /// The pathway folders.
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        /// The cohort: families and their events.
        #[arg(long, default_value = "examples/demo-cohort.json")]
        cohort: PathBuf,
        /// Real seconds the demo takes.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
    },
}

/// `carepath run`'s options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The database and the pathways.
    #[command(flatten)]
    pub db: DbArgs,
    /// Timers claimed per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: u32,
    /// Stop when nothing more is due.
    #[arg(long)]
    pub until_idle: bool,
    /// The configuration (TOML: [email], [sms], [file], [delivery], [quiet_hours], [api]).
    /// Without channels in it and without --sink, notices stay queued.
    #[arg(long, env = "CAREPATH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Deliver to this JSON-lines file (`-` for the console) every channel the
    /// configuration gives no transport: a shorthand for a [file] section.
    #[arg(long)]
    pub sink: Option<PathBuf>,
    /// Serve the HTTP API on this address (e.g. 127.0.0.1:8080), with the tokens of the
    /// configuration's [api] section.
    #[arg(long, env = "CAREPATH_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Do not fire timers here (another `carepath run` on the same database does).
    #[arg(long)]
    pub no_timers: bool,
    /// Do not deliver notices here (another `carepath run` on the same database does).
    #[arg(long)]
    pub no_delivery: bool,
}

/// Who gets access, and to what: a token's holder or a web view user.
#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    /// Who: a system's name (`hvidovre-epj`) or a person's (`hanne.jensen`), shown in logs.
    #[arg(long)]
    pub name: String,
    /// A scope: events:write, instances:write, read or admin (repeat for several).
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// Restrict to this pathway (repeat for several); without, every pathway.
    #[arg(long = "pathway")]
    pub pathways: Vec<String>,
}

/// What to do with tokens.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Make a new random token: print it once on stdout, and add its [[api.tokens]] entry
    /// (which holds only its hash) to the configuration.
    New {
        /// Who holds it, and what it may do.
        #[command(flatten)]
        grant: GrantArgs,
        /// Append the entry to this configuration file (else it is printed on stderr).
        #[arg(long, env = "CAREPATH_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// What to do with the web view's password users.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a person who signs in to the web view with a name and a password: the password is
    /// read from the first line of standard input, and only its Argon2id hash is added to the
    /// configuration as an [[api.users]] entry.
    New {
        /// Who signs in, and what they may do.
        #[command(flatten)]
        grant: GrantArgs,
        /// Append the entry to this configuration file.
        #[arg(long, env = "CAREPATH_CONFIG")]
        config: PathBuf,
    },
}

/// Which families a bulk operation or a migration acts on, beside their pathway.
#[derive(Debug, clap::Args)]
pub struct SelectArgs {
    /// Only families in this state.
    #[arg(long)]
    pub state: Option<String>,
    /// Only families owned by this role.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only families enrolled before this moment (RFC 3339).
    #[arg(long)]
    pub enrolled_before: Option<String>,
    /// Only this family.
    #[arg(long = "ref")]
    pub reference: Option<String>,
}

/// What `carepath bulk` does to each family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkVerb {
    /// Put on hold.
    Hold,
    /// Resume from a hold.
    Resume,
    /// End the pathway now (needs --reason).
    Cancel,
}

/// What to do with data keys.
#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Print a new random data key: give it to every carepath process as CAREPATH_DATA_KEY,
    /// and keep it as safely as the database's backups (without it they cannot be read).
    New,
}

/// What to do with the database.
#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Copy everything in a SQLite file (pathway versions, families, timers, history, events,
    /// notices with their provenance, opt-outs, the audit log) into an empty PostgreSQL
    /// database, in one transaction, and check each table's rows on both sides. Stop the
    /// workers on the file first; then start them on the new database.
    Copy {
        /// The SQLite file: sqlite:PATH, or the path.
        #[arg(long)]
        from: String,
        /// The PostgreSQL database: postgres://user:password@host/database. Its schema is made
        /// if it has none; it must hold no families yet.
        #[arg(long)]
        to: String,
    },
}

/// What to do with the directory.
#[derive(Debug, Subcommand)]
pub enum DirectoryAction {
    /// Replace the directory with a file's entries, checked against the loaded pathways first
    /// (all or nothing).
    Load {
        /// The directory file (TOML, `[[role]]` entries).
        file: PathBuf,
    },
    /// List the directory, addresses masked.
    List,
}

/// What to do with one outbox notice.
#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// Print the notice, its text and its provenance: every status it went through.
    Show {
        /// The notice's id (the # in the list).
        id: i64,
    },
    /// Queue a dead or skipped notice again, with a fresh set of attempts.
    Retry {
        /// The notice's id.
        id: i64,
    },
}

/// The database when neither `--db` nor `CAREPATH_DB` names one: `DATABASE_URL` when it is a
/// PostgreSQL URL (as platforms that provide a managed database set it), else `carepath.db`.
/// Neither value is shown in `--help`: a URL may carry a password.
fn default_db() -> PathBuf {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| crate::store::backend::is_postgres(std::path::Path::new(url)))
        .map_or_else(|| PathBuf::from("carepath.db"), PathBuf::from)
}

/// Where the database is, and the pathways to load into it.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// The database: a SQLite file (created if missing) or a PostgreSQL URL,
    /// postgres://user:password@host/database [default: carepath.db, or DATABASE_URL when it is
    /// a PostgreSQL URL].
    #[arg(long, env = "CAREPATH_DB", hide_env_values = true, default_value_os_t = default_db(), hide_default_value = true)]
    pub db: PathBuf,
    /// Pathway folders to check and load; when the folder does not exist, the versions
    /// already stored in the database are used.
    #[arg(long, default_value = "pathways")]
    pub pathways: PathBuf,
    /// The clock: system, fixed:TIME (virtual, standing still), or scaled:TIME:FACTOR.
    #[arg(long, env = "CAREPATH_CLOCK", default_value = "system")]
    pub clock: String,
}

/// How a command prints what it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people (diagnostics with the source line and a caret).
    Text,
    /// JSON for tools (diagnostics as `{"diagnostics": [...]}`).
    Json,
}

/// How the catalogue is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CatalogueFormat {
    /// Markdown.
    Markdown,
    /// A standalone HTML page.
    Html,
}

/// How a graph is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
    /// SVG, laid out by Graphviz's `dot` (install Graphviz: `apt install graphviz`).
    Svg,
}

/// Lays out DOT as SVG with Graphviz's `dot`, or says how to get it.
fn svg(dot: &str) -> anyhow::Result<String> {
    use std::process::{Command as Process, Stdio};
    let mut child = Process::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "--format svg lays the graph out with Graphviz's `dot`, which could not be run ({e}): install Graphviz (apt install graphviz), or use --format dot or mermaid"
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        anyhow::bail!(
            "dot could not lay the graph out: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // The reader went away (`carepath status … | head`): not an error of ours.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carepath: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether an error is a write to a pipe whose reader closed it.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Validate {
            paths,
            format,
            max_segments,
            config,
            directory,
        } => {
            let sources = load::load(&paths)?;
            let context = load::beside(&paths, &sources);
            let max_segments = match max_segments {
                Some(n) => n,
                None => crate::config::read(config.as_deref(), None)?
                    .notifier
                    .and_then(|c| c.sms)
                    .map_or(sms::DEFAULT_MAX_SEGMENTS, |s| s.max_segments),
            };
            let mut report = carepath_engine::check(&[&sources[..], &context[..]].concat());
            let mut estimates = sms::check(&mut report, max_segments);
            if let Some(file) = &directory {
                let entries = crate::directory::read(file)?;
                crate::directory::check_referrals(
                    &mut report,
                    &[&sources[..], &context[..]].concat(),
                    &entries,
                );
            }
            if !context.is_empty() {
                // Report on the named pathways only: the others are there to refer into.
                let files: std::collections::HashSet<&str> = sources
                    .iter()
                    .flat_map(|s| std::iter::once(&s.pathway).chain(&s.templates))
                    .map(|f| f.path.as_str())
                    .collect();
                report
                    .diagnostics
                    .retain(|d| files.contains(d.file.as_str()));
                for (_, list) in &mut estimates {
                    list.retain(|e| files.contains(e.path.as_str()));
                }
                estimates.retain(|(_, list)| !list.is_empty());
            }
            print_report(&mut out, &report, &estimates, format, sources.len())?;
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
                GraphFormat::Svg => svg(&graph::to_dot(&pathway))?,
            };
            out.write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalogue { paths, format } => {
            let sources = load::load(&paths)?;
            let report = carepath_engine::check(&sources);
            if report.has_errors() {
                let mut err = std::io::stderr().lock();
                writeln!(err, "{}", render_all(&report.diagnostics))?;
                return Ok(ExitCode::from(1));
            }
            let pathways: Vec<&carepath_engine::Pathway> =
                report.pathways.iter().map(|p| &p.pathway).collect();
            let text = match format {
                CatalogueFormat::Markdown => carepath_engine::catalogue::markdown(&pathways),
                CatalogueFormat::Html => carepath_engine::catalogue::html(&pathways),
            };
            out.write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            writeln!(out, "{}", schema_text())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            write!(out, "{}", crate::api::openapi::document())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Key {
            action: KeyAction::New,
        } => {
            let key = crate::store::seal::Seal::new_key()
                .map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
            writeln!(out, "{key}")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            action: TokenAction::New { grant, config },
        } => {
            let token = commands::new_token(&grant, config.as_deref())?;
            writeln!(out, "{token}")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::User {
            action: UserAction::New { grant, config },
        } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            commands::new_user(&grant, password, &config)?;
            Ok(ExitCode::SUCCESS)
        }
        other => {
            drop(out);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(commands::run(other))
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
    estimates: &[(String, Vec<sms::Estimate>)],
    format: Format,
    pathways: usize,
) -> std::io::Result<()> {
    let sized = || {
        estimates.iter().flat_map(|(id, es)| {
            es.iter().map(move |e| {
                let size = e.size.as_ref().map_err(|why| why.as_str());
                (id.as_str(), e, size)
            })
        })
    };
    match format {
        Format::Json => {
            let mut json = diagnostic::to_json(&report.diagnostics);
            let sms: Vec<serde_json::Value> = sized()
                .map(|(id, e, size)| match size {
                    Ok(s) => serde_json::json!({
                        "pathway": id, "template": e.template, "language": e.language,
                        "file": e.path, "encoding": s.encoding.as_str(), "units": s.units,
                        "segments": s.segments,
                    }),
                    Err(why) => serde_json::json!({
                        "pathway": id, "template": e.template, "language": e.language,
                        "file": e.path, "error": why,
                    }),
                })
                .collect();
            json["sms"] = serde_json::Value::Array(sms);
            let text = serde_json::to_string_pretty(&json).unwrap_or_default();
            writeln!(out, "{text}")
        }
        Format::Text => {
            for d in &report.diagnostics {
                writeln!(out, "{}", d.render())?;
            }
            if sized().next().is_some() {
                writeln!(
                    out,
                    "SMS templates (sample values: the year's longest date, {} characters a text):",
                    sms::SAMPLE_TEXT_CHARS
                )?;
                for (id, e, size) in sized() {
                    let what = match size {
                        Ok(s) => format!(
                            "{} segment{}, {} {} units",
                            s.segments,
                            plural(s.segments),
                            s.units,
                            s.encoding.as_str()
                        ),
                        Err(why) => format!("not estimated: {why}"),
                    };
                    writeln!(out, "  {id} {}.{}: {what}", e.template, e.language)?;
                }
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
