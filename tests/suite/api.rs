//! The HTTP API over real HTTP on loopback, on the real standard track and a real SQLite file:
//! every endpoint with good input and with bad, and after each refusal, proof that nothing
//! changed.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use carepath_worker::api::auth::{TokenConfig, hash_hex};
use carepath_worker::api::{self, ApiConfig, Scope, Tokens};
use carepath_worker::catalog::Catalog;
use carepath_worker::clock::{Clock, VirtualClock};
use carepath_worker::delivery::Notifier;
use carepath_worker::runtime::Runtime;
use carepath_worker::store::{Backend, NoticeStatus, OutboxFilter, Storage};
use carepath_worker::worker::Wake;

use super::fixtures::{chain, write_pathway};
use super::support::{fresh_store, golden, root};

/// The tokens each test's server knows, by what they are for.
const HOSPITAL: &str = "cp_hospital-token"; // events:write + read, standard track only
const MUNICIPALITY: &str = "cp_municipality-token"; // instances:write + read, every pathway
const RED_CROSS: &str = "cp_red-cross-token"; // admin, its own pathway only
const READER: &str = "cp_reader-token"; // read
const ADMIN: &str = "cp_admin-token"; // admin, every pathway

struct Server {
    url: String,
    http: reqwest::Client,
    rt: Arc<Runtime<Backend>>,
    clock: Arc<VirtualClock>,
    wake: Wake,
    _dir: tempfile::TempDir,
}

/// A response: status, the two headers the tests read, and the body as JSON.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    replayed: bool,
    body: Value,
}

impl Answer {
    /// Asserts a problem document with `status` and `code`; returns it.
    fn problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            (self.status, self.content_type.as_str()),
            (status, "application/problem+json"),
            "{:#}",
            self.body
        );
        assert_eq!(self.body["code"], code, "{:#}", self.body);
        assert_eq!(self.body["status"], status);
        assert!(
            self.body["detail"].as_str().is_some_and(|d| d.len() > 10),
            "a problem says what is wrong: {:#}",
            self.body
        );
        &self.body
    }
}

fn token(name: &str, token: &str, scopes: &[Scope], pathways: Option<&[&str]>) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        sha256: hash_hex(token),
        scopes: scopes.iter().copied().collect(),
        pathways: pathways.map(|p| p.iter().map(|s| s.to_string()).collect()),
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut good_start = chain(2);
    good_start["id"] = json!("good-start");
    let good_start = write_pathway(dir.path(), &good_start, &["entered", "counted"]);
    let t0: Timestamp = "2027-01-11T07:00:00Z".parse().expect("time");
    let store = fresh_store(dir.path()).await;
    let (catalog, _) = Catalog::sync(&store, &[root().join("pathways"), good_start], t0)
        .await
        .expect("load");
    let clock = Arc::new(VirtualClock::new(t0));
    let rt = Arc::new(Runtime::new(
        store,
        catalog,
        clock.clone() as Arc<dyn Clock>,
    ));
    let config = ApiConfig {
        users: Vec::new(),
        tokens: vec![
            token(
                "hospital",
                HOSPITAL,
                &[Scope::EventsWrite, Scope::Read],
                Some(&["standard-track"]),
            ),
            token(
                "municipality",
                MUNICIPALITY,
                &[Scope::InstancesWrite, Scope::Read],
                None,
            ),
            token(
                "red-cross",
                RED_CROSS,
                &[Scope::Admin],
                Some(&["good-start"]),
            ),
            token("reader", READER, &[Scope::Read], None),
            token("operations", ADMIN, &[Scope::Admin], None),
        ],
    };
    let tokens = Tokens::new(&config, &rt.catalog().pathway_ids()).expect("tokens");
    let wake = Wake::new();
    let api = api::Api::new(rt.clone(), tokens, None, api::waker(wake.clone(), None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(api::serve(listener, api::router(api), wake.clone()));
    Server {
        url,
        http: reqwest::Client::new(),
        rt,
        clock,
        wake,
        _dir: dir,
    }
}

impl Server {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        key: Option<&str>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let content_type = header("content-type");
        let replayed = header("idempotent-replayed") == "true";
        let text = r.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            content_type,
            replayed,
            body,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None, None).await
    }

    async fn post(&self, path: &str, token: &str, body: &Value, key: Option<&str>) -> Answer {
        self.call("POST", path, Some(token), Some(body.to_string()), key)
            .await
    }

    /// Enrols a family on the standard track; returns its instance id.
    async fn enrol(&self, reference: &str) -> i64 {
        let a = self
            .post("/v1/instances", MUNICIPALITY, &family(reference), None)
            .await;
        assert_eq!(a.status, 201, "{:#}", a.body);
        a.body["instance_id"].as_i64().expect("id")
    }

    /// What a refused request must not have changed: every instance, its steps, its timers
    /// and the outbox.
    async fn snapshot(&self) -> Value {
        let store = self.rt.store();
        let mut out = Vec::new();
        for i in store.all_instances().await.expect("instances") {
            out.push(json!({
                "id": i.id, "state": i.instance.state, "seq": i.instance.seq,
                "held": i.held_since.is_some(),
                "history": store.history(i.id).await.expect("history").len(),
                "timers": store.timers(i.id).await.expect("timers").len(),
            }));
        }
        let outbox = store
            .outbox(&OutboxFilter::default())
            .await
            .expect("outbox")
            .len();
        json!({"instances": out, "outbox": outbox})
    }
}

fn family(reference: &str) -> Value {
    json!({
        "ref": reference,
        "pathway": "standard-track",
        "fields": {"due_date": "2027-08-20", "cpr": "0101901234", "interpreter_needed": true},
        "contacts": {
            "gp": {"name": "Lægehuset Valby", "email": "valby@laeger.example.dk"},
            "midwife": {"name": "Jordemodercentret Hvidovre", "email": "jordemoder@hvidovre.example.dk"},
            "coordinator": {"name": "Forløbskoordinator", "email": "koordinator@regionh.example.dk"},
            "health_visitor": {"name": "Sundhedsplejen Valby", "email": "sundhedspleje@kk.example.dk"},
            "team_lead": {"name": "Leder", "email": "leder@kk.example.dk"},
            "family": {"name": "Amal", "phone": "+4520123456", "language": "ar"}
        }
    })
}

