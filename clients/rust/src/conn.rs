//! Connections of a worker: how to open one (any TLS), a self-healing
//! connection with a statement cache ([`Db`]), and the backoff between tries.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{poll_fn, BoxFuture};
use tokio::sync::mpsc;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, CancelToken, Client, Config, Notification, Row, Socket, Statement};

/// A connection and the notifications it receives (the receiver ends when the connection does).
pub(crate) struct Connected {
    pub client: Client,
    pub notifications: mpsc::UnboundedReceiver<Notification>,
}

/// Opens a connection with the worker's TLS setting and drives it in a task of its own.
pub(crate) type ConnectFn =
    Arc<dyn Fn(Config) -> BoxFuture<'static, Result<Connected, tokio_postgres::Error>> + Send + Sync>;
/// Sends a cancel request for the statement running on a connection.
pub(crate) type CancelFn =
    Arc<dyn Fn(CancelToken) -> BoxFuture<'static, Result<(), tokio_postgres::Error>> + Send + Sync>;

/// The connect and cancel functions of one TLS connector, type-erased.
pub(crate) fn connector<T>(tls: T) -> (ConnectFn, CancelFn)
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let tls2 = tls.clone();
    let connect: ConnectFn = Arc::new(move |config: Config| {
        let tls = tls.clone();
        Box::pin(async move {
            let (client, mut connection) = config.connect(tls).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                loop {
                    match poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(n))) => {
                            let _ = tx.send(n); // nobody listening on a pooled connection: fine
                        }
                        Some(Ok(AsyncMessage::Notice(notice))) => {
                            tracing::debug!(message = notice.message(), "server notice");
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "a connection ended");
                            break;
                        }
                        None => break,
                    }
                }
            });
            Ok(Connected { client, notifications: rx })
        }) as BoxFuture<'static, _>
    });
    let cancel: CancelFn = Arc::new(move |token: CancelToken| {
        let tls = tls2.clone();
        Box::pin(async move { token.cancel_query(tls).await }) as BoxFuture<'static, _>
    });
    (connect, cancel)
}

/// One live connection and its prepared statements.
struct Live {
    client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
}

/// A connection that reconnects on the next call after it was lost. Many
/// calls may run on it at once (tokio-postgres pipelines them).
///
/// Without `pooler`, each statement is prepared once per connection and
/// reused; with `pooler`, every call is one `query_typed` round trip with the
/// unnamed statement, which PgBouncer in transaction mode carries.
pub(crate) struct Db {
    config: Config,
    connect: ConnectFn,
    pooler: bool,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

impl Db {
    pub(crate) fn new(config: Config, connect: ConnectFn, pooler: bool) -> Self {
        Db { config, connect, pooler, live: tokio::sync::Mutex::new(None) }
    }

    async fn live(&self) -> Result<Arc<Live>, tokio_postgres::Error> {
        let mut guard = self.live.lock().await;
        if let Some(live) = guard.as_ref() {
            if !live.client.is_closed() {
                return Ok(live.clone());
            }
        }
        *guard = None;
        let connected = (self.connect)(self.config.clone()).await?;
        let live = Arc::new(Live { client: connected.client, statements: Mutex::new(HashMap::new()) });
        *guard = Some(live.clone());
        Ok(live)
    }

    /// Runs one statement with typed parameters.
    pub(crate) async fn query(
        &self,
        sql: &'static str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        debug_assert_eq!(types.len(), params.len());
        let live = self.live().await?;
        let res = if self.pooler {
            let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                params.iter().zip(types.iter()).map(|(p, t)| (*p, t.clone())).collect();
            live.client.query_typed(sql, &typed).await
        } else {
            let cached = live.statements.lock().unwrap().get(sql).cloned();
            let stmt = match cached {
                Some(s) => s,
                None => {
                    let s = live.client.prepare_typed(sql, types).await?;
                    live.statements.lock().unwrap().insert(sql, s.clone());
                    s
                }
            };
            live.client.query(&stmt, params).await
        };
        if res.is_err() && live.client.is_closed() {
            let mut guard = self.live.lock().await;
            if guard.as_ref().is_some_and(|l| Arc::ptr_eq(l, &live)) {
                *guard = None;
            }
        }
        res
    }

    /// A cancel token of the current connection, if there is one.
    pub(crate) async fn cancel_token(&self) -> Option<CancelToken> {
        self.live.lock().await.as_ref().map(|l| l.client.cancel_token())
    }

    /// Closes the connection (it is reopened by the next call).
    pub(crate) async fn close(&self) {
        self.live.lock().await.take();
    }
}

/// Reconnects and retried calls: 100 ms doubling up to a cap, with jitter (50–100%).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `failures` (1, 2, ...).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(self.max);
        let jitter = 0.5 + 0.5 * random_unit();
        exp.mul_f64(jitter).max(Duration::from_millis(1))
    }
}

/// A number in [0, 1), good enough for jitter (no RNG dependency).
pub(crate) fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A few random hex characters (the default worker name's suffix).
pub(crate) fn random_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&format!("{:x}", (random_unit() * (u32::MAX as f64)) as u32));
    }
    s.truncate(n);
    s
}
