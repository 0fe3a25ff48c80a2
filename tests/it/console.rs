//! The web console in a real browser: headless Chromium (through chromedriver)
//! against the whole system. An operator signs in with the admin token, finds
//! the project, switches a tool off (an MCP client's `tools/list` loses it) and
//! reads a call's run and its attempts. Refusals (wrong token, missing CSRF
//! token, no session) are checked with raw HTTP too. Screenshots of every
//! screen go to `$CARGO_TARGET_TMPDIR/console-screenshots/`.

use std::path::PathBuf;

use reqwest::{header, redirect::Policy};
use serde_json::{Value, json};
use tengine_tests::{
    ADMIN_TOKEN, TestApp, ToolSpec,
    mcp::{RawSession, run_id},
    spawn_app, spawn_app_with,
    upstream::Upstream,
};

use crate::browser::Chromium;

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn tool_names(session: &mut RawSession) -> Vec<String> {
    let reply = session.request("tools/list", json!({})).await;
    reply.body["result"]["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Two tools and one finished call of `lookup`: (the MCP session, its run id).
async fn project_with_a_run(app: &TestApp, upstream: &Upstream) -> (RawSession, String) {
    for name in ["lookup", "archive"] {
        app.create_tool(ToolSpec::get(name, &upstream.url(), "/items").description("a console test tool"))
            .await;
    }
    let mut session = app.session();
    session.initialize().await;
    let result = session.call("lookup", json!({})).await;
    assert_eq!(result["isError"], false, "{result}");
    let run = run_id(&result);
    app.admin.finished_run(&run).await;
    // The hourly usage the Tools screen counts is projected too.
    app.admin.wait_for_projector().await;
    (session, run)
}

/// The session's GET stream, subscribed (it carries `list_changed`).
async fn list_changes(app: &TestApp, session: &RawSession) -> reqwest::Response {
    let stream = app
        .http
        .get(&app.mcp_url)
        .bearer_auth(&app.api_key)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session.session_id.clone().expect("a session"))
        .send()
        .await
        .expect("GET");
    assert_eq!(stream.status(), 200);
    // Let the stream subscribe before the change.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stream
}

/// Asserts a page shows no secret, and keeps its source.
async fn checked_page(browser: &Chromium, app: &TestApp, pages: &mut Vec<String>) -> String {
    let source = browser.source().await;
    browser.assert_accessible(&browser.url().await).await;
    assert!(!source.contains(ADMIN_TOKEN), "a page shows the admin token");
    assert!(!source.contains(&app.api_key), "a page shows an API key's secret");
    pages.push(source.clone());
    source
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_signs_in_switches_a_tool_off_and_reads_its_run() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (mut session, run) = project_with_a_run(&app, &upstream).await;
    let shots = screenshots();
    let mut pages = Vec::new();
    let browser = Chromium::start().await;

    // Unauthenticated: sent to sign-in, which has one password field.
    browser.open(&format!("{}/console", app.base_url)).await;
    assert!(
        browser.url().await.ends_with("/console/sign-in"),
        "{}",
        browser.url().await
    );
    assert_eq!(browser.count("input[type=password]").await, 1);
    browser.type_into("input[type=password]", "not-the-admin-token").await;
    browser.click("button[type=submit]").await;
    browser.wait_for("[role=alert]").await;
    let refused = checked_page(&browser, &app, &mut pages).await;
    assert!(refused.contains("That is not the admin token."), "{refused}");
    browser.screenshot(&shots.join("sign-in.png")).await;

    browser.type_into("input[type=password]", ADMIN_TOKEN).await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/console").await;
    checked_page(&browser, &app, &mut pages).await;
    browser.screenshot(&shots.join("projects.png")).await;

    browser.click_link("test").await;
    browser.wait_for_url(&app.project_id.to_string()).await;
    for screen in ["Overview", "Tools", "Runs", "Usage", "Credentials", "Settings"] {
        browser.find("link text", screen).await;
    }
    checked_page(&browser, &app, &mut pages).await;
    browser.screenshot(&shots.join("overview.png")).await;

    // Tools: the switch's accessible name, and switching it off.
    browser.click_link("Tools").await;
    browser.wait_for_url("/tools").await;
    let switch = "button[role=switch][aria-label='Enable lookup']";
    assert_eq!(browser.accessible_name(switch).await, "Enable lookup");
    let listing = checked_page(&browser, &app, &mut pages).await;
    // Calls and errors over 24 h: lookup's one call, none of archive.
    assert!(
        listing.contains("<td>none</td><td>0</td><td>0</td>") && listing.contains("<td>none</td><td>1</td><td>0</td>"),
        "{listing}"
    );
    assert!(tool_names(&mut session).await.contains(&"lookup".to_string()));
    let mut stream = list_changes(&app, &session).await;
    browser.click(switch).await;
    browser
        .wait_for("button[role=switch][aria-label='Enable lookup'][aria-checked=false]")
        .await;
    let tools = checked_page(&browser, &app, &mut pages).await;
    assert_eq!(
        browser
            .count("button[role=switch][aria-label='Enable lookup'][aria-checked=false]")
            .await,
        1,
        "{tools}"
    );
    assert_eq!(
        browser.count("button[role=switch][aria-checked=true]").await,
        1,
        "archive stays on"
    );
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
        .await
        .expect("list_changed within 5 s")
        .expect("read")
        .expect("data");
    assert!(
        String::from_utf8_lossy(&chunk).contains("notifications/tools/list_changed"),
        "the open session is told"
    );
    assert_eq!(
        tool_names(&mut session).await,
        vec!["archive".to_string()],
        "tools/list lost lookup"
    );
    browser.screenshot(&shots.join("tools.png")).await;
    // Deleting a tool, after a confirmation: gone from the table and from tools/list.
    browser.click("a[aria-label='Delete archive']").await;
    browser.wait_for_url("/archive/delete").await;
    checked_page(&browser, &app, &mut pages).await;
    browser.screenshot(&shots.join("tool-delete.png")).await;
    browser.click("main form button[type=submit]").await;
    browser.wait_for_url("/tools").await;
    browser.wait_for("button[aria-label='Enable lookup']").await;
    assert_eq!(browser.count("button[aria-label='Enable archive']").await, 0);
    assert!(tool_names(&mut session).await.is_empty(), "archive deleted, lookup off");

    // Runs: the call, then its detail with the attempt.
    browser.click_link("Runs").await;
    browser.wait_for_url("/runs").await;
    let runs = checked_page(&browser, &app, &mut pages).await;
    assert!(runs.contains(&run) && runs.contains("succeeded"), "{runs}");
    browser.screenshot(&shots.join("runs.png")).await;
    browser.click_link(&run).await;
    browser.wait_for_url(&run).await;
    let detail = checked_page(&browser, &app, &mut pages).await;
    assert!(detail.contains("Attempt 1") && detail.contains("HTTP 200"), "{detail}");
    browser.screenshot(&shots.join("run.png")).await;
    // Filters live in the URL.
    browser
        .open(&format!(
            "{}/console/projects/{}/runs?status=failed",
            app.base_url, app.project_id
        ))
        .await;
    let failed = checked_page(&browser, &app, &mut pages).await;
    assert!(failed.contains("No runs match.") && !failed.contains(&run), "{failed}");

    // Credentials shows a key by its prefix only (checked_page: never the secret).
    let prefix = &app.api_key[..12];
    for (screen, shows) in [
        ("Usage", "<code>lookup</code></th><td>1</td><td>0</td>"),
        ("Credentials", prefix),
        ("Settings", "Bodies and redaction"),
    ] {
        browser.click_link(screen).await;
        browser.wait_for_url(&screen.to_lowercase()).await;
        let shown = checked_page(&browser, &app, &mut pages).await;
        assert!(shown.contains(shows), "{screen} shows {shows}: {shown}");
        browser
            .screenshot(&shots.join(format!("{}.png", screen.to_lowercase())))
            .await;
    }
    // Revoking the key, after a confirmation: the MCP client is refused at once.
    browser.click_link("Credentials").await;
    browser.wait_for_url("/credentials").await;
    browser.click(&format!("a[aria-label='Revoke {prefix}']")).await;
    browser.wait_for_url("/revoke").await;
    checked_page(&browser, &app, &mut pages).await;
    browser.screenshot(&shots.join("revoke.png")).await;
    browser.click("main form button[type=submit]").await;
    browser.wait_for_url("/credentials").await;
    let revoked = checked_page(&browser, &app, &mut pages).await;
    assert_eq!(
        browser.count(&format!("a[aria-label='Revoke {prefix}']")).await,
        0,
        "{revoked}"
    );
    assert!(revoked.contains(" UTC</td></tr>"), "the time it took effect: {revoked}");
    let refused = session.request("tools/list", json!({})).await;
    assert_eq!(refused.status, 401, "{}", refused.body);

    // A new key: its secret shown once, and it works.
    browser.type_into("#key-name", "console key").await;
    browser.click("form[action$='/api-keys'] button[type=submit]").await;
    browser.wait_for("#new-key").await;
    let secret = browser.text("#new-key").await;
    assert!(secret.starts_with("tengine_"), "{secret}");
    browser.screenshot(&shots.join("key-created.png")).await;
    browser.assert_accessible("key created").await;
    let mut fresh = RawSession::new(app.http.clone(), app.mcp_url.clone(), secret.clone());
    fresh.initialize().await;
    browser.click_link("Credentials").await;
    browser.wait_for_url("/credentials").await;
    let listed = checked_page(&browser, &app, &mut pages).await;
    assert!(
        listed.contains(&secret[..12]) && !listed.contains(&secret),
        "listed by prefix only"
    );

    browser.click("header button[type=submit]").await;
    browser.wait_for_url("/console/sign-in").await;
    browser
        .open(&format!("{}/console/projects/{}/tools", app.base_url, app.project_id))
        .await;
    assert!(browser.url().await.ends_with("/console/sign-in"), "the session is over");
    browser.stop().await;
    assert!(pages.len() >= 7);
}

/// A cookie's `name=value` from a response's `Set-Cookie` headers, and the whole header.
fn set_cookie(response: &reqwest::Response, name: &str) -> (String, String) {
    let header = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} is set"))
        .to_string();
    let pair = header.split(';').next().unwrap_or_default().to_string();
    (pair, header)
}

