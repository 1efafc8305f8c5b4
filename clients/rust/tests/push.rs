//! push / push_batch against the real extension.
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use queue_client::{push, push_batch, Error, Job, JobError, Priority, PushOpts};
use serde_json::{json, Value};

#[tokio::test]
async fn push_maps_every_option_of_queue_push() {
    let db = admin().await;
    let q = unique_queue("push");
    let run_at = SystemTime::now() + Duration::from_secs(3600);
    let opts = PushOpts::new()
        .priority(Priority::High)
        .run_at(run_at)
        .serial_group(format!("{q}:g"))
        .max_attempts(7)
        .timeout(Duration::from_secs(90))
        .backoff_base(Duration::from_secs(2))
        .backoff_max(Duration::from_secs(180))
        .retry_delays([Duration::from_secs(1), Duration::from_secs(300), Duration::from_micros(1_500_000)])
        .dedupe_key("k-1");
    let id = push(&db, &q, &json!({"to": "a@example.com"}), &opts).await.unwrap();
    assert!(id > 0);
    let j = job_of(&db, id).await.expect("the job exists");
    assert_eq!(j["queue"], json!(q));
    assert_eq!(j["payload"], json!({"to": "a@example.com"}));
    assert_eq!(j["priority"], json!(-10));
    assert_eq!(j["status"], json!("scheduled"));
    assert_eq!(j["serial_group"], json!(format!("{q}:g")));
    assert_eq!(j["max_attempts"], json!(7));
    assert_eq!(j["timeout"], json!("00:01:30"));
    assert_eq!(j["backoff_base"], json!("00:00:02"));
    assert_eq!(j["backoff_max"], json!("00:03:00"));
    assert_eq!(j["retry_delays"], json!(["00:00:01", "00:05:00", "00:00:01.5"]));
    assert_eq!(j["dedupe_key"], json!("k-1"));
    // run_at to the microsecond
    let expect = run_at.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
    let got: i64 = db
        .query_one("SELECT (extract(epoch FROM (queue_job($1) ->> 'run_at')::timestamptz) * 1000000)::bigint", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, expect);

    // Same dedupe key while the first is live: the same id, nothing added.
    let again = push(&db, &q, &json!({"to": "b@example.com"}), &PushOpts::new().dedupe_key("k-1")).await.unwrap();
    assert_eq!(again, id);
}

#[tokio::test]
async fn priorities_integers_delays_and_typed_payloads() {
    let db = admin().await;
    let q = unique_queue("prio");
    #[derive(serde::Serialize)]
    struct Email<'a> {
        to: &'a str,
    }
    let a = push(&db, &q, &json!({"n": 1}), &PushOpts::new().priority(Priority::Low)).await.unwrap();
    let b = push(&db, &q, &json!({"n": 2}), &PushOpts::new().priority(Priority::Critical)).await.unwrap();
    let c = push(&db, &q, &json!({"n": 3}), &PushOpts::new().priority(-3)).await.unwrap();
    let d =
        push(&db, &q, &Email { to: "x@y" }, &PushOpts::new().priority("7".parse::<Priority>().unwrap())).await.unwrap();
    let e = push(&db, &q, &json!(null), &PushOpts::new().delay(Duration::from_millis(60_000))).await.unwrap();
    let mut prios = Vec::new();
    for id in [a, b, c, d] {
        prios.push(job_of(&db, id).await.unwrap()["priority"].as_i64().unwrap());
    }
    assert_eq!(prios, vec![10, -20, -3, 7]);
    assert_eq!(job_of(&db, d).await.unwrap()["payload"], json!({"to": "x@y"}));
    let je = job_of(&db, e).await.unwrap();
    assert_eq!(je["status"], json!("scheduled"));
    let delay: f64 = db
        .query_one(
            "SELECT extract(epoch FROM (j->>'run_at')::timestamptz - (j->>'created_at')::timestamptz)::float8 FROM queue_job($1) j",
            &[&e],
        )
        .await
        .unwrap()
        .get(0);
    assert!((delay - 60.0).abs() < 1.0, "a 60 s delay gave {delay} s");
    // Claim order follows the priorities.
    let order: Vec<i64> =
        db.query("SELECT id FROM queue_peek($1, 10)", &[&q]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(order, vec![b, c, d, a]);
}

