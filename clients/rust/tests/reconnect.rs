//! The worker's connections killed under it: it reconnects and goes on.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use queue_client::{push, Job, JobError, PushOpts};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[tokio::test]
async fn pg_terminate_backend_on_the_worker_it_reconnects_acks_and_wakes_on_notify_again() {
    let db = admin().await;
    let q = unique_queue("kill");
    let name = format!("kill-{q}");
    let gate = Arc::new(Notify::new());
    let g2 = gate.clone();
    let rec = Recorder::default();
    let worker = builder()
        .name(&name)
        .poll_interval(Duration::from_secs(60)) // only LISTEN can wake it within the test's bounds
        .handler(&q, move |_job: Job| {
            let gate = g2.clone();
            async move {
                gate.notified().await;
                Ok::<Value, JobError>(json!("survived"))
            }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let first = push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap();
    wait_for_status(&db, first, &["processing"], Duration::from_secs(5)).await;

    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE $1 || '%'",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    println!("terminated {killed} backends of the worker");
    assert!(killed >= 2, "at least its LISTEN connection and one other ({killed})");
    wait_for("LISTEN to be back", Duration::from_secs(15), || async { (worker.listen_connects() >= 2).then_some(()) })
        .await;
    assert!(rec.count(|e| matches!(e, Event::Listening { reconnect: true })) >= 1);
    // The handler finishes after its connections died: the ack goes through a new one.
    gate.notify_one();
    let j1 = wait_for_status(&db, first, &["completed"], Duration::from_secs(10)).await;
    assert_eq!(j1["attempts"], json!(1));
    assert_eq!(j1["result"], json!("survived"));
    assert!(rec.count(|e| matches!(e, Event::Error { .. })) >= 1, "the lost connection was reported");

    let g3 = gate.clone();
    let t0 = Instant::now();
    let second = push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap();
    wait_for_status(&db, second, &["processing"], Duration::from_secs(3)).await; // far sooner than the 60 s poll
    println!("after the reconnect a pushed job started in {} ms", t0.elapsed().as_millis());
    g3.notify_one();
    wait_for_status(&db, second, &["completed"], Duration::from_secs(5)).await;
    worker.shutdown().await;
}
