//! The subcommands that read and change the queue (everything but `work` and `serve`).

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use queue_client::Priority;
use serde_json::{json, Value};

use crate::api::{Api, ConfigureCall, PushCall};
use crate::error::{CliError, Exit, Result};
use crate::output::{self, ago, cell, field, int, ms, percent, preview, secs, when, Table};
use crate::{BatchCommand, Cli, Command, ConfigureArgs, PushArgs, ScheduleArgs};

/// How the output is made.
#[derive(Clone, Copy)]
pub struct Out {
    /// JSON instead of tables.
    pub json: bool,
    /// No progress bars.
    pub quiet: bool,
}

impl Out {
    fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
    }

    fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet || self.json {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed}, {eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }
}

/// Runs one command; the exit code it asks for (errors come back as `Err`).
pub async fn run(cli: Cli) -> Result<Exit> {
    let out = Out { json: cli.json, quiet: cli.quiet };
    let config = crate::config::resolve(cli.database_url.as_deref())?;
    match cli.command {
        Command::Work(args) => return crate::work::run(config, args).await,
        Command::Serve { listen, read_only } => return crate::serve::run(config, listen, read_only).await,
        Command::Clear { force: false, queue } => {
            return Err(CliError::usage(format!(
                "refusing to delete the waiting jobs of {queue:?} without --force (queuectl clear {queue} --force)"
            )))
        }
        _ => {}
    }
    let api = Api::connect(&config).await?;
    api.check_extension().await?;
    match cli.command {
        Command::Status { queue, since } => status(&api, out, queue.as_deref(), since).await,
        Command::List => list(&api, out).await,
        Command::Describe { queue } => describe(&api, out, &queue).await,
        Command::Jobs { queue, status, limit, tag } => jobs(&api, out, &queue, &status, limit, tag.as_deref()).await,
        Command::Job { id } => job(&api, out, id).await,
        Command::Push(args) => push(&api, out, args).await,
        Command::Failed { queue, limit, tag } => failed(&api, out, queue.as_deref(), limit, tag.as_deref()).await,
        Command::Retry { id: Some(id), .. } => retry(&api, out, id).await,
        Command::Retry { all: Some(queue), tag, .. } => retry_all(&api, out, &queue, tag.as_deref()).await,
        Command::Retry { .. } => Err(CliError::usage("retry needs a job id or --all QUEUE")),
        Command::Delete { id } => delete(&api, out, id).await,
        Command::Cancel { id } => cancel(&api, out, id).await,
        Command::PurgeDead { queue, older_than, tag } => {
            purge_dead(&api, out, queue.as_deref(), older_than, tag.as_deref()).await
        }
        Command::Configure(args) => configure(&api, out, args).await,
        Command::Settings => settings(&api, out).await,
        Command::Stats { queue, tag } => stats(&api, out, queue.as_deref(), tag.as_deref()).await,
        Command::Batch(BatchCommand::Open { on_complete, on_failure }) => {
            batch_open(&api, out, on_complete.as_deref(), on_failure.as_deref()).await
        }
        Command::Batch(BatchCommand::Close { id }) => batch_close(&api, out, id).await,
        Command::Batch(BatchCommand::Cancel { id }) => batch_cancel(&api, out, id).await,
        Command::Batch(BatchCommand::Show { id }) => batch_show(&api, out, id).await,
        Command::Batch(BatchCommand::List { state, limit }) => batch_list(&api, out, state.as_deref(), limit).await,
        Command::Clear { queue, .. } => clear(&api, out, &queue).await,
        Command::Cleanup { older_than } => cleanup(&api, out, older_than).await,
        Command::Pause { queue } => pause(&api, out, &queue).await,
        Command::Resume { queue } => resume(&api, out, &queue).await,
        Command::Schedules => schedules(&api, out).await,
        Command::Schedule(args) => schedule(&api, out, args).await,
        Command::Unschedule { name } => unschedule(&api, out, &name).await,
        Command::Trigger { name } => trigger(&api, out, &name).await,
        Command::Timeline { horizon, limit } => timeline(&api, out, horizon, limit).await,
        Command::Workers => workers(&api, out).await,
        Command::Health => health(&api, out).await,
        Command::Work(_) | Command::Serve { .. } => unreachable!(),
    }
}

/// "2 waiting (1 pending, 1 scheduled, 0 retrying), 1 processing, 1 blocked";
/// without ", N blocked" for an extension whose stats have no `blocked`
/// (one from before dependencies).
fn depth_line(s: &Value) -> String {
    let mut line = format!(
        "{} waiting ({} pending, {} scheduled, {} retrying), {} processing",
        int(s, "total_size"),
        int(s, "pending"),
        int(s, "scheduled"),
        int(s, "retrying"),
        int(s, "processing")
    );
    if s.get("blocked").is_some_and(|b| !b.is_null()) {
        line.push_str(&format!(", {} blocked", int(s, "blocked")));
    }
    line
}

/// The BLOCKED cell: jobs waiting for their dependencies (`queue_stats`'s
/// `blocked`; blocked jobs are not in WAITING), `-` for an extension from
/// before dependencies.
fn blocked_cell(s: &Value) -> String {
    field(s, "blocked")
}

/// "high 3, normal 10, 7: 1" from `priority_breakdown`, best priority first.
pub fn priority_line(s: &Value) -> String {
    let Some(map) = s.get("priority_breakdown").and_then(Value::as_object) else {
        return "-".into();
    };
    if map.is_empty() {
        return "-".into();
    }
    let rank = |k: &str| match k {
        "critical" => -20,
        "high" => -10,
        "normal" => 0,
        "low" => 10,
        n => n.parse().unwrap_or(0),
    };
    let mut items: Vec<(&String, &Value)> = map.iter().collect();
    items.sort_by_key(|(k, _)| rank(k));
    items.iter().map(|(k, v)| format!("{k} {}", cell(v))).collect::<Vec<_>>().join(", ")
}

fn metrics_line(m: &Value, since: Duration) -> String {
    format!(
        "{} finished in the last {}: {} completed, {} failed, {} expired; success {}; {}/min; run avg {}, p95 {}; wait p95 {}",
        int(m, "executions"),
        output::format_duration(since),
        int(m, "completed"),
        int(m, "failed"),
        int(m, "expired"),
        percent(m.get("success_rate").unwrap_or(&Value::Null)),
        m.get("throughput_per_minute").and_then(Value::as_f64).map(|x| format!("{x:.2}")).unwrap_or("-".into()),
        ms(m.get("avg_run_ms").unwrap_or(&Value::Null)),
        ms(m.get("p95_run_ms").unwrap_or(&Value::Null)),
        ms(m.get("p95_wait_ms").unwrap_or(&Value::Null)),
    )
}

