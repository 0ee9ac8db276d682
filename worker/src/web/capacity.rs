//! *Kapacitet*: the notices each role will get in each of the next twelve weeks, from the
//! active families' own pathways stepped forward in memory ([`crate::forecast`]): as a chart
//! and as a table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, PreEscaped, html};

use super::layout::{Lang, Section, local, shell};
use super::session::{CsrfForm, refused, store_failed};
use super::{Viewer, Web};
use crate::forecast::{self, Forecast, Span};
use crate::runtime::RuntimeError;
use crate::store::Storage;

/// Weeks forecast, the current one first.
pub const WEEKS: usize = 12;

/// How long a forecast is shown before it is computed again.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// Colours of the roles' bars: each at least 3:1 against white, told apart by the legend and
/// the table too.
const PALETTE: [&str; 8] = [
    "#1d4ed8", "#b91c1c", "#047857", "#7c3aed", "#b45309", "#0e7490", "#be185d", "#4b5563",
];

/// The last forecast, per pathway, and the one computation at a time that makes the next.
#[derive(Default)]
pub struct Cache {
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    computing: tokio::sync::Mutex<()>,
}

/// One forecast of every active family, each pathway's apart.
pub struct Snapshot {
    span: Span,
    by_pathway: BTreeMap<String, Forecast>,
}

impl Cache {
    fn current(&self) -> Option<(Instant, Arc<Snapshot>)> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn keep(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), snapshot.clone()));
        snapshot
    }
}

/// Starts the first forecast beside the server, so the first viewer need not wait for it.
pub fn warm<S: Storage>(web: &Web<S>) {
    if tokio::runtime::Handle::try_current().is_ok() {
        refresh_beside(web);
    }
}

/// `GET /kapacitet`.
pub async fn page<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
) -> Result<Response, Response> {
    let lang = viewer.lang;
    let current = web.capacity.current();
    let age = current.as_ref().map_or(0, |(at, _)| at.elapsed().as_secs());
    let snapshot = match current {
        // A forecast a minute old is shown while the next is computed beside: nobody waits on
        // stepping the whole cohort.
        Some((at, s)) => {
            if at.elapsed() >= FRESH_FOR {
                refresh_beside(&web);
            }
            s
        }
        None => {
            // The first: wait for the one being computed, or compute it.
            let _turn = web.capacity.computing.lock().await;
            match web.capacity.current() {
                Some((_, s)) => s,
                None => web.capacity.keep(
                    compute(&web)
                        .await
                        .map_err(|r| r.unwrap_or_else(|| unavailable(lang)))?,
                ),
            }
        }
    };
    let f = Forecast::sum(
        snapshot
            .by_pathway
            .iter()
            .filter(|(p, _)| viewer.caller.may_use(p))
            .map(|(_, f)| f),
        &snapshot.span,
    );
    let title = lang.t("Kapacitet", "Capacity");
    Ok(shell(
        &viewer,
        Section::Capacity,
        title,
        html! {
            h1 { (title) }
            p {
                (lang.t("Beskeder pr. rolle pr. uge de næste 12 uger, fra ", "Notices per role per week for the next 12 weeks, from "))
                (local(f.from)) ". "
                (lang.t(
                    "Hver aktiv familie føres frem i sit eget forløb med motoren selv, som om intet nyt blev meldt: overdragelser, påmindelser, eskaleringer og besøg, som forløbenes egne frister bringer. Rykkere tælles, som om ingen når det i tide: et loft, ikke et skøn.",
                    "Each active family is stepped forward on its own pathway by the engine itself, as if nothing new were reported: the handoffs, reminders, escalations and visits the pathways' own deadlines bring. Escalations are counted as if nobody were in time: a ceiling, not an estimate.",
                ))
            }
            p id="families-counted" { (f.families) (lang.t(" familier regnet med", " families counted")) @if f.held > 0 { ", " (f.held) (lang.t(" i bero ikke med", " on hold left out")) } "." }
            form.inline method="post" action="/kapacitet" {
                input type="hidden" name="_csrf" value=(viewer.csrf);
                span.muted { (lang.t("Beregnet for ", "Computed ")) (age) (lang.t(" sekunder siden. ", " seconds ago. ")) }
                button.secondary type="submit" id="recompute" { (lang.t("Beregn igen nu", "Compute again now")) }
            }
            @if !f.failed.is_empty() {
                p.error { (f.failed.len()) (lang.t(" familier kunne ikke regnes frem: ", " families could not be stepped forward: ")) (f.failed[0].1) }
            }
            (chart(&f, lang))
            (table(&f, lang))
        },
    )
    .into_response())
}

