//! The extension's SQL API as Rust calls: every query here calls `queue_*`
//! functions only (plus `to_regprocedure` to detect optional ones and
//! `jsonb_agg` to carry a function's rows as one JSON array). No query reads
//! or writes the extension's tables.

use std::time::{Duration, SystemTime};

use queue_client::PgInterval;
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{CliError, Result};

/// A connection to a database with the `queue` extension.
pub struct Api {
    client: Client,
}

/// `SELECT` the rows of a set-returning call as one JSON array, in the
/// function's own order.
fn rows_sql(call: &str) -> String {
    format!(
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'ordinality' ORDER BY t.ordinality), '[]'::jsonb) \
         FROM ROWS FROM ({call}) WITH ORDINALITY AS t"
    )
}

/// The most bytes of a payload or result a listing carries (per field); a
/// larger one comes as a string preview of its first
/// [`PREVIEW_CHARS`] characters, and its row gets `"truncated": true`.
/// `queue_job` (one job) carries everything. Payloads may be megabytes each:
/// a page of them would make the dashboard's poll, and a listing of
/// thousands the whole command, carry (or fail on) hundreds of megabytes.
pub const LISTED_FIELD_MAX: i32 = 16 * 1024;
pub const PREVIEW_CHARS: i32 = 1000;

/// [`rows_sql`] for listings of jobs: payloads and results past
/// [`LISTED_FIELD_MAX`] bytes cut to a preview before they are aggregated.
fn listing_sql(call: &str) -> String {
    let field = |k: &str| {
        format!(
            "CASE WHEN x.j ? '{k}' THEN jsonb_build_object('{k}', CASE WHEN octet_length((x.j -> '{k}')::text) > {max} \
             THEN to_jsonb(left((x.j -> '{k}')::text, {chars}) || '…') ELSE x.j -> '{k}' END) ELSE '{{}}' END",
            max = LISTED_FIELD_MAX,
            chars = PREVIEW_CHARS
        )
    };
    format!(
        "SELECT coalesce(jsonb_agg(x.j - 'payload' - 'result' || {payload} || {result} \
         || CASE WHEN octet_length((x.j -> 'payload')::text) > {max} OR octet_length((x.j -> 'result')::text) > {max} \
            THEN '{{\"truncated\": true}}'::jsonb ELSE '{{}}' END ORDER BY x.o), '[]'::jsonb) \
         FROM ROWS FROM ({call}) WITH ORDINALITY AS t \
         CROSS JOIN LATERAL (SELECT to_jsonb(t) - 'ordinality' AS j, t.ordinality AS o) x",
        payload = field("payload"),
        result = field("result"),
        max = LISTED_FIELD_MAX
    )
}

