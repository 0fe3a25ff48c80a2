//! MCP authorization (OAuth 2.1): the official Python SDK's OAuth client runs the
//! whole flow (discovery from the 401, dynamic registration and a Client ID
//! Metadata Document served over TLS by the test, PKCE, the customer's login
//! app on loopback, the consent form, code exchange, a tool call whose upstream
//! sees the member, refresh), then the grant's revocation cuts it off at once on
//! every instance. The refusals are checked one by one with raw HTTP.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tengine_tests::{TestApp, ToolSpec, mcp::RawSession, signing_secret, spawn_app_with, upstream::Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::browser::Chromium;

const MEMBER: &str = "user-7";
/// Never contacted: flows stop at the redirect to it.
const REDIRECT_URI: &str = "http://127.0.0.1:53682/callback";

/// The customer's signing key for member assertions.
#[derive(Clone)]
struct Backend {
    kid: String,
    private_pem: String,
    public_pem: String,
}

impl Backend {
    fn new() -> Self {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        Self {
            kid: "login-key".into(),
            private_pem: secret.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
            public_pem: secret.public_key().to_public_key_pem(LineEnding::LF).expect("pem"),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ec_pem(self.private_pem.as_bytes()).expect("key");
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// A member assertion for `project` bound to `login` (if any), valid for `ttl` seconds from `iat_offset`.
    fn assertion(&self, project: Uuid, login: Option<&str>, iat_offset: i64) -> String {
        let now = chrono::Utc::now().timestamp() + iat_offset;
        let mut claims = json!({"sub": MEMBER, "email": "user-7@example.com", "roles": ["admin"],
            "iat": now, "exp": now + 120, "jti": Uuid::new_v4().to_string(), "aud": project.to_string()});
        if let Some(login) = login {
            claims["tengine_login"] = json!(login);
        }
        self.sign(&claims)
    }
}

/// The customer's app: its login page "signs in" MEMBER and sends the browser
/// back to Tengine with a member assertion bound to the login.
struct LoginApp {
    url: String,
}

#[derive(Clone)]
struct LoginState {
    backend: Backend,
    project: Uuid,
    callback: String,
}

impl LoginApp {
    async fn spawn(backend: &Backend, project: Uuid, issuer: &str) -> Self {
        let state = LoginState {
            backend: backend.clone(),
            project,
            callback: format!("{issuer}/login/callback"),
        };
        let app = Router::new().route("/tengine-login", get(login_page)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/tengine-login"),
        }
    }
}

async fn login_page(State(st): State<LoginState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let Some(login) = query.get("tengine_login") else {
        return (StatusCode::BAD_REQUEST, "no tengine_login").into_response();
    };
    let assertion = st.backend.assertion(st.project, Some(login), 0);
    let mut back = url::Url::parse(&st.callback).expect("callback url");
    back.query_pairs_mut()
        .append_pair("tengine_login", login)
        .append_pair("member_assertion", &assertion);
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

/// An https server on 127.0.0.1 with its own CA (whose PEM file the ingress is
/// told to trust): it serves client metadata documents by path.
struct DocumentServer {
    base: String,
    ca_file: PathBuf,
    documents: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl DocumentServer {
    async fn spawn() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf");
        let ca_file = std::env::temp_dir().join(format!("tengine-oauth-ca-{}.pem", Uuid::new_v4()));
        std::fs::write(&ca_file, ca.pem()).expect("write CA");

        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let documents: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let served = documents.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve_one(tls, &served).await;
                    }
                });
            }
        });
        Self {
            base: format!("https://{addr}"),
            ca_file,
            documents,
        }
    }

    fn serve(&self, path: &str, body: Vec<u8>) -> String {
        self.documents.lock().expect("lock").insert(path.to_string(), body);
        format!("{}{path}", self.base)
    }
}

impl Drop for DocumentServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// One HTTP/1.1 exchange, by hand: the test needs nothing more than a GET.
async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    documents: &Mutex<HashMap<String, Vec<u8>>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let request = String::from_utf8_lossy(&head);
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let body = documents.lock().expect("lock").get(&path).cloned();
    let (status, body) = body.map_or(("404 Not Found", Vec::new()), |b| ("200 OK", b));
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// An app whose project has OAuth enabled, with its customer's login app.
struct Setup {
    app: TestApp,
    backend: Backend,
    login_url: String,
    issuer: String,
    resource: String,
    /// A browser that does not follow redirects.
    browser: reqwest::Client,
}

async fn setup(overrides: &[(&str, &str)]) -> Setup {
    let app = spawn_app_with(overrides).await;
    let backend = Backend::new();
    app.admin
        .add_member_key(app.project_id, &backend.kid, &backend.public_pem)
        .await;
    let issuer = format!("{}/oauth/{}", app.base_url, app.project_id);
    let login = LoginApp::spawn(&backend, app.project_id, &issuer).await;
    let (status, project) = app
        .admin
        .patch_project(
            app.project_id,
            json!({"oauth": {"enabled": true, "login_url": login.url}}),
        )
        .await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["oauth"]["enabled"], true, "{project}");
    Setup {
        resource: format!("{}/mcp/{}", app.base_url, app.project_id),
        app,
        backend,
        login_url: login.url,
        issuer,
        browser: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
    }
}

