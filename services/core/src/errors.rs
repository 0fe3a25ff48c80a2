//! Every error code Tengine answers with, declared once: the admin API's string
//! codes and the JSON-RPC codes of the MCP endpoint, each with its HTTP status and
//! a one-line meaning. The services use only these declarations; docs/errors.md's
//! tables are checked against this catalogue by a test.

/// An admin API error code (`{"error": {"code", "message", "field"?}}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminCode {
    pub code: &'static str,
    pub status: u16,
    pub meaning: &'static str,
}

/// A JSON-RPC error code of the MCP endpoint. `status` is the usual HTTP status
/// (some codes are answered with several; the docs list each situation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcCode {
    pub code: i32,
    pub name: &'static str,
    pub status: u16,
    pub meaning: &'static str,
}

pub const INVALID_REQUEST: AdminCode = AdminCode {
    code: "invalid_request",
    status: 400,
    meaning: "malformed JSON body, unknown fields, a path id that is not a UUID, a malformed query string or cursor",
};
pub const UNAUTHORIZED: AdminCode = AdminCode {
    code: "unauthorized",
    status: 401,
    meaning: "missing or wrong admin token (or credential, for reads and member-session exchange)",
};
pub const INVALID_ASSERTION: AdminCode = AdminCode {
    code: "invalid_assertion",
    status: 401,
    meaning: "POST /v1/member-sessions: the member assertion was refused; the message says why",
};
pub const ADMIN_DISABLED: AdminCode = AdminCode {
    code: "admin_disabled",
    status: 403,
    meaning: "admin_token is empty: the admin API is off",
};
pub const NOT_FOUND: AdminCode = AdminCode {
    code: "not_found",
    status: 404,
    meaning: "the resource does not exist, or is not the caller's",
};
pub const CONFLICT: AdminCode = AdminCode {
    code: "conflict",
    status: 409,
    meaning: "a resource with that name or id already exists, or the change would break an invariant",
};
pub const INVALID_FIELD: AdminCode = AdminCode {
    code: "invalid_field",
    status: 422,
    meaning: "a field failed validation; `field` names it",
};
pub const INVALID_ARGUMENTS: AdminCode = AdminCode {
    code: "invalid_arguments",
    status: 422,
    meaning: "render: the arguments fail the tool's schema or a template",
};
pub const REDRIVE_UNAVAILABLE: AdminCode = AdminCode {
    code: "redrive_unavailable",
    status: 409,
    meaning: "re-drive: the run has not finished, or its arguments were not kept whole (bodies not stored, redacted or cut)",
};
pub const REDRIVE_REFUSED: AdminCode = AdminCode {
    code: "redrive_refused",
    status: 422,
    meaning: "re-drive: the call path refused the new call (tool, credential, arguments, quota, approval); the message says why",
};
pub const PAYLOAD_TOO_LARGE: AdminCode = AdminCode {
    code: "payload_too_large",
    status: 413,
    meaning: "the request body is larger than the endpoint accepts (2 MiB; an OpenAPI import 64 MiB)",
};
pub const INTERNAL: AdminCode = AdminCode {
    code: "internal",
    status: 500,
    meaning: "a fault inside Tengine; see the server log",
};

pub const ADMIN_CODES: &[AdminCode] = &[
    INVALID_REQUEST,
    UNAUTHORIZED,
    INVALID_ASSERTION,
    ADMIN_DISABLED,
    NOT_FOUND,
    CONFLICT,
    INVALID_FIELD,
    INVALID_ARGUMENTS,
    REDRIVE_UNAVAILABLE,
    REDRIVE_REFUSED,
    PAYLOAD_TOO_LARGE,
    INTERNAL,
];

pub const PARSE_ERROR: RpcCode = RpcCode {
    code: -32700,
    name: "Parse error",
    status: 400,
    meaning: "the body is not JSON",
};
pub const RPC_INVALID_REQUEST: RpcCode = RpcCode {
    code: -32600,
    name: "Invalid request",
    status: 400,
    meaning: "a transport or envelope check failed (Host, Origin, Accept, Content-Type, size, batch, session)",
};
pub const METHOD_NOT_FOUND: RpcCode = RpcCode {
    code: -32601,
    name: "Method not found",
    status: 200,
    meaning: "the method is not served",
};
pub const INVALID_PARAMS: RpcCode = RpcCode {
    code: -32602,
    name: "Invalid params",
    status: 200,
    meaning: "malformed params, an unknown or unavailable tool, a bad cursor or idempotency key",
};
pub const INTERNAL_ERROR: RpcCode = RpcCode {
    code: -32603,
    name: "Internal error",
    status: 200,
    meaning: "a dependency failed (database, NATS) or the call is not queued yet: retry",
};
pub const QUOTA_EXCEEDED: RpcCode = RpcCode {
    code: -32029,
    name: "Quota exceeded",
    status: 200,
    meaning: "a quota of the project or member is exhausted; `error.data` says which and when it resets",
};
/// Not -32001: the official SDKs use that for their own request timeouts.
pub const RPC_UNAUTHORIZED: RpcCode = RpcCode {
    code: -32040,
    name: "Unauthorized",
    status: 401,
    meaning: "no credential, an unknown or revoked one, or one without the `call` scope (403)",
};

