//! Group commit for reported events.
//!
//! Every event must be durable before its request is answered, and a SQLite commit costs a
//! disk flush. One committer task takes every event waiting when it comes round, applies them
//! in one transaction ([`Runtime::apply_events`]) and answers each request: under load a
//! flush carries hundreds of events, and with one request in flight it carries one, at no
//! extra latency. Each event is still applied, rejected or replayed on its own.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Problem;
use crate::runtime::{EventRequest, EventResult, Runtime};
use crate::store::Storage;

/// The most events one commit carries.
pub const MAX_GROUP: usize = 512;

/// Events waiting for the committer before senders wait too: back-pressure, not a buffer.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<EventResult, String>>;

/// A handle on the committer.
#[derive(Clone, Debug)]
pub struct Ingest {
    queue: mpsc::Sender<(EventRequest, Reply)>,
}

impl Ingest {
    /// Starts the committer on the current tokio runtime. `committed` is called after each
    /// commit that applied an event, to wake the worker for what the events scheduled.
    pub fn start<S: Storage>(
        runtime: Arc<Runtime<S>>,
        committed: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let (queue, mut rx) = mpsc::channel::<(EventRequest, Reply)>(QUEUE);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(MAX_GROUP);
            while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
                let (requests, replies): (Vec<EventRequest>, Vec<Reply>) =
                    std::mem::take(&mut group).into_iter().unzip();
                match runtime.apply_events(&requests).await {
                    Ok(results) => {
                        if results.iter().any(|r| r.transition.is_some()) {
                            committed();
                        }
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, events = requests.len(), "event commit failed");
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Ingest { queue }
    }

    /// Applies one event durably, with whatever else is waiting.
    pub async fn submit(&self, req: EventRequest) -> Result<EventResult, Problem> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((req, reply))
            .await
            .map_err(|_| Problem::unavailable("the event committer has stopped"))?;
        answer
            .await
            .map_err(|_| Problem::unavailable("the event committer has stopped"))?
            .map_err(|e| {
                Problem::unavailable(&format!(
                    "the event was not saved ({e}); send it again with the same Idempotency-Key"
                ))
            })
    }
}
