//! Delivery end to end on the real standard track: a handoff email reaches a real SMTP server
//! on loopback (aiosmtpd); a family's appointment reminder waits for quiet hours and reaches a
//! GatewayAPI double in the family's language; failures are retried, dead-lettered and
//! retried again by hand; opt-outs and life events skip what must not go.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use carepath_engine::pathway::Channel;
use carepath_notifier::NotifierConfig;
use carepath_notifier::email::{EmailConfig, Security};
use carepath_notifier::gateway::{Gateway, SmsConfig};
use carepath_notifier::retry::RetryPolicy;
use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, VirtualClock};
use carepath_worker::delivery::Notifier;
use carepath_worker::runtime::{EnrolRequest, EventRequest, Runtime};
use carepath_worker::store::{
    Backend, Contact, NoticeStatus, OutboxFilter, OutboxRow, Requeue, Storage,
};

use super::support::{fresh_store, root};

/// Local time in Copenhagen.
pub(super) fn local(s: &str) -> Timestamp {
    format!("{s}[Europe/Copenhagen]")
        .parse::<jiff::ZonedDateTime>()
        .expect("local time")
        .timestamp()
}

pub(super) fn contact(
    name: &str,
    email: Option<&str>,
    phone: Option<&str>,
    language: &str,
) -> Contact {
    Contact {
        name: name.into(),
        email: email.map(str::to_string),
        phone: phone.map(str::to_string),
        language: language.into(),
        channel: None,
    }
}

pub(super) async fn runtime(dir: &Path) -> (Runtime<Backend>, Arc<VirtualClock>) {
    let start = local("2027-01-11T08:00");
    let store = fresh_store(dir).await;
    let (catalog, _) = Catalog::sync(&store, &[root().join("pathways")], start)
        .await
        .expect("load");
    let clock = Arc::new(VirtualClock::new(start));
    (
        Runtime::new(store, catalog, clock.clone() as Arc<dyn Clock>),
        clock,
    )
}

/// Enrols a family whose midwife is `midwife` and whose phone is `phone`, language `lang`.
pub(super) async fn enrol(rt: &Runtime<Backend>, reference: &str, midwife: &str, lang: &str) {
    let contacts: BTreeMap<String, Contact> = [
        (
            "gp",
            contact("Lægehuset", Some("laege@example.dk"), None, "da"),
        ),
        (
            "midwife",
            contact("Jordemodercentret", Some(midwife), None, "da"),
        ),
        (
            "coordinator",
            contact("Koordinator", Some("koordinator@example.dk"), None, "da"),
        ),
        (
            "health_visitor",
            contact("Sundhedsplejen", Some("sp@example.dk"), None, "da"),
        ),
        (
            "team_lead",
            contact("Leder", Some("leder@example.dk"), None, "da"),
        ),
        (
            "family",
            contact("Amal", None, Some(phone(reference)), lang),
        ),
    ]
    .into_iter()
    .map(|(r, c)| (r.to_string(), c))
    .collect();
    let fields = json!({"due_date": "2027-08-20"});
    rt.enrol(&EnrolRequest {
        reference: reference.into(),
        pathway: "standard-track".into(),
        fields: fields.as_object().expect("object").clone(),
        contacts,
    })
    .await
    .expect("enrol");
}

/// Each family its own number; FAM-MOVE's differs from the opted-out one.
fn phone(reference: &str) -> &'static str {
    if reference == "FAM-MOVE" {
        "+4530123456"
    } else {
        "+4520123456"
    }
}

pub(super) async fn event(rt: &Runtime<Backend>, reference: &str, name: &str, payload: Value) {
    event_keyed(rt, reference, name, name, payload).await;
}

/// Reports an event under the key `REF:KEY`, and asserts it was not refused.
pub(super) async fn event_keyed(
    rt: &Runtime<Backend>,
    reference: &str,
    key: &str,
    name: &str,
    payload: Value,
) {
    let r = rt
        .apply_events(&[EventRequest {
            instance_id: None,
            key: format!("{reference}:{key}"),
            reference: reference.into(),
            pathway: None,
            event: name.into(),
            payload,
            contacts: Default::default(),
        }])
        .await
        .expect("event");
    assert!(
        r[0].transition.is_some() || r[0].record.code.is_none(),
        "{r:?}"
    );
}

