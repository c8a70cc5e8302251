//! Log lines that name their trace: a line written inside a traced span carries the span's
//! `trace_id` and `span_id` (W3C hex, as trace back ends show them), so an operator goes from a
//! log line to its trace and back.
//!
//! - text: ` trace_id=… span_id=…` at the end of the line;
//! - JSON: `"trace_id"` and `"span_id"` keys in the line's object.
//!
//! Lines outside any span, or written while traces are off, are unchanged.
//!
//! While an event is being written, `tracing` hides the subscriber from `Span::current()` (it
//! guards against re-entrance), so the format reaches the spans' OpenTelemetry data through a
//! handle to the subscriber it is part of, set once the subscriber is built (`Subscriber`).
use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The subscriber a format is part of, set once it is built.
pub type SubscriberHandle = Arc<OnceLock<WeakDispatch>>;

/// Wraps a log line format, adding the trace and span ids of the current span.
pub struct WithTraceIds<F> {
    inner: F,
    json: bool,
    subscriber: SubscriberHandle,
}

impl<F> WithTraceIds<F> {
    pub fn text(inner: F, subscriber: SubscriberHandle) -> Self {
        WithTraceIds {
            inner,
            json: false,
            subscriber,
        }
    }

    pub fn json(inner: F, subscriber: SubscriberHandle) -> Self {
        WithTraceIds {
            inner,
            json: true,
            subscriber,
        }
    }

    /// The trace and span ids of the span the event is in, when it has a trace.
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let span = ctx.lookup_current()?;
        let dispatch = self.subscriber.get()?.upgrade()?;
        let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
        let otel = context.span();
        let ids = otel.span_context();
        ids.is_valid()
            .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = self.ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let ended = line.ends_with('\n');
        let body = line.trim_end_matches('\n');
        if self.json {
            // The inner format writes one object: `{"timestamp":...}`.
            let rest = body.strip_prefix('{').ok_or(fmt::Error)?;
            let comma = if rest.starts_with('}') { "" } else { "," };
            write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{comma}{rest}"
            )?;
        } else {
            write!(writer, "{body} trace_id={trace_id} span_id={span_id}")?;
        }
        if ended {
            writeln!(writer)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::{Format, JsonFields};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, Registry};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// Logs one line inside a traced span and one outside; returns the lines and the span's ids.
    fn log_in_and_out_of_a_span(json: bool) -> (Vec<String>, String, String) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let lines = Lines::default();
        let handle = SubscriberHandle::default();
        let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(WithTraceIds::json(Format::default().json(), handle.clone()))
                .with_writer(lines.clone())
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .event_format(WithTraceIds::text(
                    Format::default().with_ansi(false),
                    handle.clone(),
                ))
                .with_ansi(false)
                .with_writer(lines.clone())
                .boxed()
        };
        let provider = SdkTracerProvider::builder().build();
        let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber =
            tracing::Dispatch::new(tracing_subscriber::registry().with(logs).with(traces));
        handle.set(subscriber.downgrade()).unwrap();
        let (trace_id, span_id) = tracing::dispatcher::with_default(&subscriber, || {
            let span = tracing::info_span!("call");
            let ids = span.context().span().span_context().clone();
            span.in_scope(|| tracing::info!("inside"));
            tracing::info!("outside");
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        (text.lines().map(String::from).collect(), trace_id, span_id)
    }

    #[test]
    fn a_json_line_inside_a_traced_span_has_its_trace_and_span_ids() {
        let (lines, trace_id, span_id) = log_in_and_out_of_a_span(true);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let inside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(inside["trace_id"], trace_id.as_str());
        assert_eq!(inside["span_id"], span_id.as_str());
        assert_eq!(inside["fields"]["message"], "inside");
        let outside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert!(outside.get("trace_id").is_none(), "{outside}");
    }

    #[test]
    fn a_text_line_inside_a_traced_span_ends_with_its_trace_and_span_ids() {
        let (lines, trace_id, span_id) = log_in_and_out_of_a_span(false);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].ends_with(&format!("inside trace_id={trace_id} span_id={span_id}")),
            "{}",
            lines[0]
        );
        assert!(!lines[1].contains("trace_id"), "{}", lines[1]);
    }
}