#[tokio::test]
async fn a_family_is_enrolled_moved_by_an_event_and_its_handoff_notice_is_in_the_outbox() {
    let s = start().await;
    let enrolled = s
        .post("/v1/instances", MUNICIPALITY, &family("FAM-0042"), None)
        .await;
    assert_eq!(enrolled.status, 201, "{:#}", enrolled.body);
    assert_eq!(enrolled.body["state"], "awaiting_first_exam");
    assert_eq!(enrolled.body["owner"], "gp");
    let id = enrolled.body["instance_id"].as_i64().expect("id");

    let path = format!("/v1/instances/{id}/events");
    let exam = json!({"event": "first_exam_done", "payload": {"care_level": 1}});
    let applied = s.post(&path, HOSPITAL, &exam, Some("epj-771")).await;
    assert_eq!(applied.status, 200, "{:#}", applied.body);
    assert!(!applied.replayed);
    assert_eq!(applied.body["outcome"], "applied");
    assert_eq!(applied.body["from"], "awaiting_first_exam");
    assert_eq!(applied.body["to"], "pregnancy");
    assert_eq!(applied.body["key"], "epj-771");

    // The hospital's system retries after a timeout: the first answer again, no second step.
    let again = s.post(&path, HOSPITAL, &exam, Some("epj-771")).await;
    assert_eq!((again.status, again.replayed), (200, true));
    assert_eq!(again.body["seq"], applied.body["seq"]);
    assert_eq!(again.body["received_at"], applied.body["received_at"]);

    let shown = s.get(&format!("/v1/instances/{id}"), HOSPITAL).await;
    assert_eq!(shown.status, 200, "{:#}", shown.body);
    let b = &shown.body;
    assert_eq!(
        (b["state"].as_str(), b["owner"].as_str()),
        (Some("pregnancy"), Some("midwife"))
    );
    assert_eq!(b["ref"], "FAM-0042");
    assert_eq!(b["fields"]["cpr"], "(sensitive)", "{b:#}");
    assert_eq!(b["fields"]["due_date"], "(sensitive)");
    assert_eq!(b["fields"]["interpreter_needed"], true);
    assert_eq!(
        b["history"].as_array().map(Vec::len),
        Some(2),
        "one step per event"
    );
    assert_eq!(b["contacts"]["family"]["channels"], json!(["sms"]));
    assert!(
        !b.to_string().contains("+4520123456"),
        "no phone numbers: {b:#}"
    );
    let referral = b["notices"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["template"] == "pregnancy_referral"))
        .expect("the handoff notice to the midwife");
    assert_eq!(
        (referral["role"].as_str(), referral["status"].as_str()),
        (Some("midwife"), Some("queued"))
    );
    assert_eq!(
        b["timers"][0],
        json!({"key": "s1:h1:0", "due": "2027-01-16T07:00:00Z"}),
        "the midwife's five days to acknowledge the handoff are counting"
    );
    assert_eq!(b["events"][0]["name"], "first_exam_done");
    assert_eq!(b["events"][0]["outcome"], "applied");

    let outbox = s.get("/v1/outbox?status=queued", READER).await;
    assert_eq!(outbox.status, 200, "{:#}", outbox.body);
    let row = outbox
        .body
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["template"] == "pregnancy_referral"))
        .expect("in the outbox");
    assert_eq!(row["ref"], "FAM-0042");
    assert_eq!(row["channel"], "email");
    let address = row["address"].as_str().expect("address");
    assert!(
        address != "jordemoder@hvidovre.example.dk" && address.contains('•'),
        "{address}"
    );
    let bad = s.get("/v1/outbox?status=lost", READER).await;
    bad.problem(400, "bad-query");

    // Who joins later comes with the event that says so; a role the pathway lacks is refused.
    let stranger = json!({"event": "referral_accepted",
        "contacts": {"volunteer": {"name": "Vera", "email": "vera@example.dk"}}});
    s.post(&path, HOSPITAL, &stranger, None)
        .await
        .problem(422, "bad-contact");
    let accepted = json!({"event": "referral_accepted",
        "contacts": {"midwife": {"name": "Jordemoder Ida", "email": "ida@hvidovre.example.dk"}}});
    let ack = s.post(&path, HOSPITAL, &accepted, None).await;
    assert_eq!(ack.status, 200, "{:#}", ack.body);
    let shown = s.get(&format!("/v1/instances/{id}"), HOSPITAL).await;
    assert_eq!(shown.body["contacts"]["midwife"]["name"], "Jordemoder Ida");
    assert!(!shown.body.to_string().contains("ida@"), "no addresses");

    // Lists, by pathway and state, a page at a time.
    for n in 1..=3 {
        s.enrol(&format!("FAM-10{n}")).await;
    }
    let pregnant = s
        .get(
            "/v1/instances?pathway=standard-track&state=pregnancy",
            READER,
        )
        .await;
    assert_eq!(pregnant.body["instances"].as_array().map(Vec::len), Some(1));
    assert_eq!(pregnant.body["instances"][0]["id"], id);
    let page = s.get("/v1/instances?owner=gp&limit=2", READER).await;
    assert_eq!(
        page.body["instances"].as_array().map(Vec::len),
        Some(2),
        "{:#}",
        page.body
    );
    let next = page.body["next"].as_i64().expect("a next page");
    let rest = s
        .get(
            &format!("/v1/instances?owner=gp&limit=2&after={next}"),
            READER,
        )
        .await;
    assert_eq!(rest.body["instances"].as_array().map(Vec::len), Some(1));
    assert!(rest.body["next"].is_null());
    s.get("/v1/instances?limit=many", READER)
        .await
        .problem(400, "bad-query");

    // Pathways, each token seeing its own.
    let all = s.get("/v1/pathways", READER).await;
    let ids: Vec<&str> = all
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "good-start",
            "moedrehjaelpen-counselling",
            "red-cross-family-network",
            "red-cross-good-start",
            "rodovre-birth-cooperation",
            "standard-track"
        ]
    );
    let own = s.get("/v1/pathways", RED_CROSS).await;
    assert_eq!(own.body.as_array().map(Vec::len), Some(1));
    assert_eq!(own.body[0]["id"], "good-start");
    let track = s.get("/v1/pathways/standard-track", HOSPITAL).await;
    assert!(
        track.body["mermaid"]
            .as_str()
            .is_some_and(|m| m.starts_with("flowchart"))
    );
    assert!(
        track.body["events"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("birth_registered")))
    );
    assert_eq!(track.body["definition"]["id"], "standard-track");
    s.get("/v1/pathways/nowhere", READER)
        .await
        .problem(404, "not-found");

    // Metrics: this process's counters and the database's gauges, no family data.
    let metrics = s.call("GET", "/metrics", Some(READER), None, None).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().expect("text");
    assert!(
        text.contains("carepath_events_total{outcome=\"applied\"} 2\n")
            && text.contains("carepath_events_total{outcome=\"rejected\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("carepath_instances{pathway=\"standard-track\",status=\"active\"} 4\n"),
        "{text}"
    );
    assert!(
        text.contains("carepath_outbox_notices{status=\"queued\"}"),
        "{text}"
    );
    assert!(
        text.contains(
            "carepath_http_requests_total{route=\"/v1/instances/{id}/events\",status=\"200\"} 3\n"
        ),
        "{text}"
    );
    assert!(!text.contains("FAM-0042"));
    s.call("GET", "/metrics", None, None, None)
        .await
        .problem(401, "unauthorized");

    let doc = s.call("GET", "/openapi.json", None, None, None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["paths"]["/v1/instances/{id}/events"]["post"].is_object());
}