fn workers_line(workers: &[Value]) -> String {
    let healthy = workers.iter().filter(|w| w["healthy"] == json!(true)).count();
    let running: i64 = workers.iter().map(|w| int(w, "running_jobs")).sum();
    format!(
        "{} healthy, {} stale, {} running job{}",
        healthy,
        workers.len() - healthy,
        running,
        if running == 1 { "" } else { "s" }
    )
}

fn health_line(h: &Value) -> String {
    let ok = h["healthy"] == json!(true);
    let problems: Vec<String> = h["problems"].as_array().map(|a| a.iter().map(cell).collect()).unwrap_or_default();
    let mut s = if ok { "healthy".to_owned() } else { "NOT HEALTHY".to_owned() };
    s.push_str(&format!("; last tick {}", ago(h, "last_tick")));
    if !problems.is_empty() {
        s.push_str(&format!("; problems: {}", problems.join("; ")));
    }
    s
}

async fn status(api: &Api, out: Out, queue: Option<&str>, since: Duration) -> Result<Exit> {
    let (workers, health) = (api.workers().await?, api.health().await?);
    if let Some(q) = queue {
        let known = api.list().await?.iter().any(|l| l["queue"] == json!(q));
        if !known {
            return Err(CliError::not_found(format!("no queue {q:?} (a queue exists once it had a job)")));
        }
        let (stats, metrics) = (api.stats(Some(q)).await?, api.metrics(Some(q), since).await?);
        if out.json {
            out.print_json(
                &json!({"queue": q, "stats": stats, "metrics": metrics, "workers": workers, "health": health}),
            );
            return Ok(Exit::Ok);
        }
        println!("queue {q}");
        println!("  depth      {}", depth_line(&stats));
        println!("  priority   {}", priority_line(&stats));
        println!("  metrics    {}", metrics_line(&metrics, since));
        println!("  oldest     {} waiting", secs(&stats["oldest_pending_age"]));
        if let Some(p) = paused_line(api, q, &stats).await? {
            println!("  paused     {p}");
        }
        println!(
            "  totals     {} pushed, {} claimed, {} completed, {} failed, {} expired, {} cancelled",
            int(&stats, "total_pushed"),
            int(&stats, "total_popped"),
            int(&stats, "completed"),
            int(&stats, "failed"),
            int(&stats, "expired"),
            int(&stats, "cancelled")
        );
        println!("  activity   {}", when(&stats, "last_activity"));
    } else {
        let queues = api.overview(since).await?;
        let (stats, metrics) = (api.stats(None).await?, api.metrics(None, since).await?);
        if out.json {
            out.print_json(&json!({"queues": queues, "total": {"stats": stats, "metrics": metrics},
                                    "workers": workers, "health": health}));
            return Ok(Exit::Ok);
        }
        let mut t = Table::new(&[
            "QUEUE",
            ">WAITING",
            ">PENDING",
            ">SCHED",
            ">RETRY",
            ">RUNNING",
            ">BLOCKED",
            "PRIORITIES",
            ">DONE/MIN",
            ">SUCCESS",
            ">P95 RUN",
            ">OLDEST",
            "PAUSED",
        ]);
        for q in &queues {
            let (s, m) = (&q["stats"], &q["metrics"]);
            t.row(vec![
                field(q, "queue"),
                int(s, "total_size").to_string(),
                int(s, "pending").to_string(),
                int(s, "scheduled").to_string(),
                int(s, "retrying").to_string(),
                int(s, "processing").to_string(),
                blocked_cell(s),
                priority_line(s),
                m.get("throughput_per_minute").and_then(Value::as_f64).map(|x| format!("{x:.2}")).unwrap_or("-".into()),
                percent(&m["success_rate"]),
                ms(&m["p95_run_ms"]),
                secs(&s["oldest_pending_age"]),
                paused_mark(q),
            ]);
        }
        if t.is_empty() {
            println!("no queues yet (a queue exists once it had a job)");
        } else {
            print!("{}", t.render());
        }
        println!();
        println!("all queues {}", depth_line(&stats));
        println!("metrics    {}", metrics_line(&metrics, since));
        println!("oldest     {} waiting", secs(&stats["oldest_pending_age"]));
        // From queue_health, not the table: a queue can be paused before it has
        // jobs, and then it is in no row above.
        if let Some(names) = health.get("paused_queues").and_then(Value::as_array) {
            let names: Vec<String> = names.iter().map(cell).collect();
            if names.is_empty() {
                println!("paused     none");
            } else {
                println!("paused     {}: {}", names.len(), names.join(", "));
            }
        }
    }
    println!("workers    {}", workers_line(&workers));
    println!("health     {}", health_line(&health));
    Ok(Exit::Ok)
}

/// The PAUSED cell of a `queue_list` row: `PAUSED` or empty (like timeline's
/// DUE), so that a paused queue stands out in a long table.
fn paused_mark(row: &Value) -> String {
    if row["paused"] == json!(true) {
        "PAUSED".into()
    } else {
        String::new()
    }
}

/// "no", or "yes, since 5 min ago by ops: no job is handed out (queuectl resume Q)"
/// from `queue_stats(queue)` and `queue_settings()`; `None` for an extension
/// from before pausing (its stats have no `paused`).
async fn paused_line(api: &Api, queue: &str, stats: &Value) -> Result<Option<String>> {
    match stats.get("paused").and_then(Value::as_bool) {
        None => Ok(None),
        Some(false) => Ok(Some("no".into())),
        Some(true) => {
            // Only a paused queue costs the extra call: since when and by whom.
            let settings = api.settings().await?;
            let mut line = "yes".to_owned();
            if let Some(s) = settings.iter().find(|s| s["queue"] == json!(queue)) {
                line.push_str(&format!(", since {} by {}", ago(s, "paused_at"), field(s, "paused_by")));
            }
            line.push_str(&format!(": no job is handed out (queuectl resume {queue})"));
            Ok(Some(line))
        }
    }
}

