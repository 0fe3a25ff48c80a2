//! OpenAPI import (`POST /v1/projects/{id}/tools/import`) with real public
//! documents from the npm registry (installed by `deploy/local/test` into
//! tests/typescript/node_modules): the Swagger Petstore in 3.0 (JSON) and 3.1
//! (YAML) and the other examples of `@readme/oas-examples`, and GitHub's REST API
//! description (`@octokit/openapi`, ~1,200 operations, 13 MB). Every operation
//! maps or says why; re-imports change nothing, or only what the document
//! changed; and imported tools called through MCP send the request the document
//! describes, checked by a loopback upstream.

use std::{collections::BTreeSet, path::PathBuf};

use axum::{Router, routing::get};
use serde_json::{Value, json};
use tengine_tests::{TestApp, ToolSpec, spawn_app, spawn_app_with, upstream::Upstream};
use uuid::Uuid;

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn package_file(relative: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("typescript/node_modules")
        .join(relative);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; install the test packages (deploy/local/test runs `npm ci` in tests/typescript)",
            path.display()
        )
    })
}

fn oas_example(relative: &str) -> Vec<u8> {
    package_file(&format!("@readme/oas-examples/{relative}"))
}

/// (METHOD, path) of every operation of a JSON document (path items by local `$ref` included).
fn operations_of(document: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        let item = match item["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => document.pointer(pointer).unwrap_or(item),
            None => item,
        };
        for method in METHODS {
            if item.get(*method).is_some() {
                out.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

async fn import(app: &TestApp, project: Uuid, document: Vec<u8>, content_type: &str, query: &str) -> (u16, Value) {
    let response = app
        .admin
        .http
        .post(format!("{}/v1/projects/{project}/tools/import?{query}", app.base_url))
        .bearer_auth(&app.admin.token)
        .header("Content-Type", content_type)
        .body(document)
        .send()
        .await
        .expect("import request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn imported(app: &TestApp, project: Uuid, document: Vec<u8>, content_type: &str, query: &str) -> Value {
    let (status, report) = import(app, project, document, content_type, query).await;
    assert_eq!(status, 200, "{report}");
    report
}

fn count(report: &Value, action: &str) -> u64 {
    report["counts"][action].as_u64().expect("a count")
}

/// Every operation of the document is in the report once, and every skipped one says why.
fn check_accounted(document: &Value, report: &Value) {
    let listed: Vec<(String, String)> = report["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .map(|o| {
            (
                o["method"].as_str().expect("method").to_string(),
                o["path"].as_str().expect("path").to_string(),
            )
        })
        .collect();
    let unique: BTreeSet<_> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "an operation listed twice");
    assert_eq!(unique, operations_of(document), "every operation is reported");
    for op in report["operations"].as_array().expect("operations") {
        match op["action"].as_str() {
            Some("skipped") => assert!(
                op["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "a skip without a reason: {op}"
            ),
            Some("create" | "update" | "unchanged") => assert!(op["tool"].is_string(), "{op}"),
            other => panic!("unexpected action {other:?}: {op}"),
        }
    }
}

fn entry<'r>(report: &'r Value, method: &str, path: &str) -> &'r Value {
    report["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .find(|o| o["method"] == method && o["path"] == path)
        .unwrap_or_else(|| panic!("{method} {path} in the report"))
}

async fn tool(app: &TestApp, project: Uuid, name: &str) -> Value {
    let (status, tool) = app.admin.get(&format!("/v1/projects/{project}/tools/{name}")).await;
    assert_eq!(status, 200, "{tool}");
    tool
}

#[tokio::test(flavor = "multi_thread")]
async fn petstores_in_30_and_31_dry_run_apply_and_reimport_unchanged() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    for (file, content_type) in [
        ("3.0/json/petstore.json", "application/json"),
        ("3.1/yaml/petstore.yaml", "application/yaml"),
    ] {
        let project = app.admin.create_project(file).await;
        let bytes = oas_example(file);
        let document: Value = if content_type == "application/json" {
            serde_json::from_slice(&bytes).expect("json")
        } else {
            serde_json::from_slice(&oas_example(&file.replace("yaml", "json"))).expect("json twin")
        };
        // The default is a dry run: a report, nothing stored.
        let dry = imported(&app, project, bytes.clone(), content_type, "").await;
        assert_eq!(dry["dry_run"], true);
        check_accounted(&document, &dry);
        assert!(count(&dry, "create") >= 14, "{}", dry["counts"]);
        let (_, listed) = app.admin.get(&format!("/v1/projects/{project}/tools")).await;
        assert_eq!(listed["tools"], json!([]), "a dry run stores nothing");
        // The document's server is plain http: without base_url… it is used as is
        // (tests allow insecure upstreams), and the report lists it.
        assert_eq!(dry["servers"], json!(["http://petstore.swagger.io/v2"]));
        let find = entry(&dry, "GET", "/pet/findByStatus");
        assert_eq!(find["spec"]["base_url"], "http://petstore.swagger.io");
        assert_eq!(find["spec"]["endpoint_path"], "/v2/pet/findByStatus");
        assert_eq!(find["suggested_auth"]["strategy"], "static_bearer", "{find}");
        // updatePetWithForm's body is form-encoded: its fields are arguments, sent as a form.
        let form = entry(&dry, "POST", "/pet/{petId}");
        assert_eq!(
            form["spec"]["headers_template"],
            json!({"Content-Type": "application/x-www-form-urlencoded"}),
            "{form}"
        );
        assert_eq!(
            form["spec"]["body_template"],
            json!({"name": "{name}", "status": "{status}"})
        );

        let query = format!("dry_run=false&base_url={}", upstream.url());
        let applied = imported(&app, project, bytes.clone(), content_type, &query).await;
        assert_eq!(applied["dry_run"], false);
        check_accounted(&document, &applied);
        assert_eq!(count(&applied, "create"), count(&dry, "create"));
        let stored = tool(&app, project, "getPetById").await;
        assert_eq!(stored["enabled"], false, "created disabled for review");
        assert_eq!(stored["base_url"], upstream.url());
        assert_eq!(stored["source"]["key"], "GET /pet/{petId}");
        assert_eq!(stored["source"]["operation_id"], "getPetById");
        assert_eq!(stored["source"]["tags"], json!(["pet"]));
        assert_eq!(
            stored["source"]["arguments"]["petId"],
            json!({"in": "path", "name": "petId"})
        );
        assert_eq!(stored["output_schema"]["required"], json!(["name", "photoUrls"]));
        assert_eq!(stored["annotations"]["readOnlyHint"], true);
        // The Pet's `id` is readOnly: not an argument of addPet (not sent in requests).
        let add = tool(&app, project, "addPet").await;
        let props = &add["input_schema"]["properties"];
        assert!(props.get("id").is_none() && props.get("name").is_some(), "{props}");

        // Re-importing the same document changes nothing.
        let again = imported(&app, project, bytes.clone(), content_type, &query).await;
        assert_eq!(count(&again, "unchanged"), count(&dry, "create"), "{}", again["counts"]);
        assert_eq!(
            (
                count(&again, "create"),
                count(&again, "update"),
                count(&again, "failed")
            ),
            (0, 0, 0)
        );
        assert_eq!(tool(&app, project, "getPetById").await["version"], stored["version"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reimports_keep_operator_settings_and_names_avoid_other_tools() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let project = app.project_id;
    // A tool registered by hand holds a name the document also uses.
    app.admin
        .create_tool(project, ToolSpec::get("getInventory", &upstream.url(), "/mine"))
        .await;
    let bytes = oas_example("3.0/json/petstore.json");
    let query = format!("dry_run=false&base_url={}", upstream.url());
    let report = imported(&app, project, bytes.clone(), "application/json", &query).await;
    assert_eq!(entry(&report, "GET", "/store/inventory")["tool"], "getInventory_2");
    assert_eq!(
        tool(&app, project, "getInventory").await["endpoint_path"],
        "/mine",
        "untouched"
    );

    // The operator sets up auth, a timeout and enables the tool.
    let (status, patched) = app
        .admin
        .patch_tool(
            project,
            "getPetById",
            json!({"auth_strategy": "static_bearer", "auth_secret": "token-1", "timeout_ms": 5000, "enabled": true}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let again = imported(&app, project, bytes.clone(), "application/json", &query).await;
    assert_eq!(entry(&again, "GET", "/pet/{petId}")["action"], "unchanged", "{again}");
    assert_eq!(entry(&again, "GET", "/store/inventory")["action"], "unchanged");

    // The document changes the operation: the document's fields are updated, the operator's kept.
    let mut document: Value = serde_json::from_slice(&bytes).expect("json");
    document["paths"]["/pet/{petId}"]["get"]["summary"] = json!("Find one pet");
    let changed = serde_json::to_vec(&document).expect("json");
    let update = imported(&app, project, changed, "application/json", &query).await;
    assert_eq!(count(&update, "update"), 1, "{}", update["counts"]);
    assert_eq!(update["stale"], json!([]));
    let stored = tool(&app, project, "getPetById").await;
    assert_eq!(stored["title"], "Find one pet");
    assert_eq!(
        (
            &stored["auth_strategy"],
            &stored["has_auth_secret"],
            &stored["timeout_ms"],
            &stored["enabled"]
        ),
        (&json!("static_bearer"), &json!(true), &json!(5000), &json!(true))
    );
    assert_eq!(stored["version"], patched["version"].as_i64().expect("version") + 1);

    // An operation gone from the document: its tool stays, and the report says so.
    document["paths"]
        .as_object_mut()
        .expect("paths")
        .remove("/store/inventory");
    let shrunk = serde_json::to_vec(&document).expect("json");
    let report = imported(&app, project, shrunk, "application/json", &query).await;
    assert_eq!(report["stale"], json!(["getInventory_2"]));
    tool(&app, project, "getInventory_2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_petstore_tools_send_the_requests_the_document_describes() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let query = format!("dry_run=false&enable=true&base_url={}/api", upstream.url());
    let report = imported(
        &app,
        app.project_id,
        oas_example("3.1/json/petstore.json"),
        "application/json",
        &query,
    )
    .await;
    assert_eq!(count(&report, "failed"), 0, "{}", report["counts"]);
    let mut session = app.session();
    session.initialize().await;

    // An exploded array query parameter: repeated.
    let result = session
        .call("findPetsByStatus", json!({"status": ["available", "sold"]}))
        .await;
    assert_eq!(result["isError"], false, "{result}");
    // Query values are form-encoded.
    let result = session
        .call("loginUser", json!({"username": "a b&c", "password": "p=1/2"}))
        .await;
    assert_eq!(result["isError"], false, "{result}");
    // The path value is percent-encoded; the body's `username` collides with the
    // path's and is the argument `body_username`; values keep their JSON types.
    let result = session
        .call(
            "updateUser",
            json!({"username": "jo doe/x", "body_username": "jo", "id": 7, "userStatus": 1, "email": "j@example.com"}),
        )
        .await;
    assert_eq!(result["isError"], false, "{result}");
    // Nested objects and arrays stay typed in the body.
    session
        .call(
            "addPet",
            json!({"name": "Rex", "photoUrls": ["https://example.com/rex.png"],
                   "category": {"id": 1, "name": "dogs"}, "tags": [{"id": 2, "name": "good"}], "status": "available"}),
        )
        .await;
    session.call("getPetById", json!({"petId": 42})).await;
    // A form body, encoded as the document says.
    let result = session
        .call(
            "updatePetWithForm",
            json!({"petId": 7, "name": "Rex & Co", "status": "sold"}),
        )
        .await;
    assert_eq!(result["isError"], false, "{result}");

    let requests = upstream.requests();
    let targets: Vec<(String, String)> = requests.iter().map(|r| (r.method.clone(), r.target())).collect();
    assert_eq!(
        targets,
        [
            (
                "GET".into(),
                "/api/pet/findByStatus?status=available&status=sold".into()
            ),
            (
                "GET".into(),
                "/api/user/login?password=p%3D1%2F2&username=a+b%26c".into()
            ),
            ("PUT".into(), "/api/user/jo%20doe%2Fx".into()),
            ("POST".into(), "/api/pet".into()),
            ("GET".into(), "/api/pet/42".into()),
            ("POST".into(), "/api/pet/7".into()),
        ]
    );
    assert_eq!(
        requests[5].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        String::from_utf8_lossy(&requests[5].body),
        "name=Rex+%26+Co&status=sold"
    );
    assert_eq!(requests[0].body, b"", "a GET has no body");
    assert_eq!(
        requests[2].json(),
        json!({"username": "jo", "id": 7, "userStatus": 1, "email": "j@example.com"})
    );
    assert_eq!(requests[2].header("content-type"), Some("application/json"));
    assert_eq!(
        requests[3].json(),
        json!({"name": "Rex", "photoUrls": ["https://example.com/rex.png"],
               "category": {"id": 1, "name": "dogs"}, "tags": [{"id": 2, "name": "good"}], "status": "available"})
    );
    // Arguments are checked against the imported schema before anything is sent.
    let refused = session.call("getPetById", json!({"petId": "forty-two"})).await;
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(upstream.requests().len(), 6, "nothing sent for invalid arguments");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_item_parameters_are_merged_into_path_query_and_headers() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let query = format!("dry_run=false&enable=true&base_url={}", upstream.url());
    let bytes = oas_example("3.0/json/parameters-common.json");
    let report = imported(&app, app.project_id, bytes, "application/json", &query).await;
    let post = entry(&report, "POST", "/anything/{id}");
    let name = post["tool"].as_str().expect("a tool").to_string();
    assert_eq!(
        post["source"]["arguments"],
        json!({"id": {"in": "path", "name": "id"}, "limit": {"in": "query", "name": "limit"},
               "x-extra-id": {"in": "header", "name": "x-extra-id"}})
    );
    let get = entry(&report, "GET", "/anything/{id}")["tool"]
        .as_str()
        .expect("a tool")
        .to_string();

    let mut session = app.session();
    session.initialize().await;
    let result = session
        .call(&name, json!({"id": 12.5, "limit": 3, "x-extra-id": "abc"}))
        .await;
    assert_eq!(result["isError"], false, "{result}");
    // A GET without query parameters: the header argument goes to its header only.
    let result = session.call(&get, json!({"id": 3, "x-extra-id": "def"})).await;
    assert_eq!(result["isError"], false, "{result}");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].target(), "/anything/12.5?limit=3");
    assert_eq!(requests[0].header("x-extra-id"), Some("abc"));
    assert_eq!(requests[0].json(), json!({}), "no request body: an empty object");
    assert_eq!(
        (requests[1].method.as_str(), requests[1].target()),
        ("GET", "/anything/3".to_string())
    );
    assert_eq!(requests[1].header("x-extra-id"), Some("def"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_with_a_json_body_and_a_header_sends_each_argument_once() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    // As GitHub's `DELETE /repos/{owner}/{repo}/issues/{issue_number}/assignees`: a body on a DELETE.
    let document = json!({
        "openapi": "3.1.0",
        "info": {"title": "Assignees", "version": "1"},
        "paths": {"/issues/{number}/assignees": {"delete": {
            "operationId": "removeAssignees",
            "parameters": [
                {"name": "number", "in": "path", "required": true, "schema": {"type": "integer"}},
                {"name": "X-Request-Reason", "in": "header", "schema": {"type": "string"}}
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["assignees"],
                "properties": {"assignees": {"type": "array", "items": {"type": "string"}}}
            }}}},
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}}
    });
    let query = format!("dry_run=false&enable=true&base_url={}", upstream.url());
    let body = serde_json::to_vec(&document).expect("json");
    let report = imported(&app, app.project_id, body, "application/json", &query).await;
    assert_eq!(count(&report, "create"), 1, "{report}");
    let mut session = app.session();
    session.initialize().await;
    let result = session
        .call(
            "removeAssignees",
            json!({"number": 5, "assignees": ["octocat", "hubot"], "X-Request-Reason": "cleanup"}),
        )
        .await;
    assert_eq!(result["isError"], false, "{result}");
    let requests = upstream.requests();
    assert_eq!(
        (requests[0].method.as_str(), requests[0].target()),
        ("DELETE", "/issues/5/assignees".to_string())
    );
    assert_eq!(requests[0].json(), json!({"assignees": ["octocat", "hubot"]}));
    assert_eq!(requests[0].header("x-request-reason"), Some("cleanup"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_document_imports_without_failing() {
    let app = spawn_app().await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("typescript/node_modules/@readme/oas-examples");
    let mut documents = 0;
    for version in ["3.0", "3.1"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(version).join("json"))
            .expect("examples")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file).expect("read");
            let document: Value = serde_json::from_slice(&bytes).expect("json");
            let project = app.admin.create_project("examples").await;
            // Examples without servers, or with templated ones, need base_url.
            let (status, report) = import(
                &app,
                project,
                bytes,
                "application/json",
                "dry_run=false&base_url=https://api.example.com",
            )
            .await;
            assert_eq!(status, 200, "{}: {report}", file.display());
            if document.get("paths").is_some() {
                check_accounted(&document, &report);
            }
            assert_eq!(count(&report, "failed"), 0, "{}: {report}", file.display());
            documents += 1;
        }
    }
    assert!(documents >= 50, "{documents} documents");
}

#[tokio::test(flavor = "multi_thread")]
async fn github_rest_api_imports_reimports_unchanged_and_updates_only_what_changed() {
    let app = spawn_app().await;
    let bytes = package_file("@octokit/openapi/generated/api.github.com.json");
    let document: Value = serde_json::from_slice(&bytes).expect("json");
    let total = operations_of(&document).len();
    assert!(total > 1000, "{total} operations");

    let report = imported(&app, app.project_id, bytes.clone(), "application/json", "dry_run=false").await;
    check_accounted(&document, &report);
    let created = count(&report, "create");
    assert_eq!(
        created.saturating_add(count(&report, "skipped")),
        total as u64,
        "{}",
        report["counts"]
    );
    // Every operation of GitHub's API maps (JSON bodies only; headers and bodies of DELETEs included).
    assert_eq!(created as usize, total, "{}", report["counts"]);
    // Names are unique and model-friendly.
    let names: BTreeSet<&str> = report["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o["tool"].as_str())
        .collect();
    assert_eq!(names.len() as u64, created);
    assert!(
        names
            .iter()
            .all(|n| n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    );

    let again = imported(&app, app.project_id, bytes, "application/json", "dry_run=false").await;
    assert_eq!(count(&again, "unchanged"), created, "{}", again["counts"]);
    assert_eq!((count(&again, "create"), count(&again, "update")), (0, 0));

    // One operation's summary and one new query parameter change: only that tool is updated.
    let mut changed = document.clone();
    let op = &mut changed["paths"]["/repos/{owner}/{repo}/issues"]["get"];
    op["summary"] = json!("List the issues of a repository");
    op["parameters"]
        .as_array_mut()
        .expect("parameters")
        .push(json!({"name": "mood", "in": "query", "schema": {"type": "string"}}));
    let body = serde_json::to_vec(&changed).expect("json");
    let diff = imported(&app, app.project_id, body.clone(), "application/json", "").await;
    assert_eq!(count(&diff, "update"), 1, "{}", diff["counts"]);
    assert_eq!(count(&diff, "unchanged"), created - 1);
    let update = entry(&diff, "GET", "/repos/{owner}/{repo}/issues");
    let fields: BTreeSet<&str> = update["changes"]
        .as_object()
        .expect("changes")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["description", "input_schema", "query_template", "source", "title"])
    );
    assert_eq!(update["changes"]["title"]["to"], "List the issues of a repository");
    let name = update["tool"].as_str().expect("tool");
    assert!(
        tool(&app, app.project_id, name).await["query_template"]
            .get("mood")
            .is_none(),
        "a dry run"
    );

    // The tag filter imports part of the API, the same tools by the same names.
    let project = app.admin.create_project("issues only").await;
    let issues = imported(&app, project, body, "application/json", "tag=issues&dry_run=false").await;
    assert!(count(&issues, "create") > 20, "{}", issues["counts"]);
    assert!(issues["filtered_out"].as_u64().expect("filtered") > 1000);
    for op in issues["operations"].as_array().expect("operations") {
        assert!(op["tags"].as_array().expect("tags").contains(&json!("issues")), "{op}");
        let full = entry(
            &report,
            op["method"].as_str().expect("m"),
            op["path"].as_str().expect("p"),
        );
        assert_eq!(op["tool"], full["tool"], "same name as in the full import");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_documents_and_requests_say_what_to_fix() {
    let app = spawn_app().await;
    let path = format!("/v1/projects/{}/tools/import", app.project_id);
    let swagger = oas_example("2.0/json/petstore.json");
    let (status, body) = import(&app, app.project_id, swagger, "application/json", "").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "document");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("Swagger 2.0")
    );

    let (status, body) = import(&app, app.project_id, b"openapi: [".to_vec(), "application/yaml", "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_field")),
        "{body}"
    );

    let (status, body) = app.admin.post(&path, Value::Null).await;
    assert_eq!(status, 422, "`null` is not a document: {body}");
    let (status, body) = import(&app, app.project_id, Vec::new(), "application/json", "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (status, body) = import(&app, app.project_id, b"{}".to_vec(), "application/json", "dryrun=false").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("dryrun"));
    let (status, _) = import(&app, Uuid::now_v7(), b"{}".to_vec(), "application/json", "").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_by_url_go_through_the_address_policy() {
    let document = oas_example("3.1/yaml/petstore.yaml");
    let served = document.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/openapi.yaml", get(move || async move { served.clone() }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let url = format!("http://{addr}/openapi.yaml");

    // The test cluster allows private upstreams: loopback is reachable.
    let app = spawn_app().await;
    let query = format!("url={url}&base_url=https://api.example.com");
    let report = imported(&app, app.project_id, Vec::new(), "application/yaml", &query).await;
    assert_eq!(report["title"], "Swagger Petstore");
    assert!(count(&report, "create") >= 14);
    let (status, body) = import(&app, app.project_id, document, "application/yaml", &query).await;
    assert_eq!(status, 400, "a body and a url: {body}");
    let missing = format!("url=http://{addr}/nothing-here");
    let (status, body) = import(&app, app.project_id, Vec::new(), "application/yaml", &missing).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("url")), "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("404"));

    // A deployment that refuses private addresses refuses them here too.
    let strict = spawn_app_with(&[("allow_private_upstreams", "false")]).await;
    let (status, body) = import(&strict, strict.project_id, Vec::new(), "application/yaml", &query).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("url")), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("private or special-purpose"),
        "{body}"
    );
}

/// GitHub's description carries example answers for its JSON responses. Some
/// of them disagree with the description's own schemas (a missing required
/// property, `null` for an object); the output schemas the import derives accept
/// every other one: whatever they refuse, the document's schema (validated as is,
/// its references resolved in the document) refuses too.
#[test]
fn github_output_schemas_refuse_no_example_answer_the_document_accepts() {
    let bytes = package_file("@octokit/openapi/generated/api.github.com.json");
    let document: Value = serde_json::from_slice(&bytes).expect("json");
    let plan = tengine_openapi::plan(&document, &tengine_openapi::Options::default()).expect("plan");
    // A JSON pointer in a URI fragment: `~` and `/` escaped, braces percent-encoded.
    let escape = |s: &str| {
        s.replace('~', "~0")
            .replace('/', "~1")
            .replace('{', "%7B")
            .replace('}', "%7D")
    };
    let (mut checked, mut refused, mut wrong) = (0, 0, Vec::new());
    for operation in &plan.operations {
        let tengine_openapi::Outcome::Tool(tool) = &operation.outcome else {
            continue;
        };
        let Some(schema) = &tool.spec.output_schema else {
            continue;
        };
        let validator = jsonschema::validator_for(schema).expect("compiles");
        let method = operation.method.to_ascii_lowercase();
        let responses = document["paths"][&operation.path][&method]["responses"]
            .as_object()
            .expect("responses");
        let (code, response) = responses
            .iter()
            .filter(|(code, _)| code.starts_with('2'))
            .min_by(|a, b| a.0.cmp(b.0))
            .expect("a 2xx response");
        // Where the response lives, to point the reference validator at its schema.
        let (base, response) = match response["$ref"].as_str() {
            Some(r) => (r[1..].to_string(), document.pointer(&r[1..]).expect("response ref")),
            None => (
                format!("/paths/{}/{method}/responses/{code}", escape(&operation.path)),
                response,
            ),
        };
        for example in response["content"]["application/json"]["examples"]
            .as_object()
            .into_iter()
            .flat_map(|e| e.values())
        {
            let example = match example["$ref"].as_str() {
                Some(r) => document.pointer(&r[1..]).expect("example ref"),
                None => example,
            };
            checked += 1;
            if validator.is_valid(&example["value"]) {
                continue;
            }
            refused += 1;
            let mut root = document.clone();
            root["$ref"] = json!(format!("#{base}/content/application~1json/schema"));
            let reference = jsonschema::validator_for(&root).expect("the document as a schema");
            if reference.is_valid(&example["value"]) {
                let error = validator
                    .iter_errors(&example["value"])
                    .next()
                    .map(|e| format!("{e} at {}", e.instance_path()));
                wrong.push(format!("{} {}: {error:?}", operation.method, operation.path));
            }
        }
    }
    assert!(checked > 500, "{checked} examples");
    assert!(refused < checked / 4, "{refused} of {checked} examples refused");
    assert!(
        wrong.is_empty(),
        "refused, though the document accepts them:\n{}",
        wrong.join("\n")
    );
}