#[tokio::test]
async fn refused_requests_say_why_and_change_nothing() {
    let s = start().await;
    let id = s.enrol("FAM-0007").await;
    let events = format!("/v1/instances/{id}/events");
    let exam = json!({"event": "first_exam_done", "payload": {"care_level": 1}});
    let before = s.snapshot().await;

    // Who is calling.
    let a = s
        .call("POST", &events, None, Some(exam.to_string()), None)
        .await;
    a.problem(401, "unauthorized");
    s.post(&events, "cp_not-a-token", &exam, None)
        .await
        .problem(401, "unauthorized");
    // What they may do.
    s.post(&events, READER, &exam, None)
        .await
        .problem(403, "insufficient-scope");
    s.post(&events, MUNICIPALITY, &exam, None)
        .await
        .problem(403, "insufficient-scope");
    s.post("/v1/instances", HOSPITAL, &family("FAM-0008"), None)
        .await
        .problem(403, "insufficient-scope");
    // Another organisation's pathway: the Red Cross token neither sees nor changes it, and is
    // answered as if the family were not there at all: exactly the unknown instance's answer.
    let hidden = s.get(&format!("/v1/instances/{id}"), RED_CROSS).await;
    hidden.problem(404, "not-found");
    let unknown = s.get("/v1/instances/999999", RED_CROSS).await;
    assert_eq!(
        hidden.body["detail"]
            .as_str()
            .map(|d| d.replace(&id.to_string(), "N")),
        unknown.body["detail"]
            .as_str()
            .map(|d| d.replace("999999", "N"))
    );
    assert!(
        !hidden.body.to_string().contains("standard-track"),
        "{}",
        hidden.body
    );
    s.post(&events, RED_CROSS, &exam, None)
        .await
        .problem(404, "not-found");
    s.post("/v1/instances", RED_CROSS, &family("FAM-0009"), None)
        .await
        .problem(403, "pathway-forbidden");
    s.post(
        &format!("/v1/instances/{id}/hold"),
        RED_CROSS,
        &json!({}),
        None,
    )
    .await
    .problem(404, "not-found");
    s.post("/v1/instances/999999/hold", MUNICIPALITY, &json!({}), None)
        .await
        .problem(404, "not-found");
    let listed = s.get("/v1/instances", RED_CROSS).await;
    assert_eq!(listed.body["instances"], json!([]), "{:#}", listed.body);
    s.get("/v1/instances?pathway=standard-track", RED_CROSS)
        .await
        .problem(403, "pathway-forbidden");
    let outbox = s.get("/v1/outbox", RED_CROSS).await;
    assert_eq!(outbox.body, json!([]));

    // What they send.
    let a = s
        .call(
            "POST",
            &events,
            Some(HOSPITAL),
            Some("{\"event\": ".into()),
            None,
        )
        .await;
    a.problem(400, "malformed-json");
    let a = s
        .post(
            &events,
            HOSPITAL,
            &json!({"event": "first_exam_done", "payload": {}, "extra": 1}),
            None,
        )
        .await;
    assert!(
        a.problem(422, "invalid-body")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("extra"))
    );
    s.post("/v1/instances/999999/events", HOSPITAL, &exam, None)
        .await
        .problem(404, "not-found");
    s.post("/v1/instances/abc/events", HOSPITAL, &exam, None)
        .await
        .problem(400, "bad-path");
    s.get("/v1/instances/999999", READER)
        .await
        .problem(404, "not-found");
    s.get("/v1/nowhere", READER).await.problem(404, "not-found");
    let huge = json!({"event": "first_exam_done", "payload": {"note": "x".repeat(70 * 1024)}});
    s.post(&events, HOSPITAL, &huge, None)
        .await
        .problem(413, "body-too-large");
    s.post("/v1/instances", MUNICIPALITY, &json!({"ref": "FAM-BIG", "pathway": "standard-track", "fields": {"cpr": "1".repeat(70 * 1024)}}), Some("big"))
        .await
        .problem(413, "body-too-large");

    // Enrolments of the wrong shape, each member named by its pointer.
    let mut bad = family("FAM-0010");
    bad["contacts"]["gp"]["email"] = json!(42);
    let p = s.post("/v1/instances", MUNICIPALITY, &bad, None).await;
    assert_eq!(
        p.problem(422, "invalid-body")["pointer"],
        "/contacts/gp/email"
    );
    let mut bad = family("FAM-0010");
    bad["fields"]["due_date"] = json!("soon");
    let p = s.post("/v1/instances", MUNICIPALITY, &bad, None).await;
    assert_eq!(
        p.problem(422, "invalid-body")["pointer"],
        "/fields/due_date"
    );
    let mut bad = family("FAM-0010");
    bad["pathway"] = json!("nowhere");
    let p = s.post("/v1/instances", MUNICIPALITY, &bad, None).await;
    assert_eq!(p.problem(422, "invalid-body")["pointer"], "/pathway");
    let p = s
        .post("/v1/instances", MUNICIPALITY, &family("0101901234"), None)
        .await;
    assert_eq!(p.problem(422, "invalid-body")["pointer"], "/ref");
    assert!(
        !p.body.to_string().contains("0101901234"),
        "a CPR number is never echoed"
    );
    s.post("/v1/instances", MUNICIPALITY, &family("FAM-0007"), None)
        .await
        .problem(409, "already-enrolled");

    assert_eq!(
        s.snapshot().await,
        before,
        "refused requests changed nothing"
    );

    // Events the runtime refuses: answered, recorded as rejected, and nothing else changed.
    let a = s
        .post(
            &events,
            HOSPITAL,
            &json!({"event": "baby_named"}),
            Some("k-1"),
        )
        .await;
    assert_eq!(a.problem(422, "unknown-event")["pointer"], "/event");
    let a = s
        .post(
            &events,
            HOSPITAL,
            &json!({"event": "birth_registered", "payload": {"birth_date": "2027-08-01"}}),
            Some("k-2"),
        )
        .await;
    a.problem(409, "event-not-allowed");
    let a = s
        .post(
            &events,
            HOSPITAL,
            &json!({"event": "first_exam_done", "payload": {"care_level": "two"}}),
            Some("k-3"),
        )
        .await;
    assert_eq!(a.problem(422, "bad-payload")["pointer"], "/payload");
    // The refusal is the first answer too: a repeat gets it again, marked as a repeat.
    let again = s
        .post(
            &events,
            HOSPITAL,
            &json!({"event": "birth_registered", "payload": {"birth_date": "2027-08-01"}}),
            Some("k-2"),
        )
        .await;
    assert!(again.replayed);
    again.problem(409, "event-not-allowed");
    // The same key for another event is a client bug, not a repeat.
    s.post(&events, HOSPITAL, &exam, Some("k-2"))
        .await
        .problem(422, "idempotency-key-reused");
    // So is the same event with other contacts: the whole request is the key's.
    let with_contact = json!({
        "event": "birth_registered",
        "payload": {"birth_date": "2027-08-01"},
        "contacts": {"health_visitor": {"name": "Hanne", "email": "hanne@example.dk"}}
    });
    s.post(&events, HOSPITAL, &with_contact, Some("k-2"))
        .await
        .problem(422, "idempotency-key-reused");
    let bad_key = s.post(&events, HOSPITAL, &exam, Some("")).await;
    bad_key.problem(400, "bad-idempotency-key");

    assert_eq!(
        s.snapshot().await,
        before,
        "rejected events changed nothing"
    );
    let shown = s.get(&format!("/v1/instances/{id}"), READER).await;
    let recorded: Vec<(&str, &str)> = shown.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["code"].as_str()?)))
        .collect();
    assert_eq!(
        recorded,
        [
            ("baby_named", "unknown-event"),
            ("birth_registered", "event-not-allowed"),
            ("first_exam_done", "bad-payload")
        ],
        "each refused event is recorded once, with its reason"
    );

    // Enrolment repeats: the first answer, then a reused key is refused.
    let first = s
        .post(
            "/v1/instances",
            MUNICIPALITY,
            &family("FAM-0011"),
            Some("enrol-11"),
        )
        .await;
    assert_eq!(first.status, 201);
    let repeat = s
        .post(
            "/v1/instances",
            MUNICIPALITY,
            &family("FAM-0011"),
            Some("enrol-11"),
        )
        .await;
    assert_eq!((repeat.status, repeat.replayed), (201, true));
    assert_eq!(repeat.body, first.body);
    s.post(
        "/v1/instances",
        MUNICIPALITY,
        &family("FAM-0012"),
        Some("enrol-11"),
    )
    .await
    .problem(422, "idempotency-key-reused");
    let families = s.rt.store().all_instances().await.expect("all").len();
    assert_eq!(families, 2, "FAM-0011 once, FAM-0012 never");
}

