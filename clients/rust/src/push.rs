//! Pushing jobs: [`push`], [`push_batch`], their options [`PushOpts`] and [`Priority`].
//! Workflow options (`depends_on`, `run_anyway`, `tags`, `batch`) are
//! options too; their helpers are in [`crate::workflow`].

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;
use tracing::Instrument;

use crate::interval::PgInterval;
use crate::Error;

/// A job's priority: lower runs first. The named levels are the ones the
/// extension accepts (`queue_priority`); any other integer is allowed too.
///
/// ```
/// use queue_client::Priority;
/// assert_eq!(Priority::High.value(), -10);
/// assert_eq!(Priority::from(7).value(), 7);
/// assert_eq!("critical".parse::<Priority>().unwrap(), Priority::Critical);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// -20
    Critical,
    /// -10
    High,
    /// 0, the default
    #[default]
    Normal,
    /// 10
    Low,
    /// Any integer (lower runs first; negative allowed).
    Value(i32),
}

impl Priority {
    /// The integer stored in the job's `priority`.
    pub fn value(self) -> i32 {
        match self {
            Priority::Critical => -20,
            Priority::High => -10,
            Priority::Normal => 0,
            Priority::Low => 10,
            Priority::Value(v) => v,
        }
    }
}

impl From<i32> for Priority {
    fn from(v: i32) -> Self {
        Priority::Value(v)
    }
}

impl std::str::FromStr for Priority {
    type Err = Error;

    /// `critical`, `high`, `normal`, `low` (any case), or an integer.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Ok(Priority::Critical),
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => other.parse::<i32>().map(Priority::Value).map_err(|_| {
                Error::InvalidArgument(format!("unknown priority {s:?}: critical, high, normal, low or an integer"))
            }),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Priority::Critical => f.write_str("critical"),
            Priority::High => f.write_str("high"),
            Priority::Normal => f.write_str("normal"),
            Priority::Low => f.write_str("low"),
            Priority::Value(v) => write!(f, "{v}"),
        }
    }
}

/// A moment for [`PushOpts::run_at`]: a `SystemTime`, or with the `chrono`
/// feature any `chrono::DateTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAt(pub SystemTime);

impl From<SystemTime> for RunAt {
    fn from(t: SystemTime) -> Self {
        RunAt(t)
    }
}

#[cfg(feature = "chrono")]
impl<Tz: chrono::TimeZone> From<chrono::DateTime<Tz>> for RunAt {
    fn from(t: chrono::DateTime<Tz>) -> Self {
        RunAt(SystemTime::from(t.with_timezone(&chrono::Utc)))
    }
}

/// Options of a push, one per optional parameter of `queue_push` /
/// `queue_push_batch`. Whatever is not set takes the extension's default.
///
/// ```
/// use queue_client::{PushOpts, Priority};
/// use std::time::Duration;
///
/// let opts = PushOpts::new()
///     .priority(Priority::High)
///     .delay(Duration::from_secs(600))
///     .serial_group("customer-42")
///     .max_attempts(5)
///     .timeout(Duration::from_secs(120))
///     .retry_delays([Duration::from_secs(60), Duration::from_secs(300)])
///     .dedupe_key("report-7");
///
/// // Workflows: wait for jobs 41 and 42, labelled, in an open batch.
/// let step = PushOpts::new()
///     .depends_on([41, 42])
///     .run_anyway(false)
///     .tags(["etl", "customer:42"])
///     .batch(7);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushOpts {
    priority: Option<Priority>,
    delay: Option<Duration>,
    run_at: Option<SystemTime>,
    serial_group: Option<String>,
    max_attempts: Option<i32>,
    timeout: Option<Duration>,
    backoff_base: Option<Duration>,
    backoff_max: Option<Duration>,
    retry_delays: Option<Vec<Duration>>,
    dedupe_key: Option<String>,
    depends_on: Option<Vec<i64>>,
    run_anyway: Option<bool>,
    tags: Option<Vec<String>>,
    batch: Option<i64>,
}

impl PushOpts {
    /// No options: every parameter takes the extension's default
    /// (priority 0, due now, 3 attempts, a 5 minute lease, backoff 10 s doubling to 1 h).
    pub fn new() -> Self {
        Self::default()
    }

    /// Lower runs first. Default [`Priority::Normal`] (0).
    pub fn priority(mut self, priority: impl Into<Priority>) -> Self {
        self.priority = Some(priority.into());
        self
    }

    /// Run no earlier than this long from now (the job is `scheduled` until
    /// then). Not together with [`run_at`](Self::run_at).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Run no earlier than this moment. Not together with [`delay`](Self::delay).
    pub fn run_at(mut self, at: impl Into<RunAt>) -> Self {
        self.run_at = Some(at.into().0);
        self
    }

    /// At most one job of a serial group runs at a time, across all workers
    /// and queues, in (priority, id) order.
    pub fn serial_group(mut self, group: impl Into<String>) -> Self {
        self.serial_group = Some(group.into());
        self
    }

