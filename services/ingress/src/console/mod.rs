//! The web console under `/console`: server-rendered HTML (maud), no JavaScript,
//! no external resources. One module per screen; each adds its routes to
//! [`routes`] and renders its body into [`layout::page`] (or
//! [`layout::project_page`] for a project's screens).

mod assets;
pub mod auth;
mod chart;
mod credentials;
mod error;
mod layout;
mod live;
mod members;
mod projects;
mod redrive;
mod runs;
mod settings;
mod snippets;
mod tool_form;
mod tools;
mod usage;

use std::sync::Arc;

use axum::{
    Router,
    routing::{get, post},
};

pub use auth::ConsoleSessions;
pub use error::ConsoleError;

use crate::AppState;

/// Rows shown per list page at most (lists paginate past it).
const PAGE_MAX: usize = 100;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(projects::list))
        .route("/console/sign-in", get(auth::sign_in_page).post(auth::sign_in))
        .route("/console/sign-out", post(auth::sign_out))
        .route("/console/projects/{project_id}", get(projects::overview))
        .route("/console/projects/{project_id}/tools", get(tools::list))
        .route(
            "/console/projects/{project_id}/tools/{name}/enabled",
            post(tools::set_enabled),
        )
        .route(
            "/console/projects/{project_id}/tools/{name}/delete",
            get(tools::confirm_delete).post(tools::delete),
        )
        .route("/console/projects/{project_id}/runs", get(runs::list))
        .route("/console/projects/{project_id}/runs/{run_id}", get(runs::detail))
        .route("/console/projects/{project_id}/usage", get(usage::show))
        .route("/console/projects/{project_id}/usage.csv", get(usage::csv))
        .route("/console/projects/{project_id}/credentials", get(credentials::show))
        .route("/console/projects/{project_id}/api-keys", post(credentials::create))
        .route(
            "/console/projects/{project_id}/api-keys/{key_id}/revoke",
            get(credentials::confirm_revoke).post(credentials::revoke),
        )
        .merge(tools_and_runs())
        .merge(screens())
}

/// The tool editor, the Runs live tail and re-drive, and the script they use.
fn tools_and_runs() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console/assets/console.js", get(assets::script_file))
        .route(
            "/console/projects/{project_id}/tools/new",
            get(tool_form::new).post(tool_form::create),
        )
        .route(
            "/console/projects/{project_id}/tools/{name}/edit",
            get(tool_form::edit).post(tool_form::update),
        )
        .route("/console/projects/{project_id}/tools/preview", post(tool_form::preview))
        .route("/console/projects/{project_id}/runs.stream", get(live::tail))
        .route(
            "/console/projects/{project_id}/runs/{run_id}/redrive",
            get(redrive::confirm).post(redrive::redrive),
        )
}

/// Overview, Usage, Credentials and Settings: their forms and pages.
fn screens() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/console/projects/{project_id}/settings",
            get(settings::show).post(settings::save),
        )
        .route("/console/projects/{project_id}/member-keys", post(members::add))
        .route(
            "/console/projects/{project_id}/member-keys/revoke",
            post(members::revoke),
        )
        .route(
            "/console/projects/{project_id}/members/revoke",
            post(members::revoke_sessions),
        )
}

/// The console's base path (`/console`, behind public_url's path prefix if any).
pub fn base(st: &AppState) -> String {
    let prefix = url::Url::parse(&st.config.ingress.public_url)
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    format!("{prefix}/console")
}
