//! The caller of an MCP request: an API key or a member session token, checked
//! against PostgreSQL on every request; 401s name where the metadata is.

use axum::http::{HeaderMap, StatusCode, header};
use tengine_control::principals::Principal;
use tengine_core::{credentials, errors};

use super::Endpoint;
use crate::{
    AppState,
    jsonrpc::{RpcError, RpcResult},
    members,
};

pub(crate) fn unauthorized(st: &AppState, endpoint: Endpoint, message: &str, token_given: bool) -> RpcError {
    let mut err = RpcError::new(StatusCode::UNAUTHORIZED, errors::RPC_UNAUTHORIZED, message);
    let metadata = crate::oauth::resource_metadata_url(st, endpoint);
    let challenge = if token_given {
        format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata}\"")
    } else {
        format!("Bearer resource_metadata=\"{metadata}\"")
    };
    err.headers.push((header::WWW_AUTHENTICATE, challenge));
    err
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller of a request to `endpoint`: a credential of another project, or an
/// OAuth access token for another resource (RFC 8707 audience), is refused.
pub(crate) async fn authenticate(st: &AppState, endpoint: Endpoint, headers: &HeaderMap) -> RpcResult<Principal> {
    let principal = authenticate_any(st, endpoint, headers).await?;
    if endpoint.is_some_and(|project| project != principal.caller.project_id) {
        return Err(unauthorized(
            st,
            endpoint,
            "this credential belongs to another project than this MCP endpoint's",
            true,
        ));
    }
    Ok(principal)
}

async fn authenticate_any(st: &AppState, endpoint: Endpoint, headers: &HeaderMap) -> RpcResult<Principal> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(
            st,
            endpoint,
            "missing credentials: send `Authorization: Bearer tengine_…` (API key) or `Bearer tng_mst_…` (member session)",
            false,
        ));
    };
    let found = if token.starts_with(members::TOKEN_PREFIX) {
        let verified = st
            .members
            .verify_bound(token)
            .map_err(|e| unauthorized(st, endpoint, &e.to_string(), true))?;
        if verified
            .audience
            .as_ref()
            .is_some_and(|aud| *aud != crate::oauth::resource_url(st, endpoint))
        {
            return Err(unauthorized(
                st,
                endpoint,
                "this OAuth access token was issued for another MCP endpoint (its resource)",
                true,
            ));
        }
        st.principals.member(verified.api_key_id, verified.member).await
    } else if credentials::looks_like_api_key(token) {
        st.principals.api_key(token).await
    } else {
        return Err(unauthorized(
            st,
            endpoint,
            "the bearer token is neither a Tengine API key (`tengine_…`) nor a member session (`tng_mst_…`)",
            true,
        ));
    };
    match found {
        Ok(Some(principal)) if !principal.may_call() => Err(RpcError::new(
            StatusCode::FORBIDDEN,
            errors::RPC_UNAUTHORIZED,
            "this API key has no `call` scope (it may only read run history and usage): use a key created with \
             \"scopes\": [\"call\"] for MCP",
        )),
        Ok(Some(principal)) => Ok(principal),
        Ok(None) => Err(unauthorized(
            st,
            endpoint,
            "the credential is unknown or revoked (API key, integration or member sessions)",
            true,
        )),
        Err(err) => {
            tracing::error!(error = %err, "authenticating a credential");
            Err(RpcError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                errors::INTERNAL_ERROR,
                "credentials could not be checked right now; retry",
            ))
        }
    }
}
