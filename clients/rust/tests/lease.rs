//! A handler that runs longer than its job's timeout keeps its lease.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use queue_client::{push, Job, JobError, PushOpts};
use serde_json::{json, Value};

#[tokio::test]
async fn a_handler_longer_than_its_timeout_keeps_its_lease_and_completes_in_attempt_1() {
    let db = admin().await;
    let q = unique_queue("lease");
    let runs: Arc<Mutex<Vec<(String, i32)>>> = Arc::default();
    let make = |name: String| {
        let runs = runs.clone();
        builder()
            .name(name)
            .poll_interval(Duration::from_millis(200))
            .handler(&q, move |job: Job| {
                let runs = runs.clone();
                async move {
                    runs.lock().unwrap().push((job.worker().to_owned(), job.attempt()));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok::<Value, JobError>(json!("slow but done"))
                }
            })
            .build()
            .unwrap()
    };
    let a = make(format!("lease-a-{q}")).start().await.unwrap();
    let id = push(
        &db,
        &q,
        &json!({}),
        &PushOpts::new().timeout(Duration::from_secs(2)).backoff_base(Duration::ZERO).max_attempts(3),
    )
    .await
    .unwrap();
    // A second, idle worker that would take the job over the moment its lease lapsed
    // (queue.tick = 100 ms expires leases promptly, backoff 0 retries at once).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = make(format!("lease-b-{q}")).start().await.unwrap();
    let mut lease_ends = std::collections::BTreeSet::new();
    let j = loop {
        let j = job_of(&db, id).await.unwrap();
        if let Some(l) = j["lease_until"].as_str() {
            lease_ends.insert(l.to_owned());
        }
        if ["completed", "failed", "expired"].contains(&j["status"].as_str().unwrap()) {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(j["status"], json!("completed"), "{j}");
    assert_eq!(j["attempts"], json!(1));
    assert_eq!(j["result"], json!("slow but done"));
    assert_eq!(*runs.lock().unwrap(), vec![(a.name().to_owned(), 1)], "the job ran once, in attempt 1");
    assert!(
        lease_ends.len() >= 3,
        "the lease was extended while running (saw {} distinct lease ends)",
        lease_ends.len()
    );
    println!("a 5 s handler on a 2 s lease: {} distinct lease ends seen, completed in attempt 1", lease_ends.len());
    a.shutdown().await;
    b.shutdown().await;
}
