//! `queuectl serve`: the live dashboard. One page (HTML, CSS and JS embedded
//! in the binary, no CDN) and a JSON API under `/api/`, both served by axum.
//!
//! Every endpoint calls the extension's SQL functions through [`Api`]. A POST
//! must carry the header `X-Queuectl: 1` (a cross-site page cannot send it
//! without a CORS preflight, which is never granted), and with the server on a
//! loopback address only requests whose `Host` is a loopback name are answered
//! (no DNS rebinding).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_postgres::Config;

use crate::api::Api;
use crate::error::{CliError, Exit, Result};
use crate::output::parse_duration;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// The server's shared state: where to connect and the current connection.
struct AppState {
    config: Config,
    conn: Mutex<Option<Arc<Api>>>,
    read_only: bool,
    loopback: bool,
    target: String,
}

impl AppState {
    /// The connection, opened again if it was lost (a restart of Postgres
    /// shows as an error in the panels for one interval, then they recover).
    async fn api(&self) -> Result<Arc<Api>> {
        let mut slot = self.conn.lock().await;
        if let Some(api) = slot.as_ref() {
            if !api.is_closed() {
                return Ok(api.clone());
            }
        }
        let api = Arc::new(Api::connect(&self.config).await?);
        *slot = Some(api.clone());
        Ok(api)
    }
}

type Shared = Arc<AppState>;

/// An API error as JSON with its HTTP status.
struct ApiError(StatusCode, String);

impl From<CliError> for ApiError {
    fn from(e: CliError) -> Self {
        let status = match e.exit {
            // The connecting role may not do this (e.g. a pause by a role
            // without queue_admin, or outside its access rules).
            _ if e.sqlstate.as_deref() == Some("42501") => StatusCode::FORBIDDEN,
            Exit::Usage => StatusCode::BAD_REQUEST,
            Exit::NotFound => StatusCode::NOT_FOUND,
            _ if e.message.starts_with("cannot connect") || e.message.starts_with("database connection") => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type ApiResult = std::result::Result<Json<Value>, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn span(text: Option<&str>, default: Duration) -> std::result::Result<Duration, ApiError> {
    match text {
        None | Some("") => Ok(default),
        Some(t) => parse_duration(t).map_err(bad),
    }
}

/// Runs the dashboard until SIGTERM / SIGINT.
pub async fn run(config: Config, listen: SocketAddr, read_only: bool) -> Result<Exit> {
    let target = crate::config::describe(&config);
    let state = Arc::new(AppState {
        config,
        conn: Mutex::new(None),
        read_only,
        loopback: listen.ip().is_loopback(),
        target: target.clone(),
    });
    // Fail early with a clear message when the database is unreachable or lacks the extension.
    state.api().await?.check_extension().await?;

    let app = router(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::error(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    eprintln!("queuectl: dashboard on http://{addr}/ for {target}{}", if read_only { " (read-only)" } else { "" });
    if !addr.ip().is_loopback() {
        eprintln!(
            "queuectl: warning: {addr} is not a loopback address, and the dashboard has no login: anyone who can \
             reach it reads every job's payload and result{}; put it behind an authenticating proxy, and connect \
             as a role that may only do what the dashboard should",
            if read_only { "" } else { " and can retry, delete, pause and trigger (add --read-only)" }
        );
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; }, None => std::future::pending::<()>().await } } => {},
            }
        })
        .await
        .map_err(|e| CliError::error(format!("server error: {e}")))?;
    eprintln!("queuectl: dashboard stopped");
    Ok(Exit::Ok)
}

/// The routes (split out so that tests could drive them without a socket).
fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { page("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { page("text/css; charset=utf-8", APP_CSS) }))
        .route("/favicon.svg", get(|| async { page("image/svg+xml", FAVICON_SVG) }))
        .route("/api/info", get(info))
        .route("/api/overview", get(overview))
        .route("/api/queues", get(queues))
        .route("/api/throughput", get(throughput))
        .route("/api/workers", get(workers))
        .route("/api/health", get(health))
        .route("/api/failed", get(failed))
        .route("/api/schedules", get(schedules))
        .route("/api/timeline", get(timeline))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/batches", get(batches))
        .route("/api/batches/{id}", get(batch))
        .route("/api/settings", get(settings))
        .route("/api/jobs/{id}/retry", post(retry))
        .route("/api/jobs/{id}/delete", post(delete))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/queues/{queue}/retry-all", post(retry_all))
        .route("/api/queues/{queue}/pause", post(pause))
        .route("/api/queues/{queue}/resume", post(resume))
        .route("/api/schedules/{name}/trigger", post(trigger))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such page".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Whether a `Host` header names this machine by a loopback name:
/// `localhost`, an IPv4 address in 127.0.0.0/8 or `[::1]`, with or without a
/// port. Anything else, a name that merely begins with `127.` included, may
/// be a name the visitor's DNS points at 127.0.0.1 for a page of its own (DNS
/// rebinding), which would then read and drive the dashboard.
fn loopback_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inner, after)) => (inner, after.strip_prefix(':').or(Some(after).filter(|a| a.is_empty()))),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, Some("")),
        },
    };
    let port_ok = port.is_some_and(|p| p.is_empty() || (p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())));
    let name_ok = if host.starts_with('[') {
        name.parse::<std::net::Ipv6Addr>().is_ok_and(|a| a.is_loopback())
    } else {
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
    };
    port_ok && name_ok
}

