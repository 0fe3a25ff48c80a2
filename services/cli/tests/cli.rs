//! The `tengine` command against a real cluster: every control-plane subcommand.

use serde_json::{Value, json};
use tengine_tests::{TestApp, ToolSpec, spawn_app, upstream::Upstream};

fn tengine(app: &TestApp, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tengine"))
        .args(args)
        .env("TENGINE_ADMIN_URL", &app.admin.base_url)
        .env("TENGINE_ADMIN_TOKEN", &app.admin.token)
        .output()
        .expect("run tengine");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "tengine {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_through_the_cli() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let project = app.project_id.to_string();
    let dir = std::env::temp_dir().join(format!("tengine-cli-{}", uuid_like()));
    std::fs::create_dir_all(&dir).expect("dir");

    let tool_file = dir.join("tool.json");
    std::fs::write(
        &tool_file,
        ToolSpec::post("echo", &upstream.url(), "/echo/{m}")
            .schema(json!({"type": "object", "properties": {"m": {"type": "string"}}}))
            .json()
            .to_string(),
    )
    .expect("write");
    let (status, _) = app
        .admin
        .patch_project(
            app.project_id,
            json!({"oauth": {"enabled": true, "login_url": "https://app.example.com/login"}}),
        )
        .await;
    assert_eq!(status, 200);
    let registered: Value = app
        .http
        .post(format!("{}/oauth/{project}/register", app.base_url))
        .json(&json!({"client_name": "cli test", "redirect_uris": ["https://app.example.com/cb"]}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let app_ref = &app;
    let run = move |args: &[&str]| tengine(app_ref, args);
    tokio::task::block_in_place(|| {
        assert_eq!(
            json_of(&run(&[
                "tools",
                "create",
                "--project",
                &project,
                "--file",
                tool_file.to_str().expect("path")
            ]))["version"],
            1
        );
        let rendered = json_of(&run(&[
            "tools",
            "render",
            "--project",
            &project,
            "echo",
            "--args",
            r#"{"m": "a/b"}"#,
        ]));
        assert!(rendered["url"].as_str().expect("url").ends_with("/echo/a%2Fb"));
        assert_eq!(
            json_of(&run(&["tools", "disable", "--project", &project, "echo"]))["enabled"],
            false
        );
        assert_eq!(
            json_of(&run(&["tools", "enable", "--project", &project, "echo"]))["enabled"],
            true
        );
        assert_eq!(
            json_of(&run(&["tools", "list", "--project", &project]))["tools"][0]["name"],
            "echo"
        );

        let integration = json_of(&run(&[
            "integrations",
            "create",
            "--project",
            &project,
            "Support",
            "--allow-tool",
            "echo",
        ]));
        let iid = integration["id"].as_str().expect("id").to_string();
        let key = json_of(&run(&[
            "integrations",
            "key",
            "--project",
            &project,
            &iid,
            "--name",
            "agent",
        ]));
        assert!(key["key"].as_str().expect("key").starts_with("tengine_"));
        assert!(key["client_config"]["mcp_json"].is_object());
        assert_eq!(
            json_of(&run(&["integrations", "list", "--project", &project]))["integrations"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );

        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(&secret.public_key(), p256::pkcs8::LineEnding::LF)
            .expect("pem");
        let pem_file = dir.join("member.pem");
        std::fs::write(&pem_file, pem).expect("write");
        run(&[
            "member-keys",
            "add",
            "--project",
            &project,
            "--kid",
            "k1",
            "--public-key-file",
            pem_file.to_str().expect("path"),
        ]);
        assert_eq!(
            json_of(&run(&["member-keys", "list", "--project", &project]))["member_keys"][0]["kid"],
            "k1"
        );
        assert!(run(&["members", "revoke-sessions", "--project", &project, "user-1"]).contains("user-1"));
        let clients = json_of(&run(&["oauth", "clients", "--project", &project]));
        assert_eq!(clients["clients"][0]["client_id"], registered["client_id"]);
        assert_eq!(
            json_of(&run(&["oauth", "grants", "--project", &project]))["grants"],
            json!([])
        );

        let allow = json_of(&run(&["projects", "allowlist", "--project", &project, "10.0.0.0/8"]));
        assert_eq!(allow["outbound_allowlist"], json!(["10.0.0.0/8"]));
        run(&["integrations", "delete", "--project", &project, &iid]);
        run(&["member-keys", "delete", "--project", &project, "k1"]);
        run(&["tools", "delete", "--project", &project, "echo"]);
        assert!(run(&["runs", "list", "--project", &project]).contains("runs"));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn master_key_rotation_reseals_every_secret() {
    let app = spawn_app().await;
    let old_key = app.config.master_key.clone();
    let new_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([42u8; 32])
    };
    app.create_tool(ToolSpec::get("t", "https://api.example.com", "/").auth_bearer("tok"))
        .await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tengine"))
        .args(["secrets", "reseal"])
        .env("TENGINE_DATABASE_URL", &app.config.database_url)
        .env("TENGINE_MASTER_KEY", &new_key)
        .env("TENGINE_PREVIOUS_MASTER_KEYS", format!("[\"{old_key}\"]"))
        .env("TENGINE_RUN_MIGRATIONS", "false")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 tool"));
    let (id, sealed): (uuid::Uuid, Vec<u8>) = sqlx::query_as("SELECT id, auth_secret_ciphertext FROM tools")
        .fetch_one(&app.pool)
        .await
        .expect("row");
    let only_new = tengine_core::secrets::SecretBox::new(&[42u8; 32]);
    assert_eq!(only_new.open(id, &sealed).expect("the new key alone opens it"), "tok");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_reapplied() {
    let app = spawn_app().await;
    let poison = tengine_tests::poison::publish(&app).await;
    tengine_tests::poison::wait_for_dead_letters(&app, 2).await;
    let dead_letters = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tengine"))
            .args(["projector", "dead-letters"])
            .args(args)
            .env("TENGINE_DATABASE_URL", &app.config.database_url)
            .env("TENGINE_RUN_MIGRATIONS", "false")
            .output()
            .expect("run");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let listed = tokio::task::block_in_place(|| dead_letters(&[]));
    assert!(listed.0, "{}", listed.2);
    let lines: Vec<&str> = listed.1.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two letters: {}", listed.1);
    for column in ["ID", "SEQ", "RUN", "PROJECT", "CREATED", "REAPPLIED", "ERROR"] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    let fixable = lines
        .iter()
        .find(|l| l.contains(&poison.fixable.to_string()))
        .unwrap_or_else(|| panic!("the fixable run is listed: {}", listed.1));
    assert!(fixable.contains(tengine_tests::poison::CONSTRAINT), "{fixable}");
    assert!(fixable.contains(&app.project_id.to_string()), "{fixable}");
    assert!(listed.1.contains(&poison.garbage.to_string()), "{}", listed.1);
    let id = fixable.split_whitespace().next().expect("id").to_string();

    let refused = tokio::task::block_in_place(|| dead_letters(&["--reapply", &id]));
    assert!(!refused.0, "the cause is not fixed yet: {}", refused.1);
    assert!(refused.2.contains("still cannot be applied"), "{}", refused.2);
    tengine_tests::poison::fix(&app).await;
    let reapplied = tokio::task::block_in_place(|| dead_letters(&["--reapply", &id]));
    assert!(reapplied.0, "{}", reapplied.2);
    assert!(
        reapplied.1.contains(&format!("re-applied dead letter #{id}")),
        "{}",
        reapplied.1
    );
    let run = app.admin.finished_run(&poison.fixable.to_string()).await;
    assert_eq!(run["error"], "poison", "{run}");
    let listed = tokio::task::block_in_place(|| dead_letters(&[])).1;
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .expect("still listed");
    assert_eq!(
        line.split_whitespace().nth(5).map(|r| r != "-"),
        Some(true),
        "marked re-applied: {line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_import_through_the_cli_prints_a_table() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let project = app.project_id.to_string();
    let petstore = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/typescript/node_modules/@readme/oas-examples/3.0/yaml/petstore.yaml");
    let file = petstore.to_str().expect("path").to_string();
    let base_url = upstream.url();
    let app_ref = &app;
    let run = move |args: &[&str]| tengine(app_ref, args);
    tokio::task::block_in_place(|| {
        let table = run(&[
            "tools",
            "import",
            &file,
            "--project",
            &project,
            "--tag",
            "store",
            "--base-url",
            &base_url,
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ACTION") && lines[0].contains("DETAIL"), "{table}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("create") && l.contains("getOrderById")),
            "{table}"
        );
        assert!(
            lines
                .last()
                .is_some_and(|l| l.contains("4 create") && l.contains("dry run")),
            "{table}"
        );
        assert_eq!(
            json_of(&run(&["tools", "list", "--project", &project]))["tools"],
            json!([])
        );
        let applied = run(&[
            "tools",
            "import",
            &file,
            "--project",
            &project,
            "--tag",
            "store",
            "--base-url",
            &base_url,
            "--apply",
            "--enable",
        ]);
        assert!(
            applied
                .lines()
                .last()
                .is_some_and(|l| l.contains("4 create") && !l.contains("dry run"))
        );
        let tool = json_of(&run(&["tools", "get", "--project", &project, "getOrderById"]));
        assert_eq!(tool["enabled"], true);
        let again = run(&[
            "tools",
            "import",
            &file,
            "--project",
            &project,
            "--tag",
            "store",
            "--base-url",
            &base_url,
            "--json",
        ]);
        assert_eq!(json_of(&again)["counts"]["unchanged"], 4);
    });
}

/// The `tengine` command's output and whether it succeeded (for refusals).
fn tengine_outcome(app: &TestApp, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tengine"))
        .args(args)
        .env("TENGINE_ADMIN_URL", &app.admin.base_url)
        .env("TENGINE_ADMIN_TOKEN", &app.admin.token)
        .output()
        .expect("run tengine");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_redrive_runs_a_call_again_once_per_key() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let project = app.project_id.to_string();
    let (status, _) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": true}))
        .await;
    assert_eq!(status, 200);
    app.create_tool(
        ToolSpec::get("lookup", &upstream.url(), "/items")
            .schema(json!({"type": "object", "properties": {"q": {"type": "string"}}})),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    let first = tengine_tests::mcp::run_id(&session.call("lookup", json!({"q": "cli"})).await);
    app.admin.finished_run(&first).await;
    let app_ref = &app;
    let (again, retried, refused) = tokio::task::block_in_place(|| {
        let redrive = |key: &str| {
            json_of(&tengine(
                app_ref,
                &[
                    "runs",
                    "redrive",
                    "--project",
                    &project,
                    &first,
                    "--idempotency-key",
                    key,
                ],
            ))
        };
        let again = redrive("cli-1");
        let retried = redrive("cli-1");
        let refused = tengine_outcome(
            app_ref,
            &[
                "runs",
                "redrive",
                "--project",
                &project,
                "0190a1b2-0000-7000-8000-000000000003",
            ],
        );
        (again, retried, refused)
    });
    let new = again["run_id"].as_str().expect("a run id").to_string();
    assert_ne!(new, first);
    assert_eq!(again["redrive_of"], first.as_str());
    assert_eq!(retried["run_id"], new.as_str(), "the same key: the same run");
    let done = app.admin.finished_run(&new).await;
    assert_eq!(
        (done["status"].as_str(), done["redrive_of"].as_str()),
        (Some("succeeded"), Some(first.as_str()))
    );
    assert!(!refused.0 && refused.1.contains("404"), "{}", refused.1);
}
