//! The outbound HTTP call: one pooled client, a per-request timeout, no redirects
//! (a redirect could leave the registered origin), and a capped response body.

use std::time::{Duration, Instant};

use reqwest::{
    Client,
    header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue},
};
use tengine_core::{
    domain::AuthStrategy,
    envelope::{Caller, ErrorClass, UpstreamResponse},
    request::RenderedRequest,
    signing::{self, SigningKey},
};
use uuid::Uuid;

pub fn client(connect_timeout: Duration, policy: tengine_core::addresses::Policy) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .dns_resolver(std::sync::Arc::new(tengine_core::addresses::PolicyResolver {
            policy: std::sync::Arc::new(policy),
        }))
        // A proxy from the environment would be the address checked by the policy,
        // not the API's: tool calls connect directly.
        .no_proxy()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("tengine/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// What one attempt produced.
pub struct AttemptResult {
    /// `Retry-After` of the response, if it sent one.
    pub retry_after: Option<Duration>,
    pub response: Option<UpstreamResponse>,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub elapsed: Duration,
}

pub struct Credentials<'a> {
    pub strategy: AuthStrategy,
    pub secret: Option<&'a str>,
    /// The previous HMAC secret during a rotation overlap: it signs too.
    pub previous: Option<&'a str>,
}

/// Adds identity, idempotency, auth and signature headers to a rendered request.
pub fn signed_headers(
    request: &RenderedRequest,
    caller: &Caller,
    run_id: Uuid,
    credentials: &Credentials<'_>,
    inject_member: bool,
    timestamp: i64,
    input: Option<&str>,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header name `{name}`: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("header `{name}`: {e}"))?;
        headers.append(name, value);
    }
    if request.body.is_some() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let mut set = |name: &str, value: &str| -> Result<(), String> {
        let value = HeaderValue::from_str(value).map_err(|e| format!("header `{name}`: {e}"))?;
        // from_bytes lower-cases, so names can be written in their documented casing.
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header `{name}`: {e}"))?;
        headers.insert(name, value);
        Ok(())
    };
    let keys = match (credentials.strategy, credentials.secret) {
        (AuthStrategy::None, _) => Vec::new(),
        (AuthStrategy::StaticBearer, Some(token)) => {
            set("authorization", &format!("Bearer {token}"))?;
            Vec::new()
        }
        (AuthStrategy::HmacSignature, Some(secret)) => std::iter::once(secret)
            .chain(credentials.previous)
            .map(SigningKey::parse)
            .collect::<Result<Vec<_>, _>>()?,
        (strategy, None) => return Err(format!("auth_strategy {} has no secret stored", strategy.as_str())),
    };
    let target = signing::request_target(&request.url);
    let signed = signing::Target {
        method: request.method.as_str(),
        target: &target,
        body: request.body.as_deref().unwrap_or_default(),
    };
    for (name, value) in signing::outbound_headers(caller, inject_member, run_id, timestamp, signed, &keys, input) {
        set(name, &value)?;
    }
    Ok(headers)
}

/// Progress an API reports while it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// Splits a streamed body (NDJSON lines, or SSE `data:` lines) into progress
/// reports and the rest, which is the result. Lines are kept as bytes: the
/// result is converted (text or base64) once, like any body.
#[derive(Default)]
struct StreamedBody {
    sse: bool,
    pending: Vec<u8>,
    result: Vec<u8>,
}

impl StreamedBody {
    fn feed(&mut self, chunk: &[u8], report: &mut dyn FnMut(Progress)) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line, report);
        }
    }

    fn line(&mut self, mut line: &[u8], report: &mut dyn FnMut(Progress)) {
        while let [rest @ .., b'\r' | b'\n'] = line {
            line = rest;
        }
        let payload = if self.sse {
            match line.strip_prefix(b"data:") {
                Some(data) => data.trim_ascii_start(),
                None => return, // event names, ids, comments, blank separators
            }
        } else {
            line
        };
        if payload.trim_ascii().is_empty() {
            return;
        }
        if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(payload)
            && let Some(progress) = obj.get("progress").and_then(serde_json::Value::as_f64)
            && obj
                .keys()
                .all(|k| matches!(k.as_str(), "progress" | "total" | "message"))
        {
            report(Progress {
                progress,
                total: obj.get("total").and_then(serde_json::Value::as_f64),
                message: obj
                    .get("message")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string),
            });
            return;
        }
        if !self.result.is_empty() {
            self.result.push(b'\n');
        }
        self.result.extend_from_slice(payload);
    }

    fn finish(mut self, report: &mut dyn FnMut(Progress)) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        self.line(&rest, report);
        self.result
    }
}