/// Host check, POST check, and the security headers of every response.
async fn guard(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.loopback {
        let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("?"));
        if !host.is_some_and(loopback_host) {
            let shown = host.unwrap_or("(none)");
            return ApiError(StatusCode::FORBIDDEN, format!("host {shown:?} is not this machine")).into_response();
        }
    }
    if req.method() == Method::POST {
        if state.read_only {
            return ApiError(StatusCode::FORBIDDEN, "the dashboard is read-only (--read-only)".into()).into_response();
        }
        if req.headers().get("x-queuectl").map(|v| v.as_bytes()) != Some(b"1") {
            return ApiError(StatusCode::FORBIDDEN, "a POST needs the header X-Queuectl: 1".into()).into_response();
        }
    }
    let is_api = req.uri().path().starts_with("/api/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if is_api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn info(State(s): State<Shared>) -> ApiResult {
    let api = s.api().await?;
    let throughput = api.has_function("queue_throughput(text,interval)").await?;
    Ok(Json(json!({
        "database": s.target,
        "read_only": s.read_only,
        "version": env!("CARGO_PKG_VERSION"),
        "features": {"throughput": throughput},
    })))
}

#[derive(Deserialize)]
struct SinceQuery {
    since: Option<String>,
    queue: Option<String>,
}

/// Each queue of `queue_list` with its `stats`, `metrics` and `settings`
/// (its row of `queue_settings()`: paused since when and by whom, and the
/// push defaults; null when it has none).
async fn overview(State(s): State<Shared>, Query(q): Query<SinceQuery>) -> ApiResult {
    let since = span(q.since.as_deref(), Duration::from_secs(3600))?;
    let api = s.api().await?;
    let mut queues = api.overview(since).await?;
    let settings = api.settings_if_any().await?;
    for row in &mut queues {
        let mine = settings.iter().find(|st| st["queue"] == row["queue"]).cloned().unwrap_or(Value::Null);
        if let Some(o) = row.as_object_mut() {
            o.insert("settings".into(), mine);
        }
    }
    let total = api.stats(None).await?;
    let metrics = api.metrics(None, since).await?;
    Ok(Json(json!({"queues": queues, "total": total, "metrics": metrics, "now": chrono::Utc::now().to_rfc3339()})))
}

/// `queue_list()` rows, each with its `blocked` count (null before dependencies).
async fn queues(State(s): State<Shared>) -> ApiResult {
    Ok(Json(Value::Array(s.api().await?.list_with_blocked().await?)))
}

async fn throughput(State(s): State<Shared>, Query(q): Query<SinceQuery>) -> ApiResult {
    let since = span(q.since.as_deref(), Duration::from_secs(3600))?;
    let queue = q.queue.as_deref().filter(|q| !q.is_empty());
    Ok(Json(Value::Array(s.api().await?.throughput(queue, since).await?)))
}

async fn workers(State(s): State<Shared>) -> ApiResult {
    Ok(Json(Value::Array(s.api().await?.workers().await?)))
}

async fn health(State(s): State<Shared>) -> ApiResult {
    Ok(Json(s.api().await?.health().await?))
}

#[derive(Deserialize)]
struct ListQuery {
    queue: Option<String>,
    status: Option<String>,
    limit: Option<i32>,
    /// Keyset paging of queue_jobs: the smallest id of the previous page.
    before: Option<i64>,
    /// Only the jobs with this tag (queue_jobs / queue_dead tag).
    tag: Option<String>,
}

async fn failed(State(s): State<Shared>, Query(q): Query<ListQuery>) -> ApiResult {
    let queue = q.queue.as_deref().filter(|q| !q.is_empty());
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(Value::Array(s.api().await?.dead(queue, limit, None).await?)))
}

async fn schedules(State(s): State<Shared>) -> ApiResult {
    Ok(Json(Value::Array(s.api().await?.schedules().await?)))
}

#[derive(Deserialize)]
struct TimelineQuery {
    horizon: Option<String>,
    limit: Option<i32>,
}

async fn timeline(State(s): State<Shared>, Query(q): Query<TimelineQuery>) -> ApiResult {
    let horizon = span(q.horizon.as_deref(), Duration::from_secs(86_400))?;
    let limit = q.limit.unwrap_or(20).clamp(1, 200);
    let api = s.api().await?;
    let runs = api.timeline(horizon, limit).await?;
    let schedules = api.schedules().await?;
    Ok(Json(json!({"runs": runs, "schedules": schedules, "now": chrono::Utc::now().to_rfc3339()})))
}

