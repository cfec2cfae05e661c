//! The JSON body every event travels in.
//!
//! ```json
//! {"event_id": "…uuid…", "event_type": "comment.submitted", "occurred_at": "2026-…Z",
//!  "trace_context": {"traceparent": "00-…-…-01"}, "data": {…}}
//! ```
//!
//! `event_id` is also the AMQP `message_id`: consumers deduplicate on it. The trace context
//! rides both here (it survives any re-publish) and in the `traceparent` message header, where
//! AMQP instrumentation looks for it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event and what every event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub event_id: Uuid,
    pub event_type: String,
    /// When the change the event announces was committed, RFC 3339.
    pub occurred_at: String,
    #[serde(default)]
    pub trace_context: TraceContext,
    pub data: T,
}

/// W3C trace context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// `comment.submitted`: a comment was accepted and waits for moderation. The outbox row's
/// payload, written by `domain::comments::submit`, is exactly this object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentSubmitted {
    pub comment_id: i64,
    pub post_id: i64,
    pub author_id: i64,
    pub author: String,
    pub body: String,
    pub submitted_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_and_an_absent_trace_context_is_empty() {
        let raw = r#"{"event_id":"7d0c1f5e-4a8e-4c36-9d53-1f0b7e0d9a10","event_type":"comment.submitted",
            "occurred_at":"2026-11-26T03:00:00Z","data":{"comment_id":1,"post_id":2,"author_id":3,
            "author":"ada","body":"hi","submitted_at":"2026-11-26T03:00:00+00:00"}}"#;
        let envelope: Envelope<CommentSubmitted> = serde_json::from_str(raw).unwrap();
        assert_eq!(envelope.trace_context, TraceContext::default());
        assert_eq!(envelope.data.body, "hi");
        let again: Envelope<CommentSubmitted> =
            serde_json::from_slice(&serde_json::to_vec(&envelope).unwrap()).unwrap();
        assert_eq!(again, envelope);
    }

    #[test]
    fn a_body_that_is_not_an_event_is_an_error_not_a_panic() {
        for raw in ["", "{}", "[1]", "{\"event_id\": 5}", "\u{0}"] {
            assert!(serde_json::from_str::<Envelope<CommentSubmitted>>(raw).is_err());
        }
    }
}
