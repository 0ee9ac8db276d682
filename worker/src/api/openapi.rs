//! The OpenAPI 3.1 document, generated from the handlers' annotations and the request and
//! response types; served at `/openapi.json`, printed by `carepath openapi`, and committed as
//! `docs/openapi.json` (a test keeps that copy current).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, families, inbound, instances, outbox, pathways, problem, receipts};
use crate::runtime::{EnrolRequest, Enrolled};
use crate::store::Contact;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "carepath",
        description = "Cross-sector care pathways from pregnancy to the child's 18th month. \
Professionals' systems enrol families and report events; coordinators and operators read \
the rest. Every call but /healthz, /openapi.json and the gateway webhook needs \
`Authorization: Bearer TOKEN`; a token's scopes (events:write, instances:write, read, admin) \
and pathways limit what it may do. Errors are RFC 9457 problem documents.",
        license(name = "EUPL-1.2")
    ),
    paths(
        instances::enrol,
        instances::list,
        instances::show,
        instances::event,
        instances::hold,
        instances::resume,
        pathways::list,
        pathways::show,
        outbox::outbox,
        outbox::opt_out,
        inbound::gatewayapi,
        receipts::gatewayapi,
        audit::log,
        families::erase,
        families::bulk,
        families::migrate,
        families::assign,
        families::family,
        families::directory,
        families::replace_directory,
        receipts::cpsms,
        super::healthz,
        super::metrics,
    ),
    components(schemas(problem::Problem, EnrolRequest, Enrolled, Contact)),
    modifiers(&Bearer),
    tags(
        (name = "instances", description = "Families on pathways"),
        (name = "pathways", description = "The loaded pathways"),
        (name = "outbox", description = "Notices, and families' opt-outs"),
        (name = "gateways", description = "Webhooks the SMS gateways call"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON, ending in a newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}
