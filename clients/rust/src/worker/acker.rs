//! The worker's acker: batched acks (`queue_ack_batch`), one call in flight.
//!
//! A handler that succeeded does not write its own `queue_ack`: it queues an
//! [`AckRequest`] on an unbounded channel and waits on the request's oneshot
//! for the [`AckOutcome`]. One task ([`run`]) takes everything queued, sends it
//! as ONE `queue_ack_batch(ids, attempts, results)` (one statement, one
//! commit), answers every request from the ids that came back, and only then
//! looks at the channel again. Every ack that arrived while a call was in
//! flight goes into the next one: natural group commit, one ack per call at
//! concurrency 1, many at 50, with no timer that would add latency.
//!
//! The channel needs no bound: each queued ack belongs to a handler task that
//! still holds its concurrency permit, so at most `concurrency` are queued.
//!
//! When a queue may have more work, the batch also claims: ONE statement acks
//! the batch and claims as many jobs as it frees ([`ACK_CLAIM_SQL`]), so that
//! a worker in steady state spends one commit per job, not two. Each request
//! carries its job's concurrency permit; a claimed job runs under the permit
//! of an acked one, and the permits not reused go back with the replies. So a
//! job still counts until its ack has committed, and the jobs claimed in that
//! same commit take its place: the server never sees more than `concurrency`
//! of this worker's jobs processing.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{CallFailure, Shared, ACK_SQL};
use crate::error::is_transient;
use crate::{Error, Job};

/// The most acks one `queue_ack_batch` call carries (the brief's cap: a call
/// stays a short statement even when thousands of handlers finish at once).
pub(super) const MAX_ACK_BATCH: usize = 1000;

/// The most result bytes one call carries; a bigger single result still goes,
/// alone. Keeps one statement far below the protocol's 1 GB message limit,
/// which a thousand large results could otherwise pass (the server would drop
/// the connection, and a retry would do the same again).
pub(super) const MAX_ACK_BATCH_BYTES: usize = 16 << 20;

/// The most scheduler turns the acker yields for, gathering the acks of
/// handlers that finish together before it sends a call.
const GATHER_TURNS: usize = 8;

/// `queue_ack_batch` with typed arrays, as the extension's README asks. One
/// statement, no session state: the same text works prepared (a named
/// statement per connection) and in pooler mode (the unnamed statement of
/// `query_typed`).
pub(super) const ACK_BATCH_SQL: &str = "SELECT queue_ack_batch($1::bigint[], $2::int[], $3::jsonb[])";

/// `queue_ack_batch` and then `queue_pop`, in one statement (one commit, one
/// round trip), returning the ids acked and the claimed jobs (one row with a
/// NULL id when none was claimed). The ids come on the first row only, NULL on
/// the others: repeated on each, a claim of c jobs would send and parse c
/// arrays of c ids.
///
/// The claim must run after the ack, so that a serial group the ack releases
/// can hand its next job to this very claim. The claim is a LATERAL subquery
/// that reads the ack's output (`after_the_ack`), so the planner can only run
/// it for the ack's row, once that row exists; OFFSET 0 keeps it from being
/// flattened into the join, and the ack's subquery is never flattened because
/// its call is volatile. Inside, `queue_pop` is volatile plpgsql: its
/// statements take a snapshot that sees what the ack changed.
pub(super) const ACK_CLAIM_SQL: &str = "SELECT CASE WHEN coalesce(p.ordinality, 1) = 1 THEN a.acked END, \
     p.after_the_ack, p.id, p.queue, p.payload, \
     p.priority, p.serial_group, p.attempt, p.max_attempts, p.lease_until, p.created_at, p.lease \
     FROM (SELECT queue_ack_batch($1::bigint[], $2::int[], $3::jsonb[]) AS acked) AS a \
     LEFT JOIN LATERAL (SELECT q.*, greatest(q.lease_until - clock_timestamp(), interval '0') AS lease, \
     a.acked IS NOT NULL AS after_the_ack FROM queue_pop($4, $5, $6) WITH ORDINALITY AS q OFFSET 0) AS p ON true";

