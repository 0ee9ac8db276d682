"""The web view in Debian's Chromium, driven by Playwright, checked by axe-core.

Run by tests/suite/web.rs, which prepares the database and the configuration and passes
them in the environment. This script starts a stand-in SMS gateway and `carepath run`, works
through the pages as a coordinator would, and exits non-zero at the first check that fails.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import expect, sync_playwright

ENV = os.environ
BASE = f"http://127.0.0.1:{ENV['PORT']}"
SHOTS = ENV["SHOTS"]
AXE = ENV["AXE"]

# The stand-in gateway: FAM-9001's number is unreachable (503: carepath retries later),
# FAM-9002's first message is refused (400: a dead letter), everything else is accepted.
RECEIVED = []
REFUSED_ONCE = set()


class Gateway(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        to = body.get("to", "")
        if to == "+4520009001":
            status = 503
        elif to == "+4520009002" and to not in REFUSED_ONCE:
            REFUSED_ONCE.add(to)
            status = 400
        else:
            status = 200
        RECEIVED.append((to, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"id": "m-1"}' if status == 200 else b'{"error": "number barred"}')

    def log_message(self, *args):
        pass


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def wait_for(cond, what, seconds=30):
    """Waits for another process to have done something (the worker, the server starting)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            print("ok:", what, flush=True)
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


