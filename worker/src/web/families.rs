//! *Familier*: families found by reference, pathway, state, owner or lateness, a page at a
//! time. *Familie*: one family on all its pathways — state, who is waited on, pending timers
//! by name, the history, the notices with their provenance — with hold, resume and assigning
//! a person to a role.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use carepath_engine::step::{ArmedTimer, OverdueKind, Purpose, Status};
use carepath_notifier::channel::{mask_email, mask_phone};

use super::layout::{Lang, Section, enc, late, local, role_title, shell};
use super::session::{refused, store_failed};
use super::{Viewer, Web};
use crate::catalog::{self, Version};
use crate::runtime::RuntimeError;
use crate::simulate::timer_words;
use crate::store::{
    AuditFilter, Contact, EventRecord, InstanceFilter, InstanceRow, OutboxFilter, Outcome, Storage,
};

/// Families per page of the search.
const PAGE: u32 = 50;

/// The search's query.
#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    /// The start of a reference.
    #[serde(default)]
    q: String,
    #[serde(default)]
    pathway: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    overdue: Option<String>,
    after: Option<i64>,
}

/// `GET /familier`: the search.
pub async fn search<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Query(q): Query<SearchQuery>,
) -> Result<Response, Response> {
    let lang = viewer.lang;
    let rt = &web.api.runtime;
    let visible: Vec<String> = rt
        .catalog()
        .pathway_ids()
        .into_iter()
        .filter(|p| viewer.caller.may_use(p))
        .collect();
    let pathways = if q.pathway.is_empty() {
        viewer.caller.restriction()
    } else {
        Some(
            visible
                .iter()
                .filter(|p| **p == q.pathway)
                .cloned()
                .collect(),
        )
    };
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let rows = rt
        .store()
        .list_instances(&InstanceFilter {
            pathways,
            state: some(&q.state),
            owner: some(&q.owner),
            after: q.after,
            reference_prefix: some(&q.q),
            overdue_only: q.overdue.is_some(),
            limit: PAGE,
            ..InstanceFilter::default()
        })
        .await
        .map_err(|e| store_failed(lang, &e))?;
    let now = rt.clock().now();
    let mut states: Vec<&str> = Vec::new();
    let mut roles: Vec<&str> = Vec::new();
    for id in &visible {
        if let Some(v) = rt.catalog().latest(id) {
            let p = &v.checked.pathway;
            states.extend(p.states.keys().map(String::as_str));
            roles.extend(p.roles.keys().map(String::as_str));
        }
    }
    states.sort_unstable();
    states.dedup();
    roles.sort_unstable();
    roles.dedup();
    let next = (rows.len() as u32 == PAGE)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let title = lang.t("Familier", "Families");
    let next_link = next.map(|after| {
        format!(
            "/familier?q={}&pathway={}&state={}&owner={}{}&after={after}",
            enc(&q.q),
            enc(&q.pathway),
            enc(&q.state),
            enc(&q.owner),
            if q.overdue.is_some() {
                "&overdue=1"
            } else {
                ""
            }
        )
    });
    Ok(shell(
        &viewer,
        Section::Families,
        title,
        html! {
            h1 { (title) }
            form.filters method="get" action="/familier" role="search" {
                div { label for="q" { (lang.t("Reference begynder med", "Reference starts with")) } input id="q" name="q" value=(q.q) type="search"; }
                div { label for="pathway" { (lang.t("Forløb", "Pathway")) }
                    select id="pathway" name="pathway" {
                        option value="" { (lang.t("Alle", "All")) }
                        @for p in &visible { option value=(p) selected[*p == q.pathway] { (p) } }
                    }
                }
                div { label for="state" { (lang.t("Tilstand", "State")) }
                    select id="state" name="state" {
                        option value="" { (lang.t("Alle", "All")) }
                        @for s in &states { option value=(s) selected[*s == q.state] { (s) } }
                    }
                }
                div { label for="owner" { (lang.t("Ansvarlig rolle", "Owner role")) }
                    select id="owner" name="owner" {
                        option value="" { (lang.t("Alle", "All")) }
                        @for r in &roles { option value=(r) selected[*r == q.owner] { (r) } }
                    }
                }
                div { input type="checkbox" id="overdue" name="overdue" value="1" checked[q.overdue.is_some()];
                    " " label for="overdue" style="display:inline" { (lang.t("Kun med overskreden frist", "Only with a missed deadline")) } }
                div { button type="submit" { (lang.t("Søg", "Search")) } }
            }
            @if rows.is_empty() {
                p id="no-families" { (lang.t("Ingen familier passer til søgningen.", "No families match the search.")) }
            } @else {
                table id="families" {
                    caption { (lang.t("Familier", "Families")) }
                    thead { tr {
                        th scope="col" { (lang.t("Reference", "Reference")) }
                        th scope="col" { (lang.t("Forløb", "Pathway")) }
                        th scope="col" { (lang.t("Tilstand", "State")) }
                        th scope="col" { (lang.t("Ansvarlig", "Owner")) }
                        th scope="col" { (lang.t("Status", "Status")) }
                        th scope="col" { (lang.t("I tilstanden siden", "In the state since")) }
                        th scope="col" { (lang.t("Forsinket", "Late by")) }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td { a href={"/familier/" (enc(&r.reference))} { (r.reference) } }
                                td { (r.pathway) }
                                td { (r.instance.state) }
                                td { (r.instance.owner.as_deref().unwrap_or("—")) }
                                td { (status_words(r, lang)) }
                                td { (local(r.instance.entered_at)) }
                                td.late { @if let Some(t) = r.instance.overdue_since() { (late(now, t, lang)) } }
                            }
                        }
                    }
                }
                @if let Some(link) = next_link {
                    p { a href=(link) rel="next" { (lang.t("Næste side", "Next page")) } }
                }
            }
        },
    )
    .into_response())
}

