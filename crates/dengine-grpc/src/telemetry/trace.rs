//! Requests' spans, and their trace context across members.
//!
//! With [`crate::server::ServerConfig::trace_requests`] set, every client
//! call runs in a span of its own ([`TraceLayer`]), so the node's spans of
//! a write (`raft.replicate`, `raft.fsync`, `raft.apply`; see
//! `dengine-runtime`) are its children. With the `otel` feature the trace
//! crosses members as W3C `traceparent` strings: from a client's gRPC
//! metadata into the call's span, from a follower to the leader with a
//! forwarded write, and from the leader to each follower with the append
//! that carries it (`raft.follower.append` on the follower). Without the
//! feature, or with tracing off, nothing here runs per request.

use std::task::{Context, Poll};

use tracing::Span;
use tracing::instrument::{Instrument, Instrumented};

/// The W3C `traceparent` of `span`, when it is part of a sampled trace
/// (always `None` without the `otel` feature).
pub(crate) fn traceparent(span: &Span) -> Option<String> {
    #[cfg(feature = "otel")]
    {
        otel::traceparent(span)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        None
    }
}

/// Makes `span` a child of the remote span `traceparent` names (a
/// malformed one is ignored: the span starts a trace of its own).
pub(crate) fn set_remote_parent(span: &Span, traceparent: &str) {
    #[cfg(feature = "otel")]
    otel::set_remote_parent(span, traceparent);
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

/// Whether trace context can cross members in this build.
pub(crate) const PROPAGATES: bool = cfg!(feature = "otel");

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    pub(super) fn traceparent(span: &Span) -> Option<String> {
        if span.is_none() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.is_valid() && sc.is_sampled()).then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    pub(super) fn set_remote_parent(span: &Span, traceparent: &str) {
        if let Some(sc) = parse(traceparent) {
            let cx = opentelemetry::Context::new().with_remote_span_context(sc);
            let _ = span.set_parent(cx);
        }
    }

    /// A `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), read as the W3C
    /// Trace Context spec says: an unknown version's first four fields are
    /// read the same way; all-zero ids are invalid.
    pub(super) fn parse(s: &str) -> Option<SpanContext> {
        let mut parts = s.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version) || !hex(trace) || !hex(span) || flags.len() != 2 || !hex(flags) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let sc = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags) & TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        sc.is_valid().then_some(sc)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn traceparents_are_read_as_the_w3c_spec_says() {
            let sc =
                parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
            assert_eq!(
                sc.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
            assert!(sc.is_sampled() && sc.is_remote());
            let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
            assert!(!unsampled.expect("valid").is_sampled());
            for bad in [
                "",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            ] {
                assert!(parse(bad).is_none(), "{bad:?}");
            }
            // A later version may add fields after the four it shares.
            assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
        }
    }
}

/// Runs each client call in a span of its own, a child of the caller's
/// `traceparent` when it sent one (see the module docs). Off, it only
/// passes calls through.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer {
    on: bool,
    /// The member, recorded on every span.
    member: u64,
}

impl TraceLayer {
    /// Spans for member `member`'s calls when `on`.
    pub fn new(on: bool, member: u64) -> TraceLayer {
        TraceLayer { on, member }
    }
}

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced {
            inner,
            layer: *self,
        }
    }
}

/// The service [`TraceLayer`] makes.
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
    layer: TraceLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for Traced<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !self.layer.on {
            return self.inner.call(req).instrument(Span::none());
        }
        let span = tracing::info_span!(
            "grpc.request",
            otel.name = %req.uri().path(),
            otel.kind = "server",
            rpc.system = "grpc",
            node = self.layer.member,
        );
        if PROPAGATES
            && let Some(tp) = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
        {
            set_remote_parent(&span, tp);
        }
        self.inner.call(req).instrument(span)
    }
}
