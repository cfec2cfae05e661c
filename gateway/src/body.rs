//! The two body types of the proxy: what is sent to a backend and what is sent to the client.
//!
//! Both are enums over `Unpin` parts rather than boxed trait objects, so streaming a body costs
//! no allocation, and the response body carries the backend's in-flight guard: the request
//! counts as in flight until its last byte has left, which is what `least_connections` needs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::h1::ResponseFields;
use crate::pool::BackendBody;
use crate::server::ClientBody;
use crate::upstream::InFlight;

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client sent more than `limits.max_body_bytes`.
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    /// Reading from the client failed.
    #[error("reading the request body failed")]
    Client(#[source] std::io::Error),
}

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body (most GET and HEAD requests).
    Empty,
    /// A body read in full so the request can be sent again on a retry.
    Full(Option<Bytes>),
    /// A body streamed from the client, cut off past the size limit.
    Stream {
        /// The client's body.
        body: ClientBody,
        /// Bytes still allowed.
        remaining: u64,
        /// The limit, for the error message.
        limit: u64,
    },
}

impl UpstreamBody {
    /// Wraps a client body with the size limit.
    pub fn stream(body: ClientBody, limit: u64) -> Self {
        Self::Stream {
            body,
            remaining: limit,
            limit,
        }
    }

    /// Reads a client body of at most `limit` bytes into memory.
    pub async fn buffer(body: ClientBody, limit: u64) -> Result<Self, BodyError> {
        let mut stream = Self::stream(body, limit);
        let mut collected = bytes::BytesMut::new();
        while let Some(frame) = stream.frame().await {
            if let Ok(data) = frame?.into_data() {
                collected.extend_from_slice(&data);
            }
        }
        Ok(Self::Full(Some(collected.freeze())))
    }

    /// A copy for a second attempt, if this body can be sent twice.
    pub fn try_clone(&self) -> Option<Self> {
        match self {
            Self::Empty => Some(Self::Empty),
            Self::Full(b) => Some(Self::Full(b.clone())),
            Self::Stream { .. } => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream {
                body,
                remaining,
                limit,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let len = data.len() as u64;
                        if len > *remaining {
                            return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                        }
                        *remaining -= len;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(b) => b.is_none(),
            Self::Stream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream { body, .. } => body.size_hint(),
        }
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// A body produced by the gateway (errors, admin API).
    Full(Option<Bytes>),
    /// A backend's body, streamed, holding the backend's in-flight slot until it ends.
    Upstream {
        /// The backend's body; it returns its connection to the pool once read to the end.
        body: BackendBody,
        /// Released when the body is dropped, that is once it is sent or the client is gone.
        guard: InFlight,
    },
}

impl ResponseBody {
    /// A body from bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// Streams a backend body.
    pub fn upstream(body: BackendBody, guard: InFlight) -> Self {
        Self::Upstream { body, guard }
    }

    /// The header fields of a backend's response, written before those of the response head.
    pub fn backend_fields(&self) -> Option<&ResponseFields> {
        match self {
            Self::Full(_) => None,
            Self::Upstream { body, .. } => Some(body.fields()),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream { body, .. } => body.size_hint(),
        }
    }
}