fn status_words(r: &InstanceRow, lang: Lang) -> String {
    match (r.instance.status, r.held_since) {
        (Status::Finished, _) => lang.t("afsluttet", "finished").into(),
        (Status::Active, Some(_)) => lang.t("i bero", "on hold").into(),
        (Status::Active, None) => lang.t("aktiv", "active").into(),
    }
}

/// A pending timer, in words.
fn timer_name(v: Option<&Version>, state: &str, t: &ArmedTimer) -> String {
    let name = match &t.purpose {
        Purpose::State { index } => v
            .and_then(|v| v.checked.pathway.states.get(state))
            .and_then(|s| s.timers.get(*index))
            .and_then(|t| t.name.clone()),
        _ => None,
    };
    timer_words(&t.purpose, name.as_deref(), &t.key)
}

fn address(viewer: &Viewer, a: Option<&str>) -> String {
    match a {
        None => "—".into(),
        Some(a) if viewer.sees_addresses() => a.into(),
        Some(a) if a.contains('@') => mask_email(a),
        Some(a) => mask_phone(a),
    }
}

/// The family's instances the viewer may see.
async fn visible_rows<S: Storage>(
    web: &Web<S>,
    viewer: &Viewer,
    reference: &str,
) -> Result<Vec<InstanceRow>, Response> {
    Ok(web
        .api
        .runtime
        .store()
        .instances_by_ref(reference)
        .await
        .map_err(|e| store_failed(viewer.lang, &e))?
        .into_iter()
        .filter(|r| viewer.caller.may_use(&r.pathway))
        .collect())
}

fn no_family(lang: Lang, reference: &str) -> Response {
    refused(
        lang,
        StatusCode::NOT_FOUND,
        &format!(
            "{} {reference}.",
            lang.t("Der er ingen familie", "There is no family")
        ),
    )
}

