use serde_json::{Value, json};
use tengine_core::domain::{AuthStrategy, HttpMethod, ResponseMode};

use super::*;

const PETS_YAML: &str = r##"
openapi: 3.0.3
info: {title: Pets, version: "1.0"}
servers:
  - url: https://{region}.pets.example/v1
    variables: {region: {default: eu}}
security: [{token: []}]
components:
  securitySchemes:
    token: {type: http, scheme: bearer}
  parameters:
    Trace: {name: X-Trace, in: header, schema: {type: string}}
  schemas:
    Node:
      type: object
      properties:
        name: {type: string, nullable: true}
        children: {type: array, items: {$ref: '#/components/schemas/Node'}}
    Pet:
      allOf:
        - {$ref: '#/components/schemas/NewPet'}
        - type: object
          required: [id]
          properties: {id: {type: integer, format: int64}}
    NewPet:
      type: object
      required: [name]
      properties:
        name: {type: string, example: Rex}
        tag: {type: string, x-internal: true}
        id: {type: string, description: the body's own id}
        created: {type: string, readOnly: true}
        tree: {$ref: '#/components/schemas/Node'}
        owner: {nullable: true, allOf: [{$ref: '#/components/schemas/Node'}]}
        kind: {oneOf: [{type: string}, {type: string, enum: [a]}]}
paths:
  /pets/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: integer, minimum: 1, exclusiveMinimum: true}}
      - $ref: '#/components/parameters/Trace'
    get:
      operationId: getPet
      summary: Find a pet
      parameters:
        - {name: fields, in: query, schema: {type: array, items: {type: string}}}
        - {name: filter, in: query, style: deepObject, schema: {type: object}}
        - {name: session, in: cookie, schema: {type: string}}
      responses:
        "200":
          description: ok
          content: {application/json: {schema: {$ref: '#/components/schemas/Pet'}}}
    put:
      operationId: "update pet!"
      parameters:
        - {name: X-Trace, in: header, required: true, schema: {type: string}}
      requestBody:
        required: true
        content: {application/json: {schema: {$ref: '#/components/schemas/NewPet'}}}
      responses: {"204": {description: no content}}
    head:
      responses: {"200": {description: ok}}
  /pets:
    post:
      operationId: getPet
      requestBody:
        content: {application/x-www-form-urlencoded: {schema: {type: object, properties: {nick: {type: string}}}}}
      responses: {"201": {description: created}}
    get:
      tags: [search]
      parameters:
        - {name: ids, in: query, explode: false, required: true, schema: {type: array, items: {type: integer}}}
      responses: {"200": {description: ok}}
"##;

fn pets() -> Plan {
    let doc = parse(PETS_YAML.as_bytes()).expect("yaml");
    plan(&doc, &Options::default()).expect("plan")
}

fn operation<'p>(plan: &'p Plan, method: &str, path: &str) -> &'p Operation {
    plan.operations
        .iter()
        .find(|o| o.method == method && o.path == path)
        .expect("operation")
}

fn tool<'p>(plan: &'p Plan, method: &str, path: &str) -> &'p PlannedTool {
    match &operation(plan, method, path).outcome {
        Outcome::Tool(t) => t,
        Outcome::Skipped(reason) => panic!("{method} {path} skipped: {reason}"),
    }
}

fn skipped(plan: &Plan, method: &str, path: &str) -> String {
    match &operation(plan, method, path).outcome {
        Outcome::Skipped(reason) => reason.clone(),
        Outcome::Tool(t) => panic!("{method} {path} mapped to {}", t.spec.name),
    }
}