/// The notices made from `template`, with the text they are (or will be) sent with: a queued
/// notice is rendered at delivery, so its text is previewed as a listing shows it.
pub(super) async fn rows(rt: &Runtime<Backend>, template: &str) -> Vec<OutboxRow> {
    let mut rows: Vec<OutboxRow> = rt
        .store()
        .outbox(&OutboxFilter::default())
        .await
        .expect("outbox")
        .into_iter()
        .filter(|r| r.template == template)
        .collect();
    rt.catalog().preview(&mut rows);
    rows
}

/// aiosmtpd on a free loopback port, writing what it receives to `out`.
pub(super) struct SmtpServer {
    child: Child,
    pub(super) port: u16,
}

impl SmtpServer {
    /// A server writing into a new `mail` folder of `dir`, and that folder.
    pub(super) fn in_dir(dir: &Path) -> (SmtpServer, std::path::PathBuf) {
        let out = dir.join("mail");
        std::fs::create_dir_all(&out).expect("mkdir");
        (SmtpServer::start(&out), out)
    }

    pub(super) fn start(out: &Path) -> SmtpServer {
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(root().join("tests/fixtures/smtp_sink.py"))
            .arg(port.to_string())
            .arg(out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd and icalendar (pip install aiosmtpd icalendar; .ci/run installs them)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(
            line.trim(),
            "ready",
            "aiosmtpd did not start: are aiosmtpd and icalendar installed?"
        );
        SmtpServer { child, port }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A notifier that sends email to the SMTP server on `port`.
pub(super) fn email_notifier(port: u16) -> Notifier {
    Notifier::new(&NotifierConfig {
        email: Some(email_config(port)),
        ..NotifierConfig::default()
    })
    .expect("notifier")
}

/// A notifier that sends SMS as `sms` says.
pub(super) fn sms_notifier(sms: SmsConfig) -> Notifier {
    Notifier::new(&NotifierConfig {
        sms: Some(sms),
        ..NotifierConfig::default()
    })
    .expect("notifier")
}

pub(super) fn email_config(port: u16) -> EmailConfig {
    EmailConfig {
        host: "127.0.0.1".into(),
        port: Some(port),
        security: Security::None,
        username: None,
        password_env: None,
        from: "Forløbskoordinering <noreply@carepath.example.dk>".into(),
        pool: 2,
        timeout_secs: 5,
    }
}

pub(super) fn received(out: &Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(out)
        .expect("out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json"))
        .collect()
}

#[tokio::test]
async fn a_handoff_email_arrives_at_a_real_smtp_server_and_a_refused_one_is_dead() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (smtp, out) = SmtpServer::in_dir(dir.path());
    let (rt, clock) = runtime(dir.path()).await;
    enrol(&rt, "FAM-1", "jordemoder@hvidovre.example.dk", "da").await;
    enrol(&rt, "FAM-2", "reject@herlev.example.dk", "da").await;
    clock.advance_to(local("2027-01-12T09:00"));
    event(&rt, "FAM-1", "first_exam_done", json!({"care_level": 2})).await;
    event(&rt, "FAM-2", "first_exam_done", json!({"care_level": 2})).await;

    let notifier = email_notifier(smtp.port);
    let now = clock.now();
    let done = notifier.deliver(rt.store(), now).await.expect("deliver");
    assert!(done.sent >= 1 && done.dead >= 1, "{done:?}");

    let referrals = rows(&rt, "pregnancy_referral").await;
    let sent = referrals
        .iter()
        .find(|r| r.reference == "FAM-1")
        .expect("FAM-1");
    assert_eq!(sent.status, NoticeStatus::Sent);
    let mail = received(&out);
    let got = mail
        .iter()
        .find(|m| m["rcpt_tos"] == json!(["jordemoder@hvidovre.example.dk"]))
        .expect("the midwife's email arrived");
    assert_eq!(
        got["to"],
        "Jordemodercentret <jordemoder@hvidovre.example.dk>"
    );
    assert_eq!(
        got["subject"].as_str(),
        sent.text.subject.as_deref(),
        "the subject as rendered and stored"
    );
    assert_eq!(got["subject"], "Ny henvisning til svangreomsorg (FAM-1)");
    let body = got["body"].as_str().expect("body");
    assert!(body.contains("Kære Jordemodercentret"), "{body}");
    assert!(body.contains("Familien FAM-1 er henvist"), "{body}");
    assert!(
        got["message_id"]
            .as_str()
            .is_some_and(|id| id.contains(&sent.key.replace(':', "."))),
        "the notice key is the Message-ID: {got}"
    );
    assert!(!body.contains("0101901234") && !body.contains("2027-08-20"));
    // The template has an HTML body: the email is text with an HTML alternative.
    assert!(
        got["content_type"]
            .as_str()
            .is_some_and(|c| c.starts_with("multipart/alternative")),
        "{got}"
    );
    let html = got["html"].as_str().expect("an HTML part");
    assert!(
        html.contains("<p>Familien <strong>FAM-1</strong> er henvist"),
        "{html}"
    );
    // SMTP carries lines ended by CRLF.
    assert_eq!(
        Some(html.replace("\r\n", "\n")),
        sent.text.html.clone(),
        "the HTML as rendered and stored"
    );

    let refused = referrals
        .iter()
        .find(|r| r.reference == "FAM-2")
        .expect("FAM-2");
    assert_eq!(refused.status, NoticeStatus::Dead, "a 550 is permanent");
    assert!(
        refused
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("550")),
        "{:?}",
        refused.last_error
    );
    let log = rt.store().outbox_log(refused.id).await.expect("log");
    let steps: Vec<&str> = log.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(steps, ["queued", "dead"]);