#[tokio::test]
async fn a_family_on_hold_waits_and_nothing_is_sent_until_it_is_resumed() {
    let s = start().await;
    let id = s.enrol("FAM-0100").await;
    let exam = json!({"event": "first_exam_done", "payload": {"care_level": 1}});
    let a = s
        .post(&format!("/v1/instances/{id}/events"), HOSPITAL, &exam, None)
        .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    let sink = s._dir.path().join("sent.jsonl");
    let notifier = Notifier::new(&carepath_notifier::NotifierConfig {
        file: Some(carepath_notifier::file::FileConfig {
            path: Some(sink.clone()),
            console: carepath_notifier::file::Console::Off,
        }),
        ..Default::default()
    })
    .expect("notifier");

    let hold = s
        .post(
            &format!("/v1/instances/{id}/hold"),
            MUNICIPALITY,
            &json!({}),
            Some("hold-1"),
        )
        .await;
    assert_eq!(hold.status, 200, "{:#}", hold.body);
    assert_eq!(
        hold.body,
        json!({"instance_id": id, "held": true, "changed": true})
    );
    let twice = s
        .post(
            &format!("/v1/instances/{id}/hold"),
            MUNICIPALITY,
            &json!({}),
            None,
        )
        .await;
    assert_eq!(twice.body["changed"], false);
    let refused = s
        .post(
            &format!("/v1/instances/{id}/events"),
            HOSPITAL,
            &json!({"event": "referral_accepted"}),
            None,
        )
        .await;
    refused.problem(409, "instance-held");
    assert!(s.get(&format!("/v1/instances/{id}"), READER).await.body["held_since"].is_string());

    // Six days on, the midwife's acknowledgement deadline (five days) has passed: on hold,
    // it does not fire, and the referral is not sent.
    let later = s.clock.now() + SignedDuration::from_hours(6 * 24);
    s.clock.advance_to(later);
    s.rt.fire_due(later, 100).await.expect("fire");
    notifier
        .deliver(s.rt.store(), later)
        .await
        .expect("deliver");
    let shown = s.get(&format!("/v1/instances/{id}"), READER).await;
    assert_eq!(
        shown.body["history"].as_array().map(Vec::len),
        Some(2),
        "no timer fired"
    );
    assert!(
        shown.body["notices"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["status"] == "queued")),
        "{:#}",
        shown.body["notices"]
    );
    assert!(
        !sink.exists()
            || std::fs::read_to_string(&sink)
                .unwrap_or_default()
                .is_empty()
    );

    let resume = s
        .post(
            &format!("/v1/instances/{id}/resume"),
            MUNICIPALITY,
            &json!({}),
            None,
        )
        .await;
    assert_eq!(
        resume.body,
        json!({"instance_id": id, "held": false, "changed": true})
    );
    s.rt.fire_due(later, 100).await.expect("fire");
    notifier
        .deliver(s.rt.store(), later)
        .await
        .expect("deliver");
    let shown = s.get(&format!("/v1/instances/{id}"), READER).await;
    assert!(
        shown.body["history"]
            .as_array()
            .is_some_and(|h| h.len() > 2),
        "the deadline fired after the resume: {:#}",
        shown.body["history"]
    );
    let sent =
        s.rt.store()
            .outbox(&OutboxFilter {
                status: Some(NoticeStatus::Sent),
                ..OutboxFilter::default()
            })
            .await
            .expect("outbox");
    assert!(
        sent.iter().any(|r| r.template == "pregnancy_referral"),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|r| r.template == "handoff_overdue"),
        "{sent:?}"
    );
    s.wake.stop();
}

#[tokio::test]
async fn opt_outs_are_recorded_and_checked() {
    let s = start().await;
    let a = s
        .post(
            "/v1/opt-outs",
            MUNICIPALITY,
            &json!({"address": "+45 20 12 34 56"}),
            Some("o-1"),
        )
        .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    assert_eq!(
        (a.body["channel"].as_str(), a.body["changed"].as_bool()),
        (Some("sms"), Some(true))
    );
    assert!(
        !a.body.to_string().contains("20123456"),
        "masked: {}",
        a.body
    );
    let stored =
        s.rt.store()
            .opted_out(&[("+4520123456".into(), carepath_engine::pathway::Channel::Sms)])
            .await
            .expect("read");
    assert_eq!(stored.len(), 1);
    let repeat = s
        .post(
            "/v1/opt-outs",
            MUNICIPALITY,
            &json!({"address": "+45 20 12 34 56"}),
            Some("o-1"),
        )
        .await;
    assert!(repeat.replayed && repeat.body == a.body);
    let p = s
        .post(
            "/v1/opt-outs",
            MUNICIPALITY,
            &json!({"address": "12"}),
            None,
        )
        .await;
    assert_eq!(p.problem(422, "invalid-body")["pointer"], "/address");
    let p = s
        .post(
            "/v1/opt-outs",
            MUNICIPALITY,
            &json!({"address": "a@b.dk", "channel": "fax"}),
            None,
        )
        .await;
    assert_eq!(p.problem(422, "invalid-body")["pointer"], "/channel");
    s.post("/v1/opt-outs", READER, &json!({"address": "a@b.dk"}), None)
        .await
        .problem(403, "insufficient-scope");
    let back = s
        .post(
            "/v1/opt-outs",
            MUNICIPALITY,
            &json!({"address": "+4520123456", "opted_out": false}),
            None,
        )
        .await;
    assert_eq!(back.body["changed"], true);

    // A token limited to other pathways neither opts a standard-track family out nor back in,
    // and learns nothing of the number.
    s.enrol("FAM-0301").await;
    for opted_out in [true, false] {
        s.post(
            "/v1/opt-outs",
            RED_CROSS,
            &json!({"address": "+4520123456", "opted_out": opted_out}),
            None,
        )
        .await
        .problem(404, "not-found");
    }
    // What the family said by SMS, another system does not undo.
    s.rt.store()
        .set_opt_out(
            "+4520123456",
            carepath_engine::pathway::Channel::Sms,
            true,
            "sms STOP",
            s.clock.now(),
        )
        .await
        .expect("STOP");
    s.post(
        "/v1/opt-outs",
        MUNICIPALITY,
        &json!({"address": "+4520123456", "opted_out": false}),
        None,
    )
    .await
    .problem(409, "opted-out-by-family");
    let still =
        s.rt.store()
            .opt_out_source("+4520123456", carepath_engine::pathway::Channel::Sms)
            .await
            .expect("read");
    assert_eq!(still.as_deref(), Some("sms STOP"));
}