/// Sends the request and reads the response. Only the body's first
/// `max_response_bytes` are kept (and, for a streamed body, read as lines); the
/// rest is read and counted, so `size` is the body's full size, unless the tool's
/// timeout ends the reading first (then it is what arrived until then).
pub async fn send(
    client: &Client,
    request: RenderedRequest,
    headers: HeaderMap,
    timeout: Duration,
    max_response_bytes: usize,
    report: &mut (dyn FnMut(Progress) + Send),
) -> AttemptResult {
    let started = Instant::now();
    let bytes_out = request.body.as_ref().map_or(0, |b| byte_count(b.len()));
    let method = reqwest::Method::from_bytes(request.method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut builder = client.request(method, request.url).headers(headers).timeout(timeout);
    if let Some(body) = request.body {
        builder = builder.body(body);
    }
    let failed = |class: ErrorClass, error: String, bytes_in: u64| AttemptResult {
        retry_after: None,
        response: None,
        error_class: Some(class),
        error: Some(error),
        bytes_out,
        bytes_in,
        elapsed: started.elapsed(),
    };
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) => {
            let (class, text) = classify(&e, timeout);
            return failed(class, text, 0);
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(response, content_type.as_deref(), max_response_bytes, report).await {
        Ok(body) => body,
        Err((err, size)) => {
            let (class, text) = classify(&err, timeout);
            return failed(class, format!("reading the response: {text}"), size);
        }
    };
    let size = body.size;
    let (error_class, error) = status_failure(status).unzip();
    AttemptResult {
        retry_after,
        response: Some(UpstreamResponse::from_bytes(
            status,
            content_type,
            body.kept,
            size,
            body.truncated,
        )),
        error_class,
        error,
        bytes_out,
        bytes_in: size,
        elapsed: started.elapsed(),
    }
}

/// A response body as kept: its first `max_response_bytes` (streamed bodies without
/// their progress lines), its full size in bytes, and whether it was cut.
struct ReadBody {
    kept: Vec<u8>,
    size: u64,
    truncated: bool,
}

/// Reads the body to its end, keeping the first `max_response_bytes` and counting
/// the rest. On a read error, the error and the bytes read so far.
async fn read_body(
    mut response: reqwest::Response,
    content_type: Option<&str>,
    max_response_bytes: usize,
    report: &mut (dyn FnMut(Progress) + Send),
) -> Result<ReadBody, (reqwest::Error, u64)> {
    let essence = content_type
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut streamed = matches!(
        essence.as_str(),
        "application/x-ndjson" | "application/jsonl" | "text/event-stream"
    )
    .then(|| StreamedBody {
        sse: essence == "text/event-stream",
        ..Default::default()
    });
    let mut kept = Vec::new();
    // Bytes read (`taken` of them kept); u64: a body may outgrow usize on 32 bits.
    let (mut size, mut taken) = (0u64, 0usize);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                size = size.saturating_add(byte_count(chunk.len()));
                let room = max_response_bytes.saturating_sub(taken);
                let part = chunk.get(..room.min(chunk.len())).unwrap_or_default();
                taken = taken.saturating_add(part.len());
                match streamed.as_mut() {
                    Some(streamed) => streamed.feed(part, report),
                    None => kept.extend_from_slice(part),
                }
            }
            Ok(None) => break,
            // The part kept is complete: the rest, which only counted, stopped coming.
            Err(e) if byte_count(taken) < size => {
                tracing::info!(error = %e, read = size, "the rest of a truncated body did not arrive; its size is what was read");
                break;
            }
            Err(e) => return Err((e, size)),
        }
    }
    let kept = match streamed {
        Some(streamed) => streamed.finish(report),
        None => kept,
    };
    Ok(ReadBody {
        kept,
        size,
        truncated: byte_count(taken) < size,
    })
}

/// Why a status is a failure (3xx and everything not 2xx), if it is one.
fn status_failure(status: u16) -> Option<(ErrorClass, String)> {
    match status {
        200..=299 => None,
        300..=399 => Some((
            ErrorClass::UpstreamStatus,
            format!("the API answered with a redirect (HTTP {status}); redirects are not followed"),
        )),
        _ => Some((ErrorClass::UpstreamStatus, format!("the API answered HTTP {status}"))),
    }
}

