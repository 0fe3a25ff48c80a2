//! The console's Settings and Credentials screens and its read-only sign-in, in
//! headless Chromium against the whole system: settings edited through the
//! form (a refused value comes back as typed, with the server's message beside
//! its field; a good one is what the admin API then answers), client snippets
//! with the project's MCP URL and no secret, member keys made, used and revoked,
//! a member's session ended, and a project key's read-only session that sees
//! only its project and changes nothing (the server refuses with 403 too).
//! Screenshots go to `$CARGO_TARGET_TMPDIR/console-screenshots/`.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{header, redirect::Policy};
use serde_json::{Value, json};
use tengine_tests::{
    ADMIN_TOKEN, TestApp, ToolSpec,
    mcp::{RawSession, run_id},
    spawn_app,
    upstream::Upstream,
};
use uuid::Uuid;

use crate::browser::Chromium;

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// The page's source, after checking it shows none of `secrets` and axe-core
/// finds nothing serious on it.
async fn shown(browser: &Chromium, secrets: &[&str]) -> String {
    let source = browser.source().await;
    browser.assert_accessible(&browser.url().await).await;
    for secret in secrets {
        assert!(!source.contains(secret), "a page shows a secret: {source}");
    }
    source
}

/// Signs the browser in with `token` (the admin token or a project API key).
async fn sign_in(browser: &Chromium, app: &TestApp, token: &str) {
    browser.open(&format!("{}/console/sign-in", app.base_url)).await;
    browser.type_into("input[type=password]", token).await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/console").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_are_edited_with_the_servers_messages_and_persisted() {
    let app = spawn_app().await;
    let browser = Chromium::start().await;
    let secrets = [ADMIN_TOKEN, app.api_key.as_str()];
    sign_in(&browser, &app, ADMIN_TOKEN).await;
    let settings = format!("{}/console/projects/{}/settings", app.base_url, app.project_id);
    browser.open(&settings).await;
    browser.wait_for("#body_max_bytes").await;
    assert_eq!(
        browser.accessible_name("#body_max_bytes").await,
        "Bytes kept of each body"
    );

    // Refused by the admin API's check: the message beside the field, every input as typed.
    browser.fill("#body_max_bytes", "0").await;
    browser.fill("#monthly_call_limit", "500").await;
    browser.fill("#outbound_allowlist", "10.1.0.0/16").await;
    browser.click("main form button[type=submit]").await;
    browser.wait_for("#body_max_bytes-problem").await;
    let refused = shown(&browser, &secrets).await;
    assert!(
        browser
            .text("#body_max_bytes-problem")
            .await
            .contains("must be 1 to 1048576"),
        "{refused}"
    );
    assert_eq!(
        browser
            .count("#body_max_bytes[aria-invalid=true][aria-describedby=body_max_bytes-problem]")
            .await,
        1
    );
    assert!(
        refused.contains("value=\"0\"") && refused.contains("value=\"500\""),
        "{refused}"
    );
    assert!(refused.contains("10.1.0.0/16"), "the allow-list as typed: {refused}");
    browser.screenshot(&screenshots().join("settings-refused.png")).await;
    let (_, project) = app.admin.get(&format!("/v1/projects/{}", app.project_id)).await;
    assert_eq!(
        project["monthly_call_limit"],
        Value::Null,
        "a refused form changes nothing"
    );

    // Not a number at all: refused beside that field too.
    browser.fill("#body_max_bytes", "lots").await;
    browser.click("main form button[type=submit]").await;
    browser.wait_for("#body_max_bytes[value='lots']").await;
    assert!(browser.text("#body_max_bytes-problem").await.contains("whole number"));
    shown(&browser, &secrets).await;

    // A good form: saved, and what the admin API answers.
    browser.fill("#body_max_bytes", "2048").await;
    browser.fill("#redact_fields", "password\ncard.number").await;
    browser.click("input[name=store_bodies]").await;
    browser.click("main form button[type=submit]").await;
    browser.wait_for_url("/settings").await;
    browser.wait_for("#body_max_bytes[value='2048']").await;
    assert_eq!(browser.count("[role=alert]").await, 0, "{}", browser.source().await);
    shown(&browser, &secrets).await;
    browser.screenshot(&screenshots().join("settings.png")).await;
    let (_, project) = app.admin.get(&format!("/v1/projects/{}", app.project_id)).await;
    assert_eq!(project["monthly_call_limit"], 500, "{project}");
    assert_eq!(project["body_max_bytes"], 2048, "{project}");
    assert_eq!(project["store_bodies"], true, "{project}");
    assert_eq!(project["outbound_allowlist"], json!(["10.1.0.0/16"]), "{project}");
    assert_eq!(
        project["redact_fields"],
        json!(["password", "card.number"]),
        "{project}"
    );
    browser.stop().await;
}