    // The server goes away: the next notice is retried later, not lost.
    drop(smtp);
    event(&rt, "FAM-1", "referral_accepted", json!({})).await;
    clock.advance_to(local("2027-01-12T09:05"));
    enrol(&rt, "FAM-3", "jordemoder@hvidovre.example.dk", "da").await;
    event(&rt, "FAM-3", "first_exam_done", json!({"care_level": 1})).await;
    let done = notifier
        .deliver(rt.store(), clock.now())
        .await
        .expect("deliver");
    assert_eq!((done.sent, done.retried), (0, 1), "{done:?}");
    let waiting = rows(&rt, "pregnancy_referral").await;
    let waiting = waiting
        .iter()
        .find(|r| r.reference == "FAM-3")
        .expect("FAM-3");
    assert_eq!(
        (waiting.status, waiting.attempts),
        (NoticeStatus::Queued, 1)
    );
    assert!(waiting.not_before > clock.now(), "retried after a backoff");
}

/// What the gateway double received.
pub(super) async fn requests(server: &MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap_or_default()
}

pub(super) async fn gateway(server: &MockServer) -> SmsConfig {
    // SAFETY of the environment: each test names its own variable.
    unsafe { std::env::set_var("CAREPATH_TEST_GATEWAYAPI_TOKEN", "test-token") };
    SmsConfig {
        gateway: Gateway::Gatewayapi,
        url: server.uri(),
        token_env: Some("CAREPATH_TEST_GATEWAYAPI_TOKEN".into()),
        username: None,
        sender: "Kommunen".into(),
        timeout_secs: 5,
        max_segments: 3,
        inbound_secret_env: None,
        inbound_keyword: None,
        receipts_url: None,
    }
}

/// Books a scan for Monday 15 February 2027 at 09:30: the family's reminders are due
/// Saturday 13 February 09:30 (two days before) and Monday 06:30 (three hours before).
/// A gateway double that accepts every message.
pub(super) async fn accepting_gateway() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ids": [1]})))
        .mount(&server)
        .await;
    server
}

pub(super) async fn book_scan(rt: &Runtime<Backend>, clock: &VirtualClock, reference: &str) {
    clock.advance_to(local("2027-01-12T09:00"));
    event(rt, reference, "first_exam_done", json!({"care_level": 2})).await;
    event(rt, reference, "referral_accepted", json!({})).await;
    event(
        rt,
        reference,
        "appointment_booked",
        json!({"appointment_id": "scan-1", "at": "2027-02-15T09:30:00+01:00", "place": "Hvidovre Hospital"}),
    )
    .await;
}

