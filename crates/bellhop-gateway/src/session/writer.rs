//! A connection's writer task: the outbound queue to the socket, everything queued at once per
//! wake-up, until the close frame is sent or a write fails or stalls.

use super::*;

/// Sends the outbound queue to the socket: on every wake-up everything queued, in one write,
/// until the close frame is sent or a write fails or stalls past `write_timeout`. Gives the wire
/// back.
pub(super) async fn write_loop<W: Wire>(
    mut wire: W,
    outbound: Arc<Outbound>,
    write_timeout: Duration,
) -> W {
    let mut batch: Vec<WireFrame> = Vec::new();
    while let Some(next) = outbound.next_batch(&mut batch, MAX_BATCH).await {
        let close = match next {
            Batch::Frames => None,
            Batch::Close(frame) => Some(frame),
        };
        let last = close.is_some();
        let write = async {
            if !batch.is_empty() || !last {
                wire.write(&batch).await?;
            }
            if let Some(frame) = close {
                wire.close(frame).await?;
            }
            Ok::<_, WsError>(())
        };
        let written = tokio::time::timeout(write_timeout, write).await;
        batch.clear();
        if batch.capacity() > 64 {
            // A burst's buffer is not kept for the rest of an idle connection's life.
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
