//! The admin API's OpenAPI document (`GET /v1/openapi.json`): it is served, it is
//! OpenAPI 3.1 to an independent parser, every documented operation is served
//! (and no other method on its path), and each names its security and its error
//! answers with codes from the catalogue (`tengine_core::errors`) — checked
//! against what the running ingress answers.
//!
//! The other direction (no route served without being documented) holds by
//! construction: `tengine_ingress::admin` builds its router and its document from
//! one `routes!` list. The probes below make it observable for every path.

use std::collections::BTreeSet;

use serde_json::Value;
use tengine_core::errors::{ADMIN_CODES, AdminCode};
use tengine_tests::{ADMIN_TOKEN, TestApp, spawn_app};

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

fn document() -> Value {
    serde_json::to_value(tengine_ingress::admin::document()).expect("the document serializes")
}

/// Every operation of the document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                out.push((path.clone(), method.to_string(), op.clone()));
            }
        }
    }
    assert!(out.len() >= 20, "only {} operations: is the document empty?", out.len());
    out
}

/// An operation anyone may call: one of its security requirements is empty.
fn is_public(op: &Value) -> bool {
    op["security"]
        .as_array()
        .is_some_and(|reqs| reqs.iter().any(|r| r.as_object().is_some_and(|o| o.is_empty())))
}

/// A response, its `$ref` (`#/components/responses/…`) followed.
fn resolved<'a>(doc: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} resolves to nothing"))
        }
        None => response,
    }
}

/// The codes a response declares (its error body's `code` enum); `None` without one.
fn declared_codes(doc: &Value, response: &Value) -> Option<Vec<String>> {
    let codes = resolved(doc, response)
        .pointer("/content/application~1json/schema/properties/error/properties/code/enum")?
        .as_array()?;
    Some(codes.iter().filter_map(|c| c.as_str().map(String::from)).collect())
}

fn catalogued(code: &str) -> Option<AdminCode> {
    ADMIN_CODES.iter().copied().find(|c| c.code == code)
}

#[test]
fn every_operation_names_its_security_and_its_errors_from_the_catalogue() {
    let doc = document();
    let schemes: BTreeSet<String> = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes")
        .keys()
        .cloned()
        .collect();
    let mut used = BTreeSet::new();
    let mut operation_ids: BTreeSet<String> = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        let requirements = op["security"].as_array().unwrap_or_else(|| panic!("{at}: no security"));
        assert!(!requirements.is_empty(), "{at}: empty security");
        for requirement in requirements {
            for name in requirement.as_object().expect("a requirement is an object").keys() {
                assert!(schemes.contains(name), "{at}: unknown security scheme {name}");
            }
        }
        // One line: docs/admin-api.md's table of operations shows it.
        let summary = op["summary"].as_str().unwrap_or_default();
        assert!(
            !summary.is_empty() && !summary.contains('\n'),
            "{at}: summary `{summary}`"
        );
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no operationId"));
        assert!(
            operation_ids.insert(id.to_string()),
            "{at}: operationId {id} is not unique"
        );
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{at}: no responses"));
        for (status, response) in responses {
            let number: u16 = status.parse().unwrap_or_else(|_| panic!("{at}: status {status}"));
            // Client errors and 500 are the catalogue's; health's 503 is its own body.
            if !((400..500).contains(&number) || number == 500) {
                continue;
            }
            let codes = declared_codes(&doc, response).unwrap_or_else(|| panic!("{at} {status}: no error codes"));
            assert!(!codes.is_empty(), "{at} {status}: no error codes");
            for code in codes {
                let declared = catalogued(&code).unwrap_or_else(|| panic!("{at} {status}: `{code}` not catalogued"));
                assert_eq!(declared.status, number, "{at}: `{code}` answered with {status}");
                used.insert(code);
            }
        }
        if !is_public(&op) {
            for (status, code) in [("401", "unauthorized"), ("500", "internal")] {
                let codes = responses
                    .get(status)
                    .and_then(|r| declared_codes(&doc, r))
                    .unwrap_or_default();
                assert!(codes.iter().any(|c| c == code), "{at}: no {status} `{code}`");
            }
        }
    }
    let unused: Vec<_> = ADMIN_CODES.iter().filter(|c| !used.contains(c.code)).collect();
    assert!(unused.is_empty(), "catalogued codes no operation declares: {unused:?}");
}

