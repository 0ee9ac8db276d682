//! SMS delivery receipts end to end: the real runtime sends a family's reminder through a
//! GatewayAPI or CPSMS double that is asked to report back, and the report comes to the real
//! HTTP API as each gateway documents it: GatewayAPI's delivery status notification signed
//! with a JWT, CPSMS's call of the `dlr_url` carepath gave. A delivered SMS is recorded on its
//! notice; an undeliverable one becomes a dead letter that `carepath outbox show` explains.

use std::sync::Arc;

use serde_json::{Value, json};
use wiremock::MockServer;

use carepath_notifier::gateway::{Gateway, SmsConfig};
use carepath_worker::runtime::Runtime;
use carepath_worker::store::{Backend, NoticeStatus, OutboxRow, ReceiptState};

use super::delivery::{
    accepting_gateway, book_scan, enrol, gateway, gateway_api, gwapi_signature, local, requests,
    rows, runtime, sms_notifier,
};
use super::support::carepath;

/// Where the gateways are told to report: carepath's public address, under a path prefix.
const PUBLIC: &str = "https://carepath.example.dk/forloeb";

/// Two families' reminders, sent on Saturday 13 February at 10:00 through `sms`; the API
/// serving receipts with `secret`. Returns the runtime, the sent rows and the API's address.
async fn sent_reminders(
    dir: &std::path::Path,
    sms: SmsConfig,
    secret: &str,
) -> (Arc<Runtime<Backend>>, Vec<OutboxRow>, String) {
    let (rt, clock) = runtime(dir).await;
    for family in ["FAM-DLR", "FAM-MOVE"] {
        enrol(&rt, family, "jordemoder@example.dk", "da").await;
        book_scan(&rt, &clock, family).await;
    }
    let notifier = sms_notifier(sms);
    let ten = local("2027-02-13T10:00");
    clock.advance_to(ten);
    rt.fire_due(ten, 100).await.expect("fire");
    let done = notifier.deliver(rt.store(), ten).await.expect("deliver");
    assert_eq!(done.sent, 2, "{done:?}");
    let sent = rows(&rt, "appointment_reminder").await;
    assert!(sent.iter().all(|r| r.status == NoticeStatus::Sent));
    assert!(sent.iter().all(|r| r.receipt.is_none()), "no receipt yet");

    let rt = Arc::new(rt);
    let (base, _, _) = gateway_api(&rt, secret).await;
    (rt, sent, base)
}

async fn row(rt: &Runtime<Backend>, id: i64) -> OutboxRow {
    rows(rt, "appointment_reminder")
        .await
        .into_iter()
        .find(|r| r.id == id)
        .expect("the notice")
}

/// The secret's environment variable, set for this test.
fn secret_env(var: &str, secret: &str) -> Option<String> {
    // SAFETY of the environment: each test names its own variable.
    unsafe { std::env::set_var(var, secret) };
    Some(var.into())
}

