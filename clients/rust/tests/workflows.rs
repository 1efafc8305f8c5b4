//! Workflows against the real extension: depends_on / run_anyway, tags,
//! batches with callbacks, and the typed helpers (dependencies, batch_*).
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use queue_client::{
    batch_cancel, batch_close, batch_open, batch_status, dependencies, push, push_batch, BatchOpts, BatchState,
    Callback, Job, JobError, JobStatus, Priority, PushOpts,
};
use serde_json::{json, Value};
use tokio_postgres::Client;

/// Claims up to `n` jobs of `queue` by SQL: (id, attempt).
async fn pop(db: &Client, queue: &str, n: i32) -> Vec<(i64, i32)> {
    db.query("SELECT id, attempt FROM queue_pop($1, 'workflow-test', $2)", &[&queue, &n])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn ack(db: &Client, id: i64, attempt: i32, result: Value) {
    let ok: bool = db.query_one("SELECT queue_ack($1, $2, $3)", &[&id, &result, &attempt]).await.unwrap().get(0);
    assert!(ok, "ack of job {id} refused");
}

async fn fail_permanently(db: &Client, id: i64, attempt: i32) {
    let status: String =
        db.query_one("SELECT queue_fail($1, 'boom', $2, NULL, true)", &[&id, &attempt]).await.unwrap().get(0);
    assert_eq!(status, "failed");
}

async fn status_of(db: &Client, id: i64) -> String {
    job_of(db, id).await.unwrap_or_else(|| panic!("job {id} exists"))["status"].as_str().unwrap_or("").to_owned()
}

/// Ids of every job of a queue, any status (queue_jobs), newest first.
async fn jobs_of(db: &Client, queue: &str, tag: Option<&str>) -> Vec<i64> {
    db.query("SELECT id FROM queue_jobs(queue => $1, max_rows => 1000, tag => $2)", &[&queue, &tag])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_dependent_is_blocked_until_its_dependency_is_acked_then_claimable() {
    let mut db = admin().await;
    let q = unique_queue("deps");
    let a = push(&db, &q, &json!({"step": "a"}), &PushOpts::new()).await.unwrap();
    // Duplicates are one dependency.
    let b = push(&db, &q, &json!({"step": "b"}), &PushOpts::new().depends_on([a, a])).await.unwrap();
    let jb = job_of(&db, b).await.unwrap();
    assert_eq!(jb["status"], json!("blocked"));
    assert_eq!(jb["depends_on"], json!([a]));
    assert_eq!(jb["blocked_by"], json!(1));

    // Only the dependency is claimable; the dependent stays blocked while it runs.
    let claimed = pop(&db, &q, 10).await;
    assert_eq!(claimed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![a]);
    assert!(pop(&db, &q, 10).await.is_empty(), "the blocked job was claimed");
    let deps = dependencies(&db, b).await.unwrap();
    assert_eq!(deps.len(), 1, "{deps:?}");
    assert_eq!(deps[0].id, a);
    assert_eq!(deps[0].queue.as_deref(), Some(q.as_str()));
    assert_eq!(deps[0].status, Some(JobStatus::Processing));
    assert!(!deps[0].resolved && !deps[0].run_anyway);
    assert_eq!(deps[0].result, None);
    assert_eq!(deps[0].finished_at, None);
    assert_eq!(status_of(&db, b).await, "blocked");

    ack(&db, a, claimed[0].1, json!({"sum": 3})).await;
    assert_eq!(status_of(&db, b).await, "pending");
    // Read in a transaction too (any GenericClient).
    let tx = db.transaction().await.unwrap();
    let deps = dependencies(&tx, b).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].status, Some(JobStatus::Completed));
    assert!(deps[0].resolved);
    assert_eq!(deps[0].result, Some(json!({"sum": 3})));
    assert!(deps[0].finished_at.is_some());
    assert!(dependencies(&db, a).await.unwrap().is_empty(), "a has no dependencies");

    assert_eq!(pop(&db, &q, 10).await.iter().map(|c| c.0).collect::<Vec<_>>(), vec![b]);

    // A dependency that is neither live nor in history: the server's 22023, nothing pushed.
    let before = jobs_of(&db, &q, None).await;
    let err = push(&db, &q, &json!({}), &PushOpts::new().depends_on([i64::MAX])).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    let err = push_batch(&db, &q, &[json!({})], &PushOpts::new().depends_on([i64::MAX])).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    assert_eq!(jobs_of(&db, &q, None).await, before);
}

