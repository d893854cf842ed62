//! A generation as the server sees it: the engine's event channel, timed. It feeds the
//! latency histograms and token counters, and logs one line per request when it ends (or when
//! the client goes away first).

use crate::metrics::Metrics;
use squish_engine::{Event, FinishReason, Usage};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

pub struct Tracked {
    rx: UnboundedReceiver<Event>,
    metrics: Arc<Metrics>,
    route: &'static str,
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    ended: bool,
}

impl Tracked {
    pub fn new(rx: UnboundedReceiver<Event>, metrics: Arc<Metrics>, route: &'static str, start: Instant) -> Self {
        Self { rx, metrics, route, start, first: None, last: None, ended: false }
    }

    /// The next event; None after the last one.
    pub async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let ev = self.rx.recv().await;
        let now = Instant::now();
        match &ev {
            Some(Event::Token { .. }) => {
                match self.last {
                    None => self.metrics.ttft.observe((now - self.start).as_secs_f64()),
                    Some(prev) => self.metrics.itl.observe((now - prev).as_secs_f64()),
                }
                self.first.get_or_insert(now);
                self.last = Some(now);
            }
            Some(Event::Done { finish, usage, .. }) => self.end(status_of(*finish), usage),
            Some(Event::Error(msg)) => {
                tracing::error!(route = self.route, "generation failed: {msg}");
                self.end("error", &Usage::default());
            }
            Some(Event::PromptLogprobs(_)) => {}
            None => self.end("error", &Usage::default()),
        }
        ev
    }

    fn end(&mut self, status: &'static str, usage: &Usage) {
        self.ended = true;
        let m = &self.metrics;
        let total = self.start.elapsed();
        m.requests.with_label_values(&[status]).inc();
        m.prompt_tokens.inc_by(usage.prompt_tokens as u64);
        m.generation_tokens.inc_by(usage.completion_tokens as u64);
        m.duration.observe(total.as_secs_f64());
        let ttft = self.first.map(|f| (f - self.start).as_secs_f64() * 1e3);
        let decode_s = match (self.first, self.last) {
            (Some(f), Some(l)) if l > f => (l - f).as_secs_f64(),
            _ => 0.0,
        };
        let tok_s = if decode_s > 0.0 { usage.completion_tokens.saturating_sub(1) as f64 / decode_s } else { 0.0 };
        tracing::info!(
            route = self.route,
            status,
            prompt_tokens = usage.prompt_tokens,
            cached_tokens = usage.cached_tokens,
            completion_tokens = usage.completion_tokens,
            ttft_ms = ttft.map(|t| format!("{t:.1}")).unwrap_or_else(|| "-".into()),
            total_ms = format!("{:.1}", total.as_secs_f64() * 1e3),
            decode_tok_s = format!("{tok_s:.1}"),
            "request"
        );
    }
}

impl Drop for Tracked {
    /// The client left before the end: the engine frees the slot when it sees the channel closed.
    fn drop(&mut self) {
        if !self.ended {
            self.end("cancelled", &Usage::default());
        }
    }
}

fn status_of(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Cancelled => "cancelled",
        _ => "ok",
    }
}
