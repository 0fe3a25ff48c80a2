//! What fits in one NATS message. The server refuses a message larger than its
//! `max_payload` (1 MiB by default, headers included): a command that does not fit
//! can never be queued, and an outcome that does not fit can never be stored (its
//! command would be redelivered and the API called again). So every message a
//! run produces has a size bounded by construction:
//!
//! * a `Finished` event holds at most `worker.max_response_bytes` of the response
//!   body (base64 for a binary body: 4/3 of it), the stored bodies within what is
//!   left ([`bodies_budget`]), and fields of bounded size in [`OUTCOME_RESERVE_BYTES`]
//!   (ids, the caller's member claims, the tool name, an error of at most
//!   [`ERROR_MAX_BYTES`], a content type of at most [`CONTENT_TYPE_MAX_BYTES`],
//!   the headers);
//! * services refuse to start when `worker.max_response_bytes` cannot fit
//!   ([`check_response_limit`]), and the ingress refuses a call whose command
//!   would not fit (`ExecuteCommand::check_fits` in the envelope module).

/// Room in a `Finished` event for everything but the response body and the
/// stored bodies: the envelope, ids and timestamps, the caller (a member's id,
/// email and up to 64 roles of 256 bytes: about 17 KiB), the tool name (128),
/// the error ([`ERROR_MAX_BYTES`]), the content type, field names and the NATS
/// headers. Comfortably above their sum.
pub const OUTCOME_RESERVE_BYTES: usize = 64 * 1024;
/// Room for the NATS headers of a command (message id, content type, trace context).
pub const COMMAND_HEADERS_BYTES: usize = 4 * 1024;
/// Longest free-text error carried in an event.
pub const ERROR_MAX_BYTES: usize = 4 * 1024;
/// Longest content type carried in an event (a longer one is cut).
pub const CONTENT_TYPE_MAX_BYTES: usize = 256;
/// Marks text that [`bounded`] cut.
const CUT_MARK: &str = "…[cut]";

/// `text` if it has at most `max` bytes; else its beginning, cut at a character
/// boundary and marked, in at most `max` bytes.
pub fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mark = if max > CUT_MARK.len() { CUT_MARK } else { "" };
    let mut end = max.saturating_sub(mark.len());
    while !text.is_char_boundary(end) {
        // 0 is always a boundary, so this stops.
        end = end.saturating_sub(1);
    }
    let mut cut = text;
    cut.truncate(end);
    cut.push_str(mark);
    cut
}

/// A free-text error bounded for an event (the one helper every event uses).
pub fn bounded_error(text: String) -> String {
    bounded(text, ERROR_MAX_BYTES)
}

/// Length of `n` bytes in base64 with padding.
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3).saturating_mul(4)
}

/// The largest `worker.max_response_bytes` whose outcome fits `max_payload`.
pub fn max_response_bytes_for(max_payload: usize) -> usize {
    (max_payload.saturating_sub(OUTCOME_RESERVE_BYTES) / 4).saturating_mul(3)
}

/// Whether an outcome carrying `max_response_bytes` of a binary body fits the
/// server's `max_payload`; the message says what to change if not.
pub fn check_response_limit(max_response_bytes: usize, max_payload: usize) -> Result<(), String> {
    if base64_len(max_response_bytes).saturating_add(OUTCOME_RESERVE_BYTES) <= max_payload {
        return Ok(());
    }
    Err(format!(
        "worker.max_response_bytes ({max_response_bytes}) does not fit the NATS server's max_payload ({max_payload} \
         bytes): a binary body of that size is carried as {} bytes of base64, and an outcome needs {} bytes more. \
         Set worker.max_response_bytes (TENGINE_WORKER__MAX_RESPONSE_BYTES) to at most {}, or raise max_payload in \
         the NATS server's configuration",
        base64_len(max_response_bytes),
        OUTCOME_RESERVE_BYTES,
        max_response_bytes_for(max_payload)
    ))
}

/// Bytes left for stored bodies (`store_bodies`) in a `Finished` event whose
/// response body takes `response_body_bytes`.
pub fn bodies_budget(max_payload: usize, response_body_bytes: usize) -> usize {
    max_payload
        .saturating_sub(OUTCOME_RESERVE_BYTES)
        .saturating_sub(response_body_bytes)
}

