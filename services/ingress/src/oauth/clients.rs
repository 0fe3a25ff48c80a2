//! OAuth clients: dynamic registration (RFC 7591, unauthenticated, public clients
//! only) and Client ID Metadata Documents (an `https` client_id whose JSON names
//! the client and its redirect URIs), fetched through the project's outbound
//! address policy with size and time limits and cached in `oauth_clients`.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::Utc;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tengine_control::oauth::{self as store, Client, KIND_METADATA_DOCUMENT, KIND_REGISTERED, NewClient, ProjectOAuth};
use tengine_core::{
    addresses::{Policy, PolicyResolver},
    errors,
};
use url::Url;
use uuid::Uuid;

use super::{OAuthError, enabled_project, secret};
use crate::AppState;

/// Largest metadata document read (the CIMD draft suggests 5 kB).
pub const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
/// How long a fetch of a metadata document may take, all in all.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched document is used before it is fetched again.
const DOCUMENT_TTL_SECS: i64 = 600;
const MAX_REDIRECT_URIS: usize = 20;
const MAX_URI_BYTES: usize = 2048;
const MAX_NAME_CHARS: usize = 200;
const MAX_CLIENT_ID_BYTES: usize = 2048;

/// Client metadata (RFC 7591 §2), as registered or as a metadata document says.
#[derive(Debug, Deserialize)]
pub struct ClientMetadata {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    client_uri: Option<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    response_types: Option<Vec<String>>,
}

