//! Every table is written and read by one crate only: the one that owns its data
//! (`docs/architecture.md`, "Who owns which table"). Other crates call the owner's
//! functions. This scans the services' sources for SQL naming a table outside
//! its owner, and the migrations for tables without an owner.

use std::path::{Path, PathBuf};

/// Each table and the crate (directory under `services/`) that owns its SQL.
const OWNERS: &[(&str, &str)] = &[
    ("projects", "control"),
    ("integrations", "control"),
    ("api_keys", "control"),
    ("member_keys", "control"),
    ("member_revocations", "control"),
    ("member_assertions_used", "control"),
    ("tools", "control"),
    ("quota_counters", "control"),
    ("oauth_clients", "control"),
    ("oauth_grants", "control"),
    ("oauth_authorizations", "control"),
    ("oauth_refresh_tokens", "control"),
    ("oauth_events", "control"),
    ("runs", "projector"),
    ("run_attempts", "projector"),
    ("run_results", "projector"),
    ("usage_hourly", "projector"),
    ("processed_events", "projector"),
    ("projector_checkpoints", "projector"),
    ("projector_dead_letters", "projector"),
];

/// SQL keywords followed by a table name.
const KEYWORDS: &[&str] = &["FROM", "JOIN", "INTO", "UPDATE", "TABLE"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The tables `text` names after an SQL keyword (`FROM runs`, `UPDATE tools`, …).
fn tables_named(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for keyword in KEYWORDS {
        for (at, _) in text.match_indices(keyword) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(is_name_char) {
                continue;
            }
            let rest = &text[at + keyword.len()..];
            // Whitespace, or a Rust string's line continuation.
            let trimmed = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '\\');
            if trimmed.len() == rest.len() {
                continue;
            }
            let name: String = trimmed.chars().take_while(|c| is_name_char(*c)).collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn the_scan_finds_sql_naming_a_table() {
    let sql = "SELECT a FROM runs r JOIN tools t ON x WHERE y; INSERT INTO quota_counters; UPDATE \\\n    api_keys SET";
    let mut names = tables_named(sql);
    names.sort();
    assert_eq!(names, ["api_keys", "quota_counters", "runs", "tools"]);
    assert!(tables_named("read from runs; the FROMAGE; XFROM runs").is_empty());
}

#[test]
fn every_table_has_an_owner() {
    let mut migrations = Vec::new();
    for entry in std::fs::read_dir(workspace().join("migrations")).expect("migrations/") {
        let path = entry.expect("migration").path();
        migrations.push(std::fs::read_to_string(&path).expect("migration text"));
    }
    for text in migrations {
        for line in text.lines() {
            let Some(rest) = line.trim_start().strip_prefix("CREATE TABLE ") else {
                continue;
            };
            let name: String = rest.trim_start().chars().take_while(|c| is_name_char(*c)).collect();
            assert!(
                OWNERS.iter().any(|(table, _)| *table == name),
                "table `{name}` (migrations/) has no owner: add it to OWNERS here and to docs/architecture.md"
            );
        }
    }
}

#[test]
fn every_table_is_queried_by_its_owner_only() {
    let root = workspace();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("services")).expect("services/") {
        rust_files(&entry.expect("service").path().join("src"), &mut files);
    }
    rust_files(&root.join("loadtest/src"), &mut files);
    assert!(files.len() > 20, "the scan found the sources ({} files)", files.len());
    let mut strays = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("inside the workspace");
        let text = std::fs::read_to_string(&file).expect("source text");
        for name in tables_named(&text) {
            let Some((_, owner)) = OWNERS.iter().find(|(table, _)| *table == name) else {
                continue;
            };
            if !relative.starts_with(Path::new("services").join(owner)) {
                strays.push(format!(
                    "{}: SQL on `{name}`, owned by tengine-{owner}",
                    relative.display()
                ));
            }
        }
    }
    strays.sort();
    strays.dedup();
    assert!(
        strays.is_empty(),
        "SQL outside the crate that owns the table (call the owner's function instead):\n{}",
        strays.join("\n")
    );
}