/// `POST /kapacitet`: the forecast computed again now, for a viewer who will not wait a minute.
pub async fn recompute<S: Storage>(
    State(web): State<Web<S>>,
    viewer: Viewer,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Response> {
    viewer.check_csrf(&form.csrf)?;
    let _turn = web.capacity.computing.lock().await;
    let snapshot = compute(&web)
        .await
        .map_err(|r| r.unwrap_or_else(|| unavailable(viewer.lang)))?;
    web.capacity.keep(snapshot);
    Ok(Redirect::to("/kapacitet").into_response())
}

fn unavailable(lang: Lang) -> Response {
    refused(
        lang,
        StatusCode::SERVICE_UNAVAILABLE,
        lang.t(
            "Prognosen kunne ikke beregnes. Prøv igen.",
            "The forecast could not be computed. Try again.",
        ),
    )
}

/// Computes the forecast again on a task of its own, unless one is being computed.
fn refresh_beside<S: Storage>(web: &Web<S>) {
    let web = web.clone();
    tokio::spawn(async move {
        let Ok(_turn) = web.capacity.computing.try_lock() else {
            return;
        };
        if let Ok(s) = compute(&web).await {
            web.capacity.keep(s);
        }
    });
}

/// The forecast of every active family, each pathway's apart.
async fn compute<S: Storage>(web: &Web<S>) -> Result<Snapshot, Option<Response>> {
    let rt = web.api.runtime.clone();
    let rows = crate::bulk::select(&rt, &crate::bulk::Selection::default())
        .await
        .map_err(|e| match e {
            RuntimeError::Store(e) => Some(store_failed(Lang::Da, &e)),
            other => {
                tracing::error!(error = %other, "web view: the active families could not be read");
                None
            }
        })?;
    let span = Span::new(rt.clock().now(), WEEKS, &super::layout::zone()).map_err(|e| {
        tracing::error!(error = %e, "web view: no forecast");
        None
    })?;
    // Stepping tens of thousands of families is work for a thread of its own.
    tokio::task::spawn_blocking(move || Snapshot {
        by_pathway: forecast::by_pathway(rt.catalog(), &rows, &span),
        span,
    })
    .await
    .map_err(|_| None)
}

fn week_label(f: &Forecast, i: usize, lang: Lang) -> String {
    let d = f.weeks[i];
    let week = d.iso_week_date().week();
    format!("{} {week} ({})", lang.t("uge", "week"), d.strftime("%d/%m"))
}

fn chart(f: &Forecast, lang: Lang) -> Markup {
    let (w, h, left, bottom) = (900i64, 320i64, 50i64, 60i64);
    let max = (0..f.weeks.len())
        .map(|i| f.week_total(i))
        .max()
        .unwrap_or(0)
        .max(1);
    let band = (w - left - 10) / f.weeks.len().max(1) as i64;
    let scale = |n: u32| (i64::from(n) * (h - bottom - 20)) / i64::from(max);
    let mut svg = format!(
        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">",
        lang.t(
            "Beskeder pr. uge, stablet pr. rolle; tallene står i tabellen",
            "Notices per week, stacked by role; the numbers are in the table"
        )
    );
    svg.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#111827\"/><text x=\"{}\" y=\"20\" font-size=\"12\" text-anchor=\"end\" fill=\"#111827\">{max}</text>",
        h - bottom, w - 10, h - bottom, left - 6
    ));
    for i in 0..f.weeks.len() {
        let x = left + i as i64 * band + 6;
        let mut y = h - bottom;
        for (r, (_, counts)) in f.roles.iter().enumerate() {
            let n = counts[i];
            if n == 0 {
                continue;
            }
            let bar = scale(n).max(1);
            y -= bar;
            svg.push_str(&format!(
                "<rect class=\"bar\" x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{bar}\" fill=\"{}\"/>",
                band - 12,
                PALETTE[r % PALETTE.len()]
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#111827\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#111827\">{}</text>",
            x + (band - 12) / 2,
            h - bottom + 16,
            f.weeks[i].iso_week_date().week(),
            x + (band - 12) / 2,
            y - 4,
            f.week_total(i)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#111827\">{}</text></svg>",
        left + (w - left) / 2,
        h - 20,
        lang.t("Uge", "Week")
    ));
    html! {
        figure {
            (PreEscaped(svg))
            figcaption {
                ul.legend {
                    @for (r, (role, _)) in f.roles.iter().enumerate() {
                        li { span.swatch style={"background:" (PALETTE[r % PALETTE.len()])} {} (role) }
                    }
                }
            }
        }
    }
}

fn table(f: &Forecast, lang: Lang) -> Markup {
    html! {
        table id="capacity" {
            caption { (lang.t("Beskeder pr. rolle og uge", "Notices per role and week")) }
            thead { tr {
                th scope="col" { (lang.t("Rolle", "Role")) }
                @for i in 0..f.weeks.len() { th scope="col" class="num" data-week=(f.weeks[i]) { (week_label(f, i, lang)) } }
            } }
            tbody {
                @for (role, counts) in &f.roles {
                    tr data-role=(role) { th scope="row" { (role) } @for n in counts { td.num { (n) } } }
                }
            }
            tfoot { tr { th scope="row" { (lang.t("I alt", "Total")) } @for i in 0..f.weeks.len() { td.num { (f.week_total(i)) } } } }
        }
    }
}