/// A job result already serialised to JSON text, sent as a `jsonb` parameter.
///
/// Serialising in the handler's own task (not in the acker) means a result
/// that cannot be serialised is caught for that job alone, before it joins a
/// batch, and that the acker's one task does not spend its time on JSON.
#[derive(Debug, Clone)]
pub(crate) struct JsonbText(Vec<u8>);

impl JsonbText {
    /// Serialises a handler's result.
    pub(crate) fn of(value: &Value) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(value).map(JsonbText)
    }

    /// The size of the JSON text, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl ToSql for JsonbText {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // The binary format of jsonb is a version byte (1) and the JSON text;
        // that of json is the text alone.
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

/// One finished job's ack, queued to the acker by the job's task.
pub(super) struct AckRequest {
    /// The job's id.
    pub id: i64,
    /// The claim's attempt: a stale claim's ack is refused by the server.
    pub attempt: i32,
    /// The result to store, serialised; `None` stores none.
    pub result: Option<JsonbText>,
    /// The job's concurrency permit, held until the ack has committed (a
    /// job claimed in the same statement may take it over).
    pub permit: Option<OwnedSemaphorePermit>,
    /// Where the acker answers; the job's task waits on the other end.
    pub reply: oneshot::Sender<AckReply>,
}

/// The acker's answer: the outcome, and the job's permit unless a job claimed
/// in the ack's statement took it over.
pub(super) struct AckReply {
    pub outcome: AckOutcome,
    pub permit: Option<OwnedSemaphorePermit>,
}

impl AckRequest {
    /// Answers the job's task, handing its permit back.
    fn answer(self, outcome: AckOutcome) {
        // The job's task is gone only if it was aborted: nobody to tell.
        let _ = self.reply.send(AckReply { outcome, permit: self.permit });
    }
}

/// What became of one ack.
#[derive(Debug)]
pub(super) enum AckOutcome {
    /// The ack committed: true when it completed the job, false when the
    /// server refused it (a stale claim, an unknown or non-processing job).
    Done(bool),
    /// Connection trouble until the grace of a stop ended (why, as text: one
    /// error of a batch call stands for all its jobs). The lease brings the
    /// job back.
    GaveUp(String),
    /// The server refused this job's own `queue_ack` (e.g. a result larger
    /// than `queue.max_result_size`): the job takes the fail path.
    Rejected(Error),
}

/// The acker's task: until the channel is closed (the worker drops its
/// sender after the drain) and empty, takes what is queued and delivers it,
/// one batch call at a time.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<AckRequest>) {
    // Requests queued but not yet sent: what arrived during the last call, and
    // those held back from a batch (a second ack of the same id, or no room).
    let mut pending: Vec<AckRequest> = Vec::new();
    loop {
        if pending.is_empty() && rx.recv_many(&mut pending, MAX_ACK_BATCH).await == 0 {
            return; // closed and empty: every ack was answered
        }
        // Handlers of one claim often finish together: the first ack wakes
        // this task while the others are about to be sent. Let the tasks
        // that are ready run first, so that one call carries their acks
        // instead of the first going alone (a commit per call): yield while
        // each turn brings more (a big claim finishes over several turns),
        // and stop once every job holding a permit has queued its ack.
        for _ in 0..GATHER_TURNS {
            let before = pending.len();
            tokio::task::yield_now().await;
            while pending.len() < MAX_ACK_BATCH {
                match rx.try_recv() {
                    Ok(r) => pending.push(r),
                    Err(_) => break,
                }
            }
            if pending.len() == before || pending.len() >= MAX_ACK_BATCH || pending.len() >= shared.in_use() {
                break;
            }
        }
        let batch = next_batch(&mut pending);
        shared.deliver(batch).await;
    }
}