#[tokio::test]
async fn gatewayapi_receipts_record_delivery_and_dead_letter_an_undeliverable_sms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = accepting_gateway().await;
    // GatewayAPI's own documentation signs its example with the secret "secret".
    let secret = "secret";
    let sms = SmsConfig {
        inbound_secret_env: secret_env("CAREPATH_TEST_DLR_SECRET", secret),
        receipts_url: Some(PUBLIC.into()),
        ..gateway(&server).await
    };
    let (rt, sent, base) = sent_reminders(dir.path(), sms, secret).await;

    // Each message asked for its receipt at carepath's public address.
    let got = requests(&server).await;
    assert_eq!(got.len(), 2);
    for (r, n) in got.iter().zip(&sent) {
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(
            body["callback_url"],
            format!("{PUBLIC}/v1/receipts/sms/gatewayapi"),
            "{body}"
        );
        assert!(
            sent.iter().any(|s| body["userref"] == s.key.as_str()),
            "{body} {n:?}"
        );
    }

    let http = reqwest::Client::new();
    let url = format!("{base}/v1/receipts/sms/gatewayapi");
    let post = |body: &Value, token: &str| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("X-Gwapi-Signature", token)
            .body(body.to_string())
            .send()
    };
    // The delivery status notification of GatewayAPI's documentation, token and all: the
    // signature is GatewayAPI's, the notice is nobody's here.
    let documented = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpZCI6MjM4MTcwMywibXNpc2RuIjo0NTQyNjA5MDQ1LCJ0aW1lIjoxNTIyNzY0MDYyLCJzdGF0dXMiOiJERUxJVkVSRUQiLCJlcnJvciI6ImVycm9yIHRleHQiLCJjb2RlIjoiZXJyb3IgY29kZSIsImNvdW50cnlfcHJlZml4Ijo0NSwiY291bnRyeV9jb2RlIjoiREsiLCJjaGFyZ2Vfc3RhdHVzIjoiQVVUSE9SSVpFRCIsInVzZXJyZWYiOiJhIHJlZmVyZW5jZSJ9.LgbbsxAj61SQhDA0A3dGlcT8OZN2UJsTgBiifNHEeh8";
    let documented_body = json!({
        "id": 2381703, "msisdn": 4542609045u64, "time": 1522764062, "status": "DELIVERED",
        "error": "error text", "code": "error code", "country_prefix": 45, "country_code": "DK",
        "charge_status": "AUTHORIZED", "userref": "a reference"
    });
    let r = post(&documented_body, documented).await.expect("send");
    assert_eq!(r.status(), 404, "signed, but about no notice of ours");
    let problem: Value = r.json().await.expect("json");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no notice")),
        "{problem}"
    );

    // Delivered: recorded on the notice, which stays sent.
    let (first, second) = (&sent[0], &sent[1]);
    let delivered = json!({
        "id": 421, "msisdn": 4520123456u64, "time": 1_802_420_000, "status": "DELIVERED",
        "userref": first.key, "charge_status": "CAPTURED", "country_code": "DK",
        "country_prefix": 45, "error": null, "code": null
    });
    let token = gwapi_signature(&delivered, secret.as_bytes());
    let r = post(&delivered, &token).await.expect("send");
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    assert_eq!(
        answer,
        json!({"notice": first.id, "receipt": "delivered", "recorded": true, "dead": false})
    );
    let now = row(&rt, first.id).await;
    assert_eq!(
        (now.status, now.receipt),
        (NoticeStatus::Sent, Some(ReceiptState::Delivered))
    );
    // The gateway repeats itself: answered, nothing changes.
    let r = post(&delivered, &token).await.expect("send");
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["recorded"], false);

    // A body that says other than its signature is refused.
    let mut forged = delivered.clone();
    forged["status"] = json!("UNDELIVERABLE");
    let r = post(&forged, &token).await.expect("send");
    assert_eq!(r.status(), 401);
    let r = post(&delivered, &gwapi_signature(&delivered, b"not-the-secret"))
        .await
        .expect("send");
    assert_eq!(r.status(), 401);

    // Undeliverable: a dead letter, with the gateway's reason and what to do.
    let failed = json!({
        "id": 422, "msisdn": 4530123456u64, "time": 1_802_420_100, "status": "UNDELIVERABLE",
        "userref": second.key, "error": "Unknown subscriber", "code": "0x01"
    });
    let r = post(&failed, &gwapi_signature(&failed, secret.as_bytes()))
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["dead"], true, "{answer}");
    let dead = row(&rt, second.id).await;
    assert_eq!(
        (dead.status, dead.receipt),
        (NoticeStatus::Dead, Some(ReceiptState::Failed))
    );
    let reason = dead.last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("UNDELIVERABLE")
            && reason.contains("Unknown subscriber")
            && reason.contains(&format!("carepath outbox retry {}", second.id)),
        "{reason}"
    );
    assert!(!reason.contains("30123456"), "no number: {reason}");

    // What an operator sees: the provenance and the receipt.
    let db = super::support::db_arg(dir.path());
    let shown = carepath()
        .args(["outbox", "show", &second.id.to_string(), "--db"])
        .arg(&db)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}");
    assert!(text.contains("[dead]"), "{text}");
    assert!(text.contains("Receipt: failed"), "{text}");
    // The provenance, a line a step: sent, the receipt, the dead letter.
    let steps: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("2027-"))
        .map(|l| l.get(22..37).unwrap_or_default().trim().to_string())
        .collect();
    assert_eq!(
        steps,
        ["queued", "sent", "receipt failed", "dead"],
        "{text}"
    );
    let dead_list = carepath()
        .args(["outbox", "--status", "dead", "--format", "json", "--db"])
        .arg(&db)
        .output()
        .expect("run");
    // One JSON object a line.
    let listed: Vec<Value> = String::from_utf8_lossy(&dead_list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(
        listed
            .iter()
            .any(|n| n["id"] == second.id && n["receipt"] == "failed"),
        "{listed:?}"
    );
}

