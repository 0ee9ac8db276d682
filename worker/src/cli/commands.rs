//! The commands that use the database: run, enroll, event, status, outbox, simulate, demo.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_json::{Value, json};

use super::RunArgs;
use crate::api::{self, ApiConfig};
use crate::bulk;
use crate::catalog::{self, Catalog};
use crate::clock::{self, Clock, ScaledClock, SystemClock};
use crate::delivery::Notifier;
use crate::lateness::Lateness;
use crate::migration;
use crate::runtime::{EnrolRequest, EventRequest, EventResult, Runtime, RuntimeError};
use crate::simulate::{self, Family, ScriptedEvent};
use crate::store::seal::Seal;
use crate::store::{
    AuditEntry, AuditFilter, Backend, Contact, NoticeStatus, OutboxFilter, Outcome, PgStore,
    Requeue, SqliteStore, Storage,
};
use crate::worker::{self, Options, Wake};
use carepath_notifier::NotifierConfig;
use carepath_notifier::channel::{mask_email, mask_phone};
use carepath_notifier::file::{Console as FileConsole, FileConfig};

use super::{
    BulkVerb, Command, DbAction, DbArgs, DirectoryAction, Format, GrantArgs, OutboxAction,
    SelectArgs,
};

/// Runs a database command.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run_worker(args).await,
        Command::Enroll {
            family,
            pathway,
            db,
        } => enroll(&family, pathway, &db).await,
        Command::Event {
            reference,
            event,
            payload,
            contacts,
            pathway,
            key,
            db,
        } => {
            let payload: Value = match payload {
                Some(p) => serde_json::from_str(&p)
                    .with_context(|| format!("--payload is not JSON: {p}"))?,
                None => Value::Null,
            };
            let contacts = match contacts {
                Some(c) => serde_json::from_str(&c).context(
                    "--contacts is not a JSON object of role → {name, email, phone, language}",
                )?,
                None => BTreeMap::new(),
            };
            let key = key.unwrap_or_else(new_key);
            report_event(
                &db,
                EventRequest {
                    instance_id: None,
                    key,
                    reference,
                    pathway,
                    event,
                    payload,
                    contacts,
                },
            )
            .await
        }
        Command::Status {
            reference,
            db,
            format,
        } => status(&db, &reference, format).await,
        Command::Forecast { db, weeks, format } => forecast(&db, weeks, format).await,
        Command::Outbox {
            action: None,
            status,
            db,
            format,
        } => outbox(&db, status.as_deref(), format).await,
        Command::Outbox {
            action: Some(action),
            db,
            format,
            ..
        } => outbox_action(&db, action, format).await,
        Command::Optout {
            address,
            channel,
            undo,
            db,
        } => optout(&db, &address, channel.as_deref(), undo).await,
        Command::Erase {
            reference,
            reason,
            db,
        } => erase(&db, &reference, &reason).await,
        Command::Directory { action, db } => directory(&db, action).await,
        Command::Db {
            action: DbAction::Copy { from, to },
        } => copy_database(&from, &to).await,
        Command::Assign {
            reference,
            role,
            name,
            email,
            phone,
            language,
            pathway,
            db,
        } => {
            let contact = Contact {
                name,
                email,
                phone,
                language,
                channel: None,
            };
            assign(&db, &reference, &role, &contact, pathway.as_deref()).await
        }
        Command::Migrate {
            pathway,
            to_version,
            map,
            select,
            dry_run,
            db,
        } => {
            let map = migration::parse_map(&map).map_err(anyhow::Error::msg)?;
            let only = selection(None, select)?;
            migrate_command(&db, &pathway, to_version, &map, &only, dry_run).await
        }
        Command::Bulk {
            action,
            pathways,
            select,
            reason,
            dry_run,
            db,
        } => {
            let action = match (action, reason) {
                (BulkVerb::Hold, _) => bulk::Action::Hold,
                (BulkVerb::Resume, _) => bulk::Action::Resume,
                (BulkVerb::Cancel, Some(reason)) if !reason.trim().is_empty() => {
                    bulk::Action::Cancel { reason }
                }
                (BulkVerb::Cancel, _) => {
                    bail!("cancelling needs --reason: it goes into each family's history")
                }
            };
            let selection = selection((!pathways.is_empty()).then_some(pathways), select)?;
            bulk_command(&db, &action, &selection, dry_run).await
        }
        Command::Audit {
            reference,
            since,
            format,
            db,
        } => audit_log(&db, reference, since.as_deref(), format).await,
        Command::Simulate {
            pathway,
            family,
            until,
            event_script,
            format,
        } => {
            let family = simulate::read_family(&family)?;
            let script = match event_script {
                Some(p) => simulate::read_script(&p)?,
                None => Vec::new(),
            };
            let timeline = simulate::simulate(&pathway, &family, &script, &until).await?;
            let mut out = std::io::stdout().lock();
            match format {
                Format::Text => write!(out, "{}", timeline.to_text())?,
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&timeline)?)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            pathways,
            cohort,
            seconds,
        } => demo(&dir, &pathways, &cohort, seconds).await,
        Command::Validate { .. }
        | Command::Graph { .. }
        | Command::Schema
        | Command::Catalogue { .. }
        | Command::Openapi
        | Command::Token { .. }
        | Command::User { .. }
        | Command::Key { .. } => {
            bail!("not a database command")
        }
    }
}

/// A fresh idempotency key: time and process, unique enough for a person at a shell.
fn new_key() -> String {
    format!(
        "cli-{}-{}",
        Timestamp::now().as_nanosecond(),
        std::process::id()
    )
}

/// Opens the database and its catalog, loading the pathway folder when it exists. Only the
/// commands meant to start a database (`run`, `enroll`) `create` a missing one: any other
/// would report into an empty new file and lose the report.
async fn open(db: &DbArgs, now: Timestamp, create: bool) -> anyhow::Result<(Backend, Catalog)> {
    let store = if create {
        sealed(Backend::open(&db.db).await?).await?
    } else {
        sealed(Backend::open_existing(&db.db).await?).await?
    };
    let catalog = if db.pathways.exists() {
        let (catalog, loaded) =
            Catalog::sync(&store, std::slice::from_ref(&db.pathways), now).await?;
        for l in loaded.iter().filter(|l| l.added) {
            tracing::info!(pathway = %l.pathway, version = l.version, "pathway version stored");
        }
        catalog
    } else {
        Catalog::from_store(&store).await?
    };
    Ok((store, catalog))
}