#[test]
fn the_committed_openapi_document_is_current() {
    golden(&root().join("docs/openapi.json"), &api::openapi::document());
    let doc: Value = serde_json::from_str(&api::openapi::document()).expect("json");
    for path in [
        "/v1/instances",
        "/v1/instances/{id}",
        "/v1/instances/{id}/events",
        "/v1/instances/{id}/hold",
        "/v1/instances/{id}/resume",
        "/v1/pathways",
        "/v1/pathways/{id}",
        "/v1/outbox",
        "/v1/opt-outs",
        "/healthz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|p| p.as_object().into_iter().flat_map(|ops| ops.values()))
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "operationIds are unique: {ids:?}");
}

/// Refusals made below the handlers (a method a route does not take) are problem documents
/// too, and no refusal echoes a sensitive value.
#[tokio::test]
async fn every_refusal_is_a_problem_document_and_echoes_nothing_sensitive() {
    let s = start().await;
    let id = s.enrol("FAM-0101").await;
    for (method, path) in [
        ("DELETE", format!("/v1/instances/{id}")),
        ("PUT", format!("/v1/instances/{id}")),
        ("GET", format!("/v1/instances/{id}/events")),
        ("PATCH", "/v1/pathways".to_string()),
    ] {
        let a = s.call(method, &path, Some(READER), None, None).await;
        assert_eq!(
            (a.status, a.content_type.as_str()),
            (405, "application/problem+json"),
            "{method} {path}: {:?}",
            a.body
        );
        a.problem(405, "method-not-allowed");
    }
    // A CPR number of the wrong type is refused without being repeated.
    let mut bad = family("FAM-0102");
    bad["fields"]["cpr"] = json!(101901234);
    let a = s.post("/v1/instances", MUNICIPALITY, &bad, None).await;
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert!(!a.body.to_string().contains("101901234"), "{}", a.body);
    assert!(a.body.to_string().contains("not shown"), "{}", a.body);
    // Nor a CPR number typed into a field that is not sensitive, or sent as the payload.
    let mut misplaced = family("FAM-0103");
    misplaced["fields"]["interpreter_needed"] = json!("010190-1234");
    let a = s
        .post("/v1/instances", MUNICIPALITY, &misplaced, None)
        .await;
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert!(!a.body.to_string().contains("1234"), "{}", a.body);
    assert!(
        a.body.to_string().contains("looks like a CPR number"),
        "{}",
        a.body
    );
    let events = format!("/v1/instances/{id}/events");
    for body in [
        json!({"event": "birth_registered", "payload": {"birth_date": "0101901234"}}),
        json!({"event": "birth_registered", "payload": "0101901234"}),
    ] {
        let a = s.post(&events, MUNICIPALITY, &body, Some("cpr")).await;
        assert!(a.status >= 400, "{:?}", a.body);
        assert!(!a.body.to_string().contains("1234"), "{}", a.body);
    }
}

/// Every write a token makes is a line of the audit log, with who, what, when and for which
/// family, and never a payload or sensitive value; the log takes no change once written.
#[tokio::test]
async fn every_write_is_in_the_append_only_audit_log() {
    let s = start().await;
    let id = s.enrol("FAM-AUD").await;
    let events = format!("/v1/instances/{id}/events");
    let a = s
        .post(
            &events,
            HOSPITAL,
            &json!({"event": "first_exam_done", "payload": {"care_level": 2}}),
            Some("exam-1"),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let a = s
        .post(
            &events,
            HOSPITAL,
            &json!({"event": "birth_registered", "payload": {"birth_date": "0101901234"}}),
            Some("birth-1"),
        )
        .await;
    assert!(a.status >= 400);
    for action in ["hold", "resume"] {
        let a = s
            .post(
                &format!("/v1/instances/{id}/{action}"),
                MUNICIPALITY,
                &json!({"reason": "indlagt"}),
                Some(action),
            )
            .await;
        assert!(a.status < 300, "{action}: {:?}", a.body);
    }
    // Read by an admin of every pathway; nobody else.
    let a = s
        .call("GET", "/v1/audit?ref=FAM-AUD", Some(READER), None, None)
        .await;
    a.problem(403, "insufficient-scope");
    let a = s
        .call("GET", "/v1/audit?ref=FAM-AUD", Some(RED_CROSS), None, None)
        .await;
    a.problem(403, "insufficient-scope");
    let a = s
        .call("GET", "/v1/audit?ref=FAM-AUD", Some(ADMIN), None, None)
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let lines = a.body.as_array().expect("lines").clone();
    let summary: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["actor"].as_str().unwrap_or("").to_string(),
                l["action"].as_str().unwrap_or("").to_string(),
                l["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expect = |actor: &str, action: &str, outcome: &str| {
        (actor.to_string(), action.to_string(), outcome.to_string())
    };
    assert_eq!(
        summary,
        [
            expect("token municipality", "enrol", "ok"),
            expect("token hospital", "event", "ok"),
            expect("token hospital", "event", "refused 422"),
            expect("token municipality", "hold", "ok"),
            expect("token municipality", "resume", "ok"),
        ],
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l["ref"] == "FAM-AUD"));
    assert_eq!(lines[1]["detail"], "event first_exam_done, key exam-1");
    assert_eq!(lines[1]["instance_id"], id);
    let text = serde_json::to_string(&lines).expect("json");
    assert!(
        !text.contains("0101901234") && !text.contains("care_level"),
        "no payload or sensitive value: {text}"
    );

    // Append-only, whoever holds the database.
    let db = super::support::db_arg(s._dir.path());
    for sql in [
        "UPDATE audit SET actor = 'someone else'",
        "DELETE FROM audit",
    ] {
        let e = match s.rt.store() {
            Backend::Sqlite(store) => sqlx::query(sql).execute(store.pool()).await.map(|_| ()),
            Backend::Postgres(store) => sqlx::query(sql).execute(store.pool()).await.map(|_| ()),
        }
        .expect_err("refused");
        assert!(e.to_string().contains("append-only"), "{e}");
    }
    // The command line reads the same log.
    let out = super::support::carepath()
        .args(["audit", "--ref", "FAM-AUD", "--db"])
        .arg(&db)
        .output()
        .expect("audit");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert_eq!(shown.lines().count(), 5, "{shown}");
    assert!(
        shown.contains("token hospital") && shown.contains("refused 422"),
        "{shown}"
    );

    // Erasure at the family's request: an admin of every pathway only; audited too.
    let erase = |token: &'static str, reference: &'static str| {
        let path = format!("/v1/families/{reference}/erase");
        let s = &s;
        async move {
            s.post(&path, token, &json!({"reason": "GDPR-2027-001"}), None)
                .await
        }
    };
    erase(RED_CROSS, "FAM-AUD")
        .await
        .problem(403, "insufficient-scope");
    erase(ADMIN, "FAM-NOBODY").await.problem(404, "not-found");
    let a = erase(ADMIN, "FAM-AUD").await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["instances"], 1, "{:?}", a.body);
    let a = s
        .call("GET", "/v1/audit?ref=FAM-AUD", Some(ADMIN), None, None)
        .await;
    let last = a
        .body
        .as_array()
        .and_then(|l| l.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&last["actor"], &last["action"], &last["outcome"]),
        (&json!("token operations"), &json!("erase"), &json!("ok"))
    );
    let a = s
        .call(
            "GET",
            &format!("/v1/instances/{id}"),
            Some(ADMIN),
            None,
            None,
        )
        .await;
    assert_eq!(a.body["ref"], format!("erased:{id}"), "{:?}", a.body);
}