/// A dependency as a handler saw it: (id, status, resolved).
type Seen = (i64, Option<JobStatus>, bool);

#[tokio::test]
async fn a_diamond_runs_in_order_and_each_handler_reads_its_inputs() {
    let mut db = admin().await;
    let q = unique_queue("diamond");
    // What every handler saw of its dependencies: id -> [(dep, status, resolved)].
    let seen: Arc<Mutex<HashMap<i64, Vec<Seen>>>> = Arc::default();
    let seen2 = seen.clone();
    let worker = builder()
        .handler(&q, move |job: Job| {
            let seen = seen2.clone();
            async move {
                let deps = job.dependencies().await?;
                seen.lock()
                    .unwrap()
                    .insert(job.id(), deps.iter().map(|d| (d.id, d.status.clone(), d.resolved)).collect());
                let input = |i: usize| -> i64 {
                    deps.get(i).and_then(|d| d.result.as_ref()).and_then(|r| r["n"].as_i64()).unwrap_or(-1_000_000)
                };
                match job.payload()["step"].as_str() {
                    Some("a") => Ok(json!({"n": 1})),
                    Some("b") => Ok(json!({"n": input(0) + 10})),
                    Some("c") => Ok(json!({"n": input(0) + 100})),
                    Some("d") => {
                        Ok(json!({"n": input(0) + input(1), "inputs": deps.iter().map(|d| d.id).collect::<Vec<_>>()}))
                    }
                    _ => Err(JobError::permanent("unknown step")),
                }
            }
        })
        .concurrency(4)
        .build()
        .unwrap();

    // The whole workflow in one transaction, before any of it can run.
    let tx = db.transaction().await.unwrap();
    let a = push(&tx, &q, &json!({"step": "a"}), &PushOpts::new()).await.unwrap();
    let b = push(&tx, &q, &json!({"step": "b"}), &PushOpts::new().depends_on([a])).await.unwrap();
    let c = push(&tx, &q, &json!({"step": "c"}), &PushOpts::new().depends_on(vec![a])).await.unwrap();
    let d = push(&tx, &q, &json!({"step": "d"}), &PushOpts::new().depends_on([c, b])).await.unwrap();
    tx.commit().await.unwrap();
    for id in [b, c, d] {
        assert_eq!(status_of(&db, id).await, "blocked");
    }

    let worker = worker.start().await.unwrap();
    let jd = wait_for_status(&db, d, &["completed", "failed", "cancelled"], Duration::from_secs(15)).await;
    worker.shutdown_with_grace(Duration::from_secs(1)).await;
    assert_eq!(jd["status"], json!("completed"), "{jd}");
    // b = 1 + 10, c = 1 + 100, d = b + c, its inputs in id order.
    assert_eq!(jd["result"], json!({"n": 112, "inputs": [b, c]}));

    // Every handler found its dependencies completed and resolved.
    let seen = seen.lock().unwrap().clone();
    let done = |ids: &[i64]| ids.iter().map(|i| (*i, Some(JobStatus::Completed), true)).collect::<Vec<_>>();
    assert_eq!(seen.get(&a), Some(&vec![]));
    assert_eq!(seen.get(&b), Some(&done(&[a])));
    assert_eq!(seen.get(&c), Some(&done(&[a])));
    assert_eq!(seen.get(&d), Some(&done(&[b, c])));

    // The same through the free helper on the test's own client.
    let deps = dependencies(&db, d).await.unwrap();
    assert_eq!(
        deps.iter().map(|x| (x.id, x.result.clone())).collect::<Vec<_>>(),
        vec![(b, Some(json!({"n": 11}))), (c, Some(json!({"n": 101})))]
    );
}

