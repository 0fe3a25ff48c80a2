//! The admin API's OpenAPI document: the operations come from the handlers'
//! `#[utoipa::path]` (the router is built from the same list, see `super::api`),
//! the schemas from the types' `ToSchema`, the error answers from the catalogue
//! (`tengine_core::errors`: reusable responses, one per status of each error set).
//! Served at `GET /v1/openapi.json`.

use std::{collections::BTreeMap, sync::LazyLock};

use axum::Json;
use tengine_core::errors::{self, AdminCode};
use utoipa::{
    IntoResponses, Modify, OpenApi,
    openapi::{
        self, ContentBuilder, ObjectBuilder, Ref, RefOr, Response, ResponseBuilder, Type,
        schema::Schema,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};

/// The document's fixed parts; the operations are added by `super::api`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tengine admin API",
        description = "Projects, integrations, API keys, member keys and sessions, tools, run history and \
                       usage. JSON in and out; errors are `{\"error\": {\"code\", \"message\", \"field\"?}}` \
                       with the codes of docs/errors.md."
    ),
    modifiers(&SecuritySchemes, &ErrorResponses)
)]
pub struct ApiDoc;

/// The credentials operations name in `security`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |format: &str, description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.bearer_format = Some(format.into());
            http.description = Some(description.into());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "admin_token",
            bearer("admin token", "The ingress's `admin_token` (`TENGINE_ADMIN_TOKEN`)."),
        );
        components.add_security_scheme(
            "api_key",
            bearer(
                "tengine_…",
                "An API key of the project (its scopes decide what it reads).",
            ),
        );
        components.add_security_scheme(
            "member_session",
            bearer("tng_mst_…", "A member session (see `POST /v1/member-sessions`)."),
        );
    }
}

static DOCUMENT: LazyLock<openapi::OpenApi> = LazyLock::new(super::document);

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", tag = "meta", security(()),
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
pub async fn serve() -> Json<&'static openapi::OpenApi> {
    Json(&DOCUMENT)
}

/// The codes of `codes` grouped by HTTP status.
fn by_status(codes: &[AdminCode]) -> BTreeMap<u16, Vec<AdminCode>> {
    let mut grouped: BTreeMap<u16, Vec<AdminCode>> = BTreeMap::new();
    for code in codes {
        grouped.entry(code.status).or_default().push(*code);
    }
    grouped
}

/// A reusable response's name: its codes, `unauthorized_or_invalid_assertion`.
fn response_name(codes: &[AdminCode]) -> String {
    codes.iter().map(|c| c.code).collect::<Vec<_>>().join("_or_")
}

/// An operation's error answers for `codes`: one per status, a reference to the
/// reusable response naming those codes.
fn error_references(codes: &[AdminCode]) -> BTreeMap<String, RefOr<Response>> {
    by_status(codes)
        .into_iter()
        .map(|(status, codes)| {
            (
                status.to_string(),
                RefOr::Ref(Ref::from_response_name(response_name(&codes))),
            )
        })
        .collect()
}

/// The reusable error responses every error set refers to: the error body with
/// `code` one of the response's codes, described by the catalogue's meanings.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for set in ERROR_SETS {
            for codes in by_status(set).into_values() {
                let description = codes
                    .iter()
                    .map(|c| format!("`{}`: {}", c.code, c.meaning))
                    .collect::<Vec<_>>()
                    .join("; ");
                let response = ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(error_schema(&codes))).build(),
                    )
                    .build();
                components.responses.insert(response_name(&codes), RefOr::T(response));
            }
        }
    }
}

/// `{"error": {"code", "message", "field"?}}` with `code` one of `codes`.
fn error_schema(codes: &[AdminCode]) -> Schema {
    let error = ObjectBuilder::new()
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes.iter().map(|c| c.code))),
        )
        .required("code")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message")
        .property(
            "field",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("`invalid_field` only: the field's path")),
        );
    Schema::Object(ObjectBuilder::new().property("error", error).required("error").build())
}

/// Error answers an operation lists in `responses(...)`, each set from the catalogue.
/// The sets an operation combines have distinct statuses (one response per status).
macro_rules! error_sets {
    ($($(#[$doc:meta])* $name:ident => [$($code:ident),+];)+) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl IntoResponses for $name {
                fn responses() -> BTreeMap<String, RefOr<Response>> {
                    error_references(&[$(errors::$code),+])
                }
            }
        )+

        /// Every set, for the document's reusable responses.
        const ERROR_SETS: &[&[AdminCode]] = &[$(&[$(errors::$code),+]),+];
    };
}

error_sets! {
    /// Operations for the admin token alone.
    AdminErrors => [UNAUTHORIZED, ADMIN_DISABLED, INTERNAL];
    /// Run history and usage: the admin or a credential of the project.
    ReaderErrors => [UNAUTHORIZED, INTERNAL];
    /// The member-session exchange: an API key, and an assertion it vouches for.
    KeyHolderErrors => [UNAUTHORIZED, INVALID_ASSERTION, INTERNAL];
    BadRequest => [INVALID_REQUEST];
    NotFound => [NOT_FOUND];
    Conflict => [CONFLICT];
    InvalidField => [INVALID_FIELD];
    /// Operations that read a body: one larger than they take.
    TooLarge => [PAYLOAD_TOO_LARGE];
    /// `render`: a field, or the arguments against the tool's schema and templates.
    RenderRefused => [INVALID_FIELD, INVALID_ARGUMENTS];
    /// Re-drive: the run cannot be run again, or the call path refused it.
    RedriveErrors => [REDRIVE_UNAVAILABLE, REDRIVE_REFUSED];
}