/// What a form on the family page asked, for the message shown after it.
#[derive(Debug, Default, Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /familier/{ref}`: one family on all its pathways.
pub async fn family<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Path(reference): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, Response> {
    let lang = viewer.lang;
    let rows = visible_rows(&web, &viewer, &reference).await?;
    if rows.is_empty() {
        return Err(no_family(lang, &reference));
    }
    let rt = &web.api.runtime;
    let store = rt.store();
    let now = rt.clock().now();
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.roles.values().copied())
        .collect();
    let contacts: BTreeMap<i64, Contact> = store
        .contacts(&ids)
        .await
        .map_err(|e| store_failed(lang, &e))?;
    let mut sections = Vec::new();
    let mut roles: Vec<String> = Vec::new();
    for row in &rows {
        let version = rt.catalog().version(row.pathway_version_id);
        let history = store
            .history(row.id)
            .await
            .map_err(|e| store_failed(lang, &e))?;
        let mut notices = store
            .outbox(&OutboxFilter {
                instance_id: Some(row.id),
                ..OutboxFilter::default()
            })
            .await
            .map_err(|e| store_failed(lang, &e))?;
        rt.catalog().preview(&mut notices);
        let mut logs = Vec::with_capacity(notices.len());
        for n in &notices {
            logs.push(
                store
                    .outbox_log(n.id)
                    .await
                    .map_err(|e| store_failed(lang, &e))?,
            );
        }
        if let Some(v) = version
            && row.instance.status == Status::Active
        {
            roles.extend(v.checked.pathway.roles.keys().cloned());
        }
        let fields = catalog::redact(version.map(|v| &**v), &row.instance.fields);
        let p = version.map(|v| &v.checked.pathway);
        let role_name = |r: &str| p.map_or_else(|| r.to_string(), |p| role_title(p, r));
        let mut timers = row.instance.timers.clone();
        timers.sort_by_key(|t| t.due);
        sections.push(html! {
            section.instance aria-labelledby={"inst-" (row.id)} {
                h2 id={"inst-" (row.id)} {
                    (p.map_or(row.pathway.as_str(), |p| p.title.as_str()))
                    " — " (row.instance.state)
                }
                dl.facts {
                    dt { (lang.t("Forløb", "Pathway")) } dd { (row.pathway) @if let Some(p) = p { " v" (p.version) } }
                    dt { (lang.t("Status", "Status")) } dd id={"status-" (row.id)} { (status_words(row, lang)) @if let Some(h) = row.held_since { " " (lang.t("siden", "since")) " " (local(h)) } }
                    dt { (lang.t("Ansvarlig", "Owner")) } dd { (row.instance.owner.as_deref().map_or_else(|| "—".to_string(), role_name)) }
                    dt { (lang.t("I tilstanden siden", "In the state since")) } dd { (local(row.instance.entered_at)) }
                    @for (k, v) in &fields {
                        dt { (k) } dd { (v.as_str().map_or_else(|| v.to_string(), str::to_string)) }
                    }
                }
                @if viewer.may_write() && row.instance.status == Status::Active {
                    @let (action, label) = if row.held_since.is_some() {
                        ("resume", lang.t("Genoptag", "Resume"))
                    } else {
                        ("hold", lang.t("Sæt i bero", "Put on hold"))
                    };
                    form.inline method="post" action={"/familier/" (enc(&reference)) "/" (action)} {
                        input type="hidden" name="_csrf" value=(viewer.csrf);
                        input type="hidden" name="instance" value=(row.id);
                        button type="submit" id={(action) "-" (row.id)} { (label) " (" (row.pathway) ")" }
                    }
                }
                @if !row.instance.overdue.is_empty() {
                    h3 { (lang.t("Overskredne frister", "Missed deadlines")) }
                    ul {
                        @for o in &row.instance.overdue {
                            li.late {
                                @match o.kind {
                                    OverdueKind::Handoff => { (lang.t("Overdragelse til ", "Handoff to ")) (role_name(&o.role)) (lang.t(" ikke kvitteret (", " not acknowledged (")) (o.name) ")" }
                                    OverdueKind::Activity => { (o.name) (lang.t(" ikke registreret af ", " not recorded by ")) (role_name(&o.role)) }
                                }
                                ": " (lang.t("frist", "deadline")) " " (local(o.since)) ", " (late(now, o.since, lang))
                            }
                        }
                    }
                }
                h3 { (lang.t("Kontakter", "Contacts")) }
                ul id={"contacts-" (row.id)} {
                    @for (role, id) in &row.roles {
                        @if let Some(c) = contacts.get(id) {
                            li { (role_name(role)) ": " (c.name) " · " (address(&viewer, c.email.as_deref().or(c.phone.as_deref()))) }
                        }
                    }
                }
                h3 { (lang.t("Kommende tidspunkter", "Coming timers")) }
                @if timers.is_empty() { p { "—" } } @else {
                    table {
                        thead { tr { th scope="col" { (lang.t("Hvornår", "When")) } th scope="col" { (lang.t("Hvad", "What")) } } }
                        tbody { @for t in &timers { tr { td { (local(t.due)) } td { (timer_name(version.map(|v| &**v), &row.instance.state, t)) } } } }
                    }
                }
                h3 { (lang.t("Beskeder", "Notices")) }
                @if notices.is_empty() { p { "—" } } @else {
                    table id={"notices-" (row.id)} {
                        thead { tr {
                            th scope="col" { "#" }
                            th scope="col" { (lang.t("Til", "To")) }
                            th scope="col" { (lang.t("Skabelon", "Template")) }
                            th scope="col" { (lang.t("Kanal", "Channel")) }
                            th scope="col" { (lang.t("Status", "Status")) }
                            th scope="col" { (lang.t("Ikke før", "Not before")) }
                            th scope="col" { (lang.t("Forløb af beskeden", "Provenance")) }
                        } }
                        tbody {
                            @for (n, log) in notices.iter().zip(&logs) {
                                tr {
                                    td { (n.id) }
                                    td { (role_name(&n.role)) @if let Some(r) = &n.recipient { br; span.muted { (r) } } br; span.muted { (address(&viewer, n.address.as_deref())) } }
                                    td { (n.template) }
                                    td { (n.channel.map_or("—", |c| c.as_str())) }
                                    td.notice-status { (n.status.as_str()) @if let Some(e) = &n.last_error { br; span.error { (e) } } }
                                    td { (local(n.not_before)) }
                                    td { details { summary { (log.len()) (lang.t(" trin", " steps")) }
                                        ol { @for l in log { li { (local(l.at)) " " (l.status) @if let Some(d) = &l.detail { ": " (d) } } } }
                                    } }
                                }
                            }
                        }
                    }
                }
                h3 { (lang.t("Historik", "History")) }
                ol.timeline reversed {
                    @for h in history.iter().rev() {
                        li {
                            strong { (local(h.at)) } " · "
                            (crate::simulate::describe(&h.cause)) " · "
                            @if let Some(from) = &h.from { (from) " → " } (h.to)
                            @for n in &h.notes { br; span.muted { (n) } }
                        }
                    }
                }
            }
        });
    }
    roles.sort_unstable();
    roles.dedup();
    let restricted = viewer.caller.restriction().is_some();
    // Events refused for the family: what a professional's system reported that did not fit.
    // A viewer limited to some pathways sees those of its pathways only.
    let visible_ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let refused_events: Vec<EventRecord> = store
        .events(&reference)
        .await
        .map_err(|e| store_failed(lang, &e))?
        .into_iter()
        .filter(|e| e.outcome == Outcome::Rejected)
        .filter(|e| match (e.instance_id, &e.pathway) {
            (Some(id), _) => visible_ids.contains(&id),
            (None, Some(p)) => viewer.caller.may_use(p),
            (None, None) => !restricted,
        })
        .collect();
    // Who did what to the family: for an admin of every pathway, as the API's audit log.
    let audit_lines = if viewer.caller.is_admin() && !restricted {
        store
            .audit_log(&AuditFilter {
                reference: Some(reference.clone()),
                ..AuditFilter::default()
            })
            .await
            .map_err(|e| store_failed(lang, &e))?
    } else {
        Vec::new()
    };
    let active: Vec<&str> = rows
        .iter()
        .filter(|r| r.instance.status == Status::Active)
        .map(|r| r.pathway.as_str())
        .collect();
    let message = done.done.as_deref().map(|d| match d {
        "hold" => lang.t("Forløbet er sat i bero.", "The pathway is on hold."),
        "resume" => lang.t("Forløbet er genoptaget.", "The pathway is resumed."),
        "assign" => lang.t("Kontakten er tildelt.", "The contact is assigned."),
        _ => "",
    });
    let title = format!("{} {reference}", lang.t("Familie", "Family"));
    Ok(shell(
        &viewer,
        Section::Families,
        &title,
        html! {
            h1 { (title) }
            @if let Some(m) = message { @if !m.is_empty() { p.ok role="status" id="done" { (m) } } }
            @for s in sections { (s) }
            @if !refused_events.is_empty() {
                section aria-labelledby="refused-title" {
                    h2 id="refused-title" { (lang.t("Afviste hændelser", "Refused events")) }
                    table id="refused" {
                        thead { tr {
                            th scope="col" { (lang.t("Modtaget", "Received")) }
                            th scope="col" { (lang.t("Hændelse", "Event")) }
                            th scope="col" { (lang.t("Forløb", "Pathway")) }
                            th scope="col" { (lang.t("Kode", "Code")) }
                            th scope="col" { (lang.t("Hvorfor", "Why")) }
                        } }
                        tbody { @for e in &refused_events { tr {
                            td { (local(e.received_at)) }
                            td { (e.name) }
                            td { (e.pathway.as_deref().unwrap_or("—")) }
                            td { code { (e.code.as_deref().unwrap_or("")) } }
                            td { (e.reason.as_deref().unwrap_or("")) }
                        } } }
                    }
                }
            }
            @if !audit_lines.is_empty() {
                section aria-labelledby="audit-title" {
                    h2 id="audit-title" { (lang.t("Revisionsspor", "Audit trail")) }
                    table id="audit" {
                        thead { tr {
                            th scope="col" { (lang.t("Hvornår", "When")) }
                            th scope="col" { (lang.t("Hvem", "Who")) }
                            th scope="col" { (lang.t("Hvad", "What")) }
                            th scope="col" { (lang.t("Detaljer", "Details")) }
                            th scope="col" { (lang.t("Udfald", "Outcome")) }
                        } }
                        tbody { @for a in &audit_lines { tr {
                            td { (local(a.at)) } td { (a.actor) } td { (a.action) }
                            td { (a.detail.as_deref().unwrap_or("")) } td { (a.outcome) }
                        } } }
                    }
                }
            }
            @if viewer.may_write() && !active.is_empty() {
                section aria-labelledby="assign-title" {
                    h2 id="assign-title" { (lang.t("Tildel en person til en rolle", "Assign a person to a role")) }
                    p { (lang.t(
                        "Personen får rollen på hvert aktivt forløb med den rolle. Døde beskeder til rollen sendes igen til personen.",
                        "The person gets the role on every active pathway that has it. Dead letters for the role are sent again to the person.",
                    )) }
                    (assign_form(&viewer, &reference, &roles, &active, restricted))
                }
            }
        },
    )
    .into_response())
}

