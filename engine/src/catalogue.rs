//! The catalogue of offers: what the pathways offer families, rendered from the pathway files
//! alone — each offer, who runs it, who it is for, how a family is referred and how long it
//! lasts — for the professionals and volunteers who refer families between sectors.
//!
//! The referrals between pathways are not written twice: "referred from" and "refers on to"
//! are read from the pathways' `enroll` actions.

use std::fmt::Write;

use crate::pathway::{Action, Pathway, Sector};

/// A referral from one pathway to another, found in an `enroll` action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referral {
    /// The referring pathway.
    pub from: String,
    /// The pathway the family is enrolled on.
    pub to: String,
    /// When: `event NAME` in `STATE`, on entering `STATE`, or a timer in `STATE` (several
    /// states, comma-separated).
    pub when: String,
}

/// Every `enroll` action of `pathways`, in file order; one referral made the same way from
/// several states is one entry that names them all.
pub fn referrals(pathways: &[&Pathway]) -> Vec<Referral> {
    // (from, to, trigger) → the states it is made in.
    let mut found: Vec<((String, String, String), Vec<String>)> = Vec::new();
    for p in pathways {
        for (name, state) in &p.states {
            let mut add = |actions: &[Action], trigger: String| {
                for a in actions {
                    if let Action::Enroll(e) = a {
                        let key = (p.id.clone(), e.pathway.clone(), trigger.clone());
                        match found.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, states)) => states.push(format!("`{name}`")),
                            None => found.push((key, vec![format!("`{name}`")])),
                        }
                    }
                }
            };
            add(&state.enter, "on entering".into());
            for t in &state.on {
                add(&t.actions, format!("event `{}` in", t.event));
            }
            for t in &state.timers {
                add(
                    &t.actions,
                    format!("`{}` in", t.name.as_deref().unwrap_or("a timer")),
                );
            }
        }
    }
    found
        .into_iter()
        .map(|((from, to, trigger), states)| Referral {
            from,
            to,
            when: format!("{trigger} {}", states.join(", ")),
        })
        .collect()
}

fn sector(s: Sector) -> &'static str {
    match s {
        Sector::Region => "Region",
        Sector::Municipality => "Kommune",
        Sector::CivilSociety => "Civilsamfund",
        Sector::Family => "Familien",
    }
}

/// The pathways in catalogue order: by sector (region, municipality, civil society), then
/// title; those without an `offer` last.
fn ordered<'p>(pathways: &[&'p Pathway]) -> Vec<&'p Pathway> {
    let mut list = pathways.to_vec();
    list.sort_by_key(|p| {
        (
            p.offer.as_ref().map_or(9, |o| o.sector as u8),
            p.title.clone(),
        )
    });
    list
}

/// The overview table's cells after the title: organisation, sector, audience, duration.
fn cells(p: &Pathway) -> [&str; 4] {
    match &p.offer {
        Some(o) => [
            o.organisation.as_str(),
            sector(o.sector),
            o.audience.as_str(),
            o.duration.as_str(),
        ],
        None => ["—"; 4],
    }
}

/// One offer's facts, as label and text, in the order they are shown.
pub fn facts(p: &Pathway, all: &[Referral]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(o) = &p.offer {
        out.push((
            "Udbyder",
            format!("{} ({})", o.organisation, sector(o.sector)),
        ));
        out.push(("Målgruppe", o.audience.clone()));
        out.push(("Henvisning", o.referral.clone()));
        out.push(("Varighed", o.duration.clone()));
    }
    let links = |from_here: bool| -> Vec<String> {
        all.iter()
            .filter(|r| {
                if from_here {
                    r.from == p.id
                } else {
                    r.to == p.id
                }
            })
            .map(|r| {
                let other = if from_here { &r.to } else { &r.from };
                format!("`{other}`, {}", r.when)
            })
            .collect()
    };
    for (label, list) in [
        ("Henvises fra", links(false)),
        ("Henviser videre til", links(true)),
    ] {
        if !list.is_empty() {
            out.push((label, list.join("; ")));
        }
    }
    let roles: Vec<String> = p
        .roles
        .iter()
        .filter(|(_, r)| r.sector != Sector::Family)
        .map(|(name, r)| r.title.clone().unwrap_or_else(|| name.clone()))
        .collect();
    out.push(("Fagpersoner", roles.join("; ")));
    out.push(("Længst", format!("{} (`horizon`)", p.horizon)));
    out
}

/// The catalogue in Markdown.
pub fn markdown(pathways: &[&Pathway]) -> String {
    let all = referrals(pathways);
    let list = ordered(pathways);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Tilbudskatalog\n\n\
         Generated from the pathway files by `carepath catalogue pathways/ --format markdown`: \
         edit the pathways' `offer` sections, not this file.\n"
    );
    let _ = writeln!(out, "| Tilbud | Udbyder | Sektor | Målgruppe | Varighed |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    for p in &list {
        let [org, sec, audience, duration] = cells(p).map(cell);
        let _ = writeln!(
            out,
            "| [{}](#{}) | {org} | {sec} | {audience} | {duration} |",
            cell(&p.title),
            p.id,
        );
    }
    for p in &list {
        let _ = writeln!(
            out,
            "\n<a id=\"{}\"></a>\n## {}\n\n`{}`, version {}\n",
            p.id, p.title, p.id, p.version
        );
        if let Some(summary) = p.offer.as_ref().and_then(|o| o.summary.as_ref()) {
            let _ = writeln!(out, "{summary}\n");
        }
        for (label, text) in facts(p, &all) {
            let _ = writeln!(out, "- **{label}:** {text}");
        }
    }
    out
}

/// The catalogue as a standalone HTML page.
pub fn html(pathways: &[&Pathway]) -> String {
    let all = referrals(pathways);
    let list = ordered(pathways);
    let e = escape;
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"da\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Tilbudskatalog</title>\n<style>\n\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}\n\
         table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:.4rem;text-align:left;vertical-align:top}\n\
         dt{font-weight:600}dd{margin:0 0 .5rem 0}\n\
         </style>\n</head>\n<body>\n<h1>Tilbudskatalog</h1>\n\
         <table>\n<tr><th>Tilbud</th><th>Udbyder</th><th>Sektor</th><th>Målgruppe</th><th>Varighed</th></tr>\n",
    );
    for p in &list {
        let [org, sec, audience, duration] = cells(p).map(e);
        let _ = writeln!(
            out,
            "<tr><td><a href=\"#{}\">{}</a></td><td>{org}</td><td>{sec}</td><td>{audience}</td><td>{duration}</td></tr>",
            e(&p.id),
            e(&p.title)
        );
    }
    out.push_str("</table>\n");
    for p in &list {
        let _ = writeln!(
            out,
            "<section id=\"{}\">\n<h2>{}</h2>\n<p><code>{}</code>, version {}</p>",
            e(&p.id),
            e(&p.title),
            e(&p.id),
            p.version
        );
        if let Some(summary) = p.offer.as_ref().and_then(|o| o.summary.as_ref()) {
            let _ = writeln!(out, "<p>{}</p>", e(summary));
        }
        out.push_str("<dl>\n");
        for (label, text) in facts(p, &all) {
            let text = e(&text);
            let _ = writeln!(out, "<dt>{label}</dt><dd>{}</dd>", code_spans(&text));
        }
        out.push_str("</dl>\n</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Turns the Markdown `code` spans of an escaped text into `<code>` elements.
fn code_spans(escaped: &str) -> String {
    let mut out = String::new();
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}