async fn list(api: &Api, out: Out) -> Result<Exit> {
    let rows = api.list_with_blocked().await?;
    if out.json {
        out.print_json(&Value::Array(rows));
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&[
        "QUEUE",
        ">WAITING",
        ">PENDING",
        ">SCHEDULED",
        ">RETRYING",
        ">PROCESSING",
        ">BLOCKED",
        ">COMPLETED",
        ">FAILED",
        ">EXPIRED",
        ">PUSHED",
        "LAST ACTIVITY",
        "PAUSED",
    ]);
    for r in &rows {
        t.row(vec![
            field(r, "queue"),
            field(r, "total_size"),
            field(r, "pending"),
            field(r, "scheduled"),
            field(r, "retrying"),
            field(r, "processing"),
            blocked_cell(r),
            field(r, "completed"),
            field(r, "failed"),
            field(r, "expired"),
            field(r, "total_pushed"),
            ago(r, "last_activity"),
            paused_mark(r),
        ]);
    }
    if t.is_empty() {
        println!("no queues yet");
    } else {
        print!("{}", t.render());
    }
    Ok(Exit::Ok)
}

async fn describe(api: &Api, out: Out, queue: &str) -> Result<Exit> {
    let listed = api.list().await?;
    let Some(row) = listed.iter().find(|l| l["queue"] == json!(queue)).cloned() else {
        return Err(CliError::not_found(format!("no queue {queue:?} (a queue exists once it had a job)")));
    };
    let hour = Duration::from_secs(3600);
    let stats = api.stats(Some(queue)).await?;
    let metrics = api.metrics(Some(queue), hour).await?;
    let next = api.peek(queue, 5).await?;
    let dead = api.dead(Some(queue), 5, None).await?;
    let schedules: Vec<Value> = api.schedules().await?.into_iter().filter(|s| s["queue"] == json!(queue)).collect();
    let workers: Vec<Value> = api
        .workers()
        .await?
        .into_iter()
        .filter(|w| w["info"]["queues"].as_array().map(|a| a.contains(&json!(queue))).unwrap_or(false))
        .collect();
    if out.json {
        out.print_json(&json!({"queue": queue, "counts": row, "stats": stats, "metrics": metrics, "next": next,
                                "dead": dead, "schedules": schedules, "workers": workers}));
        return Ok(Exit::Ok);
    }
    println!("queue {queue}");
    println!("  depth       {}", depth_line(&stats));
    println!("  priorities  {}", priority_line(&stats));
    println!("  metrics     {}", metrics_line(&metrics, hour));
    println!("  oldest      {} waiting", secs(&stats["oldest_pending_age"]));
    if let Some(p) = paused_line(api, queue, &stats).await? {
        println!("  paused      {p}");
    }
    println!(
        "  totals      {} pushed, {} claimed, {} completed, {} failed, {} expired, {} cancelled, {} retried, {} deleted",
        int(&stats, "total_pushed"),
        int(&stats, "total_popped"),
        int(&stats, "completed"),
        int(&stats, "failed"),
        int(&stats, "expired"),
        int(&stats, "cancelled"),
        int(&stats, "retried"),
        int(&stats, "deleted")
    );
    println!("  activity    {}", when(&stats, "last_activity"));
    println!("\nnext jobs (claim order)");
    print_waiting(&next);
    println!("\nrecent dead letters");
    print_dead(&dead);
    println!("\nschedules");
    print_schedules(&schedules);
    println!("\nworkers serving it");
    print_workers(&workers);
    Ok(Exit::Ok)
}

fn print_waiting(rows: &[Value]) {
    let mut t = Table::new(&[">ID", ">PRIORITY", "GROUP", ">ATTEMPTS", "CREATED", "PAYLOAD"]);
    for r in rows {
        t.row(vec![
            field(r, "id"),
            field(r, "priority"),
            field(r, "serial_group"),
            field(r, "attempts"),
            ago(r, "created_at"),
            preview(&r["payload"].to_string(), 60),
        ]);
    }
    if t.is_empty() {
        println!("  none");
    } else {
        print!("{}", t.render());
    }
}

fn print_dead(rows: &[Value]) {
    let mut t = Table::new(&[">ID", "QUEUE", "STATUS", ">ATTEMPTS", "FINISHED", "ERROR", "PAYLOAD"]);
    for r in rows {
        t.row(vec![
            field(r, "id"),
            field(r, "queue"),
            field(r, "status"),
            format!("{}/{}", field(r, "attempts"), field(r, "max_attempts")),
            ago(r, "finished_at"),
            preview(&field(r, "last_error"), 50),
            preview(&r["payload"].to_string(), 40),
        ]);
    }
    if t.is_empty() {
        println!("  none");
    } else {
        print!("{}", t.render());
    }
}

/// Rows of `queue_jobs`: any status, newest first, with their tags (a
/// TAGS column only where the extension returns them).
fn print_listed(rows: &[Value]) {
    let with_tags = rows.iter().any(|r| r.get("tags").is_some());
    let mut header = vec![">ID", "QUEUE", "STATUS", ">ATTEMPT", "CREATED", "STARTED", "FINISHED", "ERROR", "PAYLOAD"];
    if with_tags {
        header.insert(3, "TAGS");
    }
    let mut t = Table::new(&header);
    for r in rows {
        let mut cells = vec![
            field(r, "id"),
            field(r, "queue"),
            field(r, "status"),
            format!("{}/{}", field(r, "attempt"), field(r, "max_attempts")),
            ago(r, "created_at"),
            ago(r, "started_at"),
            ago(r, "finished_at"),
            preview(&field(r, "last_error"), 40),
            preview(&r["payload"].to_string(), 30),
        ];
        if with_tags {
            cells.insert(3, tag_list(&r["tags"]));
        }
        t.row(cells);
    }
    if t.is_empty() {
        println!("  none");
    } else {
        print!("{}", t.render());
    }
}

fn print_schedules(rows: &[Value]) {
    let mut t = Table::new(&[
        "NAME",
        "KIND",
        "SCHEDULE",
        "QUEUE",
        "ENABLED",
        "NEXT RUN",
        "LAST RUN",
        ">LAST JOB",
        "LAST ERROR",
    ]);
    for r in rows {
        t.row(vec![
            field(r, "name"),
            field(r, "kind"),
            field(r, "schedule"),
            field(r, "queue"),
            field(r, "enabled"),
            ago(r, "next_run_at"),
            ago(r, "last_run_at"),
            field(r, "last_job_id"),
            preview(&field(r, "last_error"), 40),
        ]);
    }
    if t.is_empty() {
        println!("  none");
    } else {
        print!("{}", t.render());
    }
}

fn print_workers(rows: &[Value]) {
    let mut t = Table::new(&["WORKER", "STATE", ">RUNNING", "LAST HEARTBEAT", "HOST", ">PID", "QUEUES", "STARTED"]);
    for r in rows {
        let info = &r["info"];
        t.row(vec![
            field(r, "worker"),
            if r["healthy"] == json!(true) { "healthy".into() } else { "stale".into() },
            field(r, "running_jobs"),
            ago(r, "last_heartbeat"),
            field(info, "host"),
            field(info, "pid"),
            info["queues"].as_array().map(|a| a.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or("-".into()),
            ago(r, "started_at"),
        ]);
    }
    if t.is_empty() {
        println!("  none");
    } else {
        print!("{}", t.render());
    }
}

/// Tags of a JSON array as "a,b" (no spaces: one cell of a table); `-` for none.
fn tag_list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(cell).collect::<Vec<_>>().join(","),
        _ => "-".into(),
    }
}