/// A request path for `template` with its parameters filled: UUIDs with a fresh id
/// (or `bad_uuid`), names with a placeholder.
fn concrete(template: &str, op: &Value, bad_uuid: Option<&str>) -> String {
    let mut path = template.to_string();
    for parameter in op["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().expect("parameter name");
        let value = if parameter["schema"]["format"] == "uuid" {
            bad_uuid.map_or_else(|| uuid::Uuid::now_v7().to_string(), String::from)
        } else {
            "no-such-name".to_string()
        };
        path = path.replace(&format!("{{{name}}}"), &value);
    }
    assert!(!path.contains('{'), "{template}: a path parameter is not declared");
    path
}

async fn probe(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut request = app.http.request(method, format!("{}{path}", app.base_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The answer is one the operation declares, with a declared code when it is an error.
fn assert_declared(doc: &Value, at: &str, op: &Value, status: u16, body: &Value) {
    let response = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{at}: answered {status}, which it does not declare: {body}"));
    if status >= 400 && status != 503 {
        let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("{at}: {body}"));
        let codes = declared_codes(doc, response).unwrap_or_default();
        assert!(
            codes.iter().any(|c| c == code),
            "{at}: `{code}` not declared for {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_served_and_is_openapi_3_1() {
    let app = spawn_app().await;
    // Public: it describes the API, never its data.
    let response = app
        .http
        .get(format!("{}/v1/openapi.json", app.base_url))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("body");
    let served: Value = serde_json::from_str(&text).expect("JSON");
    assert!(
        served["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "{}",
        served["openapi"]
    );
    assert_eq!(served, document(), "the served document is the generated one");
    let spec = oas3::from_json(&text).expect("an OpenAPI 3.1 document to an independent parser");
    assert_eq!(spec.info.title, "Tengine admin API");
    let parsed: usize = spec
        .paths
        .iter()
        .flatten()
        .map(|(_, item)| item.methods().into_iter().count())
        .sum();
    assert_eq!(parsed, operations(&served).len());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_served_and_answers_as_documented() {
    let app = spawn_app().await;
    let doc = document();
    let ops = operations(&doc);
    for (template, method, op) in &ops {
        let at = format!("{} {template}", method.to_uppercase());
        // Without a credential: the public operations answer, the others refuse (401).
        let (status, body) = probe(&app, method, &concrete(template, op, None), None).await;
        if is_public(op) {
            assert_eq!(status, 200, "{at}: {body}");
        } else {
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{at}: {body}"
            );
        }
        assert_declared(&doc, &at, op, status, &body);
        // With the admin token and ids of nothing: whatever it answers is declared.
        let path = concrete(template, op, None);
        let (status, body) = probe(&app, method, &path, Some(ADMIN_TOKEN)).await;
        assert_declared(&doc, &format!("{at} (admin)"), op, status, &body);
        // An id that is not a UUID: 400 naming what it should be.
        let bad = concrete(template, op, Some("not-a-uuid"));
        if bad.contains("not-a-uuid") {
            let (status, body) = probe(&app, method, &bad, Some(ADMIN_TOKEN)).await;
            assert_eq!(status, 400, "{at}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("is not a valid")),
                "{at}: {body}"
            );
            assert_declared(&doc, &format!("{at} (bad id)"), op, status, &body);
        }
    }
    // A documented path serves only its documented methods.
    let paths: BTreeSet<&String> = ops.iter().map(|(p, _, _)| p).collect();
    for template in paths {
        let documented: Vec<&(String, String, Value)> = ops.iter().filter(|(p, _, _)| p == template).collect();
        let path = concrete(template, &documented[0].2, None);
        for method in METHODS {
            if documented.iter().any(|(_, m, _)| m == method) {
                continue;
            }
            let (status, _) = probe(&app, method, &path, Some(ADMIN_TOKEN)).await;
            assert_eq!(
                status,
                405,
                "{} {template} is served but not documented",
                method.to_uppercase()
            );
        }
    }
}
