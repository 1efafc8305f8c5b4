//! Integration tests: the built `queuectl` binary as a subprocess against a
//! real cluster with the extension (started by `queuectl/run-tests.sh`, which
//! sets `QUEUECTL_TEST_DATABASE_URL`). Set-up and checks use the extension's
//! SQL functions over a real connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_queuectl");

fn url() -> Option<String> {
    let u = std::env::var("QUEUECTL_TEST_DATABASE_URL").ok();
    if u.is_none() {
        eprintln!("QUEUECTL_TEST_DATABASE_URL is not set: skipped (queuectl/run-tests.sh sets it)");
    }
    u
}

macro_rules! need_db {
    () => {
        match url() {
            Some(u) => u,
            None => return,
        }
    };
}

/// A queue name of this test run only.
fn queue(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("t.{tag}.{}.{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

fn base_cmd(url: &str) -> Command {
    let mut c = Command::new(BIN);
    for v in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSSLMODE"] {
        c.env_remove(v);
    }
    c.env("DATABASE_URL", url);
    c
}

fn qc(url: &str, args: &[&str]) -> Output {
    base_cmd(url).args(args).stdin(Stdio::null()).output().expect("run queuectl")
}

fn qc_stdin(url: &str, args: &[&str], input: &str) -> Output {
    let mut child =
        base_cmd(url).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and prints JSON; its JSON.
fn qc_json(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let o = qc(url, &all);
    assert_eq!(code(&o), 0, "queuectl {args:?} failed: {}{}", stdout(&o), stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&o)))
}

fn push(url: &str, q: &str, payload: &str, extra: &[&str]) -> i64 {
    let mut args = vec!["push", q, payload];
    args.extend_from_slice(extra);
    let o = qc(url, &args);
    assert_eq!(code(&o), 0, "push failed: {}", stderr(&o));
    stdout(&o).trim().parse().expect("push prints the id")
}

/// One SQL statement over a real connection; the first column of every row as JSON.
fn sql(url: &str, query: &str) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let rows = client.query(&format!("SELECT row_to_json(t)::jsonb FROM ({query}) t"), &[]).await.unwrap();
        rows.iter()
            .map(|r| {
                let v: Value = r.get(0);
                v.as_object().and_then(|o| o.values().next().cloned()).unwrap_or(Value::Null)
            })
            .collect()
    })
}

