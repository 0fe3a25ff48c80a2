//! Client configuration snippets for an integration on the Credentials screen:
//! Claude Desktop, Cursor, the Anthropic Messages API's MCP connector and the
//! Python SDK. They come from the admin API's `client_config` (one place for
//! the URL, the server's name and the key placeholder); the key is always the
//! placeholder here, never a secret. Plain `<pre>` blocks, selectable without
//! JavaScript.

use maud::{Markup, html};
use serde_json::{Value, json};
use tengine_control::integrations::Integration;

use crate::{
    AppState,
    admin::integrations::{KEY_PLACEHOLDER, client_config, mcp_url, server_name},
};

/// The snippets of one integration, each under a heading.
pub fn render(st: &AppState, integration: &Integration) -> Markup {
    let config = client_config(st, integration, None);
    let url = mcp_url(st);
    let name = server_name(integration);
    // Claude Desktop starts local processes: a remote server with a header goes
    // through the mcp-remote bridge (docs/clients.md explains the `env` detour).
    let desktop = json!({"mcpServers": {name.clone(): {
        "command": "npx",
        "args": ["mcp-remote", url, "--header", "Authorization:${AUTH_HEADER}"],
        "env": {"AUTH_HEADER": format!("Bearer {KEY_PLACEHOLDER}")},
    }}});
    let messages = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "List the tools you can use."}],
        "mcp_servers": config.anthropic_mcp_servers,
    });
    let id = integration.id;
    html! {
        section aria-labelledby=(format!("snippets-{id}")) {
            h3 id=(format!("snippets-{id}")) { "Connect a client to " (integration.name) }
            p { "Replace " code { (KEY_PLACEHOLDER) } " with one of this integration's API keys." }
            (snippet(&format!("desktop-{id}"), "Claude Desktop (claude_desktop_config.json)", &pretty(&desktop)))
            (snippet(&format!("cursor-{id}"), "Cursor (.cursor/mcp.json)", &pretty(&config.mcp_json)))
            (snippet(&format!("messages-{id}"),
                "Anthropic Messages API, MCP connector (header anthropic-beta: mcp-client-2025-04-04)", &pretty(&messages)))
            (snippet(&format!("python-{id}"), "Python SDK (mcp)", &config.python))
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A titled, focusable code block (keyboard users can scroll it).
fn snippet(id: &str, title: &str, text: &str) -> Markup {
    html! {
        h4 id=(id) { (title) }
        pre.snippet tabindex="0" aria-labelledby=(id) { code { (text) } }
    }
}