/// `store` with the data key of the environment ([`crate::store::seal::KEY_ENV`]), if one is set: families'
/// fields and event payloads are sealed in the file.
async fn sealed(store: Backend) -> anyhow::Result<Backend> {
    Ok(store.seal_with(Seal::from_env()?).await?)
}

/// Who runs a command, for the audit log: the user of the operating system.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "(unknown user)".into());
    format!("cli {user}")
}

/// Appends what a command did to the audit log: `outcome` is `Ok`, or the refusal's code or
/// reason (never a value from the input).
async fn audit(
    store: &Backend,
    at: Timestamp,
    action: &str,
    reference: Option<&str>,
    instance_id: Option<i64>,
    detail: Option<String>,
    outcome: Result<(), String>,
) -> anyhow::Result<()> {
    store
        .append_audit(&AuditEntry {
            at,
            actor: cli_actor(),
            action: action.into(),
            reference: reference.map(str::to_string),
            instance_id,
            detail,
            outcome: match outcome {
                Ok(()) => "ok".into(),
                Err(why) => format!("refused: {why}"),
            },
        })
        .await
        .context("the audit log could not be written")?;
    Ok(())
}

/// Logs to stderr at `CAREPATH_LOG`, or at `default` without it.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAREPATH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for people: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// The scopes as given on the command line.
fn parse_scopes(scopes: &[String]) -> anyhow::Result<std::collections::BTreeSet<api::Scope>> {
    scopes
        .iter()
        .map(|s| {
            toml::Value::String(s.clone())
                .try_into::<api::Scope>()
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--scope {s}: expected events:write, instances:write, read or admin"
                    )
                })
        })
        .collect()
}

/// `config` checked as `carepath run` will check it (but for the pathways, checked when it
/// starts), as the TOML lines to append to a configuration.
fn api_entry(config: &ApiConfig, pathways: &[String]) -> anyhow::Result<String> {
    api::Tokens::new(config, pathways)?;
    let what = if config.users.is_empty() {
        "token"
    } else {
        "user"
    };
    Ok(format!(
        "\n# Added by `carepath {what} new`: only the {}'s hash is kept.\n{}",
        if config.users.is_empty() {
            "token"
        } else {
            "password"
        },
        toml::to_string(config)?
            .replace("[[tokens]]", "[[api.tokens]]")
            .replace("[[users]]", "[[api.users]]")
            .replace("tokens = []\n", "")
    ))
}

/// Makes a token for `name` and its `[[api.tokens]]` entry, checked as `carepath run` will
/// check it. Returns the token and the entry's TOML.
fn token_entry(grant: &GrantArgs) -> anyhow::Result<(String, String)> {
    let token = api::auth::new_token().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let entry = api::auth::TokenConfig {
        name: grant.name.clone(),
        sha256: api::auth::hash_hex(&token),
        scopes: parse_scopes(&grant.scopes)?,
        pathways: restriction(&grant.pathways),
    };
    let text = api_entry(
        &ApiConfig {
            tokens: vec![entry],
            users: Vec::new(),
        },
        &grant.pathways,
    )?;
    Ok((token, text))
}

/// `--pathway` given, as a restriction.
fn restriction(pathways: &[String]) -> Option<std::collections::BTreeSet<String>> {
    (!pathways.is_empty()).then(|| pathways.iter().cloned().collect())
}

/// Adds a web view user `name` with `password`'s Argon2id hash to `config`.
pub(super) fn new_user(grant: &GrantArgs, password: &str, config: &Path) -> anyhow::Result<()> {
    if password.chars().count() < 12 {
        bail!("the password must be at least 12 characters (read from standard input)");
    }
    let entry = api::auth::UserConfig {
        name: grant.name.clone(),
        argon2: api::auth::hash_password(password).map_err(anyhow::Error::msg)?,
        scopes: parse_scopes(&grant.scopes)?,
        pathways: restriction(&grant.pathways),
    };
    let text = api_entry(
        &ApiConfig {
            tokens: Vec::new(),
            users: vec![entry],
        },
        &grant.pathways,
    )?;
    append_config(config, &text)?;
    eprintln!(
        "carepath: user \"{}\" added to {}; restart `carepath run` to use it",
        grant.name,
        config.display()
    );
    Ok(())
}