/// MCP 2026-07-28: a request-metadata header is missing, malformed, or does not
/// match the body (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`).
pub const HEADER_MISMATCH: RpcCode = RpcCode {
    code: -32020,
    name: "Header mismatch",
    status: 400,
    meaning: "a request-metadata header is missing, malformed, or differs from the body (2026-07-28)",
};
/// MCP 2026-07-28: serving the request needs a client capability the request did not declare.
pub const MISSING_CAPABILITY: RpcCode = RpcCode {
    code: -32021,
    name: "Missing required client capability",
    status: 400,
    meaning: "the request needs a client capability it did not declare; `data.requiredCapabilities` names it",
};
/// MCP 2026-07-28: the requested protocol version is not served.
pub const UNSUPPORTED_VERSION: RpcCode = RpcCode {
    code: -32022,
    name: "Unsupported protocol version",
    status: 400,
    meaning: "the protocol version is not served; `data.supported` lists those that are",
};

pub const RPC_CODES: &[RpcCode] = &[
    PARSE_ERROR,
    RPC_INVALID_REQUEST,
    METHOD_NOT_FOUND,
    INVALID_PARAMS,
    INTERNAL_ERROR,
    QUOTA_EXCEEDED,
    RPC_UNAUTHORIZED,
    HEADER_MISMATCH,
    MISSING_CAPABILITY,
    UNSUPPORTED_VERSION,
];

/// An OAuth error of a project's authorization server (RFC 6749 §5.2 and the RFCs
/// that extend it): `{"error", "error_description"}` from the token, revocation and
/// registration endpoints, an HTML page at the browser steps. A code may be
/// answered with several statuses; each pair is declared once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OAuthCode {
    pub error: &'static str,
    pub status: u16,
    pub meaning: &'static str,
}

pub const OAUTH_INVALID_REQUEST: OAuthCode = OAuthCode {
    error: "invalid_request",
    status: 400,
    meaning: "a parameter is missing or malformed; an unregistered redirect URI; a login unknown, expired or used",
};
pub const OAUTH_CSRF: OAuthCode = OAuthCode {
    error: "invalid_request",
    status: 403,
    meaning: "the consent form's CSRF token is missing or does not match its cookie",
};
pub const OAUTH_INVALID_CLIENT: OAuthCode = OAuthCode {
    error: "invalid_client",
    status: 401,
    meaning: "unknown client_id, or a client metadata document that cannot be used (not https, too large, \
              forbidden address, malformed), or a client the project does not allow",
};
pub const OAUTH_INVALID_GRANT: OAuthCode = OAuthCode {
    error: "invalid_grant",
    status: 400,
    meaning: "code or refresh token unknown, expired, used (reuse revokes the grant), of another client, or a \
              PKCE verifier that is missing or wrong",
};
pub const OAUTH_INVALID_TARGET: OAuthCode = OAuthCode {
    error: "invalid_target",
    status: 400,
    meaning: "`resource` is not the resource that was authorized (this project's MCP endpoint)",
};
pub const OAUTH_UNSUPPORTED_GRANT_TYPE: OAuthCode = OAuthCode {
    error: "unsupported_grant_type",
    status: 400,
    meaning: "grant_type is neither authorization_code nor refresh_token",
};
pub const OAUTH_INVALID_CLIENT_METADATA: OAuthCode = OAuthCode {
    error: "invalid_client_metadata",
    status: 400,
    meaning: "a registration that is not JSON, too large, or asks for a secret or another flow",
};
pub const OAUTH_INVALID_REDIRECT_URI: OAuthCode = OAuthCode {
    error: "invalid_redirect_uri",
    status: 400,
    meaning: "a registration without redirect URIs, or with one that is not https (http only on loopback)",
};
pub const OAUTH_ACCESS_DENIED: OAuthCode = OAuthCode {
    error: "access_denied",
    status: 400,
    meaning: "the member assertion of the login was refused (signature, project, expiry, replay, `tengine_login`)",
};
pub const OAUTH_NOT_FOUND: OAuthCode = OAuthCode {
    error: "not_found",
    status: 404,
    meaning: "no project with OAuth enabled at this issuer",
};
pub const OAUTH_UNAVAILABLE: OAuthCode = OAuthCode {
    error: "temporarily_unavailable",
    status: 503,
    meaning: "storage unavailable, or too many pending authorizations or clients; retry later",
};

pub const OAUTH_CODES: &[OAuthCode] = &[
    OAUTH_INVALID_REQUEST,
    OAUTH_CSRF,
    OAUTH_INVALID_CLIENT,
    OAUTH_INVALID_GRANT,
    OAUTH_INVALID_TARGET,
    OAUTH_UNSUPPORTED_GRANT_TYPE,
    OAUTH_INVALID_CLIENT_METADATA,
    OAUTH_INVALID_REDIRECT_URI,
    OAUTH_ACCESS_DENIED,
    OAUTH_NOT_FOUND,
    OAUTH_UNAVAILABLE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_declared_once() {
        let mut admin: Vec<_> = ADMIN_CODES.iter().map(|c| c.code).collect();
        admin.sort_unstable();
        admin.dedup();
        assert_eq!(admin.len(), ADMIN_CODES.len());
        let mut rpc: Vec<_> = RPC_CODES.iter().map(|c| c.code).collect();
        rpc.sort_unstable();
        rpc.dedup();
        assert_eq!(rpc.len(), RPC_CODES.len());
        let mut oauth: Vec<_> = OAUTH_CODES.iter().map(|c| (c.error, c.status)).collect();
        oauth.sort_unstable();
        oauth.dedup();
        assert_eq!(oauth.len(), OAUTH_CODES.len());
    }
}
