//! The outbound request of a tool call: the tool's templates (see
//! [`crate::templates`]) rendered with the call's arguments.

use serde_json::Value;
use url::Url;

use crate::{
    domain::{HttpMethod, ToolDefinition},
    templates::{
        Context, TemplateError, json_placeholders, placeholders, render_header, render_json, render_path, render_query,
        text_of,
    },
};

/// Longest URL a request can carry (`http::Uri` refuses longer ones).
pub const URL_MAX_BYTES: usize = 65_534;

/// The outbound request a tool call produces, before auth and signing headers.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRequest {
    pub method: HttpMethod,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    /// JSON body, already serialized.
    pub body: Option<Vec<u8>>,
}

/// Renders a tool's request. Pure: the ingress runs it to validate a call up front,
/// the worker to build the request it sends.
pub fn render(tool: &ToolDefinition, ctx: &Context<'_>) -> Result<RenderedRequest, TemplateError> {
    let (path, used_in_path) = render_path(&tool.endpoint_path, ctx)?;
    let origin = Url::parse(&tool.base_url).map_err(|e| TemplateError::Url(e.to_string()))?;
    let mut url = origin.join(&path).map_err(|e| TemplateError::Url(e.to_string()))?;
    // The origin and path are fixed by the tool; an argument can only fill a segment.
    if url.origin() != origin.origin() || url.path() != path {
        return Err(TemplateError::Url(format!(
            "an argument changed the request target (path would become {})",
            url.path()
        )));
    }

    let mut query: Vec<(String, String)> = Vec::new();
    for (name, template) in &tool.query_template {
        for value in render_query(template, ctx)? {
            query.push((name.clone(), value));
        }
    }
    // Arguments no template places: the default query (GET, DELETE) or body (POST,
    // PUT, PATCH) carries them. One a header or the body template uses is not sent twice.
    // Only a request whose default query or body carries them needs to know which
    // arguments the templates place (the common templated tool skips this walk).
    let carries_leftovers = if tool.http_method.has_body() {
        tool.body_template.is_none()
    } else {
        tool.query_template.is_empty()
    };
    let mut placed = used_in_path;
    if carries_leftovers {
        for template in tool.headers_template.values() {
            placed.extend(placeholders(template).into_iter().map(|p| p.name.to_string()));
        }
        if let Some(template) = &tool.body_template {
            json_placeholders(template, &mut placed);
        }
    }
    let leftovers = || ctx.arguments.iter().filter(|(name, _)| !placed.contains(*name));
    if !tool.http_method.has_body() && tool.query_template.is_empty() {
        for (name, value) in leftovers() {
            match value {
                Value::Null => {}
                Value::Array(items) => query.extend(items.iter().map(|v| (name.clone(), text_of(v)))),
                other => query.push((name.clone(), text_of(other))),
            }
        }
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query.iter());
    }
    // A longer URL can never be sent (the `http` crate's URI limit): the arguments'
    // fault, said before the call is queued, not a failure of the network.
    let length = url.as_str().len();
    if length > URL_MAX_BYTES {
        return Err(TemplateError::Url(format!(
            "it would be {length} bytes, more than the {URL_MAX_BYTES} a request can carry; \
             send large arguments in a body (POST, PUT, PATCH)"
        )));
    }

    let mut headers = Vec::with_capacity(tool.headers_template.len());
    for (name, template) in &tool.headers_template {
        if let Some(value) = render_header(template, ctx)? {
            headers.push((name.clone(), value));
        }
    }

    let body = if let Some(template) = &tool.body_template {
        Some(render_json(template, ctx)?)
    } else if tool.http_method.has_body() {
        Some(Value::Object(
            leftovers().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ))
    } else {
        None
    };
    let form = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("content-type")
            && value
                .split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(FORM))
    });
    let body = body.map(|b| {
        if form {
            form_encoded(&b)
        } else {
            serde_json::to_vec(&b).expect("a serde_json::Value always serializes")
        }
    });
    Ok(RenderedRequest {
        method: tool.http_method,
        url,
        headers,
        body,
    })
}

const FORM: &str = "application/x-www-form-urlencoded";

/// A body for `Content-Type: application/x-www-form-urlencoded`: an object's
/// members as pairs the way query parameters are sent (arrays repeated, null left
/// out, objects as compact JSON); anything else as its text.
fn form_encoded(body: &Value) -> Vec<u8> {
    let Value::Object(members) = body else {
        return text_of(body).into_bytes();
    };
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in members {
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    form.append_pair(name, &text_of(item));
                }
            }
            other => {
                form.append_pair(name, &text_of(other));
            }
        }
    }
    form.finish().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_bodies_are_pairs_like_a_query() {
        let body = json!({"name": "Rex & co", "tags": ["a", 1], "gone": null, "meta": {"k": true}});
        let encoded = String::from_utf8(form_encoded(&body)).expect("utf-8");
        let mut pairs: Vec<&str> = encoded.split('&').collect();
        pairs.sort_unstable();
        assert_eq!(
            pairs,
            ["meta=%7B%22k%22%3Atrue%7D", "name=Rex+%26+co", "tags=1", "tags=a"]
        );
        assert!(encoded.find("tags=a") < encoded.find("tags=1"), "array order kept");
        assert_eq!(form_encoded(&json!("raw=1")), b"raw=1");
    }
}
