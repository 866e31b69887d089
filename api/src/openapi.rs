//! `GET /api/openapi.json`: the OpenAPI 3 description, generated from the handlers'
//! annotations (utoipa) when the router is built.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "volsnap API",
        description = "Restore captured volume snapshots onto the live data volumes of containerised apps. \
            Every /api route needs `Authorization: Bearer <token>`; GET routes accept viewer tokens, \
            all others need an admin token. Errors are `{\"error\":{\"code\",\"message\"}}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "workloads"), (name = "snapshots"), (name = "restores"),
        (name = "jobs"), (name = "batches"), (name = "ops")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("a token from `volsnap-api token create`"))
                    .build(),
            ),
        );
    }
}

/// The document the route modules add their paths to.
pub fn base() -> OpenApiDoc {
    ApiDoc::openapi()
}

/// Serves the finished document (serialised once).
pub fn router(doc: OpenApiDoc) -> Router<AppState> {
    let json: Arc<str> = doc.to_json().expect("OpenAPI document serialises").into();
    Router::new().route(
        "/api/openapi.json",
        get(move || {
            let json = json.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    json.to_string(),
                )
                    .into_response()
            }
        }),
    )
}