#[tokio::test]
async fn cpsms_reports_on_the_signed_url_carepath_gave_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server: MockServer = accepting_gateway().await;
    let secret = "cpsms-receipts";
    // SAFETY of the environment: each test names its own variable.
    unsafe { std::env::set_var("CAREPATH_TEST_CPSMS_KEY", "api-key") };
    let sms = SmsConfig {
        gateway: Gateway::Cpsms,
        url: server.uri(),
        token_env: Some("CAREPATH_TEST_CPSMS_KEY".into()),
        username: Some("kommune".into()),
        inbound_secret_env: secret_env("CAREPATH_TEST_CPSMS_SECRET", secret),
        receipts_url: Some(PUBLIC.into()),
        ..gateway(&server).await
    };
    let (rt, sent, base) = sent_reminders(dir.path(), sms, secret).await;

    // Each message carries its own receipt URL: the notice key and carepath's signature.
    let got = requests(&server).await;
    let mut urls = Vec::new();
    for r in &got {
        assert_eq!(r.url.path(), "/v2/send");
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        let dlr = reqwest::Url::parse(body["dlr_url"].as_str().expect("dlr_url")).expect("url");
        assert_eq!(
            dlr.as_str().split('?').next(),
            Some(format!("{PUBLIC}/v1/receipts/sms/cpsms").as_str())
        );
        let key = dlr
            .query_pairs()
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned());
        assert_eq!(key.as_deref(), body["reference"].as_str(), "{dlr}");
        urls.push((key.unwrap_or_default(), dlr));
    }
    // CPSMS calls the URL as given, adding its status: ours is at another address here.
    let call = |dlr: &reqwest::Url, extra: &str| {
        let url = format!(
            "{base}/v1/receipts/sms/cpsms?{}{extra}",
            dlr.query().unwrap_or_default()
        );
        reqwest::get(url)
    };
    let by_key = |key: &str| sent.iter().find(|s| s.key == key).expect("sent");
    let (delivered_key, delivered_url) = &urls[0];
    let r = call(delivered_url, "&status=1&receiver=4520123456")
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let n = row(&rt, by_key(delivered_key).id).await;
    assert_eq!(n.receipt, Some(ReceiptState::Delivered));

    // A URL carepath did not sign: refused, nothing recorded.
    let (failed_key, failed_url) = &urls[1];
    let forged = format!(
        "{base}/v1/receipts/sms/cpsms?key={}&sig=00&status=2",
        failed_key.replace(':', "%3A")
    );
    let r = reqwest::get(forged).await.expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(row(&rt, by_key(failed_key).id).await.receipt, None);
    // A code CPSMS does not use.
    let r = call(failed_url, "&status=3").await.expect("send");
    assert_eq!(r.status(), 422);

    // Not delivered: a dead letter.
    let r = call(failed_url, "&status=2").await.expect("send");
    assert_eq!(r.status(), 200);
    let dead = row(&rt, by_key(failed_key).id).await;
    assert_eq!(
        (dead.status, dead.receipt),
        (NoticeStatus::Dead, Some(ReceiptState::Failed))
    );
    assert!(
        dead.last_error
            .as_deref()
            .is_some_and(|e| e.contains("CPSMS status 2")),
        "{:?}",
        dead.last_error
    );
}