/// The value of the hidden `csrf` field of a page.
fn csrf_field(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    page[start..].split('"').next().unwrap_or_default().to_string()
}

/// Signs in over raw HTTP: the session cookie's `name=value`, and its `Set-Cookie` header.
async fn sign_in(http: &reqwest::Client, console: &str) -> (String, String) {
    let page = http.get(format!("{console}/sign-in")).send().await.expect("get");
    let (sign_in_cookie, _) = set_cookie(&page, "tengine_console_sign_in");
    let csrf = csrf_field(&page.text().await.expect("page"));
    let signed_in = http
        .post(format!("{console}/sign-in"))
        .header(header::COOKIE, &sign_in_cookie)
        .form(&[("csrf", csrf.as_str()), ("token", ADMIN_TOKEN)])
        .send()
        .await
        .expect("post");
    assert_eq!(signed_in.status(), 303);
    set_cookie(&signed_in, "tengine_console")
}

/// A console page's status and HTML.
async fn page(http: &reqwest::Client, url: &str, session: &str) -> (u16, String) {
    let response = http.get(url).header(header::COOKIE, session).send().await.expect("get");
    (response.status().as_u16(), response.text().await.expect("page"))
}

/// The run ids a Runs page links to, and its *Older runs* link.
fn runs_of(page: &str) -> (Vec<String>, Option<String>) {
    let runs = page
        .split("/runs/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    let next = page
        .split("rel=\"next\"")
        .next()
        .filter(|_| page.contains("rel=\"next\""))
        .and_then(|before| before.rsplit("href=\"").next())
        .and_then(|rest| rest.split('"').next())
        .map(|href| href.replace("&amp;", "&"));
    (runs, next)
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_need_their_csrf_token_and_pages_a_session() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (_session, _run) = project_with_a_run(&app, &upstream).await;
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let console = format!("{}/console", app.base_url);
    let tools = format!("{console}/projects/{}/tools", app.project_id);

    let anonymous = http.get(&tools).send().await.expect("get");
    assert_eq!(anonymous.status(), 303);
    assert!(
        anonymous.headers()[header::LOCATION]
            .to_str()
            .unwrap_or_default()
            .ends_with("/console/sign-in")
    );

    // Sign-in without the form's CSRF token (even with the right admin token): refused.
    let bare = http
        .post(format!("{console}/sign-in"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .expect("post");
    assert_eq!(bare.status(), 403);
    assert!(bare.headers().get(header::SET_COOKIE).is_none());

    let (session, attributes) = sign_in(&http, &console).await;
    assert!(!session.contains(ADMIN_TOKEN), "the cookie never holds the token");
    for attribute in ["HttpOnly", "SameSite=Strict", "Max-Age=1800"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }

    let page = http
        .get(&tools)
        .header(header::COOKIE, &session)
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    let csrf = csrf_field(&page.text().await.expect("page"));
    let switch = format!("{tools}/lookup/enabled");
    for form in [
        vec![("enabled", "false")],
        vec![("enabled", "false"), ("csrf", "forged")],
    ] {
        let refused = http
            .post(&switch)
            .header(header::COOKIE, &session)
            .form(&form)
            .send()
            .await
            .expect("post");
        assert_eq!(refused.status(), 403, "{form:?}");
    }
    let (_, tool) = app
        .admin
        .get(&format!("/v1/projects/{}/tools/lookup", app.project_id))
        .await;
    assert_eq!(tool["enabled"], Value::Bool(true), "a refused form changes nothing");

    let accepted = http
        .post(&switch)
        .header(header::COOKIE, &session)
        .form(&[("enabled", "false"), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(accepted.status(), 303);
    let (_, tool) = app
        .admin
        .get(&format!("/v1/projects/{}/tools/lookup", app.project_id))
        .await;
    assert_eq!(tool["enabled"], Value::Bool(false));

    let revoke = format!(
        "{console}/projects/{}/api-keys/{}/revoke",
        app.project_id, app.api_key_id
    );
    let refused = http
        .post(&revoke)
        .header(header::COOKIE, &session)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 403);
    let mut mcp = app.session();
    mcp.initialize().await;

    // A refused key name: the form again, as sent, with the server's message beside the field.
    let long = "x".repeat(201);
    let refused = http
        .post(format!("{console}/projects/{}/api-keys", app.project_id))
        .header(header::COOKIE, &session)
        .form(&[("csrf", csrf.as_str()), ("name", long.as_str()), ("read", "on")])
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 422);
    let html = refused.text().await.expect("page");
    assert!(
        html.contains("without control characters") && html.contains("role=\"alert\""),
        "{html}"
    );
    assert!(
        html.contains(&format!("value=\"{long}\"")) && html.contains("aria-invalid=\"true\""),
        "{html}"
    );
    let (_, keys) = app
        .admin
        .get(&format!("/v1/projects/{}/api-keys", app.project_id))
        .await;
    assert_eq!(keys["api_keys"].as_array().map(Vec::len), Some(1), "no key was created");

    // A forged session cookie is no session.
    let forged = http
        .get(&tools)
        .header(header::COOKIE, format!("{session}x"))
        .send()
        .await
        .expect("get");
    assert_eq!(forged.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_page_by_cursor_filter_in_the_url_show_attempts_and_stay_in_their_project() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (mut session, first) = project_with_a_run(&app, &upstream).await;
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": true, "redact_fields": ["path"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    app.create_tool(
        ToolSpec::get("flaky", &upstream.url(), "/status/503")
            .description("always 503")
            .retry(json!({"max_attempts": 3, "initial_backoff_ms": 10})),
    )
    .await;
    let failed = session.call("flaky", json!({})).await;
    assert_eq!(failed["isError"], true, "{failed}");
    let flaky = run_id(&failed);
    let second = run_id(&session.call("lookup", json!({})).await);
    for run in [&flaky, &second] {
        app.admin.finished_run(run).await;
    }
    // Another project's run, of a tool of the same name.
    let other = app.admin.create_project("other").await;
    let key = app.admin.create_api_key(other, &[]).await;
    app.admin
        .create_tool(
            other,
            ToolSpec::get("lookup", &upstream.url(), "/items").description("other"),
        )
        .await;
    let mut theirs = RawSession::new(app.http.clone(), app.mcp_url.clone(), key.key.clone());
    theirs.initialize().await;
    let foreign = run_id(&theirs.call("lookup", json!({})).await);
    app.admin.finished_run(&foreign).await;
    app.admin.wait_for_projector().await;

    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let console = format!("{}/console", app.base_url);
    let (cookie, _) = sign_in(&http, &console).await;
    let runs = format!("{console}/projects/{}/runs", app.project_id);

    // One run a page, newest first, to the end by the cursor.
    let mut seen = Vec::new();
    let mut next = Some(format!("{runs}?limit=1"));
    while let Some(url) = next {
        let (status, html) = page(&http, &url, &cookie).await;
        assert_eq!(status, 200, "{html}");
        let (found, older) = runs_of(&html);
        assert_eq!(found.len(), 1, "{html}");
        seen.extend(found);
        next = older.map(|href| format!("{}{href}", app.base_url));
        assert!(seen.len() <= 3, "the cursor ends: {seen:?}");
    }
    assert_eq!(seen, vec![second.clone(), flaky.clone(), first.clone()]);

    let (_, filtered) = page(&http, &format!("{runs}?tool=flaky&status=failed"), &cookie).await;
    assert_eq!(runs_of(&filtered).0, vec![flaky.clone()], "{filtered}");
    let (_, nobody) = page(&http, &format!("{runs}?member=nobody"), &cookie).await;
    assert!(nobody.contains("No runs match."), "{nobody}");
    let jump = http
        .get(format!("{runs}?run={flaky}"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(jump.status(), 303);
    assert!(
        jump.headers()[header::LOCATION]
            .to_str()
            .unwrap_or_default()
            .ends_with(&format!("/runs/{flaky}"))
    );
    let (status, _) = page(&http, &format!("{runs}?status=nonsense"), &cookie).await;
    assert_eq!(status, 400);

    let (status, detail) = page(&http, &format!("{runs}/{flaky}"), &cookie).await;
    assert_eq!(status, 200);
    for shown in ["failed", "Attempt 1", "Attempt 3", "HTTP 503"] {
        assert!(detail.contains(shown), "{shown}: {detail}");
    }
    // Usage as CSV: the same rows as the Usage screen.
    let csv = http
        .get(format!(
            "{console}/projects/{}/usage.csv?by=tool&period=day",
            app.project_id
        ))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("csv");
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.expect("csv");
    assert!(csv.starts_with("tool,calls,errors,mean_latency_ms\r\n"), "{csv}");
    assert!(
        csv.contains("\"flaky\",1,1,") && csv.contains("\"lookup\",2,0,"),
        "{csv}"
    );
    let (status, _) = page(
        &http,
        &format!("{console}/projects/{}/usage?by=nonsense", app.project_id),
        &cookie,
    )
    .await;
    assert_eq!(status, 400);

    // The kept response body, redacted as the project says.
    let (_, kept) = page(&http, &format!("{runs}/{second}"), &cookie).await;
    assert!(kept.contains("Bodies") && kept.contains("[REDACTED]"), "{kept}");
    // (The page's rendered request shows the tool's URL, `/items` too; the bodies must not.)
    let bodies = kept.split("<h2>Bodies</h2>").nth(1).unwrap_or_default();
    assert!(
        !bodies.is_empty() && !bodies.contains("/items"),
        "the redacted field's value is not shown: {kept}"
    );
    let (status, _) = page(&http, &format!("{runs}/{foreign}"), &cookie).await;
    assert_eq!(status, 404, "another project's run is not shown under this one");
    let (_, all) = page(&http, &runs, &cookie).await;
    assert!(!all.contains(&foreign));

    // The overview counts this project's three calls, one failed (not the other project's).
    let (_, overview) = page(&http, &format!("{console}/projects/{}", app.project_id), &cookie).await;
    let day = "<th scope=\"row\">24 hours</th><td>3</td><td>1</td><td>33.3 %</td>";
    assert!(overview.contains(day), "{overview}");
    assert!(overview.contains("<code>flaky</code>: 1 errors"), "{overview}");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_an_https_prefix_cookies_are_secure_and_links_carry_the_prefix() {
    // A proxy serves the ingress at https://console.example/tengine (no traffic goes there).
    let app = spawn_app_with(&[("ingress.public_url", "https://console.example/tengine")]).await;
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let page = http
        .get(format!("{}/console/sign-in", app.base_url))
        .send()
        .await
        .expect("get");
    let (_, cookie) = set_cookie(&page, "tengine_console_sign_in");
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    assert!(cookie.contains("Path=/tengine/console/sign-in"), "{cookie}");
    let html = page.text().await.expect("page");
    assert!(html.contains("action=\"/tengine/console/sign-in\""), "{html}");
    let anonymous = http.get(format!("{}/console", app.base_url)).send().await.expect("get");
    assert_eq!(anonymous.headers()[header::LOCATION], "/tengine/console/sign-in");
}