/// Holding, resuming and cancelling many families at once, by a selection, with a dry run
/// first; a token limited to some pathways reaches only those, and cancelling takes admin.
#[tokio::test]
async fn bulk_operations_select_count_and_act_on_each_family() {
    let s = start().await;
    let ids = [
        s.enrol("FAM-B1").await,
        s.enrol("FAM-B2").await,
        s.enrol("FAM-B3").await,
    ];
    // FAM-B1 moves on: only B2 and B3 still wait for their first exam.
    let a = s
        .post(
            &format!("/v1/instances/{}/events", ids[0]),
            HOSPITAL,
            &json!({"event": "first_exam_done", "payload": {"care_level": 1}}),
            Some("b1"),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let waiting = json!({"pathways": ["standard-track"], "state": "awaiting_first_exam"});
    let with = |extra: Value| {
        let mut body = waiting.clone();
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        body
    };
    let bulk = |token: &'static str, body: Value| {
        let s = &s;
        async move { s.post("/v1/bulk", token, &body, None).await }
    };
    let held = |id: i64| {
        let s = &s;
        async move {
            s.call(
                "GET",
                &format!("/v1/instances/{id}"),
                Some(READER),
                None,
                None,
            )
            .await
            .body["held_since"]
                .clone()
        }
    };

    let a = bulk(
        MUNICIPALITY,
        with(json!({"action": "hold", "dry_run": true})),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        (
            &a.body["matched"],
            &a.body["changed"],
            &a.body["references"]
        ),
        (&json!(2), &json!(0), &json!(["FAM-B2", "FAM-B3"]))
    );
    assert_eq!(held(ids[1]).await, Value::Null, "a dry run changes nothing");
    let a = bulk(MUNICIPALITY, with(json!({"action": "hold"}))).await;
    assert_eq!(
        (&a.body["matched"], &a.body["changed"]),
        (&json!(2), &json!(2))
    );
    assert_ne!(held(ids[1]).await, Value::Null);
    assert_eq!(held(ids[0]).await, Value::Null, "not selected");
    let a = bulk(MUNICIPALITY, with(json!({"action": "hold"}))).await;
    assert_eq!(a.body["changed"], 0, "held already");
    let a = bulk(MUNICIPALITY, with(json!({"action": "resume"}))).await;
    assert_eq!(a.body["changed"], 2);

    // Cancelling: admin only, and only with a reason.
    bulk(
        MUNICIPALITY,
        with(json!({"action": "cancel", "reason": "x"})),
    )
    .await
    .problem(403, "insufficient-scope");
    bulk(ADMIN, with(json!({"action": "cancel"})))
        .await
        .problem(422, "invalid-body");
    bulk(ADMIN, with(json!({"action": "archive"})))
        .await
        .problem(422, "invalid-body");
    bulk(RED_CROSS, with(json!({"action": "hold"})))
        .await
        .problem(403, "pathway-not-allowed");
    let a = bulk(RED_CROSS, json!({"action": "hold", "dry_run": true})).await;
    assert_eq!(a.body["matched"], 0, "its own pathway only: {:?}", a.body);
    let a = bulk(
        ADMIN,
        with(json!({"action": "cancel", "reason": "the region withdrew the offer"})),
    )
    .await;
    assert_eq!(
        (&a.body["matched"], &a.body["changed"]),
        (&json!(2), &json!(2))
    );
    let b2 = s
        .call(
            "GET",
            &format!("/v1/instances/{}", ids[1]),
            Some(READER),
            None,
            None,
        )
        .await
        .body;
    assert_eq!(b2["status"], "finished", "{b2:#}");
    assert!(b2["timers"].as_array().is_some_and(Vec::is_empty), "{b2:#}");
    let last = b2["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        last["cause"],
        json!({"kind": "operator", "action": "cancel", "by": "token operations"}),
        "{last:#}"
    );
    assert!(
        last["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("the region withdrew the offer")),
        "{last:#}"
    );
    let a = bulk(ADMIN, with(json!({"action": "hold", "dry_run": true}))).await;
    assert_eq!(a.body["matched"], 0, "finished families are not selected");

    // Each family has its own lines in the audit log.
    let a = s
        .call("GET", "/v1/audit?ref=FAM-B2", Some(ADMIN), None, None)
        .await;
    let actions: Vec<&str> = a
        .body
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["action"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        actions,
        [
            "enrol",
            "bulk hold",
            "bulk hold",
            "bulk resume",
            "bulk cancel"
        ],
        "{:#}",
        a.body
    );

    // Migrations through the API: admin of every pathway, a version that is loaded.
    let migrate = |token: &'static str, body: Value| {
        let s = &s;
        async move { s.post("/v1/migrations", token, &body, None).await }
    };
    migrate(
        MUNICIPALITY,
        json!({"pathway": "standard-track", "to_version": 5}),
    )
    .await
    .problem(403, "insufficient-scope");
    migrate(
        ADMIN,
        json!({"pathway": "standard-track", "to_version": 99}),
    )
    .await
    .problem(404, "not-found");
    let a = migrate(
        ADMIN,
        json!({"pathway": "standard-track", "to_version": 5, "dry_run": true}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        (&a.body["moves"], &a.body["refused"]),
        (&json!([]), &json!([])),
        "everyone is on version 5 already"
    );
}

/// Twenty enrolments sent at once with one key and one body: one enrolment, and every one of
/// the twenty gets its answer.
#[tokio::test]
async fn concurrent_repeats_of_one_key_all_get_the_first_answer() {
    let s = start().await;
    let body = family("FAM-0201").to_string();
    let sends = (0..20).map(|_| {
        s.call(
            "POST",
            "/v1/instances",
            Some(MUNICIPALITY),
            Some(body.clone()),
            Some("enrol-0201"),
        )
    });
    let answers = futures::future::join_all(sends).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        vec![201; 20],
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    let enrolled =
        s.rt.store()
            .instances_by_ref("FAM-0201")
            .await
            .expect("read");
    assert_eq!(enrolled.len(), 1);
}

/// One bad request: what is sent, and the status and problem code it must get.
struct Bad {
    method: &'static str,
    path: String,
    token: Option<&'static str>,
    body: Option<String>,
    key: Option<String>,
    status: u16,
    code: &'static str,
}

fn bad(
    method: &'static str,
    path: impl Into<String>,
    token: Option<&'static str>,
    body: Option<String>,
    status: u16,
    code: &'static str,
) -> Bad {
    Bad {
        method,
        path: path.into(),
        token,
        body,
        key: None,
        status,
        code,
    }
}

/// Over a hundred bad requests, each answered with its status and a problem document with
/// its code, and none of them changing a family, a step, a timer or a notice.
#[tokio::test]
async fn a_corpus_of_bad_requests_is_refused_with_problems_and_changes_nothing() {
    let s = start().await;
    let id = s.enrol("FAM-0500").await;
    let fam = |r: &str| Some(family(r).to_string());
    let exam = Some(json!({"event": "first_exam_done", "payload": {"care_level": 2}}).to_string());
    let empty = Some("{}".to_string());
    let ins = format!("/v1/instances/{id}");
    let events = format!("{ins}/events");
    let hold = format!("{ins}/hold");
    let resume = format!("{ins}/resume");
    let mut cases: Vec<Bad> = Vec::new();

    // Who is asking: nobody, an unknown token.
    let endpoints: Vec<(&'static str, String, Option<String>)> = vec![
        ("GET", "/v1/instances".into(), None),
        ("GET", ins.clone(), None),
        ("POST", "/v1/instances".into(), fam("FAM-0501")),
        ("POST", events.clone(), exam.clone()),
        ("POST", hold.clone(), empty.clone()),
        ("POST", resume.clone(), empty.clone()),
        ("GET", "/v1/pathways".into(), None),
        ("GET", "/v1/pathways/standard-track".into(), None),
        ("GET", "/v1/outbox".into(), None),
        (
            "POST",
            "/v1/opt-outs".into(),
            Some(json!({"address": "+4520123456"}).to_string()),
        ),
        ("GET", "/metrics".into(), None),
    ];
    for (method, path, body) in &endpoints {
        for token in [None, Some("cp_nobody"), Some("Basic Zm9vOmJhcg==")] {
            cases.push(bad(
                method,
                path.clone(),
                token,
                body.clone(),
                401,
                "unauthorized",
            ));
        }
    }
    // What the token may do: scopes.
    for (path, body) in [
        ("/v1/instances".to_string(), fam("FAM-0502")),
        (events.clone(), exam.clone()),
        (hold.clone(), empty.clone()),
        (resume.clone(), empty.clone()),
        (
            "/v1/opt-outs".to_string(),
            Some(json!({"address": "+4520123456"}).to_string()),
        ),
    ] {
        cases.push(bad(
            "POST",
            path,
            Some(READER),
            body,
            403,
            "insufficient-scope",
        ));
    }
    for (path, body) in [
        ("/v1/instances".to_string(), fam("FAM-0503")),
        (hold.clone(), empty.clone()),
        (resume.clone(), empty.clone()),
        (
            "/v1/opt-outs".to_string(),
            Some(json!({"address": "+4520123456"}).to_string()),
        ),
    ] {
        cases.push(bad(
            "POST",
            path,
            Some(HOSPITAL),
            body,
            403,
            "insufficient-scope",
        ));
    }
    cases.push(bad(
        "POST",
        events.clone(),
        Some(MUNICIPALITY),
        exam.clone(),
        403,
        "insufficient-scope",
    ));
    // Which families the token may see: another organisation's is not there for it.
    cases.push(bad(
        "GET",
        ins.clone(),
        Some(RED_CROSS),
        None,
        404,
        "not-found",
    ));
    cases.push(bad(
        "POST",
        events.clone(),
        Some(RED_CROSS),
        exam.clone(),
        404,
        "not-found",
    ));
    cases.push(bad(
        "POST",
        hold.clone(),
        Some(RED_CROSS),
        empty.clone(),
        404,
        "not-found",
    ));
    cases.push(bad(
        "POST",
        resume.clone(),
        Some(RED_CROSS),
        empty.clone(),
        404,
        "not-found",
    ));
    cases.push(bad(
        "POST",
        "/v1/instances",
        Some(RED_CROSS),
        fam("FAM-0504"),
        403,
        "pathway-forbidden",
    ));
    cases.push(bad(
        "GET",
        "/v1/instances?pathway=standard-track",
        Some(RED_CROSS),
        None,
        403,
        "pathway-forbidden",
    ));
    cases.push(bad(
        "POST",
        "/v1/opt-outs",
        Some(RED_CROSS),
        Some(json!({"address": "+4520123456"}).to_string()),
        404,
        "not-found",
    ));
    // Bodies that are not JSON.
    for text in [
        "",
        "{",
        "[",
        "nul",
        "{\"ref\":}",
        "{'ref': 'x'}",
        "\u{feff}{}",
        "{\"a\":1}}",
    ] {
        cases.push(bad(
            "POST",
            "/v1/instances",
            Some(MUNICIPALITY),
            Some(text.into()),
            400,
            "malformed-json",
        ));
        cases.push(bad(
            "POST",
            events.clone(),
            Some(HOSPITAL),
            Some(text.into()),
            400,
            "malformed-json",
        ));
    }
    // JSON of the wrong shape.
    let mut enrolments: Vec<Value> = Vec::new();
    for (member, value) in [
        ("ref", json!(42)),
        ("ref", Value::Null),
        ("pathway", json!(["standard-track"])),
        ("fields", json!("due_date")),
        ("contacts", json!([])),
        ("colour", json!("blue")),
    ] {
        let mut f = family("FAM-0505");
        f[member] = value;
        enrolments.push(f);
    }
    let mut no_ref = family("FAM-0506");
    no_ref.as_object_mut().expect("object").remove("ref");
    enrolments.push(no_ref);
    for f in enrolments {
        cases.push(bad(
            "POST",
            "/v1/instances",
            Some(MUNICIPALITY),
            Some(f.to_string()),
            422,
            "invalid-body",
        ));
    }
    for body in [
        json!([]),
        json!("first_exam_done"),
        json!({}),
        json!({"event": 7}),
        json!({"event": "first_exam_done", "colour": "blue"}),
        json!({"event": "first_exam_done", "contacts": []}),
    ] {
        cases.push(bad(
            "POST",
            events.clone(),
            Some(HOSPITAL),
            Some(body.to_string()),
            422,
            "invalid-body",
        ));
    }
    // What the family's data may hold, and what a reference may be.
    for reference in ["0101901234", "CPR٠١٠١٩٠١٢٣٤", ""] {
        cases.push(bad(
            "POST",
            "/v1/instances",
            Some(MUNICIPALITY),
            fam(reference),
            422,
            "invalid-body",
        ));
    }
    let mut unknown_pathway = family("FAM-0507");
    unknown_pathway["pathway"] = json!("no-such-pathway");
    cases.push(bad(
        "POST",
        "/v1/instances",
        Some(MUNICIPALITY),
        Some(unknown_pathway.to_string()),
        422,
        "invalid-body",
    ));
    // Events the family's state or pathway does not take.
    cases.push(bad(
        "POST",
        events.clone(),
        Some(HOSPITAL),
        Some(json!({"event": "no_such_event"}).to_string()),
        422,
        "unknown-event",
    ));
    cases.push(bad(
        "POST",
        events.clone(),
        Some(HOSPITAL),
        Some(json!({"event": "first_exam_done", "payload": {"care_level": "two"}}).to_string()),
        422,
        "bad-payload",
    ));
    cases.push(bad(
        "POST",
        events.clone(),
        Some(HOSPITAL),
        Some(
            json!({"event": "birth_registered", "payload": {"birth_date": "2027-08-01"}})
                .to_string(),
        ),
        409,
        "event-not-allowed",
    ));
    // Ids that are no ids, and ones that are not there.
    for path in [
        "/v1/instances/abc",
        "/v1/instances/1.5",
        "/v1/instances/99999999999999999999",
    ] {
        cases.push(bad("GET", path, Some(READER), None, 400, "bad-path"));
    }
    for path in [
        "/v1/instances/0",
        "/v1/instances/-1",
        "/v1/instances/424242",
    ] {
        cases.push(bad("GET", path, Some(READER), None, 404, "not-found"));
    }
    cases.push(bad(
        "GET",
        "/v1/pathways/no-such-pathway",
        Some(READER),
        None,
        404,
        "not-found",
    ));
    cases.push(bad(
        "GET",
        "/v1/no-such-endpoint",
        Some(READER),
        None,
        404,
        "not-found",
    ));
    cases.push(bad(
        "POST",
        "/v1/instances/424242/hold",
        Some(MUNICIPALITY),
        empty.clone(),
        404,
        "not-found",
    ));
    // Queries.
    for query in [
        "limit=abc",
        "limit=-1",
        "after=x",
        "limit=",
        "pathway=standard-track&limit=1.5",
    ] {
        cases.push(bad(
            "GET",
            format!("/v1/instances?{query}"),
            Some(READER),
            None,
            400,
            "bad-query",
        ));
    }
    for query in ["status=nonsense", "instance=abc", "limit=x"] {
        cases.push(bad(
            "GET",
            format!("/v1/outbox?{query}"),
            Some(READER),
            None,
            400,
            "bad-query",
        ));
    }
    // Methods a route does not take.
    for (method, path) in [
        ("DELETE", ins.clone()),
        ("PUT", ins.clone()),
        ("PATCH", ins.clone()),
        ("GET", events.clone()),
        ("DELETE", "/v1/instances".to_string()),
        ("PUT", "/v1/opt-outs".to_string()),
        ("POST", "/v1/pathways".to_string()),
        ("POST", "/healthz".to_string()),
    ] {
        cases.push(bad(
            method,
            path,
            Some(READER),
            None,
            405,
            "method-not-allowed",
        ));
    }
    // Bodies too large.
    let huge = Some(format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024)));
    for path in [
        "/v1/instances".to_string(),
        events.clone(),
        "/v1/opt-outs".to_string(),
    ] {
        cases.push(bad(
            "POST",
            path,
            Some(MUNICIPALITY),
            huge.clone(),
            413,
            "body-too-large",
        ));
    }
    // Idempotency keys that are no keys.
    for key in [String::new(), "k".repeat(201), "two words".into()] {
        let mut b = bad(
            "POST",
            "/v1/instances",
            Some(MUNICIPALITY),
            fam("FAM-0508"),
            400,
            "bad-idempotency-key",
        );
        b.key = Some(key);
        cases.push(b);
    }

    assert!(cases.len() >= 100, "{} cases", cases.len());
    let before = s.snapshot().await;
    let mut wrong = Vec::new();
    for c in &cases {
        let a = s
            .call(c.method, &c.path, c.token, c.body.clone(), c.key.as_deref())
            .await;
        let code = a.body["code"].as_str().unwrap_or("").to_string();
        if a.status != c.status || code != c.code || a.content_type != "application/problem+json" {
            wrong.push(format!(
                "{} {} ({:?}): got {} {code:?} {:?}, want {} {:?}",
                c.method, c.path, c.token, a.status, a.content_type, c.status, c.code
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_eq!(
        s.snapshot().await,
        before,
        "a refused request changed something"
    );
}

/// The directory over HTTP: read with `read`, replaced whole by an admin of every pathway
/// (a bad entry refuses all of it); a person assigned to a family's role, within the token's
/// pathways.
#[tokio::test]
async fn the_directory_is_replaced_whole_and_a_role_is_assigned_within_the_tokens_pathways() {
    let s = start().await;
    s.enrol("FAM-ASSIGN").await;
    let entry = json!({
        "organisation": "Røde Kors Rødovre",
        "role": "coordinator",
        "pathway": "red-cross-good-start",
        "contact": {"name": "Koordinator", "email": "koordinator@rk.example.dk"}
    });
    let put = |token: &'static str, body: Value| {
        let s = &s;
        async move {
            s.call(
                "PUT",
                "/v1/directory",
                Some(token),
                Some(body.to_string()),
                None,
            )
            .await
        }
    };
    put(MUNICIPALITY, json!([entry.clone()]))
        .await
        .problem(403, "insufficient-scope");
    put(RED_CROSS, json!([entry.clone()]))
        .await
        .problem(403, "insufficient-scope");
    let mut bad = entry.clone();
    bad["contact"] = json!({"name": "Koordinator", "phone": "12345678"});
    let refused = put(ADMIN, json!([entry.clone(), bad])).await;
    let detail = refused.problem(422, "invalid-body")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("role 2 (Røde Kors Rødovre, coordinator on red-cross-good-start)"),
        "{detail}"
    );
    assert_eq!(
        s.get("/v1/directory", READER).await.body,
        json!([]),
        "nothing was loaded"
    );
    let loaded = put(ADMIN, json!([entry.clone()])).await;
    assert_eq!(loaded.status, 200, "{:#}", loaded.body);
    let mut stored = entry.clone();
    stored["contact"]["language"] = json!("da");
    assert_eq!(s.get("/v1/directory", READER).await.body, json!([stored]));

    let assign = |token: &'static str, body: Value| {
        let s = &s;
        async move {
            s.post("/v1/families/FAM-ASSIGN/contacts", token, &body, None)
                .await
        }
    };
    let hanne = json!({"name": "Hanne", "email": "hanne@example.dk"});
    assign(READER, json!({"role": "health_visitor", "contact": hanne}))
        .await
        .problem(403, "insufficient-scope");
    assign(MUNICIPALITY, json!({"role": "pilot", "contact": hanne}))
        .await
        .problem(422, "invalid-body");
    let a = assign(
        MUNICIPALITY,
        json!({"role": "health_visitor", "contact": hanne}),
    )
    .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    assert_eq!(a.body["retried"], 0);
    assert_eq!(a.body["instances"][0][1], "standard-track");
    let audit = s.get("/v1/audit", ADMIN).await;
    let actions: Vec<&str> = audit.body["entries"]
        .as_array()
        .or(audit.body.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"assign"), "{:#}", audit.body);
    assert!(actions.contains(&"directory load"), "{:#}", audit.body);

    // The family as a whole, within the token's pathways.
    let family = s.get("/v1/families/FAM-ASSIGN", HOSPITAL).await;
    assert_eq!(family.status, 200, "{:#}", family.body);
    assert_eq!(family.body["ref"], "FAM-ASSIGN");
    let on: Vec<&str> = family.body["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["pathway"].as_str())
        .collect();
    assert_eq!(on, ["standard-track"]);
    s.get("/v1/families/FAM-ASSIGN", RED_CROSS)
        .await
        .problem(404, "not-found");
    s.get("/v1/families/FAM-NOBODY", READER)
        .await
        .problem(404, "not-found");
}
