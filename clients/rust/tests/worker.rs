//! The worker against the real extension: wake-ups, acks, retries, dead
//! letters, concurrency, serial groups, progress and heartbeats.
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use queue_client::{push, push_batch, Job, JobError, JobStatus, PushOpts, VERSION};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[tokio::test]
async fn an_idle_worker_is_woken_by_notify_not_by_the_poll() {
    let db = admin().await;
    let q = unique_queue("wake");
    let started: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let s2 = started.clone();
    let worker = builder()
        .handler(&q, move |job: Job| {
            s2.lock().unwrap().insert(job.id(), Instant::now());
            async { Ok::<Value, JobError>(Value::Null) }
        })
        .poll_interval(Duration::from_secs(60)) // only a notification can start a job within the test's bound
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    wait_for("LISTEN", Duration::from_secs(5), || async { (worker.listen_connects() == 1).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // idle: the first claim found nothing
    let mut latencies = Vec::new();
    for i in 0..10 {
        let id = push(&db, &q, &json!({ "i": i }), &PushOpts::new()).await.unwrap();
        let committed = Instant::now(); // push returned: the autocommit is done
        let at = wait_for("the job to start", Duration::from_secs(5), || {
            let s = started.clone();
            async move { s.lock().unwrap().get(&id).copied() }
        })
        .await;
        latencies.push(at.saturating_duration_since(committed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    println!(
        "wake-up latency, push committed -> handler started, 10 jobs: p50 {:.2} ms, max {:.2} ms",
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
    assert!(max < Duration::from_secs(1), "a job waited {max:?} although the worker LISTENs (poll is 60 s)");
    worker.shutdown_with_grace(Duration::ZERO).await;
}

#[tokio::test]
async fn the_result_is_acked_with_the_claim_attempt_and_hooks_get_durations() {
    let db = admin().await;
    let q = unique_queue("ack");
    let rec = Recorder::default();
    let worker = builder()
        .name(format!("ack-{q}"))
        .handler(&q, |job: Job| async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            let n = job.payload()["n"].as_i64().unwrap_or(-1);
            Ok::<Value, JobError>(json!([n, {"ok": true}]))
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let id = push(&db, &q, &json!({"n": 5}), &PushOpts::new()).await.unwrap();
    let j = wait_for_status(&db, id, &["completed"], Duration::from_secs(5)).await;
    assert_eq!(j["result"], json!([5, {"ok": true}]));
    assert_eq!(j["attempts"], json!(1));
    assert_eq!(j["worker"], json!(format!("ack-{q}")));
    let (duration, acked) = wait_for("the finished hook", Duration::from_secs(2), || {
        let rec = rec.clone();
        async move {
            rec.find(|e| match e {
                Event::Finished { id: i, duration, acked, .. } if *i == id => Some((*duration, *acked)),
                _ => None,
            })
        }
    })
    .await;
    assert!(acked);
    assert!(duration >= Duration::from_millis(100), "duration {duration:?}");
    assert_eq!(rec.count(|e| matches!(e, Event::Started { id: i, attempt: 1, .. } if *i == id)), 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_handler_error_is_recorded_and_the_retry_succeeds() {
    let db = admin().await;
    let q = unique_queue("retry");
    let attempts: Arc<Mutex<Vec<i32>>> = Arc::default();
    let a2 = attempts.clone();
    let rec = Recorder::default();
    let worker = builder()
        .handler(&q, move |job: Job| {
            a2.lock().unwrap().push(job.attempt());
            async move {
                if job.attempt() == 1 {
                    // Any std error works with `?`.
                    let io = std::io::Error::other(format!("boom on {}", job.id()));
                    Err(io)?;
                }
                Ok::<Value, JobError>(json!({"recovered": true}))
            }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let id = push(&db, &q, &json!({}), &PushOpts::new().backoff_base(Duration::from_millis(300)).max_attempts(3))
        .await
        .unwrap();
    let status = wait_for("the failed hook", Duration::from_secs(5), || {
        let rec = rec.clone();
        async move {
            rec.find(|e| match e {
                Event::Failed { id: i, status, permanent, .. } if *i == id => Some((status.clone(), *permanent)),
                _ => None,
            })
        }
    })
    .await;
    assert_eq!(status, (Some(JobStatus::Retrying), false));
    let j = wait_for_status(&db, id, &["completed"], Duration::from_secs(10)).await;
    assert_eq!(j["attempts"], json!(2));
    assert_eq!(j["result"], json!({"recovered": true}));
    let last_error = j["last_error"].as_str().unwrap_or("");
    assert!(last_error.contains(&format!("boom on {id}")), "last_error {last_error:?}");
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2]);
    worker.shutdown().await;
}

#[tokio::test]
async fn retry_in_chooses_the_delay() {
    let db = admin().await;
    let q = unique_queue("retryin");
    let worker = builder()
        .handler(&q, |job: Job| async move {
            match job.payload()["kind"].as_str() {
                Some("later") => Err(JobError::retry_in(Duration::from_secs(3600), "rate limited")),
                _ if job.attempt() == 1 => Err(JobError::retry_in(Duration::ZERO, "flaky")),
                _ => Ok(json!("second try")),
            }
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let later =
        push(&db, &q, &json!({"kind": "later"}), &PushOpts::new().backoff_base(Duration::from_secs(1))).await.unwrap();
    let now =
        push(&db, &q, &json!({"kind": "now"}), &PushOpts::new().backoff_base(Duration::from_secs(3600))).await.unwrap();
    let j1 = wait_for_status(&db, later, &["retrying"], Duration::from_secs(5)).await;
    assert!(j1["last_error"].as_str().unwrap().contains("rate limited"));
    let wait: f64 = db
        .query_one("SELECT extract(epoch FROM (queue_job($1)->>'run_at')::timestamptz - now())::float8", &[&later])
        .await
        .unwrap()
        .get(0);
    assert!(wait > 55.0 * 60.0 && wait <= 3605.0, "retry_in(1 hour) gave a retry in {wait} s");
    // A zero delay: straight back, not after the 1 hour backoff.
    let j2 = wait_for_status(&db, now, &["completed"], Duration::from_secs(5)).await;
    assert_eq!(j2["attempts"], json!(2));
    assert_eq!(j2["result"], json!("second try"));
    worker.shutdown().await;
}

#[tokio::test]
async fn a_permanent_error_makes_a_dead_letter_at_once() {
    let db = admin().await;
    let q = unique_queue("perm");
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let rec = Recorder::default();
    let worker = builder()
        .handler(&q, move |_job: Job| {
            c2.fetch_add(1, Ordering::SeqCst);
            async { Err::<Value, _>(JobError::permanent("bad address nobody@nowhere")) }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let id =
        push(&db, &q, &json!({"to": "nobody@nowhere"}), &PushOpts::new().max_attempts(5).backoff_base(Duration::ZERO))
            .await
            .unwrap();
    wait_for_status(&db, id, &["failed"], Duration::from_secs(5)).await;
    let dead = db.query("SELECT id, status, attempts, last_error FROM queue_dead($1)", &[&q]).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get::<_, i64>("id"), id);
    assert_eq!(dead[0].get::<_, String>("status"), "failed");
    assert_eq!(dead[0].get::<_, i32>("attempts"), 1);
    assert!(dead[0].get::<_, String>("last_error").contains("bad address nobody@nowhere"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a permanent failure was retried");
    assert_eq!(
        rec.find(|e| match e {
            Event::Failed { id: i, status, permanent, .. } if *i == id => Some((status.clone(), *permanent)),
            _ => None,
        }),
        Some((Some(JobStatus::Failed), true))
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_fails_the_attempt_and_the_worker_goes_on() {
    let db = admin().await;
    let q = unique_queue("panic");
    // Keep the expected panic's message and backtrace out of the test output.
    quiet_panics("handler exploded");
    let worker = builder()
        .handler(&q, |job: Job| async move {
            if job.payload()["panic"] == json!(true) {
                panic!("handler exploded on {}", job.id());
            }
            Ok::<Value, JobError>(json!("fine"))
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let bad = push(&db, &q, &json!({"panic": true}), &PushOpts::new().max_attempts(1)).await.unwrap();
    let j = wait_for_status(&db, bad, &["failed"], Duration::from_secs(5)).await;
    assert!(j["last_error"].as_str().unwrap().contains("handler exploded"), "{j}");
    let good = push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap();
    wait_for_status(&db, good, &["completed"], Duration::from_secs(5)).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_panic_before_the_handlers_future_and_an_error_with_a_nul_fail_only_their_jobs() {
    let db = admin().await;
    let q = unique_queue("poison");
    quiet_panics("no such field");
    // Not an async closure: it reads the payload, and may panic, before its
    // future exists.
    let worker = builder()
        .concurrency(1)
        .handler(&q, |job: Job| {
            let kind = job.payload()["kind"].as_str().expect("no such field").to_owned();
            async move {
                if kind == "nul" {
                    return Err(JobError::permanent("bad\0byte"));
                }
                Ok::<Value, JobError>(json!("fine"))
            }
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let once = PushOpts::new().max_attempts(1);
    let early = push(&db, &q, &json!({}), &once).await.unwrap();
    let nul = push(&db, &q, &json!({"kind": "nul"}), &once).await.unwrap();
    let good = push(&db, &q, &json!({"kind": "fine"}), &once).await.unwrap();
    wait_for_status(&db, good, &["completed"], Duration::from_secs(5)).await;
    let j = wait_for_status(&db, early, &["failed"], Duration::from_secs(5)).await;
    assert!(j["last_error"].as_str().unwrap().contains("no such field"), "{j}");
    let j = wait_for_status(&db, nul, &["failed"], Duration::from_secs(5)).await;
    assert!(j["last_error"].as_str().unwrap().starts_with("bad\\0byte"), "{j}");
    worker.shutdown().await;
}

#[tokio::test]
async fn never_more_than_concurrency_handlers_at_once() {
    let db = admin().await;
    let q = unique_queue("conc");
    let name = format!("conc-{q}");
    let running = Arc::new(InFlight::default());
    let r2 = running.clone();
    let worker = builder()
        .name(&name)
        .concurrency(4)
        .handler(&q, move |job: Job| {
            let r = r2.clone();
            async move {
                r.hold(Duration::from_millis(60 + (job.id() % 7) as u64 * 10)).await;
                Ok::<Value, JobError>(Value::Null)
            }
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let payloads: Vec<Value> = (0..30).map(|n| json!({ "n": n })).collect();
    let ids = push_batch(&db, &q, &payloads, &PushOpts::new()).await.unwrap();
    let sampler_db = admin().await;
    let stop = Arc::new(Notify::new());
    let stop2 = stop.clone();
    let name2 = name.clone();
    let sampler = tokio::spawn(async move {
        let mut max_in_db = 0i64;
        loop {
            let r = sampler_db
                .query("SELECT count(*) FROM queue.jobs WHERE worker = $1 AND status = 'processing'", &[&name2])
                .await;
            if let Ok(rows) = r {
                max_in_db = max_in_db.max(rows[0].get::<_, i64>(0));
            }
            tokio::select! {
                _ = stop2.notified() => return max_in_db,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
    for id in &ids {
        wait_for_status(&db, *id, &["completed"], Duration::from_secs(20)).await;
    }
    stop.notify_one();
    let max_in_db = sampler.await.unwrap();
    let max_running = running.most();
    println!("concurrency 4: at most {max_running} handlers at once, {max_in_db} jobs processing in the database");
    assert!(max_running <= 4, "{max_running} handlers ran at once");
    assert_eq!(max_running, 4, "the worker should use its whole capacity");
    assert!(max_in_db <= 4, "{max_in_db} jobs were processing at once");
    assert_eq!(worker.running_jobs(), 0);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_serial_group_runs_one_at_a_time_in_order_across_workers() {
    let db = admin().await;
    let q = unique_queue("serial");
    let group = format!("{q}:customer-42");
    type Run = (i64, String, Instant, Instant); // id, worker, start, end
    let log: Arc<Mutex<Vec<Run>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..3 {
        let log = log.clone();
        workers.push(
            builder()
                .name(format!("serial-{w}-{q}"))
                .concurrency(3)
                .poll_interval(Duration::from_millis(200))
                .handler(&q, move |job: Job| {
                    let log = log.clone();
                    async move {
                        let start = Instant::now();
                        tokio::time::sleep(Duration::from_millis(20 + (job.id() % 5) as u64 * 7)).await;
                        log.lock().unwrap().push((job.id(), job.worker().to_owned(), start, Instant::now()));
                        Ok::<Value, JobError>(Value::Null)
                    }
                })
                .build()
                .unwrap()
                .start()
                .await
                .unwrap(),
        );
    }
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(push(&db, &q, &json!({ "i": i }), &PushOpts::new().serial_group(&group)).await.unwrap());
    }
    let others: Vec<Value> = (0..10).map(|i| json!({ "other": i })).collect();
    let others = push_batch(&db, &q, &others, &PushOpts::new()).await.unwrap();
    for id in ids.iter().chain(others.iter()) {
        wait_for_status(&db, *id, &["completed"], Duration::from_secs(30)).await;
    }
    let mut grouped: Vec<_> = log.lock().unwrap().iter().filter(|e| ids.contains(&e.0)).cloned().collect();
    grouped.sort_by_key(|e| e.2);
    assert_eq!(grouped.iter().map(|e| e.0).collect::<Vec<_>>(), ids, "the group ran in push order");
    for w in grouped.windows(2) {
        assert!(w[1].2 >= w[0].3, "job {} started before job {} ended", w[1].0, w[0].0);
    }
    let served: std::collections::HashSet<_> = grouped.iter().map(|e| e.1.clone()).collect();
    println!("serial group of 15 jobs served by {} of 3 workers", served.len());
    for w in workers {
        w.shutdown().await;
    }
}

#[tokio::test]
async fn progress_goes_to_queue_progress_and_the_worker_registers() {
    let db = admin().await;
    let q = unique_queue("progress");
    let name = format!("progress-{q}");
    let release = Arc::new(Notify::new());
    let reported = Arc::new(Mutex::new(None));
    let (r2, rep2) = (release.clone(), reported.clone());
    let worker = builder()
        .name(&name)
        .concurrency(3)
        .handler(&q, move |job: Job| {
            let (release, reported) = (r2.clone(), rep2.clone());
            async move {
                let ok = job.progress(3, 10, Some("three of ten")).await?;
                *reported.lock().unwrap() = Some(ok);
                release.notified().await;
                Ok::<Value, JobError>(Value::Null)
            }
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let id = push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap();
    let ok = wait_for("progress", Duration::from_secs(5), || {
        let r = reported.clone();
        async move { *r.lock().unwrap() }
    })
    .await;
    assert!(ok);
    let j = job_of(&db, id).await.unwrap();
    assert_eq!(j["progress"]["current"], json!(3));
    assert_eq!(j["progress"]["total"], json!(10));
    assert_eq!(j["progress"]["message"], json!("three of ten"));
    let w = db.query("SELECT info, healthy FROM queue_workers() WHERE worker = $1", &[&name]).await.unwrap();
    assert_eq!(w.len(), 1);
    let info: Value = w[0].get("info");
    assert_eq!(info["pid"], json!(std::process::id()));
    assert_eq!(info["version"], json!(VERSION));
    assert_eq!(info["queues"], json!([q]));
    assert_eq!(info["concurrency"], json!(3));
    assert!(info["host"].is_string());
    assert!(w[0].get::<_, bool>("healthy"));
    release.notify_one();
    wait_for_status(&db, id, &["completed"], Duration::from_secs(5)).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_stale_claim_loses_its_lease_and_the_late_ack_changes_nothing() {
    let db = admin().await;
    let q = unique_queue("stale");
    let rec = Recorder::default();
    let worker = builder()
        .concurrency(1) // the held job keeps the only slot: the worker cannot take it back itself
        .handler(&q, |job: Job| async move {
            if job.payload()["hold"] != json!(true) {
                return Ok(json!("next job"));
            }
            job.cancelled().await; // told when a touch finds the claim stale
            Ok::<Value, JobError>(json!("late result"))
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let id = push(
        &db,
        &q,
        &json!({"hold": true}),
        &PushOpts::new().timeout(Duration::from_secs(1)).backoff_base(Duration::ZERO),
    )
    .await
    .unwrap();
    wait_for_status(&db, id, &["processing"], Duration::from_secs(5)).await;
    // Someone else takes the job over: this claim (attempt 1) becomes stale.
    let s: Option<String> =
        db.query_one("SELECT queue_fail($1, 'taken over', 1, interval '0')", &[&id]).await.unwrap().get(0);
    assert_eq!(s.as_deref(), Some("pending"));
    let thief = db.query("SELECT id, attempt FROM queue_pop($1, 'thief', 1)", &[&q]).await.unwrap();
    assert_eq!(thief.len(), 1);
    assert_eq!(thief[0].get::<_, i32>("attempt"), 2);
    db.execute("SELECT queue_touch($1, interval '1 minute', 2)", &[&id]).await.unwrap();
    let acked = wait_for("the late ack", Duration::from_secs(5), || {
        let rec = rec.clone();
        async move {
            rec.find(|e| match e {
                Event::Finished { id: i, acked, .. } if *i == id => Some(*acked),
                _ => None,
            })
        }
    })
    .await;
    assert!(!acked, "the ack of attempt 1 must not complete attempt 2");
    let j = job_of(&db, id).await.unwrap();
    assert_eq!(j["status"], json!("processing"));
    assert_eq!(j["worker"], json!("thief"));
    let ok: bool = db.query_one("SELECT queue_ack($1, '\"thief result\"', 2)", &[&id]).await.unwrap().get(0);
    assert!(ok);
    // The worker goes on.
    let id2 = push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap();
    wait_for_status(&db, id2, &["completed"], Duration::from_secs(5)).await;
    worker.shutdown().await;
}