#[tokio::test]
async fn run_anyway_runs_after_a_failed_dependency_the_others_are_cancelled() {
    let db = admin().await;
    let q = unique_queue("anyway");
    let a = push(&db, &q, &json!({"step": "a"}), &PushOpts::new()).await.unwrap();
    let strict = push(&db, &q, &json!({"step": "strict"}), &PushOpts::new().depends_on([a])).await.unwrap();
    let lenient =
        push(&db, &q, &json!({"step": "lenient"}), &PushOpts::new().depends_on([a]).run_anyway(true)).await.unwrap();
    let explicit_no =
        push(&db, &q, &json!({"step": "no"}), &PushOpts::new().depends_on([a]).run_anyway(false)).await.unwrap();
    let claimed = pop(&db, &q, 10).await;
    assert_eq!(claimed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![a]);
    fail_permanently(&db, a, claimed[0].1).await;

    for id in [strict, explicit_no] {
        let j = job_of(&db, id).await.unwrap();
        assert_eq!(j["status"], json!("cancelled"), "{j}");
        assert_eq!(j["last_error"], json!(format!("dependency {a} ended failed")));
    }
    assert_eq!(status_of(&db, lenient).await, "pending");
    let deps = dependencies(&db, lenient).await.unwrap();
    assert_eq!(deps.len(), 1);
    assert_eq!((deps[0].id, deps[0].status.clone()), (a, Some(JobStatus::Failed)));
    assert!(deps[0].resolved && deps[0].run_anyway, "{deps:?}");
    let deps = dependencies(&db, strict).await.unwrap();
    assert!(!deps[0].resolved && !deps[0].run_anyway, "{deps:?}");

    // Pushed after the dependency died: cancelled at once, or pending with
    // run_anyway; push_batch passes both options too.
    let dead =
        push_batch(&db, &q, &[json!({"n": 1}), json!({"n": 2})], &PushOpts::new().depends_on([a])).await.unwrap();
    let anyway =
        push_batch(&db, &q, &[json!({"n": 3}), json!({"n": 4})], &PushOpts::new().depends_on([a]).run_anyway(true))
            .await
            .unwrap();
    for id in &dead {
        assert_eq!(status_of(&db, *id).await, "cancelled");
    }
    for id in &anyway {
        assert_eq!(status_of(&db, *id).await, "pending");
        assert!(dependencies(&db, *id).await.unwrap()[0].run_anyway);
    }
    let mut claimable: Vec<i64> = pop(&db, &q, 10).await.iter().map(|c| c.0).collect();
    claimable.sort();
    let mut expect = vec![lenient, anyway[0], anyway[1]];
    expect.sort();
    assert_eq!(claimable, expect);
}

#[tokio::test]
async fn tags_are_stored_sorted_and_a_bad_tag_keeps_the_servers_sqlstate() {
    let db = admin().await;
    let q = unique_queue("tags");
    let id =
        push(&db, &q, &json!({}), &PushOpts::new().tags(["billing", "customer:42", "billing", "a"])).await.unwrap();
    assert_eq!(job_of(&db, id).await.unwrap()["tags"], json!(["a", "billing", "customer:42"]));
    let batch =
        push_batch(&db, &q, &[json!({"n": 1}), json!({"n": 2})], &PushOpts::new().tags(vec![String::from("x")]))
            .await
            .unwrap();
    for b in &batch {
        assert_eq!(job_of(&db, *b).await.unwrap()["tags"], json!(["x"]));
    }
    let untagged = push(&db, &q, &json!({}), &PushOpts::new()).await.unwrap();
    assert_eq!(job_of(&db, untagged).await.unwrap()["tags"], Value::Null);
    // A 64-byte tag of 2-byte characters is fine.
    let wide = push(&db, &q, &json!({}), &PushOpts::new().tags(["é".repeat(32)])).await.unwrap();
    assert_eq!(job_of(&db, wide).await.unwrap()["tags"], json!(["é".repeat(32)]));
    assert_eq!(jobs_of(&db, &q, Some("billing")).await, vec![id]);
    assert_eq!(jobs_of(&db, &q, Some("x")).await, vec![batch[1], batch[0]]);

    let before = jobs_of(&db, &q, None).await;
    assert_eq!(before.len(), 5);
    let bad: Vec<Vec<String>> = vec![
        vec![String::new()],
        vec!["t".repeat(65)],
        vec!["é".repeat(33)], // 66 bytes, 33 characters
        (0..21).map(|i| format!("t{i}")).collect(),
    ];
    for tags in bad {
        let err = push(&db, &q, &json!({}), &PushOpts::new().tags(tags.clone())).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{tags:?}: {err}");
        let err = push_batch(&db, &q, &[json!({})], &PushOpts::new().tags(tags.clone())).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{tags:?}: {err}");
    }
    assert_eq!(jobs_of(&db, &q, None).await, before, "a refused push left a job");
}

