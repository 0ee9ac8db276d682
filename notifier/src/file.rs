//! The file and console channel, for development and the demo: every message as a JSON line
//! in a file, printed, or both. It accepts email and SMS alike.

use std::io::Write;
use std::path::PathBuf;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::channel::{Message, Receipt, SendError};

/// How the console shows messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Console {
    /// Not at all.
    #[default]
    Off,
    /// JSON lines on standard output.
    Json,
    /// One readable line each.
    Pretty,
}

/// `[file]` in the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Appended to, one JSON object a line.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Also printed.
    #[serde(default)]
    pub console: Console,
}

/// The file/console channel.
#[derive(Clone, Debug)]
pub struct FileChannel {
    config: FileConfig,
    tz: TimeZone,
}

impl FileChannel {
    /// A channel writing as configured; the console shows times in `tz`.
    pub fn new(config: FileConfig, tz: TimeZone) -> Self {
        FileChannel { config, tz }
    }

    /// Writes a batch of messages, sent at `now`. One write per batch keeps the file's lines
    /// whole even when several processes append.
    pub fn send_all(&self, messages: &[&Message], now: Timestamp) -> Result<Receipt, SendError> {
        if let Some(path) = &self.config.path {
            let mut text = String::new();
            for m in messages {
                let line = json!({"sent_at": now, "message": m});
                text.push_str(&line.to_string());
                text.push('\n');
            }
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            // The sink holds addresses and message texts: readable by its owner only.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| SendError::Transient(format!("{}: {e}", path.display())))?;
        }
        let mut out = std::io::stdout().lock();
        for m in messages {
            let shown = match self.config.console {
                Console::Off => continue,
                Console::Json => json!({"sent_at": now, "message": m}).to_string(),
                Console::Pretty => {
                    let at = now
                        .to_zoned_datetime(self.tz.clone())
                        .strftime("%Y-%m-%d %H:%M");
                    let first = m
                        .subject
                        .clone()
                        .or_else(|| m.body.lines().next().map(str::to_string))
                        .unwrap_or_default();
                    format!(
                        "{at}  ✉ {:<8} to {:<15} {:<26} {first}",
                        m.reference,
                        format!(
                            "{} ({}{})",
                            m.role,
                            m.channel.as_str(),
                            m.language
                                .as_deref()
                                .map(|l| format!(", {l}"))
                                .unwrap_or_default()
                        ),
                        m.template,
                    )
                }
            };
            // A closed stdout (a pipe to `head`) must not fail delivery to the file.
            let _ = writeln!(out, "{shown}");
        }
        Ok(Receipt {
            detail: match &self.config.path {
                Some(p) => format!("written to {}", p.display()),
                None => "printed".into(),
            },
        })
    }
}
