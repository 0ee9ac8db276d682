//! The burst's pathway, shared by the SQLite and PostgreSQL benchmarks.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Map, json};

use carepath_worker::runtime::EnrolRequest;
use carepath_worker::store::Contact;

/// A two-step pathway: a family waits an hour, then the coordinator is told (a transition, a
/// rendered notice, a history row and the next timer), then a day later it ends.
pub fn write_tick(dir: &Path) -> Result<PathBuf> {
    let folder = dir.join("tick");
    std::fs::create_dir_all(folder.join("templates"))?;
    let pathway = json!({
        "id": "tick",
        "version": 1,
        "title": "Tick",
        "horizon": "P60D",
        "roles": {"coordinator": {"sector": "region"}},
        "initial": "waiting",
        "states": {
            "waiting": {"owner": "coordinator", "timers": [{"after": "PT1H", "to": "reminded"}]},
            "reminded": {
                "owner": "coordinator",
                "enter": [{"notify": {"to": "coordinator", "template": "reminded"}}],
                "timers": [{"after": "P1D", "to": "done"}]
            },
            "done": {"terminal": true}
        }
    });
    std::fs::write(
        folder.join("pathway.json"),
        serde_json::to_string_pretty(&pathway)?,
    )?;
    std::fs::write(
        folder.join("templates/reminded.da.email.hbs"),
        "Subject: Familie {{instance.ref}}\n\nKære {{recipient.name}}\n\nFamilien {{instance.ref}} venter på jer.\n",
    )?;
    Ok(dir.to_path_buf())
}

/// A family on the tick pathway, its coordinator reached by email.
pub fn tick_family(reference: String) -> EnrolRequest {
    EnrolRequest {
        reference,
        pathway: "tick".into(),
        fields: Map::new(),
        contacts: [(
            "coordinator".to_string(),
            Contact {
                name: "Koordinator".into(),
                email: Some("koordinator@example.dk".into()),
                phone: None,
                language: "da".into(),
                channel: None,
            },
        )]
        .into(),
    }
}