/// Appends `text` to the configuration at `path`, created owner-only.
fn append_config(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    // The configuration names secrets' places and holds token hashes: owner only.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Makes a token for `name`, checks its entry as `carepath run` will, and appends the entry
/// to `config` (or prints it on stderr). Returns the token.
pub(super) fn new_token(grant: &GrantArgs, config: Option<&Path>) -> anyhow::Result<String> {
    let name = &grant.name;
    let (token, text) = token_entry(grant)?;
    match config {
        Some(path) => {
            append_config(path, &text)?;
            eprintln!(
                "carepath: token \"{name}\" added to {}; restart `carepath run` to use it. The token is shown once:",
                path.display()
            );
        }
        None => eprintln!(
            "carepath: add this to the configuration, then restart `carepath run`:\n{text}\nThe token is shown once:"
        ),
    }
    Ok(token)
}

async fn run_worker(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging("info");
    let RunArgs {
        db,
        batch,
        until_idle,
        config,
        sink,
        listen,
        no_timers,
        no_delivery,
    } = args;
    let clock = clock::parse(&db.clock).map_err(anyhow::Error::msg)?;
    let (store, catalog) = open(&db, clock.now(), true).await?;
    tracing::info!(
        db = %store.name(),
        pathways = ?catalog.pathway_ids(),
        "worker starting"
    );
    let config = crate::config::read(config.as_deref(), sink)?;
    let tokens = api::Tokens::new(&config.api, &catalog.pathway_ids())?;
    let rt = Arc::new(Runtime::new(store, catalog, clock));
    let notifier = match (&config.notifier, no_delivery) {
        (_, true) => None,
        (Some(c), false) => Some(Notifier::new(c)?.with_metrics(rt.metrics().clone())),
        (None, false) => {
            tracing::warn!(
                "no channels configured (--config or --sink): notices stay queued until a worker with channels runs"
            );
            None
        }
    };
    let wake = Wake::new();
    wake.stop_on_signals()?;
    let lost = match rt.store() {
        Backend::Sqlite(_) => {
            wake.listen(&db.db);
            worker::watch_database(&db.db, &wake)
        }
        Backend::Postgres(pg) => {
            wake.listen_postgres(pg);
            Arc::default()
        }
    };
    let server = match listen {
        Some(addr) => {
            let gateway_secret = match config
                .notifier
                .as_ref()
                .and_then(|c| c.sms.as_ref())
                .and_then(|s| s.inbound_secret_env.as_deref())
            {
                Some(var) => Some(carepath_notifier::config::secret(
                    var,
                    "sms.inbound_secret_env",
                )?),
                None => None,
            };
            if tokens.is_empty() {
                tracing::warn!(
                    "no [api] tokens configured: every /v1 call but the gateway webhook is refused (create one with `carepath token new`)"
                );
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, tokens = tokens.len(), "HTTP API listening");
            // With the worker elsewhere, the socket beside the database wakes it.
            let other = (no_timers || no_delivery).then(|| db.db.clone());
            let keyword = config
                .notifier
                .as_ref()
                .and_then(|c| c.sms.as_ref())
                .and_then(|s| s.inbound_keyword.clone());
            let api = api::Api::new(
                rt.clone(),
                tokens,
                gateway_secret,
                api::waker(wake.clone(), other),
            )
            .with_inbound_keyword(keyword);
            // The web view beside the API, under `/`.
            let routes = api::router(api.clone()).merge(crate::web::router(api));
            Some(tokio::spawn(api::serve(listener, routes, wake.clone())))
        }
        None => None,
    };
    if no_timers && notifier.is_none() {
        // The API alone: serve until a signal.
        if server.is_none() {
            bail!("--no-timers and --no-delivery without --listen leave nothing to run");
        }
        tracing::info!("timers and delivery are left to another process");
        wake.stopped().await;
        if let Some(server) = server {
            server.await??;
        }
        rt.store().close().await;
        return Ok(exit(&lost));
    }
    let summary = worker::run(
        &rt,
        &wake,
        notifier.as_ref(),
        &Options {
            batch: batch.max(1),
            until_idle,
            until: None,
            timers: !no_timers,
        },
    )
    .await?;
    if let Some(server) = server {
        // The worker stopped (a signal, or --until-idle): the server finishes what it has.
        wake.stop();
        server.await??;
    }
    let late = |q| {
        summary
            .lateness
            .quantile(q)
            .map_or_else(|| "-".to_string(), Lateness::show)
    };
    tracing::info!(
        fired = summary.fired,
        delivered = summary.delivered,
        dead = summary.dead,
        expired = summary.expired,
        lateness_p50 = late(0.5),
        lateness_p99 = late(0.99),
        "worker stopped"
    );
    rt.store().close().await;
    Ok(exit(&lost))
}

/// Success, unless the database was lost under the running process.
fn exit(lost: &std::sync::OnceLock<String>) -> ExitCode {
    match lost.get() {
        Some(why) => {
            eprintln!("carepath: {why}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}

async fn enroll(path: &Path, pathway: Option<String>, db: &DbArgs) -> anyhow::Result<ExitCode> {
    let family = simulate::read_family(path)?;
    let Some(pathway) = pathway.or(family.pathway) else {
        bail!(
            "{}: no pathway: add \"pathway\" to the file or pass --pathway",
            path.display()
        );
    };
    let clock = clock::parse(&db.clock).map_err(anyhow::Error::msg)?;
    let (store, catalog) = open(db, clock.now(), true).await?;
    let rt = Runtime::new(store, catalog, clock);
    let result = rt
        .enrol(&EnrolRequest {
            reference: family.reference.clone(),
            pathway: pathway.clone(),
            fields: family.fields,
            contacts: family.contacts,
        })
        .await;
    audit(
        rt.store(),
        rt.clock().now(),
        "enrol",
        Some(&family.reference),
        result.as_ref().ok().map(|e| e.instance_id),
        Some(format!("pathway {pathway}")),
        result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    )
    .await?;
    rt.store().close().await;
    match result {
        Ok(e) => {
            worker::wake_other(&db.db);
            println!(
                "enrolled {} on {pathway} version {} (instance {}): state {}, owner {}",
                family.reference,
                e.version,
                e.instance_id,
                e.state,
                e.owner.as_deref().unwrap_or("-")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("carepath: enrolment refused: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn report_event(db: &DbArgs, req: EventRequest) -> anyhow::Result<ExitCode> {
    let clock = clock::parse(&db.clock).map_err(anyhow::Error::msg)?;
    let (store, catalog) = open(db, clock.now(), false).await?;
    let rt = Runtime::new(store, catalog, clock);
    let results = rt.apply_events(std::slice::from_ref(&req)).await;
    let Some(r) = results?.pop() else {
        bail!("no result for the event");
    };
    audit(
        rt.store(),
        rt.clock().now(),
        "event",
        Some(&r.record.reference),
        r.record.instance_id,
        Some(format!("event {}, key {}", r.record.name, r.record.key)),
        match (&r.record.outcome, r.conflict) {
            (_, true) => Err("the key was used for another event".to_string()),
            (Outcome::Applied, _) => Ok(()),
            (Outcome::Rejected, _) => Err(r.record.code.clone().unwrap_or_default()),
        },
    )
    .await?;
    rt.store().close().await;
    if r.conflict {
        eprintln!(
            "carepath: key {} was used before for another event ({} for {}): nothing was applied; use a new key for a new event",
            r.record.key, r.record.name, r.record.reference
        );
        return Ok(ExitCode::from(1));
    }
    let again = if r.replayed {
        " (key seen before: this is the first answer)"
    } else {
        ""
    };
    // A family event that went to several pathways is reported part by part.
    let parts: Vec<&EventResult> = std::iter::once(&r).chain(&r.also).collect();
    let on = |p: &EventResult| {
        p.record
            .pathway
            .clone()
            .filter(|_| !r.also.is_empty())
            .map(|p| format!(" on {p}"))
            .unwrap_or_default()
    };
    let mut applied = false;
    for p in parts {
        match p.record.outcome {
            Outcome::Applied => {
                applied = true;
                match &p.transition {
                    Some((from, to)) => println!(
                        "applied {} to {}{}: {from} → {to} (key {}){again}",
                        p.record.name,
                        p.record.reference,
                        on(p),
                        p.record.key
                    ),
                    None => println!(
                        "applied {} to {}{} (key {}){again}",
                        p.record.name,
                        p.record.reference,
                        on(p),
                        p.record.key
                    ),
                }
            }
            Outcome::Rejected => eprintln!(
                "carepath: event {} refused{} [{}]: {}{again}",
                p.record.name,
                on(p),
                p.record.code.as_deref().unwrap_or("-"),
                p.record.reason.as_deref().unwrap_or("-")
            ),
        }
    }
    if applied {
        worker::wake_other(&db.db);
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

async fn forecast(db: &DbArgs, weeks: usize, format: Format) -> anyhow::Result<ExitCode> {
    let clock = clock::parse(&db.clock).map_err(anyhow::Error::msg)?;
    let now = clock.now();
    let store = sealed(Backend::open_existing(&db.db).await?).await?;
    let catalog = Catalog::from_store(&store).await?;
    let rows: Vec<_> = store
        .all_instances()
        .await?
        .into_iter()
        .filter(|r| r.instance.status == carepath_engine::step::Status::Active)
        .collect();
    store.close().await;
    let tz = carepath_engine::time::zone("Europe/Copenhagen")?;
    let span = crate::forecast::Span::new(now, weeks, &tz)?;
    let f = crate::forecast::forecast(&catalog, &rows, &span);
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&f)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} families stepped forward from {}{}",
        f.families,
        local_in(now, &tz),
        if f.held > 0 {
            format!(" ({} on hold left out)", f.held)
        } else {
            String::new()
        }
    )?;
    write!(out, "{:<20}", "role \\ week of")?;
    for w in &f.weeks {
        write!(out, " {:>6}", w.strftime("%d/%m").to_string())?;
    }
    writeln!(out)?;
    for (role, counts) in &f.roles {
        write!(out, "{role:<20}")?;
        for n in counts {
            write!(out, " {n:>6}")?;
        }
        writeln!(out)?;
    }
    for (id, why) in &f.failed {
        writeln!(out, "instance {id} could not be stepped forward: {why}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A moment as local date and time in `tz`.
fn local_in(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}

async fn status(db: &Path, reference: &str, format: Format) -> anyhow::Result<ExitCode> {
    let store = sealed(Backend::open_existing(db).await?).await?;
    let catalog = Catalog::from_store(&store).await?;
    let instances = store.instances_by_ref(reference).await?;
    if instances.is_empty() {
        store.close().await;
        eprintln!("carepath: no family {reference} in {}", store.name());
        return Ok(ExitCode::from(1));
    }
    let now = Timestamp::now();
    let mut report = Vec::new();
    for inst in &instances {
        let version = catalog.version(inst.pathway_version_id);
        let local = local_time(&catalog, inst.pathway_version_id);
        // Sensitive fields are named, never shown.
        let fields = catalog::redact(version.map(|v| &**v), &inst.instance.fields);
        let history = store.history(inst.id).await?;
        let timers = store.timers(inst.id).await?;
        let mut notices = store
            .outbox(&OutboxFilter {
                instance_id: Some(inst.id),
                ..OutboxFilter::default()
            })
            .await?;
        catalog.preview(&mut notices);
        report.push(json!({
            "instance_id": inst.id,
            "pathway": inst.pathway,
            "version": version.map(|v| v.checked.pathway.version),
            "state": inst.instance.state,
            "owner": inst.instance.owner,
            "status": inst.instance.status,
            "held_since": inst.held_since.map(&local),
            "fields": fields,
            "history": history.iter().map(|h| json!({
                "seq": h.seq, "at": local(h.at), "from": h.from, "to": h.to,
                "cause": h.cause, "notes": h.notes,
            })).collect::<Vec<_>>(),
            "upcoming_timers": timers.iter().map(|t| json!({"key": t.key, "due": local(t.due)})).collect::<Vec<_>>(),
            "notices": notices.iter().map(|n| json!({
                "id": n.id, "at": local(n.not_before), "to": n.role, "template": n.template,
                "channel": n.channel, "status": n.status, "error": n.last_error,
                "waits_until": waits_until(n, now).map(&local),
                "expires_at": n.expires_at.map(&local),
            })).collect::<Vec<_>>(),
        }));
    }
    let refused: Vec<Value> = store
        .events(reference)
        .await?
        .into_iter()
        .filter(|e| e.outcome == Outcome::Rejected)
        .map(|e| json!({"key": e.key, "event": e.name, "at": e.received_at, "code": e.code, "reason": e.reason}))
        .collect();
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(
                &json!({"ref": reference, "instances": report, "refused_events": refused})
            )?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    for r in &report {
        writeln!(
            out,
            "{reference} on {} v{} (instance {}): {} — state {}, owner {}",
            s(&r["pathway"]),
            s(&r["version"]),
            s(&r["instance_id"]),
            s(&r["status"]),
            s(&r["state"]),
            if r["owner"].is_null() {
                "-".into()
            } else {
                s(&r["owner"])
            }
        )?;
        if !r["held_since"].is_null() {
            writeln!(
                out,
                "  ON HOLD since {}: timers wait, nothing is sent, events are refused",
                s(&r["held_since"])
            )?;
        }
        writeln!(out, "  fields: {}", r["fields"])?;
        writeln!(out, "  history:")?;
        for h in r["history"].as_array().into_iter().flatten() {
            let notes = h["notes"]
                .as_array()
                .map(|n| n.iter().map(s).collect::<Vec<_>>().join("; "))
                .unwrap_or_default();
            writeln!(
                out,
                "    {}  {}{}  [{}]{}",
                s(&h["at"]),
                if h["from"].is_null() {
                    String::new()
                } else {
                    format!("{} → ", s(&h["from"]))
                },
                s(&h["to"]),
                h["cause"]["name"]
                    .as_str()
                    .or(h["cause"]["key"].as_str())
                    .unwrap_or("enrolled"),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!("  {notes}")
                }
            )?;
        }
        writeln!(out, "  upcoming timers:")?;
        if r["upcoming_timers"].as_array().is_none_or(Vec::is_empty) {
            writeln!(out, "    none")?;
        }
        for t in r["upcoming_timers"].as_array().into_iter().flatten() {
            writeln!(out, "    {}  {}", s(&t["due"]), s(&t["key"]))?;
        }
        writeln!(out, "  notices:")?;
        if r["notices"].as_array().is_none_or(Vec::is_empty) {
            writeln!(out, "    no notices")?;
        }
        for n in r["notices"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "    {}  #{} to {} by {}: {} [{}{}]{}",
                s(&n["at"]),
                s(&n["id"]),
                s(&n["to"]),
                s(&n["channel"]),
                s(&n["template"]),
                s(&n["status"]),
                if n["waits_until"].is_null() {
                    String::new()
                } else {
                    format!(", waits until {}", s(&n["waits_until"]))
                },
                if n["error"].is_null() {
                    String::new()
                } else {
                    format!(" — {}", s(&n["error"]))
                }
            )?;
        }
    }
    if !refused.is_empty() {
        writeln!(out, "refused events:")?;
        for e in &refused {
            writeln!(
                out,
                "  {} ({}): {}: {}",
                s(&e["event"]),
                s(&e["key"]),
                s(&e["code"]),
                s(&e["reason"])
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn outbox(db: &Path, status: Option<&str>, format: Format) -> anyhow::Result<ExitCode> {
    let status = status
        .map(NoticeStatus::from_name)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let store = sealed(Backend::open_existing(db).await?).await?;
    let catalog = Catalog::from_store(&store).await?;
    let mut rows = store
        .outbox(&OutboxFilter {
            status,
            ..OutboxFilter::default()
        })
        .await?;
    catalog.preview(&mut rows);
    store.close().await;
    let now = Timestamp::now();
    let mut out = std::io::stdout().lock();
    if rows.is_empty() && format == Format::Text {
        writeln!(
            out,
            "no {}notices",
            status
                .map(|s| format!("{} ", s.as_str()))
                .unwrap_or_default()
        )?;
    }
    for r in rows {
        // Times as people there read them: in the pathway's zone, as `status` shows them.
        let local = local_time(&catalog, r.pathway_version_id);
        match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(&r)?)?,
            Format::Text => writeln!(
                out,
                "#{} {} {} to {} by {}: {} [{}{}]{}",
                r.id,
                local(r.not_before),
                r.reference,
                r.role,
                r.channel.map(|c| c.as_str()).unwrap_or("-"),
                r.template,
                r.status.as_str(),
                waits_until(&r, now)
                    .map(|t| format!(", waits until {}", local(t)))
                    .unwrap_or_default(),
                r.last_error
                    .as_ref()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default()
            )?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows a moment as people on a pathway version read it: local time in its zone (UTC when
/// the version is not loaded).
fn local_time(catalog: &Catalog, version_id: i64) -> impl Fn(Timestamp) -> String {
    let tz = catalog
        .version(version_id)
        .and_then(|v| carepath_engine::time::zone(&v.checked.pathway.time_zone).ok())
        .unwrap_or(TimeZone::UTC);
    move |t: Timestamp| local_in(t, &tz)
}

/// When a queued notice will go, if it is waiting (for quiet hours, a retry, or its moment).
fn waits_until(n: &crate::store::OutboxRow, now: Timestamp) -> Option<Timestamp> {
    (n.status == NoticeStatus::Queued && n.not_before > now).then_some(n.not_before)
}

async fn outbox_action(
    db: &Path,
    action: OutboxAction,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let store = sealed(Backend::open_existing(db).await?).await?;
    let code = match action {
        OutboxAction::Retry { id } => {
            let requeue = store.requeue(id, Timestamp::now()).await?;
            let row = store
                .outbox(&OutboxFilter::default())
                .await?
                .into_iter()
                .find(|r| r.id == id);
            audit(
                &store,
                Timestamp::now(),
                "retry",
                row.as_ref().map(|r| r.reference.as_str()),
                row.as_ref().map(|r| r.instance_id),
                Some(format!("notice {id}")),
                match requeue {
                    Requeue::Queued => Ok(()),
                    Requeue::NotRetryable(s) => Err(format!("the notice is {}", s.as_str())),
                    Requeue::Missing => Err("no such notice".into()),
                },
            )
            .await?;
            retried(db, id, requeue)
        }
        OutboxAction::Show { id } => {
            let mut rows: Vec<_> = store
                .outbox(&OutboxFilter::default())
                .await?
                .into_iter()
                .filter(|r| r.id == id)
                .collect();
            // A notice still waiting is shown as it will be sent.
            Catalog::from_store(&store).await?.preview(&mut rows);
            let Some(row) = rows.pop() else {
                eprintln!("there is no notice #{id}: see `carepath outbox`");
                store.close().await;
                return Ok(ExitCode::from(1));
            };
            let log = store.outbox_log(id).await?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"notice": row, "provenance": log})
                    )?
                ),
                Format::Text => {
                    println!(
                        "#{} {} to {} by {} ({}), template {} [{}], {} attempt{}",
                        row.id,
                        row.reference,
                        row.role,
                        row.channel.map(|c| c.as_str()).unwrap_or("-"),
                        row.address
                            .as_deref()
                            .map(carepath_notifier::channel::mask)
                            .unwrap_or_default(),
                        row.template,
                        row.status.as_str(),
                        row.attempts,
                        if row.attempts == 1 { "" } else { "s" }
                    );
                    if let (Some(receipt), Some(at)) = (row.receipt, row.receipt_at) {
                        println!("Receipt: {} at {at}", receipt.as_str());
                    }
                    if let Some(c) = &row.calendar {
                        println!(
                            "Calendar: {} version {}{}",
                            c.uid,
                            c.sequence,
                            if c.cancelled { ", cancelled" } else { "" }
                        );
                    }
                    if let Some(subject) = &row.text.subject {
                        println!("Subject: {subject}");
                    }
                    println!("\n{}\n", row.text.body.as_deref().unwrap_or("(no text)"));
                    if let Some(html) = &row.text.html {
                        println!(
                            "(with an HTML alternative of {} characters: --format json shows it)\n",
                            html.chars().count()
                        );
                    }
                    for e in log {
                        println!(
                            "{}  {:<15} {}",
                            e.at,
                            e.status,
                            e.detail.unwrap_or_default()
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

async fn optout(
    db: &Path,
    address: &str,
    channel: Option<&str>,
    undo: bool,
) -> anyhow::Result<ExitCode> {
    let (key, channel) = Notifier::opt_out_target(address, channel).map_err(anyhow::Error::msg)?;
    let store = sealed(Backend::open_existing(db).await?).await?;
    let changed = store
        .set_opt_out(&key, channel, !undo, "cli", Timestamp::now())
        .await?;
    audit(
        &store,
        Timestamp::now(),
        if undo { "opt-in" } else { "opt-out" },
        None,
        None,
        Some(format!(
            "{} {}",
            channel.as_str(),
            carepath_notifier::channel::mask(&key)
        )),
        Ok(()),
    )
    .await?;
    store.close().await;
    let shown = carepath_notifier::channel::mask(&key);
    match (undo, changed) {
        (false, true) => println!("{shown} opted out of {}", channel.as_str()),
        (false, false) => println!("{shown} was already opted out of {}", channel.as_str()),
        (true, true) => println!("{shown} opted back in to {}", channel.as_str()),
        (true, false) => println!("{shown} was not opted out of {}", channel.as_str()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The families `select` names, on `pathways`.
fn selection(pathways: Option<Vec<String>>, select: SelectArgs) -> anyhow::Result<bulk::Selection> {
    let enrolled_before = select
        .enrolled_before
        .map(|t| {
            t.parse::<Timestamp>().with_context(|| {
                format!("--enrolled-before {t:?}: expected a time such as 2027-03-01T00:00:00Z")
            })
        })
        .transpose()?;
    Ok(bulk::Selection {
        pathways,
        state: select.state,
        owner: select.owner,
        enrolled_before,
        reference: select.reference,
    })
}

/// Moves a pathway's running families and says, family by family, what it did.
async fn migrate_command(
    db: &Path,
    pathway: &str,
    to_version: u32,
    map: &BTreeMap<String, String>,
    only: &bulk::Selection,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let store = sealed(Backend::open_existing(db).await?).await?;
    let catalog = Catalog::from_store(&store).await?;
    let rt = Runtime::new(store, catalog, Arc::new(SystemClock) as Arc<dyn Clock>);
    let result =
        migration::migrate(&rt, pathway, to_version, map, only, &cli_actor(), dry_run).await;
    rt.store().close().await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("carepath: nothing was migrated: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let verb = if dry_run { "would move" } else { "moved" };
    for m in &report.moves {
        let timers = |t: &[(String, Timestamp)]| {
            t.iter()
                .map(|(k, due)| format!("{k} at {}", migration::when(*due)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{} {verb}: version {} → {to_version}, \"{}\" → \"{}\", owner {}; timers armed [{}], removed [{}], left out as past [{}]",
            m.reference,
            m.from_version,
            m.from_state,
            m.to_state,
            m.owner.as_deref().unwrap_or("-"),
            timers(&m.timers_added),
            m.timers_removed.join(", "),
            timers(&m.left_out)
        );
    }
    for r in &report.refused {
        println!("{} not moved: {}", r.reference, r.reason);
    }
    println!(
        "{} famil{} {verb}, {} refused",
        report.moves.len(),
        if report.moves.len() == 1 { "y" } else { "ies" },
        report.refused.len()
    );
    if !dry_run && !report.moves.is_empty() {
        worker::wake_other(db);
    }
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs a bulk operation and says what it found and did.
async fn bulk_command(
    db: &Path,
    action: &bulk::Action,
    selection: &bulk::Selection,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let store = sealed(Backend::open_existing(db).await?).await?;
    let catalog = Catalog::from_store(&store).await?;
    let rt = Runtime::new(store, catalog, Arc::new(SystemClock) as Arc<dyn Clock>);
    let outcome = bulk::apply(&rt, action, selection, &cli_actor(), dry_run).await?;
    rt.store().close().await;
    let verb = action.name().trim_start_matches("bulk ");
    if dry_run {
        println!(
            "would {verb} {} famil{}: {}",
            outcome.matched,
            if outcome.matched == 1 { "y" } else { "ies" },
            outcome.references.join(", ")
        );
    } else {
        worker::wake_other(db);
        println!(
            "{verb}: {} of {} famil{} changed",
            outcome.changed,
            outcome.matched,
            if outcome.matched == 1 { "y" } else { "ies" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Erases a family at its request.
/// `carepath db copy`: a SQLite file into an empty PostgreSQL database.
async fn copy_database(from: &str, to: &str) -> anyhow::Result<ExitCode> {
    let file = Path::new(from.strip_prefix("sqlite:").unwrap_or(from));
    if crate::store::backend::is_postgres(file) {
        bail!(
            "--from is the SQLite file to copy (sqlite:PATH): copying from PostgreSQL is the server's own business (pg_dump)"
        );
    }
    if !crate::store::backend::is_postgres(Path::new(to)) {
        bail!(
            "--to is the PostgreSQL database to copy into: postgres://user:password@host/database"
        );
    }
    let source = SqliteStore::open_existing(file).await?;
    let target = PgStore::open(to).await?;
    let counts = crate::store::copy::copy(&source, &target).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<18} {:>10} {:>10}", "table", "in file", "copied")?;
    for c in &counts {
        writeln!(out, "{:<18} {:>10} {:>10}", c.table, c.source, c.target)?;
    }
    writeln!(
        out,
        "copied {} into {}: every table's rows counted on both sides; start the workers with --db on it",
        file.display(),
        target.url()
    )?;
    target
        .append_audit(&AuditEntry {
            at: Timestamp::now(),
            actor: cli_actor(),
            action: "db copy".into(),
            reference: None,
            instance_id: None,
            detail: Some(format!("from {}", file.display())),
            outcome: "ok".into(),
        })
        .await?;
    source.close().await;
    target.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn directory(db: &Path, action: DirectoryAction) -> anyhow::Result<ExitCode> {
    let store = sealed(Backend::open_existing(db).await?).await?;
    let code = match action {
        DirectoryAction::Load { file } => {
            let catalog = Catalog::from_store(&store).await?;
            let entries = crate::directory::read(&file)?;
            let checked = crate::directory::check(&entries, &catalog);
            audit(
                &store,
                Timestamp::now(),
                "directory load",
                None,
                None,
                Some(format!("{} entries from {}", entries.len(), file.display())),
                checked.as_ref().map(|_| ()).map_err(|e| e.to_string()),
            )
            .await?;
            match checked {
                Ok(()) => {
                    let n = store.replace_directory(&entries).await?;
                    println!(
                        "directory loaded: {n} role{} from {}",
                        plural(n),
                        file.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("carepath: {e}");
                    ExitCode::from(1)
                }
            }
        }
        DirectoryAction::List => {
            let entries = store.directory().await?;
            if entries.is_empty() {
                println!("the directory is empty: `carepath directory load FILE`");
            }
            for e in entries {
                let c = &e.contact;
                let reach: Vec<String> = [
                    c.email.as_deref().map(mask_email),
                    c.phone.as_deref().map(mask_phone),
                ]
                .into_iter()
                .flatten()
                .collect();
                println!(
                    "{:<16} {:<28} {} — {} ({})",
                    e.role,
                    e.pathway.as_deref().unwrap_or("every pathway"),
                    e.organisation,
                    c.name,
                    reach.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

async fn assign(
    db: &Path,
    reference: &str,
    role: &str,
    contact: &Contact,
    pathway: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = sealed(Backend::open_existing(db).await?).await?;
    let catalog = Catalog::from_store(&store).await?;
    let rt = Runtime::new(store, catalog, Arc::new(SystemClock) as Arc<dyn Clock>);
    let result = rt
        .assign(reference, role, contact, pathway, &cli_actor())
        .await;
    let outcome = match &result {
        Ok(_) => Ok(()),
        Err(RuntimeError::Assign(why)) => Err(why.clone()),
        Err(e) => Err(e.to_string()),
    };
    audit(
        rt.store(),
        rt.clock().now(),
        "assign",
        Some(reference),
        None,
        Some(format!("role {role}")),
        outcome,
    )
    .await?;
    rt.store().close().await;
    match result {
        Ok(a) => {
            for (id, pathway) in &a.instances {
                println!("{role} assigned for {reference} on {pathway} (instance {id})");
            }
            println!(
                "{} dead letter{} for {role} queued again",
                a.retried,
                plural(a.retried)
            );
            worker::wake_other(db);
            Ok(ExitCode::SUCCESS)
        }
        Err(RuntimeError::Assign(why)) => {
            eprintln!("carepath: {why}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

async fn erase(db: &Path, reference: &str, reason: &str) -> anyhow::Result<ExitCode> {
    let store = sealed(Backend::open_existing(db).await?).await?;
    let catalog = Catalog::from_store(&store).await?;
    let rt = Runtime::new(store, catalog, Arc::new(SystemClock) as Arc<dyn Clock>);
    let erased = rt
        .erase_family(reference, &format!("on request: {reason}"))
        .await?;
    audit(
        rt.store(),
        rt.clock().now(),
        "erase",
        Some(reference),
        None,
        Some(format!("reason {reason}")),
        erased
            .map(|_| ())
            .ok_or_else(|| "no such family".to_string()),
    )
    .await?;
    rt.store().close().await;
    match erased {
        Some(e) => {
            println!(
                "erased {reference}: {} instance{}, {} contact{}, {} event{}, {} notice{}",
                e.instances,
                plural(e.instances),
                e.contacts,
                plural(e.contacts),
                e.events,
                plural(e.events),
                e.notices,
                plural(e.notices)
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("carepath: no family has the reference {reference}");
            Ok(ExitCode::from(1))
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Prints the audit log, oldest first.
async fn audit_log(
    db: &Path,
    reference: Option<String>,
    since: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let since = since
        .map(|s| {
            s.parse::<Timestamp>().with_context(|| {
                format!("--since {s:?}: expected a time such as 2027-03-01T00:00:00Z")
            })
        })
        .transpose()?;
    let store = sealed(Backend::open_existing(db).await?).await?;
    let lines = store
        .audit_log(&AuditFilter {
            reference,
            since,
            limit: None,
        })
        .await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    for l in &lines {
        match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(l)?)?,
            Format::Text => writeln!(
                out,
                "{}  {:<24} {:<8} {:<12} {:<24} {}",
                l.at,
                l.actor,
                l.action,
                l.reference.as_deref().unwrap_or("-"),
                l.detail.as_deref().unwrap_or("-"),
                l.outcome
            )?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What retrying notice `id` did, told to the operator.
fn retried(db: &Path, id: i64, requeue: Requeue) -> ExitCode {
    match requeue {
        Requeue::Queued => {
            println!("notice #{id} is queued again; a running worker sends it at once");
            worker::wake_other(db);
            ExitCode::SUCCESS
        }
        Requeue::NotRetryable(status) => {
            eprintln!(
                "notice #{id} is {}: only dead or skipped notices can be retried",
                status.as_str()
            );
            ExitCode::from(1)
        }
        Requeue::Missing => {
            eprintln!("there is no notice #{id}: see `carepath outbox`");
            ExitCode::from(1)
        }
    }
}

/// The demo cohort file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cohort {
    /// When the demo starts, local time in Europe/Copenhagen or with an offset.
    start: String,
    /// How much pathway time the demo covers.
    until: String,
    /// The families.
    families: Vec<CohortFamily>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CohortFamily {
    #[serde(flatten)]
    family: Family,
    #[serde(default)]
    events: Vec<ScriptedEvent>,
}

async fn demo(
    dir: &Path,
    pathways: &Path,
    cohort_path: &Path,
    seconds: f64,
) -> anyhow::Result<ExitCode> {
    // The demo's console shows every notice already; the log says only what went wrong
    // (CAREPATH_LOG=info for the rest).
    init_logging("warn");
    let cohort: Cohort = {
        let text = std::fs::read_to_string(cohort_path)
            .with_context(|| format!("cannot read {}", cohort_path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cohort file", cohort_path.display()))?
    };
    let tz = carepath_engine::time::zone("Europe/Copenhagen")?;
    let parse = |text: &str, from: Timestamp| -> anyhow::Result<Timestamp> {
        simulate::moment(text, from, &tz).map_err(anyhow::Error::msg)
    };
    let start = parse(&cohort.start, Timestamp::UNIX_EPOCH)?;
    let end = parse(&cohort.until, start)?;
    std::fs::create_dir_all(dir)?;
    let db = dir.join("demo.db");
    for suffix in ["", "-wal", "-shm", ".wake"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(Path::new(&p));
    }
    let notices = dir.join("notices.jsonl");
    let _ = std::fs::remove_file(&notices);

    let span = end.duration_since(start).as_secs_f64();
    let factor = span / seconds.max(1.0);
    let clock = Arc::new(ScaledClock::new(start, factor));
    let store = sealed(Backend::open(&db).await?).await?;
    let (catalog, loaded) =
        Catalog::sync(&store, std::slice::from_ref(&pathways.to_path_buf()), start).await?;
    println!(
        "carepath demo: {} families on {} pathway{}, {} → {} in {seconds:.0} s ({} virtual hours a second)",
        cohort.families.len(),
        loaded.len(),
        if loaded.len() == 1 { "" } else { "s" },
        start.to_zoned_datetime(tz.clone()).strftime("%Y-%m-%d"),
        end.to_zoned_datetime(tz.clone()).strftime("%Y-%m-%d"),
        (factor / 3600.0).round()
    );
    let rt = Arc::new(Runtime::new(
        store,
        catalog,
        clock.clone() as Arc<dyn Clock>,
    ));
    let mut script: Vec<(Timestamp, EventRequest)> = Vec::new();
    for (n, f) in cohort.families.iter().enumerate() {
        let enrolled_at = match &f.family.enrolled_at {
            Some(t) => parse(t, start)?,
            None => start,
        };
        let pathway = f
            .family
            .pathway
            .clone()
            .with_context(|| format!("family {} has no pathway", f.family.reference))?;
        script.push((
            enrolled_at,
            EventRequest {
                instance_id: None,
                key: format!("enrol-{n}"),
                reference: f.family.reference.clone(),
                pathway: Some(pathway),
                event: String::new(),
                payload: Value::Null,
                contacts: BTreeMap::new(),
            },
        ));
        for (i, e) in f.events.iter().enumerate() {
            script.push((
                parse(&e.at, enrolled_at)?,
                EventRequest {
                    instance_id: None,
                    key: format!("demo-{n}-{i}"),
                    reference: f.family.reference.clone(),
                    pathway: e.pathway.clone(),
                    event: e.event.clone(),
                    payload: e.payload.clone(),
                    contacts: e.contacts.clone(),
                },
            ));
        }
    }
    script.sort_by_key(|(at, _)| *at);

    let wake = Wake::new();
    wake.stop_on_signals()?;
    // The families' own actions arrive on the accelerated clock, as a professional's system
    // would report them.
    let reporter = {
        let rt = rt.clone();
        let wake = wake.clone();
        let families: Vec<Family> = cohort.families.iter().map(|f| f.family.clone()).collect();
        let tz = tz.clone();
        tokio::spawn(async move {
            for (at, req) in script {
                tokio::time::sleep(rt.clock().real_wait(at)).await;
                // The time it really arrived on the accelerated clock, a little after its slot.
                let local = rt
                    .clock()
                    .now()
                    .to_zoned_datetime(tz.clone())
                    .strftime("%Y-%m-%d %H:%M");
                if req.event.is_empty() {
                    let Some(f) = families.iter().find(|f| f.reference == req.reference) else {
                        continue;
                    };
                    match rt
                        .enrol(&EnrolRequest {
                            reference: f.reference.clone(),
                            pathway: req.pathway.clone().unwrap_or_default(),
                            fields: f.fields.clone(),
                            contacts: f.contacts.clone(),
                        })
                        .await
                    {
                        Ok(e) => println!(
                            "{local}  ● {:<8} enrolled on {} → {}",
                            f.reference,
                            req.pathway.unwrap_or_default(),
                            e.state
                        ),
                        Err(e) => println!("{local}  ! {:<8} enrolment refused: {e}", f.reference),
                    }
                } else {
                    match rt.apply_events(std::slice::from_ref(&req)).await {
                        Ok(results) => {
                            for r in results {
                                match (&r.record.outcome, &r.transition) {
                                    (Outcome::Applied, Some((from, to))) => println!(
                                        "{local}  ● {:<8} {} : {from} → {to}",
                                        req.reference, req.event
                                    ),
                                    (Outcome::Applied, None) => {}
                                    (Outcome::Rejected, _) => println!(
                                        "{local}  ! {:<8} {} refused: {}",
                                        req.reference,
                                        req.event,
                                        r.record.reason.unwrap_or_default()
                                    ),
                                }
                            }
                        }
                        Err(e) => println!("{local}  ! {e}"),
                    }
                }
                wake.notify();
            }
        })
    };
    let notifier = Notifier::new(&NotifierConfig {
        file: Some(FileConfig {
            path: Some(notices.clone()),
            console: FileConsole::Pretty,
        }),
        ..NotifierConfig::default()
    })?;
    let summary = worker::run(
        &rt,
        &wake,
        Some(&notifier),
        &Options {
            batch: 1000,
            until_idle: false,
            until: Some(end),
            timers: true,
        },
    )
    .await?;
    reporter.abort();
    let instances = rt.store().all_instances().await?;
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    for i in &instances {
        *states
            .entry(format!("{} {}", i.pathway, i.instance.state))
            .or_default() += 1;
    }
    let dead = rt
        .store()
        .outbox(&OutboxFilter {
            status: Some(NoticeStatus::Dead),
            ..OutboxFilter::default()
        })
        .await?
        .len();
    rt.store().close().await;
    println!(
        "\n{} timers fired, {} notices delivered to {}, {} expired unsent (stale before they could go), {dead} dead letters",
        summary.fired,
        summary.delivered,
        notices.display(),
        summary.expired
    );
    for (state, n) in states {
        println!("  {n} × {state}");
    }
    if let Some(first) = cohort.families.first() {
        println!(
            "\nLook closer: cargo run -q --bin carepath -- status {} --db {}",
            first.family.reference,
            db.display()
        );
    }
    // The web view on what the demo left, at the moment it ended: a coordinator's token in a
    // configuration of the demo's own.
    let config = dir.join("carepath.toml");
    let _ = std::fs::remove_file(&config);
    let (token, entry) = token_entry(&GrantArgs {
        name: "demo-coordinator".into(),
        scopes: vec!["admin".into()],
        pathways: Vec::new(),
    })?;
    append_config(&config, &entry)?;
    println!(
        "\nOpen the web view: cargo run -q --bin carepath -- run --db {} --config {} --clock fixed:{end} --no-timers --no-delivery --listen 127.0.0.1:8080\n\
         then http://127.0.0.1:8080/ and sign in with the token {token}",
        db.display(),
        config.display()
    );
    Ok(ExitCode::SUCCESS)
}