/// A member assertion signed with `private_pem` under `kid`.
fn assertion(private_pem: &str, kid: &str, project: Uuid, member: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut head = Header::new(Algorithm::ES256);
    head.kid = Some(kid.into());
    let claims = json!({"sub": member, "aud": project.to_string(), "iat": now, "exp": now + 120,
        "jti": Uuid::new_v4().to_string()});
    jsonwebtoken::encode(
        &head,
        &claims,
        &EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("a private key"),
    )
    .expect("sign")
}

/// Exchanges an assertion for a member session token: (status, token).
async fn member_session(app: &TestApp, assertion: &str) -> (u16, String) {
    let response = app
        .http
        .post(format!("{}/v1/member-sessions", app.base_url))
        .bearer_auth(&app.api_key)
        .json(&json!({"member_assertion": assertion}))
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["token"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_show_snippets_and_manage_member_keys_and_members() {
    let app = spawn_app().await;
    let browser = Chromium::start().await;
    let secrets = [ADMIN_TOKEN, app.api_key.as_str()];
    let shots = screenshots();
    sign_in(&browser, &app, ADMIN_TOKEN).await;
    let credentials = format!("{}/console/projects/{}/credentials", app.base_url, app.project_id);
    browser.open(&credentials).await;
    browser.wait_for("pre.snippet").await;
    let page = shown(&browser, &secrets).await;
    // Four snippets for the default integration, each with the MCP URL and the placeholder.
    assert_eq!(browser.count("pre.snippet").await, 4, "{page}");
    let mcp_url = format!("{}/mcp", app.base_url);
    for title in ["Claude Desktop", "Cursor", "Anthropic Messages API", "Python SDK"] {
        assert!(page.contains(title), "{title}: {page}");
    }
    let snippets = browser.text("main").await;
    assert_eq!(snippets.matches(&mcp_url).count(), 4, "{snippets}");
    assert!(snippets.contains("Bearer <TENGINE_API_KEY>") && snippets.contains("mcp-remote"));
    assert!(
        snippets.contains("\"authorization_token\": \"<TENGINE_API_KEY>\""),
        "{snippets}"
    );
    browser.screenshot(&shots.join("credentials-snippets.png")).await;

    // A member key the console makes: its private key shown once, and it signs assertions.
    browser.type_into("#kid", "backend-1").await;
    browser.click("form[action$='/member-keys'] button[type=submit]").await;
    browser.wait_for("#new-private-key").await;
    let private_pem = browser.text("#new-private-key").await;
    assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{private_pem}");
    browser.screenshot(&shots.join("member-key-created.png")).await;
    browser.assert_accessible("member key created").await;
    browser.open(&credentials).await;
    let listed = shown(&browser, &[ADMIN_TOKEN, app.api_key.as_str(), private_pem.trim()]).await;
    assert!(listed.contains("<code>backend-1</code>"), "{listed}");
    let (_, keys) = app
        .admin
        .get(&format!("/v1/projects/{}/member-keys", app.project_id))
        .await;
    assert_eq!(keys["member_keys"][0]["kid"], "backend-1", "{keys}");

    let (status, token) = member_session(&app, &assertion(&private_pem, "backend-1", app.project_id, "ann")).await;
    assert_eq!(status, 201);
    let mut ann = RawSession::new(app.http.clone(), app.mcp_url.clone(), token);
    ann.initialize().await;

    // A refused member key: the form as typed, with the admin API's message beside the field.
    browser.type_into("#kid", "backend-2").await;
    browser.type_into("#public_key", "not a key").await;
    browser.click("form[action$='/member-keys'] button[type=submit]").await;
    browser.wait_for("#public_key-problem").await;
    let refused = shown(&browser, &secrets).await;
    assert!(
        refused.contains("P-256") && refused.contains("value=\"backend-2\""),
        "{refused}"
    );
    assert!(refused.contains(">not a key</textarea>"), "{refused}");

    // Ending the member's sessions: the member's MCP session is refused at once.
    browser.open(&credentials).await;
    browser.type_into("#member_id", "ann").await;
    browser
        .click("form[action$='/members/revoke'] button[type=submit]")
        .await;
    browser.wait_for("p[role=status]").await;
    assert!(browser.text("p[role=status]").await.contains("ann"));
    browser.screenshot(&shots.join("member-revoked.png")).await;
    let refused = ann.request("tools/list", json!({})).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    // A member id no assertion could carry: the server's message beside the field.
    browser.type_into("#member_id", &"m".repeat(300)).await;
    browser
        .click("form[action$='/members/revoke'] button[type=submit]")
        .await;
    browser.wait_for("#member_id-problem").await;
    shown(&browser, &secrets).await;

    // Revoking the member key: new assertions signed with it are refused.
    browser.open(&credentials).await;
    browser.click("button[aria-label='Revoke member key backend-1']").await;
    browser.wait_for_url("/credentials").await;
    browser.wait_for("form[action$='/member-keys']").await;
    assert_eq!(
        browser.count("button[aria-label='Revoke member key backend-1']").await,
        0
    );
    let (status, _) = member_session(&app, &assertion(&private_pem, "backend-1", app.project_id, "bob")).await;
    assert_eq!(status, 401, "the revoked key signs no more sessions");
    browser.stop().await;
}

/// Signs in over raw HTTP with `token`: the session cookie's `name=value`.
async fn raw_sign_in(http: &reqwest::Client, console: &str, token: &str) -> (u16, Option<String>) {
    let page = http.get(format!("{console}/sign-in")).send().await.expect("get");
    let cookie = page
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().map(str::to_string))
        .expect("the sign-in cookie");
    let html = page.text().await.expect("page");
    let start = html.find("name=\"csrf\" value=\"").expect("csrf") + "name=\"csrf\" value=\"".len();
    let csrf = html[start..].split('"').next().unwrap_or_default().to_string();
    let answer = http
        .post(format!("{console}/sign-in"))
        .header(header::COOKIE, cookie)
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .expect("post");
    let session = answer
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("tengine_console="))
        .and_then(|v| v.split(';').next().map(str::to_string));
    (answer.status().as_u16(), session)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_key_signs_in_read_only_to_its_own_project() {
    let app = spawn_app().await;
    let other = app.admin.create_project("someone else's").await;
    let reader = app.admin.create_api_key(app.project_id, &["read"]).await;
    let browser = Chromium::start().await;
    let secrets = [ADMIN_TOKEN, app.api_key.as_str(), reader.key.as_str()];
    let shots = screenshots();
    let console = format!("{}/console", app.base_url);

    sign_in(&browser, &app, &reader.key).await;
    let home = shown(&browser, &secrets).await;
    assert!(home.contains(">test</a>") && !home.contains("someone else"), "{home}");
    assert!(!browser.url().await.contains(&reader.key), "never the key in a URL");
    for screen in ["", "/tools", "/runs", "/usage", "/credentials", "/settings"] {
        browser
            .open(&format!("{console}/projects/{}{screen}", app.project_id))
            .await;
        browser.wait_for("nav.project").await;
        shown(&browser, &secrets).await;
        // No form but sign-out's on a read-only screen (the server refuses them anyway: below).
        assert_eq!(
            browser.count("main form[method=post]").await,
            0,
            "{screen}: {}",
            browser.source().await
        );
    }
    browser
        .open(&format!("{console}/projects/{}/settings", app.project_id))
        .await;
    assert!(browser.source().await.contains("Calls per month"));
    browser.screenshot(&shots.join("read-only-settings.png")).await;
    browser.open(&format!("{console}/projects/{other}")).await;
    let hidden = browser.source().await;
    assert!(
        hidden.contains("Error 404") && !hidden.contains("someone else"),
        "{hidden}"
    );

    // The server refuses every change of a read-only session with 403, CSRF token or not.
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let (status, session) = raw_sign_in(&http, &console, &reader.key).await;
    assert_eq!(status, 303);
    let session = session.expect("a session cookie");
    let settings = format!("{console}/projects/{}/settings", app.project_id);
    let page = http
        .get(&settings)
        .header(header::COOKIE, &session)
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("page");
    let start = html.find("name=\"csrf\" value=\"").expect("sign-out's csrf") + "name=\"csrf\" value=\"".len();
    let csrf = html[start..].split('"').next().unwrap_or_default().to_string();
    for (path, form) in [
        (
            settings.clone(),
            vec![("csrf", csrf.as_str()), ("body_max_bytes", "10")],
        ),
        (
            format!("{console}/projects/{}/api-keys", app.project_id),
            vec![("csrf", csrf.as_str()), ("name", "sneaky"), ("read", "on")],
        ),
        (
            format!("{console}/projects/{}/tools/lookup/enabled", app.project_id),
            vec![("csrf", csrf.as_str()), ("enabled", "false")],
        ),
        (
            format!("{console}/projects/{}/members/revoke", app.project_id),
            vec![("csrf", csrf.as_str()), ("member_id", "ann")],
        ),
        (
            format!(
                "{console}/projects/{}/api-keys/{}/revoke",
                app.project_id, app.api_key_id
            ),
            vec![("csrf", csrf.as_str())],
        ),
    ] {
        let refused = http
            .post(&path)
            .header(header::COOKIE, &session)
            .form(&form)
            .send()
            .await
            .expect("post");
        assert_eq!(refused.status(), 403, "{path}");
    }
    let (_, project) = app.admin.get(&format!("/v1/projects/{}", app.project_id)).await;
    assert_eq!(project["body_max_bytes"], 4096, "nothing changed: {project}");
    let (_, keys) = app
        .admin
        .get(&format!("/v1/projects/{}/api-keys", app.project_id))
        .await;
    assert_eq!(keys["api_keys"].as_array().map(Vec::len), Some(2), "{keys}");
    let mut mcp = app.session();
    mcp.initialize().await;
    let other_page = http
        .get(format!("{console}/projects/{other}/settings"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .expect("get");
    assert_eq!(other_page.status(), 404, "another project is not there for it");

    // A call-only key does not sign in; a revoked read key's session ends.
    let (status, none) = raw_sign_in(&http, &console, &app.api_key).await;
    assert_eq!((status, none), (403, None));
    app.admin.revoke_api_key(app.project_id, reader.id).await;
    let ended = http
        .get(&settings)
        .header(header::COOKIE, &session)
        .send()
        .await
        .expect("get");
    assert_eq!(ended.status(), 303, "a revoked key's session is over");
    browser.stop().await;
}

/// A console page over raw HTTP with a session cookie: (status, body).
async fn raw_get(http: &reqwest::Client, url: &str, session: &str) -> (u16, String) {
    let response = http.get(url).header(header::COOKIE, session).send().await.expect("get");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// The number in an "≈ 12.3 ms" cell.
fn milliseconds(cell: &str) -> f64 {
    cell.trim_start_matches('≈')
        .trim()
        .trim_end_matches("ms")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a latency: {cell:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn overview_and_usage_show_real_calls_percentiles_lag_and_queue_depth() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    for (name, path) in [
        ("quick", "/items"),
        ("sluggish", "/slow/400"),
        ("broken", "/status/404"),
        // Still in flight while the overview is read, however slow the browser is
        // (10 s was not enough on a loaded 2-core machine: Chromium's start and the
        // sign-in took longer, and the call had ended).
        ("hanging", "/slow/30000"),
    ] {
        app.create_tool(
            ToolSpec::get(name, &upstream.url(), path)
                .description("an overview test tool")
                .timeout_ms(40_000),
        )
        .await;
    }
    // Eight quick calls, two of 400 ms, one failing: p50 is a quick one, p95 a slow one.
    let mut session = app.session();
    session.initialize().await;
    let mut last = String::new();
    for (tool, times) in [("quick", 8), ("sluggish", 2), ("broken", 1)] {
        for _ in 0..times {
            let result = session.call(tool, json!({})).await;
            assert_eq!(result["isError"], tool == "broken", "{result}");
            last = run_id(&result);
        }
    }
    app.admin.finished_run(&last).await;
    app.admin.wait_for_projector().await;
    // A call in flight while the overview is read: one command being executed.
    let mut waiting = app.session();
    waiting.initialize().await;
    let in_flight = tokio::spawn(async move { waiting.call("hanging", json!({})).await });
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;

    let browser = Chromium::start().await;
    let secrets = [ADMIN_TOKEN, app.api_key.as_str()];
    let shots = screenshots();
    sign_in(&browser, &app, ADMIN_TOKEN).await;
    let root = format!("{}/console/projects/{}", app.base_url, app.project_id);
    browser.open(&root).await;
    browser.wait_for("#p50-day").await;
    let overview = shown(&browser, &secrets).await;
    let (p50, p95) = (
        milliseconds(&browser.text("#p50-day").await),
        milliseconds(&browser.text("#p95-day").await),
    );
    assert!(p50 < 200.0, "p50 is a quick call's: {p50} ms");
    assert!(p95 >= 360.0, "p95 is a 400 ms call's (within 10 %): {p95} ms");
    assert_eq!(
        milliseconds(&browser.text("#p95-week").await),
        p95,
        "the same calls over 7 days"
    );
    let depth = browser.text("#queue-depth").await;
    assert!(depth.contains("1 being executed"), "{depth}");
    let lag = browser.text("#projector-lag").await;
    assert!(lag.starts_with(char::is_numeric), "{lag}");
    assert!(overview.contains("<code>broken</code>: 1 errors"), "{overview}");
    browser.screenshot(&shots.join("overview-percentiles.png")).await;
    let finished = in_flight.await.expect("the slow call");
    assert_eq!(finished["isError"], false, "{finished}");
    app.admin.finished_run(&run_id(&finished)).await;
    app.admin.wait_for_projector().await;

    // Usage by tool: a chart (an image with a title and a description) and the same numbers in a table.
    browser.open(&format!("{root}/usage?by=tool&period=day")).await;
    browser.wait_for("svg[role=img]").await;
    let usage = shown(&browser, &secrets).await;
    assert_eq!(
        browser.accessible_name("svg[role=img]").await.trim(),
        "Calls and errors over the last 24 hours by tool"
    );
    assert!(usage.contains("4 bars: 12 calls and 1 errors in all"), "{usage}");
    for row in [
        "<code>quick</code></th><td>8</td><td>0</td>",
        "<code>sluggish</code></th><td>2</td><td>0</td>",
        "<code>broken</code></th><td>1</td><td>1</td>",
    ] {
        assert!(usage.contains(row), "{row}: {usage}");
    }
    browser.screenshot(&shots.join("usage-chart.png")).await;
    browser.open(&format!("{root}/usage?by=hour&period=week")).await;
    browser.wait_for("svg[role=img]").await;
    shown(&browser, &secrets).await;
    browser.open(&format!("{root}/usage?by=day&period=month")).await;
    browser.wait_for("svg[role=img]").await;
    let by_day = shown(&browser, &secrets).await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        by_day.contains(&format!("<code>{today}</code></th><td>12</td><td>1</td>")),
        "{by_day}"
    );

    // The CSV: what the page shows.
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let (_, cookie) = raw_sign_in(&http, &format!("{}/console", app.base_url), ADMIN_TOKEN).await;
    let (status, csv) = raw_get(
        &http,
        &format!("{root}/usage.csv?by=tool&period=day"),
        &cookie.expect("a session"),
    )
    .await;
    assert_eq!(status, 200);
    for line in [
        "tool,calls,errors,mean_latency_ms",
        "\"broken\",1,1,",
        "\"quick\",8,0,",
        "\"sluggish\",2,0,",
    ] {
        assert!(csv.contains(line), "{line}: {csv}");
    }
    browser.stop().await;
}

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

#[tokio::test(flavor = "multi_thread")]
async fn the_screens_work_from_the_keyboard() {
    let app = spawn_app().await;
    let browser = Chromium::start().await;
    // Sign-in: the token, then Enter.
    browser.open(&format!("{}/console/sign-in", app.base_url)).await;
    browser.type_into("input[type=password]", ADMIN_TOKEN).await;
    browser.press(ENTER).await;
    browser.wait_for_url("/console").await;

    // Settings: Tab moves through the fields in order; Enter in a field saves.
    browser
        .open(&format!(
            "{}/console/projects/{}/settings",
            app.base_url, app.project_id
        ))
        .await;
    browser.click("#monthly_call_limit").await;
    assert_eq!(browser.focused().await, "monthly_call_limit");
    browser.press(TAB).await;
    assert_eq!(browser.focused().await, "member_calls_per_minute");
    browser.type_into("#member_calls_per_minute", "60").await;
    browser.press(ENTER).await;
    browser.wait_for("#member_calls_per_minute[value='60']").await;
    let (_, project) = app.admin.get(&format!("/v1/projects/{}", app.project_id)).await;
    assert_eq!(project["member_calls_per_minute"], 60, "{project}");

    // Credentials: from the kid field, Tab reaches the key, then the button; Enter adds the key.
    browser
        .open(&format!(
            "{}/console/projects/{}/credentials",
            app.base_url, app.project_id
        ))
        .await;
    browser.type_into("#kid", "keyboard-1").await;
    browser.press(TAB).await;
    assert_eq!(browser.focused().await, "public_key");
    browser.press(TAB).await;
    assert_eq!(browser.focused().await, "Add member key");
    browser.press(ENTER).await;
    browser.wait_for("#new-private-key").await;
    let (_, keys) = app
        .admin
        .get(&format!("/v1/projects/{}/member-keys", app.project_id))
        .await;
    assert_eq!(keys["member_keys"][0]["kid"], "keyboard-1", "{keys}");
    browser.stop().await;
}
