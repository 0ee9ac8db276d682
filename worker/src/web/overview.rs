//! *Overblik*: every handoff not acknowledged and every activity not recorded by its
//! deadline, oldest first, with who is waited on; and the same counted by role and by person.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use jiff::Timestamp;
use maud::{Markup, html};

use carepath_engine::step::{Overdue, OverdueKind};

use super::layout::{Lang, Section, late, local, role_title, shell};
use super::{Viewer, Web};
use crate::store::{InstanceFilter, InstanceRow, NoticeStatus, OutboxFilter, Storage};

/// At most this many overdue families on the page: the oldest.
const LIMIT: u32 = 500;

/// One thing somebody is waited on.
pub struct Waiting<'a> {
    /// The family's instance.
    pub row: &'a InstanceRow,
    /// What is overdue.
    pub overdue: &'a Overdue,
    /// What it is, in words.
    pub what: String,
    /// The role's title.
    pub role: String,
    /// Who plays the role for the family, if anybody does.
    pub person: Option<String>,
}

/// The overview's query: one role's misses only.
#[derive(Debug, Default, serde::Deserialize)]
pub struct OverviewQuery {
    /// The role's title, as the summary shows it.
    rolle: Option<String>,
}

/// At most this many dead letters are counted for the overview's notice of them.
const DEAD_COUNTED: u32 = 100;

/// `GET /`: the overview.
pub async fn page<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    axum::extract::Query(q): axum::extract::Query<OverviewQuery>,
) -> Result<Response, Response> {
    let rt = &web.api.runtime;
    let now = rt.clock().now();
    let rows = rt
        .store()
        .list_instances(&InstanceFilter {
            pathways: viewer.caller.restriction(),
            active_only: true,
            oldest_overdue_first: true,
            limit: LIMIT,
            ..InstanceFilter::default()
        })
        .await
        .map_err(|e| super::session::store_failed(viewer.lang, &e))?;
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.roles.values().copied())
        .collect();
    let contacts = rt
        .store()
        .contacts(&ids)
        .await
        .map_err(|e| super::session::store_failed(viewer.lang, &e))?;
    let dead = rt
        .store()
        .outbox(&OutboxFilter {
            status: Some(NoticeStatus::Dead),
            pathways: viewer.caller.restriction(),
            limit: Some(DEAD_COUNTED),
            ..OutboxFilter::default()
        })
        .await
        .map_err(|e| super::session::store_failed(viewer.lang, &e))?
        .len();
    let lang = viewer.lang;
    let mut waiting: Vec<Waiting> = Vec::new();
    for row in &rows {
        let Some(version) = rt.catalog().version(row.pathway_version_id) else {
            continue;
        };
        let p = &version.checked.pathway;
        for o in &row.instance.overdue {
            let what = match o.kind {
                OverdueKind::Handoff => format!(
                    "{} ({})",
                    lang.t("Overdragelse ikke kvitteret", "Handoff not acknowledged"),
                    o.name
                ),
                OverdueKind::Activity => p
                    .states
                    .get(&row.instance.state)
                    .and_then(|s| s.activities.iter().find(|a| a.name == o.name))
                    .and_then(|a| a.title.clone())
                    .unwrap_or_else(|| o.name.clone()),
            };
            waiting.push(Waiting {
                row,
                overdue: o,
                what,
                role: role_title(p, &o.role),
                person: row
                    .roles
                    .get(&o.role)
                    .and_then(|id| contacts.get(id))
                    .map(|c| c.name.clone()),
            });
        }
    }
    waiting.sort_by_key(|w| (w.overdue.since, w.row.id));
    let title = lang.t("Overblik", "Overview");
    Ok(axum::response::IntoResponse::into_response(page_markup(
        &viewer,
        title,
        &waiting,
        &Shown {
            more: rows.len() as u32 == LIMIT,
            role: q.rolle.as_deref(),
            dead,
        },
        now,
    )))
}

/// What the overview shows beside the misses.
struct Shown<'a> {
    /// Whether more families are overdue than are read.
    more: bool,
    /// The one role whose misses are listed, if one was chosen.
    role: Option<&'a str>,
    /// Dead letters the viewer may see (up to [`DEAD_COUNTED`]).
    dead: usize,
}

