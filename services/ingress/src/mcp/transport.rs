//! Transport checks every MCP request passes before its method: Host and Origin
//! (DNS rebinding), Accept, Content-Type, body size, `MCP-Protocol-Version`.

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
};
use serde_json::Value;

use super::{HEADER_PROTOCOL_VERSION, SUPPORTED_VERSIONS};
use crate::{
    AppState,
    jsonrpc::{RpcError, RpcResult},
};

/// True for names that only ever reach this machine.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Host (without port) of a `scheme://host[:port]` origin or a `host[:port]` value.
pub(crate) fn host_of(value: &str) -> Option<String> {
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    url::Url::parse(&with_scheme).ok()?.host_str().map(str::to_string)
}

/// DNS-rebinding protection: the Host must be this server's public host, an
/// allowed host or a loopback name; a browser Origin must be this server's, an
/// allowed origin or a loopback one. Failures are 403.
pub(crate) fn check_host_and_origin(st: &AppState, headers: &HeaderMap) -> RpcResult<()> {
    let public = url::Url::parse(&st.config.ingress.public_url).ok();
    // One Host, readable (RFC 9112 §3.2: 400 otherwise); a second one must not
    // slip past the check of the first.
    let mut hosts = headers.get_all(header::HOST).iter();
    let host =
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => {
                return Err(RpcError::invalid_request(
                    StatusCode::BAD_REQUEST,
                    "the request has more than one Host header",
                ));
            }
            (Some(host), None) => Some(host.to_str().map_err(|_| {
                RpcError::invalid_request(StatusCode::BAD_REQUEST, "the Host header is not visible ASCII")
            })?),
            _ => None,
        };
    if let Some(host) = host {
        let name = host_of(host).unwrap_or_default();
        let allowed = is_loopback_host(&name)
            || public
                .as_ref()
                .and_then(|u| u.host_str())
                .is_some_and(|h| h.eq_ignore_ascii_case(&name))
            || st
                .config
                .ingress
                .allowed_hosts
                .iter()
                .any(|h| h == "*" || h.eq_ignore_ascii_case(&name) || h.eq_ignore_ascii_case(host));
        if !allowed {
            return Err(RpcError::invalid_request(
                StatusCode::FORBIDDEN,
                format!(
                    "Host `{host}` is not served here; add it to ingress.allowed_hosts (TENGINE_INGRESS__ALLOWED_HOSTS)"
                ),
            ));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let own = public.map(|u| u.origin().ascii_serialization()).unwrap_or_default();
    let allowed = origin == own
        || host_of(origin).is_some_and(|h| is_loopback_host(&h))
        || st
            .config
            .ingress
            .allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/') == origin);
    if allowed {
        Ok(())
    } else {
        Err(RpcError::invalid_request(
            StatusCode::FORBIDDEN,
            format!(
                "Origin `{origin}` is not allowed; add it to ingress.allowed_origins (TENGINE_INGRESS__ALLOWED_ORIGINS)"
            ),
        ))
    }
}

/// True when a comma-separated Accept header allows `wanted` (`type/subtype`).
pub(crate) fn accepts(accept: &str, wanted: &str) -> bool {
    let (wanted_type, _) = wanted.split_once('/').unwrap_or((wanted, ""));
    accept.split(',').any(|range| {
        let range = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        range == wanted || range == "*/*" || range == format!("{wanted_type}/*")
    })
}

pub(crate) fn check_accept(headers: &HeaderMap) -> RpcResult<()> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accepts(accept, "application/json") && accepts(accept, "text/event-stream") {
        Ok(())
    } else {
        Err(RpcError::invalid_request(
            StatusCode::NOT_ACCEPTABLE,
            "the Accept header must list both application/json and text/event-stream",
        ))
    }
}

pub(crate) fn check_content_type(headers: &HeaderMap) -> RpcResult<()> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(RpcError::invalid_request(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ))
    }
}

pub(crate) async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> RpcResult<bytes::Bytes> {
    let too_large = || {
        RpcError::invalid_request(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {limit} bytes (ingress.max_request_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        if err.into_inner().is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            // The client stopped sending (`tengine_core::serving::BODY_STALL_TIMEOUT`) or went away.
            RpcError::invalid_request(
                StatusCode::BAD_REQUEST,
                "the request body could not be read: the client stopped sending it or closed the connection",
            )
        }
    })
}

pub(crate) fn check_protocol_version(headers: &HeaderMap, id: &Value) -> RpcResult<()> {
    let Some(version) = headers.get(HEADER_PROTOCOL_VERSION) else {
        // Absent: the client speaks 2025-03-26, which we support.
        return Ok(());
    };
    let version = version.to_str().unwrap_or_default();
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(RpcError::invalid_request(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported MCP-Protocol-Version `{version}`; supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        )
        .with_id(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_matching() {
        assert!(accepts("application/json, text/event-stream", "text/event-stream"));
        assert!(accepts("*/*", "application/json"));
        assert!(accepts("text/*;q=0.5", "text/event-stream"));
        assert!(!accepts("application/json", "text/event-stream"));
        assert!(!accepts("", "application/json"));
    }
}