/// Takes the next call's acks out of `pending`, in arrival order: at most
/// [`MAX_ACK_BATCH`] of them and [`MAX_ACK_BATCH_BYTES`] of results (at least
/// one), and each id once. `queue_ack_batch` returns the ids it completed, so
/// two acks of one id in one call (a stale claim and the job's new claim, both
/// by this worker) could not be told apart: the second waits for the next call.
fn next_batch(pending: &mut Vec<AckRequest>) -> Vec<AckRequest> {
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    let mut ids = HashSet::new();
    let mut bytes = 0usize;
    for r in pending.drain(..) {
        let size = r.result.as_ref().map_or(0, JsonbText::len);
        let fits =
            batch.len() < MAX_ACK_BATCH && (batch.is_empty() || bytes.saturating_add(size) <= MAX_ACK_BATCH_BYTES);
        if fits && ids.insert(r.id) {
            bytes = bytes.saturating_add(size);
            batch.push(r);
        } else {
            rest.push(r);
        }
    }
    *pending = rest;
    batch
}

impl Shared {
    /// Delivers one batch: with a claim of the next queue that may have work,
    /// while the worker runs and the extension has `queue_ack_batch`; else the
    /// acks alone.
    async fn deliver(self: &Arc<Self>, batch: Vec<AckRequest>) {
        if batch.is_empty() {
            return;
        }
        let claim_from = if self.has_ack_batch.load(Ordering::SeqCst) && !self.stop.is_cancelled() {
            self.next_dirty()
        } else {
            None
        };
        match claim_from {
            Some(idx) => self.ack_and_claim(batch, idx).await,
            None => self.deliver_acks(batch).await,
        }
    }

    /// Acks the batch and claims up to as many jobs of queue `idx` in one
    /// statement ([`ACK_CLAIM_SQL`]); each claimed job starts under the
    /// permit of an acked one. Any error changed nothing that is known: the
    /// queue is marked again and the acks go the usual way (a refusal of the
    /// batch is sorted out there; after connection trouble a commit whose
    /// answer was lost shows its acks as stale there, and its claims come back
    /// when their leases end, never run twice).
    async fn ack_and_claim(self: &Arc<Self>, mut batch: Vec<AckRequest>, idx: usize) {
        let (ids, attempts, results) = batch_params(&batch);
        let want = batch.len().min(self.max_batch) as i32;
        let queue = self.queues[idx].as_str();
        let name: &str = &self.name;
        let r = self
            .ops
            .query(
                ACK_CLAIM_SQL,
                &[Type::INT8_ARRAY, Type::INT4_ARRAY, Type::JSONB_ARRAY, Type::TEXT, Type::TEXT, Type::INT4],
                &[&ids, &attempts, &results, &queue, &name, &want],
            )
            .await;
        drop(results);
        let rows = match r {
            Ok(rows) => rows,
            Err(e) => {
                if is_transient(&e) {
                    self.report("acking and claiming in one call failed; acking alone", &e.into());
                } else {
                    tracing::debug!(worker = %self.name, error = %e, "acking and claiming in one call was refused; acking alone");
                }
                self.mark_dirty(idx);
                return self.deliver_acks(batch).await;
            }
        };
        // The ids are on the first row only (NULL on the others).
        let completed = acked_ids(rows.iter().find_map(|row| row.try_get(0).ok().flatten()));
        let claimed: Vec<Job> = rows
            .iter()
            .filter(|r| r.try_get::<_, Option<i64>>("id").ok().flatten().is_some())
            .filter_map(|r| self.job_of(r))
            .collect();
        if !claimed.is_empty() {
            self.mark_dirty(idx); // a full claim: there may be more
        }
        let stopping = self.stop.is_cancelled();
        let mut permits = batch.iter_mut().filter_map(|r| r.permit.take()).collect::<Vec<_>>().into_iter();
        let mut unstarted = Vec::new();
        for job in claimed {
            match permits.next() {
                Some(p) if !stopping => self.start_job_with(job, p),
                other => {
                    drop(other);
                    unstarted.push(job);
                }
            }
        }
        // The permits no claimed job took go back to their jobs' tasks.
        for r in batch.iter_mut() {
            if r.permit.is_none() {
                r.permit = permits.next();
            }
        }
        for r in batch {
            let done = completed.contains(&r.id);
            r.answer(AckOutcome::Done(done));
        }
        // Claimed while the stop began: give them back untouched.
        join_all(unstarted.iter().map(|j| self.give_back(j))).await;
    }