#[tokio::test]
async fn push_batch_returns_ids_in_payload_order_with_options() {
    let db = admin().await;
    let q = unique_queue("batch");
    let payloads = vec![
        json!({"n": 0}),
        json!([1, 2, "three"]),
        json!("a \"quoted\" \\ string"),
        json!(42),
        json!(null),
        json!({"{": "}"}),
    ];
    let ids = push_batch(&db, &q, &payloads, &PushOpts::new().priority(Priority::Low).max_attempts(2)).await.unwrap();
    assert_eq!(ids.len(), payloads.len());
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "ids ascend with the payloads");
    for (i, id) in ids.iter().enumerate() {
        let j = job_of(&db, *id).await.unwrap();
        assert_eq!(j["payload"], payloads[i]);
        assert_eq!(j["priority"], json!(10));
        assert_eq!(j["max_attempts"], json!(2));
    }
    let none: Vec<Value> = Vec::new();
    assert!(push_batch(&db, &q, &none, &PushOpts::new()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_push_in_a_rolled_back_transaction_creates_no_job() {
    let mut db = admin().await;
    let observer = admin().await;
    let q = unique_queue("tx");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let seen2 = seen.clone();
    let worker = builder()
        .handler(&q, move |job: Job| {
            let seen = seen2.clone();
            async move {
                seen.lock().unwrap().push(job.id());
                Ok::<Value, JobError>(Value::Null)
            }
        })
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();

    let tx = db.transaction().await.unwrap();
    let rolled_back = push(&tx, &q, &json!({"n": 1}), &PushOpts::new()).await.unwrap();
    let batch = push_batch(&tx, &q, &[json!({"n": 2}), json!({"n": 3})], &PushOpts::new()).await.unwrap();
    // Visible inside the transaction...
    let inside: Value = tx.query_one("SELECT queue_job($1)", &[&rolled_back]).await.unwrap().get(0);
    assert_eq!(inside["status"], json!("pending"));
    tokio::time::sleep(Duration::from_millis(300)).await; // ...but not to the worker, polling every 100 ms.
    assert!(seen.lock().unwrap().is_empty());
    tx.rollback().await.unwrap();

    for id in std::iter::once(rolled_back).chain(batch) {
        assert!(job_of(&observer, id).await.is_none(), "job {id} must not exist after the rollback");
    }
    let size: i64 = observer.query_one("SELECT queue_size($1)", &[&q]).await.unwrap().get(0);
    assert_eq!(size, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.lock().unwrap().is_empty(), "the worker ran a job of a rolled-back transaction");

    let tx = db.transaction().await.unwrap();
    let committed = push(&tx, &q, &json!({"n": 4}), &PushOpts::new()).await.unwrap();
    tx.commit().await.unwrap();
    wait_for("the committed job to run", Duration::from_secs(5), || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().contains(&committed).then_some(()) }
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), vec![committed]);
    worker.shutdown_with_grace(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn misuse_fails_before_sql_and_server_checks_keep_their_sqlstate() {
    let db = admin().await;
    let q = unique_queue("misuse");
    let both = PushOpts::new().delay(Duration::from_secs(1)).run_at(SystemTime::now());
    assert!(matches!(push(&db, &q, &json!({}), &both).await, Err(Error::InvalidArgument(_))));
    let huge = PushOpts::new().timeout(Duration::from_secs(u64::MAX));
    assert!(matches!(push(&db, &q, &json!({}), &huge).await, Err(Error::InvalidArgument(_))));
    assert!("urgent".parse::<Priority>().is_err());
    let err = push(&db, "no spaces allowed", &json!({}), &PushOpts::new()).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    let err = push(&db, &q, &json!({}), &PushOpts::new().max_attempts(0)).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    // Nothing was pushed by the failed calls.
    let size: i64 = db.query_one("SELECT queue_size($1)", &[&q]).await.unwrap().get(0);
    assert_eq!(size, 0);

    // The worker builder refuses what cannot work.
    let noop = |_job: Job| async { Ok::<Value, JobError>(Value::Null) };
    assert!(matches!(builder().build(), Err(Error::InvalidArgument(_))));
    assert!(matches!(builder().handler("bad name!", noop).build(), Err(Error::InvalidArgument(_))));
    assert!(matches!(builder().handler("ok", noop).concurrency(0).build(), Err(Error::InvalidArgument(_))));
    assert!(matches!(builder().handler("ok", noop).handler("ok", noop).build(), Err(Error::InvalidArgument(_))));
}