fn assign_form(
    viewer: &Viewer,
    reference: &str,
    roles: &[String],
    active: &[&str],
    restricted: bool,
) -> Markup {
    let lang = viewer.lang;
    html! {
        form.stack method="post" action={"/familier/" (enc(reference)) "/kontakt"} {
            input type="hidden" name="_csrf" value=(viewer.csrf);
            p { label for="role" { (lang.t("Rolle", "Role")) }
                select id="role" name="role" required { @for r in roles { option value=(r) { (r) } } } }
            p { label for="assign-pathway" { (lang.t("Forløb", "Pathway")) }
                select id="assign-pathway" name="pathway" {
                    @if !restricted { option value="" { (lang.t("Alle aktive forløb", "Every active pathway")) } }
                    @for p in active { option value=(p) { (p) } }
                } }
            p { label for="name" { (lang.t("Navn", "Name")) } input id="name" name="name" required autocomplete="off"; }
            p { label for="email" { (lang.t("E-mail", "Email")) } input id="email" name="email" type="email" autocomplete="off"; }
            p { label for="phone" { (lang.t("Mobilnummer (+45…)", "Mobile number (+45…)")) } input id="phone" name="phone" type="tel" autocomplete="off"; }
            p { button type="submit" id="assign" { (lang.t("Tildel", "Assign")) } }
        }
    }
}

