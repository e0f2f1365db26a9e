//! `respond.upstream` calls: the first attempt at an upstream row is made on behalf of the
//! request that committed it, and its answer offered to that request (SPEC §5.1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::breaker::Admission;
use super::settle::Pending;
use super::worker::Deliverer;
use crate::store::{Claimed, Settlement};

/// An upstream's answer offered to the request that waits for it. The request says whether
/// it answers with it ([`Offer::take`]); an answer declined (too large for the route's
/// answer) or dropped with the request goes to the row's `on_late` sink.
#[derive(Debug)]
pub struct Offer {
    pub answer: bytes::Bytes,
    taken: oneshot::Sender<bool>,
}

impl Offer {
    /// The request answers with it: nothing goes to `on_late`.
    pub fn take(self) -> bytes::Bytes {
        let _ = self.taken.send(true);
        self.answer
    }

    /// The request cannot use it: it goes to `on_late`.
    pub fn decline(self) {
        let _ = self.taken.send(false);
    }
}

impl Deliverer {
    /// The first attempt at a `respond.upstream` row, made on behalf of the request that
    /// committed it (the row was inserted already claimed), as a tracked task. The answer is
    /// offered to the request through the returned channel; if the request has stopped
    /// waiting (the channel is closed), the answer goes to the row's `on_late` sink instead,
    /// in the settlement's transaction. A failure is settled like any attempt and retried by
    /// the workers. A paused sink, an open circuit or a sink whose `concurrency` slots are all
    /// taken is not called: the row is released to the workers at once.
    /// `parent`: the request's span, when tracing is on (the call is its child).
    pub fn spawn_respond(
        self: &Arc<Self>,
        c: Claimed,
        parent: Option<opentelemetry::Context>,
    ) -> oneshot::Receiver<Offer> {
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        self.tracker
            .spawn(async move { this.respond(c, tx, parent).await });
        rx
    }

    async fn respond(
        &self,
        c: Claimed,
        waiting: oneshot::Sender<Offer>,
        parent: Option<opentelemetry::Context>,
    ) {
        let Some(sink) = self.sink(&c.sink).cloned() else {
            return;
        };
        // The call takes one of the sink's `concurrency` slots like any send; with none free
        // the request does not wait for one (it answers 202) and the workers send the row.
        let permit = sink.permits.clone().try_acquire_owned().ok();
        let admission = if sink.is_paused() || permit.is_none() {
            Admission::Wait(Duration::ZERO)
        } else {
            sink.breaker.lock().admit(Instant::now())
        };
        if let Admission::Wait(_) = admission {
            let release = Settlement::Release {
                at_ms: crate::now_millis(),
            };
            if let Err(e) = self.store.settle(&c, release).await {
                tracing::warn!(sink = %sink.name, error = %e,
                    "cannot release the upstream row; it comes due when its lease expires");
            }
            self.wake.notify_one();
            return;
        }
        let span = self.attempt_span(&sink, &c, parent.as_ref());
        let (mut settlement, answer, took) = sink.attempt(&c, self.jitter.draw(), span).await;
        drop(permit);
        if let (Settlement::Delivered { result, .. }, Some(answer)) = (&mut settlement, answer) {
            let (taken, reply) = oneshot::channel();
            if waiting.send(Offer { answer, taken }).is_ok() && reply.await == Ok(true) {
                // The request answers with it; nothing goes to `on_late`.
                *result = None;
            }
        }
        self.settler
            .settle(Pending {
                sink,
                claim: c,
                settlement,
                took,
            })
            .await;
        self.wake.notify_one();
    }
}