#[tokio::test]
async fn a_batch_drained_by_a_worker_pushes_its_on_complete_callback_once() {
    let mut db = admin().await;
    let q = unique_queue("bwork");
    let done_q = unique_queue("bdone");
    let fail_q = unique_queue("bfail");
    let batch = batch_open(
        &db,
        &BatchOpts::new()
            .on_complete(Callback::new(&done_q).payload(json!({"report": 7})).priority(Priority::High))
            .on_failure(Callback::new(&fail_q)),
    )
    .await
    .unwrap();

    // Jobs join from a transaction and from another push.
    let tx = db.transaction().await.unwrap();
    let mut ids = vec![push(&tx, &q, &json!({"n": 1}), &PushOpts::new().batch(batch)).await.unwrap()];
    ids.extend(push_batch(&tx, &q, &[json!({"n": 2}), json!({"n": 3})], &PushOpts::new().batch(batch)).await.unwrap());
    tx.commit().await.unwrap();
    ids.push(push(&db, &q, &json!({"n": 4}), &PushOpts::new().batch(batch).tags(["in-batch"])).await.unwrap());
    for id in &ids {
        assert_eq!(job_of(&db, *id).await.unwrap()["batch_id"], json!(batch));
    }

    let open = batch_status(&db, batch).await.unwrap().expect("the batch exists");
    assert_eq!(open.id, batch);
    assert_eq!(open.state, BatchState::Open);
    assert_eq!((open.total, open.pending, open.completed, open.failed, open.cancelled), (4, 4, 0, 0, 0));
    assert_eq!(open.on_complete, Some(json!({"queue": done_q, "payload": {"report": 7}, "priority": -10})));
    assert_eq!(open.on_failure, Some(json!({"queue": fail_q, "payload": {}})));
    assert_eq!((open.complete_job, open.failure_job, open.closed_at, open.finished_at), (None, None, None, None));

    let closed = batch_close(&db, batch).await.unwrap();
    assert_eq!(closed.state, BatchState::Closed);
    assert_eq!((closed.total, closed.pending), (4, 4));
    assert!(closed.closed_at.is_some());
    // Closed: no more jobs join, and it cannot be closed again.
    let err = push(&db, &q, &json!({"n": 5}), &PushOpts::new().batch(batch)).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    let err = batch_close(&db, batch).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    assert!(jobs_of(&db, &done_q, None).await.is_empty(), "the callback came before the jobs ran");

    let worker = builder()
        .handler(&q, |job: Job| async move { Ok::<Value, JobError>(json!({"n": job.payload()["n"]})) })
        .concurrency(4)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let done = wait_for("the batch to be done", Duration::from_secs(15), || {
        let db = &db;
        async move { batch_status(db, batch).await.unwrap().filter(|s| s.state == BatchState::Done) }
    })
    .await;
    worker.shutdown_with_grace(Duration::from_secs(1)).await;
    for id in &ids {
        assert_eq!(status_of(&db, *id).await, "completed");
    }
    assert_eq!(
        (done.total, done.pending, done.running, done.completed, done.failed, done.cancelled),
        (4, 0, 0, 4, 0, 0)
    );
    assert_eq!(done.progress, Some(1.0));
    assert_eq!(done.failure_job, None, "no job failed: no on_failure");
    assert!(done.finished_at.is_some());
    let cb = done.complete_job.expect("the on_complete job's id");

    // Exactly one callback job, with the summary in its payload.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jobs_of(&db, &done_q, None).await, vec![cb]);
    assert!(jobs_of(&db, &fail_q, None).await.is_empty());
    let j = job_of(&db, cb).await.unwrap();
    assert_eq!(j["status"], json!("pending"));
    assert_eq!(j["priority"], json!(-10));
    assert_eq!(
        j["payload"],
        json!({"report": 7, "batch": {"id": batch, "total": 4, "completed": 4, "failed": 0, "cancelled": 0}})
    );
    // Done is final: cancel and close refuse it, and nothing else is pushed.
    assert!(!batch_cancel(&db, batch).await.unwrap());
    assert!(batch_close(&db, batch).await.is_err());
    assert_eq!(jobs_of(&db, &done_q, None).await, vec![cb]);
}