/// A hold or resume form's fields.
#[derive(Debug, Deserialize)]
pub struct HoldForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    instance: i64,
}

/// `POST /familier/{ref}/hold`.
pub async fn hold<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Path(reference): Path<String>,
    Form(form): Form<HoldForm>,
) -> Result<Response, Response> {
    set_held(web, viewer, reference, form, true).await
}

/// `POST /familier/{ref}/resume`.
pub async fn resume<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Path(reference): Path<String>,
    Form(form): Form<HoldForm>,
) -> Result<Response, Response> {
    set_held(web, viewer, reference, form, false).await
}

fn may_not_write(lang: Lang) -> Response {
    refused(
        lang,
        StatusCode::FORBIDDEN,
        lang.t(
            "Din adgangsnøgle må ikke ændre familier (den mangler instances:write).",
            "Your token may not change families (it lacks instances:write).",
        ),
    )
}

async fn set_held<S: Storage>(
    web: Web<S>,
    viewer: Viewer,
    reference: String,
    form: HoldForm,
    held: bool,
) -> Result<Response, Response> {
    let lang = viewer.lang;
    viewer.check_csrf(&form.csrf)?;
    if !viewer.may_write() {
        return Err(may_not_write(lang));
    }
    let rows = visible_rows(&web, &viewer, &reference).await?;
    let Some(row) = rows.iter().find(|r| r.id == form.instance) else {
        return Err(no_family(lang, &reference));
    };
    if row.instance.status != Status::Active {
        return Err(refused(
            lang,
            StatusCode::CONFLICT,
            lang.t("Forløbet er afsluttet.", "The pathway has finished."),
        ));
    }
    let rt = &web.api.runtime;
    let now = rt.clock().now();
    let actor = viewer.actor();
    let changed = rt
        .store()
        .set_held(row.id, held.then_some(actor.as_str()), now)
        .await
        .map_err(|e| store_failed(lang, &e))?;
    if changed && !held {
        (web.api.committed)();
    }
    let action = if held { "hold" } else { "resume" };
    web.audit(&actor, action, Some(&reference), Some(row.id), None)
        .await;
    Ok(Redirect::to(&format!("/familier/{}?done={action}", enc(&reference))).into_response())
}

