//! Events the projector cannot apply, published by hand: a `Finished` whose error
//! violates a constraint the test adds (a cause an operator can fix), and bytes
//! that are no event at all.

use tengine_core::{
    Topology,
    envelope::{Caller, ErrorClass, RunEvent, RunOutcome, RunStatus},
};
use uuid::Uuid;

use crate::{TestApp, nats_url};

/// The constraint [`publish`] violates; drop it to make the event applicable.
pub const CONSTRAINT: &str = "it_no_poison";

/// The runs the poison belongs to.
pub struct Poison {
    /// Accepted (applied), then Finished with error "poison" (refused by [`CONSTRAINT`]).
    pub fixable: Uuid,
    /// An undecodable message on this run's subject.
    pub garbage: Uuid,
}

pub async fn publish(app: &TestApp) -> Poison {
    sqlx::query(&format!(
        "ALTER TABLE runs ADD CONSTRAINT {CONSTRAINT} CHECK (error IS DISTINCT FROM 'poison')"
    ))
    .execute(&app.pool)
    .await
    .expect("add the constraint");
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let topology = Topology::from_config(&app.config);
    let caller = Caller {
        project_id: app.project_id,
        integration_id: Uuid::now_v7(),
        api_key_id: app.api_key_id,
        member: None,
    };
    let fixable = Uuid::now_v7();
    let accepted_at = chrono::Utc::now();
    let events = [
        RunEvent::Accepted {
            run_id: fixable,
            caller: caller.clone(),
            tool_name: "hand_made".into(),
            accepted_at,
            origin: None,
        },
        RunEvent::Finished(RunOutcome {
            run_id: fixable,
            caller,
            tool_name: "hand_made".into(),
            status: RunStatus::Failed,
            error_class: Some(ErrorClass::Internal),
            error: Some("poison".into()),
            response: None,
            attempts: 1,
            accepted_at,
            finished_at: chrono::Utc::now(),
            latency_ms: 1,
            bodies: None,
            keep_result_until: None,
            last_attempt: None,
            origin: None,
        }),
    ];
    for event in events {
        tengine_core::bus::publish_event(&js, &topology, app.project_id, event)
            .await
            .expect("publish");
    }
    let garbage = Uuid::now_v7();
    js.publish(
        topology.event_subject(app.project_id, garbage, "accepted"),
        bytes::Bytes::from_static(b"\xc1 not msgpack"),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    Poison { fixable, garbage }
}

/// Waits until the projector has recorded `n` dead letters.
pub async fn wait_for_dead_letters(app: &TestApp, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM projector_dead_letters")
            .fetch_one(&app.pool)
            .await
            .expect("count dead letters");
        if count == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{count} dead letters, not {n}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Drops [`CONSTRAINT`]: the fixable event can be applied.
pub async fn fix(app: &TestApp) {
    sqlx::query(&format!("ALTER TABLE runs DROP CONSTRAINT {CONSTRAINT}"))
        .execute(&app.pool)
        .await
        .expect("drop the constraint");
}
