//! Pooler mode: no LISTEN, no prepared statements, claims that wait in the server.
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use queue_client::{push, Job, JobError, PushOpts};
use serde_json::Value;

#[tokio::test]
async fn pooler_mode_opens_no_listen_connection_and_prepares_no_statement() {
    let db = admin().await;
    let q = unique_queue("pooler");
    let name = format!("pooler-{q}");
    let rec = Recorder::default();
    // Log every statement of the worker's sessions, to see which are prepared.
    let mut cfg = config();
    cfg.options("-c log_min_duration_statement=0");
    let worker = queue_client::Worker::builder(cfg)
        .name(&name)
        .pooler(true)
        .poll_interval(Duration::from_millis(200))
        .handler(&q, |job: Job| async move { Ok::<Value, JobError>(job.payload().clone()) })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(push(&db, &q, &serde_json::json!({ "n": n }), &PushOpts::new()).await.unwrap());
    }
    for (n, id) in ids.iter().enumerate() {
        let j = wait_for_status(&db, *id, &["completed"], Duration::from_secs(10)).await;
        assert_eq!(j["result"], serde_json::json!({ "n": n }));
    }
    let conns = db
        .query(
            "SELECT application_name, backend_type FROM pg_stat_activity WHERE application_name LIKE $1 || '%'",
            &[&name],
        )
        .await
        .unwrap();
    assert!(!conns.is_empty(), "the worker has its connections");
    for c in &conns {
        let app: String = c.get(0);
        assert!(!app.ends_with(" listen"), "a LISTEN connection in pooler mode: {app}");
    }
    assert_eq!(worker.listen_connects(), 0);
    let pids: Vec<i32> = conns_pids(&db, &name).await;
    let listening: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 || '%' AND query ILIKE 'LISTEN%'",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 0);
    // Every statement of the worker ran as the unnamed statement (query_typed), none
    // prepared by name (tokio-postgres names them s0, s1, ...): the server log says so.
    let log_path = std::path::Path::new(&std::env::var("QUEUE_TEST_CLUSTER_DIR").expect("run-tests.sh sets it"))
        .join("server.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let mine: Vec<&str> =
        log.lines().filter(|l| pids.iter().any(|p| l.contains(&format!("[{p}]"))) && l.contains("execute ")).collect();
    assert!(mine.iter().any(|l| l.contains("queue_pop")), "no logged claim of the worker in {}", log_path.display());
    let named: Vec<&&str> = mine.iter().filter(|l| !l.contains("execute <unnamed>")).collect();
    assert!(named.is_empty(), "prepared statements in pooler mode: {named:?}");
    println!("pooler mode: {} logged statements of the worker, all unnamed", mine.len());
    assert_eq!(rec.count(|e| matches!(e, Event::Error { .. })), 0, "{:?}", rec.events());
    worker.shutdown().await;
}

#[tokio::test]
async fn pooler_mode_waits_in_the_server_when_the_extension_can() {
    let db = admin().await;
    let server_wait = has_server_wait(&db).await;
    let q = unique_queue("poolwait");
    let started: Arc<Mutex<Option<Instant>>> = Arc::default();
    let s2 = started.clone();
    let worker = builder()
        .pooler(true)
        .poll_interval(Duration::from_secs(30)) // a poll cannot explain a quick start
        .handler(&q, move |_job: Job| {
            *s2.lock().unwrap() = Some(Instant::now());
            async { Ok::<Value, JobError>(Value::Null) }
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    if !server_wait {
        println!("skipped: queue_pop(text,text,integer,interval) is not installed yet; pooler mode polls");
        assert!(!worker.uses_server_wait());
        worker.shutdown_with_grace(Duration::ZERO).await;
        return;
    }
    assert!(worker.uses_server_wait());
    tokio::time::sleep(Duration::from_millis(500)).await; // the worker now waits in queue_pop
    let id = push(&db, &q, &serde_json::json!({}), &PushOpts::new()).await.unwrap();
    let t0 = Instant::now();
    wait_for_status(&db, id, &["completed"], Duration::from_secs(4)).await;
    let at = started.lock().unwrap().expect("the handler ran");
    let latency = at.saturating_duration_since(t0);
    println!(
        "pooler mode, server-side wait: push committed -> handler started in {:.2} ms",
        latency.as_secs_f64() * 1000.0
    );
    assert!(latency < Duration::from_secs(2), "the waiting claim did not wake ({latency:?})");
    // A stop cancels the waiting claim at once instead of sitting out its 5 s.
    let t1 = Instant::now();
    worker.shutdown_with_grace(Duration::from_secs(1)).await;
    assert!(t1.elapsed() < Duration::from_secs(3), "stopping took {:?}", t1.elapsed());
    // The cancelled claim claimed nothing: a new job stays pending.
    let later = push(&db, &q, &serde_json::json!({}), &PushOpts::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(job_of(&db, later).await.unwrap()["status"], serde_json::json!("pending"));
}

async fn conns_pids(db: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    db.query("SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 || '%'", &[&name])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