#[tokio::test]
async fn a_failed_job_also_pushes_on_failure_and_a_cancelled_batch_pushes_nothing() {
    let db = admin().await;
    let q = unique_queue("bfailing");
    let done_q = unique_queue("bdone");
    let fail_q = unique_queue("bfail");
    let opts = BatchOpts::new()
        .on_complete(Callback::new(&done_q))
        .on_failure(Callback::new(&fail_q).priority("low".parse::<Priority>().unwrap()));

    // One of two jobs fails: both callbacks, once each.
    let batch = batch_open(&db, &opts).await.unwrap();
    push_batch(&db, &q, &[json!({"n": 1}), json!({"n": 2})], &PushOpts::new().batch(batch)).await.unwrap();
    batch_close(&db, batch).await.unwrap();
    let claimed = pop(&db, &q, 10).await;
    assert_eq!(claimed.len(), 2);
    ack(&db, claimed[0].0, claimed[0].1, json!(null)).await;
    assert_eq!(batch_status(&db, batch).await.unwrap().unwrap().state, BatchState::Closed);
    fail_permanently(&db, claimed[1].0, claimed[1].1).await;
    let st = batch_status(&db, batch).await.unwrap().unwrap();
    assert_eq!(st.state, BatchState::Done);
    assert_eq!((st.completed, st.failed, st.pending), (1, 1, 0));
    let (ok, bad) = (st.complete_job.expect("on_complete"), st.failure_job.expect("on_failure"));
    assert_eq!(jobs_of(&db, &done_q, None).await, vec![ok]);
    assert_eq!(jobs_of(&db, &fail_q, None).await, vec![bad]);
    let summary = json!({"id": batch, "total": 2, "completed": 1, "failed": 1, "cancelled": 0});
    assert_eq!(job_of(&db, ok).await.unwrap()["payload"], json!({"batch": summary}));
    let jb = job_of(&db, bad).await.unwrap();
    assert_eq!((jb["payload"].clone(), jb["priority"].clone()), (json!({"batch": summary}), json!(10)));

    // Cancelled while open: its waiting jobs are cancelled, no callback.
    let batch = batch_open(&db, &opts).await.unwrap();
    let ids = push_batch(&db, &q, &[json!({"n": 3}), json!({"n": 4})], &PushOpts::new().batch(batch)).await.unwrap();
    assert!(batch_cancel(&db, batch).await.unwrap());
    assert!(!batch_cancel(&db, batch).await.unwrap(), "a second cancel");
    for id in &ids {
        assert_eq!(status_of(&db, *id).await, "cancelled");
    }
    let st = batch_status(&db, batch).await.unwrap().unwrap();
    assert_eq!(st.state, BatchState::Cancelled);
    assert_eq!((st.total, st.pending, st.cancelled, st.complete_job, st.failure_job), (2, 0, 2, None, None));
    let err = push(&db, &q, &json!({}), &PushOpts::new().batch(batch)).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    assert_eq!(jobs_of(&db, &done_q, None).await.len(), 1, "the cancelled batch pushed a callback");
    assert_eq!(jobs_of(&db, &fail_q, None).await.len(), 1);

    // Unknown batches, bad callback specs: None, false, or the server's 22023.
    let unknown = i64::MAX;
    assert_eq!(batch_status(&db, unknown).await.unwrap(), None);
    assert!(!batch_cancel(&db, unknown).await.unwrap());
    let err = batch_close(&db, unknown).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    let err = push(&db, &q, &json!({}), &PushOpts::new().batch(unknown)).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    for bad in [
        BatchOpts::new().on_complete(Callback::new("no spaces allowed")),
        BatchOpts::new().on_failure(Callback::new(&done_q).payload(json!([1, 2]))),
    ] {
        let err = batch_open(&db, &bad).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{bad:?}: {err}");
    }
    // No callbacks at all: closing an empty batch makes it done at once.
    let empty = batch_open(&db, &BatchOpts::new()).await.unwrap();
    let st = batch_close(&db, empty).await.unwrap();
    assert_eq!((st.state, st.total, st.progress, st.on_complete), (BatchState::Done, 0, None, None));
}