#[tokio::test]
async fn a_family_reminder_waits_for_quiet_hours_and_reaches_the_gateway_in_arabic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/rest/mtsms"))
        .and(header("Authorization", "Token test-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ids": [421]})))
        .mount(&server)
        .await;
    let (rt, clock) = runtime(dir.path()).await;
    enrol(&rt, "FAM-AR", "jordemoder@example.dk", "ar").await;
    book_scan(&rt, &clock, "FAM-AR").await;
    let notifier = sms_notifier(gateway(&server).await);

    // Saturday 09:30: the reminder is emitted, but a weekend morning before 10:00 is quiet.
    let saturday = local("2027-02-13T09:30");
    clock.advance_to(saturday);
    rt.fire_due(saturday, 100).await.expect("fire");
    let done = notifier
        .deliver(rt.store(), saturday)
        .await
        .expect("deliver");
    assert_eq!((done.sent, done.held), (0, 1), "{done:?}");
    assert_eq!(requests(&server).await.len(), 0);
    let held = rows(&rt, "appointment_reminder").await;
    assert_eq!(held[0].not_before, local("2027-02-13T10:00"));

    let ten = local("2027-02-13T10:00");
    clock.advance_to(ten);
    let done = notifier.deliver(rt.store(), ten).await.expect("deliver");
    assert_eq!(done.sent, 1, "{done:?}");
    let got = requests(&server).await;
    assert_eq!(got.len(), 1);
    let body: Value = serde_json::from_slice(&got[0].body).expect("json");
    assert_eq!(body["recipients"], json!([{"msisdn": 4520123456u64}]));
    assert_eq!(body["sender"], "Kommunen");
    let message = body["message"].as_str().expect("message");
    assert!(message.starts_with("تذكير"), "in Arabic: {message}");
    // Arabic is outside GSM-7: GatewayAPI is told to send UCS-2, or the family gets garble.
    assert_eq!(body["encoding"], "UCS2", "{body}");
    assert!(message.contains("Hvidovre Hospital"), "{message}");
    let sent = rows(&rt, "appointment_reminder").await;
    assert_eq!(body["userref"].as_str(), Some(sent[0].key.as_str()));
    assert_eq!(sent[0].status, NoticeStatus::Sent);
    let log = rt.store().outbox_log(sent[0].id).await.expect("log");
    let steps: Vec<&str> = log.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(steps, ["queued", "held", "sent"]);
    assert!(log[2].detail.as_deref().is_some_and(|d| d.contains("421")));
}

#[tokio::test]
async fn failures_are_retried_then_dead_lettered_and_retried_by_hand() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("maintenance"))
        .mount(&server)
        .await;
    let (rt, clock) = runtime(dir.path()).await;
    enrol(&rt, "FAM-R", "jordemoder@example.dk", "da").await;
    book_scan(&rt, &clock, "FAM-R").await;
    let mut config = NotifierConfig {
        sms: Some(gateway(&server).await),
        delivery: RetryPolicy {
            max_attempts: 3,
            backoff_secs: 60,
            backoff_max_secs: 600,
            ..RetryPolicy::default()
        },
        ..NotifierConfig::default()
    };
    config.quiet_hours.weekends.from = jiff::civil::Time::constant(9, 0, 0, 0);
    let notifier = Notifier::new(&config).expect("notifier");
    let mut now = local("2027-02-13T09:30");
    clock.advance_to(now);
    rt.fire_due(now, 100).await.expect("fire");
    for attempt in 1..=3 {
        let done = notifier.deliver(rt.store(), now).await.expect("deliver");
        let row = rows(&rt, "appointment_reminder").await.remove(0);
        assert_eq!(row.attempts, attempt);
        if attempt < 3 {
            assert_eq!((done.retried, row.status), (1, NoticeStatus::Queued));
            let wait = row.not_before.duration_since(now);
            let full = 60 * (1 << (attempt - 1));
            assert!(
                wait.as_secs() >= full / 2 && wait.as_secs() <= full,
                "backoff with jitter: {wait:?} for attempt {attempt}"
            );
            // Nothing goes before its time.
            let early = notifier.deliver(rt.store(), now).await.expect("deliver");
            assert_eq!(early, Default::default());
            now = row.not_before;
            clock.advance_to(now);
        } else {
            assert_eq!((done.dead, row.status), (1, NoticeStatus::Dead));
            let error = row.last_error.unwrap_or_default();
            assert!(
                error.contains("gave up after 3 attempts") && error.contains("503"),
                "{error}"
            );
            assert!(!error.contains("20123456"), "the number is masked: {error}");
        }
    }
    assert_eq!(requests(&server).await.len(), 3);

    // The gateway is fixed; an operator retries the dead letter.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ids": [7]})))
        .mount(&server)
        .await;
    let id = rows(&rt, "appointment_reminder").await[0].id;
    assert_eq!(
        rt.store().requeue(id, now).await.expect("requeue"),
        Requeue::Queued
    );
    let done = notifier.deliver(rt.store(), now).await.expect("deliver");
    assert_eq!(done.sent, 1);
    let steps: Vec<String> = rt
        .store()
        .outbox_log(id)
        .await
        .expect("log")
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(
        steps,
        [
            "queued",
            "attempt failed",
            "attempt failed",
            "dead",
            "queued",
            "sent"
        ]
    );

    // A 400 is not worth retrying.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad sender"))
        .mount(&server)
        .await;
    let monday = local("2027-02-15T08:00");
    clock.advance_to(monday);
    rt.fire_due(monday, 100).await.expect("fire");
    let done = notifier.deliver(rt.store(), monday).await.expect("deliver");
    assert_eq!(done.dead, 1, "{done:?}");
}

