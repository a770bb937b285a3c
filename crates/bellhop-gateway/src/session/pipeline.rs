//! Pipelined publishes: a connection's consecutive publishes go to the dispatcher without
//! waiting for the one before to be stored, and are answered in the order sent (see the
//! session's module docs); any other request waits until they are answered.

use std::future::Future;
use std::pin::Pin;

use bellhop_protocol::{ClientFrame, Request, ServerFrame};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::reader::Work;
use super::{sleep_or_never, Session};
use crate::node::{Acked, RequestError};

/// Publishes of one connection in flight at once: sent on to the dispatcher, not yet answered.
pub(super) const MAX_PIPELINED: usize = 32;

/// A pipelined publish's request id and outcome.
pub(super) type Answer = (Option<u64>, Result<Acked, RequestError>);
/// The publishes in flight, answered in the order they were sent.
pub(super) type Pipeline = FuturesOrdered<Pin<Box<dyn Future<Output = Answer> + Send>>>;

/// What the handler does next.
pub(super) enum Step {
    /// Answer the oldest publish in flight.
    Answer(Answer),
    /// Take a request (`None`: the reader ended or the connection was aborted).
    Work(Option<Work>),
}

/// The oldest publish's answer once it is there (`None` when none is in flight).
pub(super) async fn next_answer(pipeline: &mut Option<Box<Pipeline>>) -> Option<Answer> {
    match pipeline {
        Some(p) => p.next().await,
        None => None,
    }
}

impl Session<'_> {
    /// A publish to send on without waiting for the one before it: the publish's future, or the
    /// work back when it is something else (not authenticated yet, or a service-request event,
    /// whose workflow reads and writes the request store first).
    #[allow(clippy::result_large_err)]
    pub(super) fn pipelined(
        &self,
        work: Work,
    ) -> Result<Pin<Box<dyn Future<Output = Answer> + Send>>, Work> {
        let Some(p) = &self.principal else {
            return Err(work);
        };
        let Work::Request(request) = work;
        let Request { id, frame } = request;
        match frame {
            ClientFrame::Publish(publish)
                if !bellhop_dispatcher::requests::is_request_event(
                    &publish.event,
                    &publish.payload,
                ) =>
            {
                let (node, p) = (self.node.clone(), p.clone());
                Ok(Box::pin(
                    async move { (id, node.publish(&p, publish).await) },
                ))
            }
            frame => Err(Work::Request(Request { id, frame })),
        }
    }

    /// Answers every publish in flight, in order. False when the connection was aborted or the
    /// drain deadline passed meanwhile: nothing more is to be done.
    pub(super) async fn finish(
        &mut self,
        pipeline: &mut Option<Box<Pipeline>>,
        until: Option<Instant>,
    ) -> bool {
        while let Some(in_flight) = pipeline.as_mut() {
            let answer = tokio::select! {
                biased;
                _ = self.inbox.aborted() => return false,
                _ = sleep_or_never(until) => return false,
                answer = in_flight.next() => answer,
            };
            let Some((id, result)) = answer else {
                *pipeline = None;
                break;
            };
            tokio::select! {
                biased;
                _ = self.inbox.aborted() => return false,
                _ = sleep_or_never(until) => return false,
                _ = self.answer_publish(id, result) => {}
            }
        }
        true
    }

    /// Sends a publish's `ack`, or its error.
    pub(super) async fn answer_publish(
        &self,
        id: Option<u64>,
        result: Result<Acked, RequestError>,
    ) {
        match result {
            Ok(acked) => {
                let ack = ServerFrame::Ack {
                    id,
                    message_id: Some(acked.message_id),
                    offset: acked.offset,
                    unread: None,
                    duplicate: acked.duplicate,
                };
                self.send(&ack).await;
            }
            Err(e) => self.fail(id, e).await,
        }
    }
}
