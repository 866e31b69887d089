//! `GET /api/openapi.json`: the OpenAPI 3 description, generated from the handlers'
//! annotations (utoipa) when the router is built.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use volsnap_shared::domain::{
    JobKind, JobState, Role, SnapshotKind, SnapshotState, SourceKind, VolumeScope,
};

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "volsnap API",
        description = "Restore captured volume snapshots onto the live data volumes of containerised apps. \
            Every /api route needs `Authorization: Bearer <token>`; GET routes accept viewer tokens, \
            as do the restore plans (POST .../plan and POST /api/restores?plan=true, which change nothing); \
            all others need an admin token. Errors are `{\"error\":{\"code\",\"message\"}}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "auth", description = "the calling token"),
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

/// The stored enums of `volsnap_shared::domain` serialise as their lowercase text (e.g.
/// `"queued"`, `"pre-restore"`); utoipa cannot see the per-variant renames generated
/// by their declaring macro, so their schemas are rewritten from `as_str()` here.
struct StoredEnumValues;

fn stored_enum(description: Option<String>, values: Vec<&'static str>) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(description)
            .enum_values(Some(values))
            .build(),
    ))
}

macro_rules! stored_enums {
    ($components:expr, $($ty:ident),+) => {
        $(
            let description = match $components.schemas.get(stringify!($ty)) {
                Some(RefOr::T(Schema::Object(o))) => o.description.clone(),
                _ => None,
            };
            let values = $ty::ALL.iter().map(|v| v.as_str()).collect();
            $components.schemas.insert(stringify!($ty).to_owned(), stored_enum(description, values));
        )+
    };
}

impl Modify for StoredEnumValues {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        stored_enums!(
            components,
            JobKind,
            JobState,
            SourceKind,
            SnapshotKind,
            SnapshotState,
            VolumeScope,
            Role
        );
    }
}

/// Rewrite the stored enums after every route module has added its schemas.
pub fn finish(doc: &mut OpenApiDoc) {
    StoredEnumValues.modify(doc);
}

/// The document the route modules add their paths to.
pub fn base() -> OpenApiDoc {
    ApiDoc::openapi()
}

/// Serves the finished document (serialised once).
pub fn router(mut doc: OpenApiDoc) -> Router<AppState> {
    finish(&mut doc);
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