#[tokio::test]
async fn opted_out_families_and_ended_pathways_get_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = accepting_gateway().await;
    let (rt, clock) = runtime(dir.path()).await;
    enrol(&rt, "FAM-OUT", "jordemoder@example.dk", "da").await;
    enrol(&rt, "FAM-MOVE", "jordemoder@example.dk", "da").await;
    book_scan(&rt, &clock, "FAM-OUT").await;
    book_scan(&rt, &clock, "FAM-MOVE").await;
    let notifier = sms_notifier(gateway(&server).await);
    rt.store()
        .set_opt_out("+4520123456", Channel::Sms, true, "cli", clock.now())
        .await
        .expect("opt out");

    // Saturday 09:30: both reminders are emitted and held for quiet hours.
    let saturday = local("2027-02-13T09:30");
    clock.advance_to(saturday);
    rt.fire_due(saturday, 100).await.expect("fire");
    notifier
        .deliver(rt.store(), saturday)
        .await
        .expect("deliver");
    // FAM-MOVE moves away before 10:00: its held reminder must not go.
    clock.advance_to(local("2027-02-13T09:45"));
    event(&rt, "FAM-MOVE", "moved_away", json!({})).await;
    let ten = local("2027-02-13T10:00");
    clock.advance_to(ten);
    let done = notifier.deliver(rt.store(), ten).await.expect("deliver");
    assert_eq!(done.sent, 0, "{done:?}");

    let reminders = rows(&rt, "appointment_reminder").await;
    let of = |reference: &str| {
        reminders
            .iter()
            .find(|r| r.reference == reference)
            .expect("row")
    };
    let out = of("FAM-OUT");
    assert_eq!(out.status, NoticeStatus::Skipped);
    assert_eq!(
        out.last_error.as_deref(),
        Some("the family opted out of sms")
    );
    let moved = of("FAM-MOVE");
    assert_eq!(moved.status, NoticeStatus::Skipped);
    assert!(
        moved
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("ended in \"moved\"")),
        "{:?}",
        moved.last_error
    );
    assert_eq!(requests(&server).await.len(), 0);
    // The professionals' notice that the family moved is not cancelled: with no email
    // channel configured here it is a dead letter that says so, waiting for a retry.
    let told = rows(&rt, "family_moved").await;
    assert!(!told.is_empty());
    for r in &told {
        assert!(!r.family && r.status == NoticeStatus::Dead, "{r:?}");
        assert!(
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no email channel is configured"))
        );
    }
}

#[test]
fn the_example_configuration_parses_and_names_its_secrets() {
    let both = carepath_worker::config::read(Some(&root().join("examples/carepath.toml")), None)
        .expect("examples/carepath.toml parses");
    let tokens = carepath_worker::api::Tokens::new(&both.api, &["standard-track".into()])
        .expect("its [api] tokens are valid");
    assert_eq!(tokens.len(), 1);
    let config = both.notifier.expect("notifier sections");
    assert_eq!(
        config.sms.as_ref().map(|s| s.gateway),
        Some(Gateway::Gatewayapi)
    );
    assert_eq!(
        config.quiet_hours,
        carepath_notifier::quiet::QuietHours::default()
    );
    assert_eq!(config.delivery, RetryPolicy::default());
    // The password is read from the environment when the channels are built.
    let missing = carepath_notifier::Channels::new(&NotifierConfig {
        sms: None,
        ..config
    })
    .expect_err("CAREPATH_SMTP_PASSWORD is not set in tests");
    assert!(
        missing.to_string().contains("CAREPATH_SMTP_PASSWORD"),
        "{missing}"
    );
}