/// The job browser: pending jobs of a queue in claim order (`queue_peek`),
/// dead ones as `queue_dead` gives them, any other status (or all, with
/// `status=all`) newest first through `queue_jobs`, paged with `before`.
/// With `tag`, only that tag's jobs (pending ones then newest first too).
async fn jobs(State(s): State<Shared>, Query(q): Query<ListQuery>) -> ApiResult {
    let status = q.status.as_deref().filter(|s| !s.is_empty()).unwrap_or("dead");
    let queue = q.queue.as_deref().filter(|q| !q.is_empty());
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let tag = q.tag.as_deref().filter(|t| !t.is_empty());
    let api = s.api().await?;
    let rows = match status {
        "pending" if queue.is_some() && q.before.is_none() && tag.is_none() => {
            api.peek(queue.unwrap_or_default(), limit).await?
        }
        "dead" => api.dead(queue, limit, tag).await?,
        "all" => api.list_jobs(queue, None, limit, q.before, tag).await?,
        other => api.list_jobs(queue, Some(other), limit, q.before, tag).await?,
    };
    Ok(Json(Value::Array(rows)))
}

/// `queue_job(id)`, with `dependencies` (`queue_dependencies(id)`) for a job
/// pushed with dependencies and `batch` (`queue_batch(batch_id)`) for a job
/// of a batch.
async fn job(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult {
    match s.api().await?.job_detail(id).await? {
        Some(j) => Ok(Json(j)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no job {id}"))),
    }
}

#[derive(Deserialize)]
struct BatchesQuery {
    /// open, closed, done or cancelled; empty or absent: every state.
    state: Option<String>,
    limit: Option<i32>,
}

/// `GET /api/batches?state=&limit=`: `queue_batches(state, max_rows)`, the
/// batches the connecting role may see, newest first (counts null while
/// open). An unknown state is the server's 22023: 400.
async fn batches(State(s): State<Shared>, Query(q): Query<BatchesQuery>) -> ApiResult {
    let state = q.state.as_deref().filter(|s| !s.is_empty());
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(Value::Array(s.api().await?.batches(state, limit).await?)))
}

/// `GET /api/batches/{id}`: `queue_batch(id)`; 404 for an unknown batch
/// (the batch page; `GET /api/batches` lists them).
async fn batch(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult {
    match s.api().await?.batch(id).await? {
        Some(b) => Ok(Json(b)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no batch {id}"))),
    }
}

/// `GET /api/settings`: the rows of `queue_settings()` (empty before the
/// extension had them).
async fn settings(State(s): State<Shared>) -> ApiResult {
    Ok(Json(Value::Array(s.api().await?.settings_if_any().await?)))
}

/// Why a by-id action did nothing: 404 unknown, 409 wrong status.
async fn refused(api: &Api, id: i64, what: &str) -> ApiError {
    match api.job(id).await {
        Ok(None) => ApiError(StatusCode::NOT_FOUND, format!("no job {id}")),
        Ok(Some(j)) => {
            ApiError(StatusCode::CONFLICT, format!("job {id} is {}: {what}", j["status"].as_str().unwrap_or("?")))
        }
        Err(e) => e.into(),
    }
}

async fn retry(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult {
    let api = s.api().await?;
    if api.retry(id).await? {
        Ok(Json(json!({"id": id, "retried": true})))
    } else {
        Err(refused(&api, id, "only failed or expired jobs can be retried").await)
    }
}

async fn delete(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult {
    let api = s.api().await?;
    if api.delete(id).await? {
        Ok(Json(json!({"id": id, "deleted": true})))
    } else {
        Err(refused(&api, id, "a processing job cannot be deleted").await)
    }
}

async fn cancel(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult {
    let api = s.api().await?;
    if api.cancel(id).await? {
        Ok(Json(json!({"id": id, "cancelled": true})))
    } else {
        Err(refused(&api, id, "only scheduled, pending, retrying or blocked jobs can be cancelled").await)
    }
}

async fn retry_all(State(s): State<Shared>, Path(queue): Path<String>) -> ApiResult {
    let n = s.api().await?.retry_all(&queue, None).await?;
    Ok(Json(json!({"queue": queue, "retried": n})))
}

async fn trigger(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let id = s.api().await?.trigger(&name).await?;
    Ok(Json(json!({"name": name, "job_id": id})))
}

/// `POST /api/queues/{queue}/pause`: `queue_pause`. Already paused is not an
/// error (200, `changed: false`): two open tabs may both press Pause.
async fn pause(State(s): State<Shared>, Path(queue): Path<String>) -> ApiResult {
    let changed = s.api().await?.pause(&queue).await?;
    Ok(Json(json!({"queue": queue, "paused": true, "changed": changed})))
}

/// `POST /api/queues/{queue}/resume`: `queue_resume`; not paused gives 200
/// with `changed: false`, as for pause.
async fn resume(State(s): State<Shared>, Path(queue): Path<String>) -> ApiResult {
    let changed = s.api().await?.resume(&queue).await?;
    Ok(Json(json!({"queue": queue, "paused": false, "changed": changed})))
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in ["localhost", "LOCALHOST:8080", "127.0.0.1", "127.0.0.1:8080", "127.9.9.9:1", "[::1]", "[::1]:8080"] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "127.evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "127.0.0.1:80x",
            "127.0.0.1:123456",
            "[::1]x",
            "[::2]:80",
            "[::1",
            "10.0.0.1:8080",
            "::1",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
