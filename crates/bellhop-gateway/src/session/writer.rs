//! A connection's writer task: the outbound queue to the socket, everything queued at once per
//! wake-up, until the close frame is sent or a write fails or stalls.

use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::*;

/// Sends the outbound queue to the socket: on every wake-up everything queued, in one write,
/// until the close frame is sent or a write fails or stalls past `write_timeout`. Gives the wire
/// back.
///
/// Between writes the task holds only the wire and its wait for the next batch: the write
/// itself (its vectored-write buffers, its timeout's timer) is boxed for as long as it runs, and
/// the batch buffer is given back once the queue is empty, so an idle connection's writer is
/// small (docs/BENCHMARKS.md, "Idle connection memory"). (Not an `async fn`: one keeps its
/// arguments beside the locals they are moved into, and the wire would take room twice.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold the wire twice for the connection's life"
)]
pub(super) fn write_loop<W: Wire>(
    mut wire: W,
    outbound: Arc<Outbound>,
    write_timeout: Duration,
) -> impl std::future::Future<Output = W> + Send {
    async move {
        let mut batch: Vec<WireFrame> = Vec::new();
        while let Some(next) = outbound.next_batch(&mut batch, MAX_BATCH).await {
            let close = match next {
                Batch::Frames => None,
                Batch::Close(frame) => Some(frame),
            };
            let last = close.is_some();
            let written = Box::pin(write_batch(&mut wire, &batch, close, write_timeout)).await;
            batch.clear();
            if outbound.is_empty() {
                batch = Vec::new();
            }
            match written {
                Ok(Ok(())) if !last => {}
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "write failed");
                    outbound.close(close::INTERNAL, "write failed");
                    break;
                }
                Err(_) => {
                    tracing::info!("write stalled past the write timeout; dropping the connection");
                    outbound.close(close::SLOW_CONSUMER, "write timeout");
                    break;
                }
            }
        }
        wire
    }
}

/// Writes one batch (and then the close frame, if there is one), bounded by `write_timeout`.
async fn write_batch<W: Wire>(
    wire: &mut W,
    batch: &[WireFrame],
    close: Option<CloseFrame>,
    write_timeout: Duration,
) -> Result<Result<(), WsError>, tokio::time::error::Elapsed> {
    let last = close.is_some();
    let write = async {
        if !batch.is_empty() || !last {
            wire.write(batch).await?;
        }
        if let Some(frame) = close {
            wire.close(frame).await?;
        }
        Ok::<_, WsError>(())
    };
    tokio::time::timeout(write_timeout, write).await
}
