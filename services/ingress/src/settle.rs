//! A write that may narrow access (revoke a key or a member's sessions, delete an
//! integration, disable a tool, lower a quota, revoke an OAuth grant …) answers only
//! once no instance can still admit a call under the old rules
//! (`tengine_control::freshness`): every non-GET request of the admin API, the
//! console and the OAuth endpoints waits out the freshness window after its work.
//! MCP requests never wait. The few writes that cannot narrow access and sit on a
//! user's path are exempt, by their route.

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::Response,
};

/// Routes (by their pattern's end) that only add or read: minting a member
/// session, previewing a tool's request, signing in to the console, registering
/// an OAuth client.
const EXEMPT: [&str; 4] = ["/member-sessions", "/render", "/sign-in", "/register"];

pub async fn settle_writes(request: Request, next: Next) -> Response {
    let narrows = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|path| EXEMPT.iter().any(|end| path.as_str().ends_with(end)));
    let response = next.run(request).await;
    if narrows {
        tengine_control::freshness::settle().await;
    }
    response
}
