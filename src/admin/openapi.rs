//! The OpenAPI document of the admin API, generated from the handlers' `#[utoipa::path]`
//! attributes and the bodies' schemas.
//!
//! It owns the document's frame (title, tags, the bearer scheme). It must never be edited by
//! hand in `docs/openapi.json`: a test compares that file with [`document`], and
//! `CONSENTRY_UPDATE_OPENAPI=1 cargo test openapi` rewrites it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes;

/// The admin API's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Consentry admin API",
        description = "Record consent, read a subject's state and history, import and export the record of consent, and carry out data subject requests. Served on the admin listener (`admin.listen`), never on the proxy listener. Every route but `/openapi.json` and `/healthz` needs `Authorization: Bearer <admin token>`. Errors are RFC 9457 `application/problem+json` with a stable `reason`, and for bad input the `field` (and the `line` of an import).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::record_events,
        routes::subject_consent,
        routes::subject_history,
        routes::import_events,
        routes::export_events,
        routes::export_subject,
        routes::erase_subject,
        routes::openapi_document,
        routes::health,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "consent", description = "The record of consent: events, imports, exports"),
        (name = "subjects", description = "One data subject: state, history, access and erasure requests"),
        (name = "operations", description = "Health and this document"),
    )
)]
pub struct ApiDoc;

/// Adds the `admin_token` bearer scheme the operations refer to.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An admin token (admin.tokens in consentry.yaml, by SHA-256; or CONSENTRY_ADMIN_TOKEN). Its name is recorded as the actor `admin:<name>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as served and as checked in: pretty JSON with a final newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