/// The assign form's fields.
#[derive(Debug, Deserialize)]
pub struct AssignForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    role: String,
    #[serde(default)]
    pathway: String,
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
}

/// `POST /familier/{ref}/kontakt`: a person for a role of the family.
pub async fn assign<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Path(reference): Path<String>,
    Form(form): Form<AssignForm>,
) -> Result<Response, Response> {
    let lang = viewer.lang;
    viewer.check_csrf(&form.csrf)?;
    if !viewer.may_write() {
        return Err(may_not_write(lang));
    }
    let pathway = (!form.pathway.is_empty()).then_some(form.pathway.as_str());
    match pathway {
        Some(p) if !viewer.caller.may_use(p) => return Err(no_family(lang, &reference)),
        None if viewer.caller.restriction().is_some() => {
            return Err(refused(
                lang,
                StatusCode::UNPROCESSABLE_ENTITY,
                lang.t(
                    "Vælg et forløb: din adgangsnøgle gælder kun nogle forløb.",
                    "Choose a pathway: your token covers only some pathways.",
                ),
            ));
        }
        _ => {}
    }
    if visible_rows(&web, &viewer, &reference).await?.is_empty() {
        return Err(no_family(lang, &reference));
    }
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let contact = Contact {
        name: form.name.trim().to_string(),
        email: some(&form.email),
        phone: some(&form.phone),
        language: "da".into(),
        channel: None,
    };
    if contact.name.is_empty() || (contact.email.is_none() && contact.phone.is_none()) {
        return Err(refused(
            lang,
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t(
                "Skriv et navn og en e-mail eller et mobilnummer.",
                "Give a name and an email or a mobile number.",
            ),
        ));
    }
    match web
        .api
        .runtime
        .assign(&reference, &form.role, &contact, pathway, &viewer.actor())
        .await
    {
        Ok(a) => {
            (web.api.committed)();
            web.audit(
                &viewer.actor(),
                "assign",
                Some(&reference),
                None,
                Some(format!(
                    "role {} on {} pathway(s), {} retried",
                    form.role,
                    a.instances.len(),
                    a.retried
                )),
            )
            .await;
            Ok(Redirect::to(&format!("/familier/{}?done=assign", enc(&reference))).into_response())
        }
        Err(RuntimeError::Assign(why)) => {
            Err(refused(lang, StatusCode::UNPROCESSABLE_ENTITY, &why))
        }
        Err(RuntimeError::Store(e)) => Err(store_failed(lang, &e)),
    }
}