    /// Attempts in total, the first included. Default 3.
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// The lease a worker gets per attempt; the worker extends it while the
    /// handler runs. Default 5 minutes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// First retry delay, doubling per attempt (with up to 10% jitter). Default 10 s.
    pub fn backoff_base(mut self, base: Duration) -> Self {
        self.backoff_base = Some(base);
        self
    }

    /// Cap of the exponential backoff. Default 1 hour.
    pub fn backoff_max(mut self, max: Duration) -> Self {
        self.backoff_max = Some(max);
        self
    }

    /// A retry schedule instead of the backoff; the last entry repeats.
    pub fn retry_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.retry_delays = Some(delays.into_iter().collect());
        self
    }

    /// While a job with this key is not final in the queue, a push with the
    /// same key returns that job's id and adds nothing.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// The ids of jobs this one waits for (`depends_on`): the job is
    /// `blocked`, and no worker claims it, until every one of them has
    /// completed; it then becomes pending (or scheduled, with a delay still
    /// ahead). A dependency that ends failed, expired or cancelled cancels
    /// this job (and the jobs that wait for it) unless
    /// [`run_anyway`](Self::run_anyway) is set. A dependency already
    /// completed counts as done; an id that is neither a live job nor in the
    /// history is refused by the server (SQLSTATE `22023`), and nothing is
    /// pushed. With [`push_batch`] every payload waits for the same jobs (a
    /// fan-out). A handler reads its dependencies' results with
    /// [`Job::dependencies`](crate::Job::dependencies) or
    /// [`dependencies`](crate::dependencies).
    ///
    /// Duplicates are fine (the server keeps each id once); an empty list
    /// means no dependencies.
    pub fn depends_on(mut self, ids: impl IntoIterator<Item = i64>) -> Self {
        self.depends_on = Some(ids.into_iter().collect());
        self
    }

    /// With [`depends_on`](Self::depends_on): run once every dependency is
    /// final, whatever its status, instead of being cancelled when one fails,
    /// expires or is cancelled. Default false.
    pub fn run_anyway(mut self, run_anyway: bool) -> Self {
        self.run_anyway = Some(run_anyway);
        self
    }

    /// Labels to find the job by (`queue_jobs`, `queue_dead`, `queue_stats`,
    /// ... take `tag => ...`). The server stores them sorted and without
    /// duplicates; it refuses more than 20, or one that is empty or over 64
    /// bytes, with SQLSTATE `22023`. Replaces the tags set before.
    pub fn tags<I>(mut self, tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.tags = Some(tags.into_iter().map(Into::into).collect());
        self
    }

    /// Adds the job to a batch opened with [`batch_open`](crate::batch_open)
    /// and not closed yet; a push into a closed, finished or unknown batch is
    /// refused by the server (SQLSTATE `22023`).
    pub fn batch(mut self, batch_id: i64) -> Self {
        self.batch = Some(batch_id);
        self
    }
}

/// Owned parameter values of one push statement.
enum Param {
    Text(String),
    Int(i32),
    Json(Value),
    JsonArray(Vec<Value>),
    Interval(PgInterval),
    Intervals(Vec<PgInterval>),
    Time(SystemTime),
    BigInt(i64),
    BigInts(Vec<i64>),
    Bool(bool),
    Texts(Vec<String>),
}

impl Param {
    fn as_sql(&self) -> (&(dyn ToSql + Sync), Type) {
        match self {
            Param::Text(v) => (v, Type::TEXT),
            Param::Int(v) => (v, Type::INT4),
            Param::Json(v) => (v, Type::JSONB),
            Param::JsonArray(v) => (v, Type::JSONB_ARRAY),
            Param::Interval(v) => (v, Type::INTERVAL),
            Param::Intervals(v) => (v, Type::INTERVAL_ARRAY),
            Param::Time(v) => (v, Type::TIMESTAMPTZ),
            Param::BigInt(v) => (v, Type::INT8),
            Param::BigInts(v) => (v, Type::INT8_ARRAY),
            Param::Bool(v) => (v, Type::BOOL),
            Param::Texts(v) => (v, Type::TEXT_ARRAY),
        }
    }
}

