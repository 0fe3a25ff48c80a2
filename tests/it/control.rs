//! The control plane: integrations, member sessions, identity injection,
//! require_member, immediate revocation on every instance, the render endpoint.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use sqlx::Connection;
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{ModernClient, RawSession, run_id},
    spawn_app, spawn_app_with,
    upstream::Upstream,
};
use uuid::Uuid;

/// A customer backend's signing key.
struct Backend {
    kid: String,
    private_pem: String,
    public_pem: String,
}

impl Backend {
    fn new(kid: &str) -> Self {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        Self {
            kid: kid.into(),
            private_pem: secret.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
            public_pem: secret.public_key().to_public_key_pem(LineEnding::LF).expect("pem"),
        }
    }

    async fn register(&self, app: &TestApp, project: Uuid) {
        app.admin.add_member_key(project, &self.kid, &self.public_pem).await;
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ec_pem(self.private_pem.as_bytes()).expect("key"),
        )
        .expect("sign")
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(project: Uuid, sub: &str) -> Value {
    json!({"sub": sub, "email": format!("{sub}@example.com"), "roles": ["admin", "billing"],
           "iat": now(), "exp": now() + 120, "jti": Uuid::new_v4().to_string(), "aud": project.to_string()})
}

async fn exchange(app: &TestApp, key: &str, assertion: &str) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/v1/member-sessions", app.base_url))
        .bearer_auth(key)
        .json(&json!({"member_assertion": assertion}))
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn member_sessions_attribute_runs_and_inject_identity() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("whoami", &upstream.url(), "/who/{member.id}")
            .schema(json!({"type": "object", "properties": {"note": {"type": "string"}}}))
            .body_template(json!({"roles": "{member.roles}", "email": "{member.email}", "note": "{note}"}))
            .require_member()
            .inject_member_identity(),
    )
    .await;
    let backend = Backend::new("k1");
    backend.register(&app, app.project_id).await;

    let (status, minted) = exchange(&app, &app.api_key, &backend.sign(&claims(app.project_id, "user-42"))).await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("tng_mst_"));
    let expires = chrono::DateTime::parse_from_rfc3339(minted["expires_at"].as_str().expect("exp")).expect("time");
    let ttl = expires.timestamp() - now();
    assert!((880..=900).contains(&ttl), "15-minute default TTL, got {ttl}");

    // An API-key session neither sees nor calls the member-only tool.
    let mut keyed = app.session();
    keyed.initialize().await;
    let listed = keyed.request("tools/list", json!({})).await;
    assert_eq!(listed.body["result"]["tools"], json!([]));
    let refused = keyed
        .request("tools/call", json!({"name": "whoami", "arguments": {}}))
        .await;
    assert_eq!(refused.body["error"]["code"], -32602);
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("member session")
    );

    let mut member = RawSession::new(app.http.clone(), app.mcp_url.clone(), token.clone());
    member.initialize().await;
    let listed = member.request("tools/list", json!({})).await;
    assert_eq!(listed.body["result"]["tools"][0]["name"], "whoami");
    let result = member.call("whoami", json!({"note": "hi"})).await;
    assert_eq!(result["isError"], false, "{result}");
    let req = &upstream.requests()[0];
    assert_eq!(req.path, "/who/user-42");
    assert_eq!(
        req.json(),
        json!({"roles": ["admin", "billing"], "email": "user-42@example.com", "note": "hi"})
    );
    assert_eq!(req.header("x-tengine-member-id"), Some("user-42"));
    assert_eq!(req.header("x-tengine-member-email"), Some("user-42@example.com"));
    assert_eq!(req.header("x-tengine-member-roles"), Some("admin,billing"));
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(run["member_id"], "user-42");
    let (_, theirs) = app
        .admin
        .get(&format!("/v1/projects/{}/runs?member=user-42", app.project_id))
        .await;
    assert_eq!(
        theirs["runs"].as_array().map(Vec::len),
        Some(1),
        "history filters by member: {theirs}"
    );

    // A session opened with the API key is not valid for the member token.
    let mut mixed = RawSession::new(app.http.clone(), app.mcp_url.clone(), token.clone());
    mixed.session_id = keyed.session_id.clone();
    assert_eq!(mixed.request("ping", json!({})).await.status, 404);

    // Revoking the member's sessions ends them at once.
    let (status, _) = app
        .admin
        .post(
            &format!("/v1/projects/{}/members/user-42/revoke-sessions", app.project_id),
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    let after = member.request("ping", json!({})).await;
    assert_eq!(after.status, 401, "{}", after.body);
    assert!(after.headers.contains_key("www-authenticate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_assertions_are_refused_with_a_reason() {
    let app = spawn_app().await;
    let backend = Backend::new("k1");
    backend.register(&app, app.project_id).await;
    let other_id = app.admin.create_project("other").await;
    let foreign = Backend::new("k2");
    foreign.register(&app, other_id).await;
    let p = app.project_id;

    let replayed = backend.sign(&claims(p, "u"));
    assert_eq!(exchange(&app, &app.api_key, &replayed).await.0, 201);
    let mut cases: Vec<(String, &str)> = vec![(replayed, "already used")];
    let mut c = claims(p, "u");
    c["iat"] = json!(now() - 400);
    c["exp"] = json!(now() - 200);
    cases.push((backend.sign(&c), "expired"));
    let mut c = claims(p, "u");
    c["iat"] = json!(now() + 600);
    c["exp"] = json!(now() + 700);
    cases.push((backend.sign(&c), "future"));
    let mut c = claims(p, "u");
    c["exp"] = json!(now() + 3600);
    cases.push((backend.sign(&c), "at most"));
    let mut c = claims(p, "u");
    c["aud"] = json!(Uuid::now_v7().to_string());
    cases.push((backend.sign(&c), "aud"));
    let unknown = Backend::new("nope");
    cases.push((unknown.sign(&claims(p, "u")), "kid"));
    cases.push((foreign.sign(&claims(p, "u")), "kid"));
    let mut c = claims(p, "u");
    c.as_object_mut().expect("obj").remove("jti");
    cases.push((backend.sign(&c), "jti"));
    // alg none.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims(p, "u"))
    );
    cases.push((none, "header"));
    // HS256 keyed with the public key (algorithm confusion).
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims(p, "u"),
        &EncodingKey::from_secret(backend.public_pem.as_bytes()),
    )
    .expect("sign");
    cases.push((confused, "ES256"));
    cases.push(("not-a-jwt".into(), "header"));
    // Signed by another key than the one its kid names.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(p, "u"),
        &EncodingKey::from_ec_pem(unknown.private_pem.as_bytes()).expect("key"),
    )
    .expect("sign");
    cases.push((forged, "signature"));

    for (assertion, reason) in cases {
        let (status, body) = exchange(&app, &app.api_key, &assertion).await;
        assert_eq!(status, 401, "{reason}: {body}");
        assert_eq!(body["error"]["code"], "invalid_assertion", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(reason), "expected `{reason}` in: {message}");
    }
    let (status, _) = exchange(&app, "tengine_wrong", &backend.sign(&claims(p, "u"))).await;
    assert_eq!(status, 401);
}

