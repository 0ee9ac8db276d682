//! The page shell: navigation, language, sign-out; words in Danish and English; times in
//! Copenhagen; the style sheet (contrast at least 4.5:1 everywhere, visible focus).

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use maud::{DOCTYPE, Markup, html};

use super::Viewer;

/// The language of the pages: Danish by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    /// Dansk.
    #[default]
    Da,
    /// English.
    En,
}

impl Lang {
    /// `da` or `en`.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "da" => Some(Lang::Da),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The language's code, for `lang` attributes.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Da => "da",
            Lang::En => "en",
        }
    }

    /// The Danish or the English words.
    pub fn t<'a>(self, da: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Da => da,
            Lang::En => en,
        }
    }
}

/// A part of the site, for the navigation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Overblik.
    Overview,
    /// Familier.
    Families,
    /// Udbakke.
    Outbox,
    /// Forløb.
    Pathways,
    /// Kapacitet.
    Capacity,
}

const SECTIONS: [(Section, &str, &str, &str); 5] = [
    (Section::Overview, "/", "Overblik", "Overview"),
    (Section::Families, "/familier", "Familier", "Families"),
    (Section::Outbox, "/udbakke", "Udbakke", "Outbox"),
    (Section::Pathways, "/forloeb", "Forløb", "Pathways"),
    (Section::Capacity, "/kapacitet", "Kapacitet", "Capacity"),
];

/// A page for a signed-in viewer.
pub fn shell(viewer: &Viewer, section: Section, title: &str, body: Markup) -> Markup {
    let lang = viewer.lang;
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            (head(title))
            body {
                a.skip href="#main" { (lang.t("Spring til indholdet", "Skip to content")) }
                header {
                    nav aria-label=(lang.t("Hovedmenu", "Main")) {
                        span.brand { "carepath" }
                        ul {
                            @for (s, href, da, en) in SECTIONS {
                                li {
                                    @if s == section {
                                        a href=(href) aria-current="page" { (lang.t(da, en)) }
                                    } @else {
                                        a href=(href) { (lang.t(da, en)) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { (lang.t("Logget ind som ", "Signed in as ")) strong { (viewer.caller.name) } }
                        @if lang == Lang::Da { a href="?lang=en" lang="en" { "English" } }
                        @else { a href="?lang=da" lang="da" { "Dansk" } }
                        form method="post" action="/logout" {
                            input type="hidden" name="_csrf" value=(viewer.csrf);
                            button type="submit" { (lang.t("Log ud", "Sign out")) }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

/// A page with no navigation: sign-in, refusals.
pub fn bare_page(lang: Lang, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            (head(title))
            body { main id="main" { (body) } }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " — carepath" }
            link rel="stylesheet" href="/static/carepath.css";
        }
    }
}

/// A path segment or query value, percent-encoded.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The time zone the pages show times in.
pub fn zone() -> TimeZone {
    TimeZone::get("Europe/Copenhagen").unwrap_or(TimeZone::UTC)
}

/// A moment as local date and time.
pub fn local(t: Timestamp) -> String {
    t.to_zoned_datetime(zone())
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}

/// How long ago `since` was, in days and hours.
pub fn late(now: Timestamp, since: Timestamp, lang: Lang) -> String {
    let d: SignedDuration = now.duration_since(since);
    let hours = d.as_hours().max(0);
    let (days, hours) = (hours / 24, hours % 24);
    match (days, lang) {
        (0, Lang::Da) => format!("{hours} t"),
        (0, Lang::En) => format!("{hours} h"),
        (_, Lang::Da) => format!("{days} d {hours} t"),
        (_, Lang::En) => format!("{days} d {hours} h"),
    }
}

/// The style sheet.
pub const STYLE: &str = r#"
:root { --ink: #111827; --muted: #374151; --line: #9ca3af; --accent: #1d4ed8; --bad: #991b1b; --bg: #ffffff; --band: #f3f4f6; }
* { box-sizing: border-box; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: var(--bg); line-height: 1.45; }
a { color: var(--accent); }
a:focus, button:focus, input:focus, select:focus, summary:focus, main:focus { outline: 3px solid #f59e0b; outline-offset: 2px; }
.skip { position: absolute; left: -10000px; top: 0; background: var(--bg); padding: .5rem; }
.skip:focus { left: .5rem; }
header { display: flex; flex-wrap: wrap; justify-content: space-between; align-items: center; gap: 1rem; padding: .5rem 1rem; background: var(--band); border-bottom: 1px solid var(--line); }
header nav { display: flex; align-items: center; gap: 1rem; }
header nav ul { display: flex; flex-wrap: wrap; gap: .25rem 1rem; list-style: none; margin: 0; padding: 0; }
header nav a { text-decoration: none; padding: .25rem 0; }
header nav a[aria-current="page"] { font-weight: 700; border-bottom: 3px solid var(--accent); color: var(--ink); }
.brand { font-weight: 700; }
.who { display: flex; gap: 1rem; align-items: center; }
.who form { margin: 0; }
main { padding: 1rem; max-width: 90rem; }
h1 { font-size: 1.6rem; margin: .5rem 0 1rem; }
h2 { font-size: 1.25rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border: 1px solid var(--line); padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--band); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.late { color: var(--bad); font-weight: 600; }
.error { color: var(--bad); font-weight: 600; }
.ok { color: #166534; font-weight: 600; }
.muted { color: var(--muted); }
form.inline { display: inline; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: flex-end; margin-bottom: 1rem; }
form.filters label, form.stack label { display: block; font-weight: 600; }
form.stack p { margin: .4rem 0; }
input, select, button { font: inherit; padding: .25rem .4rem; border: 1px solid var(--muted); border-radius: 4px; background: var(--bg); color: var(--ink); }
button { background: var(--accent); color: #ffffff; border-color: var(--accent); cursor: pointer; }
button.secondary { background: var(--bg); color: var(--accent); }
section.instance { border: 1px solid var(--line); border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
ol.timeline { padding-left: 1.2rem; }
ol.timeline li { margin-bottom: .4rem; }
.graph { overflow-x: auto; border: 1px solid var(--line); padding: .5rem; }
.legend { display: flex; flex-wrap: wrap; gap: .5rem 1rem; list-style: none; padding: 0; }
.swatch { display: inline-block; width: 1rem; height: 1rem; vertical-align: middle; margin-right: .3rem; border: 1px solid var(--ink); }
"#;

/// A role's title in a pathway, or its name.
pub fn role_title(p: &carepath_engine::Pathway, role: &str) -> String {
    p.roles
        .get(role)
        .and_then(|r| r.title.clone())
        .unwrap_or_else(|| role.to_string())
}
