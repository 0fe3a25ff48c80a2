//! The admin API under `/v1`, one module per resource. JSON in and out;
//! authenticated with the admin token (run history and usage also with a project
//! credential). Who may call a handler is an extractor of its own (`auth`), and so
//! are ids, bodies and queries (`extract`); `error` turns every failure into the
//! JSON error answer. The routes and the OpenAPI document (`openapi`, served at
//! `GET /v1/openapi.json`) come from one list, `api()`.

pub(crate) mod api_keys;
mod approvals;
mod auth;
pub mod error;
mod extract;
mod health;
pub(crate) mod integrations;
pub(crate) mod member_keys;
mod member_sessions;
pub(crate) mod members;
mod oauth;
mod openapi;
pub(crate) mod projects;
pub(crate) mod redrive;
pub(crate) mod runs;
pub(crate) mod tools;
mod usage;

use std::sync::Arc;

use axum::{Router, extract::DefaultBodyLimit};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;

/// Every admin route with its documentation: `routes!` registers a handler with
/// axum and its `#[utoipa::path]` in the document together, so a route cannot be
/// served without being documented (nothing here uses `OpenApiRouter::route`).
/// Handlers sharing a path share one `routes!`.
fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(openapi::serve))
        .routes(routes!(projects::list, projects::create))
        .routes(routes!(projects::get, projects::patch))
        .routes(routes!(integrations::list, integrations::create))
        .routes(routes!(integrations::get, integrations::delete))
        .routes(routes!(integrations::create_key))
        .routes(routes!(api_keys::list, api_keys::create))
        .routes(routes!(api_keys::revoke))
        .routes(routes!(member_keys::list, member_keys::create))
        .routes(routes!(member_keys::delete))
        .routes(routes!(members::revoke_sessions))
        .routes(routes!(member_sessions::create))
        .routes(routes!(tools::list, tools::create))
        .routes(routes!(tools::get, tools::replace, tools::patch, tools::delete))
        .routes(routes!(tools::render::render))
        .routes({
            // Documents are large (GitHub's is 14 MB): the only route with a body limit above axum's 2 MB.
            let (schemas, paths, method) = routes!(tools::import::import);
            (
                schemas,
                paths,
                method.layer(DefaultBodyLimit::max(tools::import::DOCUMENT_MAX_BYTES)),
            )
        })
        .routes(routes!(runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(redrive::redrive))
        .routes(routes!(usage::usage))
        .routes(routes!(approvals::list))
        .routes(routes!(approvals::approve))
        .routes(routes!(approvals::reject))
        .routes(routes!(oauth::clients))
        .routes(routes!(oauth::grants))
        .routes(routes!(oauth::events))
        .routes(routes!(oauth::revoke_grant))
}

/// The admin routes (`/v1/…`), for the ingress's router.
pub fn routes() -> Router<Arc<AppState>> {
    api().split_for_parts().0
}

/// The admin API's OpenAPI document, as served at `GET /v1/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}
