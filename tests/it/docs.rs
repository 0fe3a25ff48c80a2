//! The documentation's relative links resolve: every `[text](path#anchor)` in `README.md`, `docs/` and the
//! other Markdown pages of the repository names a file that exists and, with an anchor, a heading of that
//! file (GitHub's slugs). Also: the README stays short and links every page of `docs/`; the admin API
//! page's table of operations is the OpenAPI document's (`TENGINE_UPDATE_DOCS=1` regenerates it); the
//! error tables of `docs/errors.md` list exactly the catalogue's codes (`tengine_core::errors`).
//! Needs neither NATS nor PostgreSQL.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The issue's limit: the README is an entry page, the manual is in `docs/`.
const README_MAX_BYTES: usize = 12 * 1024;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `README.md`, and every `.md` under the folders whose pages link to each other (not `node_modules`,
/// `target` or hidden folders, which hold other people's Markdown or generated files).
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !(name.starts_with('.') || name == "node_modules" || name == "target") {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let root = root();
    let mut out = vec![root.join("README.md")];
    for dir in ["docs", "deploy", "loadtest", "schemas", "tests"] {
        walk(&root.join(dir), &mut out);
    }
    out
}

/// Lines outside fenced code blocks (fences may be indented, e.g. inside list items), with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = if t.starts_with("```") {
            Some("```")
        } else if t.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// The line without its inline code spans (`` `[a](b)` `` is not a link).
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// GitHub's heading anchor: the heading's text lowercased, spaces to `-`, punctuation dropped except `-`
/// and `_`; a repeated heading gets `-1`, `-2`, ….
fn slug(heading: &str) -> String {
    // A link in a heading contributes its text only.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](").map(|m| open + m) else {
            break;
        };
        let Some(close) = rest[mid..].find(')').map(|c| mid + c) else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..mid]);
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    text.trim()
        .chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let heading = line[hashes..].trim().trim_end_matches('#').trim_end();
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Link targets of one line: inline links `[text](target "title")` and reference definitions
/// `[label]: target`.
fn targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut out = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(end) = trimmed.find("]:")
    {
        if let Some(target) = trimmed[end + 2..].split_whitespace().next() {
            out.push(target.to_string());
        }
        return out;
    }
    let mut rest = line.as_str();
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_start_matches('<').trim_end_matches('>').to_string());
        rest = &after[end..];
    }
    out
}

/// Absolute (`https:`, `mailto:`, …) rather than relative.
fn has_scheme(target: &str) -> bool {
    target.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

/// Every broken relative link of one page, as `page:line: target: why`.
fn broken_links(page: &Path, checked: &mut usize) -> Vec<String> {
    let root = root();
    let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("read {}: {e}", page.display()));
    let shown = page.strip_prefix(&root).unwrap_or(page).display().to_string();
    let mut broken = Vec::new();
    for (number, line) in prose(&text) {
        for target in targets(line) {
            if target.is_empty() || has_scheme(&target) {
                continue;
            }
            *checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.to_path_buf()
            } else {
                page.parent().expect("a page is in a folder").join(path)
            };
            if !file.exists() {
                broken.push(format!("{shown}:{number}: {target}: no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if file.extension().and_then(|e| e.to_str()) != Some("md") {
                broken.push(format!(
                    "{shown}:{number}: {target}: an anchor into a file that is not Markdown"
                ));
                continue;
            }
            let other = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            if !anchors(&other).contains(anchor) {
                broken.push(format!("{shown}:{number}: {target}: no heading with this anchor"));
            }
        }
    }
    broken
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("Guarantees and their limits"), "guarantees-and-their-limits");
    assert_eq!(slug("Local scripts (`deploy/local/`)"), "local-scripts-deploylocal");
    assert_eq!(slug("MCP behaviour"), "mcp-behaviour");
    assert_eq!(slug("A `snake_case` name, twice!"), "a-snake_case-name-twice");
    assert_eq!(slug("See [the docs](docs/a.md) now"), "see-the-docs-now");
    let repeated = anchors("# Title\n## Errors\n```\n# not a heading\n```\n## Errors\n");
    assert!(repeated.contains("errors") && repeated.contains("errors-1") && !repeated.contains("not-a-heading"));
    assert_eq!(
        targets("[a](x.md#b) `[c](not-a-link.md)` [d](<y.md> \"title\") [e](https://e.example)"),
        ["x.md#b", "y.md", "https://e.example"]
    );
    assert!(has_scheme("https://e.example") && has_scheme("mailto:a@b") && !has_scheme("docs/a.md#b"));
}

#[test]
fn every_relative_link_resolves() {
    let pages = pages();
    let docs = pages
        .iter()
        .filter(|p| p.parent() == Some(&root().join("docs")))
        .count();
    assert!(docs >= 10, "expected the manual in docs/, found {docs} pages");
    let mut checked = 0;
    let broken: Vec<String> = pages.iter().flat_map(|p| broken_links(p, &mut checked)).collect();
    assert!(
        broken.is_empty(),
        "{} broken links:\n{}",
        broken.len(),
        broken.join("\n")
    );
    // Guards against a parser that finds nothing and so passes.
    assert!(
        checked >= 50,
        "only {checked} relative links found: is the link parser broken?"
    );
}

#[test]
fn the_readme_is_short_and_links_every_docs_page() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    assert!(
        readme.len() <= README_MAX_BYTES,
        "README.md has {} bytes, more than {README_MAX_BYTES}: move the detail into docs/",
        readme.len()
    );
    let linked: BTreeSet<String> = prose(&readme).into_iter().flat_map(|(_, line)| targets(line)).collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let name = entry
            .expect("directory entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".md")
            && !linked
                .iter()
                .any(|t| t.split('#').next() == Some(&format!("docs/{name}")))
        {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "README.md does not link docs/{missing:?}");
}