fn page_markup(
    viewer: &Viewer,
    title: &str,
    waiting: &[Waiting],
    shown: &Shown,
    now: Timestamp,
) -> Markup {
    let lang = viewer.lang;
    let mut by_role: BTreeMap<&str, (usize, Timestamp)> = BTreeMap::new();
    let mut by_person: BTreeMap<(&str, &str), (usize, Timestamp)> = BTreeMap::new();
    let nobody = lang.t("(ingen tildelt)", "(nobody assigned)");
    for w in waiting {
        let e = by_role.entry(&w.role).or_insert((0, w.overdue.since));
        e.0 += 1;
        e.1 = e.1.min(w.overdue.since);
        let person = w.person.as_deref().unwrap_or(nobody);
        let e = by_person
            .entry((person, &w.role))
            .or_insert((0, w.overdue.since));
        e.0 += 1;
        e.1 = e.1.min(w.overdue.since);
    }
    let mut roles: Vec<_> = by_role.into_iter().collect();
    roles.sort_by_key(|(_, (_, oldest))| *oldest);
    let mut people: Vec<_> = by_person.into_iter().collect();
    people.sort_by_key(|(_, (_, oldest))| *oldest);
    shell(
        viewer,
        Section::Overview,
        title,
        html! {
            h1 { (title) }
            p {
                (lang.t("Nu: ", "Now: ")) (local(now)) ". "
                (lang.t(
                    "Overdragelser og aktiviteter, hvis frist er overskredet uden kvittering eller registrering. Den ældste står først.",
                    "Handoffs and activities past their deadline with no acknowledgement or record. The oldest comes first.",
                ))
            }
            @if shown.dead > 0 {
                p.late id="dead-letters" role="status" {
                    a href="/udbakke" {
                        (if shown.dead >= DEAD_COUNTED as usize { format!("{}+", DEAD_COUNTED) } else { shown.dead.to_string() })
                        (lang.t(" døde beskeder venter i udbakken", " dead letters wait in the outbox"))
                    }
                }
            }
            @if let Some(role) = shown.role {
                p id="role-filter" {
                    (lang.t("Kun ", "Only ")) strong { (role) } ". "
                    a href="/" { (lang.t("Vis alle roller", "Show every role")) }
                }
            }
            @if waiting.is_empty() {
                p.ok id="nothing-overdue" { (lang.t("Ingen venter: alt er inden for fristen.", "Nobody is waited on: everything is within its deadline.")) }
            } @else {
                table id="overdue" {
                    caption { (lang.t("Overskredne frister", "Missed deadlines")) " (" (waiting.len()) ")" }
                    thead { tr {
                        th scope="col" { (lang.t("Familie", "Family")) }
                        th scope="col" { (lang.t("Forløb", "Pathway")) }
                        th scope="col" { (lang.t("Tilstand", "State")) }
                        th scope="col" { (lang.t("Hvad", "What")) }
                        th scope="col" { (lang.t("Venter på", "Waiting on")) }
                        th scope="col" { (lang.t("Person", "Person")) }
                        th scope="col" { (lang.t("Ansvarlig", "Owner")) }
                        th scope="col" { (lang.t("Frist", "Deadline")) }
                        th scope="col" class="num" { (lang.t("Forsinket", "Late by")) }
                    } }
                    tbody {
                        @for w in waiting.iter().filter(|w| shown.role.is_none_or(|r| r == w.role)) {
                            tr {
                                td { a href={"/familier/" (super::layout::enc(&w.row.reference))} { (w.row.reference) } }
                                td { (w.row.pathway) }
                                td { (w.row.instance.state) }
                                td { (w.what) }
                                td { (w.role) }
                                td { (w.person.as_deref().unwrap_or(nobody)) }
                                td { (w.row.instance.owner.as_deref().unwrap_or("—")) }
                                td { (local(w.overdue.since)) }
                                td.num.late { (late(now, w.overdue.since, lang)) }
                            }
                        }
                    }
                }
                @if shown.more {
                    p.muted { (lang.t("Kun de ældste 500 familier vises.", "Only the oldest 500 families are shown.")) }
                }
                h2 { (lang.t("Pr. rolle", "By role")) }
                (summary(lang, "by-role", lang.t("Rolle", "Role"), roles.iter().map(|(r, (n, t))| (r.to_string(), *n, *t)), now, true))
                h2 { (lang.t("Pr. person", "By person")) }
                (summary(lang, "by-person", lang.t("Person (rolle)", "Person (role)"), people.iter().map(|((p, r), (n, t))| (format!("{p} ({r})"), *n, *t)), now, false))
            }
        },
    )
}

fn summary(
    lang: Lang,
    id: &str,
    who: &str,
    rows: impl Iterator<Item = (String, usize, Timestamp)>,
    now: Timestamp,
    filters: bool,
) -> Markup {
    html! {
        table id=(id) {
            thead { tr {
                th scope="col" { (who) }
                th scope="col" class="num" { (lang.t("Antal", "Count")) }
                th scope="col" class="num" { (lang.t("Ældste forsinkelse", "Oldest late by")) }
            } }
            tbody {
                @for (name, n, oldest) in rows {
                    tr {
                        th scope="row" {
                            @if filters { a href={"/?rolle=" (super::layout::enc(&name))} { (name) } } @else { (name) }
                        }
                        td.num { (n) }
                        td.num.late { (late(now, oldest, lang)) }
                    }
                }
            }
        }
    }
}