fn job(url: &str, id: i64) -> Value {
    sql(url, &format!("SELECT queue_job({id}) AS j")).pop().unwrap_or(Value::Null)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Dead jobs made through the API: push, claim, fail permanently.
fn make_dead(url: &str, q: &str, n: usize) -> Vec<i64> {
    sql(
        url,
        &format!(
            "SELECT count(*) AS n FROM queue_push_batch('{q}', array_fill('{{\"dead\": true}}'::jsonb, array[{n}]))"
        ),
    );
    let ids: Vec<i64> = sql(
        url,
        &format!(
            "SELECT id FROM (SELECT id, queue_fail(id, 'boom: ' || id, permanent => true) AS s \
             FROM queue_pop('{q}', 'test-worker', {n})) x WHERE s = 'failed'"
        ),
    )
    .iter()
    .filter_map(Value::as_i64)
    .collect();
    assert_eq!(ids.len(), n);
    ids
}

#[test]
fn status_list_and_describe_show_a_pushed_queue() {
    let url = need_db!();
    let q = queue("status");
    push(&url, &q, r#"{"n": 1}"#, &["--priority", "high"]);
    push(&url, &q, r#"{"n": 2}"#, &[]);
    push(&url, &q, r#"{"n": 3}"#, &["--priority", "low"]);
    push(&url, &q, r#"{"n": 4}"#, &["--delay", "10m"]);

    let list = qc_json(&url, &["list"]);
    let row = list.as_array().unwrap().iter().find(|r| r["queue"] == json!(q)).expect("queue listed");
    assert_eq!(row["total_size"], json!(4));
    assert_eq!(row["pending"], json!(3));
    assert_eq!(row["scheduled"], json!(1));

    let st = qc_json(&url, &["status", &q]);
    assert_eq!(st["stats"]["priority_breakdown"], json!({"high": 1, "normal": 2, "low": 1}));
    assert!(st["metrics"].get("p95_run_ms").is_some());
    assert!(st["health"].get("healthy").is_some());
    assert!(st["workers"].is_array());

    let o = qc(&url, &["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains(&q), "{text}");
    assert!(text.contains("P95 RUN") && text.contains("health"), "{text}");

    let o = qc(&url, &["status", &q]);
    assert!(stdout(&o).contains("4 waiting (3 pending, 1 scheduled, 0 retrying)"), "{}", stdout(&o));
    assert!(stdout(&o).contains("high 1, normal 2, low 1"), "{}", stdout(&o));

    let d = qc(&url, &["describe", &q]);
    assert_eq!(code(&d), 0);
    assert!(stdout(&d).contains("next jobs (claim order)"));
    let dj = qc_json(&url, &["describe", &q]);
    assert_eq!(dj["next"].as_array().unwrap().len(), 3);
    assert_eq!(dj["next"][0]["priority"], json!(-10), "claim order: high first");

    assert_eq!(code(&qc(&url, &["describe", "no.such.queue"])), 3);
    assert_eq!(code(&qc(&url, &["status", "no.such.queue"])), 3);
}

/// Claims up to `n` jobs of `queue` as a worker would (`queue_pop`, bound
/// parameters); their ids. The jobs stay processing.
fn claim(url: &str, queue: &str, n: i32) -> Vec<i64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let rows =
            client.query("SELECT id FROM queue_pop($1::text, 'cli-test', $2::int)", &[&queue, &n]).await.unwrap();
        rows.iter().map(|r| r.get::<_, i64>(0)).collect()
    })
}

/// The line of a table whose first column is exactly `name`.
fn table_row(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{text}"))
        .to_owned()
}

/// The queues `queue_health()` reports paused (through `status`, which exits
/// 0 whether or not the cluster is healthy).
fn paused_queues(url: &str) -> Value {
    qc_json(url, &["status"])["health"]["paused_queues"].clone()
}

#[test]
fn pause_and_resume_a_queue() {
    let url = need_db!();
    let q = queue("pause");
    let first = push(&url, &q, r#"{"n": 1}"#, &[]);

    let o = qc(&url, &["pause", &q]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("paused {q}\n"));
    // Pushes go on while paused.
    let second = push(&url, &q, r#"{"n": 2}"#, &[]);

    // list, status and describe mark it; the health report names it.
    let list = qc_json(&url, &["list"]);
    let row = list.as_array().unwrap().iter().find(|r| r["queue"] == json!(q)).expect("queue listed");
    assert_eq!(row["paused"], json!(true));
    assert_eq!(row["pending"], json!(2));
    let text = stdout(&qc(&url, &["list"]));
    assert!(text.lines().next().unwrap().trim_end().ends_with("PAUSED"), "{text}");
    assert!(table_row(&text, &q).trim_end().ends_with("PAUSED"), "{text}");
    let text = stdout(&qc(&url, &["status"]));
    assert!(table_row(&text, &q).trim_end().ends_with("PAUSED"), "{text}");
    let line = text.lines().find(|l| l.starts_with("paused ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&q), "{text}");
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["paused"], json!(true));
    let text = stdout(&qc(&url, &["status", &q]));
    assert!(text.contains("  paused     yes, since ") && text.contains(&format!("queuectl resume {q}")), "{text}");
    let text = stdout(&qc(&url, &["describe", &q]));
    assert!(text.contains("  paused      yes"), "{text}");
    assert!(paused_queues(&url).as_array().unwrap().contains(&json!(q)));

    // A worker's claim gets nothing; the jobs wait.
    assert_eq!(claim(&url, &q, 10), Vec::<i64>::new());
    assert_eq!(status_of(&url, first), "pending");
    assert_eq!(status_of(&url, second), "pending");

    // Pausing again changes nothing and says so.
    let o = qc(&url, &["pause", &q]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{q} was already paused\n"));
    assert_eq!(qc_json(&url, &["pause", &q]), json!({"queue": q, "paused": true, "changed": false}));

    // Resume: the jobs are handed out again, in order.
    let o = qc(&url, &["resume", &q]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("resumed {q}\n"));
    let row = qc_json(&url, &["list"]).as_array().unwrap().iter().find(|r| r["queue"] == json!(q)).cloned().unwrap();
    assert_eq!(row["paused"], json!(false));
    assert!(!table_row(&stdout(&qc(&url, &["list"])), &q).contains("PAUSED"));
    assert!(stdout(&qc(&url, &["status", &q])).contains("  paused     no"));
    assert!(!paused_queues(&url).as_array().unwrap().contains(&json!(q)));
    assert_eq!(claim(&url, &q, 10), vec![first, second]);
    let o = qc(&url, &["resume", &q]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{q} was not paused\n"));
    assert_eq!(qc_json(&url, &["resume", &q]), json!({"queue": q, "paused": false, "changed": false}));
    assert_eq!(qc_json(&url, &["pause", &q]), json!({"queue": q, "paused": true, "changed": true}));
    assert_eq!(qc_json(&url, &["resume", &q]), json!({"queue": q, "paused": false, "changed": true}));

    // A queue without jobs can be paused: a note on stderr in case of a typo.
    let empty = queue("pause.empty");
    let o = qc(&url, &["pause", &empty]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("paused {empty}\n"));
    assert!(stderr(&o).contains("has had no job yet"), "{}", stderr(&o));
    assert!(stdout(&qc(&url, &["status"])).lines().any(|l| l.starts_with("paused ") && l.contains(&empty)));
    assert_eq!(code(&qc(&url, &["resume", &empty])), 0);

    // A bad name is the server's 22023: exit 2, and nothing is paused.
    let settings = || sql(&url, "SELECT jsonb_agg(s ORDER BY s.queue) AS s FROM queue_settings() s");
    let (before, paused_before) = (settings(), paused_queues(&url));
    for verb in ["pause", "resume"] {
        let o = qc(&url, &[verb, "bad name!"]);
        assert_eq!(code(&o), 2, "{verb}: {}{}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains("SQLSTATE 22023"), "{}", stderr(&o));
        assert_eq!(stdout(&o), "");
    }
    assert_eq!(settings(), before);
    assert_eq!(paused_queues(&url), paused_before);
    // A role without queue_admin is refused (42501): exit 1, still not paused.
    let role = format!("queuectl_producer_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        // A role name cannot be a bound parameter; this one is made of digits here.
        client
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; GRANT queue_producer TO {role}"
            ))
            .await
            .unwrap();
    });
    let mut cfg: tokio_postgres::Config = url.parse().unwrap();
    cfg.user(&role);
    let producer_url = match (&cfg.get_hosts()[0], cfg.get_ports()[0]) {
        (tokio_postgres::config::Host::Tcp(h), p) => {
            format!("postgres://{role}@{h}:{p}/{}", cfg.get_dbname().unwrap())
        }
        _ => panic!("a TCP test URL"),
    };
    let o = qc(&producer_url, &["pause", &q]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("SQLSTATE 42501"), "{}", stderr(&o));
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["paused"], json!(false));
    // The dashboard of such a role answers the refusal with 403, not 500.
    let srv = serve(&producer_url, 25496, &[]);
    let (status, body) = http(srv.1, "POST", &format!("/api/queues/{q}/pause"), &[("X-Queuectl", "1")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("42501"), "{body}");
    drop(srv);
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["paused"], json!(false));
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
    });
}

#[test]
fn a_listing_into_a_closed_pipe_ends_without_a_panic() {
    let url = need_db!();
    let q = queue("pipe");
    for n in 0..50 {
        push(&url, &q, &format!("{{\"n\": {n}}}"), &[]);
    }
    // The reader goes away before queuectl writes: its first write meets a
    // closed pipe, as with `queuectl jobs | head -1` on a long listing.
    let mut child = base_cmd(&url)
        .args(["jobs", &q, "--limit", "50"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run queuectl");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait for queuectl");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.signal() == Some(libc::SIGPIPE) || o.status.success(),
        "ended by SIGPIPE or cleanly, not {:?}: {}",
        o.status,
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn push_takes_every_option() {
    let url = need_db!();
    let q = queue("push");
    let id = push(
        &url,
        &q,
        r#"{"to": "a@example.com"}"#,
        &[
            "--priority",
            "critical",
            "--max-attempts",
            "5",
            "--timeout",
            "30s",
            "--serial-group",
            "g1",
            "--retry-delays",
            "1m,5m",
            "--backoff-base",
            "2s",
            "--backoff-max",
            "1h",
        ],
    );
    let j = job(&url, id);
    assert_eq!(j["priority"], json!(-20));
    assert_eq!(j["max_attempts"], json!(5));
    assert_eq!(j["timeout"], json!("00:00:30"));
    assert_eq!(j["serial_group"], json!("g1"));
    assert_eq!(j["retry_delays"], json!(["00:01:00", "00:05:00"]));
    assert_eq!(j["payload"], json!({"to": "a@example.com"}));

    let d = push(&url, &q, "{}", &["--delay", "1h", "--priority", "7"]);
    assert_eq!(job(&url, d)["status"], json!("scheduled"));
    assert_eq!(job(&url, d)["priority"], json!(7));
    let r = push(&url, &q, "{}", &["--run-at", "2031-01-02T03:04:05Z"]);
    assert_eq!(job(&url, r)["run_at"], json!("2031-01-02T03:04:05+00:00"));

    let a = push(&url, &q, "{}", &["--dedupe-key", "k1"]);
    let b = push(&url, &q, "{}", &["--dedupe-key", "k1"]);
    assert_eq!(a, b, "a live job with the same dedupe key is returned");

    let o = qc_stdin(&url, &["push", &q, "-", "--json"], r#"{"from": "stdin"}"#);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(job(&url, v["id"].as_i64().unwrap())["payload"], json!({"from": "stdin"}));

    // Usage errors: exit 2, nothing pushed.
    let before = qc_json(&url, &["status", &q])["stats"]["total_pushed"].clone();
    assert_eq!(code(&qc(&url, &["push", &q, "{not json"])), 2);
    assert_eq!(code(&qc(&url, &["push", "bad name!", "{}"])), 2);
    assert_eq!(code(&qc(&url, &["push", &q, "{}", "--priority", "urgent"])), 2);
    assert_eq!(code(&qc(&url, &["push", &q, "{}", "--delay", "soon"])), 2);
    assert_eq!(code(&qc(&url, &["push", &q, "{}", "--max-attempts", "0"])), 2);
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["total_pushed"], before);
}

#[test]
fn job_shows_everything_and_unknown_ids_exit_3() {
    let url = need_db!();
    let q = queue("job");
    let id = push(&url, &q, r#"{"hello": "world"}"#, &[]);
    let o = qc(&url, &["job", &id.to_string()]);
    assert_eq!(code(&o), 0);
    let text = stdout(&o);
    assert!(text.contains("pending") && text.contains("\"hello\": \"world\""), "{text}");
    assert_eq!(qc_json(&url, &["job", &id.to_string()])["id"], json!(id));
    let o = qc(&url, &["job", "987654321"]);
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("no job 987654321"));
    // Two failed attempts: the job shows both errors, oldest first.
    let failing = format!("{q}.errors");
    let id = push(&url, &failing, "{}", &["--max-attempts", "3"]);
    for (attempt, error) in [(1, "first boom"), (2, "second boom")] {
        sql(&url, &format!("SELECT id FROM queue_pop('{failing}', 'cli-test')"));
        sql(&url, &format!("SELECT queue_fail({id}, '{error}', {attempt}, retry_in => '0 s')"));
    }
    let errors = qc_json(&url, &["job", &id.to_string()])["errors"].clone();
    let messages: Vec<&str> = errors.as_array().unwrap().iter().map(|e| e["error"].as_str().unwrap()).collect();
    assert_eq!(messages, vec!["first boom", "second boom"]);
    let text = stdout(&qc(&url, &["job", &id.to_string()]));
    assert!(text.contains("first boom") && text.contains("second boom"), "{text}");
}

/// Claims the job `id` of queue `q` (it must be the next one) and acks it.
fn claim_and_ack(url: &str, q: &str, id: i64) {
    let claimed = sql(url, &format!("SELECT id FROM queue_pop('{q}', 'cli-test')"));
    assert_eq!(claimed, vec![json!(id)], "the next job of {q}");
    assert_eq!(sql(url, &format!("SELECT queue_ack({id}, '{{\"done\": true}}') AS ok")), vec![json!(true)]);
}

#[test]
fn push_with_dependencies_blocks_until_they_complete() {
    let url = need_db!();
    let q = queue("deps");
    let first = push(&url, &q, r#"{"step": 1}"#, &[]);
    let blocked = push(&url, &q, r#"{"step": 2}"#, &["--depends-on", &first.to_string()]);

    // queuectl job: blocked, with its dependency.
    let j = qc_json(&url, &["job", &blocked.to_string()]);
    assert_eq!(j["status"], json!("blocked"), "{j}");
    assert_eq!(j["blocked_by"], json!(1));
    assert_eq!(j["depends_on"], json!([first]));
    let deps = j["dependencies"].as_array().expect("dependencies in --json");
    assert_eq!(deps.len(), 1, "{j}");
    assert_eq!(deps[0]["dependency"], json!(first));
    assert_eq!(deps[0]["queue"], json!(q));
    assert_eq!(deps[0]["status"], json!("pending"));
    assert_eq!(deps[0]["resolved"], json!(false));
    let o = qc(&url, &["job", &blocked.to_string()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(table_row(&text, "status").contains("blocked"), "{text}");
    assert!(table_row(&text, "depends_on").ends_with(&first.to_string()), "{text}");
    assert!(table_row(&text, "blocked_by").contains("1 of 1 dependency not resolved"), "{text}");
    let dep_row = table_row(&text, &first.to_string());
    let cells: Vec<&str> = dep_row.split_whitespace().collect();
    assert_eq!(cells[..4], [first.to_string().as_str(), q.as_str(), "pending", "no"], "{text}");
    // A job without dependencies: no dependencies table, no second call.
    let plain = qc_json(&url, &["job", &first.to_string()]);
    assert!(plain.get("dependencies").is_none() && plain["depends_on"].is_null(), "{plain}");
    assert!(!stdout(&qc(&url, &["job", &first.to_string()])).contains("dependencies"));

    // Stats, status, list and jobs count and list it.
    let st = qc_json(&url, &["status", &q]);
    assert_eq!(st["stats"]["blocked"], json!(1), "{st}");
    assert_eq!(st["stats"]["total_size"], json!(1), "a blocked job is not waiting");
    let text = stdout(&qc(&url, &["status", &q]));
    assert!(text.contains("0 processing, 1 blocked"), "{text}");
    let text = stdout(&qc(&url, &["status"]));
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    let line = table_row(&text, &q);
    let row: Vec<&str> = line.split_whitespace().collect();
    let col = header.iter().position(|h| *h == "BLOCKED").expect("a BLOCKED column");
    assert_eq!(row[col], "1", "{text}");
    assert_eq!(row[header.iter().position(|h| *h == "WAITING").unwrap()], "1", "{text}");
    let listed = qc_json(&url, &["list"]);
    let entry = listed.as_array().unwrap().iter().find(|r| r["queue"] == json!(q)).cloned().expect("listed");
    assert_eq!(entry["blocked"], json!(1), "{entry}");
    let text = stdout(&qc(&url, &["list"]));
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    let line = table_row(&text, &q);
    let row: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(row[header.iter().position(|h| *h == "BLOCKED").expect("a BLOCKED column")], "1", "{text}");
    let rows = qc_json(&url, &["jobs", &q, "--status", "blocked"]);
    let ids: Vec<i64> = rows.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![blocked], "{rows}");
    assert!(stdout(&qc(&url, &["jobs", &q, "--status", "blocked"])).contains("blocked"));
    assert_eq!(qc_json(&url, &["jobs", &q]).as_array().unwrap().len(), 1, "only the dependency is pending");

    // The dependency completes (acked through SQL): the dependent is pending.
    claim_and_ack(&url, &q, first);
    let j = qc_json(&url, &["job", &blocked.to_string()]);
    assert_eq!(j["status"], json!("pending"), "{j}");
    assert_eq!(j["blocked_by"], json!(0));
    assert_eq!(j["dependencies"][0]["resolved"], json!(true), "{j}");
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["blocked"], json!(0));
    assert!(table_row(&stdout(&qc(&url, &["job", &blocked.to_string()])), "blocked_by").contains("0 of 1"));
    claim_and_ack(&url, &q, blocked);

    // Several dependencies: repeated and comma-separated; --run-anyway.
    let a = push(&url, &q, "{}", &[]);
    let b = push(&url, &q, "{}", &[]);
    let c = push(&url, &q, "{}", &[]);
    let joined = push(&url, &q, "{}", &["--depends-on", &format!("{a},{b}"), "--depends-on", &c.to_string()]);
    assert_eq!(job(&url, joined)["depends_on"], json!([a, b, c]));
    assert_eq!(job(&url, joined)["blocked_by"], json!(3));
    let anyway = push(&url, &q, "{}", &["--depends-on", &a.to_string(), "--run-anyway", "--priority", "high"]);
    let o = qc(&url, &["job", &anyway.to_string()]);
    assert!(table_row(&stdout(&o), &a.to_string()).split_whitespace().nth(4) == Some("yes"), "{}", stdout(&o));
    assert_eq!(job(&url, anyway)["priority"], json!(-10), "the other options go along");

    // A dependency that fails cancels its dependents (not the run-anyway one,
    // which runs); `queuectl retry` of the dependency brings them back to blocked.
    assert_eq!(sql(&url, &format!("SELECT id FROM queue_pop('{q}', 'cli-test')")), vec![json!(a)]);
    sql(&url, &format!("SELECT queue_fail({a}, 'boom', permanent => true) AS s"));
    let j = job(&url, joined);
    assert_eq!(j["status"], json!("cancelled"), "{j}");
    assert_eq!(j["last_error"], json!(format!("dependency {a} ended failed")));
    assert_eq!(job(&url, anyway)["status"], json!("pending"), "run_anyway: resolved by any end");
    let o = qc(&url, &["retry", &a.to_string()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(job(&url, joined)["status"], json!("blocked"), "revived by the retry");
    // A blocked job is cancelled by id like a waiting one, and its own
    // dependents with it.
    let below = push(&url, &q, "{}", &["--depends-on", &joined.to_string()]);
    let o = qc(&url, &["cancel", &joined.to_string()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(job(&url, joined)["status"], json!("cancelled"));
    assert_eq!(job(&url, below)["last_error"], json!(format!("dependency {joined} ended cancelled")));

    // Refusals: exit 2, nothing pushed.
    let before = qc_json(&url, &["status", &q])["stats"]["total_pushed"].clone();
    let o = qc(&url, &["push", &q, "{}", "--depends-on", "987654321"]);
    assert_eq!(code(&o), 2, "an unknown dependency: {}", stderr(&o));
    assert!(stderr(&o).contains("987654321") && stderr(&o).contains("22023"), "{}", stderr(&o));
    assert_eq!(code(&qc(&url, &["push", &q, "{}", "--depends-on", "x"])), 2, "not an id");
    assert_eq!(code(&qc(&url, &["push", &q, "{}", "--run-anyway"])), 2, "--run-anyway needs --depends-on");
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["total_pushed"], before);
    assert_eq!(sql(&url, &format!("SELECT queue_clear('{q}') AS n"))[0], json!(4), "a, b, c and anyway");
}

/// Claims every job of `q` and fails it permanently (SQL): they are dead.
fn fail_all(url: &str, q: &str) -> usize {
    sql(
        url,
        &format!(
            "SELECT queue_fail(id, 'boom: ' || id, permanent => true) AS s FROM queue_pop('{q}', 'cli-test', 100)"
        ),
    )
    .len()
}

/// The ids of a JSON array of job rows, sorted.
fn ids_of(rows: &Value) -> Vec<i64> {
    let mut v: Vec<i64> = rows.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn tags_are_pushed_shown_and_filter_every_listing() {
    let url = need_db!();
    let q = queue("tags");
    let (t1, t2) = (format!("customer:{}", std::process::id()), format!("pdf-{}", std::process::id()));
    let a = push(&url, &q, r#"{"n": 1}"#, &["--tag", &t2, "--tag", &t1]);
    let b = push(&url, &q, r#"{"n": 2}"#, &["--tag", &t2]);
    let plain = push(&url, &q, r#"{"n": 3}"#, &[]);

    // The job view: stored sorted; none for an untagged job.
    assert_eq!(qc_json(&url, &["job", &a.to_string()])["tags"], json!([t1, t2]));
    let text = stdout(&qc(&url, &["job", &a.to_string()]));
    assert!(table_row(&text, "tags").ends_with(&format!("{t1}, {t2}")), "{text}");
    assert!(table_row(&stdout(&qc(&url, &["job", &plain.to_string()])), "tags").ends_with('-'));

    // jobs --tag: pending ones through queue_jobs (newest first), with a TAGS column.
    let rows = qc_json(&url, &["jobs", &q, "--tag", &t1]);
    assert_eq!(ids_of(&rows), vec![a], "{rows}");
    assert_eq!(rows[0]["tags"], json!([t1, t2]));
    let rows = qc_json(&url, &["jobs", &q, "--tag", &t2]);
    assert_eq!(rows.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![b, a]);
    let text = stdout(&qc(&url, &["jobs", &q, "--tag", &t2]));
    assert!(text.lines().next().unwrap().contains("TAGS"), "{text}");
    assert!(table_row(&text, &a.to_string()).contains(&format!("{t1},{t2}")), "{text}");
    assert!(!text.contains(&format!(" {plain} ")) && table_row(&text, &b.to_string()).contains(&t2), "{text}");
    // Without a tag, pending jobs are in claim order as before (queue_peek).
    assert_eq!(ids_of(&qc_json(&url, &["jobs", &q])), vec![a, b, plain]);

    // stats --tag: that tag's jobs by status.
    let st = qc_json(&url, &["stats", &q, "--tag", &t2]);
    assert_eq!(
        (st["total"].clone(), st["pending"].clone(), st["failed"].clone()),
        (json!(2), json!(2), json!(0)),
        "{st}"
    );
    let text = stdout(&qc(&url, &["stats", &q, "--tag", &t1]));
    assert!(text.contains(&format!("tag {t1}: 1 job ")), "{text}");
    assert!(table_row(&text, "pending").ends_with(" 1") && table_row(&text, "blocked").ends_with(" 0"), "{text}");
    assert_eq!(qc_json(&url, &["stats", "--tag", &t1])["total"], json!(1), "of every queue");
    let all = qc_json(&url, &["stats", &q]);
    assert_eq!(all["pending"], json!(3), "without --tag: the queue's counters");

    // Dead jobs: failed / dead / jobs --status dead filter by tag; retry --all
    // and purge-dead touch only that tag's.
    let dq = queue("tags.dead");
    let d1 = push(&url, &dq, "{}", &["--tag", &t1]);
    let d2 = push(&url, &dq, "{}", &["--tag", &t1, "--tag", &t2]);
    let d3 = push(&url, &dq, "{}", &["--tag", &t2]);
    let d4 = push(&url, &dq, "{}", &[]);
    assert_eq!(fail_all(&url, &dq), 4);
    assert_eq!(ids_of(&qc_json(&url, &["failed", &dq, "--tag", &t1])), vec![d1, d2]);
    assert_eq!(ids_of(&qc_json(&url, &["dead", &dq, "--tag", &t2])), vec![d2, d3], "dead is failed");
    assert_eq!(ids_of(&qc_json(&url, &["jobs", &dq, "--status", "dead", "--tag", &t1])), vec![d1, d2]);
    assert_eq!(ids_of(&qc_json(&url, &["jobs", &dq, "--status", "failed", "--tag", &t2])), vec![d2, d3]);
    assert_eq!(ids_of(&qc_json(&url, &["failed", &dq])), vec![d1, d2, d3, d4]);
    assert_eq!(qc_json(&url, &["stats", &dq, "--tag", &t2])["failed"], json!(2));

    let o = qc(&url, &["retry", "--all", &dq, "--tag", &t1]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("2 dead jobs of {dq} tagged {t1} pending again\n"));
    assert_eq!((status_of(&url, d1), status_of(&url, d2)), ("pending".into(), "pending".into()));
    assert_eq!((status_of(&url, d3), status_of(&url, d4)), ("failed".into(), "failed".into()), "other tags stay dead");
    assert_eq!(qc_json(&url, &["retry", "--all", &dq, "--tag", &t1])["retried"], json!(0), "none left of that tag");

    let r = qc_json(&url, &["purge-dead", &dq, "--tag", &t2]);
    assert_eq!((r["purged"].clone(), r["tag"].clone()), (json!(1), json!(t2)), "{r}");
    assert!(job(&url, d3).is_null(), "purged");
    assert_eq!(status_of(&url, d4), "failed", "an untagged dead job stays");
    assert_eq!(status_of(&url, d2), "pending", "a live job with the tag stays");

    // Bad input: exit 2 with the reason; nothing pushed, nothing changed.
    let before = qc_json(&url, &["status", &q])["stats"]["total_pushed"].clone();
    let o = qc(&url, &["push", &q, "{}", "--tag", ""]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("a tag must be 1 to 64 bytes") && stderr(&o).contains("22023"), "{}", stderr(&o));
    let o = qc(&url, &["push", &q, "{}", "--tag", &"x".repeat(65)]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["total_pushed"], before);
    let o = qc(&url, &["jobs", &q, "--tag", ""]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("is not a tag"), "{}", stderr(&o));
    assert_eq!(code(&qc(&url, &["retry", "--tag", &t1])), 2, "--tag needs --all");
    assert_eq!(code(&qc(&url, &["purge-dead", &dq, "--tag", ""])), 2);
    assert_eq!(status_of(&url, d4), "failed");
}

#[test]
fn batches_open_fill_close_fire_and_cancel() {
    let url = need_db!();
    let q = queue("batch");
    let done_q = queue("batch.done");
    let spec = json!({"queue": done_q, "payload": {"report": 7}}).to_string();
    let o = qc(&url, &["batch", "open", "--on-complete", &spec]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let id: i64 = stdout(&o).trim().parse().expect("batch open prints the id");
    let ids = id.to_string();
    let a = push(&url, &q, r#"{"part": 1}"#, &["--batch", &ids]);
    let b = push(&url, &q, r#"{"part": 2}"#, &["--batch", &ids]);

    // The job view names its batch; batch show counts it, open.
    let j = qc_json(&url, &["job", &a.to_string()]);
    assert_eq!((j["batch_id"].clone(), j["batch"]["state"].clone()), (json!(id), json!("open")), "{j}");
    let text = stdout(&qc(&url, &["job", &a.to_string()]));
    assert!(table_row(&text, "batch").contains(&format!("{id} (open, 0 of 2 final")), "{text}");
    let plain = push(&url, &q, "{}", &[]);
    assert!(table_row(&stdout(&qc(&url, &["job", &plain.to_string()])), "batch").ends_with('-'));
    let bs = qc_json(&url, &["batch", "show", &ids]);
    assert_eq!((bs["state"].clone(), bs["total"].clone(), bs["pending"].clone()), (json!("open"), json!(2), json!(2)));
    let text = stdout(&qc(&url, &["batch", "show", &ids]));
    assert!(table_row(&text, "state").ends_with("open"), "{text}");
    assert!(table_row(&text, "progress").contains("0 of 2 final"), "{text}");
    assert!(table_row(&text, "on_complete").contains("not pushed") && table_row(&text, "on_failure").ends_with('-'));

    // Close: no more jobs join (exit 2, nothing pushed).
    let o = qc(&url, &["batch", "close", &ids]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("batch {id} closed: 0 of 2 jobs final\n"));
    let before = qc_json(&url, &["status", &q])["stats"]["total_pushed"].clone();
    let o = qc(&url, &["push", &q, "{}", "--batch", &ids]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("batch {id} is closed")) && stderr(&o).contains("22023"), "{}", stderr(&o));
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["total_pushed"], before);
    let o = qc(&url, &["batch", "close", &ids]);
    assert_eq!(code(&o), 2, "closed already: {}", stderr(&o));

    // Its jobs complete: the batch is done and its callback pushed, once.
    claim_and_ack(&url, &q, a);
    let bs = qc_json(&url, &["batch", "show", &ids]);
    assert_eq!(
        (bs["state"].clone(), bs["completed"].clone(), bs["progress"].clone()),
        (json!("closed"), json!(1), json!(0.5))
    );
    claim_and_ack(&url, &q, b);
    let bs = qc_json(&url, &["batch", "show", &ids]);
    assert_eq!(bs["state"], json!("done"), "{bs}");
    assert_eq!(
        (bs["completed"].clone(), bs["pending"].clone(), bs["failure_job"].clone()),
        (json!(2), json!(0), Value::Null)
    );
    let callback = bs["complete_job"].as_i64().expect("the callback's id");
    let cj = job(&url, callback);
    assert_eq!(cj["queue"], json!(done_q));
    assert_eq!(cj["payload"]["report"], json!(7));
    assert_eq!(cj["payload"]["batch"]["total"], json!(2), "{cj}");
    let text = stdout(&qc(&url, &["batch", "show", &ids]));
    assert!(table_row(&text, "on_complete").contains(&format!("pushed as job {callback}")), "{text}");
    assert!(table_row(&text, "progress").contains("2 of 2 final (100.0%)"), "{text}");

    // Cancel: waiting jobs cancelled; again is no error; a done batch is refused (exit 1).
    let other = qc_json(&url, &["batch", "open"])["id"].as_i64().unwrap();
    let waiting = push(&url, &q, "{}", &["--batch", &other.to_string()]);
    let o = qc(&url, &["batch", "cancel", &other.to_string()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("batch {other} cancelled\n"));
    assert_eq!(status_of(&url, waiting), "cancelled");
    assert_eq!(qc_json(&url, &["batch", "show", &other.to_string()])["state"], json!("cancelled"));
    let o = qc(&url, &["batch", "cancel", &other.to_string()]);
    assert_eq!((code(&o), stdout(&o)), (0, format!("batch {other} was already cancelled\n")));
    let o = qc(&url, &["batch", "cancel", &ids]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("batch {id} is done")), "{}", stderr(&o));

    // Bad input: a callback the server refuses, one that is not JSON; unknown ids.
    let o = qc(&url, &["batch", "open", "--on-complete", r#"{"nope": 1}"#]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("on_complete must be an object") && stderr(&o).contains("22023"), "{}", stderr(&o));
    let o = qc(&url, &["batch", "open", "--on-failure", "{not json"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--on-failure is not JSON"), "{}", stderr(&o));
    for verb in ["show", "close", "cancel"] {
        let o = qc(&url, &["batch", verb, "987654321"]);
        assert_eq!(code(&o), 3, "{verb}: {}", stderr(&o));
        assert!(stderr(&o).contains("no batch 987654321"), "{verb}: {}", stderr(&o));
    }
    assert_eq!(code(&qc(&url, &["batch"])), 2, "a batch subcommand is required");
}

/// The ids of a JSON array of rows, in their order.
fn ids_in_order(rows: &Value) -> Vec<i64> {
    rows.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

/// The first `n` cells and the last `m` of a table line (cells without blanks).
fn cells(line: &str, n: usize, m: usize) -> (Vec<String>, Vec<String>) {
    let all: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    (all[..n].to_vec(), all[all.len() - m..].to_vec())
}

#[test]
fn batch_list_lists_newest_first_filters_by_state_and_limits() {
    let url = need_db!();
    let q = queue("batch.list");
    let done_q = queue("batch.list.done");
    let open_one = |extra: &[&str]| {
        let mut args = vec!["batch", "open"];
        args.extend_from_slice(extra);
        qc_json(&url, &args)["id"].as_i64().unwrap()
    };
    // Four batches, oldest first: closed with 1 of 2 final, done at its close
    // (no jobs) with its callback pushed, cancelled, open.
    let closed = open_one(&[]);
    let a = push(&url, &q, "{}", &["--batch", &closed.to_string()]);
    push(&url, &q, "{}", &["--batch", &closed.to_string()]);
    claim_and_ack(&url, &q, a);
    assert_eq!(code(&qc(&url, &["batch", "close", &closed.to_string()])), 0);
    let done = open_one(&["--on-complete", &json!({"queue": done_q}).to_string()]);
    assert_eq!(code(&qc(&url, &["batch", "close", &done.to_string()])), 0);
    let callback = qc_json(&url, &["batch", "show", &done.to_string()])["complete_job"].as_i64().expect("pushed");
    let cancelled = open_one(&[]);
    assert_eq!(code(&qc(&url, &["batch", "cancel", &cancelled.to_string()])), 0);
    let open = open_one(&[]);
    let ours = [open, cancelled, done, closed];

    // Every state, newest first: this test's four are the newest batches.
    let all = qc_json(&url, &["batch", "list", "--limit", "1000"]);
    let ids = ids_in_order(&all);
    assert_eq!(ids[..4], ours, "{all}");
    let mut sorted = ids.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(ids, sorted, "newest first");
    let row = |id: i64| all.as_array().unwrap().iter().find(|r| r["id"] == json!(id)).cloned().unwrap();
    let c = row(closed);
    assert_eq!(
        (c["state"].clone(), c["total"].clone(), c["pending"].clone(), c["completed"].clone()),
        (json!("closed"), json!(2), json!(1), json!(1)),
        "{c}"
    );
    assert!(c["closed_at"].is_string() && c["finished_at"].is_null(), "{c}");
    let d = row(done);
    assert_eq!(
        (d["state"].clone(), d["total"].clone(), d["complete_job"].clone()),
        (json!("done"), json!(0), json!(callback))
    );
    assert!(d["failure_job"].is_null() && d["finished_at"].is_string(), "{d}");
    assert_eq!(row(cancelled)["state"], json!("cancelled"));
    let o = row(open);
    assert_eq!(
        (o["state"].clone(), o["total"].clone(), o["pending"].clone()),
        (json!("open"), Value::Null, Value::Null)
    );
    assert!(o["created_at"].is_string() && o["closed_at"].is_null(), "{o}");

    // The table: progress final/total where counted, `-` while open.
    let out = qc(&url, &["batch", "list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..6], ["ID", "STATE", "PROGRESS", "TOTAL", "PENDING", "COMPLETED"], "{text}");
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (head, tail) = cells(&table_row(&text, &closed.to_string()), 8, 2);
    assert_eq!(
        (head, tail),
        (strs(&[&closed.to_string(), "closed", "1/2", "2", "1", "1", "0", "0"]), strs(&["-", "-"]))
    );
    let (head, tail) = cells(&table_row(&text, &done.to_string()), 8, 2);
    assert_eq!(
        (head, tail),
        (strs(&[&done.to_string(), "done", "0/0", "0", "0", "0", "0", "0"]), strs(&[&callback.to_string(), "-"]))
    );
    let (head, _) = cells(&table_row(&text, &open.to_string()), 8, 0);
    assert_eq!(head, strs(&[&open.to_string(), "open", "-", "-", "-", "-", "-", "-"]));
    assert!(text.contains("batch show ID counts one not closed"), "the note on open batches: {text}");

    // One state: only batches in it, ours among them.
    for (state, id) in [("open", open), ("closed", closed), ("done", done), ("cancelled", cancelled)] {
        let rows = qc_json(&url, &["batch", "list", "--state", state, "--limit", "1000"]);
        assert!(rows.as_array().unwrap().iter().all(|r| r["state"] == json!(state)), "{state}: {rows}");
        let listed = ids_in_order(&rows);
        assert_eq!(listed[0], id, "{state}: the newest first");
        assert!(ours.iter().filter(|o| **o != id).all(|o| !listed.contains(o)), "{state}: {rows}");
    }
    let text = stdout(&qc(&url, &["batch", "list", "-s", "done"]));
    assert!(table_row(&text, &done.to_string()).contains("done"), "{text}");
    assert!(text.lines().all(|l| l.split_whitespace().next() != Some(&open.to_string())), "{text}");

    // --limit: the newest N.
    assert_eq!(ids_in_order(&qc_json(&url, &["batch", "list", "--limit", "2"])), vec![open, cancelled]);
    assert_eq!(ids_in_order(&qc_json(&url, &["batch", "list", "-n", "1", "--state", "closed"])), vec![closed]);
    let text = stdout(&qc(&url, &["batch", "list", "-n", "1"]));
    assert_eq!(text.lines().count(), 3, "a header, one row and the note: {text}");

    // A bad state or limit: a clear error, exit 2, nothing on stdout.
    let o = qc(&url, &["batch", "list", "--state", "finished"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains(r#"unknown batch state "finished""#)
            && stderr(&o).contains("open, closed, done, cancelled"),
        "{}",
        stderr(&o)
    );
    let o = qc(&url, &["batch", "list", "--state", "'; DROP TABLE queue.batches; --"]);
    assert_eq!(code(&o), 2, "a state is a bound value: {}", stderr(&o));
    assert!(qc_json(&url, &["batch", "list", "-n", "1"]).as_array().unwrap().len() == 1);
    let o = qc(&url, &["batch", "list", "--limit", "0"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("between 1 and"), "{}", stderr(&o));
    assert_eq!(code(&qc(&url, &["batch", "cancel", &open.to_string()])), 0);
}

/// Whether the installed extension's queue_configure has a `retention`
/// parameter (added by a later version).
fn has_retention(url: &str) -> bool {
    sql(
        url,
        "SELECT coalesce(bool_or(pg_get_function_arguments(p.oid) LIKE '%retention interval%'), false) AS r \
         FROM pg_proc p WHERE p.proname = 'queue_configure'",
    )[0] == json!(true)
}

#[test]
fn configure_sets_queue_defaults_and_settings_lists_them() {
    let url = need_db!();
    let q = queue("conf");
    let settings_row =
        || qc_json(&url, &["settings"]).as_array().unwrap().iter().find(|r| r["queue"] == json!(q)).cloned();
    let o = qc(&url, &["configure", &q, "--priority", "low", "--max-attempts", "7", "--timeout", "30s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with(&format!("configured {q}")), "{text}");
    assert!(table_row(&text, "priority").ends_with("10 (low)") && table_row(&text, "max_attempts").ends_with('7'));
    assert!(table_row(&text, "backoff_base").ends_with('-'), "not set: the global default: {text}");
    // A value given joins those set before.
    let c = qc_json(&url, &["configure", &q, "--backoff-base", "2s"]);
    assert_eq!(
        (c["priority"].clone(), c["max_attempts"].clone(), c["timeout"].clone(), c["backoff_base"].clone()),
        (json!(10), json!(7), json!("00:00:30"), json!("00:00:02")),
        "{c}"
    );
    let row = settings_row().expect("listed by settings");
    assert_eq!(
        (row["priority"].clone(), row["max_attempts"].clone(), row["paused"].clone()),
        (json!(10), json!(7), json!(false))
    );
    let text = stdout(&qc(&url, &["settings"]));
    let line = table_row(&text, &q);
    assert!(line.contains("10 (low)") && line.contains("00:00:30") && line.contains("00:00:02"), "{text}");

    // Pushes take them; what a push says wins.
    let p = push(&url, &q, "{}", &[]);
    let j = job(&url, p);
    assert_eq!(
        (j["priority"].clone(), j["max_attempts"].clone(), j["timeout"].clone()),
        (json!(10), json!(7), json!("00:00:30"))
    );
    let p = push(&url, &q, "{}", &["--priority", "high", "--max-attempts", "2"]);
    assert_eq!((job(&url, p)["priority"].clone(), job(&url, p)["max_attempts"].clone()), (json!(-10), json!(2)));

    // A paused queue shows in settings, since when and by whom.
    assert_eq!(code(&qc(&url, &["pause", &q])), 0);
    let text = stdout(&qc(&url, &["settings"]));
    let line = table_row(&text, &q);
    assert!(line.contains("PAUSED") && line.contains("postgres"), "{text}");
    assert_eq!(code(&qc(&url, &["resume", &q])), 0);

    // --reset keeps only what is given; a reset of everything drops the row.
    let c = qc_json(&url, &["configure", &q, "--reset", "--timeout", "1m"]);
    assert_eq!(
        (c["priority"].clone(), c["max_attempts"].clone(), c["timeout"].clone()),
        (Value::Null, Value::Null, json!("00:01:00"))
    );
    assert_eq!(job(&url, push(&url, &q, "{}", &[]))["max_attempts"], json!(3), "the global default again");
    assert!(qc_json(&url, &["configure", &q, "--reset"])["timeout"].is_null());
    assert!(settings_row().is_none(), "nothing left: not listed");

    // Bad input: exit 2 with the reason, nothing changed.
    let o = qc(&url, &["configure", &q, "--max-attempts", "0"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("22023"), "{}", stderr(&o));
    assert!(settings_row().is_none(), "a refused configure changes nothing");
    let o = qc(&url, &["configure", &q]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("nothing to configure"), "{}", stderr(&o));
    assert_eq!(code(&qc(&url, &["configure", &q, "--priority", "urgent"])), 2);
    assert_eq!(code(&qc(&url, &["configure", &q, "--timeout", "soon"])), 2);
    assert_eq!(code(&qc(&url, &["configure", "bad name!", "--max-attempts", "3"])), 2);

    // --retention where the installed extension has it; a clear refusal where not.
    if has_retention(&url) {
        eprintln!("queue_configure has retention: --retention tested against it");
        let c = qc_json(&url, &["configure", &q, "--retention", "2d"]);
        assert_eq!(c["retention"], json!("48:00:00"), "{c}");
        assert_eq!(settings_row().expect("listed")["retention"], json!("48:00:00"));
        let text = stdout(&qc(&url, &["settings"]));
        assert!(text.lines().next().unwrap().contains("RETENTION"), "{text}");
        assert!(table_row(&text, &q).ends_with("48:00:00"), "{text}");
        assert!(qc_json(&url, &["configure", &q, "--reset"])["retention"].is_null());
    } else {
        eprintln!("queue_configure has no retention: --retention tested for its refusal only");
        let o = qc(&url, &["configure", &q, "--retention", "2d"]);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stderr(&o).contains("no per-queue retention"), "{}", stderr(&o));
        assert!(!stdout(&qc(&url, &["settings"])).contains("RETENTION"));
    }
    assert!(settings_row().is_none());
}

#[test]
fn failed_retry_and_delete_by_id() {
    let url = need_db!();
    let q = queue("retry");
    let ids = make_dead(&url, &q, 2);
    let failed = qc_json(&url, &["failed", &q]);
    assert_eq!(failed.as_array().unwrap().len(), 2);
    assert!(failed[0]["last_error"].as_str().unwrap().starts_with("boom"));
    let text = stdout(&qc(&url, &["failed", &q]));
    assert!(text.contains("boom") && text.contains("ERROR"), "{text}");

    let o = qc(&url, &["retry", &ids[0].to_string()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(job(&url, ids[0])["status"], json!("pending"));
    assert_eq!(job(&url, ids[0])["attempts"], json!(0));
    // Not dead any more: refused with exit 1; unknown: 3.
    let o = qc(&url, &["retry", &ids[0].to_string()]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("is pending"), "{}", stderr(&o));
    assert_eq!(code(&qc(&url, &["retry", "987654321"])), 3);

    assert_eq!(code(&qc(&url, &["delete", &ids[1].to_string()])), 0);
    assert!(job(&url, ids[1]).is_null());
    assert_eq!(code(&qc(&url, &["delete", &ids[1].to_string()])), 3);

    assert_eq!(code(&qc(&url, &["cancel", &ids[0].to_string()])), 0);
    assert_eq!(job(&url, ids[0])["status"], json!("cancelled"));

    // retry needs an id or --all: a usage error.
    assert_eq!(code(&qc(&url, &["retry"])), 2);
}

#[test]
fn retry_all_and_purge_dead_in_bulk() {
    let url = need_db!();
    let q = queue("bulk");
    make_dead(&url, &q, 1200);
    let r = qc_json(&url, &["retry", "--all", &q]);
    assert_eq!(r["retried"], json!(1200));
    assert_eq!(qc_json(&url, &["failed", &q]).as_array().unwrap().len(), 0);
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["pending"], json!(1200));
    assert_eq!(sql(&url, &format!("SELECT queue_clear('{q}') AS n"))[0], json!(1200));

    let q2 = queue("purge");
    make_dead(&url, &q2, 1500);
    let keep = make_dead(&url, &queue("other"), 1);
    // None is older than an hour yet.
    assert_eq!(qc_json(&url, &["purge-dead", &q2, "--older-than", "1h"])["purged"], json!(0));
    let o = qc(&url, &["purge-dead", &q2]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("1500 dead jobs deleted"), "{}", stdout(&o));
    assert_eq!(qc_json(&url, &["failed", &q2]).as_array().unwrap().len(), 0);
    assert_eq!(job(&url, keep[0])["status"], json!("failed"), "another queue's dead jobs stay");
}

#[test]
fn clear_refuses_without_force() {
    let url = need_db!();
    let q = queue("clear");
    push(&url, &q, "{}", &[]);
    push(&url, &q, "{}", &["--delay", "1h"]);
    let o = qc(&url, &["clear", &q]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--force"));
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["total_size"], json!(2));
    let r = qc_json(&url, &["clear", &q, "--force"]);
    assert_eq!(r["deleted"], json!(2));
    assert_eq!(qc_json(&url, &["status", &q])["stats"]["total_size"], json!(0));
}

#[test]
fn cleanup_needs_an_age() {
    let url = need_db!();
    assert_eq!(code(&qc(&url, &["cleanup"])), 2);
    let r = qc_json(&url, &["cleanup", "--older-than", "30d"]);
    assert!(r["deleted"].is_i64());
}

#[test]
fn jobs_lists_what_the_api_can_list() {
    let url = need_db!();
    let q = queue("jobs");
    let a = push(&url, &q, r#"{"a": 1}"#, &["--priority", "low"]);
    let b = push(&url, &q, r#"{"b": 1}"#, &["--priority", "high"]);
    let pending = qc_json(&url, &["jobs", &q]);
    let ids: Vec<i64> = pending.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![b, a], "claim order");
    assert_eq!(qc_json(&url, &["jobs", &q, "--limit", "1"]).as_array().unwrap().len(), 1);
    make_dead(&url, &q, 1);
    let dead = qc_json(&url, &["jobs", &q, "--status", "failed"]);
    assert_eq!(dead.as_array().unwrap().len(), 1);
    // Any status, through queue_jobs: the claimed one is processing.
    let claimed = sql(&url, &format!("SELECT id FROM queue_pop('{q}', 'cli-test')"));
    let processing = qc_json(&url, &["jobs", &q, "--status", "processing"]);
    let ids: Vec<i64> = processing.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![claimed[0].as_i64().unwrap()], "{processing}");
    assert_eq!(processing[0]["status"], json!("processing"));
    let o = qc(&url, &["jobs", &q, "--status", "done"]);
    assert_eq!(code(&o), 2, "an unknown status is a usage error");
    assert_eq!(code(&qc(&url, &["jobs", "no.such.queue"])), 3);
}

#[test]
fn schedules_timeline_trigger_unschedule() {
    let url = need_db!();
    let q = queue("sched");
    let name = format!("nightly-{}", std::process::id());
    let o = qc(&url, &["schedule", &name, "0 3 * * *", &q, r#"{"kind": "report"}"#, "--priority", "high"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("next run"), "{}", stdout(&o));
    let all = qc_json(&url, &["schedules"]);
    let s = all.as_array().unwrap().iter().find(|s| s["name"] == json!(name)).expect("listed");
    assert_eq!(s["kind"], json!("cron"));
    assert_eq!(s["priority"], json!(-10));
    let tl = qc_json(&url, &["timeline", "--horizon", "2d", "--limit", "200"]);
    assert!(tl.as_array().unwrap().iter().any(|r| r["name"] == json!(name)), "{tl}");
    assert!(stdout(&qc(&url, &["timeline", "--horizon", "2d"])).contains("RUN AT"));

    let o = qc(&url, &["trigger", &name]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let id: i64 = stdout(&o).trim().parse().unwrap();
    assert_eq!(job(&url, id)["payload"], json!({"kind": "report"}));
    assert_eq!(job(&url, id)["queue"], json!(q));

    assert_eq!(code(&qc(&url, &["schedule", "bad", "every blue moon", &q])), 2);
    assert_eq!(code(&qc(&url, &["trigger", "no-such-schedule"])), 3);
    assert_eq!(code(&qc(&url, &["unschedule", &name])), 0);
    assert_eq!(code(&qc(&url, &["unschedule", &name])), 3);
}

#[test]
fn connection_from_libpq_variables_and_clear_errors() {
    let url = need_db!();
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let (host, port) = match (&cfg.get_hosts()[0], cfg.get_ports()[0]) {
        (tokio_postgres::config::Host::Tcp(h), p) => (h.clone(), p),
        _ => panic!("a TCP test URL"),
    };
    let o = Command::new(BIN)
        .env_remove("DATABASE_URL")
        .env("PGHOST", &host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", cfg.get_user().unwrap())
        .env("PGDATABASE", cfg.get_dbname().unwrap())
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // --database-url wins over DATABASE_URL.
    let o = base_cmd("postgres://nobody@127.0.0.1:1/none")
        .args(["--database-url", &url, "health", "--json"])
        .output()
        .unwrap();
    assert!(code(&o) == 0 || code(&o) == 1, "{}", stderr(&o));
    assert!(serde_json::from_slice::<Value>(&o.stdout).unwrap().get("healthy").is_some());
    // Nothing listens there: exit 1 and a message naming where.
    let o = base_cmd("postgres://postgres@127.0.0.1:1/postgres").args(["list"]).output().unwrap();
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("cannot connect to postgres@127.0.0.1:1/postgres"), "{}", stderr(&o));
    // A password on the command line is warned about.
    let o = base_cmd(&url).args(["--database-url", "postgres://u:secret@127.0.0.1:1/x", "list"]).output().unwrap();
    assert!(stderr(&o).contains("visible to every user"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("secret"));
    // Unknown subcommands are usage errors.
    assert_eq!(code(&qc(&url, &["frobnicate"])), 2);
}

// ---- work ------------------------------------------------------------------

fn script(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("queuectl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn start_worker(url: &str, q: &str, extra: &[&str], command: &[&str]) -> Child {
    let mut args = vec!["work", q, "--poll-interval", "1s"];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    base_cmd(url).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn sigterm(child: &Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

fn wait_exit(mut child: Child, timeout: Duration) -> (i32, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("the worker did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_of(url: &str, id: i64) -> String {
    job(url, id)["status"].as_str().unwrap_or("").to_owned()
}

fn alive(pid: i64) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn work_acks_with_stdout_and_fails_with_stderr() {
    let url = need_db!();
    let q = queue("work");
    let cmd = script(
        "handler.sh",
        r#"payload=$(cat)
case "$payload" in
  *fail*) echo "could not do it: $QUEUE_JOB_ID" >&2; exit 3 ;;
  *text*) echo "just text" ;;
  *) printf '{"id": %s, "attempt": %s, "queue": "%s", "payload": %s}\n' "$QUEUE_JOB_ID" "$QUEUE_JOB_ATTEMPT" "$QUEUE_NAME" "$payload" ;;
esac"#,
    );
    let ok = push(&url, &q, r#"{"n": 1}"#, &[]);
    let text = push(&url, &q, r#"{"text": 1}"#, &[]);
    let bad = push(&url, &q, r#"{"fail": 1}"#, &["--max-attempts", "1"]);
    let retried = push(&url, &q, r#"{"fail": 2}"#, &["--max-attempts", "2", "--retry-delays", "0s"]);
    let worker = start_worker(&url, &q, &["--concurrency", "2"], &[cmd.to_str().unwrap()]);
    wait_for("every job final", Duration::from_secs(20), || {
        [ok, text, bad, retried].iter().all(|&id| ["completed", "failed"].contains(&status_of(&url, id).as_str()))
    });
    sigterm(&worker);
    let (rc, err) = wait_exit(worker, Duration::from_secs(15));
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("stopped"), "{err}");

    let j = job(&url, ok);
    assert_eq!(j["status"], json!("completed"));
    assert_eq!(j["result"], json!({"id": ok, "attempt": 1, "queue": q, "payload": {"n": 1}}));
    assert_eq!(job(&url, text)["result"], json!("just text"));
    let j = job(&url, bad);
    assert_eq!(j["status"], json!("failed"));
    assert_eq!(j["last_error"], json!(format!("could not do it: {bad}\n(exit status 3)")));
    let j = job(&url, retried);
    assert_eq!(j["status"], json!("failed"));
    assert_eq!(j["attempts"], json!(2), "failed once, retried, failed again");
}

#[test]
fn work_kills_a_command_at_the_jobs_timeout() {
    let url = need_db!();
    let q = queue("timeout");
    let pidfile = std::env::temp_dir().join(format!("queuectl-sleeper-{}", std::process::id()));
    let _ = std::fs::remove_file(&pidfile);
    // The shell starts a child that would outlive it: the whole group must go.
    let cmd = script("sleeper.sh", &format!("sleep 60 &\necho $! > {}\nwait", pidfile.display()));
    let id = push(&url, &q, "{}", &["--timeout", "2s", "--max-attempts", "1"]);
    let started = Instant::now();
    let worker = start_worker(&url, &q, &[], &[cmd.to_str().unwrap()]);
    wait_for("the job to fail", Duration::from_secs(20), || status_of(&url, id) == "failed");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "{took:?}");
    let j = job(&url, id);
    assert!(j["last_error"].as_str().unwrap().contains("timed out after 2 s"), "{j}");
    let sleeper: i64 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    wait_for("the grandchild to be killed", Duration::from_secs(5), || !alive(sleeper));
    sigterm(&worker);
    let (rc, err) = wait_exit(worker, Duration::from_secs(15));
    assert_eq!(rc, 0, "{err}");
}

#[test]
fn work_finishes_the_running_job_on_sigterm() {
    let url = need_db!();
    let q = queue("graceful");
    let cmd = script("slow.sh", "cat >/dev/null\nsleep 2\necho '{\"finished\": true}'");
    let id = push(&url, &q, "{}", &[]);
    let later = push(&url, &q, "{}", &[]);
    let worker = start_worker(&url, &q, &["--grace", "20s"], &[cmd.to_str().unwrap()]);
    wait_for("the job to run", Duration::from_secs(15), || status_of(&url, id) == "processing");
    sigterm(&worker);
    let (rc, err) = wait_exit(worker, Duration::from_secs(20));
    assert_eq!(rc, 0, "{err}");
    let j = job(&url, id);
    assert_eq!(j["status"], json!("completed"), "{err}");
    assert_eq!(j["result"], json!({"finished": true}));
    assert_eq!(status_of(&url, later), "pending", "nothing more is claimed after SIGTERM");
}

#[test]
fn work_gives_the_job_back_when_the_grace_ends() {
    let url = need_db!();
    let q = queue("giveback");
    let pidfile = std::env::temp_dir().join(format!("queuectl-long-{}", std::process::id()));
    let _ = std::fs::remove_file(&pidfile);
    let cmd = script("long.sh", &format!("echo $$ > {}\nsleep 60", pidfile.display()));
    let id = push(&url, &q, "{}", &[]);
    let worker = start_worker(&url, &q, &["--grace", "1s"], &[cmd.to_str().unwrap()]);
    wait_for("the job to run", Duration::from_secs(15), || status_of(&url, id) == "processing" && pidfile.exists());
    let started = Instant::now();
    sigterm(&worker);
    let (rc, err) = wait_exit(worker, Duration::from_secs(15));
    assert_eq!(rc, 0, "{err}");
    assert!(started.elapsed() < Duration::from_secs(8), "stopped after the grace");
    let j = job(&url, id);
    assert_eq!(j["status"], json!("pending"), "given back: {j}");
    assert!(j["last_error"].is_null(), "a give-back is not a failure: {j}");
    let pid: i64 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    wait_for("the command to be killed", Duration::from_secs(5), || !alive(pid));
}

#[test]
fn work_refuses_a_missing_command() {
    let url = need_db!();
    let o = qc(&url, &["work", "q", "--", "/no/such/command"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("command not found"));
    assert_eq!(code(&qc(&url, &["work", "q"])), 2, "a command is required");
}

// ---- serve -------------------------------------------------------------------

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        sigterm(&self.0);
        let _ = self.0.wait();
    }
}

/// `queuectl serve` on `port`, once it listens. The test ports lie below
/// Linux's ephemeral range (32768-60999), but another program of the
/// machine may still listen on one: a server that cannot listen there is
/// started again on the next port up (tests use `Server.1`). A server that exits
/// for any other reason fails the test with what it said.
fn serve(url: &str, port: u16, extra: &[&str]) -> Server {
    for port in port..port + 20 {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        // What it says goes to a file (a pipe nobody reads could fill up).
        let log = std::env::temp_dir().join(format!("queuectl-serve-{}-{port}.log", std::process::id()));
        let err = std::fs::File::create(&log).unwrap();
        let mut child = base_cmd(url).args(&args).stdout(Stdio::null()).stderr(Stdio::from(err)).spawn().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(said.contains("cannot listen on"), "queuectl serve exited ({status}): {said}");
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Server(child, port);
            }
            assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for the dashboard to listen");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("no free port for the dashboard from {port}")
}

/// A minimal HTTP/1.1 exchange (test side only); status and body.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = http(port, "GET", path, &[]);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn serve_answers_the_api_and_guards_its_posts() {
    let url = need_db!();
    let q = queue("serve");
    let dead = make_dead(&url, &q, 2);
    push(&url, &q, "{}", &["--priority", "high"]);
    let srv = serve(&url, 25491, &[]);
    let port = srv.1;

    let (status, page) = http(port, "GET", "/", &[]);
    assert_eq!(status, 200);
    assert!(page.contains("Queue statistics") && page.contains("/app.js"));
    let (status, js) = http(port, "GET", "/app.js", &[]);
    assert_eq!(status, 200);
    assert!(js.contains("visibilityState"));

    let ov = get_json(port, "/api/overview");
    let row = ov["queues"].as_array().unwrap().iter().find(|r| r["queue"] == json!(q)).expect("queue in overview");
    assert_eq!(row["stats"]["priority_breakdown"], json!({"high": 1}));
    assert!(row["metrics"].get("success_rate").is_some());
    assert!(get_json(port, "/api/workers").is_array());
    assert!(get_json(port, "/api/health").get("healthy").is_some());
    let tl = get_json(port, "/api/timeline");
    assert!(tl["runs"].is_array() && tl["schedules"].is_array());
    // The chart's data: per-minute rows of this queue from queue_throughput,
    // there once the maintenance flush (every 100 ms here) has run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows = loop {
        let (status, body) = http(port, "GET", &format!("/api/throughput?queue={q}"), &[]);
        assert_eq!(status, 200, "{body}");
        let rows: Value = serde_json::from_str(&body).unwrap();
        if !rows.as_array().unwrap().is_empty() || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let rows = rows.as_array().unwrap();
    assert!(!rows.is_empty(), "throughput rows for {q}");
    for r in rows {
        assert_eq!(r["queue_name"], json!(q), "{r}");
        assert!(r.get("minute").is_some() && r.get("completed").is_some(), "{r}");
    }
    assert!(rows.iter().map(|r| r["pushed"].as_i64().unwrap()).sum::<i64>() > 0);
    let failed = get_json(port, &format!("/api/failed?queue={q}"));
    assert_eq!(failed.as_array().unwrap().len(), 2);
    assert_eq!(get_json(port, &format!("/api/jobs/{}", dead[0]))["status"], json!("failed"));
    assert_eq!(http(port, "GET", "/api/jobs/987654321", &[]).0, 404);
    // Any status lists through queue_jobs; an unknown one is the server's 22023, a 400.
    assert!(get_json(port, &format!("/api/jobs?queue={q}&status=processing")).as_array().unwrap().is_empty());
    let failed_rows = get_json(port, &format!("/api/jobs?queue={q}&status=failed"));
    assert_eq!(failed_rows.as_array().unwrap().len(), 2, "{failed_rows}");
    assert_eq!(http(port, "GET", &format!("/api/jobs?queue={q}&status=done"), &[]).0, 400);
    assert_eq!(get_json(port, &format!("/api/jobs?queue={q}&status=pending")).as_array().unwrap().len(), 1);
    // Dependencies: the blocked count in the overview and the listing, the job
    // with its dependencies, the blocked jobs through queue_jobs, Cancel.
    let flow = format!("{q}.flow");
    let first = push(&url, &flow, "{}", &[]);
    let blocked = push(&url, &flow, "{}", &["--depends-on", &first.to_string()]);
    let ov = get_json(port, "/api/overview");
    let row =
        ov["queues"].as_array().unwrap().iter().find(|r| r["queue"] == json!(flow)).cloned().expect("in overview");
    assert_eq!(row["stats"]["blocked"], json!(1), "{row}");
    assert!(ov["total"]["blocked"].as_i64().unwrap() >= 1, "{ov}");
    let listed = get_json(port, "/api/queues");
    let row = listed.as_array().unwrap().iter().find(|r| r["queue"] == json!(flow)).cloned().expect("in /api/queues");
    assert_eq!(row["blocked"], json!(1), "{row}");
    let j = get_json(port, &format!("/api/jobs/{blocked}"));
    assert_eq!((j["status"].clone(), j["blocked_by"].clone()), (json!("blocked"), json!(1)), "{j}");
    assert_eq!(j["dependencies"][0]["dependency"], json!(first), "{j}");
    assert_eq!(j["dependencies"][0]["resolved"], json!(false), "{j}");
    assert!(get_json(port, &format!("/api/jobs/{first}")).get("dependencies").is_none());
    let rows = get_json(port, &format!("/api/jobs?queue={flow}&status=blocked"));
    assert_eq!(rows.as_array().unwrap().iter().map(|r| r["id"].clone()).collect::<Vec<_>>(), vec![json!(blocked)]);
    let (status, body) = http(port, "POST", &format!("/api/jobs/{blocked}/cancel"), &[("X-Queuectl", "1")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(status_of(&url, blocked), "cancelled");
    assert_eq!(http(port, "POST", &format!("/api/jobs/{blocked}/cancel"), &[("X-Queuectl", "1")]).0, 409);

    // A POST without the header is refused (no cross-site form can send it).
    let retry = format!("/api/jobs/{}/retry", dead[0]);
    assert_eq!(http(port, "POST", &retry, &[]).0, 403);
    assert_eq!(status_of(&url, dead[0]), "failed");
    let (status, body) = http(port, "POST", &retry, &[("X-Queuectl", "1")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(status_of(&url, dead[0]), "pending");
    assert_eq!(http(port, "POST", &retry, &[("X-Queuectl", "1")]).0, 409, "not dead any more");
    assert_eq!(http(port, "POST", "/api/jobs/987654321/retry", &[("X-Queuectl", "1")]).0, 404);
    let (status, _) = http(port, "POST", &format!("/api/jobs/{}/delete", dead[1]), &[("X-Queuectl", "1")]);
    assert_eq!(status, 200);
    assert!(job(&url, dead[1]).is_null());
    make_dead(&url, &q, 1);
    let r: Value =
        serde_json::from_str(&http(port, "POST", &format!("/api/queues/{q}/retry-all"), &[("X-Queuectl", "1")]).1)
            .unwrap();
    assert_eq!(r["retried"], json!(1));

    // DNS rebinding: a Host that is not a loopback name is refused, one that
    // only begins like a loopback address (a name an attacker's DNS can point
    // at 127.0.0.1) included, and so is a request without a Host.
    let raw = |host: Option<&str>| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        s.write_all(format!("GET /api/info HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp.lines().next().unwrap_or("").to_owned()
    };
    for host in [Some("evil.example:80"), Some(&format!("127.evil.example:{port}")), Some("127.0.0.1.evil.example")] {
        assert!(raw(host).starts_with("HTTP/1.1 403"), "{host:?}: {}", raw(host));
    }
    let none = raw(None);
    assert!(none.starts_with("HTTP/1.1 403") || none.starts_with("HTTP/1.1 400"), "no Host: {none}");
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("127.1.2.3:{port}"), "[::1]".into()]
    {
        assert!(raw(Some(&host)).starts_with("HTTP/1.1 200"), "{host}: {}", raw(Some(&host)));
    }
    drop(srv);

    // Read-only: every POST refused.
    let ro = serve(&url, 25492, &["--read-only"]);
    assert_eq!(http(ro.1, "POST", &format!("/api/jobs/{}/retry", dead[0]), &[("X-Queuectl", "1")]).0, 403);
}

#[test]
fn serve_pauses_and_resumes_behind_the_same_guards() {
    let url = need_db!();
    let q = queue("serve.pause");
    push(&url, &q, "{}", &[]);
    let paused = || qc_json(&url, &["status", &q])["stats"]["paused"].clone();
    let srv = serve(&url, 25494, &[]);
    let port = srv.1;
    let pause = format!("/api/queues/{q}/pause");
    let resume = format!("/api/queues/{q}/resume");

    // Without the header: refused, nothing paused.
    assert_eq!(http(port, "POST", &pause, &[]).0, 403);
    assert_eq!(paused(), json!(false));
    // A GET is no action.
    assert_ne!(http(port, "GET", &pause, &[]).0, 200);
    assert_eq!(paused(), json!(false));

    let (status, body) = http(port, "POST", &pause, &[("X-Queuectl", "1")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"queue": q, "paused": true, "changed": true}));
    assert_eq!(paused(), json!(true));
    let row = get_json(port, "/api/overview")["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["queue"] == json!(q))
        .cloned()
        .expect("queue in overview");
    assert_eq!(row["paused"], json!(true), "the stats panel's data carries it");
    assert!(get_json(port, "/api/overview")["total"]["paused_queues"].as_i64().unwrap() >= 1);
    let (status, body) = http(port, "POST", &pause, &[("X-Queuectl", "1")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["changed"], json!(false), "already paused");

    assert_eq!(http(port, "POST", &resume, &[]).0, 403);
    assert_eq!(paused(), json!(true));
    let (status, body) = http(port, "POST", &resume, &[("X-Queuectl", "1")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"queue": q, "paused": false, "changed": true}));
    assert_eq!(paused(), json!(false));

    // A bad name (percent-encoded in the path) is the server's 22023: 400, as JSON.
    let (status, body) = http(port, "POST", "/api/queues/bad%20name%21/pause", &[("X-Queuectl", "1")]);
    assert_eq!(status, 400, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].as_str().unwrap().contains("22023"), "{body}");
    drop(srv);

    // Read-only: refused.
    let ro = serve(&url, 25495, &["--read-only"]);
    assert_eq!(http(ro.1, "POST", &pause, &[("X-Queuectl", "1")]).0, 403);
    assert_eq!(paused(), json!(false));
}

#[test]
fn serve_shows_tags_batches_and_queue_settings() {
    let url = need_db!();
    let q = queue("serve.flow");
    let tag = format!("web-{}", std::process::id());
    assert_eq!(code(&qc(&url, &["configure", &q, "--max-attempts", "6"])), 0);
    let batch = qc_json(&url, &["batch", "open"])["id"].as_i64().unwrap();
    let first = push(&url, &q, "{}", &["--tag", &tag, "--batch", &batch.to_string()]);
    let second = push(&url, &q, "{}", &["--depends-on", &first.to_string(), "--batch", &batch.to_string()]);
    let untagged = push(&url, &q, "{}", &[]);
    push(&url, &format!("{q}.plain"), "{}", &[]);
    let srv = serve(&url, 25497, &[]);
    let port = srv.1;

    // The job: tags, batch id and the batch's state, dependencies.
    let j = get_json(port, &format!("/api/jobs/{first}"));
    assert_eq!(
        (j["tags"].clone(), j["batch_id"].clone(), j["batch"]["state"].clone()),
        (json!([tag]), json!(batch), json!("open"))
    );
    let j = get_json(port, &format!("/api/jobs/{second}"));
    assert_eq!(j["dependencies"][0]["dependency"], json!(first), "{j}");
    assert!(j["tags"].is_null() && j["batch"]["total"] == json!(2), "{j}");
    assert!(get_json(port, &format!("/api/jobs/{untagged}")).get("batch").is_none());

    // The batch by id; 404 for an unknown one; no action on it (read-only view).
    let b = get_json(port, &format!("/api/batches/{batch}"));
    assert_eq!((b["state"].clone(), b["total"].clone(), b["pending"].clone()), (json!("open"), json!(2), json!(2)));
    assert_eq!(http(port, "GET", "/api/batches/987654321", &[]).0, 404);
    assert_ne!(http(port, "POST", &format!("/api/batches/{batch}"), &[("X-Queuectl", "1")]).0, 200);
    assert_eq!(get_json(port, &format!("/api/batches/{batch}"))["state"], json!("open"));

    // The list (queue_batches): newest first, of one state, limited; a bad state is a 400.
    let listed = get_json(port, "/api/batches");
    let row = &listed[0];
    assert_eq!(
        (row["id"].clone(), row["state"].clone(), row["total"].clone()),
        (json!(batch), json!("open"), Value::Null),
        "{listed}"
    );
    assert!(row.get("complete_job").is_some() && row["created_at"].is_string(), "{row}");
    assert_eq!(ids_in_order(&get_json(port, "/api/batches?limit=1")), vec![batch]);
    let open = get_json(port, "/api/batches?state=open&limit=1000");
    assert!(
        open.as_array().unwrap().iter().all(|r| r["state"] == json!("open")) && ids_in_order(&open).contains(&batch)
    );
    let done = get_json(port, "/api/batches?state=done&limit=1000");
    assert!(
        done.as_array().unwrap().iter().all(|r| r["state"] == json!("done")) && !ids_in_order(&done).contains(&batch)
    );
    assert_eq!(
        ids_in_order(&get_json(port, "/api/batches?state=&limit=1")),
        vec![batch],
        "an empty state is every state"
    );
    let (status, body) = http(port, "GET", "/api/batches?state=bogus", &[]);
    assert_eq!(status, 400, "{body}");
    assert!(
        serde_json::from_str::<Value>(&body).unwrap()["error"].as_str().unwrap().contains("unknown batch state"),
        "{body}"
    );
    assert_ne!(http(port, "POST", "/api/batches", &[("X-Queuectl", "1")]).0, 200);

    // The tag filter of the job browser.
    let rows = get_json(port, &format!("/api/jobs?queue={q}&status=pending&tag={tag}"));
    assert_eq!(ids_of(&rows), vec![first], "{rows}");
    assert_eq!(rows[0]["tags"], json!([tag]));
    assert_eq!(ids_of(&get_json(port, &format!("/api/jobs?queue={q}&status=pending"))), vec![first, untagged]);
    assert_eq!(ids_of(&get_json(port, &format!("/api/jobs?queue={q}&status=all&tag={tag}"))), vec![first]);

    // The queue's settings in the overview and /api/settings.
    let ov = get_json(port, "/api/overview");
    let row = ov["queues"].as_array().unwrap().iter().find(|r| r["queue"] == json!(q)).cloned().expect("in overview");
    assert_eq!(row["settings"]["max_attempts"], json!(6), "{row}");
    assert_eq!(row["stats"]["blocked"], json!(1), "{row}");
    let other =
        ov["queues"].as_array().unwrap().iter().find(|r| r["queue"] != json!(q)).cloned().expect("another queue");
    assert!(other.get("settings").is_some(), "every queue has the key");
    let settings = get_json(port, "/api/settings");
    assert!(settings.as_array().unwrap().iter().any(|r| r["queue"] == json!(q) && r["max_attempts"] == json!(6)));
    drop(srv);

    // Read-only: the views still answer.
    let ro = serve(&url, 25498, &["--read-only"]);
    assert_eq!(get_json(ro.1, &format!("/api/batches/{batch}"))["id"], json!(batch));
    assert_eq!(ids_in_order(&get_json(ro.1, "/api/batches?limit=1")), vec![batch]);
    drop(ro);
    assert_eq!(code(&qc(&url, &["batch", "cancel", &batch.to_string()])), 0);
    assert_eq!(code(&qc(&url, &["configure", &q, "--reset"])), 0);
}

#[test]
fn serve_and_the_cli_list_large_payloads_as_previews() {
    let url = need_db!();
    let q = queue("serve.big");
    // Three dead jobs of about 200 kB each, one small.
    sql(
        &url,
        &format!(
            "SELECT count(*) FROM queue_push_batch('{q}', array_fill(jsonb_build_object('blob', repeat('x', 200000)), \
             array[3]))"
        ),
    );
    let ids: Vec<i64> = sql(
        &url,
        &format!(
            "SELECT id FROM (SELECT id, queue_fail(id, 'boom', permanent => true) AS s \
             FROM queue_pop('{q}', 'test-worker', 3)) x WHERE s = 'failed'"
        ),
    )
    .iter()
    .filter_map(Value::as_i64)
    .collect();
    assert_eq!(ids.len(), 3);
    push(&url, &q, r#"{"small": true}"#, &[]);

    let srv = serve(&url, 25520, &[]);
    let (status, body) = http(srv.1, "GET", &format!("/api/failed?queue={q}&limit=50"), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.len() < 20_000, "a listing of three 200 kB payloads carried {} bytes", body.len());
    let rows: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r["truncated"], json!(true), "{r}");
        let preview = r["payload"].as_str().unwrap();
        assert!(preview.starts_with(r#"{"blob": "xxx"#) && preview.ends_with('…'), "{preview:.60}");
        assert!(preview.chars().count() <= 1001);
        assert_eq!(r["last_error"], json!("boom"));
    }
    // The pending job is listed whole; the job page carries everything.
    let (_, pending) = http(srv.1, "GET", &format!("/api/jobs?queue={q}&status=pending"), &[]);
    let pending: Vec<Value> = serde_json::from_str(&pending).unwrap();
    assert_eq!(pending[0]["payload"], json!({"small": true}));
    assert!(pending[0].get("truncated").is_none());
    let (_, one) = http(srv.1, "GET", &format!("/api/jobs/{}", ids[0]), &[]);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["payload"]["blob"].as_str().map(str::len), Some(200_000));
    drop(srv);

    // The command line: the same listing, and retry --all / purge-dead,
    // which fetch only ids and times.
    let failed = qc_json(&url, &["failed", &q]);
    assert!(failed.to_string().len() < 20_000);
    let out = qc(&url, &["retry", "--all", &q]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        sql(&url, &format!("SELECT count(*) FROM queue.jobs WHERE queue = '{q}' AND status = 'pending'"))[0],
        json!(4)
    );
}