/// `jobs`: pending jobs in claim order (`queue_peek`), dead ones from
/// `queue_dead`, any other status newest first (`queue_jobs`). With a tag,
/// pending jobs come from `queue_jobs` too (`queue_peek` has no tag filter),
/// newest first.
async fn jobs(api: &Api, out: Out, queue: &str, status: &str, limit: i32, tag: Option<&str>) -> Result<Exit> {
    if !queue_client::is_valid_queue_name(queue) {
        return Err(CliError::usage(format!("bad queue name {queue:?}: 1-57 characters of [A-Za-z0-9_.:-]")));
    }
    if !api.list().await?.iter().any(|l| l["queue"] == json!(queue)) {
        return Err(CliError::not_found(format!("no queue {queue:?} (a queue exists once it had a job)")));
    }
    const STATUSES: [&str; 9] =
        ["scheduled", "pending", "processing", "retrying", "blocked", "completed", "failed", "expired", "cancelled"];
    let rows = match status {
        // Pending jobs in the order they will be claimed; dead letters as
        // queue_dead gives them; any other status newest first.
        "pending" if tag.is_none() => api.peek(queue, limit).await?,
        "dead" => api.dead(Some(queue), limit, tag).await?,
        s if STATUSES.contains(&s) => api.list_jobs(Some(queue), Some(s), limit, None, tag).await?,
        other => {
            return Err(CliError::usage(format!(
                "unknown status {other:?}: one of {}, or dead (failed and expired)",
                STATUSES.join(", ")
            )))
        }
    };
    if out.json {
        out.print_json(&Value::Array(rows));
        return Ok(Exit::Ok);
    }
    if status == "pending" && tag.is_none() {
        print_waiting(&rows);
    } else if status == "dead" {
        print_dead(&rows);
    } else {
        print_listed(&rows);
    }
    Ok(Exit::Ok)
}

async fn job(api: &Api, out: Out, id: i64) -> Result<Exit> {
    let Some(j) = api.job_detail(id).await? else {
        return Err(CliError::not_found(format!("no job {id}")));
    };
    if out.json {
        out.print_json(&j);
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for key in ["id", "queue", "status", "priority", "serial_group", "dedupe_key", "worker"] {
        t.row(vec![key.into(), field(&j, key)]);
    }
    t.row(vec!["attempts".into(), format!("{} of {}", field(&j, "attempts"), field(&j, "max_attempts"))]);
    t.row(vec!["timeout".into(), field(&j, "timeout")]);
    if j["waiting_for_group"] == json!(true) {
        t.row(vec!["waiting".into(), "for its serial group".into()]);
    }
    // Dependencies (an extension from before them has neither key).
    if j.get("depends_on").is_some() {
        t.row(vec!["depends_on".into(), id_list(&j["depends_on"])]);
    }
    if j.get("blocked_by").is_some() {
        t.row(vec!["blocked_by".into(), blocked_by(&j)]);
    }
    // Tags and batch (an extension from before them has neither key).
    if j.get("tags").is_some() {
        t.row(vec!["tags".into(), id_list(&j["tags"])]);
    }
    if j.get("batch_id").is_some() {
        t.row(vec!["batch".into(), batch_cell(&j)]);
    }
    for key in ["created_at", "run_at", "started_at", "lease_until", "finished_at"] {
        t.row(vec![key.into(), when(&j, key)]);
    }
    if let (Some(s), Some(f)) =
        (j["started_at"].as_str().and_then(output::parse_time), j["finished_at"].as_str().and_then(output::parse_time))
    {
        let d = (f - s).to_std().unwrap_or_default();
        t.row(vec!["ran for".into(), output::human_span(d)]);
    }
    if let Some(p) = j.get("progress").filter(|p| !p.is_null()) {
        t.row(vec![
            "progress".into(),
            format!("{}/{} ({}%) {}", field(p, "current"), field(p, "total"), field(p, "percent"), field(p, "message")),
        ]);
    }
    print!("{}", t.render());
    if let Some(deps) = j["dependencies"].as_array() {
        print_dependencies(deps);
    }
    println!("\npayload\n{}", serde_json::to_string_pretty(&j["payload"]).unwrap_or_default());
    if !j["result"].is_null() {
        println!("\nresult\n{}", serde_json::to_string_pretty(&j["result"]).unwrap_or_default());
    }
    // Every failed attempt's error (queue_job's errors), oldest first.
    let errors = j["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        let mut t = Table::new(&[">ATTEMPT", "WHEN", "ERROR"]);
        for e in &errors {
            t.row(vec![field(e, "attempt"), when(e, "at"), preview(&field(e, "error"), 100)]);
        }
        println!("\nerrors\n{}", t.render());
    } else if !j["last_error"].is_null() {
        println!("\nlast error\n{}", field(&j, "last_error"));
    }
    Ok(Exit::Ok)
}

/// Job ids of a JSON array as "41, 42"; `-` for null (no dependencies).
fn id_list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        _ => "-".into(),
    }
}

/// The batch row of `job`: "7 (open, 1 of 3 final)" or "-" for none.
fn batch_cell(j: &Value) -> String {
    let Some(id) = j["batch_id"].as_i64() else {
        return "-".into();
    };
    let b = &j["batch"];
    if b.is_null() {
        return id.to_string();
    }
    format!("{id} ({}, {} of {} final; queuectl batch show {id})", field(b, "state"), final_count(b), field(b, "total"))
}

/// How many jobs of a `queue_batch` object are final (total - pending).
fn final_count(b: &Value) -> i64 {
    int(b, "total") - int(b, "pending")
}

/// `blocked_by` of `queue_job`: "1 of 2 dependencies not resolved" for a job
/// with dependencies, else the bare count (0).
fn blocked_by(j: &Value) -> String {
    match j["depends_on"].as_array() {
        Some(deps) if !deps.is_empty() => format!(
            "{} of {} dependenc{} not resolved",
            int(j, "blocked_by"),
            deps.len(),
            if deps.len() == 1 { "y" } else { "ies" }
        ),
        _ => field(j, "blocked_by"),
    }
}

