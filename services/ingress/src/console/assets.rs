//! The console's script (`console.js`: the Runs live tail and the tool editor's
//! live preview), compiled into the binary and served from the console, so the
//! Content-Security-Policy allows scripts from 'self' only and nothing is loaded
//! from elsewhere.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};

const SCRIPT: &str = include_str!("console.js");
/// Part of the script's URL: a new build's script is never one cached from an older one.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /console/assets/console.js`.
pub async fn script_file() -> Response {
    let mut response = SCRIPT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The `<script>` element of a page that uses it.
pub fn script(base: &str) -> Markup {
    html! { script src=(format!("{base}/assets/console.js?v={VERSION}")) defer {} }
}