/// `POST {issuer}/register`: anyone may register a public client.
pub async fn register(
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    body: axum::body::Bytes,
) -> Response {
    match register_client(&st, project_id, &body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn register_client(st: &AppState, project_id: Uuid, body: &[u8]) -> Result<Response, OAuthError> {
    enabled_project(st, project_id).await?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(metadata_error(format!(
            "client metadata is larger than {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    let metadata: ClientMetadata =
        serde_json::from_slice(body).map_err(|e| metadata_error(format!("client metadata is not valid JSON ({e})")))?;
    check_metadata(&metadata)?;
    let client_id = secret("tng_oc_");
    let client = store::save_client(
        &st.pool,
        project_id,
        &NewClient {
            client_id: &client_id,
            kind: KIND_REGISTERED,
            client_name: metadata.client_name.as_deref(),
            client_uri: metadata.client_uri.as_deref(),
            redirect_uris: &metadata.redirect_uris,
        },
    )
    .await?;
    let mut answer = json!({
        "client_id": client.client_id,
        "client_id_issued_at": client.created_at.timestamp(),
        "redirect_uris": client.redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    // RFC 7591 §3.2.1: metadata the client did not give is absent, not null (SDKs refuse nulls).
    for (name, value) in [("client_name", client.client_name), ("client_uri", client.client_uri)] {
        if let Some(value) = value {
            answer[name] = json!(value);
        }
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

fn metadata_error(description: impl Into<String>) -> OAuthError {
    OAuthError::new(errors::OAUTH_INVALID_CLIENT_METADATA, description)
}

/// What a client may declare: public (no secret), code flow, sane redirect URIs.
fn check_metadata(metadata: &ClientMetadata) -> Result<(), OAuthError> {
    if let Some(method) = metadata.token_endpoint_auth_method.as_deref()
        && method != "none"
    {
        return Err(metadata_error(format!(
            "token_endpoint_auth_method `{method}` is not supported: clients here are public (`none`, with PKCE)"
        )));
    }
    if metadata
        .grant_types
        .as_ref()
        .is_some_and(|g| !g.iter().any(|g| g == "authorization_code"))
        || metadata
            .response_types
            .as_ref()
            .is_some_and(|r| !r.iter().any(|r| r == "code"))
    {
        return Err(metadata_error(
            "only the authorization code flow is supported (grant_types authorization_code, response_types code)",
        ));
    }
    let bad_name = |s: &String| s.chars().count() > MAX_NAME_CHARS || s.chars().any(char::is_control);
    // client_uri becomes a link on the consent page: a web page only.
    let bad_uri =
        |u: &String| u.len() > MAX_URI_BYTES || Url::parse(u).map_or(true, |u| !matches!(u.scheme(), "https" | "http"));
    if metadata.client_name.as_ref().is_some_and(bad_name) || metadata.client_uri.as_ref().is_some_and(bad_uri) {
        return Err(metadata_error(format!(
            "client_name is at most {MAX_NAME_CHARS} characters without control characters, and client_uri an \
             http(s) URL of at most {MAX_URI_BYTES} bytes"
        )));
    }
    if metadata.redirect_uris.is_empty() || metadata.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(OAuthError::new(
            errors::OAUTH_INVALID_REDIRECT_URI,
            format!("redirect_uris must list 1 to {MAX_REDIRECT_URIS} URIs"),
        ));
    }
    metadata
        .redirect_uris
        .iter()
        .try_for_each(|uri| check_redirect_uri(uri))
}

fn check_redirect_uri(raw: &str) -> Result<(), OAuthError> {
    let invalid = |why: &str| OAuthError::new(errors::OAUTH_INVALID_REDIRECT_URI, format!("`{raw}` {why}"));
    if raw.len() > MAX_URI_BYTES {
        return Err(invalid("is too long"));
    }
    let url = Url::parse(raw).map_err(|_| invalid("is not an absolute URI"))?;
    if url.fragment().is_some() {
        return Err(invalid("must not have a fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(&url) => Ok(()),
        "http" => Err(invalid(
            "must be https (http only on a loopback address, for native apps)",
        )),
        "javascript" | "data" | "file" | "vbscript" | "about" | "blob" => Err(invalid("has a forbidden scheme")),
        // Private-use schemes of native apps (`cursor://…`), as OAuth 2.1 allows.
        _ => Ok(()),
    }
}

/// `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether `requested` is one of the client's redirect URIs: the same string,
/// or a loopback `http` URI that differs only in its port (OAuth 2.1 §8.4.2:
/// native apps listen on whatever port they get).
pub fn redirect_uri_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(mut a), Ok(mut b)) = (Url::parse(registered), Url::parse(requested)) else {
        return false;
    };
    if a.scheme() != "http" || b.scheme() != "http" || !is_loopback_host(&a) || !is_loopback_host(&b) {
        return false;
    }
    a.set_port(None).is_ok() && b.set_port(None).is_ok() && a == b
}

/// The client named by `client_id`: a registered one, or the metadata document
/// at that https URL (from the cache while fresh). `invalid_client` otherwise.
pub async fn resolve(st: &AppState, project: &ProjectOAuth, client_id: &str) -> Result<Client, OAuthError> {
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(OAuthError::invalid_client("client_id is missing or too long"));
    }
    let cached = store::client(&st.pool, project.project_id, client_id).await?;
    let is_url = client_id.contains("://");
    match cached {
        Some(client) if client.kind == KIND_REGISTERED => Ok(client),
        Some(client) if Utc::now().signed_duration_since(client.fetched_at).num_seconds() < DOCUMENT_TTL_SECS => {
            Ok(client)
        }
        _ if is_url => fetch_client(st, project, client_id).await,
        _ => Err(OAuthError::invalid_client(
            "unknown client_id: register with POST {issuer}/register, or use an https URL of a client metadata document",
        )),
    }
}

async fn fetch_client(st: &AppState, project: &ProjectOAuth, client_id: &str) -> Result<Client, OAuthError> {
    let document = fetch_document(st, project, client_id)
        .await
        .map_err(|why| OAuthError::invalid_client(format!("client metadata document {client_id}: {why}")))?;
    let metadata: ClientMetadata = serde_json::from_slice(&document).map_err(|e| {
        OAuthError::invalid_client(format!("client metadata document {client_id} is not valid JSON ({e})"))
    })?;
    if metadata.client_id.as_deref() != Some(client_id) {
        return Err(OAuthError::invalid_client(format!(
            "the client metadata document at {client_id} must name itself as its client_id"
        )));
    }
    check_metadata(&metadata).map_err(|e| OAuthError::invalid_client(e.description))?;
    if metadata.client_name.as_deref().is_none_or(str::is_empty) {
        return Err(OAuthError::invalid_client(format!(
            "the client metadata document at {client_id} must have a client_name"
        )));
    }
    Ok(store::save_client(
        &st.pool,
        project.project_id,
        &NewClient {
            client_id,
            kind: KIND_METADATA_DOCUMENT,
            client_name: metadata.client_name.as_deref(),
            client_uri: metadata.client_uri.as_deref(),
            redirect_uris: &metadata.redirect_uris,
        },
    )
    .await?)
}

/// GETs the document: https only, a path other than `/`, through the project's
/// address policy (as tool calls), no redirects, at most [`MAX_DOCUMENT_BYTES`].
async fn fetch_document(st: &AppState, project: &ProjectOAuth, client_id: &str) -> Result<Vec<u8>, String> {
    let url = Url::parse(client_id).map_err(|e| format!("is not a URL ({e})"))?;
    if url.scheme() != "https" {
        return Err("must be an https URL".into());
    }
    if url.path() == "/" || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("must have a path, and no fragment or credentials".into());
    }
    let policy = Policy::for_project(st.config.allow_private_upstreams, &project.outbound_allowlist);
    policy
        .check_literal_host(&url)
        .map_err(|refused| format!("is on a forbidden address: {refused}"))?;
    let client = http_client(st, policy).map_err(|e| format!("cannot be fetched ({e})"))?;
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| describe(&e))?;
    if !response.status().is_success() {
        return Err(format!("answered HTTP {}", response.status().as_u16()));
    }
    if response.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
        return Err(format!("is larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| describe(&e))?;
        if body.len().saturating_add(chunk.len()) > MAX_DOCUMENT_BYTES {
            return Err(format!("is larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn http_client(st: &AppState, policy: Policy) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .dns_resolver(Arc::new(PolicyResolver {
            policy: Arc::new(policy),
        }))
        // A proxy would be the address the policy checks, not the document's.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("tengine/", env!("CARGO_PKG_VERSION")));
    if let Some(root) = &st.oauth_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder.build()
}

/// A fetch failure, naming the address policy when that was the cause.
fn describe(err: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<tengine_core::addresses::Refused>() {
            return format!("is on a forbidden address: {refused}");
        }
        source = current.source();
    }
    if err.is_timeout() {
        return format!("did not answer within {} s", FETCH_TIMEOUT.as_secs());
    }
    format!("could not be fetched ({err})")
}

#[cfg(test)]
mod tests {
    use super::redirect_uri_matches;

    #[test]
    fn loopback_redirect_uris_match_on_any_port_and_others_exactly() {
        assert!(redirect_uri_matches(
            "https://claude.ai/api/mcp/auth_callback",
            "https://claude.ai/api/mcp/auth_callback"
        ));
        assert!(!redirect_uri_matches("https://claude.ai/cb", "https://claude.ai/cb/"));
        assert!(!redirect_uri_matches(
            "https://claude.ai:443/cb",
            "https://claude.ai:8443/cb"
        ));
        assert!(redirect_uri_matches(
            "http://127.0.0.1/callback",
            "http://127.0.0.1:53123/callback"
        ));
        assert!(redirect_uri_matches(
            "http://localhost:3000/callback",
            "http://localhost:4000/callback"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/callback",
            "http://127.0.0.1:5/other"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/callback",
            "http://127.0.0.2.evil.example/callback"
        ));
    }
}