/// Signs `claims` as GatewayAPI signs its webhooks: an HS256 JWT.
pub(super) fn gwapi_signature(claims: &Value, secret: &[u8]) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("key");
    mac.update(format!("{header}.{claims}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{signature}")
}

/// The HTTP API on a free loopback port, without tokens, taking the gateways' calls signed
/// with `secret`: its base URL, the handle that stops it, and the server.
pub(super) async fn gateway_api(
    rt: &Arc<Runtime<Backend>>,
    secret: &str,
) -> (
    String,
    carepath_worker::worker::Wake,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    use carepath_worker::api;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let wake = carepath_worker::worker::Wake::new();
    let serving = tokio::spawn(api::serve(
        listener,
        api::router(api::Api::new(
            rt.clone(),
            api::Tokens::default(),
            Some(secret.into()),
            api::waker(wake.clone(), None),
        )),
        wake.clone(),
    ));
    (base, wake, serving)
}

#[tokio::test]
async fn a_stop_sms_from_the_family_opts_them_out_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = accepting_gateway().await;
    let (rt, clock) = runtime(dir.path()).await;
    enrol(&rt, "FAM-OUT", "jordemoder@example.dk", "da").await;
    book_scan(&rt, &clock, "FAM-OUT").await;
    let rt = Arc::new(rt);

    let secret = "webhook-secret";
    let (base, wake, serving) = gateway_api(&rt, secret).await;
    let url = format!("{base}/v1/inbound/sms/gatewayapi");
    let http = reqwest::Client::new();
    let post = |body: String, signature: Option<String>| {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = signature {
            req = req.header("X-Gwapi-Signature", s);
        }
        req.send()
    };
    // GatewayAPI signs the message itself: the claims are the body.
    let sent = clock.now().as_second();
    let sign = |body: &Value| gwapi_signature(body, secret.as_bytes());
    let stop = json!({"id": 1000001, "msisdn": 4520123456u64, "receiver": 1204, "message": "Stop", "senttime": sent});
    let opted_out = || async {
        rt.store()
            .opted_out(&[("+4520123456".to_string(), Channel::Sms)])
            .await
            .expect("read")
    };

    // Refused: no signature, a forged one, malformed JSON, no number. Nothing changes.
    let r = post(stop.to_string(), None).await.expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "an RFC 9457 problem"
    );
    let problem: Value = r.json().await.expect("json");
    assert_eq!(problem["code"], "unauthorized");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("X-Gwapi-Signature")),
        "{problem}"
    );
    let forged = gwapi_signature(&json!({}), b"not-the-secret");
    let r = post(stop.to_string(), Some(forged)).await.expect("send");
    assert_eq!(r.status(), 401);
    let signed = sign(&stop);
    let r = post("{\"msisdn\": ".into(), Some(signed.clone()))
        .await
        .expect("send");
    assert_eq!(r.status(), 400, "not JSON at all");
    let nameless = json!({"message": "STOP", "senttime": sent});
    let r = post(nameless.to_string(), Some(sign(&nameless)))
        .await
        .expect("send");
    assert_eq!(r.status(), 401, "the signature covers no number");
    // A token signed for one message, posted with another number's STOP.
    let other =
        json!({"id": 1000001, "msisdn": 4599999999u64, "message": "STOP", "senttime": sent});
    let r = post(other.to_string(), Some(signed.clone()))
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let problem: Value = r.json().await.expect("json");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("is not the one signed")),
        "{problem}"
    );
    // A signed message from long ago.
    let stale =
        json!({"id": 999, "msisdn": 4520123456u64, "message": "STOP", "senttime": sent - 86_400});
    let r = post(stale.to_string(), Some(sign(&stale)))
        .await
        .expect("send");
    assert_eq!(r.status(), 401, "stale");
    assert!(
        opted_out().await.is_empty(),
        "a refused request changed state"
    );

    // A reply that is not a keyword changes nothing; STOP opts the number out.
    let chat = json!({"id": 1000002, "msisdn": 4520123456u64, "message": "Hvad tid er det?", "senttime": sent});
    let r = post(chat.to_string(), Some(sign(&chat)))
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["action"], "ignored");
    assert!(opted_out().await.is_empty());
    let r = post(stop.to_string(), Some(signed.clone()))
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"action": "opted-out", "changed": true})
    );
    assert_eq!(
        opted_out().await,
        vec![("+4520123456".to_string(), Channel::Sms)]
    );
    // The same signed call again is a replay: refused, and nothing changes.
    let r = post(stop.to_string(), Some(signed.clone()))
        .await
        .expect("send");
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.expect("json")["code"], "replayed");

    // The family's reminder is then skipped, with the reason, not sent.
    let notifier = sms_notifier(gateway(&server).await);
    let monday = local("2027-02-15T08:00");
    clock.advance_to(monday);
    rt.fire_due(monday, 100).await.expect("fire");
    let done = notifier.deliver(rt.store(), monday).await.expect("deliver");
    let reminders = rows(&rt, "appointment_reminder").await;
    assert!(!reminders.is_empty(), "{done:?}");
    for r in &reminders {
        assert_eq!(r.status, NoticeStatus::Skipped);
        assert_eq!(r.last_error.as_deref(), Some("the family opted out of sms"));
    }
    assert!(
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );

    // START opts back in.
    let start = json!({"id": 1000003, "msisdn": "4520123456", "message": "start", "senttime": clock.now().as_second()});
    let r = post(start.to_string(), Some(sign(&start)))
        .await
        .expect("send");
    assert_eq!(r.json::<Value>().await.expect("json")["action"], "opted-in");
    assert!(opted_out().await.is_empty());

    wake.stop();
    serving.await.expect("join").expect("served");
}

