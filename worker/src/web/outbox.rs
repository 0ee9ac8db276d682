//! *Udbakke*: the notices that did not go out — dead letters with the reason, and notices a
//! hold keeps back — with retry for a dead letter once its cause is mended.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Section, enc, local, shell};
use super::session::{CsrfForm, refused, store_failed};
use super::{Viewer, Web};
use crate::store::{NoticeStatus, OutboxFilter, OutboxRow, Requeue, Storage};

/// At most this many of each list.
const LIMIT: u32 = 200;

/// The message after a retry.
#[derive(Debug, Default, Deserialize)]
pub struct Done {
    retried: Option<i64>,
}

/// `GET /udbakke`.
pub async fn page<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Query(done): Query<Done>,
) -> Result<Response, Response> {
    let lang = viewer.lang;
    let rt = &web.api.runtime;
    let list = |status: Option<NoticeStatus>, held_only: bool| OutboxFilter {
        status,
        held_only,
        pathways: viewer.caller.restriction(),
        limit: Some(LIMIT),
        ..OutboxFilter::default()
    };
    let dead = rt
        .store()
        .outbox(&list(Some(NoticeStatus::Dead), false))
        .await
        .map_err(|e| store_failed(lang, &e))?;
    let held = rt
        .store()
        .outbox(&list(Some(NoticeStatus::Queued), true))
        .await
        .map_err(|e| store_failed(lang, &e))?;
    let title = lang.t("Udbakke", "Outbox");
    Ok(shell(
        &viewer,
        Section::Outbox,
        title,
        html! {
            h1 { (title) }
            @if let Some(id) = done.retried {
                p.ok role="status" id="done" { (lang.t("Besked ", "Notice ")) (id) (lang.t(" er sat i kø igen.", " is queued again.")) }
            }
            h2 { (lang.t("Døde beskeder", "Dead letters")) " (" (dead.len()) ")" }
            p { (lang.t(
                "Beskeder, der ikke kunne sendes. Ret årsagen (fx tildel en kontakt på familiens side), og send igen.",
                "Notices that could not be sent. Mend the cause (assign a contact on the family's page, say), then retry.",
            )) }
            (table(&viewer, "dead", &dead, true))
            h2 { (lang.t("Holdt tilbage", "Held back")) " (" (held.len()) ")" }
            p { (lang.t(
                "Beskeder til familier i bero: de venter, til forløbet genoptages.",
                "Notices of families on hold: they wait until the pathway is resumed.",
            )) }
            (table(&viewer, "held", &held, false))
        },
    )
    .into_response())
}

fn table(viewer: &Viewer, id: &str, rows: &[OutboxRow], retry: bool) -> Markup {
    let lang = viewer.lang;
    html! {
        @if rows.is_empty() { p id={"no-" (id)} { "—" } } @else {
            table id=(id) {
                thead { tr {
                    th scope="col" { "#" }
                    th scope="col" { (lang.t("Familie", "Family")) }
                    th scope="col" { (lang.t("Til", "To")) }
                    th scope="col" { (lang.t("Skabelon", "Template")) }
                    th scope="col" { (lang.t("Oprettet", "Created")) }
                    th scope="col" { (lang.t("Årsag", "Reason")) }
                    @if retry && viewer.may_write() { th scope="col" { (lang.t("Handling", "Action")) } }
                } }
                tbody {
                    @for n in rows {
                        tr {
                            td { (n.id) }
                            td { a href={"/familier/" (enc(&n.reference))} { (n.reference) } }
                            td { (n.role) @if let Some(r) = &n.recipient { " (" (r) ")" } }
                            td { (n.template) }
                            td { (local(n.created_at)) }
                            td {
                                @if !retry { strong { (lang.t("Familien er i bero.", "The family is on hold.")) } " " }
                                (n.last_error.as_deref().unwrap_or(if retry { "—" } else { "" }))
                            }
                            @if retry && viewer.may_write() {
                                td { form.inline method="post" action={"/udbakke/" (n.id) "/retry"} {
                                    input type="hidden" name="_csrf" value=(viewer.csrf);
                                    button type="submit" id={"retry-" (n.id)} aria-label={(lang.t("Send igen", "Retry")) ": " (lang.t("besked ", "notice ")) (n.id)} { (lang.t("Send igen", "Retry")) }
                                } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /udbakke/{id}/retry`: a dead letter queued again.
pub async fn retry<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Response> {
    let lang = viewer.lang;
    viewer.check_csrf(&form.csrf)?;
    if !viewer.may_write() {
        return Err(refused(
            lang,
            StatusCode::FORBIDDEN,
            lang.t(
                "Din adgangsnøgle må ikke sende beskeder igen (den mangler instances:write).",
                "Your token may not retry notices (it lacks instances:write).",
            ),
        ));
    }
    let rt = &web.api.runtime;
    // Only a notice of a pathway the viewer may see: another one is answered as missing.
    let row = rt
        .store()
        .outbox(&OutboxFilter {
            status: Some(NoticeStatus::Dead),
            pathways: viewer.caller.restriction(),
            ..OutboxFilter::default()
        })
        .await
        .map_err(|e| store_failed(lang, &e))?
        .into_iter()
        .find(|r| r.id == id);
    let Some(row) = row else {
        return Err(refused(
            lang,
            StatusCode::NOT_FOUND,
            lang.t(
                "Der er ingen død besked med det nummer.",
                "There is no dead letter with that number.",
            ),
        ));
    };
    let now = rt.clock().now();
    match rt
        .store()
        .requeue(id, now)
        .await
        .map_err(|e| store_failed(lang, &e))?
    {
        Requeue::Queued => {
            (web.api.committed)();
            web.audit(
                &viewer.actor(),
                "retry",
                Some(&row.reference),
                Some(row.instance_id),
                Some(format!("notice {id}")),
            )
            .await;
            Ok(Redirect::to(&format!("/udbakke?retried={id}")).into_response())
        }
        Requeue::NotRetryable(_) | Requeue::Missing => Err(refused(
            lang,
            StatusCode::CONFLICT,
            lang.t(
                "Beskeden er ikke længere død.",
                "The notice is no longer dead.",
            ),
        )),
    }
}