/// The rows of `queue_dependencies`: one per dependency, in id order. A
/// dependency is resolved once it completed (or, with run_anyway, ended);
/// a status of `-` is a completed job whose history is gone.
fn print_dependencies(rows: &[Value]) {
    let mut t = Table::new(&[">ID", "QUEUE", "STATUS", "RESOLVED", "RUN ANYWAY", "FINISHED"]);
    for r in rows {
        t.row(vec![
            field(r, "dependency"),
            field(r, "queue"),
            field(r, "status"),
            field(r, "resolved"),
            field(r, "run_anyway"),
            ago(r, "finished_at"),
        ]);
    }
    if t.is_empty() {
        println!("\ndependencies\n  none visible");
    } else {
        println!("\ndependencies\n{}", t.render().trim_end());
    }
}

/// Reads a payload argument: JSON text, `-` for stdin, `@file`.
pub fn read_payload(arg: &str) -> Result<Value> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))?
    } else {
        arg.to_owned()
    };
    serde_json::from_str(&text).map_err(|e| CliError::usage(format!("the payload is not JSON: {e}")))
}

fn parse_priority(p: &str) -> Result<i32> {
    p.parse::<Priority>()
        .map(Priority::value)
        .map_err(|_| CliError::usage(format!("bad priority {p:?}: critical, high, normal, low or a number")))
}

fn parse_run_at(s: &str) -> Result<std::time::SystemTime> {
    let t = output::parse_time(s)
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
                .ok()
                .map(|n| n.and_utc())
        })
        .ok_or_else(|| {
            CliError::usage(format!("bad --run-at {s:?}: RFC 3339, e.g. 2026-12-01T02:00:00Z (UTC when no offset)"))
        })?;
    Ok(t.into())
}

/// `push`: the flags as named arguments of one `queue_push` ([`Api::push`]).
/// `--depends-on` ids that name no job are the server's 22023 (exit 2,
/// nothing pushed), like any other argument it refuses.
async fn push(api: &Api, out: Out, a: PushArgs) -> Result<Exit> {
    let payload = read_payload(&a.payload)?;
    let call = PushCall {
        priority: a.priority.as_deref().map(parse_priority).transpose()?,
        delay: a.delay,
        run_at: a.run_at.as_deref().map(parse_run_at).transpose()?,
        serial_group: a.serial_group,
        max_attempts: a.max_attempts,
        timeout: a.timeout,
        backoff_base: a.backoff_base,
        backoff_max: a.backoff_max,
        retry_delays: a.retry_delays,
        dedupe_key: a.dedupe_key,
        depends_on: a.depends_on,
        run_anyway: a.run_anyway,
        tags: a.tags,
        batch: a.batch,
    };
    let id = api.push(&a.queue, &payload, &call).await?;
    if out.json {
        out.print_json(&json!({"id": id, "queue": a.queue}));
    } else {
        println!("{id}");
    }
    Ok(Exit::Ok)
}

async fn failed(api: &Api, out: Out, queue: Option<&str>, limit: i32, tag: Option<&str>) -> Result<Exit> {
    let rows = api.dead(queue, limit, tag).await?;
    if out.json {
        out.print_json(&Value::Array(rows));
        return Ok(Exit::Ok);
    }
    if rows.is_empty() {
        println!("no failed jobs");
    } else {
        print_dead(&rows);
    }
    Ok(Exit::Ok)
}

/// Why a by-id operation did nothing: unknown (exit 3) or in the wrong status (exit 1).
async fn explain(api: &Api, id: i64, verb: &str, wanted: &str) -> CliError {
    match api.job(id).await {
        Ok(None) => CliError::not_found(format!("no job {id}")),
        Ok(Some(j)) => {
            CliError::error(format!("job {id} is {}: only {wanted} jobs can be {verb}", field(&j, "status")))
        }
        Err(e) => e,
    }
}

async fn done(out: Out, v: Value, text: String) -> Result<Exit> {
    if out.json {
        out.print_json(&v);
    } else {
        println!("{text}");
    }
    Ok(Exit::Ok)
}

async fn retry(api: &Api, out: Out, id: i64) -> Result<Exit> {
    if api.retry(id).await? {
        done(out, json!({"id": id, "retried": true}), format!("job {id} is pending again")).await
    } else {
        Err(explain(api, id, "retried", "failed or expired").await)
    }
}

/// `retry --all QUEUE [--tag T]`: the queue's dead jobs (of that tag) as
/// `queue_dead` lists them, retried in chunks so that a progress bar can
/// follow; the same jobs `queue_retry_all(queue, tag)` would retry.
async fn retry_all(api: &Api, out: Out, queue: &str, tag: Option<&str>) -> Result<Exit> {
    const CHUNK: usize = 500;
    let mut skipped: HashSet<i64> = HashSet::new();
    let mut errors: Vec<String> = Vec::new();
    let mut retried = 0i64;
    let bar = out.bar(0, &format!("retrying {queue}"));
    loop {
        let ids: Vec<i64> = api
            .dead_keys(Some(queue), 100_000, tag)
            .await?
            .iter()
            .filter_map(|r| r["id"].as_i64())
            .filter(|id| !skipped.contains(id))
            .collect();
        if ids.is_empty() {
            break;
        }
        bar.inc_length(ids.len() as u64);
        let full = ids.len() >= 100_000;
        for chunk in ids.chunks(CHUNK) {
            match api.retry_many(chunk).await {
                Ok(n) => retried += n,
                Err(_) => {
                    // One job of the chunk is refused (a live job holds its dedupe key): go one by one.
                    for &id in chunk {
                        match api.retry(id).await {
                            Ok(true) => retried += 1,
                            Ok(false) => {}
                            Err(e) => {
                                skipped.insert(id);
                                errors.push(format!("job {id}: {}", e.message.lines().next().unwrap_or("")));
                            }
                        }
                    }
                }
            }
            bar.inc(chunk.len() as u64);
        }
        if !full {
            break;
        }
    }
    bar.finish_and_clear();
    if out.json {
        out.print_json(
            &json!({"queue": queue, "tag": tag, "retried": retried, "skipped": skipped.len(), "errors": errors}),
        );
    } else {
        let tagged = tag.map(|t| format!(" tagged {t}")).unwrap_or_default();
        println!("{retried} dead job{} of {queue}{tagged} pending again", if retried == 1 { "" } else { "s" });
        for e in &errors {
            eprintln!("queuectl: skipped {e}");
        }
    }
    Ok(if errors.is_empty() { Exit::Ok } else { Exit::Error })
}

