//! Batched acks: finished jobs are acked many per `queue_ack_batch` call (one
//! commit), a stale claim in a batch is refused alone, and a result the server
//! refuses fails only its own job. The cluster runs with track_functions = 'all'
//! (run-tests.sh), so pg_stat_user_functions counts the calls.
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use queue_client::{push, push_batch, Job, JobError, JobStatus, PushOpts, RunningWorker, WorkerBuilder};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_postgres::Client;

/// How many times a function has been called, cluster-wide (a fresh snapshot).
async fn calls_of(db: &Client, function: &str) -> i64 {
    db.batch_execute("SELECT pg_stat_clear_snapshot()").await.unwrap();
    db.query_one("SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions WHERE funcname = $1", &[&function])
        .await
        .unwrap()
        .get(0)
}

/// The calls of a function once the counter has moved past `before` and stopped
/// moving: backends flush their counters when idle (at most once a second) or
/// when they exit, so the count lags a little.
async fn settled_calls(db: &Client, function: &str, before: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut last = calls_of(db, function).await;
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = calls_of(db, function).await;
        if (now > before && now == last) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Waits until one of the worker's sessions waits for a lock (its ack is blocked).
async fn wait_for_lock_waiter(db: &Client, name: &str) {
    wait_for("the worker's ack to wait for the row lock", Duration::from_secs(10), || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await;
}

/// Waits (up to a minute) until `jobs` jobs of the queue are completed.
async fn wait_all_completed(db: &Client, q: &str, jobs: usize) {
    wait_for("every job to complete", Duration::from_secs(60), || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM queue.all_jobs WHERE queue = $1 AND status = 'completed'", &[&q])
            .await
            .unwrap()
            .get(0);
        (n == jobs as i64).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_drain_acks_many_jobs_per_queue_ack_batch_call_each_exactly_once() {
    let db = admin().await;
    let q = unique_queue("ackbatch");
    const JOBS: usize = 300;
    let runs: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let r2 = runs.clone();
    let rec = Recorder::default();
    let payloads: Vec<Value> = (0..JOBS).map(|n| json!({ "n": n })).collect();
    let ids = push_batch(&db, &q, &payloads, &PushOpts::new()).await.unwrap();
    let before = calls_of(&db, "queue_ack_batch").await;
    let t0 = Instant::now();
    let worker = builder()
        .concurrency(20)
        .handler(&q, move |job: Job| {
            *r2.lock().unwrap().entry(job.id()).or_default() += 1;
            async move {
                // The jobs of one claim finish together, as a burst of real work would: their
                // acks arrive while the acker's previous call is in flight and share the next.
                tokio::time::sleep(Duration::from_millis(3)).await;
                Ok::<Value, JobError>(json!({ "n": job.payload()["n"], "id": job.id() }))
            }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    wait_all_completed(&db, &q, JOBS).await;
    let took = t0.elapsed();
    worker.shutdown().await; // its sessions end and flush their counters

    let calls = settled_calls(&db, "queue_ack_batch", before).await - before;
    println!(
        "{JOBS} jobs at concurrency 20 drained in {} ms with {calls} queue_ack_batch calls ({:.1} acks per call)",
        took.as_millis(),
        JOBS as f64 / calls.max(1) as f64
    );
    assert!(calls >= 1, "no queue_ack_batch call was counted (is track_functions = 'all' set?)");
    assert!(calls <= (JOBS / 3) as i64, "{calls} queue_ack_batch calls for {JOBS} jobs: the acks were not batched");

    let runs = runs.lock().unwrap().clone();
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(runs.get(id), Some(&1), "job {id} ran {:?} times", runs.get(id));
        let j = job_of(&db, *id).await.unwrap();
        assert_eq!(j["status"], json!("completed"), "{j}");
        assert_eq!(j["attempts"], json!(1), "{j}");
        assert_eq!(j["result"], json!({ "n": n, "id": id }), "{j}");
        let finished: Vec<bool> = rec
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::Finished { id: i, acked, .. } if i == id => Some(*acked),
                _ => None,
            })
            .collect();
        assert_eq!(finished, vec![true], "job {id}: finished events {finished:?}");
    }
    let rows =
        db.query("SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = $1 GROUP BY 1", &[&q]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].get::<_, String>(0), rows[0].get::<_, i64>(1)), ("completed".to_owned(), JOBS as i64));
    assert_eq!(rec.count(|e| matches!(e, Event::Failed { .. })), 0, "{:?}", rec.events());
}

/// At concurrency 1 a worker in steady state spends one commit per job: the
/// acker sends each ack together with the claim of the next job, so the next
/// job's `started_at` is the acked job's `finished_at` (both are the
/// transaction's `now()`). Claimed and acked in separate transactions, no two
/// would be equal. The jobs still run one at a time, each exactly once.
#[tokio::test]
async fn at_concurrency_1_each_ack_claims_the_next_job_in_its_own_commit() {
    let db = admin().await;
    let q = unique_queue("ackclaim");
    const JOBS: usize = 60;
    let payloads: Vec<Value> = (0..JOBS).map(|n| json!({ "n": n })).collect();
    push_batch(&db, &q, &payloads, &PushOpts::new()).await.unwrap();
    let running = Arc::new(InFlight::default());
    let r2 = running.clone();
    let worker = builder()
        .concurrency(1)
        .handler(&q, move |_job: Job| {
            let r = r2.clone();
            async move {
                r.hold(Duration::from_millis(2)).await;
                Ok::<Value, JobError>(Value::Null)
            }
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    wait_all_completed(&db, &q, JOBS).await;
    worker.shutdown().await;
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE EXISTS (SELECT FROM queue.all_jobs b
                                                   WHERE b.queue = a.queue AND b.id <> a.id
                                                     AND b.started_at = a.finished_at)),
                    max(attempts), count(*)
               FROM queue.all_jobs a WHERE a.queue = $1",
            &[&q],
        )
        .await
        .unwrap();
    let (handed_on, attempts, total): (i64, i32, i64) = (row.get(0), row.get(1), row.get(2));
    println!("{handed_on} of {JOBS} acks claimed the next job in their own commit");
    assert_eq!((total, attempts), (JOBS as i64, 1));
    assert_eq!(running.most(), 1, "more than one handler ran at once");
    // Every ack but the last has a next job to claim; allow a few that found
    // the queue not yet marked (the first claim, a poll in between).
    assert!(handed_on >= (JOBS as i64) * 9 / 10, "only {handed_on} of {JOBS} acks claimed in their commit");
}

/// A worker whose handlers wait at two gates: the "plug" job's handler at the
/// first, every other job's at the second. Each handler returns
/// `{"role": ..., "id": ...}`, a job with role "big" a result of about 5 kB.
struct Gated {
    worker: RunningWorker,
    plug: watch::Sender<bool>,
    rest: watch::Sender<bool>,
    returned: Arc<AtomicUsize>,
}

async fn gated_worker(b: WorkerBuilder, q: &str, concurrency: usize, rec: &Recorder) -> Gated {
    let (plug, plug_rx) = watch::channel(false);
    let (rest, rest_rx) = watch::channel(false);
    let returned = Arc::new(AtomicUsize::new(0));
    let ret = returned.clone();
    let worker = b
        .concurrency(concurrency)
        .poll_interval(Duration::from_millis(200))
        .handler(q, move |job: Job| {
            let (mut plug, mut rest, returned) = (plug_rx.clone(), rest_rx.clone(), ret.clone());
            async move {
                let role = job.payload()["role"].as_str().unwrap_or("").to_owned();
                let gate = if role == "plug" { &mut plug } else { &mut rest };
                let _ = gate.wait_for(|open| *open).await.is_ok();
                returned.fetch_add(1, Ordering::SeqCst);
                if role == "big" {
                    Ok::<Value, JobError>(json!({ "role": role, "blob": "x".repeat(5000) }))
                } else {
                    Ok(json!({ "role": role, "id": job.id() }))
                }
            }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    Gated { worker, plug, rest, returned }
}

/// Puts every ack of the non-plug jobs into ONE batch: a session holds the
/// plug job's row lock, the plug's ack (a batch of its own) waits for it, the
/// other handlers return meanwhile and their acks queue behind that call; the
/// lock is released and they all go out in the acker's next call.
async fn one_batch_behind_a_plug(db: &Client, g: &Gated, name: &str, plug_id: i64, jobs: usize) {
    let locker = admin().await;
    locker.batch_execute("BEGIN").await.unwrap();
    let locked = locker.query("SELECT 1 FROM queue.jobs WHERE id = $1 FOR UPDATE", &[&plug_id]).await.unwrap();
    assert_eq!(locked.len(), 1, "the plug job is processing");
    g.plug.send_replace(true);
    wait_for_lock_waiter(db, name).await;
    g.rest.send_replace(true);
    wait_for("every handler to return", Duration::from_secs(5), || async {
        (g.returned.load(Ordering::SeqCst) == jobs).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // their acks are queued right after they return
    locker.batch_execute("COMMIT").await.unwrap();
}

fn finished_of(rec: &Recorder, id: i64) -> Option<(bool, Value)> {
    rec.find(|e| match e {
        Event::Finished { id: i, acked, result, .. } if *i == id => Some((*acked, result.clone())),
        _ => None,
    })
}

#[tokio::test]
async fn in_one_batch_a_stale_claim_is_refused_and_the_others_complete() {
    let db = admin().await;
    let q = unique_queue("ackstale");
    let name = format!("ackstale-{q}");
    let rec = Recorder::default();
    // Capacity for exactly these jobs: the worker cannot claim the stale job back itself.
    let others = 4;
    let jobs = 2 + others;
    let g = gated_worker(builder().name(&name), &q, jobs, &rec).await;
    let plug = push(&db, &q, &json!({"role": "plug"}), &PushOpts::new()).await.unwrap();
    let stale = push(&db, &q, &json!({"role": "stale"}), &PushOpts::new()).await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..others {
        rest.push(push(&db, &q, &json!({"role": "other"}), &PushOpts::new()).await.unwrap());
    }
    for id in [plug, stale].iter().chain(&rest) {
        wait_for_status(&db, *id, &["processing"], Duration::from_secs(5)).await;
    }
    // The stale job's lease is taken over: its claim (attempt 1) is no longer current.
    let s: Option<String> =
        db.query_one("SELECT queue_fail($1, 'taken over', 1, interval '0')", &[&stale]).await.unwrap().get(0);
    assert_eq!(s.as_deref(), Some("pending"));
    let thief = db.query("SELECT id, attempt FROM queue_pop($1, 'thief', 1)", &[&q]).await.unwrap();
    assert_eq!(thief.len(), 1);
    assert_eq!((thief[0].get::<_, i64>("id"), thief[0].get::<_, i32>("attempt")), (stale, 2));

    let before = calls_of(&db, "queue_ack_batch").await;
    one_batch_behind_a_plug(&db, &g, &name, plug, jobs).await;
    for id in [plug, stale].iter().chain(&rest) {
        wait_for("the finished event", Duration::from_secs(10), || async { finished_of(&rec, *id) }).await;
    }
    assert_eq!(finished_of(&rec, stale).map(|f| f.0), Some(false), "the stale claim's ack must be refused");
    let j = job_of(&db, stale).await.unwrap();
    assert_eq!(j["status"], json!("processing"), "{j}");
    assert_eq!(j["worker"], json!("thief"), "{j}");
    for id in std::iter::once(&plug).chain(&rest) {
        let (acked, result) = finished_of(&rec, *id).unwrap();
        assert!(acked, "job {id} was not acked");
        let j = job_of(&db, *id).await.unwrap();
        assert_eq!(j["status"], json!("completed"), "{j}");
        assert_eq!(j["result"], result, "{j}");
    }
    assert_eq!(rec.count(|e| matches!(e, Event::Finished { .. })), jobs);
    assert_eq!(rec.count(|e| matches!(e, Event::Failed { .. })), 0, "{:?}", rec.events());
    let ok: bool = db.query_one("SELECT queue_ack($1, '\"thief result\"', 2)", &[&stale]).await.unwrap().get(0);
    assert!(ok, "the thief's current claim still completes");
    g.worker.shutdown().await;
    // The plug's call, then one call for the stale job and its neighbours.
    let calls = settled_calls(&db, "queue_ack_batch", before).await - before;
    assert_eq!(calls, 2, "queue_ack_batch calls: the plug's and one for the other {} acks", jobs - 1);
}

#[tokio::test]
async fn a_result_too_large_fails_only_its_job_and_its_batch_neighbours_complete() {
    let db = admin().await;
    let q = unique_queue("ackbig");
    let name = format!("ackbig-{q}");
    let rec = Recorder::default();
    // queue.max_result_size is superuser-only: the tests connect as postgres.
    let mut cfg = config();
    cfg.options("-c queue.max_result_size=1"); // 1 kB
    let b = queue_client::Worker::builder(cfg).backoff(Duration::from_millis(50), Duration::from_secs(1)).name(&name);
    let others = 4;
    let jobs = 2 + others;
    let g = gated_worker(b, &q, jobs, &rec).await;
    let plug = push(&db, &q, &json!({"role": "plug"}), &PushOpts::new()).await.unwrap();
    let big = push(&db, &q, &json!({"role": "big"}), &PushOpts::new().max_attempts(1)).await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..others {
        rest.push(push(&db, &q, &json!({"role": "other"}), &PushOpts::new()).await.unwrap());
    }
    for id in [plug, big].iter().chain(&rest) {
        wait_for_status(&db, *id, &["processing"], Duration::from_secs(5)).await;
    }
    let before = calls_of(&db, "queue_ack_batch").await;
    one_batch_behind_a_plug(&db, &g, &name, plug, jobs).await;

    let jb = wait_for_status(&db, big, &["failed"], Duration::from_secs(10)).await;
    let last_error = jb["last_error"].as_str().unwrap_or("");
    assert!(last_error.contains("queue.max_result_size"), "last_error {last_error:?}");
    assert!(jb["result"].is_null(), "{jb}");
    let failed = wait_for("the failed event", Duration::from_secs(5), || async {
        rec.find(|e| match e {
            Event::Failed { id, status, .. } if *id == big => Some(status.clone()),
            _ => None,
        })
    })
    .await;
    assert_eq!(failed, Some(JobStatus::Failed));
    assert_eq!(finished_of(&rec, big), None, "the refused result was reported as finished");
    for id in std::iter::once(&plug).chain(&rest) {
        let j = wait_for_status(&db, *id, &["completed"], Duration::from_secs(10)).await;
        assert_eq!(j["attempts"], json!(1), "{j}");
        assert_eq!(j["result"], json!({ "role": j["payload"]["role"], "id": id }), "{j}");
        let f = wait_for("the finished event", Duration::from_secs(5), || async { finished_of(&rec, *id) }).await;
        assert!(f.0, "job {id} was not acked");
    }
    assert_eq!(rec.count(|e| matches!(e, Event::Failed { .. })), 1, "{:?}", rec.events());
    g.worker.shutdown().await;
    let calls = settled_calls(&db, "queue_ack_batch", before).await - before;
    assert!(calls >= 1, "the acks did not go through queue_ack_batch ({calls} calls)");
}

#[tokio::test]
async fn without_queue_ack_batch_an_older_extension_gets_one_queue_ack_per_job() {
    // A database of its own whose extension loses queue_ack_batch after the worker
    // started (as if it were older): the first batch call gets 42883.
    let db = admin().await;
    db.batch_execute("DROP DATABASE IF EXISTS rust_client_no_ack_batch WITH (FORCE)").await.unwrap();
    db.batch_execute("CREATE DATABASE rust_client_no_ack_batch").await.unwrap();
    let mut cfg = config();
    cfg.dbname("rust_client_no_ack_batch");
    let (other, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    other.batch_execute("CREATE EXTENSION queue").await.unwrap();
    let q = unique_queue("acknobatch");
    let rec = Recorder::default();
    let worker = queue_client::Worker::builder(cfg)
        .backoff(Duration::from_millis(50), Duration::from_secs(1))
        .concurrency(5)
        .handler(&q, |job: Job| async move { Ok::<Value, JobError>(json!({ "id": job.id() })) })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    other
        .batch_execute(
            "ALTER EXTENSION queue DROP FUNCTION queue_ack_batch(bigint[], integer[], jsonb[]); \
             DROP FUNCTION queue_ack_batch(bigint[], integer[], jsonb[]);",
        )
        .await
        .unwrap();
    // The first round meets the missing function; the second is acked one by one from the start.
    for round in 0..2 {
        let payloads: Vec<Value> = (0..5).map(|n| json!({ "round": round, "n": n })).collect();
        let ids = push_batch(&other, &q, &payloads, &PushOpts::new()).await.unwrap();
        for id in &ids {
            let j = wait_for_status(&other, *id, &["completed"], Duration::from_secs(10)).await;
            assert_eq!(j["result"], json!({ "id": id }), "{j}");
            assert_eq!(j["attempts"], json!(1), "{j}");
            let f = wait_for("the finished event", Duration::from_secs(5), || async { finished_of(&rec, *id) }).await;
            assert!(f.0, "job {id} was not acked");
        }
    }
    assert_eq!(rec.count(|e| matches!(e, Event::Failed { .. })), 0, "{:?}", rec.events());
    assert_eq!(rec.count(|e| matches!(e, Event::Error { .. })), 0, "{:?}", rec.events());
    worker.shutdown().await;
    drop(other);
    db.batch_execute("DROP DATABASE rust_client_no_ack_batch WITH (FORCE)").await.unwrap();
}
