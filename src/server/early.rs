//! HTTP/2 early answers (issue 21 item 5). A handler that answers without
//! reading the request body (404, 405, 413) drops it; h2 then ends the
//! stream with RST_STREAM while the client is still uploading. RFC 9113
//! §8.1 allows that with NO_ERROR after a complete response, but clients
//! differ (curl 7.88: "(92) Stream error in the HTTP/2 framing layer"). So
//! the server keeps a handle on the body and, once the answer is ready,
//! reads what is left — at most [`DRAIN_BYTES`] within [`DRAIN_TIME`] —
//! before sending it: an ordinary upload ends cleanly, a larger or slower
//! one still gets the answer followed by RST_STREAM(NO_ERROR).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Most unread request body read after an early answer.
pub const DRAIN_BYTES: usize = 256 * 1024;
/// Longest wait for that body.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The request body, shared between the router and the connection.
#[derive(Debug)]
pub struct SharedBody(Arc<Mutex<Incoming>>);

/// The connection's handle on a request body (see [`share_body`]).
#[derive(Debug)]
pub struct Unread(Arc<Mutex<Incoming>>);

/// Splits `req`'s body into the one the router reads and the handle
/// [`drain`] uses after the answer.
pub fn share_body(req: hyper::Request<Incoming>) -> (hyper::Request<SharedBody>, Unread) {
    let (parts, body) = req.into_parts();
    let body = Arc::new(Mutex::new(body));
    (
        hyper::Request::from_parts(parts, SharedBody(body.clone())),
        Unread(body),
    )
}

impl Body for SharedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut body = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .size_hint()
    }
}

/// Reads and discards what the router left of the body, within the bounds.
/// Nothing to do when the body was read to its end (the common case) or
/// the router still holds it.
pub async fn drain(unread: Unread) {
    let Ok(body) = Arc::try_unwrap(unread.0) else {
        return;
    };
    let mut body = body.into_inner().unwrap_or_else(PoisonError::into_inner);
    if body.is_end_stream() {
        return;
    }
    let read = async {
        let mut seen = 0usize;
        while seen <= DRAIN_BYTES {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    seen = seen.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                }
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}