async fn delete(api: &Api, out: Out, id: i64) -> Result<Exit> {
    if api.delete(id).await? {
        done(out, json!({"id": id, "deleted": true}), format!("job {id} deleted")).await
    } else {
        Err(explain(api, id, "deleted", "non-processing").await)
    }
}

async fn cancel(api: &Api, out: Out, id: i64) -> Result<Exit> {
    if api.cancel(id).await? {
        done(out, json!({"id": id, "cancelled": true}), format!("job {id} cancelled")).await
    } else {
        Err(explain(api, id, "cancelled", "scheduled, pending, retrying or blocked").await)
    }
}

async fn purge_dead(
    api: &Api,
    out: Out,
    queue: Option<&str>,
    older_than: Option<Duration>,
    tag: Option<&str>,
) -> Result<Exit> {
    const CHUNK: usize = 1000;
    // Oldest first; each step deletes what finished before the next chunk's first job.
    let mut rows = api.dead_keys(queue, 100_000, tag).await?;
    rows.reverse();
    let stamps: Vec<String> = rows.iter().filter_map(|r| r["finished_at"].as_str().map(str::to_owned)).collect();
    let cutoff = older_than.map(|d| chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or_default());
    let expected = match cutoff {
        Some(c) => stamps.iter().filter(|s| output::parse_time(s).map(|t| t < c).unwrap_or(false)).count(),
        None => stamps.len(),
    };
    let bar = out.bar(expected as u64, "purging dead jobs");
    let mut purged = 0i64;
    let mut i = CHUNK;
    while i < stamps.len() {
        if let (Some(c), Some(t)) = (cutoff, output::parse_time(&stamps[i - CHUNK])) {
            if t >= c {
                break;
            }
        }
        let n = api.purge_dead_before(queue, &stamps[i], older_than, tag).await?;
        purged += n;
        bar.inc(n as u64);
        i += CHUNK;
    }
    let n = api.purge_dead(queue, older_than, tag).await?;
    purged += n;
    bar.inc(n as u64);
    bar.finish_and_clear();
    done(
        out,
        json!({"queue": queue, "tag": tag, "purged": purged}),
        format!("{purged} dead job{} deleted", if purged == 1 { "" } else { "s" }),
    )
    .await
}

async fn clear(api: &Api, out: Out, queue: &str) -> Result<Exit> {
    let n = api.clear(queue).await?;
    done(
        out,
        json!({"queue": queue, "deleted": n}),
        format!("{n} waiting job{} of {queue} deleted", if n == 1 { "" } else { "s" }),
    )
    .await
}

async fn cleanup(api: &Api, out: Out, older_than: Duration) -> Result<Exit> {
    let n = api.cleanup(older_than).await?;
    done(
        out,
        json!({"deleted": n, "older_than": output::format_duration(older_than)}),
        format!("{n} final job{} deleted", if n == 1 { "" } else { "s" }),
    )
    .await
}

/// `pause QUEUE`: "paused Q" or "Q was already paused", both exit 0: the queue
/// is paused afterwards either way, so a script may pause without checking first.
async fn pause(api: &Api, out: Out, queue: &str) -> Result<Exit> {
    let changed = api.pause(queue).await?;
    if changed && !api.list().await?.iter().any(|l| l["queue"] == json!(queue)) {
        // The extension lets a queue be paused before its first job; a typo would
        // pass just as silently, so point it out (stderr: stdout stays one line).
        eprintln!("queuectl: note: {queue} has had no job yet; it is paused all the same (a typo? queuectl list)");
    }
    let text = if changed { format!("paused {queue}") } else { format!("{queue} was already paused") };
    done(out, json!({"queue": queue, "paused": true, "changed": changed}), text).await
}

/// `resume QUEUE`: "resumed Q" or "Q was not paused", both exit 0 (as `pause`).
async fn resume(api: &Api, out: Out, queue: &str) -> Result<Exit> {
    let changed = api.resume(queue).await?;
    let text = if changed { format!("resumed {queue}") } else { format!("{queue} was not paused") };
    done(out, json!({"queue": queue, "paused": false, "changed": changed}), text).await
}

/// A priority as `queue_configure` / `queue_settings` give it: "10 (low)",
/// "-10 (high)", "3"; `-` for NULL (the global default).
fn priority_cell(v: &Value) -> String {
    match v.as_i64() {
        None => "-".into(),
        Some(p) => match p {
            -20 => "-20 (critical)".into(),
            -10 => "-10 (high)".into(),
            0 => "0 (normal)".into(),
            10 => "10 (low)".into(),
            n => n.to_string(),
        },
    }
}

/// The push defaults of a settings object (of `queue_configure` or a row of
/// `queue_settings`), in the order queuectl prints them; `retention` only
/// when the extension returns it.
fn default_fields(s: &Value) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("priority", priority_cell(&s["priority"])),
        ("max_attempts", field(s, "max_attempts")),
        ("timeout", field(s, "timeout")),
        ("backoff_base", field(s, "backoff_base")),
        ("backoff_max", field(s, "backoff_max")),
    ];
    if s.get("retention").is_some() {
        v.push(("retention", field(s, "retention")));
    }
    v
}

/// `configure QUEUE ...`: one `queue_configure` with the options given, by
/// name ([`ConfigureCall`]); prints the queue's settings as it returns them.
async fn configure(api: &Api, out: Out, a: ConfigureArgs) -> Result<Exit> {
    let call = ConfigureCall {
        priority: a.priority.as_deref().map(parse_priority).transpose()?,
        max_attempts: a.max_attempts,
        timeout: a.timeout,
        backoff_base: a.backoff_base,
        backoff_max: a.backoff_max,
        retention: a.retention,
        reset: a.reset,
    };
    if call.is_empty() {
        return Err(CliError::usage(format!(
            "nothing to configure for {:?}: give --priority, --max-attempts, --timeout, --backoff-base, \
             --backoff-max, --retention or --reset (queuectl settings shows the current settings)",
            a.queue
        )));
    }
    let s = api.configure(&a.queue, &call).await?;
    if out.json {
        out.print_json(&s);
        return Ok(Exit::Ok);
    }
    println!("configured {} (- is the global default)", field(&s, "queue"));
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (k, v) in default_fields(&s) {
        t.row(vec![format!("  {k}"), v]);
    }
    print!("{}", t.render().lines().skip(1).map(|l| format!("{l}\n")).collect::<String>());
    Ok(Exit::Ok)
}

