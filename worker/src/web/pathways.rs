//! *Forløb*: the loaded pathways, each drawn as SVG (laid out by carepath itself, see
//! [`carepath_engine::graph::to_svg`]) with its states and transitions as a table beside the
//! drawing, and its entry in the catalogue of offers.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;

use carepath_engine::catalogue;
use carepath_engine::graph::{StateGraph, to_svg};

use super::layout::{Section, enc, role_title, shell};
use super::session::refused;
use super::{Viewer, Web};
use crate::store::Storage;

/// `GET /forloeb`.
pub async fn list<S: Storage>(State(web): State<Web<S>>, viewer: Viewer) -> Response {
    let lang = viewer.lang;
    let catalog = web.api.runtime.catalog();
    let title = lang.t("Forløb", "Pathways");
    shell(
        &viewer,
        Section::Pathways,
        title,
        html! {
            h1 { (title) }
            table id="pathways" {
                thead { tr {
                    th scope="col" { (lang.t("Forløb", "Pathway")) }
                    th scope="col" { "Id" }
                    th scope="col" class="num" { "Version" }
                    th scope="col" { (lang.t("Beskrivelse", "Description")) }
                } }
                tbody {
                    @for id in catalog.pathway_ids() {
                        @if viewer.caller.may_use(&id) {
                            @if let Some(v) = catalog.latest(&id) {
                                tr {
                                    td { a href={"/forloeb/" (enc(&id))} { (v.checked.pathway.title) } }
                                    td { code { (id) } }
                                    td.num { (v.checked.pathway.version) }
                                    td { (v.checked.pathway.description.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

fn missing(viewer: &Viewer, id: &str) -> Response {
    refused(
        viewer.lang,
        StatusCode::NOT_FOUND,
        &format!(
            "{} {id}.",
            viewer.lang.t("Der er intet forløb", "There is no pathway")
        ),
    )
}

/// `GET /forloeb/{id}`.
pub async fn show<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let lang = viewer.lang;
    let catalog = web.api.runtime.catalog();
    let Some(v) = catalog.latest(&id).filter(|_| viewer.caller.may_use(&id)) else {
        return Err(missing(&viewer, &id));
    };
    let p = &v.checked.pathway;
    let all: Vec<&carepath_engine::Pathway> = catalog
        .pathway_ids()
        .iter()
        .filter_map(|i| catalog.latest(i))
        .map(|v| &v.checked.pathway)
        .collect();
    let facts = catalogue::facts(p, &catalogue::referrals(&all));
    let g = StateGraph::new(p);
    let title = p.title.clone();
    Ok(shell(
        &viewer,
        Section::Pathways,
        &title,
        html! {
            h1 { (title) " " span.muted { "(" (p.id) " v" (p.version) ")" } }
            @if let Some(d) = &p.description { p { (d) } }
            h2 { (lang.t("Graf", "Graph")) }
            // Wide graphs scroll: the region takes keyboard focus so they can be scrolled without a mouse.
            div.graph tabindex="0" role="region" aria-label=(lang.t("Grafen, kan rulles", "The graph, scrollable")) {
                img id="graph" src={"/forloeb/" (enc(&id)) "/graf.svg"}
                    alt={(lang.t("Tilstandsgraf for ", "State graph of ")) (p.title) (lang.t(": se tabellen nedenfor.", ": see the table below."))};
            }
            p.muted { (lang.t("Stiplede pile er tidspunkter; optrukne er hændelser.", "Dashed arrows are timers; solid ones are events.")) }
            h2 { (lang.t("Tilstande og overgange", "States and transitions")) }
            table id="transitions" {
                thead { tr {
                    th scope="col" { (lang.t("Fra", "From")) }
                    th scope="col" { (lang.t("Når", "When")) }
                    th scope="col" { (lang.t("Til", "To")) }
                } }
                tbody {
                    @for (from, edge, to) in g.transitions() {
                        tr { td { (from) } td { (edge.trigger.to_string()) } td { (to) } }
                    }
                }
            }
            h2 { (lang.t("Roller", "Roles")) }
            ul { @for (name, r) in &p.roles { li { (role_title(p, name)) " (" code { (name) } ", " (r.sector.as_str()) ")" } } }
            h2 { (lang.t("I tilbudskataloget", "In the catalogue of offers")) }
            @if let Some(summary) = p.offer.as_ref().and_then(|o| o.summary.as_ref()) { p { (summary) } }
            dl.facts id="offer" {
                @for (label, text) in &facts { dt { (label) } dd { (text.replace('`', "")) } }
            }
        },
    )
    .into_response())
}

/// `GET /forloeb/{id}/graf.svg`: the drawing.
pub async fn svg<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let catalog = web.api.runtime.catalog();
    let Some(v) = catalog.latest(&id).filter(|_| viewer.caller.may_use(&id)) else {
        return Err(missing(&viewer, &id));
    };
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        to_svg(&v.checked.pathway),
    )
        .into_response())
}
