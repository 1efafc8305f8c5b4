//! `max_runtime`: a handler that runs too long is stopped (its future
//! dropped, the job's cancellation fired), its attempt failed with
//! `queue_fail` and retried like any failure, so a hung handler holds neither
//! its job nor its concurrency slot for ever. Without it nothing changes (the
//! lease test, tests/lease.rs, runs without one).
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use queue_client::{push, Error, HandlerOpts, Job, JobError, JobStatus, PushOpts};
use serde_json::{json, Value};

fn exceeded(limit: &str) -> String {
    format!("max_runtime exceeded: the handler ran longer than {limit}")
}

/// The errors `queue_job` lists for the job's failed attempts, as (attempt, error).
fn errors_of(j: &Value) -> Vec<(i64, String)> {
    j["errors"]
        .as_array()
        .map(|a| a.iter().map(|e| (e["attempt"].as_i64().unwrap_or(0), e["error"].as_str().unwrap_or("").to_owned())))
        .into_iter()
        .flatten()
        .collect()
}

fn failures_of(rec: &Recorder, id: i64) -> Vec<(Duration, Option<JobStatus>, String)> {
    rec.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Failed { id: i, duration, status, message, .. } if i == id => Some((duration, status, message)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_handler_past_its_max_runtime_is_failed_at_once_and_its_retry_completes() {
    let db = admin().await;
    let q = unique_queue("maxrt");
    let rec = Recorder::default();
    let worker = builder()
        .max_runtime(Duration::from_millis(500))
        .handler(&q, |job: Job| async move {
            if job.attempt() < 2 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok::<Value, JobError>(json!({ "attempt": job.attempt() }))
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    // A lease far longer than the test: only max_runtime can end attempt 1.
    let opts = PushOpts::new().timeout(Duration::from_secs(300)).backoff_base(Duration::from_secs(1)).max_attempts(3);
    let id = push(&db, &q, &json!({}), &opts).await.unwrap();
    let j = wait_for_status(&db, id, &["retrying"], Duration::from_secs(5)).await;
    assert_eq!(j["attempts"], json!(1), "{j}");
    assert_eq!(j["last_error"], json!(exceeded("500ms")), "{j}");
    let failed = failures_of(&rec, id);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (ran, status, message) = &failed[0];
    assert_eq!((status, message), (&Some(JobStatus::Retrying), &exceeded("500ms")));
    assert!(*ran >= Duration::from_millis(500) && *ran < Duration::from_millis(1500), "failed after {ran:?}");
    println!("a 30 s handler with max_runtime 500ms was failed after {ran:?}");

    let j = wait_for_status(&db, id, &["completed"], Duration::from_secs(10)).await;
    assert_eq!(j["attempts"], json!(2), "{j}");
    assert_eq!(j["result"], json!({ "attempt": 2 }), "{j}");
    assert_eq!(errors_of(&j), vec![(1, exceeded("500ms"))], "{j}");
    assert_eq!(rec.count(|e| matches!(e, Event::Finished { id: i, acked: true, .. } if *i == id)), 1);
    assert_eq!(rec.count(|e| matches!(e, Event::Error { .. })), 0, "{:?}", rec.events());
    worker.shutdown().await;
}

#[tokio::test]
async fn a_job_that_always_hangs_is_a_dead_letter_after_its_max_attempts() {
    let db = admin().await;
    let q = unique_queue("maxrtdead");
    let rec = Recorder::default();
    let worker = builder()
        .max_runtime(Duration::from_millis(300))
        .handler(&q, |_job: Job| async move {
            std::future::pending::<()>().await;
            Ok::<Value, JobError>(Value::Null)
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let t0 = Instant::now();
    let opts = PushOpts::new().max_attempts(2).backoff_base(Duration::ZERO);
    let id = push(&db, &q, &json!({}), &opts).await.unwrap();
    let j = wait_for_status(&db, id, &["failed"], Duration::from_secs(5)).await;
    println!("a handler that never returns, max_runtime 300ms, 2 attempts: dead after {:?}", t0.elapsed());
    assert_eq!(j["attempts"], json!(2), "{j}");
    assert_eq!(j["last_error"], json!(exceeded("300ms")), "{j}");
    assert_eq!(errors_of(&j), vec![(1, exceeded("300ms")), (2, exceeded("300ms"))], "{j}");
    let dead = db.query("SELECT id FROM queue_dead($1)", &[&q]).await.unwrap();
    assert_eq!(dead.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(), vec![id]);
    let statuses: Vec<Option<JobStatus>> = failures_of(&rec, id).into_iter().map(|f| f.1).collect();
    assert_eq!(statuses.last(), Some(&Some(JobStatus::Failed)), "{statuses:?}");
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    worker.shutdown().await;
}

/// Records, when the handler's future is dropped, whether the job's
/// cancellation had fired by then.
struct DropGuard {
    job: Job,
    dropped: Arc<Mutex<Option<(Instant, bool)>>>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        *self.dropped.lock().unwrap() = Some((Instant::now(), self.job.is_cancelled()));
    }
}

#[tokio::test]
async fn at_max_runtime_the_handlers_future_is_dropped_after_its_cancellation_and_the_slot_frees_at_once() {
    let db = admin().await;
    let q = unique_queue("maxrtdrop");
    let rec = Recorder::default();
    let dropped: Arc<Mutex<Option<(Instant, bool)>>> = Arc::default();
    let returned = Arc::new(AtomicBool::new(false));
    let (d2, r2) = (dropped.clone(), returned.clone());
    let worker = builder()
        .concurrency(1)
        .max_runtime(Duration::from_millis(400))
        .handler(&q, move |job: Job| {
            let (dropped, returned) = (d2.clone(), r2.clone());
            async move {
                if job.payload()["hang"] == json!(true) {
                    let _guard = DropGuard { job: job.clone(), dropped };
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    returned.store(true, Ordering::SeqCst);
                    return Ok(json!("too late"));
                }
                Ok::<Value, JobError>(json!("quick"))
            }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let once = PushOpts::new().max_attempts(1);
    let hung = push(&db, &q, &json!({ "hang": true }), &once).await.unwrap();
    wait_for_status(&db, hung, &["processing"], Duration::from_secs(5)).await;
    let next = push(&db, &q, &json!({}), &once).await.unwrap();
    let j = wait_for_status(&db, hung, &["failed"], Duration::from_secs(5)).await;
    assert_eq!(j["last_error"], json!(exceeded("400ms")), "{j}");
    let (at, cancelled) = dropped.lock().unwrap().expect("the handler's future was dropped");
    assert!(cancelled, "the job's cancellation had not fired when its future was dropped");
    assert!(!returned.load(Ordering::SeqCst), "the handler ran on after its max_runtime");
    // One slot: the next job runs once the dropped handler's job is failed, not after its 20 s.
    let j = wait_for_status(&db, next, &["completed"], Duration::from_secs(5)).await;
    assert_eq!(j["result"], json!("quick"), "{j}");
    let started = rec
        .find(|e| match e {
            Event::Started { id, at, .. } if *id == next => Some(*at),
            _ => None,
        })
        .unwrap();
    let after = started.saturating_duration_since(at);
    println!("the next job started {after:?} after the hung handler's future was dropped");
    assert!(started >= at && after < Duration::from_secs(2), "the next job started {after:?} after the drop");
    assert_eq!(failures_of(&rec, hung).len(), 1);
    assert_eq!(rec.count(|e| matches!(e, Event::Finished { id, .. } if *id == hung)), 0);
    worker.shutdown().await;
}

/// A handler that blocks its thread cannot be stopped: the worker stops
/// extending its lease at max_runtime (the job comes back when the lease runs
/// out), keeps its slot taken until it returns (concurrency 1: the next job
/// waits), and discards what it returns then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_blocks_its_thread_loses_its_lease_at_max_runtime_and_keeps_its_slot_until_it_returns() {
    let db = admin().await;
    let q = unique_queue("maxrtblock");
    let rec = Recorder::default();
    let returned: Arc<Mutex<Option<(Instant, SystemTime)>>> = Arc::default();
    let r2 = returned.clone();
    let worker = builder()
        .concurrency(1)
        .max_runtime(Duration::from_millis(300))
        .handler(&q, move |job: Job| {
            let returned = r2.clone();
            async move {
                if job.payload()["block"] == json!(true) && job.attempt() == 1 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    std::thread::sleep(Duration::from_secs(4));
                    *returned.lock().unwrap() = Some((Instant::now(), SystemTime::now()));
                    return Ok(json!("late"));
                }
                Ok::<Value, JobError>(json!({ "attempt": job.attempt() }))
            }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    // A 1 s lease, extended at half of it while a handler runs: without the
    // limit the lease would outlast the 4 s block.
    let opts = PushOpts::new().timeout(Duration::from_secs(1)).backoff_base(Duration::ZERO).max_attempts(3);
    let blocked = push(&db, &q, &json!({ "block": true }), &opts).await.unwrap();
    wait_for_status(&db, blocked, &["processing"], Duration::from_secs(5)).await;
    let next = push(&db, &q, &json!({}), &opts).await.unwrap();
    let j = wait_for_status(&db, blocked, &["completed"], Duration::from_secs(15)).await;
    assert_eq!(j["attempts"], json!(2), "{j}");
    assert_eq!(j["result"], json!({ "attempt": 2 }), "the late result was discarded: {j}");
    let (back, back_wall) = returned.lock().unwrap().expect("the blocking handler returned");
    // Attempt 1 ended by its lease, while the handler still blocked. Told
    // by the server's clock: this test's own tasks may wait for the blocked
    // thread as well.
    let errors = j["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 1, "{j}");
    assert_eq!(errors[0]["attempt"], json!(1), "{j}");
    assert!(errors[0]["error"].as_str().unwrap_or("").starts_with("lease expired"), "{j}");
    let back_epoch = back_wall.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let lapsed_first: bool = db
        .query_one("SELECT ($1::text)::timestamptz < to_timestamp($2)", &[&errors[0]["at"].as_str(), &back_epoch])
        .await
        .unwrap()
        .get(0);
    assert!(lapsed_first, "the lease lapsed only after the handler returned: {j}");
    wait_for_status(&db, next, &["completed"], Duration::from_secs(5)).await;
    let starts: Vec<Instant> = rec
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Started { id, at, attempt } if id == next || (id == blocked && attempt == 2) => Some(at),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 2);
    assert!(starts.iter().all(|s| *s >= back), "a job started while the blocking handler held the only slot");
    // Its late outcome changed nothing: the claim it belonged to was stale.
    let failed = failures_of(&rec, blocked);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((&failed[0].1, &failed[0].2), (&None, &exceeded("300ms")));
    assert_eq!(rec.count(|e| matches!(e, Event::Finished { id, .. } if *id == blocked)), 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_handlers_own_max_runtime_wins_over_the_workers() {
    let db = admin().await;
    let (slow_ok, slow_default) = (unique_queue("maxrtown"), unique_queue("maxrtdefault"));
    let rec = Recorder::default();
    let handler = |job: Job| async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        Ok::<Value, JobError>(json!({ "queue": job.queue() }))
    };
    let worker = builder()
        .max_runtime(Duration::from_millis(300))
        .handler_with(&slow_ok, handler, HandlerOpts::new().max_runtime(Duration::from_millis(2500)))
        .handler_with(&slow_default, handler, HandlerOpts::new())
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let once = PushOpts::new().max_attempts(1);
    let a = push(&db, &slow_ok, &json!({}), &once).await.unwrap();
    let b = push(&db, &slow_default, &json!({}), &once).await.unwrap();
    let j = wait_for_status(&db, a, &["completed"], Duration::from_secs(5)).await;
    assert_eq!(j["result"], json!({ "queue": slow_ok }), "{j}");
    let j = wait_for_status(&db, b, &["failed"], Duration::from_secs(5)).await;
    assert_eq!(j["last_error"], json!(exceeded("300ms")), "{j}");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_graceful_stop_within_max_runtime_finishes_or_gives_back_as_without_it() {
    let db = admin().await;
    if !has_queue_release(&db).await {
        println!("{NO_RELEASE}");
        return;
    }
    let q = unique_queue("maxrtstop");
    let rec = Recorder::default();
    let worker = builder()
        .max_runtime(Duration::from_secs(10))
        .handler(&q, |job: Job| async move {
            let ms = job.payload()["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<Value, JobError>(json!("done"))
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let quick = push(&db, &q, &json!({ "ms": 300 }), &PushOpts::new()).await.unwrap();
    let long = push(&db, &q, &json!({ "ms": 5000 }), &PushOpts::new()).await.unwrap();
    for id in [quick, long] {
        wait_for_status(&db, id, &["processing"], Duration::from_secs(5)).await;
    }
    worker.shutdown_with_grace(Duration::from_millis(1000)).await;
    let j = job_of(&db, quick).await.unwrap();
    assert_eq!(j["status"], json!("completed"), "{j}");
    let j = job_of(&db, long).await.unwrap();
    assert_eq!(j["status"], json!("pending"), "given back: {j}");
    let left = j["max_attempts"].as_i64().unwrap_or(0) - j["attempts"].as_i64().unwrap_or(0);
    assert_eq!((left, j["last_error"].clone()), (3, Value::Null), "given back without using an attempt: {j}");
    assert_eq!(rec.count(|e| matches!(e, Event::Failed { .. })), 0, "{:?}", rec.events());
    assert_eq!(rec.count(|e| matches!(e, Event::Released { id, released: true, .. } if *id == long)), 1);
    db.query_one("SELECT queue_cancel($1)", &[&long]).await.unwrap();
}

#[tokio::test]
async fn a_zero_max_runtime_is_refused() {
    let h = |_job: Job| async { Ok::<Value, JobError>(Value::Null) };
    let e = builder().max_runtime(Duration::ZERO).handler("q", h).build().err();
    assert!(matches!(&e, Some(Error::InvalidArgument(m)) if m.contains("max_runtime")), "{e:?}");
    let e = builder().handler_with("q", h, HandlerOpts::new().max_runtime(Duration::ZERO)).build().err();
    assert!(matches!(&e, Some(Error::InvalidArgument(m)) if m.contains("max_runtime") && m.contains("\"q\"")), "{e:?}");
    assert!(builder().handler_with("q", h, HandlerOpts::new().max_runtime(Duration::from_nanos(1))).build().is_ok());
}