    /// Delivers one batch and answers each of its requests.
    ///
    /// * Transient errors are retried by [`Shared::call`], with the backoff and
    ///   give-up rules of every other call that must get through.
    /// * 42883 (an extension without `queue_ack_batch`): logged once, then
    ///   every ack goes one job per call, as before batching.
    /// * Any other refusal (e.g. 22023, one result too large: the whole call
    ///   changed nothing) is retried one job per call, so that only the job at
    ///   fault takes the fail path and its neighbours complete.
    async fn deliver_acks(&self, batch: Vec<AckRequest>) {
        if batch.is_empty() {
            return;
        }
        if !self.has_ack_batch.load(Ordering::SeqCst) {
            return self.ack_each(batch).await;
        }
        let (ids, attempts, results) = batch_params(&batch);
        let what = format!("queue_ack_batch({} jobs)", batch.len());
        let r = self
            .call(
                &what,
                ACK_BATCH_SQL,
                &[Type::INT8_ARRAY, Type::INT4_ARRAY, Type::JSONB_ARRAY],
                &[&ids, &attempts, &results],
            )
            .await;
        drop(results);
        match r {
            Ok(rows) => {
                let completed = acked_ids(rows.first().and_then(|row| row.try_get(0).ok().flatten()));
                for r in batch {
                    let done = completed.contains(&r.id);
                    r.answer(AckOutcome::Done(done));
                }
            }
            Err(CallFailure::GaveUp(e)) => {
                let why = e.to_string();
                for r in batch {
                    r.answer(AckOutcome::GaveUp(why.clone()));
                }
            }
            Err(CallFailure::Rejected(e)) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => {
                if self.has_ack_batch.swap(false, Ordering::SeqCst) {
                    tracing::info!(worker = %self.name,
                        "queue_ack_batch is not installed (an older extension): acking one job per call");
                }
                self.ack_each(batch).await;
            }
            Err(CallFailure::Rejected(e)) => {
                tracing::warn!(worker = %self.name, error = %e, jobs = batch.len(),
                    "queue_ack_batch refused the batch (nothing changed); acking its jobs one by one");
                self.ack_each(batch).await;
            }
        }
    }

    /// Acks every request of a batch with its own `queue_ack` (pipelined on
    /// the ops connection, as the per-job acks always were).
    async fn ack_each(&self, batch: Vec<AckRequest>) {
        join_all(batch.into_iter().map(|r| async move {
            let outcome = self.ack_one(r.id, r.attempt, r.result.as_ref()).await;
            r.answer(outcome);
        }))
        .await;
    }

    /// One job's `queue_ack(id, result, attempt)`, retried like every call
    /// that must get through.
    pub(super) async fn ack_one(&self, id: i64, attempt: i32, result: Option<&JsonbText>) -> AckOutcome {
        let r = self
            .call(
                &format!("queue_ack({id})"),
                ACK_SQL,
                &[Type::INT8, Type::JSONB, Type::INT4],
                &[&id, &result, &attempt],
            )
            .await;
        match r {
            Ok(rows) => AckOutcome::Done(
                rows.first().and_then(|r| r.try_get::<_, Option<bool>>(0).ok().flatten()).unwrap_or(false),
            ),
            Err(CallFailure::GaveUp(e)) => AckOutcome::GaveUp(e.to_string()),
            Err(CallFailure::Rejected(e)) => AckOutcome::Rejected(e),
        }
    }