def axe(page, name):
    page.add_script_tag(path=AXE)
    violations = page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: 'tag',
             values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})).violations
             .map(v => ({id: v.id, impact: v.impact, help: v.help,
                         nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"""
    )
    bad = [v for v in violations if v["impact"] in ("serious", "critical")]
    check(not bad, f"axe-core: no serious or critical WCAG 2.1 AA violations on {name}: {bad}")


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def healthy():
    try:
        with urllib.request.urlopen(f"{BASE}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def row_text(page, table, reference):
    rows = page.locator(f"#{table} tbody tr").filter(has_text=reference)
    return [rows.nth(i).inner_text() for i in range(rows.count())]


def main():
    gateway = ThreadingHTTPServer(("127.0.0.1", int(ENV["GATEWAY_PORT"])), Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    log = open(ENV["SERVER_LOG"], "w")
    server = subprocess.Popen(
        [ENV["CAREPATH"], "run", "--db", ENV["CAREPATH_DB"], "--config", ENV["CAREPATH_CONFIG_FILE"],
         "--clock", f"fixed:{ENV['CAREPATH_CLOCK_AT']}", "--listen", f"127.0.0.1:{ENV['PORT']}",
         "--sink", ENV["SINK"]],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(healthy, "carepath run answers /healthz")
        # The timers due between the demo's end and now fire at start; their SMS reach the gateway.
        wait_for(lambda: ("+4520009002", 400) in RECEIVED and ("+4520009001", 503) in RECEIVED,
                 "the gateway refused FAM-9002's reminder and could not reach FAM-9001")
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=ENV["CHROMIUM"], headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            coordinator(browser)
            good_start(browser)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        gateway.shutdown()
    print("all checks passed")


def sign_in(page, token):
    page.goto(f"{BASE}/")
    check(page.url.startswith(f"{BASE}/login"), "a visitor without a session is sent to sign in")
    page.locator("#token").fill(token)
    page.locator("#sign-in-token").click()


def coordinator(browser):
    # axe-core is injected as an inline script, which the pages' Content-Security-Policy would
    # refuse: the contexts bypass it, and the policy itself is checked on the responses.
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, locale="da-DK", bypass_csp=True)
    page = ctx.new_page()
    page.goto(f"{BASE}/login")
    shot(page, "login")
    axe(page, "the sign-in page")
    page.locator("#token").fill("cp_not-a-token")
    page.locator("#sign-in-token").click()
    expect(page.locator("#login-error")).to_be_visible()
    check(True, "an unknown token is refused with a message")

    sign_in(page, ENV["ADMIN_TOKEN"])
    check(page.url == f"{BASE}/", "signed in, on the overview")
    cookies = {c["name"]: c for c in ctx.cookies()}
    session = cookies["carepath_session"]
    check(session["httpOnly"] and session["sameSite"] == "Strict", "the session cookie is HttpOnly and SameSite=Strict")
    check(not session["secure"], "and not Secure over plain HTTP on loopback")
    answer = page.request.get(f"{BASE}/")
    policy = answer.headers.get("content-security-policy", "")
    check("frame-ancestors 'none'" in policy and "default-src 'self'" in policy,
          f"the pages allow only carepath's own resources and no framing: {policy}")
    check(answer.headers.get("cache-control") == "no-store", "and are kept in no cache")
    behind_tls = page.request.get(f"{BASE}/login", headers={"X-Forwarded-Proto": "https"})
    check("Secure" in behind_tls.headers.get("set-cookie", ""),
          "behind a TLS proxy (X-Forwarded-Proto: https) the cookies are Secure")

    # Keyboard: the first Tab on a freshly loaded page reaches the skip link.
    page.goto(f"{BASE}/")
    page.wait_for_load_state("load")
    page.keyboard.press("Tab")
    check(page.evaluate("document.activeElement.className") == "skip", "the first Tab stop is the skip link")

    # Overview: FAM-9001's unacknowledged handoff to the midwife, with nobody to play her.
    rows = row_text(page, "overdue", "FAM-9001")
    check(any("referral_accepted" in r and "Jordemoder" in r for r in rows),
          f"the overview lists FAM-9001's overdue handoff to the midwife: {rows}")
    check(any("ingen tildelt" in r for r in rows), "and says nobody is assigned")
    banner = page.locator("#dead-letters").inner_text()
    check(banner.startswith("2 døde beskeder"), f"it points to the two dead letters: {banner}")
    shot(page, "overview")
    axe(page, "the overview")
    page.locator("#by-role").get_by_role("link", name="Jordemoder").click()
    roles = page.locator("#overdue tbody tr td:nth-child(5)").all_inner_texts()
    check(roles and set(roles) == {"Jordemoder"}, f"a role chosen in the summary lists its misses only: {roles}")
    page.get_by_role("link", name="Vis alle roller").click()

    # The family: hold it, and its reminder waits.
    page.locator("#overdue tbody tr").filter(has_text="FAM-9001").first.get_by_role("link", name="FAM-9001").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("FAM-9001")
    shot(page, "family")
    axe(page, "a family's page")
    page.get_by_role("button", name=re.compile("Sæt i bero")).click()
    expect(page.locator("#done")).to_contain_text("i bero")
    check("i bero" in page.locator("dd[id^=status-]").first.inner_text(), "the family is on hold")
    page.goto(f"{BASE}/udbakke")
    held = row_text(page, "held", "FAM-9001")
    check(any("family" in r for r in held), f"its SMS reminder waits among the held notices: {held}")
    dead = row_text(page, "dead", "FAM-9001") + row_text(page, "dead", "FAM-9002")
    check(any("nobody is assigned" in r for r in dead), f"the midwife's handoff is a dead letter: {dead}")
    check(any("answered 400" in r for r in dead), f"the refused SMS is a dead letter: {dead}")
    shot(page, "outbox")
    axe(page, "the outbox")

    page.goto(f"{BASE}/familier/FAM-9001")
    page.get_by_role("button", name=re.compile("Genoptag")).click()
    expect(page.locator("#done")).to_contain_text("genoptaget")
    page.goto(f"{BASE}/udbakke")
    check(not row_text(page, "held", "FAM-9001"), "resumed: nothing of FAM-9001 is held back")

    # Assign a midwife: the dead handoff is addressed to her and goes out.
    page.goto(f"{BASE}/familier/FAM-9001")
    page.get_by_label("Rolle", exact=True).select_option("midwife")
    page.get_by_label("Navn", exact=True).fill("Jordemoder Hanne")
    page.get_by_label("E-mail", exact=True).fill("hanne@hvidovre.example.dk")
    page.get_by_role("button", name="Tildel").click()
    expect(page.locator("#done")).to_contain_text("tildelt")

    def handoff_sent():
        page.reload()
        cells = page.locator("table[id^=notices-] tbody tr").filter(has_text="handoff")
        return cells.count() > 0 and "sent" in cells.first.locator(".notice-status").inner_text()
    wait_for(handoff_sent, "the handoff to the assigned midwife is sent")
    page.goto(f"{BASE}/udbakke")
    check(not any("nobody is assigned" in r for r in row_text(page, "dead", "FAM-9001")),
          "the handoff is no longer a dead letter")

    # Retry the refused SMS: the gateway takes it now.
    page.locator("#dead tbody tr").filter(has_text="FAM-9002").get_by_role("button").click()
    expect(page.locator("#done")).to_contain_text("i kø igen")
    wait_for(lambda: ("+4520009002", 200) in RECEIVED, "the retried SMS reaches the gateway and is taken")

    def reminder_sent():
        page.goto(f"{BASE}/familier/FAM-9002")
        rows = page.locator("table[id^=notices-] tbody tr").filter(has_text="appointment_reminder")
        return rows.count() > 0 and "sent" in rows.first.locator(".notice-status").inner_text()
    wait_for(reminder_sent, "FAM-9002's reminder shows as sent")
    refused = page.locator("#refused tbody tr").all_inner_texts()
    check(any("birth_notice_received" in r and "not-allowed" in r for r in refused),
          f"the family's page shows the refused event with its code: {refused}")
    audit = page.locator("#audit tbody tr").all_inner_texts()
    check(any("web koordinator" in r and "retry" in r for r in audit),
          f"and the retry in its audit trail: {audit}")
    page.locator("table[id^=notices-] tbody tr").filter(has_text="appointment_reminder").first.locator("summary").click()
    steps = page.locator("table[id^=notices-] tbody tr").filter(has_text="appointment_reminder").first.locator("details li").all_inner_texts()
    check([s.split(" ", 2)[2].split(":")[0] for s in steps][-3:] == ["dead", "queued", "sent"],
          f"its provenance is dead → queued → sent: {steps}")

    # Families: search and filters.
    page.goto(f"{BASE}/familier")
    page.get_by_label("Reference begynder med").fill("FAM-900")
    page.get_by_role("button", name="Søg").click()
    refs = page.locator("#families tbody tr td:first-child").all_inner_texts()
    check(sorted(refs) == ["FAM-9001", "FAM-9002"], f"the search finds the two families: {refs}")
    shot(page, "families")
    axe(page, "the family search")

    # Pathways: the drawing is an SVG Chromium can read.
    page.goto(f"{BASE}/forloeb")
    shot(page, "pathways")
    axe(page, "the pathways")
    page.get_by_role("link", name=re.compile("Svangreomsorg")).click()
    wait_for(lambda: page.evaluate("document.getElementById('graph').complete"), "the graph loads")
    width = page.evaluate("document.getElementById('graph').naturalWidth")
    check(width > 500, f"the standard track's graph is drawn ({width} px wide)")
    check(page.locator("#transitions tbody tr").count() > 10, "its transitions are listed beside it")
    shot(page, "pathway")
    axe(page, "a pathway")

    # Capacity: the page's numbers are the forecast's, once computed again after the changes.
    page.goto(f"{BASE}/kapacitet")
    page.locator("#recompute").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Kapacitet")
    forecast = json.loads(subprocess.run(
        [ENV["CAREPATH"], "forecast", "--db", ENV["CAREPATH_DB"], "--clock",
         f"fixed:{ENV['CAREPATH_CLOCK_AT']}", "--format", "json"],
        check=True, capture_output=True, text=True).stdout)
    check(f"{forecast['families']} familier" in page.locator("#families-counted").inner_text(),
          f"the capacity page counts {forecast['families']} families, as the forecast does")
    shown = {}
    for i in range(page.locator("#capacity tbody tr").count()):
        row = page.locator("#capacity tbody tr").nth(i)
        shown[row.get_attribute("data-role")] = [int(c) for c in row.locator("td").all_inner_texts()]
    check(shown == forecast["roles"], f"the capacity table is the forecast: {shown} vs {forecast['roles']}")
    check(sum(map(sum, shown.values())) > 0, "and it forecasts some work")
    weeks = page.locator("#capacity thead th[data-week]").evaluate_all("els => els.map(e => e.dataset.week)")
    check(weeks == forecast["weeks"], "for the same weeks")
    check(page.locator("#chart rect.bar").count() > 0, "the chart draws bars")
    shot(page, "capacity")
    axe(page, "the capacity page")

    # English.
    page.goto(f"{BASE}/kapacitet?lang=en")
    expect(page.get_by_role("heading", level=1)).to_have_text("Capacity")
    check(page.locator("html").get_attribute("lang") == "en", "English pages say so")
    page.goto(f"{BASE}/?lang=da")

    # A form without the session's CSRF token is refused.
    response = page.request.post(f"{BASE}/familier/FAM-9001/hold", form={"instance": "1", "_csrf": "forged"})
    check(response.status == 403, f"a forged form is refused ({response.status})")
    ctx.close()


def good_start(browser):
    """The Red Cross's coordinator: a password user limited to God start, reading only."""
    # This context keeps the Content-Security-Policy: nothing on the pages may break it.
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    violations = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{BASE}/familier")
    page.locator("#user").fill(ENV["GOOD_START_USER"])
    page.locator("#password").fill("not the password")
    page.locator("#sign-in-password").click()
    expect(page.locator("#login-error")).to_contain_text("forkert")
    check(True, "a wrong password is refused")
    page.locator("#user").fill(ENV["GOOD_START_USER"])
    page.locator("#password").fill(ENV["GOOD_START_PASSWORD"])
    page.locator("#sign-in-password").click()
    check(page.url == f"{BASE}/familier", f"signed in with a password, back where it started: {page.url}")
    pathways = set(page.locator("#families tbody tr td:nth-child(2)").all_inner_texts())
    check(pathways == {"red-cross-good-start"}, f"a God start user sees only God start families: {pathways}")
    response = page.goto(f"{BASE}/familier/FAM-9001")
    check(response.status == 404, "and not the standard track's FAM-9001")
    page.goto(f"{BASE}/familier")
    page.locator("#families tbody tr td:first-child a").first.click()
    check(page.get_by_role("button", name=re.compile("Sæt i bero|Genoptag")).count() == 0,
          "a reading user is offered no hold")
    contacts = page.locator("ul[id^=contacts-]").first.inner_text()
    check("•" in contacts and "@" in contacts, f"addresses are masked for it: {contacts}")
    response = page.goto(f"{BASE}/forloeb/standard-track")
    check(response.status == 404, "nor the standard track's drawing")
    for path in ["/", "/udbakke", "/forloeb/red-cross-good-start", "/kapacitet"]:
        page.goto(f"{BASE}{path}")
    wait_for(lambda: page.evaluate("document.getElementById('chart') !== null"), "the capacity chart is drawn")
    check(not violations, f"no page breaks its Content-Security-Policy: {violations}")
    ctx.close()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED:", e, file=sys.stderr)
        sys.exit(1)
