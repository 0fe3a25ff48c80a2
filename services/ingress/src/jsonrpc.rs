//! The JSON-RPC layer under MCP: errors (an HTTP status plus a JSON-RPC error
//! object, codes from `tengine_core::errors`) and success responses. It knows
//! nothing of MCP's methods.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tengine_core::errors::{self, RpcCode};

/// A failed request: an HTTP status plus a JSON-RPC error object (and, for some,
/// response headers).
#[derive(Debug)]
pub struct RpcError {
    status: StatusCode,
    id: Value,
    code: i32,
    message: String,
    pub(crate) data: Option<Value>,
    /// Response headers of this error (`WWW-Authenticate` on 401s, `Retry-After` on 429s).
    pub(crate) headers: Vec<(header::HeaderName, String)>,
}

impl RpcError {
    /// An error with a code of the catalogue (the only codes Tengine answers with).
    pub(crate) fn new(status: StatusCode, code: RpcCode, message: impl Into<String>) -> Self {
        Self {
            status,
            id: Value::Null,
            code: code.code,
            message: message.into(),
            data: None,
            headers: Vec::new(),
        }
    }

    pub(crate) fn with_id(mut self, id: &Value) -> Self {
        self.id = id.clone();
        self
    }

    pub(crate) fn invalid_request(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, errors::RPC_INVALID_REQUEST, message)
    }

    pub(crate) fn invalid_params(id: &Value, message: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, errors::INVALID_PARAMS, message).with_id(id)
    }

    /// 400, -32021 (revision 2026-07-28): `what` needs client capabilities the
    /// request did not declare; `required` is a ClientCapabilities object.
    pub(crate) fn missing_capability(id: &Value, required: Value, what: &str) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            errors::MISSING_CAPABILITY,
            format!("{what} needs client capabilities this request did not declare: {required}"),
        )
        .with_id(id);
        err.data = Some(json!({"requiredCapabilities": required}));
        err
    }

    pub(crate) fn internal(id: &Value, message: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, errors::INTERNAL_ERROR, message).with_id(id)
    }
}

impl RpcError {
    /// The JSON-RPC error response (for a stream that already answered HTTP 200).
    pub(crate) fn message(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        json!({"jsonrpc": "2.0", "id": self.id, "error": error})
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.message())).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

pub(crate) type RpcResult<T> = Result<T, RpcError>;

/// A JSON-RPC success response.
pub(crate) fn result(id: &Value, result: Value) -> Response {
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

/// A parsed JSON-RPC message (one per POST: batches were removed in MCP 2025-06-18).
pub(crate) enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// A response (`result` or `error`, no `method`) to a server request.
    Response {
        id: Value,
        message: Value,
    },
}

/// Parses and checks the envelope: JSON (-32700), one object, `"jsonrpc": "2.0"`,
/// an `id` that is a string or a number, a `method` (-32600; all HTTP 400).
pub(crate) fn parse(bytes: &[u8]) -> RpcResult<Incoming> {
    let bad = |message: &str| RpcError::invalid_request(StatusCode::BAD_REQUEST, message);
    let message: Value = serde_json::from_slice(bytes).map_err(|e| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            errors::PARSE_ERROR,
            format!("the body is not valid JSON ({e})"),
        )
    })?;
    let Value::Object(mut message) = message else {
        return Err(if message.is_array() {
            bad("JSON-RPC batches are not supported (removed in MCP 2025-06-18); send one message per POST")
        } else {
            bad("a JSON-RPC message must be a JSON object")
        });
    };
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad("the message must carry \"jsonrpc\": \"2.0\""));
    }
    let id = match message.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => return Err(bad("\"id\" must be a string or an integer")),
    };
    let params = message.remove("params");
    match (message.get("method").and_then(Value::as_str), id) {
        (Some(method), Some(id)) => Ok(Incoming::Request {
            id,
            method: method.to_string(),
            params,
        }),
        (Some(method), None) => Ok(Incoming::Notification {
            method: method.to_string(),
            params,
        }),
        (None, id) if message.contains_key("result") || message.contains_key("error") => Ok(Incoming::Response {
            id: id.unwrap_or(Value::Null),
            message: Value::Object(message),
        }),
        (None, _) => Err(bad("the message has no \"method\"")),
    }
}