    /// Acks one finished job: through the acker when it runs and the
    /// extension has `queue_ack_batch`, else with its own `queue_ack`.
    /// Returns once the ack committed (or could not be delivered), with the
    /// job's permit unless a job claimed in the ack's statement took it over.
    pub(super) async fn submit_ack(
        &self,
        id: i64,
        attempt: i32,
        result: Option<JsonbText>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> AckReply {
        if !self.has_ack_batch.load(Ordering::SeqCst) {
            return AckReply { outcome: self.ack_one(id, attempt, result.as_ref()).await, permit };
        }
        let (tx, rx) = oneshot::channel();
        let request = AckRequest { id, attempt, result, permit, reply: tx };
        let queued = match self.acks.lock().unwrap().as_ref() {
            Some(acks) => acks.send(request).map_err(|e| e.0),
            None => Err(request),
        };
        match queued {
            Ok(()) => match rx.await {
                Ok(reply) => reply,
                // The acker was stopped with the ack still queued (after the
                // grace and the drain's wait): the lease brings the job back.
                // The permit went with the request and is released with it.
                Err(_) => AckReply {
                    outcome: AckOutcome::GaveUp("the worker stopped before the ack was delivered".into()),
                    permit: None,
                },
            },
            // No acker (not started, or already closed): ack it directly.
            Err(request) => AckReply {
                outcome: self.ack_one(request.id, request.attempt, request.result.as_ref()).await,
                permit: request.permit,
            },
        }
    }
}

/// The parameters of `queue_ack_batch` for a batch: ids, attempts and
/// results in parallel arrays (no result in the whole batch: NULL instead of
/// an array of NULLs).
type BatchParams<'a> = (Vec<i64>, Vec<i32>, Option<Vec<Option<&'a JsonbText>>>);

fn batch_params(batch: &[AckRequest]) -> BatchParams<'_> {
    let ids = batch.iter().map(|r| r.id).collect();
    let attempts = batch.iter().map(|r| r.attempt).collect();
    let results = batch.iter().any(|r| r.result.is_some()).then(|| batch.iter().map(|r| r.result.as_ref()).collect());
    (ids, attempts, results)
}

/// The ids `queue_ack_batch` returned as completed.
fn acked_ids(value: Option<Vec<Option<i64>>>) -> HashSet<i64> {
    value.unwrap_or_default().into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: i64, bytes: usize) -> (AckRequest, oneshot::Receiver<AckReply>) {
        let (tx, rx) = oneshot::channel();
        let result = (bytes > 0).then(|| JsonbText(vec![b'1'; bytes]));
        (AckRequest { id, attempt: 1, result, permit: None, reply: tx }, rx)
    }

    #[test]
    fn a_batch_holds_each_id_once_and_keeps_the_order() {
        let mut pending: Vec<AckRequest> = [1, 2, 1, 3, 2].iter().map(|&id| req(id, 0).0).collect();
        let batch = next_batch(&mut pending);
        assert_eq!(batch.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        let batch = next_batch(&mut pending);
        assert_eq!(batch.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_batch_is_capped_by_count_and_by_bytes() {
        let mut pending: Vec<AckRequest> = (0..2500).map(|id| req(id, 0).0).collect();
        assert_eq!(next_batch(&mut pending).len(), MAX_ACK_BATCH);
        assert_eq!(pending.len(), 1500);
        assert_eq!(pending[0].id, MAX_ACK_BATCH as i64);

        let big = MAX_ACK_BATCH_BYTES / 2 + 1;
        let mut pending: Vec<AckRequest> = vec![req(1, big).0, req(2, big).0, req(3, 10).0];
        let batch = next_batch(&mut pending);
        assert_eq!(batch.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 3]);
        // A single result over the cap still goes, alone.
        let mut pending: Vec<AckRequest> = vec![req(4, MAX_ACK_BATCH_BYTES + 1).0, req(5, 1).0];
        assert_eq!(next_batch(&mut pending).iter().map(|r| r.id).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn jsonb_text_is_sent_in_the_binary_jsonb_format() {
        let j = JsonbText::of(&serde_json::json!({"a": [1, "x"]})).unwrap();
        let mut out = BytesMut::new();
        assert!(matches!(j.to_sql(&Type::JSONB, &mut out), Ok(IsNull::No)));
        assert_eq!(&out[..], b"\x01{\"a\":[1,\"x\"]}");
        assert!(<Vec<Option<&JsonbText>> as ToSql>::accepts(&Type::JSONB_ARRAY));
    }
}