/// `settings`: the rows of `queue_settings()` (queues with a pause or
/// defaults), by column name; a RETENTION column where the extension has one.
async fn settings(api: &Api, out: Out) -> Result<Exit> {
    let rows = api.settings().await.map_err(|e| {
        if e.sqlstate.as_deref() == Some("42883") {
            CliError::usage("this version of the queue extension has no queue settings (no queue_settings): ALTER EXTENSION queue UPDATE")
        } else {
            e
        }
    })?;
    if out.json {
        out.print_json(&Value::Array(rows));
        return Ok(Exit::Ok);
    }
    let with_retention = rows.iter().any(|r| r.get("retention").is_some());
    let mut header =
        vec!["QUEUE", "PAUSED", "SINCE", "BY", ">PRIORITY", ">MAX ATTEMPTS", "TIMEOUT", "BACKOFF BASE", "BACKOFF MAX"];
    if with_retention {
        header.push("RETENTION");
    }
    let mut t = Table::new(&header);
    for r in &rows {
        let mut cells = vec![
            field(r, "queue"),
            if r["paused"] == json!(true) { "PAUSED".into() } else { "no".into() },
            ago(r, "paused_at"),
            field(r, "paused_by"),
        ];
        cells.extend(default_fields(r).into_iter().map(|(_, v)| v));
        t.row(cells);
    }
    if t.is_empty() {
        println!("no queue has settings (queuectl configure sets defaults, queuectl pause pauses)");
    } else {
        print!("{}", t.render());
        println!("(- is the global default: priority normal, 3 attempts, timeout 5m, backoff 10s to 1h)");
    }
    Ok(Exit::Ok)
}

/// The statuses `stats` prints, in lifecycle order.
const STAT_STATUSES: [&str; 9] =
    ["blocked", "scheduled", "pending", "processing", "retrying", "completed", "failed", "expired", "cancelled"];

/// `stats [QUEUE] [--tag T]`: `queue_stats` by status.
async fn stats(api: &Api, out: Out, queue: Option<&str>, tag: Option<&str>) -> Result<Exit> {
    let s = match tag {
        Some(t) => api.tag_stats(queue, t).await?,
        None => api.stats(queue).await?,
    };
    if out.json {
        out.print_json(&s);
        return Ok(Exit::Ok);
    }
    let scope = queue.map(|q| format!("queue {q}")).unwrap_or_else(|| "all queues".into());
    match tag {
        Some(t) => println!(
            "{scope}, tag {t}: {} job{} (live, and history still kept)",
            int(&s, "total"),
            if int(&s, "total") == 1 { "" } else { "s" }
        ),
        None => println!("{scope}: {} (completed, failed, expired, cancelled: totals)", depth_line(&s)),
    }
    let mut t = Table::new(&["STATUS", ">JOBS"]);
    for k in STAT_STATUSES {
        if s.get(k).is_some() {
            t.row(vec![k.into(), field(&s, k)]);
        }
    }
    print!("{}", t.render());
    Ok(Exit::Ok)
}

/// A callback argument of `batch open`: JSON text, or `@FILE`.
fn read_callback(flag: &str, arg: Option<&str>) -> Result<Option<Value>> {
    let Some(arg) = arg else { return Ok(None) };
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))?,
        None => arg.to_owned(),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "{flag} is not JSON ({e}): give {{\"queue\": \"reports\", \"payload\": {{...}}, \"priority\": \"high\"}}"
        ))
    })?;
    Ok(Some(v))
}

/// `batch open`: prints the new batch's id (`--json`: an object).
async fn batch_open(api: &Api, out: Out, on_complete: Option<&str>, on_failure: Option<&str>) -> Result<Exit> {
    let complete = read_callback("--on-complete", on_complete)?;
    let failure = read_callback("--on-failure", on_failure)?;
    let id = api.batch_open(complete.as_ref(), failure.as_ref()).await?;
    if out.json {
        out.print_json(&json!({"id": id, "state": "open"}));
    } else {
        println!("{id}");
    }
    Ok(Exit::Ok)
}

/// A batch the server refused to act on: unknown (exit 3) or the server's
/// own error (e.g. "batch 7 is closed", 22023: exit 2).
async fn batch_refused(api: &Api, id: i64, e: CliError) -> CliError {
    match api.batch(id).await {
        Ok(None) => CliError::not_found(format!("no batch {id}")),
        _ => e,
    }
}

/// `batch close ID`: prints the batch after the close.
async fn batch_close(api: &Api, out: Out, id: i64) -> Result<Exit> {
    let b = match api.batch_close(id).await {
        Ok(b) => b,
        Err(e) if e.sqlstate.as_deref() == Some("22023") => return Err(batch_refused(api, id, e).await),
        Err(e) => return Err(e),
    };
    let text = if field(&b, "state") == "done" {
        format!("batch {id} closed and done: all {} jobs final, callbacks pushed", field(&b, "total"))
    } else {
        format!("batch {id} closed: {} of {} jobs final", final_count(&b), field(&b, "total"))
    };
    done(out, b, text).await
}

/// `batch cancel ID`: exit 0 when cancelled now or already; 1 when done
/// (its callbacks are pushed: nothing left to cancel); 3 when unknown.
async fn batch_cancel(api: &Api, out: Out, id: i64) -> Result<Exit> {
    if api.batch_cancel(id).await? {
        return done(out, json!({"id": id, "cancelled": true, "changed": true}), format!("batch {id} cancelled")).await;
    }
    match api.batch(id).await? {
        None => Err(CliError::not_found(format!("no batch {id}"))),
        Some(b) if field(&b, "state") == "cancelled" => {
            done(
                out,
                json!({"id": id, "cancelled": true, "changed": false}),
                format!("batch {id} was already cancelled"),
            )
            .await
        }
        Some(b) => Err(CliError::error(format!(
            "batch {id} is {}: its jobs are final and its callbacks pushed, nothing to cancel",
            field(&b, "state")
        ))),
    }
}

/// `batch show ID`: `queue_batch(id)` as a table.
async fn batch_show(api: &Api, out: Out, id: i64) -> Result<Exit> {
    let Some(b) = api.batch(id).await? else {
        return Err(CliError::not_found(format!("no batch {id}")));
    };
    if out.json {
        out.print_json(&b);
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["id".into(), field(&b, "id")]);
    t.row(vec!["state".into(), field(&b, "state")]);
    t.row(vec![
        "progress".into(),
        format!("{} of {} final ({})", final_count(&b), field(&b, "total"), percent(&b["progress"])),
    ]);
    for k in ["total", "pending", "running", "completed", "failed", "cancelled"] {
        t.row(vec![k.into(), field(&b, k)]);
    }
    for (spec, job) in [("on_complete", "complete_job"), ("on_failure", "failure_job")] {
        let v = if b[spec].is_null() {
            "-".to_owned()
        } else {
            let pushed = match b[job].as_i64() {
                Some(j) => format!("pushed as job {j}"),
                None => "not pushed".into(),
            };
            format!("{} ({pushed})", preview(&b[spec].to_string(), 80))
        };
        t.row(vec![spec.into(), v]);
    }
    for k in ["created_at", "closed_at", "finished_at"] {
        t.row(vec![k.into(), when(&b, k)]);
    }
    print!("{}", t.render());
    Ok(Exit::Ok)
}