/// Two fresh databases give their first notices different Message-IDs (each database has its
/// own random installation id), at the From address's domain; the same notice sent again
/// keeps its id, so the far end can tell a repeat.
#[tokio::test]
async fn message_ids_are_unique_per_installation_and_stable_across_retries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (smtp, out) = SmtpServer::in_dir(dir.path());
    let notifier = email_notifier(smtp.port);
    let mut installations = Vec::new();
    for deployment in ["kommune-a", "kommune-b"] {
        let folder = dir.path().join(deployment);
        std::fs::create_dir_all(&folder).expect("mkdir");
        let (rt, clock) = runtime(&folder).await;
        enrol(&rt, "FAM-1", "jordemoder@hvidovre.example.dk", "da").await;
        clock.advance_to(local("2027-01-12T09:00"));
        event(&rt, "FAM-1", "first_exam_done", json!({"care_level": 1})).await;
        notifier
            .deliver(rt.store(), clock.now())
            .await
            .expect("deliver");
        installations.push(rt.store().installation().await.expect("installation"));
    }
    assert_ne!(installations[0], installations[1]);
    let ids: Vec<String> = received(&out)
        .iter()
        .filter_map(|m| m["message_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1], "the same notice key in two databases");
    for (id, installation) in ids.iter().zip(&installations) {
        assert!(
            id.starts_with(&format!("<{installation}.")) && id.ends_with("@carepath.example.dk>"),
            "{id}"
        );
    }

    // The same notice again, as a retry after a lost answer would send it: the same id.
    let channels = carepath_notifier::Channels::new(&NotifierConfig {
        email: Some(email_config(smtp.port)),
        ..NotifierConfig::default()
    })
    .expect("channels");
    let message = carepath_notifier::Message {
        key: "7:3:0".into(),
        origin: installations[0].clone(),
        channel: Channel::Email,
        to: "jordemoder@hvidovre.example.dk".into(),
        name: Some("Jordemodercentret".into()),
        subject: Some("Ny henvisning".into()),
        body: "Kære Jordemodercentret".into(),
        html: None,
        language: Some("da".into()),
        reference: "FAM-7".into(),
        role: "midwife".into(),
        template: "pregnancy_referral".into(),
        calendar: None,
    };
    for _ in 0..2 {
        channels
            .send(&message, Timestamp::now())
            .await
            .expect("sent");
    }
    let again: Vec<String> = received(&out)
        .iter()
        .filter_map(|m| m["message_id"].as_str().map(str::to_string))
        .filter(|id| id.contains(".7.3.0@"))
        .collect();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0], again[1]);
}
