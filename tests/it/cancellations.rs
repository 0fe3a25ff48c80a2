//! The worker's copy of cancelled runs (`tengine_worker::cancellations`): it
//! answers from memory only while its markers prove it current, and then right.

use std::time::Duration;

use chrono::Utc;
use tengine_core::Topology;
use tengine_tests::spawn_app;
use tengine_worker::cancellations::{BUSY_FOR, Cancellations, WINDOW};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn the_copy_of_cancelled_runs_answers_only_while_its_markers_prove_it_current() {
    let app = spawn_app().await;
    let js = async_nats::jetstream::new(async_nats::connect(&app.config.nats_url).await.expect("nats"));
    let bucket = Topology::new(app.config.nats_prefix.clone())
        .ensure_cancelled_bucket(&js, &app.config.streams)
        .await
        .expect("bucket");
    let shutdown = CancellationToken::new();
    let copy = Cancellations::start(bucket.clone(), shutdown.clone());
    let started = Utc::now();

    // Idle and new: nothing proven yet, so the bucket answers.
    let early = Uuid::now_v7();
    assert_eq!(copy.from_memory(early, Utc::now()), None);
    assert!(!copy.is_cancelled(early, Utc::now()).await);

    // Busy (questions keep coming): the markers come back, and once the clock-skew
    // margin after the watch started has passed, the copy answers for new runs.
    let mut proven = false;
    for _ in 0..40 {
        assert!(!copy.is_cancelled(Uuid::now_v7(), Utc::now()).await);
        if copy.from_memory(Uuid::now_v7(), Utc::now()) == Some(false) {
            proven = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proven, "a busy worker's copy became current within 4 s");

    // A mark stored without any broadcast (one lost) reaches the copy through the
    // watch within the window.
    let accepted = Utc::now();
    let cancelled = Uuid::now_v7();
    bucket.put(cancelled.to_string(), "1".into()).await.expect("mark");
    tokio::time::sleep(WINDOW + Duration::from_millis(20)).await;
    assert_eq!(copy.from_memory(cancelled, accepted), Some(true));
    assert!(copy.is_cancelled(cancelled, accepted).await);

    // A run accepted before the watch started may have been marked before it: the
    // copy does not answer for it, the bucket does.
    let old = Uuid::now_v7();
    bucket.put(old.to_string(), "1".into()).await.expect("mark");
    let before_watch = started - chrono::Duration::seconds(5);
    assert_eq!(copy.from_memory(Uuid::now_v7(), before_watch), None);
    assert!(copy.is_cancelled(old, before_watch).await);

    // Idle: no markers are written, so the copy stops answering (and the bucket does).
    tokio::time::sleep(BUSY_FOR + WINDOW + Duration::from_millis(100)).await;
    assert_eq!(
        copy.from_memory(Uuid::now_v7(), Utc::now()),
        None,
        "an idle copy is not trusted"
    );
    // What it heard of, it still knows.
    assert_eq!(copy.from_memory(cancelled, accepted), Some(true));
    shutdown.cancel();
}