/// An app with an `echo` tool, a second ingress instance, and a session on it that
/// has called the tool once.
async fn echo_on_two_instances() -> (TestApp, Upstream, tengine_tests::ExtraIngress, RawSession) {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo")).await;
    let second = app.spawn_ingress(None).await;
    let mut there = RawSession::new(
        app.http.clone(),
        format!("{}/mcp", second.base_url),
        app.api_key.clone(),
    );
    there.initialize().await;
    assert_eq!(there.call("echo", json!({})).await["isError"], json!(false));
    (app, upstream, second, there)
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_every_instance_immediately() {
    let (app, _upstream, second, mut there) = echo_on_two_instances().await;

    // Revoke through the first instance; the second refuses the very next call.
    let started = Instant::now();
    let (status, _) = app.admin.revoke_api_key(app.project_id, app.api_key_id).await;
    assert_eq!(status, 204);
    let refused = there
        .request("tools/call", json!({"name": "echo", "arguments": {}}))
        .await;
    let delay = started.elapsed();
    assert_eq!(refused.status, 401, "{}", refused.body);
    println!("revocation: the other instance refused the next call {delay:?} after the revoke began");
    assert!(delay < Duration::from_millis(1000));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_runs_of_a_revoked_key_are_not_executed() {
    let app = spawn_app_with(&[("worker.concurrency", "1")]).await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::get("slow", &upstream.url(), "/slow/3000").timeout_ms(5000))
        .await;
    let key = app.admin.create_api_key(app.project_id, &[]).await;
    let (key_id, key) = (key.id, key.key);
    let mut busy = app.session();
    busy.initialize().await;
    let first = tokio::spawn(async move { busy.call("slow", json!({})).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut doomed = RawSession::new(app.http.clone(), app.mcp_url.clone(), key);
    doomed.initialize().await;
    let queued = tokio::spawn(async move { doomed.call("slow", json!({})).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = app.admin.revoke_api_key(app.project_id, key_id).await;
    assert_eq!(status, 204);
    first.await.expect("join");
    let result = queued.await.expect("join");
    assert_eq!(result["isError"], true, "{result}");
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(run["status"], "revoked", "{run}");
    assert_eq!(
        upstream.requests().len(),
        1,
        "the revoked caller's run never reached the API"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn integrations_restrict_tools_and_give_client_config() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    for name in ["a", "b"] {
        app.create_tool(ToolSpec::post(name, &upstream.url(), "/x")).await;
    }
    let base = format!("/v1/projects/{}/integrations", app.project_id);
    let (status, integration) = app
        .admin
        .post(&base, json!({"name": "Support Agent", "allowed_tools": ["b"]}))
        .await;
    assert_eq!(status, 201, "{integration}");
    let iid = integration["id"].as_str().expect("id").to_string();
    let config = &integration["client_config"];
    assert_eq!(
        config["mcp_json"]["mcpServers"]["tengine-support-agent"]["url"],
        app.mcp_url
    );
    assert_eq!(config["anthropic_mcp_servers"][0]["url"], app.mcp_url);
    assert!(config["python"].as_str().expect("py").contains(&app.mcp_url));

    let (status, key) = app
        .admin
        .post(&format!("{base}/{iid}/api-keys"), json!({"name": "agent"}))
        .await;
    assert_eq!(status, 201);
    let key = key["key"].as_str().expect("key").to_string();
    let mut session = RawSession::new(app.http.clone(), app.mcp_url.clone(), key.clone());
    session.initialize().await;
    let listed = session.request("tools/list", json!({})).await;
    assert_eq!(listed.body["result"]["tools"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed.body["result"]["tools"][0]["name"], "b");
    let hidden = session
        .request("tools/call", json!({"name": "a", "arguments": {}}))
        .await;
    assert_eq!(hidden.body["error"]["code"], -32602);

    let (status, _) = app.admin.delete(&format!("{base}/{iid}")).await;
    assert_eq!(status, 204);
    assert_eq!(
        session.request("ping", json!({})).await.status,
        401,
        "its keys die with it"
    );
    let (_, listed) = app.admin.get(&base).await;
    assert_eq!(
        listed["integrations"].as_array().map(Vec::len),
        Some(1),
        "only the default remains"
    );
    let default_id = listed["integrations"][0]["id"].as_str().expect("id").to_string();
    let (status, body) = app.admin.delete(&format!("{base}/{default_id}")).await;
    assert_eq!(status, 409, "a project keeps one integration: {body}");
    let (status, _) = app.admin.get(&format!("/v1/projects/{}", app.project_id)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn render_shows_the_request_without_secrets() {
    let app = spawn_app().await;
    app.create_tool(
        ToolSpec::post("create", "http://127.0.0.1:9", "/items/{id}")
            .schema(json!({"type": "object", "properties": {"id": {"type": "string"}, "tags": {"type": "array"}}}))
            .body_template(json!({"tags": "{tags}", "by": "{member.id}"}))
            .inject_member_identity()
            .auth_bearer("very-secret-token"),
    )
    .await;
    let (status, rendered) = app
        .admin
        .post(
            &format!("/v1/projects/{}/tools/create/render", app.project_id),
            json!({"arguments": {"id": "a b", "tags": [1, 2]}, "member": {"id": "m1", "roles": ["r"]}}),
        )
        .await;
    assert_eq!(status, 200, "{rendered}");
    assert_eq!(rendered["url"], "http://127.0.0.1:9/items/a%20b");
    assert_eq!(rendered["body"], json!({"tags": [1, 2], "by": "m1"}));
    let text = rendered.to_string();
    assert!(!text.contains("very-secret-token") && text.contains("Bearer <redacted>"));
    assert!(text.contains("X-Tengine-Member-Id"));
    let (status, _) = app
        .admin
        .post(
            &format!("/v1/projects/{}/tools/create/render", app.project_id),
            json!({"arguments": {"id": 5}}),
        )
        .await;
    assert_eq!(status, 422, "arguments are validated");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_addresses_need_the_projects_allowlist() {
    let app = spawn_app_with(&[("allow_private_upstreams", "false")]).await;
    let upstream = Upstream::spawn(None).await;
    let port = upstream.addr.port();
    // One by literal IP, one by a name that resolves to loopback (the resolver path).
    app.create_tool(ToolSpec::post("literal", &upstream.url(), "/x")).await;
    app.create_tool(ToolSpec::post("named", &format!("http://localhost:{port}"), "/x"))
        .await;
    let mut session = app.session();
    session.initialize().await;
    for tool in ["literal", "named"] {
        let refused = session.call(tool, json!({})).await;
        assert_eq!(refused["isError"], true, "{refused}");
        assert!(
            tengine_tests::mcp::text(&refused).contains("outbound_allowlist"),
            "{refused}"
        );
        let run = app.admin.finished_run(&run_id(&refused)).await;
        assert_eq!(run["error_class"], "forbidden");
    }
    assert!(upstream.requests().is_empty(), "nothing reached the private address");

    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"outbound_allowlist": ["127.0.0.0/8", "::1"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outbound_allowlist"], json!(["127.0.0.0/8", "::1/128"]));
    for tool in ["literal", "named"] {
        let allowed = session.call(tool, json!({})).await;
        assert_eq!(allowed["isError"], false, "{allowed}");
    }
    let (status, _) = app
        .admin
        .patch_project(app.project_id, json!({"outbound_allowlist": ["not-a-network"]}))
        .await;
    assert_eq!(status, 422);
}

/// Both forms (Standard Webhooks with the webhook-id binding, and tng3) verify with `secret`.
fn verifies(secret: &str, req: &tengine_tests::upstream::Recorded) -> bool {
    req.check_signatures(secret).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_rotation_signs_with_both_secrets_during_the_overlap() {
    let app = spawn_app().await;
    let (old, new, newest) = (
        tengine_tests::signing_secret(),
        tengine_tests::signing_secret(),
        tengine_tests::signing_secret(),
    );
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("signed", &upstream.url(), "/x").auth_hmac(&old))
        .await;
    let mut session = app.session();
    session.initialize().await;

    let (status, body) = app
        .admin
        .patch_tool(
            app.project_id,
            "signed",
            json!({"auth_secret": new, "rotation_overlap_secs": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["previous_secret_expires_at"].is_string(), "{body}");
    session.call("signed", json!({})).await;
    let during = upstream.requests().pop().expect("request");
    assert!(
        verifies(&old, &during) && verifies(&new, &during),
        "both secrets verify during the overlap: {:?} old={} new={}",
        during.header("webhook-signature"),
        verifies(&old, &during),
        verifies(&new, &during)
    );
    let signatures: Vec<&str> = during
        .header("x-tengine-signature")
        .expect("signatures")
        .split(' ')
        .collect();
    assert_eq!(signatures.len(), 4, "tng3 and tng2 per secret: {signatures:?}");

    // A rotation without overlap ends the previous secret at once.
    let (status, _) = app
        .admin
        .patch_tool(app.project_id, "signed", json!({"auth_secret": newest}))
        .await;
    assert_eq!(status, 200);
    session.call("signed", json!({})).await;
    let after = upstream.requests().pop().expect("request");
    assert!(verifies(&newest, &after));
    assert!(!verifies(&new, &after) && !verifies(&old, &after));

    let (status, _) = app
        .admin
        .patch_tool(app.project_id, "signed", json!({"rotation_overlap_secs": 60}))
        .await;
    assert_eq!(status, 422, "an overlap needs a new secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_member_session_gets_401_mid_session() {
    let app = spawn_app_with(&[("ingress.member_session_ttl_secs", "1")]).await;
    let backend = Backend::new("k1");
    backend.register(&app, app.project_id).await;
    let (status, minted) = exchange(&app, &app.api_key, &backend.sign(&claims(app.project_id, "u"))).await;
    assert_eq!(status, 201);
    let mut session = RawSession::new(
        app.http.clone(),
        app.mcp_url.clone(),
        minted["token"].as_str().expect("t").into(),
    );
    session.initialize().await;
    assert_eq!(session.request("ping", json!({})).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = session.request("ping", json!({})).await;
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert!(expired.headers.contains_key("www-authenticate"));
    assert!(
        expired.body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("expired")
    );
}

/// Tool definitions are cached per ingress instance; a change through one instance
/// reaches the others on the broadcast, well before the cache's time-to-live, and
/// a call an instance still accepted meanwhile never reaches the API.
#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_tool_is_refused_by_every_instance() {
    // Both instances have the tool cached now (the second one called it).
    let (app, upstream, second, mut there) = echo_on_two_instances().await;
    let mut here = app.session();
    here.initialize().await;
    assert_eq!(here.call("echo", json!({})).await["isError"], json!(false));
    let served = upstream.requests().len();

    let started = Instant::now();
    let (status, body) = app
        .admin
        .patch_tool(app.project_id, "echo", json!({"enabled": false}))
        .await;
    assert_eq!(status, 200, "{body}");
    // The instance that made the change refuses at once.
    let refused = here
        .request("tools/call", json!({"name": "echo", "arguments": {}}))
        .await;
    assert_eq!(refused.body["error"]["code"], -32602, "{}", refused.body);
    // The other one within the broadcast's delay, far below the 5 s time-to-live.
    loop {
        let reply = there
            .request("tools/call", json!({"name": "echo", "arguments": {}}))
            .await;
        if reply.body["error"]["code"] == -32602 {
            break;
        }
        // Accepted from a stale entry: the worker re-reads the tool and revokes the run.
        assert_eq!(
            reply.body["result"]["_meta"]["tengine.dev/status"], "revoked",
            "{}",
            reply.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the change did not reach the other instance"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "tool change: the other instance refused {:?} after the change began",
        started.elapsed()
    );
    assert_eq!(
        upstream.requests().len(),
        served,
        "no call reached the API after the tool was disabled"
    );
    second.stop().await;
}

/// Run history, bodies and usage answer each credential within its scope: a key
/// of a tool-limited integration sees only its integration's runs of its tools,
/// a member session only its member's, a `read` key (and the admin) everything;
/// a `read`-only key cannot call.
#[tokio::test(flavor = "multi_thread")]
async fn reads_follow_the_credential_scope() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    for name in ["a", "b"] {
        app.create_tool(ToolSpec::post(name, &upstream.url(), "/echo")).await;
    }
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    let base = format!("/v1/projects/{}/integrations", app.project_id);
    let (_, limited) = app
        .admin
        .post(&base, json!({"name": "only-a", "allowed_tools": ["a"]}))
        .await;
    let limited_id = limited["id"].as_str().expect("id").to_string();
    let (_, limited_key) = app
        .admin
        .post(&format!("{base}/{limited_id}/api-keys"), json!({"name": "agent"}))
        .await;
    let limited_key = limited_key["key"].as_str().expect("key").to_string();
    let reader_key = app.admin.create_api_key(app.project_id, &["read"]).await;
    assert_eq!(reader_key.body["scopes"], json!(["read"]));
    let reader_key = reader_key.key;
    let (status, body) = app
        .admin
        .post(
            &format!("/v1/projects/{}/api-keys", app.project_id),
            json!({"scopes": ["write"]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let backend = Backend::new("k1");
    backend.register(&app, app.project_id).await;
    let mut member_tokens = Vec::new();
    for sub in ["ann", "bob"] {
        let (status, minted) = exchange(&app, &app.api_key, &backend.sign(&claims(app.project_id, sub))).await;
        assert_eq!(status, 201, "{minted}");
        member_tokens.push(minted["token"].as_str().expect("token").to_string());
    }

    // Runs: the default key calls a and b, the limited key a, each member a.
    let mut default = app.session();
    default.initialize().await;
    let default_a = run_id(&default.call("a", json!({"secret": "default-a"})).await);
    let default_b = run_id(&default.call("b", json!({"secret": "default-b"})).await);
    let mut limited_session = RawSession::new(app.http.clone(), app.mcp_url.clone(), limited_key.clone());
    limited_session.initialize().await;
    let limited_a = run_id(&limited_session.call("a", json!({"secret": "limited-a"})).await);
    let mut member_runs = Vec::new();
    for token in &member_tokens {
        let mut session = RawSession::new(app.http.clone(), app.mcp_url.clone(), token.clone());
        session.initialize().await;
        member_runs.push(run_id(&session.call("a", json!({"secret": "member"})).await));
    }
    for run in [&default_a, &default_b, &limited_a, &member_runs[0], &member_runs[1]] {
        app.admin.finished_run(run).await;
    }

    let get = |token: String, path: String| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.base_url);
        async move {
            let response = http.get(url).bearer_auth(token).send().await.expect("GET");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let listed = |token: String| {
        let path = format!("/v1/projects/{}/runs", app.project_id);
        let get = &get;
        async move {
            let (status, body) = get(token, path).await;
            assert_eq!(status, 200, "{body}");
            let mut ids: Vec<String> = body["runs"]
                .as_array()
                .expect("runs")
                .iter()
                .map(|r| r["run_id"].as_str().expect("id").to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };

    // The tool-limited integration's key: its own run of `a`, nothing else.
    assert_eq!(listed(limited_key.clone()).await, vec![limited_a.clone()]);
    let (status, _) = get(limited_key.clone(), format!("/v1/runs/{default_b}")).await;
    assert_eq!(status, 404, "another integration's run (and its bodies) is not found");
    let (status, _) = get(limited_key.clone(), format!("/v1/runs/{default_a}")).await;
    assert_eq!(
        status, 404,
        "the same tool through another integration is not found either"
    );
    let (status, own) = get(limited_key.clone(), format!("/v1/runs/{limited_a}")).await;
    assert_eq!(status, 200, "{own}");
    assert!(
        own["bodies"]["request"]
            .as_str()
            .unwrap_or_default()
            .contains("limited-a"),
        "{own}"
    );
    let (status, usage) = get(
        limited_key.clone(),
        format!("/v1/projects/{}/usage?group_by=tool,integration", app.project_id),
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["usage"].as_array().map(Vec::len), Some(1), "{usage}");
    assert_eq!(usage["usage"][0]["tool"], "a", "{usage}");
    assert_eq!(usage["usage"][0]["integration"], limited_id.as_str(), "{usage}");

    // The default integration's `call` key: its integration's runs (members' included), not the limited one's.
    assert_eq!(
        listed(app.api_key.clone()).await,
        sorted(vec![
            default_a.clone(),
            default_b.clone(),
            member_runs[0].clone(),
            member_runs[1].clone()
        ])
    );
    // A member session: only its member's runs.
    assert_eq!(listed(member_tokens[0].clone()).await, vec![member_runs[0].clone()]);
    let (status, _) = get(member_tokens[0].clone(), format!("/v1/runs/{}", member_runs[1])).await;
    assert_eq!(status, 404, "another member's run");
    let (status, _) = get(member_tokens[0].clone(), format!("/v1/runs/{default_a}")).await;
    assert_eq!(status, 404, "the key's own (non-member) run");
    // The `read` key and the admin: everything.
    let everything = sorted(vec![
        default_a.clone(),
        default_b.clone(),
        limited_a.clone(),
        member_runs[0].clone(),
        member_runs[1].clone(),
    ]);
    assert_eq!(listed(reader_key.clone()).await, everything);
    assert_eq!(listed(app.admin.token.clone()).await, everything);
    let (status, _) = get(reader_key.clone(), format!("/v1/runs/{limited_a}")).await;
    assert_eq!(status, 200);

    // A read-only key may not call.
    let refused = RawSession::new(app.http.clone(), app.mcp_url.clone(), reader_key)
        .post(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "1"}}}))
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.to_string().contains("`call` scope"), "{}", refused.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn assertions_with_control_characters_or_hostile_times_are_refused() {
    let app = spawn_app().await;
    let backend = Backend::new("k1");
    backend.register(&app, app.project_id).await;
    let p = app.project_id;
    let with = |claim: &str, value: Value| {
        let mut c = claims(p, "u");
        c[claim] = value;
        backend.sign(&c)
    };
    let mut cases: Vec<(String, &str)> = vec![
        (with("sub", json!("u\u{0}1")), "`sub`"),
        (with("sub", json!("u\n1")), "`sub`"),
        (with("sub", json!("x".repeat(257))), "`sub`"),
        (with("jti", json!("j\u{7f}")), "`jti`"),
        (with("email", json!("a\u{0}@example.com")), "`email`"),
        (
            with("email", json!(format!("{}@example.com", "a".repeat(320)))),
            "`email`",
        ),
        (with("roles", json!(["ok", "ad\u{1b}min"])), "`roles`"),
        // Arithmetic on these must not overflow: refused like any other bad lifetime.
        (with("iat", json!(i64::MIN)), "at most"),
    ];
    let mut c = claims(p, "u");
    c["iat"] = json!(i64::MIN);
    c["exp"] = json!(i64::MAX);
    cases.push((backend.sign(&c), "at most"));
    let mut c = claims(p, "u");
    c["iat"] = json!(i64::MAX);
    c["exp"] = json!(i64::MAX);
    cases.push((backend.sign(&c), "future"));
    let mut c = claims(p, "u");
    c["exp"] = json!(i64::MAX);
    cases.push((backend.sign(&c), "at most"));
    // A `kid` naming no key is refused before any lookup goes wrong.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k\u{0}1".into());
    let odd_kid = jsonwebtoken::encode(
        &header,
        &claims(p, "u"),
        &EncodingKey::from_ec_pem(backend.private_pem.as_bytes()).expect("key"),
    )
    .expect("sign");
    cases.push((odd_kid, "`kid`"));
    for (assertion, reason) in cases {
        let (status, body) = exchange(&app, &app.api_key, &assertion).await;
        assert_eq!(status, 401, "{reason}: {body}");
        assert_eq!(body["error"]["code"], "invalid_assertion", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(reason), "expected `{reason}` in: {message}");
    }
    // A member id with a character that is not a control character is fine.
    let (status, body) = exchange(&app, &app.api_key, &backend.sign(&claims(p, "ü␀"))).await;
    assert_eq!(status, 201, "{body}");
}

/// Credentials and tools live in memory on every ingress and worker
/// (`tengine_control::freshness`), yet while calls flow at 1,000/s through two
/// ingress and two workers, no call sent after the revocation answered is
/// admitted on either instance, and no run of the revoked key reaches the API
/// unless history says it succeeded.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_under_load_admits_nothing_after_it_answered_on_any_instance() {
    const CALLERS: usize = 40;
    const EVERY: Duration = Duration::from_millis(40);
    let app = spawn_app_with(&[("worker.concurrency", "64")]).await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo").body_template(json!({"run": "{run.id}"})))
        .await;
    let second = app.spawn_ingress(None).await;
    let _worker = app.spawn_worker().await;
    let key = app.admin.create_api_key(app.project_id, &[]).await;
    let urls = [app.mcp_url.clone(), format!("{}/mcp", second.base_url)];

    let started = Instant::now();
    let until = started + Duration::from_millis(2600);
    let mut callers = Vec::new();
    for n in 0..CALLERS {
        let client = ModernClient::new(app.http.clone(), urls[n % 2].clone(), key.key.clone());
        callers.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            let mut ticks = tokio::time::interval(EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut id = 0u64;
            while Instant::now() < until {
                ticks.tick().await;
                id += 1;
                let sent = Instant::now();
                let reply = client
                    .request(json!(id), "tools/call", json!({"name": "echo", "arguments": {}}))
                    .await;
                let run = reply.body["result"]["_meta"]["tengine.dev/runId"]
                    .as_str()
                    .map(str::to_string);
                calls.push((sent, reply.status, run));
            }
            calls
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revoking = Instant::now();
    let (status, _) = app.admin.revoke_api_key(app.project_id, key.id).await;
    assert_eq!(status, 204);
    let answered = Instant::now();
    let mut calls = Vec::new();
    for caller in callers {
        calls.extend(caller.await.expect("caller"));
    }

    let admitted: Vec<_> = calls.iter().filter(|(_, _, run)| run.is_some()).collect();
    let late: Vec<_> = admitted.iter().filter(|(sent, _, _)| *sent >= answered).collect();
    let after = calls.iter().filter(|(sent, _, _)| *sent >= answered).count();
    let refused_after = calls
        .iter()
        .filter(|(sent, status, _)| *sent >= answered && *status == 401)
        .count();
    let mut statuses = std::collections::BTreeMap::new();
    for (_, status, run) in &calls {
        *statuses.entry((*status, run.is_some())).or_insert(0) += 1;
    }
    println!("revocation under load: (HTTP status, admitted) → calls: {statuses:?}");
    let last_admitted = admitted
        .iter()
        .map(|(sent, _, _)| *sent)
        .max()
        .expect("calls were admitted");
    println!(
        "revocation under load: {} calls in {:?} ({:.0}/s), {} admitted; the revocation took {:?}; {} calls \
         sent after it answered, {} refused with 401; the last admitted call was sent {:?} before it answered",
        calls.len(),
        until - started,
        calls.len() as f64 / (until - started).as_secs_f64(),
        admitted.len(),
        answered - revoking,
        after,
        refused_after,
        answered.saturating_duration_since(last_admitted),
    );
    assert!(
        late.is_empty(),
        "{} calls sent after the revocation answered were admitted",
        late.len()
    );
    assert!(after > 0, "no call was sent after the revocation answered");
    assert_eq!(
        refused_after, after,
        "every call after the revocation is refused as unauthorized"
    );

    // Every admitted run is in history; those that reached the API succeeded, and no
    // run that history calls revoked was sent.
    app.admin.wait_for_projector().await;
    let sent: std::collections::HashSet<String> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.json()["run"].as_str().map(str::to_string))
        .collect();
    let mut revoked = 0;
    for (_, _, run) in &admitted {
        let run = run.as_deref().expect("admitted");
        let record = app.admin.finished_run(run).await;
        match record["status"].as_str() {
            Some("succeeded") => assert!(sent.contains(run), "a succeeded run never reached the API: {record}"),
            Some("revoked") => {
                revoked += 1;
                assert!(!sent.contains(run), "a revoked run reached the API: {record}");
            }
            _ => panic!("unexpected run: {record}"),
        }
    }
    assert_eq!(
        sent.len(),
        admitted.len() - revoked,
        "every API request is a succeeded run's"
    );
    println!("revocation under load: {revoked} admitted runs ended revoked before calling the API");
    second.stop().await;
}

/// An instance whose PostgreSQL listener was lost may have missed a revocation's
/// notification. It reads access data from the database until the listener is back
/// and a marker sent after that has returned, and the copies it held before are
/// never used again. Here the revocation commits while no instance listens (its
/// notification reaches no one), with their copies of the key loaded and current
/// just before. A listener that came back trusting those copies admits the calls.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_missed_while_the_listener_was_down_is_still_honoured() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo")).await;
    let key = app.admin.create_api_key(app.project_id, &[]).await;
    let client = ModernClient::new(app.http.clone(), app.mcp_url.clone(), key.key.clone());
    let call = |id: u64| client.request(json!(id), "tools/call", json!({"name": "echo", "arguments": {}}));
    // Calls 250 ms apart: markers come back, and the key's copy is kept and used.
    for id in 1..=3 {
        let reply = call(id).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        run_id(&reply.body["result"]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut conn = app.pool.acquire().await.expect("connection");
    let listeners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("count listeners");
    assert!(
        listeners >= 2,
        "the ingress and the worker listen ({listeners} listeners)"
    );
    // No instance can listen again until the revocation has committed: the
    // database refuses new connections, and the revoking transaction ends every
    // other connection to it (waiting until they are gone) before it commits.
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await
        .expect("database name");
    // (A database's connections are allowed or refused from another one.)
    let mut server = sqlx::PgConnection::connect(&tengine_tests::database_url())
        .await
        .expect("connect");
    let allow = |allowed: bool| format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {allowed}");
    sqlx::raw_sql(&allow(false))
        .execute(&mut server)
        .await
        .expect("refuse connections");
    sqlx::raw_sql(&format!(
        "BEGIN; UPDATE api_keys SET revoked_at = now() WHERE id = '{}'; \
         SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid(); COMMIT",
        key.id
    ))
    .execute(&mut *conn)
    .await
    .expect("revoke while no instance listens");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::raw_sql(&allow(true))
        .execute(&mut server)
        .await
        .expect("accept connections");
    drop(conn);

    // At once, and after the listeners are back and markers return again.
    for id in 4..=9 {
        let reply = call(id).await;
        assert_eq!(reply.status, 401, "call {id} after the revocation: {}", reply.body);
        assert!(reply.body.get("result").is_none(), "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let relistened: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count listeners");
    assert_eq!(relistened, listeners, "every listener is back");
    assert_eq!(upstream.requests().len(), 3, "no API request after the revocation");
}

/// A write that may narrow access answers only once no instance may still use a
/// copy loaded before it, i.e. after the freshness window; a read does not wait.
/// (The proof's other half, that no copy is used past the window of the last
/// marker back, is `tengine_control::freshness`'s own test.)
#[tokio::test(flavor = "multi_thread")]
async fn narrowing_writes_answer_only_after_the_freshness_window() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo")).await;
    let key = app.admin.create_api_key(app.project_id, &[]).await;
    let window = tengine_control::freshness::WINDOW;

    let started = Instant::now();
    let (status, body) = app
        .admin
        .patch_tool(app.project_id, "echo", json!({"enabled": false}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= window,
        "disabling a tool answered in {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let (status, _) = app.admin.revoke_api_key(app.project_id, key.id).await;
    assert_eq!(status, 204);
    assert!(
        started.elapsed() >= window,
        "revoking a key answered in {:?}",
        started.elapsed()
    );

    // Reads never wait (measured as the fastest of a few, on a shared machine).
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _) = app.admin.get(&format!("/v1/projects/{}/tools", app.project_id)).await;
        assert_eq!(status, 200);
        fastest = fastest.min(started.elapsed());
    }
    assert!(fastest < window, "a read took {fastest:?}");
}
