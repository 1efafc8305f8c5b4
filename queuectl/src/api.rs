//! The extension's SQL API as Rust calls: every query here calls `queue_*`
//! functions only (plus `to_regprocedure` to detect optional ones and
//! `jsonb_agg` to carry a function's rows as one JSON array). No query reads
//! or writes the extension's tables.

use std::time::Duration;

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
        match self.one(&rows_sql(call), params).await? {
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

    /// `queue_dead(queue, max_rows)`: dead letters, newest first.
    pub async fn dead(&self, queue: Option<&str>, max_rows: i32) -> Result<Vec<Value>> {
        self.rows("queue_dead($1::text, $2::int)", &[&queue, &max_rows]).await
    }

    /// `queue_jobs(queue, status, max_rows, before_id)`: jobs of any status,
    /// newest first.
    pub async fn list_jobs(
        &self,
        queue: Option<&str>,
        status: Option<&str>,
        max_rows: i32,
        before_id: Option<i64>,
    ) -> Result<Vec<Value>> {
        self.rows("queue_jobs($1::text, $2::text, $3::int, $4::bigint)", &[&queue, &status, &max_rows, &before_id])
            .await
    }

    /// `queue_peek(queue, n)`: the next jobs in claim order.
    pub async fn peek(&self, queue: &str, n: i32) -> Result<Vec<Value>> {
        self.rows("queue_peek($1::text, $2::int)", &[&queue, &n]).await
    }

    /// `queue_job(id)`; `None` for an unknown id.
    pub async fn job(&self, id: i64) -> Result<Option<Value>> {
        let v = self.one("SELECT queue_job($1::bigint)", &[&id]).await?;
        Ok(if v.is_null() { None } else { Some(v) })
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

    /// `queue_retry_all(queue)`.
    pub async fn retry_all(&self, queue: &str) -> Result<i64> {
        self.count("SELECT queue_retry_all($1::text)", &[&queue]).await
    }

    /// `queue_delete(id)`.
    pub async fn delete(&self, id: i64) -> Result<bool> {
        self.boolean("SELECT queue_delete($1::bigint)", &[&id]).await
    }

    /// `queue_cancel(id)`.
    pub async fn cancel(&self, id: i64) -> Result<bool> {
        self.boolean("SELECT queue_cancel($1::bigint)", &[&id]).await
    }

    /// `queue_purge_dead(queue, older_than)`.
    pub async fn purge_dead(&self, queue: Option<&str>, older_than: Option<Duration>) -> Result<i64> {
        self.count("SELECT queue_purge_dead($1::text, $2)", &[&queue, &older_than.map(PgInterval)]).await
    }

    /// `queue_purge_dead(queue, ...)` for the dead jobs that finished before
    /// `before` (a timestamp as text) and longer ago than `older_than`: one
    /// step of a purge with progress.
    pub async fn purge_dead_before(
        &self,
        queue: Option<&str>,
        before: &str,
        older_than: Option<Duration>,
    ) -> Result<i64> {
        self.count(
            "SELECT queue_purge_dead($1::text, greatest(now() - $2::text::timestamptz, coalesce($3, interval '0')))",
            &[&queue, &before, &older_than.map(PgInterval)],
        )
        .await
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
    /// since when, by whom).
    pub async fn settings(&self) -> Result<Vec<Value>> {
        self.rows("queue_settings()", &[]).await
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

    /// `queue_push` with the options of [`queue_client::PushOpts`].
    pub async fn push(&self, queue: &str, payload: &Value, opts: &queue_client::PushOpts) -> Result<i64> {
        Ok(queue_client::push(&self.client, queue, payload, opts).await?)
    }
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
