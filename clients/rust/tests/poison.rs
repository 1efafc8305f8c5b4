//! Poison pills the worker must contain: a claimed row whose payload serde_json
//! cannot decode is failed for good at once (not dropped and left to come
//! back after its lease, again and again), and large results from many
//! handlers at once are acked in statements of bounded size.
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use queue_client::{push, Job, JobError, JobStatus, PushOpts};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_postgres::Client;

/// A job's status, attempts and last error, read in SQL: `queue_job` of a job
/// whose payload serde_json cannot decode cannot be read as a `Value` either.
async fn state_of(db: &Client, id: i64) -> (String, i32, String) {
    let r = db
        .query_one(
            "SELECT j->>'status', (j->>'attempts')::int, coalesce(j->>'last_error', '') FROM queue_job($1) AS j",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

async fn wait_for_state(db: &Client, id: i64, status: &str, timeout: Duration) -> (String, i32, String) {
    wait_for(&format!("job {id} to be {status}"), timeout, || async {
        let s = state_of(db, id).await;
        (s.0 == status).then_some(s)
    })
    .await
}

#[tokio::test]
async fn a_payload_serde_json_cannot_decode_is_dead_at_once_and_its_batch_neighbours_complete() {
    let db = admin().await;
    let q = unique_queue("undecodable");
    let rec = Recorder::default();
    let ran: Arc<Mutex<Vec<i64>>> = Arc::default();
    // Pushed before the worker starts, so that one claim takes the good jobs
    // and the poison pills together.
    let mut good = Vec::new();
    let mut bad = HashMap::new();
    let deep = format!("{{\"deep\": {}1{}}}", "[".repeat(200), "]".repeat(200));
    for (kind, payload) in
        [("good", None), ("deep", Some(deep.as_str())), ("good", None), ("huge", Some("{\"n\": 1e400}"))]
            .into_iter()
            .chain([("good", None)])
    {
        match payload {
            None => good.push(push(&db, &q, &json!({ "kind": kind }), &PushOpts::new()).await.unwrap()),
            Some(p) => {
                // max_attempts 3: dead "at once" means permanently, not after three claims.
                let id: i64 = db
                    .query_one("SELECT queue_push($1, $2::text::jsonb, max_attempts => 3)", &[&q, &p])
                    .await
                    .unwrap()
                    .get(0);
                bad.insert(kind, id);
            }
        }
    }
    let r2 = ran.clone();
    let worker = builder()
        .concurrency(8)
        .handler(&q, move |job: Job| {
            r2.lock().unwrap().push(job.id());
            async move { Ok::<Value, JobError>(json!({ "kind": job.payload()["kind"] })) }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();

    for (kind, why) in [("deep", "recursion limit exceeded"), ("huge", "number out of range")] {
        let id = bad[kind];
        // The job's lease is its timeout (5 minutes): only a failure ends it this soon.
        let (_, attempts, last_error) = wait_for_state(&db, id, "failed", Duration::from_secs(10)).await;
        println!("job {id} ({kind}) failed at once: {last_error}");
        assert_eq!(attempts, 1, "job {id} ({kind})");
        assert!(last_error.starts_with("the payload cannot be decoded: "), "job {id} ({kind}): {last_error:?}");
        assert!(last_error.contains(why), "job {id} ({kind}): {last_error:?}");
        let dead: i64 =
            db.query_one("SELECT count(*) FROM queue_dead($1) WHERE id = $2", &[&q, &id]).await.unwrap().get(0);
        assert_eq!(dead, 1, "job {id} ({kind}) is a dead letter");
        let failed = wait_for("the failed event", Duration::from_secs(5), || async {
            rec.find(|e| match e {
                Event::Failed { id: i, status, permanent, message, .. } if *i == id => {
                    Some((status.clone(), *permanent, message.clone()))
                }
                _ => None,
            })
        })
        .await;
        assert_eq!((failed.0, failed.1), (Some(JobStatus::Failed), true), "job {id} ({kind})");
        assert_eq!(failed.2, last_error, "the hook is told the recorded error");
    }
    for id in &good {
        let j = wait_for_status(&db, *id, &["completed"], Duration::from_secs(10)).await;
        assert_eq!(j["attempts"], json!(1), "{j}");
        assert_eq!(j["result"], json!({ "kind": "good" }), "{j}");
    }
    let ran = ran.lock().unwrap().clone();
    assert!(bad.values().all(|id| !ran.contains(id)), "a handler ran an undecodable job: {ran:?}");
    assert_eq!(ran.len(), good.len(), "{ran:?}");
    // No claimed row was dropped with only a report.
    assert_eq!(rec.count(|e| matches!(e, Event::Error { .. })), 0, "{:?}", rec.events());
    worker.shutdown().await;
}

/// The acker's byte cap: the results of many handlers finishing at once
/// travel in several `queue_ack_batch` statements of at most
/// `MAX_ACK_BATCH_BYTES` (16 MB, src/worker/acker.rs) of results each, not in
/// one statement of all of them (50 results of 10 MB would be 500 MB). Every
/// job acked in one statement has that transaction's `now()` as its
/// `finished_at`, so the server's rows show how the acks were grouped.
#[tokio::test]
async fn results_of_several_mb_from_concurrent_handlers_are_stored_intact_in_statements_under_the_cap() {
    const CAP: usize = 16 << 20;
    const BLOB: usize = 3 << 20;
    const OTHERS: usize = 11;
    let db = admin().await;
    let q = unique_queue("ackbytes");
    let name = format!("ackbytes-{q}");
    let rec = Recorder::default();
    let (plug_tx, plug_rx) = watch::channel(false);
    let (rest_tx, rest_rx) = watch::channel(false);
    let returned = Arc::new(AtomicUsize::new(0));
    let sizes: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let (ret, sz) = (returned.clone(), sizes.clone());
    let worker = builder()
        .name(&name)
        .concurrency(OTHERS + 1)
        .poll_interval(Duration::from_millis(200))
        .handler(&q, move |job: Job| {
            let (mut plug, mut rest, ret, sz) = (plug_rx.clone(), rest_rx.clone(), ret.clone(), sz.clone());
            async move {
                let is_plug = job.payload()["plug"] == json!(true);
                let gate = if is_plug { &mut plug } else { &mut rest };
                let _ = gate.wait_for(|open| *open).await.is_ok();
                // A result of its own per job (its id throughout), so that a mix-up would show.
                let blob: String = format!("{:x}-", job.id()).chars().cycle().take(BLOB).collect();
                let result = json!({ "id": job.id(), "blob": blob });
                sz.lock().unwrap().insert(job.id(), serde_json::to_vec(&result).map_or(0, |v| v.len()));
                ret.fetch_add(1, Ordering::SeqCst);
                Ok::<Value, JobError>(result)
            }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let plug = push(&db, &q, &json!({ "plug": true }), &PushOpts::new()).await.unwrap();
    let mut ids = vec![plug];
    for _ in 0..OTHERS {
        ids.push(push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap());
    }
    for id in &ids {
        wait_for_status(&db, *id, &["processing"], Duration::from_secs(5)).await;
    }
    // The plug's ack waits for a row lock while every other handler returns:
    // all their acks are queued together behind it.
    let locker = admin().await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker.query("SELECT 1 FROM queue.jobs WHERE id = $1 FOR UPDATE", &[&plug]).await.unwrap();
    plug_tx.send_replace(true);
    wait_for("the plug's ack to wait for the row lock", Duration::from_secs(10), || async {
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
    rest_tx.send_replace(true);
    wait_for("every handler to return", Duration::from_secs(30), || async {
        (returned.load(Ordering::SeqCst) == ids.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // their acks are queued right after they return
    locker.batch_execute("COMMIT").await.unwrap();

    for id in &ids {
        wait_for_status(&db, *id, &["completed"], Duration::from_secs(30)).await;
    }
    let rows = db
        .query(
            "SELECT id, finished_at::text, result->>'id' = id::text AS own,
                    result->>'blob' = left(repeat(to_hex(id) || '-', $2), $2) AS intact
               FROM queue.all_jobs WHERE queue = $1 ORDER BY id",
            &[&q, &(BLOB as i32)],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), ids.len());
    let sizes = sizes.lock().unwrap().clone();
    let mut statements: HashMap<String, (usize, usize)> = HashMap::new();
    for r in &rows {
        let id: i64 = r.get("id");
        assert_eq!((r.get::<_, bool>("own"), r.get::<_, bool>("intact")), (true, true), "job {id}'s result");
        let s = statements.entry(r.get("finished_at")).or_default();
        s.0 += 1;
        s.1 += sizes[&id];
    }
    let mut groups: Vec<(usize, usize)> = statements.into_values().collect();
    groups.sort();
    println!("{} results of {} MB acked in statements of (jobs, bytes) {groups:?}", ids.len(), BLOB >> 20);
    for (jobs, bytes) in &groups {
        assert!(*jobs == 1 || *bytes <= CAP, "one statement carried {jobs} results, {bytes} bytes: over the cap");
    }
    assert!(groups.iter().any(|g| g.0 > 1), "no statement carried several acks: the test did not batch {groups:?}");
    assert_eq!(rec.count(|e| matches!(e, Event::Finished { acked: true, .. })), ids.len(), "{:?}", rec.events());
    assert_eq!(rec.count(|e| matches!(e, Event::Failed { .. })), 0);
    worker.shutdown().await;
}
