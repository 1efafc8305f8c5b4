//! Last of the test binaries (zz_): it restarts the cluster the others share.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use queue_client::{push, Job, JobError, PushOpts};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[tokio::test]
async fn a_server_restart_the_worker_reconnects_and_the_job_across_it_completes_once() {
    let dir = std::env::var("QUEUE_TEST_CLUSTER_DIR").expect("QUEUE_TEST_CLUSTER_DIR (run-tests.sh sets it)");
    let script = std::env::var("QUEUE_CLUSTER_SCRIPT").expect("QUEUE_CLUSTER_SCRIPT (run-tests.sh sets it)");
    let db = admin().await;
    // A build installed since the cluster started would be loaded by the restart (another
    // engineer may be installing one): then this would test that build's upgrade, not this client.
    let fresh: bool = db
        .query_one(
            "SELECT (pg_stat_file(setting || '/queue.so')).modification < pg_postmaster_start_time() \
               FROM pg_config() WHERE name = 'PKGLIBDIR'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if !fresh {
        println!("skipped: queue.so was reinstalled after the cluster started; a restart would load a different build");
        return;
    }
    let started_before: std::time::SystemTime =
        db.query_one("SELECT pg_postmaster_start_time()", &[]).await.unwrap().get(0);
    let q = unique_queue("restart");
    let gate = Arc::new(Notify::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let (g2, r2) = (gate.clone(), runs.clone());
    let worker = builder()
        .name(format!("restart-{q}"))
        .poll_interval(Duration::from_secs(60))
        .handler(&q, move |_job: Job| {
            let (gate, runs) = (g2.clone(), r2.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Ok::<Value, JobError>(json!("across a restart"))
            }
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let id = push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap();
    wait_for_status(&db, id, &["processing"], Duration::from_secs(5)).await;
    drop(db);
    let t0 = std::time::Instant::now();
    let st = tokio::process::Command::new(&script).args(["restart", &dir]).status().await.unwrap();
    assert!(st.success(), "cluster.sh restart failed");
    wait_for("LISTEN to be back", Duration::from_secs(60), || async { (worker.listen_connects() >= 2).then_some(()) })
        .await;
    println!("restart: LISTEN back {} ms after the restart began", t0.elapsed().as_millis());
    gate.notify_one();
    let db = admin().await;
    let started_after: std::time::SystemTime =
        db.query_one("SELECT pg_postmaster_start_time()", &[]).await.unwrap().get(0);
    assert!(started_after > started_before, "the server did not restart");
    let j = wait_for_status(&db, id, &["completed"], Duration::from_secs(20)).await;
    assert_eq!(j["attempts"], json!(1));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let g3 = gate.clone();
    let next = push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap();
    wait_for_status(&db, next, &["processing"], Duration::from_secs(5)).await;
    g3.notify_one();
    wait_for_status(&db, next, &["completed"], Duration::from_secs(5)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    worker.shutdown().await;
}