/// The connected server's `max_payload`.
pub fn server_max_payload(nats: &async_nats::Client) -> usize {
    nats.server_info().max_payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{
        BodyEncoding, Caller, ErrorClass, EventEnvelope, Member, RunEvent, RunOutcome, RunStatus, UpstreamResponse,
    };
    use chrono::Utc;
    use uuid::Uuid;

    const ONE_MIB: usize = 1 << 20;

    #[test]
    fn bounded_text_cuts_at_a_character_boundary() {
        assert_eq!(bounded("short".into(), 10), "short");
        let cut = bounded("é".repeat(10_000), ERROR_MAX_BYTES);
        assert!(cut.len() <= ERROR_MAX_BYTES, "{}", cut.len());
        assert!(cut.ends_with(CUT_MARK));
        assert!(cut.starts_with("éé"));
        assert_eq!(bounded("abcdef".into(), 3), "abc");
    }

    #[test]
    fn the_default_limits_fit_a_one_mib_server() {
        let config = crate::Config::with_overrides(&[]).expect("defaults");
        assert!(check_response_limit(config.worker.max_response_bytes, ONE_MIB).is_ok());
        let largest = max_response_bytes_for(ONE_MIB);
        assert!(check_response_limit(largest, ONE_MIB).is_ok());
        let err = check_response_limit(largest + 3, ONE_MIB).unwrap_err();
        assert!(err.contains(&format!("at most {largest}")), "{err}");
        assert!(check_response_limit(ONE_MIB, ONE_MIB).is_err());
        assert!(check_response_limit(usize::MAX, ONE_MIB).is_err(), "no overflow");
    }

    /// The largest outcome a worker can produce (a member with every claim at its
    /// limit, the longest error and content type, a response body at
    /// `max_response_bytes`, stored bodies as large as the project allows).
    fn largest_outcome(response: UpstreamResponse) -> RunOutcome {
        let claim = "m".repeat(256);
        let budget = bodies_budget(ONE_MIB, response.body.len());
        let policy = crate::bodies::BodyPolicy::new(i32::MAX, &[]);
        let request = "r".repeat(ONE_MIB);
        let bodies = policy.capture(Some(request.as_bytes()), Some(&response), budget);
        let stored: usize = [&bodies.request, &bodies.response]
            .iter()
            .map(|b| b.as_ref().map_or(0, String::len))
            .sum();
        assert!(stored <= budget, "{stored} > {budget}");
        RunOutcome {
            run_id: Uuid::now_v7(),
            caller: Caller {
                project_id: Uuid::now_v7(),
                integration_id: Uuid::now_v7(),
                api_key_id: Uuid::now_v7(),
                member: Some(Member {
                    id: claim.clone(),
                    email: Some(claim.clone()),
                    roles: vec![claim; 64],
                    session_issued_at: Utc::now(),
                }),
            },
            tool_name: "t".repeat(128),
            status: RunStatus::Succeeded,
            error_class: Some(ErrorClass::UpstreamStatus),
            error: Some(bounded_error("e".repeat(ONE_MIB))),
            response: Some(response),
            attempts: u32::MAX,
            accepted_at: Utc::now(),
            finished_at: Utc::now(),
            latency_ms: u64::MAX,
            bodies: Some(bodies),
            keep_result_until: Some(Utc::now()),
            last_attempt: None,
            origin: None,
        }
    }

    #[test]
    fn the_largest_outcomes_fit_max_payload() {
        let max_response_bytes = max_response_bytes_for(ONE_MIB);
        let content_type = Some("c".repeat(CONTENT_TYPE_MAX_BYTES));
        let binary = UpstreamResponse::from_bytes(
            200,
            content_type.clone(),
            vec![0xff; max_response_bytes],
            u64::MAX,
            true,
        );
        assert_eq!(binary.encoding, BodyEncoding::Base64);
        let text = UpstreamResponse::from_bytes(200, content_type, vec![b'x'; max_response_bytes / 2], u64::MAX, true);
        for response in [binary, text] {
            let encoded = EventEnvelope::new(Uuid::now_v7(), RunEvent::Finished(largest_outcome(response)))
                .encode()
                .expect("encode")
                .len();
            // NATS headers of an event (message id, content type) take well under 1 KiB.
            assert!(encoded + 1024 <= ONE_MIB, "{encoded} bytes");
        }
    }
}