fn pkce() -> (String, String) {
    let verifier =
        URL_SAFE_NO_PAD.encode(Uuid::new_v4().as_bytes()) + &URL_SAFE_NO_PAD.encode(Uuid::new_v4().as_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn location(response: &reqwest::Response) -> url::Url {
    let raw = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("a redirect, got {}", response.status()));
    url::Url::parse(raw).expect("location is a URL")
}

fn param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// What the consent page carries in its form.
struct Consent {
    request: String,
    csrf: String,
    cookie: String,
    page: String,
}

impl Setup {
    /// Replaces the project's OAuth setting: enabled, its login URL, and `extra`.
    async fn set_oauth(&self, extra: &Value) {
        let mut oauth = json!({"enabled": true, "login_url": self.login_url});
        if let (Some(oauth), Some(extra)) = (oauth.as_object_mut(), extra.as_object()) {
            oauth.extend(extra.clone());
        }
        let (status, body) = self
            .app
            .admin
            .patch_project(self.app.project_id, json!({ "oauth": oauth }))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn register(&self, redirect_uris: &[&str]) -> (u16, Value) {
        let response = self
            .app
            .http
            .post(format!("{}/register", self.issuer))
            .json(
                &json!({"client_name": "Raw test client", "redirect_uris": redirect_uris,
                          "token_endpoint_auth_method": "none"}),
            )
            .send()
            .await
            .expect("register");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn client(&self) -> String {
        let (status, client) = self.register(&["http://127.0.0.1/callback"]).await;
        assert_eq!(status, 201, "{client}");
        client["client_id"].as_str().expect("client_id").to_string()
    }

    fn authorize_params(&self, client_id: &str, challenge: &str) -> Vec<(String, String)> {
        [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT_URI),
            ("state", "st-123"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("resource", &self.resource),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    async fn authorize(&self, params: &[(String, String)]) -> reqwest::Response {
        self.browser
            .get(format!("{}/authorize", self.issuer))
            .query(params)
            .send()
            .await
            .expect("authorize")
    }

    /// `/authorize` up to the login redirect: the `tengine_login`.
    async fn login(&self, client_id: &str, challenge: &str) -> String {
        let response = self.authorize(&self.authorize_params(client_id, challenge)).await;
        assert_eq!(response.status(), 302);
        param(&location(&response), "tengine_login").expect("tengine_login")
    }

    async fn callback(&self, login: &str, assertion: &str) -> reqwest::Response {
        self.browser
            .post(format!("{}/login/callback", self.issuer))
            .form(&[("tengine_login", login), ("member_assertion", assertion)])
            .send()
            .await
            .expect("callback")
    }

    async fn consent_page(&self, client_id: &str, challenge: &str) -> Consent {
        let login = self.login(client_id, challenge).await;
        let response = self
            .callback(&login, &self.backend.assertion(self.app.project_id, Some(&login), 0))
            .await;
        assert_eq!(response.status(), 200);
        let cookie = response
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("csrf cookie")
            .to_string();
        let page = response.text().await.expect("page");
        let hidden = |name: &str| {
            let marker = format!("name=\"{name}\" value=\"");
            let start = page.find(&marker).unwrap_or_else(|| panic!("{name} in {page}")) + marker.len();
            page[start..].split('"').next().expect("value").to_string()
        };
        Consent {
            request: hidden("request"),
            csrf: hidden("csrf"),
            cookie,
            page,
        }
    }

    async fn decide(&self, consent: &Consent, form: &[(&str, &str)], with_cookie: bool) -> reqwest::Response {
        let mut request = self.browser.post(format!("{}/consent", self.issuer)).form(form);
        if with_cookie {
            request = request.header(header::COOKIE, &consent.cookie);
        }
        request.send().await.expect("consent")
    }

    async fn code(&self, client_id: &str, challenge: &str) -> String {
        let consent = self.consent_page(client_id, challenge).await;
        let form = [
            ("request", consent.request.as_str()),
            ("csrf", &consent.csrf),
            ("decision", "approve"),
        ];
        let response = self.decide(&consent, &form, true).await;
        assert_eq!(response.status(), 303);
        let back = location(&response);
        assert_eq!(param(&back, "state").as_deref(), Some("st-123"));
        assert_eq!(param(&back, "iss").as_deref(), Some(self.issuer.as_str()));
        param(&back, "code").expect("code")
    }

    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .app
            .http
            .post(format!("{}/token", self.issuer))
            .form(form)
            .send()
            .await
            .expect("token");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A whole authorization: the token answer.
    async fn tokens(&self, client_id: &str) -> Value {
        let (verifier, challenge) = pkce();
        let code = self.code(client_id, &challenge).await;
        let (status, tokens) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("client_id", client_id),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &verifier),
                ("resource", &self.resource),
            ])
            .await;
        assert_eq!(status, 200, "{tokens}");
        tokens
    }

    async fn refresh(&self, client_id: &str, refresh_token: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ])
        .await
    }
}

