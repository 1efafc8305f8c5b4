//! Graceful stop: jobs finish within the grace or are given back, never lost.
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use queue_client::hooks::ReleaseVia;
use queue_client::{push, Job, JobError, PushOpts};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Another worker finishes whatever was given back: nothing is lost.
async fn drain(q: &str, ids: &[i64]) {
    let db = admin().await;
    let w = builder()
        .poll_interval(Duration::from_millis(200))
        .handler(q, |_job: Job| async { Ok::<Value, JobError>(json!("finished by the next worker")) })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    for id in ids {
        wait_for_status(&db, *id, &["completed"], Duration::from_secs(10)).await;
    }
    w.shutdown_with_grace(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_mid_job_finishes_within_the_grace_or_gives_back() {
    let db = admin().await;
    let release = has_queue_release(&db).await;
    let q = unique_queue("stop");
    let rec = Recorder::default();
    let cancelled_seen: Arc<Mutex<bool>> = Arc::default();
    let c2 = cancelled_seen.clone();
    let worker = builder()
        .concurrency(2)
        .handler(&q, move |job: Job| {
            let c = c2.clone();
            async move {
                let ms = job.payload()["ms"].as_u64().unwrap();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = job.cancelled() => { *c.lock().unwrap() = true; }
                }
                Ok::<Value, JobError>(json!("done"))
            }
        })
        .hooks(rec.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let quick = push(&db, &q, &json!({"ms": 300}), &PushOpts::new()).await.unwrap();
    let slow = push(&db, &q, &json!({"ms": 60_000}), &PushOpts::new()).await.unwrap();
    wait_for("both jobs to start", Duration::from_secs(5), || {
        let rec = rec.clone();
        async move { (rec.count(|e| matches!(e, Event::Started { .. })) == 2).then_some(()) }
    })
    .await;
    let handle = worker.shutdown_handle();
    let t0 = Instant::now();
    let stopping = tokio::spawn(worker.shutdown_with_grace(Duration::from_millis(800)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(handle.is_shutting_down());
    let late = push(&db, &q, &json!({"ms": 1}), &PushOpts::new()).await.unwrap(); // must not be claimed
    stopping.await.unwrap();
    let took = t0.elapsed();
    println!("shutdown with an 800 ms grace took {} ms", took.as_millis());
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(4), "stop took {took:?}");
    handle.stopped().await; // already stopped: returns at once

    assert_eq!(wait_for_status(&db, quick, &["completed"], Duration::from_secs(1)).await["attempts"], json!(1));
    assert_eq!(job_of(&db, late).await.unwrap()["status"], json!("pending"), "a stopping worker claimed a new job");
    assert_eq!(rec.count(|e| matches!(e, Event::Started { id, .. } if *id == late)), 0);
    let js = job_of(&db, slow).await.unwrap();
    assert_eq!(js["status"], json!("pending"), "the slow job is {}, not back in line", js["status"]);
    let rel = rec.find(|e| match e {
        Event::Released { id, via, released } if *id == slow => Some((*via, *released)),
        _ => None,
    });
    assert!(rel.is_some(), "the worker reported giving the slow job back");
    assert_eq!(rec.count(|e| matches!(e, Event::Finished { id, .. } if *id == slow)), 0, "a given-back job was acked");
    if release {
        assert_eq!(rel, Some((ReleaseVia::QueueRelease, true)));
        let left = js["max_attempts"].as_i64().unwrap() - js["attempts"].as_i64().unwrap();
        assert_eq!(left, 3, "the give-back used an attempt: {js}");
    } else {
        println!("skipped: {NO_RELEASE}");
        assert_eq!(rel, Some((ReleaseVia::QueueFail, true)));
    }
    drain(&q, &[slow, late]).await;
}

/// The example binary, built by `cargo test` next to the test executables.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/debug/deps -> target/debug
    let bin = dir.join("examples").join(format!("worker{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} was not built (cargo test builds the examples; not with --test alone)", bin.display());
    // A stale build would test old code: the example must be newer than every source file.
    let built = std::fs::metadata(&bin).unwrap().modified().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["src", "examples"] {
        for entry in std::fs::read_dir(src.join(dir)).unwrap() {
            let f = entry.unwrap().path();
            let changed = std::fs::metadata(&f).unwrap().modified().unwrap();
            assert!(
                changed <= built,
                "{} is older than {}: build it (cargo test -p queue-client builds it)",
                bin.display(),
                f.display()
            );
        }
    }
    bin
}

#[tokio::test]
async fn sigterm_mid_job_a_quick_job_completes_a_long_one_is_given_back() {
    let db = admin().await;
    let release = has_queue_release(&db).await;
    let q = unique_queue("sigterm");
    let mut child = tokio::process::Command::new(example_binary())
        .env("DATABASE_URL", dsn())
        .env("QUEUE", &q)
        .env("GRACE_MS", "1500")
        .env("WORKER_NAME", format!("sigterm-{q}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the example");
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let l2 = lines.clone();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            l2.lock().unwrap().push(line);
        }
    });
    let has = |pat: String| {
        let lines = lines.clone();
        move || {
            let lines = lines.clone();
            let pat = pat.clone();
            async move { lines.lock().unwrap().iter().any(|l| l.starts_with(&pat)).then_some(()) }
        }
    };
    wait_for("the child worker to be ready", Duration::from_secs(10), has("ready".into())).await;
    let quick = push(&db, &q, &json!({"ms": 700}), &PushOpts::new()).await.unwrap();
    let slow = push(&db, &q, &json!({"ms": 30_000}), &PushOpts::new()).await.unwrap();
    wait_for("the quick job to start", Duration::from_secs(5), has(format!("started job {quick} "))).await;
    wait_for("the slow job to start", Duration::from_secs(5), has(format!("started job {slow} "))).await;
    let t0 = Instant::now();
    let pid = child.id().unwrap();
    let st = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_millis(1500 + 8000), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the worker did not exit within the grace (+8 s): {:?}", lines.lock().unwrap()))
        .unwrap();
    let took = t0.elapsed();
    println!("the child exited {} ms after SIGTERM (grace 1500 ms), {status}", took.as_millis());
    assert!(status.success(), "exit status {status}; output {:?}", lines.lock().unwrap());
    assert!(took < Duration::from_millis(1500 + 5000), "stop took {took:?}");

    // The quick job finished within the grace, in its first attempt.
    let jq = job_of(&db, quick).await.unwrap();
    assert_eq!(jq["status"], json!("completed"));
    assert_eq!(jq["attempts"], json!(1));
    has(format!("completed job {quick} acked=true"))().await.expect("the child reported the quick job acked");
    // The slow one is back in line: never lost, never left processing.
    let js = job_of(&db, slow).await.expect("the slow job still exists");
    assert_eq!(js["status"], json!("pending"), "the slow job is {}", js["status"]);
    if release {
        has(format!("released job {slow} via=QueueRelease released=true"))()
            .await
            .unwrap_or_else(|| panic!("no queue_release give-back reported: {:?}", lines.lock().unwrap()));
        assert_eq!(js["max_attempts"].as_i64().unwrap() - js["attempts"].as_i64().unwrap(), 3, "{js}");
    } else {
        println!("skipped: {NO_RELEASE}");
        has(format!("released job {slow} via=QueueFail"))().await.expect("a give-back through queue_fail");
    }
    assert!(lines.lock().unwrap().iter().any(|l| l == "stopped"));
    drain(&q, &[slow]).await;
}

#[tokio::test]
async fn the_example_pushes_in_a_transaction_processes_and_stops_on_sigint() {
    let db = admin().await;
    let q = unique_queue("example");
    let mut child = tokio::process::Command::new(example_binary())
        .env("DATABASE_URL", dsn())
        .env("QUEUE", &q)
        .env("PUSH_DEMO_JOBS", "3")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the example");
    wait_for("the example to complete 3 jobs", Duration::from_secs(15), || async {
        let n: i64 =
            db.query_one("SELECT coalesce((queue_stats($1) ->> 'completed')::bigint, 0)", &[&q]).await.unwrap().get(0);
        (n == 3).then_some(())
    })
    .await;
    let pid = child.id().unwrap();
    assert!(std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("the example stops").unwrap();
    assert!(status.success(), "{status}");
}