#[test]
fn refuses_what_is_not_openapi_3() {
    let swagger = parse(br#"{"swagger": "2.0", "info": {}, "paths": {}}"#).expect("json");
    assert_eq!(version(&swagger), Err(DocumentError::Swagger2));
    assert!(DocumentError::Swagger2.to_string().contains("OpenAPI 3.0 and 3.1"));
    let four = parse(b"openapi: 4.0.0\npaths: {}").expect("yaml");
    assert_eq!(version(&four), Err(DocumentError::Unsupported("4.0.0".into())));
    assert_eq!(version(&json!({"paths": {}})), Err(DocumentError::NotOpenApi));
    assert!(matches!(parse(b"{not json"), Err(DocumentError::Syntax(_))));
    assert_eq!(version(&parse(b"openapi: 3.1.0").expect("yaml")), Ok(Version::V31));
}

#[test]
fn path_item_and_operation_parameters_merge_into_typed_templates() {
    let plan = pets();
    let get = tool(&plan, "GET", "/pets/{id}");
    let spec = &get.spec;
    // Paths are planned in sorted order: POST /pets had `getPet` first.
    assert_eq!(spec.name, "getPet_2");
    assert_eq!(spec.base_url, "https://eu.pets.example");
    assert_eq!(spec.endpoint_path, "/v1/pets/{id}");
    assert_eq!(spec.http_method, HttpMethod::Get);
    assert_eq!(spec.query_template.get("fields").map(String::as_str), Some("{fields}"));
    assert_eq!(
        spec.headers_template.get("X-Trace").map(String::as_str),
        Some("{X-Trace}")
    );
    let props = &spec.input_schema["properties"];
    // 3.0's boolean exclusiveMinimum becomes the 2020-12 number.
    assert_eq!(props["id"], json!({"type": "integer", "exclusiveMinimum": 1}));
    assert_eq!(spec.input_schema["required"], json!(["id"]));
    assert_eq!(spec.input_schema["additionalProperties"], json!(false));
    // deepObject and cookies cannot be expressed: optional, so left out with a note.
    assert!(props.get("filter").is_none() && props.get("session").is_none());
    assert!(get.notes.iter().any(|n| n.contains("`filter`")), "{:?}", get.notes);
    assert!(get.notes.iter().any(|n| n.contains("cookie parameter `session`")));
    assert!(!spec.enabled, "imported tools start disabled");
    assert_eq!(spec.auth_strategy, AuthStrategy::None);
    assert_eq!(
        get.suggested_auth.as_ref().map(|a| a.strategy),
        Some(AuthStrategy::StaticBearer)
    );
    let hints = spec.annotations.clone().expect("annotations");
    assert_eq!(
        (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(spec.title.as_deref(), Some("Find a pet"));
    assert_eq!(get.source.key, "GET /pets/{id}");
    assert_eq!(get.source.arguments["X-Trace"].location, "header");
}

#[test]
fn output_schema_is_the_first_json_2xx_object_with_composition_and_cycles_cut() {
    let plan = pets();
    let spec = &tool(&plan, "GET", "/pets/{id}").spec;
    assert_eq!(spec.response_mode, ResponseMode::Json);
    let output = spec.output_schema.as_ref().expect("output schema");
    assert_eq!(output["type"], json!("object"));
    let new_pet = &output["allOf"][0];
    assert_eq!(
        new_pet["properties"]["tag"],
        json!({"type": "string"}),
        "x- and example dropped"
    );
    let node = &new_pet["properties"]["tree"];
    assert_eq!(
        node["properties"]["name"]["type"],
        json!(["string", "null"]),
        "nullable"
    );
    let again = &node["properties"]["children"]["items"];
    assert!(
        again["description"].as_str().is_some_and(|d| d.contains("recursive")),
        "{again}"
    );
    assert!(again.get("properties").is_none(), "the cycle is cut");
    // 3.0's `nullable` beside `allOf` (no `type`): null is an alternative.
    let owner = &new_pet["properties"]["owner"];
    assert_eq!(owner["anyOf"][1], json!({"type": "null"}), "{owner}");
    assert_eq!(owner["anyOf"][0]["allOf"][0]["type"], json!("object"), "{owner}");
    // Overlapping `oneOf` alternatives ("a" is both) would refuse "a": read as `anyOf`.
    assert_eq!(
        new_pet["properties"]["kind"],
        json!({"anyOf": [{"type": "string"}, {"type": "string", "enum": ["a"]}]})
    );
    // Must compile as JSON Schema (the admin API checks it too).
    assert!(serde_json::to_string(output).is_ok());
    assert!(!output.to_string().contains("oneOf"));
}

#[test]
fn body_properties_become_arguments_with_collision_safe_names() {
    let plan = pets();
    let put = tool(&plan, "PUT", "/pets/{id}");
    let spec = &put.spec;
    assert_eq!(spec.name, "update_pet", "normalized operationId");
    let props = spec.input_schema["properties"].as_object().expect("props");
    // The body's `id` collides with the path's `id`.
    assert!(props.contains_key("id") && props.contains_key("body_id"), "{props:?}");
    assert_eq!(
        spec.body_template,
        Some(
            json!({"id": "{body_id}", "kind": "{kind}", "name": "{name}", "owner": "{owner}", "tag": "{tag}", "tree": "{tree}"})
        )
    );
    let mut required: Vec<&str> = spec.input_schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["X-Trace", "id", "name"]);
    assert_eq!(
        put.source.arguments["body_id"],
        Location {
            location: "body".into(),
            name: "id".into()
        }
    );
    assert!(!props.contains_key("created"), "readOnly properties are not sent");
    assert_eq!(spec.response_mode, ResponseMode::Text, "204 has no JSON");
    let hints = spec.annotations.clone().expect("annotations");
    assert_eq!(hints.destructive_hint, Some(true));
}

#[test]
fn skips_say_why_and_names_stay_unique() {
    let plan = pets();
    assert!(skipped(&plan, "HEAD", "/pets/{id}").contains("HEAD"));
    // A required comma-separated array cannot be expressed.
    assert!(skipped(&plan, "GET", "/pets").contains("`ids`"));
    // A form body: its properties are arguments, sent form-encoded (the duplicate
    // operationId of GET /pets/{id} is renamed).
    let post = tool(&plan, "POST", "/pets");
    assert_eq!(post.spec.name, "getPet");
    assert_eq!(post.spec.body_template, Some(json!({"nick": "{nick}"})));
    assert_eq!(
        post.spec.headers_template.get("Content-Type").map(String::as_str),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(plan.operations.len(), 5);
}

#[test]
fn filters_and_options() {
    let doc = parse(PETS_YAML.as_bytes()).expect("yaml");
    let options = Options {
        tags: vec!["search".into()],
        ..Options::default()
    };
    let filtered = plan(&doc, &options).expect("plan");
    assert_eq!(filtered.operations.len(), 1);
    assert_eq!(filtered.filtered_out, 4);
    let options = Options {
        methods: vec!["put".into()],
        name_prefix: Some("pets.".into()),
        base_url: Some("http://127.0.0.1:8080/api".into()),
        allow_insecure: true,
        ..Options::default()
    };
    let put = plan(&doc, &options).expect("plan");
    let spec = &tool(&put, "PUT", "/pets/{id}").spec;
    assert_eq!(spec.name, "pets_update_pet");
    assert_eq!(spec.base_url, "http://127.0.0.1:8080");
    assert_eq!(spec.endpoint_path, "/api/pets/{id}");
    // http needs allow_insecure: without it every operation says so.
    let options = Options {
        base_url: Some("http://api.example".into()),
        ..Options::default()
    };
    let refused = plan(&doc, &options).expect("plan");
    assert!(skipped(&refused, "PUT", "/pets/{id}").contains("https"));
}

#[test]
fn names_are_normalized_bounded_and_deduplicated() {
    assert_eq!(normalize_name("repos/get-content (v2)", "x"), "repos_get-content_v2");
    assert_eq!(normalize_name("???", "get"), "get");
    let long = "a".repeat(100);
    assert_eq!(normalize_name(&long, "x").len(), NAME_MAX);
    let mut taken = std::collections::HashSet::new();
    taken.insert(normalize_name(&long, "x"));
    let second = unique_name(&normalize_name(&long, "x"), &taken);
    assert_eq!(second.len(), NAME_MAX);
    assert!(second.ends_with("_2"));
}

#[test]
fn recursion_remote_refs_and_depth_never_abort() {
    let doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "servers": [{"url": "https://api.example"}],
        "paths": {
            "/a": {"post": {
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/$defs/A"}}}},
                "responses": {"200": {"description": "", "content": {"application/json": {"schema": {"$ref": "other.yaml#/X"}}}}}
            }},
            "/b": {"get": {"parameters": [{"$ref": "#/nowhere"}], "responses": {}}},
            "/c": {"$ref": "https://example.com/paths.yaml"},
        },
        "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"$ref": "#/$defs/B"}}},
                  "B": {"oneOf": [{"$ref": "#/$defs/A"}, {"type": "string"}]}}
    });
    let plan = plan(&doc, &Options::default()).expect("plan");
    let a = tool(&plan, "POST", "/a");
    assert_eq!(a.spec.name, "post_a");
    assert_eq!(a.spec.body_template, Some(json!({"a": "{a}", "b": "{b}"})));
    assert!(a.notes.iter().any(|n| n.contains("recursive")), "{:?}", a.notes);
    assert!(skipped(&plan, "GET", "/b").contains("#/nowhere"));
    assert!(skipped(&plan, "GET", "/c").contains("remote"));
    // A deeply nested schema is bounded.
    let mut deep = json!({"type": "string"});
    for _ in 0..100 {
        deep = json!({"type": "object", "properties": {"x": deep}});
    }
    let mut notes = schema::Notes::default();
    let schemas = schema::Schemas {
        document: &doc,
        version: Version::V31,
    };
    let inlined = schemas.inline(&deep, &mut notes);
    assert!(notes.too_deep);
    assert!(serde_json::to_string(&inlined).expect("json").len() < 1000);
}

#[test]
fn yaml_with_unquoted_status_codes_and_hostile_aliases() {
    let doc = parse(
        b"openapi: 3.0.0\ninfo: {title: t, version: 1}\nservers: [{url: 'https://api.example'}]\npaths:\n  /a:\n    get:\n      responses:\n        200:\n          description: ok\n          content:\n            application/json:\n              schema: {type: object, properties: {n: {type: integer}}}\n",
    )
    .expect("yaml");
    let plan = plan(&doc, &Options::default()).expect("plan");
    let spec = &tool(&plan, "GET", "/a").spec;
    assert_eq!(spec.response_mode, ResponseMode::Json);
    assert_eq!(
        spec.output_schema.as_ref().map(|s| s["properties"]["n"].clone()),
        Some(json!({"type": "integer"}))
    );
    // A "billion laughs" document: refused by the parser's limits, not expanded.
    let mut bomb = String::from("openapi: 3.0.0\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..10 {
        let previous = level - 1;
        bomb.push_str(&format!(
            "a{level}: &a{level} [*a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}]\n"
        ));
    }
    let started = std::time::Instant::now();
    assert!(matches!(parse(bomb.as_bytes()), Err(DocumentError::Syntax(_))));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
