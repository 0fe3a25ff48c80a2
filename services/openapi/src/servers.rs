//! `servers` (or the `base_url` option) resolved into a tool's origin and the path
//! prefix its `endpoint_path` starts with.

use serde_json::Value;
use url::Url;

/// Where an operation's requests go: `https://host[:port]` and a path prefix
/// (`""` or `/v2`, without a trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub origin: String,
    pub prefix: String,
}

/// The first server of `servers` (an operation's, its path item's or the
/// document's), its variables replaced by their defaults; `override_url` wins.
pub fn resolve(servers: Option<&Value>, override_url: Option<&str>) -> Result<Base, String> {
    if let Some(raw) = override_url {
        return split(raw).map_err(|e| format!("base_url `{raw}`: {e}"));
    }
    let Some(first) = servers.and_then(Value::as_array).and_then(|s| s.first()) else {
        return Err("the document names no server; pass base_url (the API's URL)".into());
    };
    let Some(template) = first.get("url").and_then(Value::as_str) else {
        return Err("the first server has no `url`; pass base_url".into());
    };
    let url = substitute(template, first.get("variables"))?;
    split(&url).map_err(|e| format!("server `{template}`: {e}; pass base_url"))
}

/// Every server URL the document offers (for the report: a choice when several).
pub fn listed(servers: Option<&Value>) -> Vec<String> {
    servers
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|s| s.get("url").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Server variables `{name}` replaced by their `default`; an unknown variable (or
/// one without a default) refuses the server.
fn substitute(template: &str, variables: Option<&Value>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let after = after.get(1..).unwrap_or_default();
        let Some(close) = after.find('}') else {
            return Err(format!("server `{template}` has an unclosed `{{`; pass base_url"));
        };
        let (name, tail) = after.split_at(close);
        let value = variables
            .and_then(|v| v.get(name))
            .and_then(|v| v.get("default"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!("server `{template}` uses variable `{{{name}}}`, which it does not define with a default; pass base_url")
            })?;
        out.push_str(value);
        rest = tail.get(1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

fn split(raw: &str) -> Result<Base, String> {
    let url = Url::parse(raw).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => "is relative, an origin is needed".to_string(),
        other => format!("is not a URL ({other})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an http(s) URL with a host".into());
    }
    Ok(Base {
        origin: url.origin().ascii_serialization(),
        prefix: url.path().trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_take_their_defaults_and_unknown_ones_refuse() {
        let servers = json!([{"url": "https://{region}.api.example.com/v{major}",
            "variables": {"region": {"default": "eu"}, "major": {"default": "2"}}}]);
        assert_eq!(
            resolve(Some(&servers), None),
            Ok(Base {
                origin: "https://eu.api.example.com".into(),
                prefix: "/v2".into()
            })
        );
        let unknown = json!([{"url": "https://{tenant}.example.com"}]);
        let err = resolve(Some(&unknown), None).expect_err("unknown variable");
        assert!(err.contains("{tenant}") && err.contains("base_url"), "{err}");
        let relative = json!([{"url": "/api/v3"}]);
        assert!(
            resolve(Some(&relative), None)
                .expect_err("relative")
                .contains("relative")
        );
        assert_eq!(
            resolve(Some(&unknown), Some("http://127.0.0.1:9000/")).map(|b| b.origin),
            Ok("http://127.0.0.1:9000".into())
        );
    }
}
