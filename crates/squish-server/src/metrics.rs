//! Prometheus metrics: request counts and token totals, latency histograms, and the engine's
//! queue, running sequences and KV-cache use (read from the engine when scraped).

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use squish_engine::Load;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub duration: Histogram,
    queue_depth: IntGauge,
    running: IntGauge,
    kv_usage: prometheus::Gauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let latency = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        let m = Self {
            requests: IntCounterVec::new(Opts::new("squish_requests_total", "Requests by outcome"), &["status"])?,
            prompt_tokens: IntCounter::new("squish_prompt_tokens_total", "Prompt tokens processed")?,
            generation_tokens: IntCounter::new("squish_generation_tokens_total", "Tokens generated")?,
            ttft: latency(
                "squish_time_to_first_token_seconds",
                "From request to first generated token",
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )?,
            itl: latency(
                "squish_inter_token_latency_seconds",
                "Between consecutive generated tokens of one request",
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            )?,
            duration: latency(
                "squish_request_duration_seconds",
                "Whole request, from arrival to last token",
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
            )?,
            queue_depth: IntGauge::new("squish_queue_depth", "Requests waiting for a sequence slot")?,
            running: IntGauge::new("squish_requests_running", "Sequences being processed")?,
            kv_usage: prometheus::Gauge::new("squish_kv_cache_usage_ratio", "Share of KV-cache slots' tokens in use")?,
            registry,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.prompt_tokens.clone()))?;
        m.registry.register(Box::new(m.generation_tokens.clone()))?;
        m.registry.register(Box::new(m.ttft.clone()))?;
        m.registry.register(Box::new(m.itl.clone()))?;
        m.registry.register(Box::new(m.duration.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.running.clone()))?;
        m.registry.register(Box::new(m.kv_usage.clone()))?;
        Ok(m)
    }

    /// The text exposition format, with the engine's gauges as of now.
    pub fn render(&self, load: Load) -> String {
        self.queue_depth.set(load.waiting as i64);
        self.running.set(load.running as i64);
        self.kv_usage.set(load.kv_tokens as f64 / load.kv_capacity.max(1) as f64);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