/// The HTTP status of an `initialize` at `url` with `token`.
async fn mcp_status(http: &reqwest::Client, url: &str, token: &str) -> u16 {
    let session = RawSession::new(http.clone(), url.to_string(), token.to_string());
    session
        .post(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}}))
        .await
        .status
}

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs tests/python/oauth_client.py; its JSON answer.
async fn python_oauth_client(url: &str, client_metadata_url: Option<&str>) -> Value {
    let python = std::env::var("TENGINE_TEST_PYTHON")
        .expect("TENGINE_TEST_PYTHON must point at a Python with tests/python/requirements.txt installed");
    let mut cmd = tokio::process::Command::new(workspace().join(python));
    cmd.arg(workspace().join("tests/python/oauth_client.py"));
    if let Some(cimd) = client_metadata_url {
        cmd.args(["--client-metadata-url", cimd]);
    }
    run_client(cmd, url).await
}

/// Runs tests/typescript/oauth_client.mjs; its JSON answer.
async fn typescript_oauth_client(url: &str, client_metadata_url: Option<&str>) -> Value {
    assert!(
        workspace()
            .join("tests/typescript/node_modules/@modelcontextprotocol/sdk")
            .exists(),
        "run `npm ci` in tests/typescript (deploy/local/test does)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(workspace().join("tests/typescript/oauth_client.mjs"));
    if let Some(cimd) = client_metadata_url {
        cmd.args(["--client-metadata-url", cimd]);
    }
    run_client(cmd, url).await
}

async fn run_client(mut cmd: tokio::process::Command, url: &str) -> Value {
    cmd.args(["--url", url, "--tool", "whoami", "--arguments", r#"{"note": "hi"}"#])
        .stdin(Stdio::null());
    let output = tokio::time::timeout(std::time::Duration::from_secs(90), cmd.output())
        .await
        .expect("the OAuth client finishes within 90 s")
        .expect("run the OAuth client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "OAuth client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON output")
}

/// A member-only tool that names its caller, signed, with its upstream.
async fn whoami(app: &TestApp) -> Upstream {
    let secret = signing_secret();
    let upstream = Upstream::spawn(Some(secret.clone())).await;
    app.create_tool(
        ToolSpec::post("whoami", &upstream.url(), "/who")
            .description("Who is calling")
            .schema(json!({"type": "object", "properties": {"note": {"type": "string"}}}))
            .body_template(json!({"note": "{note}"}))
            .auth_hmac(&secret)
            .require_member()
            .inject_member_identity(),
    )
    .await;
    upstream
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_connects_through_oauth_and_is_cut_off_by_revocation() {
    let documents = DocumentServer::spawn().await;
    let ca = documents.ca_file.to_string_lossy().to_string();
    let setup = setup(&[("ingress.oauth_metadata_ca_file", ca.as_str())]).await;
    let app = &setup.app;
    let upstream = whoami(app).await;

    // Dynamic client registration.
    let out = python_oauth_client(&setup.resource, None).await;
    assert_eq!(out["tools"], json!(["whoami"]), "{out}");
    assert_eq!(out["call"]["isError"], false, "{out}");
    assert_eq!(out["refreshed"], true, "the SDK refreshed its token: {out}");
    assert!(out["client_id"].as_str().expect("client_id").starts_with("tng_oc_"));
    let page = out["consent_page"].as_str().expect("page");
    for shown in [
        "Tengine test client (Python SDK)",
        "whoami",
        "user-7@example.com",
        "test",
    ] {
        assert!(page.contains(shown), "the consent page shows {shown}: {page}");
    }
    let calls = upstream.requests();
    assert_eq!(calls.len(), 2, "two calls reached the API");
    for call in &calls {
        assert_eq!(call.header("x-tengine-member-id"), Some(MEMBER));
        assert_eq!(call.header("x-tengine-member-email"), Some("user-7@example.com"));
        assert_eq!(call.signature_valid, Some(true), "{:?}", call.signature_error);
    }

    // Client ID Metadata Document (https, served by the test).
    let cimd = documents.serve(
        "/oauth/client.json",
        Vec::new(), // replaced below, once the URL is known
    );
    let document = json!({"client_id": cimd, "client_name": "CIMD test client",
        "client_uri": "https://example.com/cimd", "redirect_uris": ["http://127.0.0.1/callback"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none"});
    documents.serve("/oauth/client.json", document.to_string().into_bytes());
    let by_document = python_oauth_client(&setup.resource, Some(&cimd)).await;
    assert_eq!(by_document["client_id"], json!(cimd), "{by_document}");
    assert_eq!(by_document["call"]["isError"], false, "{by_document}");
    assert!(
        by_document["consent_page"]
            .as_str()
            .is_some_and(|p| p.contains("CIMD test client") && p.contains("https://example.com/cimd"))
    );

    let (_, clients) = app
        .admin
        .get(&format!("/v1/projects/{}/oauth/clients", app.project_id))
        .await;
    let kinds: Vec<&str> = clients["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["registered", "metadata_document"], "{clients}");
    let (_, grants) = app
        .admin
        .get(&format!("/v1/projects/{}/oauth/grants", app.project_id))
        .await;
    let grants = grants["grants"].as_array().expect("grants").clone();
    assert_eq!(grants.len(), 2);
    assert!(
        grants
            .iter()
            .all(|g| g["member_id"] == MEMBER && g["revoked_at"].is_null())
    );

    // Revoking the first grant cuts its tokens off at once, on every instance.
    let token = out["access_token"].as_str().expect("access token");
    let other = app.spawn_ingress(None).await;
    let other_url = format!("{}/mcp/{}", other.base_url, app.project_id);
    assert_eq!(mcp_status(&app.http, &setup.resource, token).await, 200);
    assert_eq!(mcp_status(&app.http, &other_url, token).await, 200);
    let grant_id = grants
        .iter()
        .find(|g| g["client_id"] == out["client_id"])
        .and_then(|g| g["id"].as_str())
        .expect("the DCR client's grant");
    let (status, _) = app
        .admin
        .delete(&format!("/v1/projects/{}/oauth/grants/{grant_id}", app.project_id))
        .await;
    assert_eq!(status, 204);
    let revoked = Instant::now();
    assert_eq!(mcp_status(&app.http, &setup.resource, token).await, 401);
    assert_eq!(mcp_status(&app.http, &other_url, token).await, 401);
    let elapsed = revoked.elapsed();
    assert!(
        elapsed.as_millis() < 100,
        "refused within 100 ms of the revocation, took {elapsed:?}"
    );
    let client_id = out["client_id"].as_str().expect("client id");
    let (status, refused) = setup
        .refresh(client_id, out["refresh_token"].as_str().expect("refresh"))
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_grant")),
        "{refused}"
    );
    // The other grant is untouched.
    let cimd_token = by_document["access_token"].as_str().expect("token");
    assert_eq!(mcp_status(&app.http, &setup.resource, cimd_token).await, 200);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_sdk_connects_through_oauth() {
    let documents = DocumentServer::spawn().await;
    let ca = documents.ca_file.to_string_lossy().to_string();
    let setup = setup(&[("ingress.oauth_metadata_ca_file", ca.as_str())]).await;
    let upstream = whoami(&setup.app).await;
    let out = typescript_oauth_client(&setup.resource, None).await;
    assert_eq!(out["tools"], json!(["whoami"]), "{out}");
    assert_eq!(out["call"]["isError"], false, "{out}");
    assert_eq!(out["refreshed"], true, "the SDK refreshed on the 401: {out}");
    assert!(out["client_id"].as_str().expect("client_id").starts_with("tng_oc_"));
    let token = out["access_token"].as_str().expect("access token");
    assert_eq!(mcp_status(&setup.app.http, &setup.resource, token).await, 200);

    let cimd = documents.serve("/ts/client.json", Vec::new());
    let document = json!({"client_id": cimd, "client_name": "CIMD TypeScript client",
        "redirect_uris": ["http://127.0.0.1/callback"], "token_endpoint_auth_method": "none"});
    documents.serve("/ts/client.json", document.to_string().into_bytes());
    let by_document = typescript_oauth_client(&setup.resource, Some(&cimd)).await;
    assert_eq!(by_document["client_id"], json!(cimd), "{by_document}");
    assert_eq!(by_document["call"]["isError"], false, "{by_document}");
    let calls = upstream.requests();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.header("x-tengine-member-id") == Some(MEMBER)));
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_names_the_project_resource_and_its_authorization_server() {
    let setup = setup(&[]).await;
    let app = &setup.app;
    let response = app
        .http
        .post(&setup.resource)
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 401);
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .expect("WWW-Authenticate")
        .to_string();
    let metadata_url = format!(
        "{}/.well-known/oauth-protected-resource/mcp/{}",
        app.base_url, app.project_id
    );
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{metadata_url}\""));
    let prm: Value = app
        .http
        .get(&metadata_url)
        .send()
        .await
        .expect("prm")
        .json()
        .await
        .expect("json");
    assert_eq!(prm["resource"], json!(setup.resource));
    assert_eq!(prm["authorization_servers"], json!([setup.issuer]));
    let as_url = format!(
        "{}/.well-known/oauth-authorization-server/oauth/{}",
        app.base_url, app.project_id
    );
    let metadata: Value = app
        .http
        .get(&as_url)
        .send()
        .await
        .expect("as")
        .json()
        .await
        .expect("json");
    assert_eq!(metadata["issuer"], json!(setup.issuer));
    assert_eq!(metadata["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(metadata["response_types_supported"], json!(["code"]));
    assert_eq!(metadata["client_id_metadata_document_supported"], true);
    assert_eq!(metadata["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        metadata["registration_endpoint"],
        json!(format!("{}/register", setup.issuer))
    );

    // API keys work on the project's endpoint, not on another project's.
    assert_eq!(mcp_status(&app.http, &setup.resource, &app.api_key).await, 200);
    assert_eq!(mcp_status(&app.http, &app.mcp_url, &app.api_key).await, 200);
    let other = app.admin.create_project("other").await;
    let other_resource = format!("{}/mcp/{other}", app.base_url);
    assert_eq!(mcp_status(&app.http, &other_resource, &app.api_key).await, 401);

    // Without OAuth enabled a project's metadata names no authorization server.
    let prm: Value = app
        .http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp/{other}",
            app.base_url
        ))
        .send()
        .await
        .expect("prm")
        .json()
        .await
        .expect("json");
    assert!(prm["authorization_servers"].is_null(), "{prm}");
    let status = app
        .http
        .get(format!(
            "{}/.well-known/oauth-authorization-server/oauth/{other}",
            app.base_url
        ))
        .send()
        .await
        .expect("as")
        .status();
    assert_eq!(status, 404);

    // Enabling needs a login URL that is https (or http on loopback) and a live integration.
    for (oauth, field) in [
        (json!({"enabled": true}), "oauth.login_url"),
        (
            json!({"enabled": true, "login_url": "http://app.example.com/login"}),
            "oauth.login_url",
        ),
        (
            json!({"enabled": true, "login_url": "https://app.example.com/login", "integration_id": Uuid::new_v4()}),
            "oauth.integration_id",
        ),
    ] {
        let (status, body) = app.admin.patch_project(other, json!({ "oauth": oauth })).await;
        assert_eq!((status, body["error"]["field"].as_str()), (422, Some(field)), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn codes_need_their_pkce_verifier_and_are_used_once() {
    let setup = setup(&[]).await;
    let client_id = setup.client().await;
    let exchange = |code: String, verifier: Option<String>| {
        let setup = &setup;
        let client_id = client_id.clone();
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", code),
                ("client_id", client_id),
                ("redirect_uri", REDIRECT_URI.to_string()),
            ];
            if let Some(verifier) = verifier {
                form.push(("code_verifier", verifier));
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            setup.token(&form).await
        }
    };
    let error = |answer: &(u16, Value)| (answer.0, answer.1["error"].as_str().map(str::to_string));
    let invalid_grant = (400, Some("invalid_grant".to_string()));

    let (_, challenge) = pkce();
    let code = setup.code(&client_id, &challenge).await;
    assert_eq!(error(&exchange(code, None).await), invalid_grant, "no verifier");
    let (wrong, _) = pkce();
    let code = setup.code(&client_id, &challenge).await;
    assert_eq!(
        error(&exchange(code, Some(wrong)).await),
        invalid_grant,
        "wrong verifier"
    );

    let (verifier, challenge) = pkce();
    let code = setup.code(&client_id, &challenge).await;
    let (status, body) = setup
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", "http://127.0.0.1:1/callback"),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "another redirect_uri"
    );

    let code = setup.code(&client_id, &challenge).await;
    let (status, tokens) = exchange(code.clone(), Some(verifier.clone())).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().expect("access");
    assert!(access.starts_with("tng_mst_"));
    assert_eq!(mcp_status(&setup.app.http, &setup.resource, access).await, 200);
    // Replayed: refused, and what the code issued is revoked.
    assert_eq!(
        error(&exchange(code, Some(verifier)).await),
        invalid_grant,
        "replayed code"
    );
    assert_eq!(mcp_status(&setup.app.http, &setup.resource, access).await, 401);

    // An unknown grant type, and a refresh token of nobody.
    let (status, body) = setup.token(&[("grant_type", "password")]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")));
    let (status, body) = setup.refresh(&client_id, "tng_ort_nothing").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_requests_are_checked_before_anything_is_issued() {
    let setup = setup(&[]).await;
    let client_id = setup.client().await;
    let (_, challenge) = pkce();
    let with = |changes: &[(&str, Option<&str>)]| {
        let mut params = setup.authorize_params(&client_id, &challenge);
        for (name, value) in changes {
            params.retain(|(k, _)| k != name);
            if let Some(value) = value {
                params.push((name.to_string(), value.to_string()));
            }
        }
        params
    };

    // An unregistered redirect URI or an unknown client: a page, never a redirect.
    for (changes, status) in [
        (vec![("redirect_uri", Some("https://evil.example/callback"))], 400),
        (vec![("redirect_uri", Some("http://127.0.0.1:5/other"))], 400),
        (vec![("client_id", Some("tng_oc_unknown"))], 401),
    ] {
        let response = setup.authorize(&with(&changes)).await;
        assert_eq!(response.status(), status, "{changes:?}");
        assert!(response.headers().get(header::LOCATION).is_none());
    }

    // Other faults go back to the client with the error, its state and our iss.
    let other_resource = format!("{}/mcp/{}", setup.app.base_url, Uuid::new_v4());
    for (changes, expected) in [
        (vec![("resource", Some(other_resource.as_str()))], "invalid_target"),
        (vec![("resource", None)], "invalid_target"),
        (vec![("code_challenge", None)], "invalid_request"),
        (vec![("code_challenge_method", Some("plain"))], "invalid_request"),
        (vec![("code_challenge_method", None)], "invalid_request"),
        (vec![("response_type", Some("token"))], "unsupported_response_type"),
    ] {
        let response = setup.authorize(&with(&changes)).await;
        assert_eq!(response.status(), 302, "{changes:?}");
        let back = location(&response);
        assert!(back.as_str().starts_with(REDIRECT_URI), "{back}");
        assert_eq!(param(&back, "error").as_deref(), Some(expected), "{changes:?}");
        assert_eq!(param(&back, "state").as_deref(), Some("st-123"));
        assert_eq!(param(&back, "iss").as_deref(), Some(setup.issuer.as_str()));
    }

    // A trailing slash on the resource is tolerated.
    let slash = format!("{}/", setup.resource);
    let response = setup.authorize(&with(&[("resource", Some(slash.as_str()))])).await;
    assert_eq!(response.status(), 302);
    assert!(
        param(&location(&response), "tengine_login").is_some(),
        "to the login page"
    );

    // The project's allow-lists: of client ids, of redirect hosts.
    for (lists, refused) in [
        (
            json!({"allowed_client_ids": ["https://claude.ai/oauth/mcp-oauth-client-metadata"]}),
            true,
        ),
        (json!({"allowed_redirect_hosts": ["claude.ai", "chatgpt.com"]}), true),
        (
            json!({"allowed_client_ids": [client_id], "allowed_redirect_hosts": ["127.0.0.1"]}),
            false,
        ),
    ] {
        setup.set_oauth(&lists).await;
        let response = setup.authorize(&with(&[])).await;
        let status = response.status().as_u16();
        let page = response.text().await.unwrap_or_default();
        if refused {
            assert_eq!(status, 401, "{lists}");
            assert!(page.contains("does not allow"), "{page}");
        } else {
            assert_eq!(status, 302, "{lists}: {page}");
        }
    }

    // Registration refuses redirect URIs a browser could be sent anywhere with.
    for uri in [
        "http://app.example.com/cb",
        "javascript:alert(1)",
        "https://app.example.com/cb#frag",
    ] {
        let (status, body) = setup.register(&[uri]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_redirect_uri")),
            "{uri}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_serve_only_their_project_resource() {
    let setup = setup(&[]).await;
    let client_id = setup.client().await;
    let tokens = setup.tokens(&client_id).await;
    let access = tokens["access_token"].as_str().expect("access");
    let app = &setup.app;
    assert_eq!(mcp_status(&app.http, &setup.resource, access).await, 200);
    // Project B's resource, and the shared /mcp (another resource): refused.
    let other = app.admin.create_project("b").await;
    let other_resource = format!("{}/mcp/{other}", app.base_url);
    let response = app
        .http
        .post(&other_resource)
        .bearer_auth(access)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "ping"}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 401);
    let challenge = response.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .expect("challenge");
    assert!(
        challenge.contains("invalid_token") && challenge.contains(&other.to_string()),
        "{challenge}"
    );
    assert_eq!(mcp_status(&app.http, &app.mcp_url, access).await, 401);
    // A token request naming another resource is refused too.
    let (status, body) = setup
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().expect("refresh")),
            ("client_id", &client_id),
            ("resource", &other_resource),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_tokens_rotate_and_a_reused_one_kills_the_family() {
    let setup = setup(&[]).await;
    let client_id = setup.client().await;
    let first = setup.tokens(&client_id).await;
    let first_refresh = first["refresh_token"].as_str().expect("refresh");
    let (status, second) = setup.refresh(&client_id, first_refresh).await;
    assert_eq!(status, 200, "{second}");
    let second_refresh = second["refresh_token"].as_str().expect("refresh");
    assert_ne!(first_refresh, second_refresh, "rotated");
    let access = second["access_token"].as_str().expect("access");
    assert_eq!(mcp_status(&setup.app.http, &setup.resource, access).await, 200);

    // Another client cannot use it.
    let other_client = setup.client().await;
    let (status, body) = setup.refresh(&other_client, second_refresh).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));

    let (status, body) = setup.refresh(&client_id, first_refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "reuse: {body}"
    );
    // The whole family is dead: the newest refresh token and the access tokens.
    let (third_status, _) = setup.refresh(&client_id, second_refresh).await;
    assert_eq!(third_status, 400);
    assert_eq!(mcp_status(&setup.app.http, &setup.resource, access).await, 401);
    let (_, grants) = setup
        .app
        .admin
        .get(&format!("/v1/projects/{}/oauth/grants", setup.app.project_id))
        .await;
    assert_eq!(
        grants["grants"][0]["revoked_reason"], "refresh_token_reused",
        "{grants}"
    );
    let (_, events) = setup
        .app
        .admin
        .get(&format!("/v1/projects/{}/oauth/events", setup.app.project_id))
        .await;
    let events: Vec<(String, String, String)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("kind"), text("member_id"), text("reason"))
        })
        .collect();
    assert_eq!(
        events,
        [
            (
                "grant_revoked".to_string(),
                MEMBER.to_string(),
                "refresh_token_reused".to_string()
            ),
            ("consent_approved".to_string(), MEMBER.to_string(), String::new()),
        ],
        "newest first"
    );

    // RFC 7009 revocation by the client ends a grant too.
    let tokens = setup.tokens(&client_id).await;
    let access = tokens["access_token"].as_str().expect("access");
    let response = setup
        .app
        .http
        .post(format!("{}/revoke", setup.issuer))
        .form(&[("token", access), ("client_id", &client_id)])
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status(), 200);
    assert_eq!(mcp_status(&setup.app.http, &setup.resource, access).await, 401);

    // Revoking the member's sessions ends the member's grants: no refresh brings them back.
    let tokens = setup.tokens(&client_id).await;
    let (status, _) = setup
        .app
        .admin
        .post(
            &format!("/v1/projects/{}/members/{MEMBER}/revoke-sessions", setup.app.project_id),
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    let access = tokens["access_token"].as_str().expect("access");
    assert_eq!(mcp_status(&setup.app.http, &setup.resource, access).await, 401);
    let (status, _) = setup
        .refresh(&client_id, tokens["refresh_token"].as_str().expect("refresh"))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_are_bound_to_their_request_and_used_once() {
    let setup = setup(&[]).await;
    let client_id = setup.client().await;
    let project = setup.app.project_id;
    let (_, challenge) = pkce();
    let login = setup.login(&client_id, &challenge).await;
    let page_error = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    };

    let refusals = [
        (
            "another login's value",
            setup.backend.assertion(project, Some("tng_login_other"), 0),
            "access_denied",
        ),
        (
            "no tengine_login claim",
            setup.backend.assertion(project, None, 0),
            "access_denied",
        ),
        (
            "another project",
            setup.backend.assertion(Uuid::new_v4(), Some(&login), 0),
            "access_denied",
        ),
        (
            "expired",
            setup.backend.assertion(project, Some(&login), -600),
            "access_denied",
        ),
    ];
    for (case, assertion, code) in refusals {
        let (status, page) = page_error(setup.callback(&login, &assertion).await).await;
        assert_eq!(status, 400, "{case}: {page}");
        assert!(page.contains(code), "{case}: {page}");
    }
    // The right assertion still works once, and the login cannot be replayed.
    let response = setup
        .callback(&login, &setup.backend.assertion(project, Some(&login), 0))
        .await;
    assert_eq!(response.status(), 200);
    let (status, page) = page_error(
        setup
            .callback(&login, &setup.backend.assertion(project, Some(&login), 0))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("already used"), "{page}");
    let (status, _) = page_error(setup.callback("tng_login_unknown", "x.y.z").await).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn consent_needs_its_csrf_token_and_is_decided_once() {
    let setup = setup(&[]).await;
    let client_id = setup.client().await;
    let (_, challenge) = pkce();
    let consent = setup.consent_page(&client_id, &challenge).await;
    assert!(
        consent.page.contains(r#"name="decision" value="approve""#),
        "{}",
        consent.page
    );
    assert!(consent.page.contains(r#"name="decision" value="deny""#));
    assert!(!consent.page.contains("<script"), "no JavaScript");
    assert!(consent.page.contains("Warning"), "a loopback redirect is warned about");

    let approve_without = [("request", consent.request.as_str()), ("decision", "approve")];
    assert_eq!(setup.decide(&consent, &approve_without, true).await.status(), 403);
    let approve = [
        ("request", consent.request.as_str()),
        ("csrf", &consent.csrf),
        ("decision", "approve"),
    ];
    assert_eq!(setup.decide(&consent, &approve, false).await.status(), 403, "no cookie");
    let forged = [
        ("request", consent.request.as_str()),
        ("csrf", "forged"),
        ("decision", "approve"),
    ];
    assert_eq!(setup.decide(&consent, &forged, true).await.status(), 403);

    let deny = [
        ("request", consent.request.as_str()),
        ("csrf", &consent.csrf),
        ("decision", "deny"),
    ];
    let response = setup.decide(&consent, &deny, true).await;
    assert_eq!(response.status(), 303);
    let back = location(&response);
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&back, "state").as_deref(), Some("st-123"));
    assert!(param(&back, "code").is_none());
    assert_eq!(
        setup.decide(&consent, &approve, true).await.status(),
        400,
        "decided already"
    );
    let (_, events) = setup
        .app
        .admin
        .get(&format!("/v1/projects/{}/oauth/events", setup.app.project_id))
        .await;
    assert_eq!(events["events"][0]["kind"], "consent_denied", "{events}");
    assert_eq!(events["events"].as_array().map(Vec::len), Some(1), "{events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_metadata_documents_must_be_https_small_and_on_allowed_addresses() {
    let documents = DocumentServer::spawn().await;
    let ca = documents.ca_file.to_string_lossy().to_string();
    let setup = setup(&[("ingress.oauth_metadata_ca_file", ca.as_str())]).await;
    let (_, challenge) = pkce();
    let refused = |client_id: String| {
        let setup = &setup;
        let challenge = challenge.clone();
        async move {
            let response = setup.authorize(&setup.authorize_params(&client_id, &challenge)).await;
            let status = response.status().as_u16();
            assert!(response.headers().get(header::LOCATION).is_none());
            (status, response.text().await.unwrap_or_default())
        }
    };

    let (status, page) = refused("http://127.0.0.1:1/client.json".into()).await;
    assert_eq!(status, 401);
    assert!(page.contains("invalid_client") && page.contains("https"), "{page}");

    let big = documents.serve("/big.json", Vec::new());
    let padding = "x".repeat(6000);
    documents.serve(
        "/big.json",
        json!({"client_id": big, "redirect_uris": [REDIRECT_URI], "client_name": padding})
            .to_string()
            .into_bytes(),
    );
    let (status, page) = refused(big).await;
    assert_eq!(status, 401);
    assert!(page.contains("larger than 5120 bytes"), "{page}");

    let liar = documents.serve("/liar.json", Vec::new());
    documents.serve(
        "/liar.json",
        json!({"client_id": "https://someone.else/client.json", "redirect_uris": [REDIRECT_URI]})
            .to_string()
            .into_bytes(),
    );
    let (status, page) = refused(liar).await;
    assert_eq!(status, 401);
    assert!(page.contains("must name itself"), "{page}");

    // Where loopback is not allowed (the default), the address policy refuses it.
    let strict = spawn_app_with(&[("allow_private_upstreams", "false")]).await;
    let (status, _) = strict
        .admin
        .patch_project(
            strict.project_id,
            json!({"oauth": {"enabled": true, "login_url": "https://app.example.com/login"}}),
        )
        .await;
    assert_eq!(status, 200);
    let good = documents.serve("/good.json", Vec::new());
    documents.serve(
        "/good.json",
        json!({"client_id": good, "redirect_uris": [REDIRECT_URI]})
            .to_string()
            .into_bytes(),
    );
    let response = setup
        .browser
        .get(format!("{}/oauth/{}/authorize", strict.base_url, strict.project_id))
        .query(&[
            ("response_type", "code"),
            ("client_id", good.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .expect("authorize");
    assert_eq!(response.status(), 401);
    let page = response.text().await.expect("page");
    assert!(page.contains("forbidden address"), "{page}");
}

/// The client's redirect URI, on loopback: the query it is sent.
async fn redirect_catcher() -> (u16, tokio::sync::mpsc::Receiver<HashMap<String, String>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let app = Router::new().route(
        "/callback",
        get(move |Query(query): Query<HashMap<String, String>>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(query).await;
                "You may close this window."
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_signs_in_and_approves_on_the_consent_page() {
    let setup = setup(&[]).await;
    let client_id = setup.client().await;
    let (port, mut redirected) = redirect_catcher().await;
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let (verifier, challenge) = pkce();
    let mut params = setup.authorize_params(&client_id, &challenge);
    params.retain(|(k, _)| k != "redirect_uri");
    params.push(("redirect_uri".into(), redirect_uri.clone()));
    let authorize = reqwest::Url::parse_with_params(&format!("{}/authorize", setup.issuer), &params).expect("url");

    let browser = Chromium::start().await;
    // Authorize → the customer's login page → the callback → the consent page.
    browser.command("/url", json!({"url": authorize.as_str()})).await;
    let page = browser.get("/source").await;
    assert!(
        page.as_str()
            .is_some_and(|p| p.contains("Raw test client") && p.contains("user-7@example.com")),
        "the consent page: {page}"
    );
    browser.click("button[name=decision][value=approve]").await;
    let query = tokio::time::timeout(std::time::Duration::from_secs(15), redirected.recv())
        .await
        .expect("the browser is sent back to the client within 15 s")
        .expect("query");
    browser.stop().await;
    assert_eq!(query.get("state").map(String::as_str), Some("st-123"));
    assert_eq!(query.get("iss"), Some(&setup.issuer));
    let code = query.get("code").expect("code");
    let (status, tokens) = setup
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", &client_id),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().expect("access");
    assert_eq!(mcp_status(&setup.app.http, &setup.resource, access).await, 200);
}