impl Api {
    /// Connects (the connection runs on a background task until the `Api` is dropped).
    pub async fn connect(config: &Config) -> Result<Api> {
        let (client, conn) = config.connect(NoTls).await.map_err(|e| {
            CliError::error(format!("cannot connect to {}: {}", crate::config::describe(config), pg_text(&e)))
        })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Api { client })
    }

    /// Whether the connection is gone (the server closed it or it failed).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Checks that the extension is installed (a clear message rather than
    /// "function queue_list() does not exist").
    pub async fn check_extension(&self) -> Result<()> {
        if self.has_function("queue_list()").await? {
            Ok(())
        } else {
            Err(CliError::error(
                "the queue extension is not installed in this database (CREATE EXTENSION queue), \
                 or queue_list() is not on the search_path",
            ))
        }
    }

    async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Value> {
        let row = self.client.query_one(sql, params).await?;
        Ok(row.get::<_, Option<Value>>(0).unwrap_or(Value::Null))
    }

    async fn rows(&self, call: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Value>> {
        Self::array(self.one(&rows_sql(call), params).await?)
    }

    /// [`Api::rows`] of a listing of jobs (see [`listing_sql`]).
    async fn listed(&self, call: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Value>> {
        Self::array(self.one(&listing_sql(call), params).await?)
    }

    fn array(v: Value) -> Result<Vec<Value>> {
        match v {
            Value::Array(a) => Ok(a),
            _ => Ok(Vec::new()),
        }
    }

    /// Whether a function with this signature exists (`to_regprocedure`).
    pub async fn has_function(&self, signature: &str) -> Result<bool> {
        let row = self.client.query_one("SELECT to_regprocedure($1) IS NOT NULL", &[&signature]).await?;
        Ok(row.get(0))
    }

    /// `queue_list()`: every queue with its counts.
    pub async fn list(&self) -> Result<Vec<Value>> {
        self.rows("queue_list()", &[]).await
    }

    /// `queue_list()` with each queue's `blocked` (jobs waiting for their
    /// dependencies) from `queue_stats(queue)`, which queue_list has no column
    /// for; `blocked` is null where the extension has no dependencies. The
    /// `list` subcommand and `/api/queues`.
    pub async fn list_with_blocked(&self) -> Result<Vec<Value>> {
        let v = self
            .one(
                "SELECT coalesce(jsonb_agg(to_jsonb(l) || jsonb_build_object('blocked', queue_stats(l.queue)->'blocked') \
                 ORDER BY l.queue), '[]'::jsonb) FROM queue_list() l",
                &[],
            )
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// `queue_list()` with each queue's `queue_stats` and `queue_metrics(queue, since)`
    /// in one round trip (the dashboard's stats panel).
    pub async fn overview(&self, since: Duration) -> Result<Vec<Value>> {
        let v = self
            .one(
                "SELECT coalesce(jsonb_agg(to_jsonb(l) || jsonb_build_object('stats', queue_stats(l.queue), \
                 'metrics', queue_metrics(l.queue, $1)) ORDER BY l.queue), '[]'::jsonb) FROM queue_list() l",
                &[&PgInterval(since)],
            )
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// `queue_stats(queue)`; all queues with `None`.
    pub async fn stats(&self, queue: Option<&str>) -> Result<Value> {
        self.one("SELECT queue_stats($1::text)", &[&queue]).await
    }

    /// `queue_stats(queue, tag => tag)`: the jobs of one tag by status
    /// (`total` and one count per status), of one queue or all.
    pub async fn tag_stats(&self, queue: Option<&str>, tag: &str) -> Result<Value> {
        self.one("SELECT queue_stats($1::text, tag => $2::text)", &[&queue, &tag]).await.map_err(no_tags)
    }

    /// `queue_metrics(queue, since)`.
    pub async fn metrics(&self, queue: Option<&str>, since: Duration) -> Result<Value> {
        self.one("SELECT queue_metrics($1::text, $2)", &[&queue, &PgInterval(since)]).await
    }

    /// `queue_health()`.
    pub async fn health(&self) -> Result<Value> {
        self.one("SELECT queue_health()", &[]).await
    }

    /// `queue_workers()`.
    pub async fn workers(&self) -> Result<Vec<Value>> {
        self.rows("queue_workers()", &[]).await
    }

    /// `queue_dead(queue, max_rows)`: dead letters, newest first; with a
    /// tag, `queue_dead(queue, max_rows, tag => tag)`: only that tag's. The
    /// tag is passed only when set, so that an extension from before tags
    /// still lists.
    pub async fn dead(&self, queue: Option<&str>, max_rows: i32, tag: Option<&str>) -> Result<Vec<Value>> {
        match tag {
            None => self.listed("queue_dead($1::text, $2::int)", &[&queue, &max_rows]).await,
            Some(t) => self
                .listed("queue_dead($1::text, $2::int, tag => $3::text)", &[&queue, &max_rows, &t])
                .await
                .map_err(no_tags),
        }
    }

    /// The ids and finish times (`{"id", "finished_at"}`) of what
    /// [`Api::dead`] lists, without payloads, results or errors: what
    /// `retry --all` and `purge-dead` need of up to 100,000 dead jobs.
    pub async fn dead_keys(&self, queue: Option<&str>, max_rows: i32, tag: Option<&str>) -> Result<Vec<Value>> {
        let keys = |call: &str| {
            format!(
                "SELECT coalesce(jsonb_agg(jsonb_build_object('id', t.id, 'finished_at', t.finished_at) \
                 ORDER BY t.ordinality), '[]'::jsonb) FROM ROWS FROM ({call}) WITH ORDINALITY AS t"
            )
        };
        let v = match tag {
            None => self.one(&keys("queue_dead($1::text, $2::int)"), &[&queue, &max_rows]).await?,
            Some(t) => self
                .one(&keys("queue_dead($1::text, $2::int, tag => $3::text)"), &[&queue, &max_rows, &t])
                .await
                .map_err(no_tags)?,
        };
        Self::array(v)
    }

    /// `queue_jobs(queue, status, max_rows, before_id)`: jobs of any status,
    /// newest first; with a tag, only that tag's (`tag => tag`, passed only
    /// when set, as for [`Api::dead`]).
    pub async fn list_jobs(
        &self,
        queue: Option<&str>,
        status: Option<&str>,
        max_rows: i32,
        before_id: Option<i64>,
        tag: Option<&str>,
    ) -> Result<Vec<Value>> {
        match tag {
            None => {
                self.listed(
                    "queue_jobs($1::text, $2::text, $3::int, $4::bigint)",
                    &[&queue, &status, &max_rows, &before_id],
                )
                .await
            }
            Some(t) => self
                .listed(
                    "queue_jobs($1::text, $2::text, $3::int, $4::bigint, tag => $5::text)",
                    &[&queue, &status, &max_rows, &before_id, &t],
                )
                .await
                .map_err(no_tags),
        }
    }

    /// `queue_peek(queue, n)`: the next jobs in claim order.
    pub async fn peek(&self, queue: &str, n: i32) -> Result<Vec<Value>> {
        self.listed("queue_peek($1::text, $2::int)", &[&queue, &n]).await
    }

    /// `queue_job(id)`; `None` for an unknown id.
    pub async fn job(&self, id: i64) -> Result<Option<Value>> {
        let v = self.one("SELECT queue_job($1::bigint)", &[&id]).await?;
        Ok(if v.is_null() { None } else { Some(v) })
    }

    /// `queue_job(id)` and, for a job pushed with dependencies (its
    /// `depends_on` is an array), their rows of `queue_dependencies(id)` as
    /// `dependencies` (dependency, queue, status, result, finished_at,
    /// resolved, run_anyway): the `job` subcommand and the dashboard's job
    /// page. A job without dependencies, or an extension without them, costs
    /// no second call and gets no `dependencies` key.
    ///
    /// A job of a batch (its `batch_id` is set) also gets `batch`, the
    /// batch's `queue_batch(batch_id)` (null when the caller may not see it).
    pub async fn job_detail(&self, id: i64) -> Result<Option<Value>> {
        let Some(mut j) = self.job(id).await? else {
            return Ok(None);
        };
        if j.get("depends_on").is_some_and(Value::is_array) {
            let deps = self.dependencies(id).await?;
            if let Some(o) = j.as_object_mut() {
                o.insert("dependencies".into(), Value::Array(deps));
            }
        }
        if let Some(b) = j.get("batch_id").and_then(Value::as_i64) {
            let batch = self.batch(b).await?.unwrap_or(Value::Null);
            if let Some(o) = j.as_object_mut() {
                o.insert("batch".into(), batch);
            }
        }
        Ok(Some(j))
    }

    /// `queue_dependencies(id)`: the jobs one job depends on, in id order.
    pub async fn dependencies(&self, id: i64) -> Result<Vec<Value>> {
        self.rows("queue_dependencies($1::bigint)", &[&id]).await
    }

    async fn boolean(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<bool> {
        let row = self.client.query_one(sql, params).await?;
        Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
    }

    async fn count(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<i64> {
        let row = self.client.query_one(sql, params).await?;
        Ok(row.get::<_, Option<i64>>(0).unwrap_or(0))
    }

    /// `queue_retry(id)`.
    pub async fn retry(&self, id: i64) -> Result<bool> {
        self.boolean("SELECT queue_retry($1::bigint)", &[&id]).await
    }

    /// `queue_retry` for each of `ids` in one statement; how many came back.
    pub async fn retry_many(&self, ids: &[i64]) -> Result<i64> {
        self.count("SELECT count(*) FILTER (WHERE queue_retry(i)) FROM unnest($1::bigint[]) AS i", &[&ids]).await
    }

    /// `queue_retry_all(queue)`, or `queue_retry_all(queue, tag => tag)`:
    /// only the dead jobs of that tag.
    pub async fn retry_all(&self, queue: &str, tag: Option<&str>) -> Result<i64> {
        match tag {
            None => self.count("SELECT queue_retry_all($1::text)", &[&queue]).await,
            Some(t) => {
                self.count("SELECT queue_retry_all($1::text, tag => $2::text)", &[&queue, &t]).await.map_err(no_tags)
            }
        }
    }

    /// `queue_delete(id)`.
    pub async fn delete(&self, id: i64) -> Result<bool> {
        self.boolean("SELECT queue_delete($1::bigint)", &[&id]).await
    }

    /// `queue_cancel(id)`.
    pub async fn cancel(&self, id: i64) -> Result<bool> {
        self.boolean("SELECT queue_cancel($1::bigint)", &[&id]).await
    }

    /// `queue_purge_dead(queue, older_than)`; with a tag,
    /// `queue_purge_dead(queue, older_than, tag => tag)`.
    pub async fn purge_dead(
        &self,
        queue: Option<&str>,
        older_than: Option<Duration>,
        tag: Option<&str>,
    ) -> Result<i64> {
        let older = older_than.map(PgInterval);
        match tag {
            None => self.count("SELECT queue_purge_dead($1::text, $2)", &[&queue, &older]).await,
            Some(t) => self
                .count("SELECT queue_purge_dead($1::text, $2, tag => $3::text)", &[&queue, &older, &t])
                .await
                .map_err(no_tags),
        }
    }

    /// `queue_purge_dead(queue, ...)` for the dead jobs that finished before
    /// `before` (a timestamp as text) and longer ago than `older_than` (and,
    /// with a tag, have it): one step of a purge with progress.
    pub async fn purge_dead_before(
        &self,
        queue: Option<&str>,
        before: &str,
        older_than: Option<Duration>,
        tag: Option<&str>,
    ) -> Result<i64> {
        const OLDER: &str = "greatest(now() - $2::text::timestamptz, coalesce($3, interval '0'))";
        let older = older_than.map(PgInterval);
        match tag {
            None => {
                self.count(&format!("SELECT queue_purge_dead($1::text, {OLDER})"), &[&queue, &before, &older]).await
            }
            Some(t) => self
                .count(
                    &format!("SELECT queue_purge_dead($1::text, {OLDER}, tag => $4::text)"),
                    &[&queue, &before, &older, &t],
                )
                .await
                .map_err(no_tags),
        }
    }

    /// `queue_cleanup(older_than)`.
    pub async fn cleanup(&self, older_than: Duration) -> Result<i64> {
        self.count("SELECT queue_cleanup($1)", &[&PgInterval(older_than)]).await
    }

    /// `queue_clear(queue)`.
    pub async fn clear(&self, queue: &str) -> Result<i64> {
        self.count("SELECT queue_clear($1::text)", &[&queue]).await
    }

    /// `queue_pause(queue)`: true when this call paused the queue, false when
    /// it was paused already.
    pub async fn pause(&self, queue: &str) -> Result<bool> {
        self.toggle("SELECT queue_pause($1::text)", queue).await
    }

    /// `queue_resume(queue)`: true when this call resumed the queue, false
    /// when it was not paused.
    pub async fn resume(&self, queue: &str) -> Result<bool> {
        self.toggle("SELECT queue_resume($1::text)", queue).await
    }

    /// One call of `queue_pause` / `queue_resume`. An extension from before
    /// pausing has neither function: say so (exit 2, like a listing the
    /// extension cannot do) instead of "function does not exist".
    async fn toggle(&self, sql: &str, queue: &str) -> Result<bool> {
        match self.client.query_one(sql, &[&queue]).await {
            Ok(row) => Ok(row.try_get::<_, Option<bool>>(0)?.unwrap_or(false)),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => Err(CliError::usage(
                "this version of the queue extension cannot pause queues (no queue_pause / queue_resume): \
                 ALTER EXTENSION queue UPDATE",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// `queue_settings()`: the queues that have settings (whether paused,
    /// since when, by whom, and the push defaults of `queue_configure`), each
    /// row an object keyed by column name: a column the extension adds (such
    /// as `retention`) is there when the extension has it, and absent before.
    pub async fn settings(&self) -> Result<Vec<Value>> {
        self.rows("queue_settings()", &[]).await
    }

    /// [`Api::settings`], or an empty list for an extension from before
    /// queue settings (the dashboard shows none then, instead of an error).
    pub async fn settings_if_any(&self) -> Result<Vec<Value>> {
        match self.settings().await {
            Err(e) if e.sqlstate.as_deref() == Some(UNDEFINED_FUNCTION) => Ok(Vec::new()),
            other => other,
        }
    }

    /// `queue_configure(queue => $1, name => $2, ...)`: the options that are
    /// set, as named arguments with bound values ([`ConfigureCall`]); the
    /// queue's settings as the function returns them.
    pub async fn configure(&self, queue: &str, call: &ConfigureCall) -> Result<Value> {
        let (sql, params) = call.statement(queue)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        match self.client.query_one(&sql, &refs).await {
            Ok(row) => Ok(row.try_get::<_, Option<Value>>(0)?.unwrap_or(Value::Null)),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) && call.retention.is_some() => {
                Err(CliError::usage(
                    "this version of the queue extension has no per-queue retention (queue_configure has no \
                     retention parameter): leave out --retention, or ALTER EXTENSION queue UPDATE",
                ))
            }
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => Err(CliError::usage(
                "this version of the queue extension has no queue defaults (no queue_configure): \
                 ALTER EXTENSION queue UPDATE",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// `queue_batch_open(on_complete => $1, on_failure => $2)`: the new
    /// batch's id. A callback the server refuses is its 22023 (exit 2).
    pub async fn batch_open(&self, on_complete: Option<&Value>, on_failure: Option<&Value>) -> Result<i64> {
        self.client
            .query_one(
                "SELECT queue_batch_open(on_complete => $1::jsonb, on_failure => $2::jsonb)",
                &[&on_complete, &on_failure],
            )
            .await
            .map_err(|e| no_batches(e.into()))?
            .try_get::<_, i64>(0)
            .map_err(Into::into)
    }

    /// `queue_batch_close(id)`: the batch as `queue_batch` reports it after
    /// the close. A batch that is not open (or unknown) is the server's 22023.
    pub async fn batch_close(&self, id: i64) -> Result<Value> {
        self.one("SELECT queue_batch_close($1::bigint)", &[&id]).await.map_err(no_batches)
    }

    /// `queue_batch_cancel(id)`: false when the batch is done or cancelled
    /// already, or unknown.
    pub async fn batch_cancel(&self, id: i64) -> Result<bool> {
        self.boolean("SELECT queue_batch_cancel($1::bigint)", &[&id]).await.map_err(no_batches)
    }

    /// `queue_batch(id)`; `None` for an unknown batch (or one a confined
    /// role did not open).
    pub async fn batch(&self, id: i64) -> Result<Option<Value>> {
        let v = self.one("SELECT queue_batch($1::bigint)", &[&id]).await.map_err(no_batches)?;
        Ok(if v.is_null() { None } else { Some(v) })
    }

    /// `queue_batches(state => $1, max_rows => $2)`: the batches the caller
    /// may see, newest first, of one state or all (`None`); their counts are
    /// null while open. An unknown state or a bad `max_rows` is the server's
    /// 22023; an extension without the function says so (exit 2).
    pub async fn batches(&self, state: Option<&str>, max_rows: i32) -> Result<Vec<Value>> {
        self.rows("queue_batches(state => $1::text, max_rows => $2::int)", &[&state, &max_rows]).await.map_err(|e| {
            if e.sqlstate.as_deref() == Some(UNDEFINED_FUNCTION) {
                CliError::usage(
                    "this version of the queue extension cannot list batches (no queue_batches): \
                     ALTER EXTENSION queue UPDATE",
                )
            } else {
                e
            }
        })
    }

    /// `queue_schedules()`.
    pub async fn schedules(&self) -> Result<Vec<Value>> {
        self.rows("queue_schedules()", &[]).await
    }

    /// `queue_schedule(...)`: creates or replaces a schedule; its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn schedule(
        &self,
        name: &str,
        spec: &str,
        queue: &str,
        payload: &Value,
        priority: i32,
        serial_group: Option<&str>,
        max_attempts: i32,
        timeout: Duration,
        enabled: bool,
    ) -> Result<i64> {
        self.count(
            "SELECT queue_schedule($1::text, $2::text, $3::text, $4::jsonb, $5::int, $6::text, $7::int, $8, $9::boolean)",
            &[&name, &spec, &queue, payload, &priority, &serial_group, &max_attempts, &PgInterval(timeout), &enabled],
        )
        .await
    }

    /// `queue_unschedule(name)`.
    pub async fn unschedule(&self, name: &str) -> Result<bool> {
        self.boolean("SELECT queue_unschedule($1::text)", &[&name]).await
    }

    /// `queue_trigger(name)`: the id of the job it pushed.
    pub async fn trigger(&self, name: &str) -> Result<i64> {
        self.count("SELECT queue_trigger($1::text)", &[&name]).await
    }

    /// `queue_timeline(horizon, max_rows)`.
    pub async fn timeline(&self, horizon: Duration, max_rows: i32) -> Result<Vec<Value>> {
        self.rows("queue_timeline($1, $2::int)", &[&PgInterval(horizon), &max_rows]).await
    }

    /// `queue_throughput(queue, since)` where the extension has it (per-minute
    /// pushed / completed / failed); an empty list where it does not.
    pub async fn throughput(&self, queue: Option<&str>, since: Duration) -> Result<Vec<Value>> {
        if !self.has_function("queue_throughput(text,interval)").await? {
            return Ok(Vec::new());
        }
        self.rows("queue_throughput($1::text, $2)", &[&queue, &PgInterval(since)]).await
    }

    /// `queue_push(queue, payload, name => value, ...)` with the options that
    /// are set, as named arguments. Only the constant option names become SQL
    /// text; every value (the dependency ids too) is a bound parameter.
    ///
    /// The statement is built here rather than by `queue_client::push`
    /// because its `PushOpts` has no `depends_on` / `run_anyway`. An
    /// extension from before dependencies has no such parameters: with
    /// `--depends-on` that is a usage error (exit 2) that says so, instead of
    /// "function queue_push(...) does not exist".
    pub async fn push(&self, queue: &str, payload: &Value, call: &PushCall) -> Result<i64> {
        let (sql, params) = call.statement(queue, payload)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        match self.client.query_one(&sql, &refs).await {
            Ok(row) => Ok(row.try_get::<_, i64>(0)?),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) && !call.newer_options().is_empty() => {
                Err(CliError::usage(format!(
                    "this version of the queue extension has no {} (queue_push has no such parameter): \
                     ALTER EXTENSION queue UPDATE",
                    call.newer_options().join(" or ")
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The options of one `queue_push` (the `push` subcommand's flags, parsed).
/// What is `None` (or empty, or false) is left out of the call and takes the
/// extension's default.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PushCall {
    /// `priority`: lower runs first.
    pub priority: Option<i32>,
    /// `delay`: run no earlier than this long from now.
    pub delay: Option<Duration>,
    /// `run_at`: run no earlier than this moment.
    pub run_at: Option<SystemTime>,
    /// `serial_group`: one job of the group at a time.
    pub serial_group: Option<String>,
    /// `max_attempts`, the first included.
    pub max_attempts: Option<i32>,
    /// `timeout`: the lease per attempt.
    pub timeout: Option<Duration>,
    /// `backoff_base`: the first retry delay, doubling.
    pub backoff_base: Option<Duration>,
    /// `backoff_max`: the longest retry delay.
    pub backoff_max: Option<Duration>,
    /// `retry_delays`: a retry schedule instead of the backoff.
    pub retry_delays: Option<Vec<Duration>>,
    /// `dedupe_key`: a live job with the same key is returned instead.
    pub dedupe_key: Option<String>,
    /// `depends_on`: the job is blocked until every one of these has completed.
    pub depends_on: Vec<i64>,
    /// `run_anyway`: run once the dependencies ended, however they ended.
    pub run_anyway: bool,
    /// `tags`: labels to find the job by (`jobs --tag`, `failed --tag`, ...).
    pub tags: Vec<String>,
    /// `batch`: the open batch (`queue_batch_open`) the job joins.
    pub batch: Option<i64>,
}

/// One bound value of a statement.
type Param = Box<dyn ToSql + Sync + Send>;

impl PushCall {
    /// The features of later extension versions this call uses, for the
    /// message when the installed one lacks them.
    fn newer_options(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.depends_on.is_empty() || self.run_anyway {
            v.push("job dependencies (--depends-on)");
        }
        if !self.tags.is_empty() {
            v.push("tags (--tag)");
        }
        if self.batch.is_some() {
            v.push("batches (--batch)");
        }
        v
    }

    /// The `SELECT queue_push(...)` text and its parameters, in order.
    fn statement(&self, queue: &str, payload: &Value) -> Result<(String, Vec<Param>)> {
        if self.delay.is_some() && self.run_at.is_some() {
            return Err(CliError::usage("--delay and --run-at do not go together"));
        }
        let mut call = NamedCall::new(
            "SELECT queue_push($1::text, $2::jsonb",
            vec![Box::new(queue.to_owned()), Box::new(payload.clone())],
        );
        let mut arg = |name: &str, cast: &str, value: Param| call.arg(name, cast, value);
        if let Some(p) = self.priority {
            arg("priority", "int", Box::new(p));
        }
        if let Some(d) = self.delay {
            arg("delay", "interval", Box::new(interval(d, "--delay")?));
        }
        if let Some(t) = self.run_at {
            arg("run_at", "timestamptz", Box::new(t));
        }
        if let Some(g) = &self.serial_group {
            arg("serial_group", "text", Box::new(g.clone()));
        }
        if let Some(n) = self.max_attempts {
            arg("max_attempts", "int", Box::new(n));
        }
        if let Some(d) = self.timeout {
            arg("timeout", "interval", Box::new(interval(d, "--timeout")?));
        }
        if let Some(d) = self.backoff_base {
            arg("backoff_base", "interval", Box::new(interval(d, "--backoff-base")?));
        }
        if let Some(d) = self.backoff_max {
            arg("backoff_max", "interval", Box::new(interval(d, "--backoff-max")?));
        }
        if let Some(ds) = &self.retry_delays {
            let v = ds.iter().map(|d| interval(*d, "--retry-delays entry")).collect::<Result<Vec<_>>>()?;
            arg("retry_delays", "interval[]", Box::new(v));
        }
        if let Some(k) = &self.dedupe_key {
            arg("dedupe_key", "text", Box::new(k.clone()));
        }
        if !self.depends_on.is_empty() {
            arg("depends_on", "bigint[]", Box::new(self.depends_on.clone()));
        }
        if self.run_anyway {
            arg("run_anyway", "boolean", Box::new(true));
        }
        if !self.tags.is_empty() {
            arg("tags", "text[]", Box::new(self.tags.clone()));
        }
        if let Some(b) = self.batch {
            arg("batch", "bigint", Box::new(b));
        }
        Ok(call.finish())
    }
}

/// The options of one `queue_configure` (the `configure` subcommand's
/// flags). What is `None` is left out of the call: the queue keeps its value
/// (or, with `reset`, goes back to the global default).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConfigureCall {
    /// `priority`: the default priority of a push that gives none.
    pub priority: Option<i32>,
    /// `max_attempts`.
    pub max_attempts: Option<i32>,
    /// `timeout`: the lease per attempt.
    pub timeout: Option<Duration>,
    /// `backoff_base`: the first retry delay.
    pub backoff_base: Option<Duration>,
    /// `backoff_max`: the longest retry delay.
    pub backoff_max: Option<Duration>,
    /// `retention`: how long the queue's finished jobs are kept. Only newer
    /// extensions have the parameter; it is named only when set.
    pub retention: Option<Duration>,
    /// `reset`: clear every value not given.
    pub reset: bool,
}

impl ConfigureCall {
    /// Whether the call would change nothing (no value and no reset).
    pub fn is_empty(&self) -> bool {
        *self == ConfigureCall::default()
    }

    /// The `SELECT queue_configure(queue => $1, ...)` text and its
    /// parameters, in order: every argument by name, every value bound.
    fn statement(&self, queue: &str) -> Result<(String, Vec<Param>)> {
        let mut call = NamedCall::new("SELECT queue_configure(queue => $1::text", vec![Box::new(queue.to_owned())]);
        let mut arg = |name: &str, cast: &str, value: Param| call.arg(name, cast, value);
        if let Some(p) = self.priority {
            arg("priority", "int", Box::new(p));
        }
        if let Some(n) = self.max_attempts {
            arg("max_attempts", "int", Box::new(n));
        }
        if let Some(d) = self.timeout {
            arg("timeout", "interval", Box::new(interval(d, "--timeout")?));
        }
        if let Some(d) = self.backoff_base {
            arg("backoff_base", "interval", Box::new(interval(d, "--backoff-base")?));
        }
        if let Some(d) = self.backoff_max {
            arg("backoff_max", "interval", Box::new(interval(d, "--backoff-max")?));
        }
        if let Some(d) = self.retention {
            arg("retention", "interval", Box::new(interval(d, "--retention")?));
        }
        if self.reset {
            arg("reset", "boolean", Box::new(true));
        }
        Ok(call.finish())
    }
}

/// A call with named arguments, built one argument at a time: each value
/// bound as the next `$n` with its cast, never pasted into the text.
struct NamedCall {
    sql: String,
    params: Vec<Param>,
}

impl NamedCall {
    /// `head` is the call up to its positional arguments, bound to `params`.
    fn new(head: &str, params: Vec<Param>) -> NamedCall {
        NamedCall { sql: head.to_owned(), params }
    }

    /// Append `, name => $n::cast` bound to `value`.
    fn arg(&mut self, name: &str, cast: &str, value: Param) {
        self.params.push(value);
        self.sql.push_str(&format!(", {name} => ${}::{cast}", self.params.len()));
    }

    /// The statement text and its parameters, in order.
    fn finish(mut self) -> (String, Vec<Param>) {
        self.sql.push(')');
        (self.sql, self.params)
    }
}

/// `d` as a Postgres interval, or a usage error naming `flag` when it does
/// not fit one.
fn interval(d: Duration, flag: &str) -> Result<PgInterval> {
    let i = PgInterval(d);
    i.micros().map_err(|_| CliError::usage(format!("{flag} {d:?} does not fit a Postgres interval")))?;
    Ok(i)
}

const UNDEFINED_FUNCTION: &str = "42883";

/// An error of a call that an older extension cannot take (42883: no such
/// function or parameter), said plainly (exit 2) as lacking `what`.
fn older_extension(e: CliError, what: &str) -> CliError {
    if e.sqlstate.as_deref() == Some(UNDEFINED_FUNCTION) {
        CliError::usage(format!("this version of the queue extension has no {what}: ALTER EXTENSION queue UPDATE"))
    } else {
        e
    }
}

/// An error of a call with a tag (see [`older_extension`]).
fn no_tags(e: CliError) -> CliError {
    older_extension(e, "tags (no tag parameter)")
}

/// An error of a batch call (see [`older_extension`]).
fn no_batches(e: CliError) -> CliError {
    older_extension(e, "batches (no queue_batch_open)")
}

/// A Postgres error's text without the "db error:" prefix.
pub fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                let t = inner.to_string();
                if !s.contains(&t) {
                    s.push_str(": ");
                    s.push_str(&t);
                }
                src = inner.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_names_only_the_options_that_are_set_and_binds_every_value() {
        let (sql, params) = PushCall::default().statement("q", &Value::Null).unwrap();
        assert_eq!(sql, "SELECT queue_push($1::text, $2::jsonb)");
        assert_eq!(params.len(), 2);

        let call = PushCall {
            priority: Some(-10),
            depends_on: vec![41, 42],
            run_anyway: true,
            dedupe_key: Some("k'); DROP TABLE x; --".into()),
            ..PushCall::default()
        };
        let (sql, params) = call.statement("q", &Value::Null).unwrap();
        assert_eq!(
            sql,
            "SELECT queue_push($1::text, $2::jsonb, priority => $3::int, dedupe_key => $4::text, \
             depends_on => $5::bigint[], run_anyway => $6::boolean)"
        );
        assert_eq!(params.len(), 6);
        assert!(!sql.contains("41") && !sql.contains("DROP"), "values are bound, never in the text");

        let both =
            PushCall { delay: Some(Duration::from_secs(1)), run_at: Some(SystemTime::now()), ..PushCall::default() };
        assert!(both.statement("q", &Value::Null).is_err());
        let huge = PushCall { timeout: Some(Duration::MAX), ..PushCall::default() };
        assert_eq!(huge.statement("q", &Value::Null).err().unwrap().exit, crate::error::Exit::Usage);

        let tagged = PushCall { tags: vec!["a".into(), "b'); --".into()], batch: Some(7), ..PushCall::default() };
        let (sql, params) = tagged.statement("q", &Value::Null).unwrap();
        assert_eq!(sql, "SELECT queue_push($1::text, $2::jsonb, tags => $3::text[], batch => $4::bigint)");
        assert_eq!(params.len(), 4);
        assert_eq!(tagged.newer_options(), vec!["tags (--tag)", "batches (--batch)"]);
    }

    #[test]
    fn a_configure_names_every_argument_and_binds_every_value() {
        assert!(ConfigureCall::default().is_empty());
        let (sql, params) = ConfigureCall { reset: true, ..ConfigureCall::default() }.statement("q").unwrap();
        assert_eq!(sql, "SELECT queue_configure(queue => $1::text, reset => $2::boolean)");
        assert_eq!(params.len(), 2);

        let call = ConfigureCall {
            priority: Some(10),
            max_attempts: Some(7),
            timeout: Some(Duration::from_secs(30)),
            backoff_base: Some(Duration::from_secs(2)),
            backoff_max: Some(Duration::from_secs(60)),
            retention: None,
            reset: false,
        };
        let (sql, params) = call.statement("q'; DROP TABLE x; --").unwrap();
        assert_eq!(
            sql,
            "SELECT queue_configure(queue => $1::text, priority => $2::int, max_attempts => $3::int, \
             timeout => $4::interval, backoff_base => $5::interval, backoff_max => $6::interval)"
        );
        assert_eq!(params.len(), 6);
        assert!(!sql.contains("retention"), "retention is named only when given");
        assert!(!sql.contains("DROP") && !sql.contains("30"), "values are bound, never in the text");

        let kept =
            ConfigureCall { retention: Some(Duration::from_secs(86400)), reset: true, ..ConfigureCall::default() };
        let (sql, _) = kept.statement("q").unwrap();
        assert_eq!(sql, "SELECT queue_configure(queue => $1::text, retention => $2::interval, reset => $3::boolean)");
        let huge = ConfigureCall { retention: Some(Duration::MAX), ..ConfigureCall::default() };
        assert_eq!(huge.statement("q").err().unwrap().exit, crate::error::Exit::Usage);
    }
}