/// A length as a byte count (saturating where `usize` is wider than 64 bits).
fn byte_count(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

fn classify(err: &reqwest::Error, timeout: Duration) -> (ErrorClass, String) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<tengine_core::addresses::Refused>() {
            return (ErrorClass::Forbidden, refused.to_string());
        }
        source = current.source();
    }
    if err.is_timeout() {
        (
            ErrorClass::Timeout,
            format!("the API did not answer within {} ms (timeout_ms)", timeout.as_millis()),
        )
    } else if err.is_connect() {
        (
            ErrorClass::Connect,
            format!("could not connect to the API: {}", root_cause(err)),
        )
    } else {
        (
            ErrorClass::Transport,
            format!("the request failed: {}", root_cause(err)),
        )
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// `Retry-After` as seconds or an HTTP date, as the API sent it (it may be
/// absurdly long: [`next_wait`] caps it).
fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    // A date in the past asks for no wait; `to_std` refuses negative deltas.
    Some(at.signed_duration_since(now).to_std().unwrap_or(Duration::ZERO))
}

/// The wait before the next attempt: the backoff, lengthened (never shortened) by
/// the API's `Retry-After`. `None` when there is no next attempt: the backoff
/// is spent, or the wait would not end before the run's deadline (`remaining`).
/// No arithmetic: an absurd `Retry-After` is just longer than `remaining`.
pub fn next_wait(backoff: Option<Duration>, retry_after: Option<Duration>, remaining: Duration) -> Option<Duration> {
    let wait = backoff?.max(retry_after.unwrap_or_default());
    (wait < remaining).then_some(wait)
}

/// Whether a failed attempt may be retried without risking a second write.
pub fn retryable(result: &AttemptResult, idempotent: bool) -> bool {
    match result.error_class {
        Some(ErrorClass::Connect) => true,
        Some(ErrorClass::UpstreamStatus) => {
            matches!(
                result.response.as_ref().map(|r| r.http_status),
                Some(429 | 502 | 503 | 504)
            )
        }
        Some(ErrorClass::Timeout) => idempotent,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_bodies_split_progress_from_result() {
        let mut seen = Vec::new();
        let mut ndjson = StreamedBody::default();
        ndjson.feed(b"{\"progress\": 1, \"total\": 2}\n{\"progr", &mut |p| seen.push(p));
        ndjson.feed(
            b"ess\": 2, \"total\": 2, \"message\": \"x\"}\n{\"answer\": 42}",
            &mut |p| seen.push(p),
        );
        assert_eq!(ndjson.finish(&mut |p| seen.push(p)), b"{\"answer\": 42}");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].message.as_deref(), Some("x"));

        let mut sse = StreamedBody {
            sse: true,
            ..Default::default()
        };
        let mut count = 0;
        sse.feed(b"event: p\ndata: {\"progress\": 0.5}\n\ndata: done\n\n", &mut |_| {
            count += 1
        });
        assert_eq!(sse.finish(&mut |_| count += 1), b"done");
        assert_eq!(count, 1);
    }

    #[test]
    fn retry_after_forms() {
        let now = chrono::Utc::now();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(Duration::from_secs(u64::MAX))
        );
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).expect("a date");
        assert!(far > Duration::from_secs(7_900 * 365 * 86_400));
    }

    #[test]
    fn retry_after_is_capped_by_the_deadline() {
        let (ms, remaining) = (Duration::from_millis, Duration::from_secs(30));
        assert_eq!(next_wait(Some(ms(200)), None, remaining), Some(ms(200)));
        // Retry-After lengthens the backoff, never shortens it.
        assert_eq!(next_wait(Some(ms(200)), Some(ms(1000)), remaining), Some(ms(1000)));
        assert_eq!(next_wait(Some(ms(2000)), Some(ms(1000)), remaining), Some(ms(2000)));
        // Past the deadline, or spent: no next attempt, and nothing overflows.
        let endless = Some(Duration::from_secs(u64::MAX));
        assert_eq!(next_wait(Some(ms(200)), endless, remaining), None);
        assert_eq!(next_wait(Some(Duration::MAX), None, remaining), None);
        assert_eq!(next_wait(Some(ms(200)), None, Duration::ZERO), None);
        assert_eq!(next_wait(None, Some(ms(1)), remaining), None);
    }

    #[test]
    fn streamed_results_stay_bytes() {
        let mut body = StreamedBody::default();
        body.feed(b"{\"progress\": 1}\n\xff\xfe\n", &mut |_| {});
        assert_eq!(body.finish(&mut |_| {}), b"\xff\xfe");
    }
}