/// `, name => $n, ...` for the options that are set. Only these constant
/// names ever become SQL text; every value is a bound parameter.
fn option_args(opts: &PushOpts, params: &mut Vec<Param>) -> Result<String, Error> {
    if opts.delay.is_some() && opts.run_at.is_some() {
        return Err(Error::InvalidArgument("set delay or run_at, not both".into()));
    }
    let mut sql = String::new();
    let mut arg = |name: &str, p: Param, params: &mut Vec<Param>| {
        params.push(p);
        sql.push_str(&format!(", {name} => ${}", params.len()));
    };
    let interval = |d: Duration, what: &str| -> Result<PgInterval, Error> {
        let i = PgInterval(d);
        i.micros().map_err(|_| Error::InvalidArgument(format!("{what} {d:?} does not fit a Postgres interval")))?;
        Ok(i)
    };
    if let Some(p) = opts.priority {
        arg("priority", Param::Int(p.value()), params);
    }
    if let Some(d) = opts.delay {
        arg("delay", Param::Interval(interval(d, "delay")?), params);
    }
    if let Some(t) = opts.run_at {
        arg("run_at", Param::Time(t), params);
    }
    if let Some(g) = &opts.serial_group {
        arg("serial_group", Param::Text(g.clone()), params);
    }
    if let Some(n) = opts.max_attempts {
        arg("max_attempts", Param::Int(n), params);
    }
    if let Some(d) = opts.timeout {
        arg("timeout", Param::Interval(interval(d, "timeout")?), params);
    }
    if let Some(d) = opts.backoff_base {
        arg("backoff_base", Param::Interval(interval(d, "backoff_base")?), params);
    }
    if let Some(d) = opts.backoff_max {
        arg("backoff_max", Param::Interval(interval(d, "backoff_max")?), params);
    }
    if let Some(ds) = &opts.retry_delays {
        let v = ds.iter().map(|d| interval(*d, "retry_delays entry")).collect::<Result<Vec<_>, _>>()?;
        arg("retry_delays", Param::Intervals(v), params);
    }
    if let Some(k) = &opts.dedupe_key {
        arg("dedupe_key", Param::Text(k.clone()), params);
    }
    if let Some(ids) = &opts.depends_on {
        arg("depends_on", Param::BigInts(ids.clone()), params);
    }
    if let Some(b) = opts.run_anyway {
        arg("run_anyway", Param::Bool(b), params);
    }
    if let Some(t) = &opts.tags {
        arg("tags", Param::Texts(t.clone()), params);
    }
    if let Some(b) = opts.batch {
        arg("batch", Param::BigInt(b), params);
    }
    Ok(sql)
}

/// Pushes one job (`queue_push`) on the caller's client and returns its id.
///
/// `client` is a `tokio_postgres::Client` (the push commits on its own) or a
/// `Transaction` (the job exists only if that transaction commits; the
/// workers are woken at commit). One round trip, no prepared statement, so it
/// also works through PgBouncer in transaction mode. With a `dedupe_key`, the
/// id may be that of the live job that already had the key.
///
/// ```no_run
/// # async fn f(client: &mut tokio_postgres::Client) -> Result<(), queue_client::Error> {
/// use queue_client::{push, PushOpts, Priority};
/// use serde_json::json;
///
/// let tx = client.transaction().await?;
/// tx.execute("INSERT INTO users (email) VALUES ($1)", &[&"a@example.com"]).await?;
/// let id = push(&tx, "emails", &json!({"to": "a@example.com"}), &PushOpts::new().priority(Priority::High)).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn push<C, P>(client: &C, queue: &str, payload: &P, opts: &PushOpts) -> Result<i64, Error>
where
    C: GenericClient + Sync,
    P: Serialize + ?Sized,
{
    let payload = serde_json::to_value(payload)?;
    let mut params = vec![Param::Text(queue.to_owned()), Param::Json(payload)];
    let args = option_args(opts, &mut params)?;
    let sql = format!("SELECT queue_push($1, $2{args})");
    let span = tracing::debug_span!("queue.push", queue = %queue, jobs = 1u64, job.id = tracing::field::Empty);
    async {
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().map(Param::as_sql).collect();
        let rows = client.query_typed(&sql, &typed).await?;
        let id: i64 =
            rows.first().ok_or_else(|| Error::InvalidArgument("queue_push returned no row".into()))?.try_get(0)?;
        tracing::Span::current().record("job.id", id);
        tracing::debug!(queue, id, "pushed a job");
        Ok(id)
    }
    .instrument(span)
    .await
}

/// Pushes many jobs with the same options in one statement
/// (`queue_push_batch`); returns their ids in payload order. Same transaction
/// rules as [`push`]; with a `dedupe_key` each payload behaves as a separate push.
///
/// ```no_run
/// # async fn f(client: &tokio_postgres::Client) -> Result<(), queue_client::Error> {
/// use queue_client::{push_batch, PushOpts, Priority};
/// use serde_json::json;
/// let ids = push_batch(client, "thumbnails", &[json!({"image": 1}), json!({"image": 2})],
///                      &PushOpts::new().priority(Priority::Low)).await?;
/// # Ok(()) }
/// ```
pub async fn push_batch<C, P>(client: &C, queue: &str, payloads: &[P], opts: &PushOpts) -> Result<Vec<i64>, Error>
where
    C: GenericClient + Sync,
    P: Serialize,
{
    if payloads.is_empty() {
        return Ok(Vec::new());
    }
    let values = payloads.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?;
    let n = values.len();
    let mut params = vec![Param::Text(queue.to_owned()), Param::JsonArray(values)];
    let args = option_args(opts, &mut params)?;
    let sql = format!("SELECT id FROM queue_push_batch($1, $2{args}) AS id");
    let span = tracing::debug_span!("queue.push", queue = %queue, jobs = n as u64);
    async {
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().map(Param::as_sql).collect();
        let rows = client.query_typed(&sql, &typed).await?;
        let ids = rows.iter().map(|r| r.try_get::<_, i64>(0)).collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(queue, jobs = ids.len(), "pushed a batch");
        Ok(ids)
    }
    .instrument(span)
    .await
}