/// `docs/admin-api.md`'s table of operations lies between these lines.
const OPERATIONS_START: &str = "<!-- operations: generated from the OpenAPI document by tests/it/docs.rs \
                                (TENGINE_UPDATE_DOCS=1 regenerates) -->";
const OPERATIONS_END: &str = "<!-- end of operations -->";

/// Who may call an operation, from its security requirements.
fn auth(op: &serde_json::Value) -> String {
    let names: Vec<&str> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|requirement| {
            let keys: Vec<&str> = requirement
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if keys.is_empty() { vec!["none"] } else { keys }
        })
        .map(|name| match name {
            "admin_token" => "admin",
            "api_key" => "API key",
            "member_session" => "member session",
            other => other,
        })
        .collect();
    names.join(", ")
}

/// The table of operations of the admin API's OpenAPI document, in its order.
fn operations_table() -> String {
    let doc = serde_json::to_value(tengine_ingress::admin::document()).expect("the document serializes");
    let mut table = String::from("| Method and path | Auth | Does |\n|---|---|---|\n");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "patch"] {
            if let Some(op) = item.get(method) {
                let summary = op["summary"].as_str().unwrap_or_default().replace('|', "\\|");
                table.push_str(&format!(
                    "| `{} {path}` | {} | {summary} |\n",
                    method.to_uppercase(),
                    auth(op)
                ));
            }
        }
    }
    table
}

#[test]
fn the_admin_api_page_lists_every_operation_of_the_openapi_document() {
    let path = root().join("docs/admin-api.md");
    let page = std::fs::read_to_string(&path).expect("docs/admin-api.md");
    let (Some(start), Some(end)) = (page.find(OPERATIONS_START), page.find(OPERATIONS_END)) else {
        panic!("docs/admin-api.md has no `{OPERATIONS_START}` … `{OPERATIONS_END}` section");
    };
    let body_start = start.saturating_add(OPERATIONS_START.len());
    let generated = format!("\n{}", operations_table());
    if std::env::var("TENGINE_UPDATE_DOCS").is_ok() {
        let updated = format!("{}{generated}{}", &page[..body_start], &page[end..]);
        std::fs::write(&path, updated).expect("write docs/admin-api.md");
        return;
    }
    assert!(
        page[body_start..end] == generated,
        "docs/admin-api.md's operations differ from the OpenAPI document; regenerate with \
         TENGINE_UPDATE_DOCS=1 cargo test -p tengine-tests --test it docs::"
    );
}

/// The rows of the first table under `## {heading}` in `text`, without its header, as cells.
fn table_rows(text: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("## {heading}")).skip(1);
    let rows: Vec<Vec<String>> = lines
        .by_ref()
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "docs/errors.md: no table under `## {heading}`");
    // The header and the `|---|` line.
    rows.into_iter().skip(2).collect()
}

/// The number a cell starts with (`-32040 (not -32001, …)`, `202, ignored`), if any.
fn leading_number(cell: &str) -> Option<i64> {
    let cell = cell.trim_matches('`');
    let end = cell
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(cell.len(), |(i, _)| i);
    cell[..end].parse().ok()
}

#[test]
fn the_error_tables_match_the_catalogue() {
    use tengine_core::errors::{ADMIN_CODES, OAUTH_CODES, RPC_CODES};
    let text = std::fs::read_to_string(root().join("docs/errors.md")).expect("docs/errors.md");

    // Admin API: `| HTTP | code | When |`, exactly the catalogue's codes with their statuses.
    let documented: BTreeSet<(i64, String)> = table_rows(&text, "Admin API errors")
        .iter()
        .map(|row| {
            let status = leading_number(&row[0]).unwrap_or_else(|| panic!("no HTTP status in {row:?}"));
            (status, row[1].trim_matches('`').to_string())
        })
        .collect();
    let declared: BTreeSet<(i64, String)> = ADMIN_CODES
        .iter()
        .map(|c| (i64::from(c.status), c.code.to_string()))
        .collect();
    assert_eq!(
        documented, declared,
        "docs/errors.md's admin error table differs from tengine_core::errors"
    );

    // OAuth: `| HTTP | error | When |`, exactly the catalogue's (status, error) pairs.
    let documented: BTreeSet<(i64, String)> = table_rows(&text, "OAuth errors")
        .iter()
        .map(|row| {
            let status = leading_number(&row[0]).unwrap_or_else(|| panic!("no HTTP status in {row:?}"));
            (status, row[1].trim_matches('`').to_string())
        })
        .collect();
    let declared: BTreeSet<(i64, String)> = OAUTH_CODES
        .iter()
        .map(|c| (i64::from(c.status), c.error.to_string()))
        .collect();
    assert_eq!(
        documented, declared,
        "docs/errors.md's OAuth error table differs from tengine_core::errors"
    );

    // MCP: `| Situation | HTTP | JSON-RPC error.code |`; a code may be answered in several situations.
    let situations: Vec<(i64, i64)> = table_rows(&text, "MCP errors")
        .iter()
        .filter_map(|row| Some((leading_number(&row[1])?, leading_number(&row[2])?)))
        .collect();
    assert!(
        situations.len() > 10,
        "the MCP error table was not read: {situations:?}"
    );
    for (status, code) in &situations {
        assert!(
            RPC_CODES.iter().any(|c| i64::from(c.code) == *code),
            "docs/errors.md answers {code} (HTTP {status}), which tengine_core::errors does not declare"
        );
    }
    for code in RPC_CODES {
        assert!(
            situations.contains(&(i64::from(code.status), i64::from(code.code))),
            "docs/errors.md has no situation answering {} ({}) with HTTP {}",
            code.code,
            code.name,
            code.status
        );
    }
}