/// The PROGRESS cell of a `queue_batches` row: "final/total" from the counts
/// kept since the close; `-` while they are null (an open batch).
fn listed_progress(b: &Value) -> String {
    match (b["total"].as_i64(), b["pending"].as_i64()) {
        (Some(total), Some(pending)) => format!("{}/{total}", total - pending),
        _ => "-".into(),
    }
}

/// `batch list [--state S] [--limit N]`: `queue_batches(state, max_rows)`,
/// newest first. An unknown state is the server's 22023 (exit 2), said in
/// the CLI's terms.
async fn batch_list(api: &Api, out: Out, state: Option<&str>, limit: i32) -> Result<Exit> {
    let rows = match api.batches(state, limit).await {
        Ok(rows) => rows,
        Err(e) if e.sqlstate.as_deref() == Some("22023") && e.message.starts_with("unknown batch state") => {
            return Err(CliError {
                message: format!(
                    "unknown batch state {:?}: --state is one of open, closed, done, cancelled \
                     (leave it out to list every batch) (SQLSTATE 22023)",
                    state.unwrap_or_default()
                ),
                ..e
            })
        }
        Err(e) => return Err(e),
    };
    if out.json {
        out.print_json(&Value::Array(rows));
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&[
        ">ID",
        "STATE",
        ">PROGRESS",
        ">TOTAL",
        ">PENDING",
        ">COMPLETED",
        ">FAILED",
        ">CANCELLED",
        "CREATED",
        "CLOSED",
        "FINISHED",
        ">COMPLETE JOB",
        ">FAILURE JOB",
    ]);
    for b in &rows {
        t.row(vec![
            field(b, "id"),
            field(b, "state"),
            listed_progress(b),
            field(b, "total"),
            field(b, "pending"),
            field(b, "completed"),
            field(b, "failed"),
            field(b, "cancelled"),
            ago(b, "created_at"),
            ago(b, "closed_at"),
            ago(b, "finished_at"),
            field(b, "complete_job"),
            field(b, "failure_job"),
        ]);
    }
    if t.is_empty() {
        match state {
            Some(s) => println!("no {s} batches"),
            None => println!("no batches (queuectl batch open opens one)"),
        }
    } else {
        print!("{}", t.render());
        if rows.iter().any(|b| b["total"].is_null()) {
            println!("(- : counts are kept from a batch's close; queuectl batch show ID counts one not closed from its jobs)");
        }
    }
    Ok(Exit::Ok)
}

async fn schedules(api: &Api, out: Out) -> Result<Exit> {
    let rows = api.schedules().await?;
    if out.json {
        out.print_json(&Value::Array(rows));
        return Ok(Exit::Ok);
    }
    if rows.is_empty() {
        println!("no schedules");
    } else {
        print_schedules(&rows);
    }
    Ok(Exit::Ok)
}

async fn schedule(api: &Api, out: Out, a: ScheduleArgs) -> Result<Exit> {
    let payload = read_payload(&a.payload)?;
    let id = api
        .schedule(
            &a.name,
            &a.spec,
            &a.queue,
            &payload,
            parse_priority(&a.priority)?,
            a.serial_group.as_deref(),
            a.max_attempts,
            a.timeout,
            !a.disabled,
        )
        .await?;
    let next = api.schedules().await?.into_iter().find(|s| s["name"] == json!(a.name));
    let next_run = next.as_ref().map(|s| when(s, "next_run_at")).unwrap_or("-".into());
    done(
        out,
        json!({"id": id, "name": a.name, "schedule": next}),
        format!("schedule {} saved (id {id}); next run {next_run}", a.name),
    )
    .await
}

async fn unschedule(api: &Api, out: Out, name: &str) -> Result<Exit> {
    if api.unschedule(name).await? {
        done(out, json!({"name": name, "deleted": true}), format!("schedule {name} deleted")).await
    } else {
        Err(CliError::not_found(format!("no schedule {name:?}")))
    }
}

async fn trigger(api: &Api, out: Out, name: &str) -> Result<Exit> {
    let id = api.trigger(name).await?;
    if out.json {
        out.print_json(&json!({"name": name, "job_id": id}));
    } else {
        println!("{id}");
    }
    Ok(Exit::Ok)
}

async fn timeline(api: &Api, out: Out, horizon: Duration, limit: i32) -> Result<Exit> {
    let rows = api.timeline(horizon, limit).await?;
    if out.json {
        out.print_json(&Value::Array(rows));
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["RUN AT", "WHEN", "NAME", "KIND", "QUEUE", "DUE"]);
    for r in &rows {
        t.row(vec![
            r["run_at"]
                .as_str()
                .and_then(output::parse_time)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or("-".into()),
            ago(r, "run_at"),
            field(r, "name"),
            field(r, "kind"),
            field(r, "queue"),
            if r["is_due"] == json!(true) { "DUE".into() } else { String::new() },
        ]);
    }
    if t.is_empty() {
        println!("no runs within {}", output::format_duration(horizon));
    } else {
        print!("{}", t.render());
    }
    Ok(Exit::Ok)
}

async fn workers(api: &Api, out: Out) -> Result<Exit> {
    let rows = api.workers().await?;
    if out.json {
        out.print_json(&Value::Array(rows));
        return Ok(Exit::Ok);
    }
    if rows.is_empty() {
        println!("no workers");
    } else {
        print_workers(&rows);
    }
    Ok(Exit::Ok)
}

async fn health(api: &Api, out: Out) -> Result<Exit> {
    let h = api.health().await?;
    let ok = h["healthy"] == json!(true);
    if out.json {
        out.print_json(&h);
    } else {
        println!("{}", health_line(&h));
        let running = &h["workers_running"];
        if let Some(map) = running.as_object() {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} {}", if v == &json!(true) { "running" } else { "NOT running" }))
                .collect();
            println!("services {}", parts.join(", "));
        }
        println!(
            "backlog {}, processing {}, overdue leases {}, oldest waiting {}",
            field(&h, "backlog"),
            field(&h, "processing"),
            field(&h, "overdue_leases"),
            secs(&h["oldest_pending_age"])
        );
    }
    Ok(if ok { Exit::Ok } else { Exit::Error })
}
