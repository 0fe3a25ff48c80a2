//! Console sign-in with the admin token. The session cookie never holds the
//! token: it is `v1.<nonce>.<issued>.<seen>.<HMAC>` under a key derived from
//! `session_secret` and the admin token (so changing either ends every console
//! session). It is HttpOnly, SameSite=Strict, Secure when public_url is https,
//! refreshed by every page (idle expiry) and refused past an absolute age.
//! Forms carry a CSRF token derived from the session's nonce; the sign-in form
//! (before any session) uses a double-submit cookie.
//!
//! A project API key with the `read` scope signs in too, to a read-only session
//! of its project: the cookie names the key's id (never the key), the key is
//! checked live on every request (a revoked key ends the session), and the
//! extractor refuses every other project and every form but sign-out (403), so
//! no screen has to remember to.

use std::sync::Arc;

use axum::{
    Form,
    extract::{FromRequestParts, State},
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    response::{Html, IntoResponse, Redirect, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use maud::html;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tengine_control::principals;
use tengine_core::credentials::constant_time_eq;
use uuid::Uuid;

use super::{ConsoleError, base, layout};
use crate::{AppState, oauth::consent::cookie};

const SESSION_COOKIE: &str = "tengine_console";
const SIGN_IN_COOKIE: &str = "tengine_console_sign_in";
const VERSION_TAG: &str = "v2";
/// The `who` of an admin-token session (a key session names the key's id).
const ADMIN: &str = "admin";
/// A session unused this long is over.
const IDLE_SECS: i64 = 30 * 60;
/// A session is over this long after sign-in, used or not.
const MAX_AGE_SECS: i64 = 12 * 3600;
/// Longer cookie values and tokens are refused unread.
const MAX_LEN: usize = 512;

/// Signs and checks console session cookies and derives their CSRF tokens.
#[derive(Clone)]
pub struct ConsoleSessions {
    key: [u8; 32],
}

/// A verified session cookie's claims.
struct Claims {
    nonce: String,
    issued: i64,
    /// [`ADMIN`], or the id of the API key that signed in.
    who: String,
}

impl ConsoleSessions {
    pub fn new(session_secret: &[u8; 32], admin_token: &str) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(session_secret).expect("HMAC takes any key length");
        mac.update(b"tengine console session v1|");
        mac.update(&Sha256::digest(admin_token.as_bytes()));
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, label: &str, data: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(label.as_bytes());
        mac.update(data.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn value(&self, nonce: &str, issued: i64, seen: i64, who: &str) -> String {
        let signed = format!("{VERSION_TAG}.{nonce}.{issued}.{seen}.{who}");
        let sig = self.mac("session|", &signed);
        format!("{signed}.{sig}")
    }

    fn verify(&self, value: &str, now: i64) -> Option<Claims> {
        if value.len() > MAX_LEN {
            return None;
        }
        let (signed, sig) = value.rsplit_once('.')?;
        if !constant_time_eq(sig, &self.mac("session|", signed)) {
            return None;
        }
        let mut parts = signed.strip_prefix(VERSION_TAG)?.strip_prefix('.')?.split('.');
        let nonce = parts.next()?.to_string();
        let issued: i64 = parts.next()?.parse().ok()?;
        let seen: i64 = parts.next()?.parse().ok()?;
        let who = parts.next()?.to_string();
        let fresh = now.saturating_sub(seen) <= IDLE_SECS && now.saturating_sub(issued) <= MAX_AGE_SECS;
        (fresh && seen >= issued && seen <= now.saturating_add(60)).then_some(Claims { nonce, issued, who })
    }

    /// The CSRF token of a session's forms.
    fn csrf(&self, nonce: &str) -> String {
        self.mac("csrf|", nonce)
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `name=value` with the console's attributes; `max_age` 0 deletes it.
fn set_cookie(st: &AppState, name: &str, value: &str, path: &str, max_age: i64) -> String {
    let secure = if st.config.ingress.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// A signed-in operator. Pages that take it redirect to sign-in without one.
pub struct Session {
    /// The console's base path, for links.
    pub base: String,
    /// The CSRF token every form of the session carries.
    pub csrf: String,
    /// The session cookie with `seen` now (set on every page: idle expiry restarts).
    pub refreshed_cookie: String,
    /// A project key's read-only session: the one project it may see.
    pub project: Option<Uuid>,
}

impl Session {
    /// A project key's session: it sees, never changes.
    pub fn read_only(&self) -> bool {
        self.project.is_some()
    }

    /// Whether the session may see this project.
    pub fn may_see(&self, project_id: Uuid) -> bool {
        self.project.is_none_or(|own| own == project_id)
    }

    /// Refuses a form that changes something unless it comes from a writable
    /// session with its CSRF token (the extractor already refuses a read-only
    /// session's forms; this keeps each handler honest on its own).
    pub fn check_change(&self, sent: Option<&str>) -> Result<(), ConsoleError> {
        if self.read_only() {
            return Err(ConsoleError::forbidden(READ_ONLY));
        }
        self.check_csrf(sent)
    }

    /// Refuses a form whose CSRF token is missing or not this session's.
    pub fn check_csrf(&self, sent: Option<&str>) -> Result<(), ConsoleError> {
        match sent {
            Some(sent) if constant_time_eq(sent, &self.csrf) => Ok(()),
            _ => Err(ConsoleError::forbidden(
                "the form's CSRF token is missing or stale: reload the page and submit again",
            )),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, Response> {
        let base = base(st);
        let now = now();
        let claims = cookie(&parts.headers, SESSION_COOKIE).and_then(|v| st.console.verify(&v, now));
        let Some(claims) = claims else {
            return Err(Redirect::to(&format!("{base}/sign-in")).into_response());
        };
        let project = if claims.who == ADMIN {
            None
        } else {
            let Some(project) = key_project(st, &claims.who).await? else {
                return Err(Redirect::to(&format!("{base}/sign-in")).into_response());
            };
            read_only_allows(parts, &base, project).map_err(IntoResponse::into_response)?;
            Some(project)
        };
        let value = st.console.value(&claims.nonce, claims.issued, now, &claims.who);
        Ok(Session {
            csrf: st.console.csrf(&claims.nonce),
            refreshed_cookie: set_cookie(st, SESSION_COOKIE, &value, &base, IDLE_SECS),
            base,
            project,
        })
    }
}

const READ_ONLY: &str = "this console session is read-only (signed in with a project API key)";

/// The project of a key session's key, while the key is live and has `read`.
async fn key_project(st: &AppState, key_id: &str) -> Result<Option<Uuid>, Response> {
    let Ok(key_id) = key_id.parse::<Uuid>() else {
        return Ok(None);
    };
    let principal = principals::live_key(&st.pool, key_id)
        .await
        .map_err(|err| ConsoleError::from(err).into_response())?;
    Ok(principal
        .filter(|p| p.scopes.iter().any(|s| s == principals::SCOPE_READ))
        .map(|p| p.caller.project_id))
}

/// A read-only session reads its own project only, and sends no form but sign-out.
fn read_only_allows(parts: &Parts, base: &str, project: Uuid) -> Result<(), ConsoleError> {
    let path = parts.uri.path();
    let reads = parts.method == Method::GET || parts.method == Method::HEAD;
    if !reads && path != format!("{base}/sign-out") {
        return Err(ConsoleError::forbidden(READ_ONLY));
    }
    let other_project = path
        .strip_prefix(&format!("{base}/projects/"))
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|id| id != project.to_string());
    if other_project {
        return Err(ConsoleError::not_found("project"));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct SignInForm {
    csrf: Option<String>,
    token: Option<String>,
}

/// `GET /console/sign-in`: one password field for the admin token.
pub async fn sign_in_page(State(st): State<Arc<AppState>>) -> Response {
    sign_in_form(&st, StatusCode::OK, None)
}

fn sign_in_form(st: &AppState, status: StatusCode, problem: Option<&str>) -> Response {
    let base = base(st);
    let csrf = random_token();
    let body = html! {
        main {
            h1 { "Sign in to the Tengine console" }
            @if let Some(problem) = problem { p role="alert" id="problem" { (problem) } }
            p { "With the admin token you manage every project; with a project API key that has the "
                code { "read" } " scope you see that project, read-only." }
            form method="post" action=(format!("{base}/sign-in")) {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "Admin token or project API key" }
                input type="password" id="token" name="token" autocomplete="current-password" required
                    aria-describedby=[problem.map(|_| "problem")];
                p { button type="submit" { "Sign in" } }
            }
        }
    };
    let cookie = set_cookie(st, SIGN_IN_COOKIE, &csrf, &format!("{base}/sign-in"), 15 * 60);
    let mut response = (
        status,
        [(header::SET_COOKIE, cookie)],
        Html(layout::document("Sign in", None, body).into_string()),
    )
        .into_response();
    layout::secure_headers(response.headers_mut());
    response
}

/// `POST /console/sign-in`: the admin token (and the form's CSRF token) for a session cookie.
pub async fn sign_in(State(st): State<Arc<AppState>>, headers: HeaderMap, Form(form): Form<SignInForm>) -> Response {
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    let csrf = form.csrf.unwrap_or_default();
    if csrf.is_empty() || !constant_time_eq(&csrf, &expected) {
        return ConsoleError::forbidden(
            "the sign-in form's CSRF token is missing or stale: open the sign-in page again",
        )
        .into_response();
    }
    if st.config.admin_token.is_empty() {
        return sign_in_form(
            &st,
            StatusCode::FORBIDDEN,
            Some("the console is disabled: set TENGINE_ADMIN_TOKEN on the ingress"),
        );
    }
    let token = form.token.unwrap_or_default();
    let who = if token.len() > MAX_LEN {
        None
    } else if constant_time_eq(&token, &st.config.admin_token) {
        Some(ADMIN.to_string())
    } else {
        match principals::authenticate_api_key(&st.pool, &token).await {
            Ok(Some(key)) if key.scopes.iter().any(|s| s == principals::SCOPE_READ) => {
                Some(key.caller.api_key_id.to_string())
            }
            Ok(Some(_)) => {
                tracing::warn!("console sign-in refused: an API key without the read scope");
                return sign_in_form(
                    &st,
                    StatusCode::FORBIDDEN,
                    Some("That API key lacks the read scope the console needs."),
                );
            }
            Ok(None) => None,
            Err(err) => return ConsoleError::from(err).into_response(),
        }
    };
    let Some(who) = who else {
        tracing::warn!("console sign-in refused: wrong admin token or API key");
        return sign_in_form(
            &st,
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token. Nor is it a live project API key."),
        );
    };
    let base = base(&st);
    let now = now();
    let value = st.console.value(&random_token(), now, now, &who);
    let session = set_cookie(&st, SESSION_COOKIE, &value, &base, IDLE_SECS);
    let cleared = set_cookie(&st, SIGN_IN_COOKIE, "", &format!("{base}/sign-in"), 0);
    tracing::info!(read_only = who != ADMIN, "console sign-in");
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, base)]).into_response();
    // Appended: a header array would keep only the last `Set-Cookie`.
    for cookie in [session, cleared] {
        if let Ok(value) = header::HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// A form that carries nothing but its CSRF token (sign-out, confirmations).
#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

/// `POST /console/sign-out`: clears the session cookie.
pub async fn sign_out(
    session: Session,
    State(st): State<Arc<AppState>>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(form.csrf.as_deref())?;
    let cleared = set_cookie(&st, SESSION_COOKIE, "", &session.base, 0);
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, format!("{}/sign-in", session.base)),
            (header::SET_COOKIE, cleared),
        ],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_expire_and_are_bound_to_the_keys() {
        let sessions = ConsoleSessions::new(&[1; 32], "s3cret-token");
        let t = 1_000_000;
        let value = sessions.value("nonce", t, t, ADMIN);
        assert!(!value.contains("s3cret-token"));
        assert!(sessions.verify(&value, t + 10).is_some());
        assert!(sessions.verify(&value, t + IDLE_SECS + 1).is_none(), "idle");
        let refreshed = sessions.value("nonce", t, t + MAX_AGE_SECS, ADMIN);
        assert!(
            sessions.verify(&refreshed, t + MAX_AGE_SECS + 1).is_none(),
            "absolute age"
        );
        assert!(
            ConsoleSessions::new(&[1; 32], "other").verify(&value, t).is_none(),
            "admin token"
        );
        assert!(
            ConsoleSessions::new(&[2; 32], "s3cret-token")
                .verify(&value, t)
                .is_none(),
            "secret"
        );
        let forged = value.replacen(&t.to_string(), &(t + 5).to_string(), 1);
        assert!(sessions.verify(&forged, t + 10).is_none());
        assert_ne!(sessions.csrf("a"), sessions.csrf("b"));
        // Who signed in is signed too: an admin session cannot be forged from a key's.
        let key_session = sessions.value("nonce", t, t, "0190a4d2-0000-7000-8000-000000000000");
        let forged = key_session.replace("0190a4d2-0000-7000-8000-000000000000", ADMIN);
        assert!(sessions.verify(&forged, t + 1).is_none());
    }
}
