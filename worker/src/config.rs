//! The configuration file (`--config`, `CAREPATH_CONFIG`): the notifier's sections
//! ([email], [sms], [file], [delivery], [quiet_hours]) and the HTTP API's [api].
//!
//! The notifier knows nothing of [api]: the file is split here, and each part is checked
//! against its own shape, unknown keys refused with the key's path.

use std::path::{Path, PathBuf};

use anyhow::Context;

use carepath_notifier::NotifierConfig;
use carepath_notifier::file::{Console as FileConsole, FileConfig};

use crate::api::ApiConfig;

/// The configuration file: the notifier's sections, and the API's `[api]`.
#[derive(Debug, Default)]
pub struct Config {
    /// The notifier's sections, when there are any (or a --sink).
    pub notifier: Option<NotifierConfig>,
    /// The `[api]` section.
    pub api: ApiConfig,
}

/// Reads the configuration; `sink` adds a [file] section for channels without a transport.
pub fn read(config: Option<&Path>, sink: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut parsed = Config::default();
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        // [api] belongs to the worker; the rest is the notifier's, which knows nothing of it.
        if let Some(api) = table.remove("api") {
            parsed.api = api
                .try_into()
                .map_err(|e| anyhow::anyhow!("{}: [api]: {e}", path.display()))?;
        }
        if !table.is_empty() {
            let notifier: NotifierConfig = toml::Value::Table(table)
                .try_into()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            parsed.notifier = Some(notifier);
        }
    }
    if let Some(sink) = sink {
        let file = if sink.as_os_str() == "-" {
            FileConfig {
                path: None,
                console: FileConsole::Json,
            }
        } else {
            FileConfig {
                path: Some(sink),
                console: FileConsole::Off,
            }
        };
        parsed
            .notifier
            .get_or_insert_with(NotifierConfig::default)
            .file = Some(file);
    }
    Ok(parsed)
}
