//! Tool specs as the admin API takes them (`POST /v1/projects/{id}/tools`), built
//! one way by every test and by the load generator: the required fields up front,
//! then only what a test varies.

use serde_json::{Map, Value, json};

/// A tool spec as JSON. Only what was set is sent, so the server's defaults apply
/// to the rest as they would to an owner's spec. Not checked here: validation
/// tests build bad specs with [`ToolSpec::field`] and [`ToolSpec::without`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ToolSpec(Map<String, Value>);

impl ToolSpec {
    /// A tool calling `method` (as the API spells it: "GET", "POST", ...) on
    /// `base_url` + `endpoint_path`, taking any object (`{"type": "object"}`)
    /// until [`ToolSpec::schema`] says otherwise.
    pub fn new(name: &str, method: &str, base_url: &str, endpoint_path: &str) -> Self {
        let mut spec = Map::new();
        spec.insert("name".into(), json!(name));
        spec.insert("input_schema".into(), json!({"type": "object"}));
        spec.insert("base_url".into(), json!(base_url));
        spec.insert("http_method".into(), json!(method));
        spec.insert("endpoint_path".into(), json!(endpoint_path));
        Self(spec)
    }

    pub fn get(name: &str, base_url: &str, endpoint_path: &str) -> Self {
        Self::new(name, "GET", base_url, endpoint_path)
    }

    pub fn post(name: &str, base_url: &str, endpoint_path: &str) -> Self {
        Self::new(name, "POST", base_url, endpoint_path)
    }

    pub fn description(self, text: &str) -> Self {
        self.field("description", text)
    }

    pub fn title(self, text: &str) -> Self {
        self.field("title", text)
    }

    /// The input schema (JSON Schema of the arguments).
    pub fn schema(self, schema: Value) -> Self {
        self.field("input_schema", schema)
    }

    pub fn output_schema(self, schema: Value) -> Self {
        self.field("output_schema", schema)
    }

    /// MCP annotations, in MCP's field names (`{"readOnlyHint": true}`).
    pub fn annotations(self, annotations: Value) -> Self {
        self.field("annotations", annotations)
    }

    /// "text", "json" or "mcp".
    pub fn response_mode(self, mode: &str) -> Self {
        self.field("response_mode", mode)
    }

    pub fn body_template(self, template: Value) -> Self {
        self.field("body_template", template)
    }

    pub fn query_template(self, template: Value) -> Self {
        self.field("query_template", template)
    }

    pub fn headers_template(self, template: Value) -> Self {
        self.field("headers_template", template)
    }

    /// `static_bearer`: `Authorization: Bearer <secret>` on every request.
    pub fn auth_bearer(self, secret: &str) -> Self {
        self.field("auth_strategy", "static_bearer")
            .field("auth_secret", secret)
    }

    /// `hmac_signature` with a Standard Webhooks secret (`whsec_…`).
    pub fn auth_hmac(self, secret: &str) -> Self {
        self.field("auth_strategy", "hmac_signature")
            .field("auth_secret", secret)
    }

    pub fn timeout_ms(self, ms: u64) -> Self {
        self.field("timeout_ms", ms)
    }

    /// The retry policy (`{"max_attempts": 3, "initial_backoff_ms": 20}`).
    pub fn retry(self, policy: Value) -> Self {
        self.field("retry", policy)
    }

    pub fn require_member(self) -> Self {
        self.field("require_member", true)
    }

    pub fn inject_member_identity(self) -> Self {
        self.field("inject_member_identity", true)
    }

    /// Sets any field to any value: for what has no setter, and for the bad
    /// values validation tests send.
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Leaves a field out (a required one, for validation tests).
    pub fn without(mut self, key: &str) -> Self {
        self.0.remove(key);
        self
    }

    /// The JSON body the admin API takes.
    pub fn json(&self) -> Value {
        Value::Object(self.0.clone())
    }
}

impl From<ToolSpec> for Value {
    fn from(spec: ToolSpec) -> Self {
        Value::Object(spec.0)
    }
}
