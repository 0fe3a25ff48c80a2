//! The page frame: document head (the embedded stylesheet, inline), the header
//! with sign-out, a project's navigation, and the security headers every page
//! carries.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use tengine_control::projects::Project;

use super::auth::Session;

/// Compiled in: no file to ship, no CDN.
const STYLE: &str = include_str!("style.css");

/// A project's screens, in navigation order: (link name, path segment).
pub const SCREENS: [(&str, &str); 6] = [
    ("Overview", ""),
    ("Tools", "tools"),
    ("Runs", "runs"),
    ("Usage", "usage"),
    ("Credentials", "credentials"),
    ("Settings", "settings"),
];

/// A complete document; `header` is the signed-in frame, if any.
pub fn document(title: &str, header: Option<Markup>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tengine console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                @if let Some(header) = header { (header) }
                (body)
            }
        }
    }
}

/// The header of signed-in pages: home link and the sign-out form.
fn header(session: &Session) -> Markup {
    html! {
        header {
            a href=(session.base) { strong { "Tengine console" } }
            form method="post" action=(format!("{}/sign-out", session.base)) {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" { "Sign out" }
            }
        }
    }
}

/// A signed-in page (its session cookie refreshed: idle expiry restarts).
pub fn page(session: &Session, title: &str, body: Markup) -> Response {
    respond(
        session,
        document(title, Some(header(session)), html! { main { (body) } }),
    )
}

/// A page of one of a project's screens, under its navigation.
pub fn project_page(session: &Session, project: &Project, active: &str, body: Markup) -> Response {
    let root = format!("{}/projects/{}", session.base, project.id);
    let main = html! {
        main {
            p { a href=(session.base) { "Projects" } " / " (project.name) }
            nav.project aria-label="Project" {
                ul {
                    @for (name, segment) in SCREENS {
                        @let href = if segment.is_empty() { root.clone() } else { format!("{root}/{segment}") };
                        li { a href=(href) aria-current=[(name == active).then_some("page")] { (name) } }
                    }
                }
            }
            h1 { (active) }
            (body)
        }
    };
    let title = format!("{active} · {}", project.name);
    respond(session, document(&title, Some(header(session)), main))
}

fn respond(session: &Session, markup: Markup) -> Response {
    let mut response = (StatusCode::OK, Html(markup.into_string())).into_response();
    secure_headers(response.headers_mut());
    if let Ok(cookie) = HeaderValue::from_str(&session.refreshed_cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// No caching of pages that show project data; no framing; nothing loaded from
/// anywhere else (scripts only the console's own, `assets`); forms post only here.
pub fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'",
        ),
    );
}
