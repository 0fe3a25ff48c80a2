//! What a run measured: an HDR latency histogram, outcome counts, throughput, and
//! the load generator's own CPU time (a saturated client shows as ~100% per core
//! and makes every other figure suspect).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::mcp::Outcome;

pub struct Recorder {
    /// Microseconds, 1 µs to 60 s at 3 significant digits.
    pub latency: Histogram<u64>,
    pub outcomes: BTreeMap<Outcome, u64>,
}

impl Recorder {
    pub fn new() -> Self {
        let latency = Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid");
        Self {
            latency,
            outcomes: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        *self.outcomes.entry(outcome).or_default() += 1;
        if outcome == Outcome::Ok {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency.saturating_record(micros.max(1));
        }
    }
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[derive(Serialize)]
pub struct Summary {
    pub label: String,
    pub mode: String,
    pub duration_s: f64,
    pub calls: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Rate mode: sends that found every in-flight slot busy (the target fell behind).
    pub skipped: u64,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Client CPU use in percent of one core over the measured window.
    pub client_cpu_pct: f64,
}

impl Summary {
    pub fn new(label: &str, mode: String, recorder: &Recorder, skipped: u64, window: Duration, cpu: Duration) -> Self {
        let h = &recorder.latency;
        let ms = |v: u64| v as f64 / 1000.0;
        let calls = recorder.outcomes.values().sum();
        let ok = recorder.outcomes.get(&Outcome::Ok).copied().unwrap_or(0);
        let errors = recorder
            .outcomes
            .iter()
            .filter(|(o, _)| **o != Outcome::Ok)
            .map(|(o, n)| (o.to_string(), *n))
            .collect();
        let secs = window.as_secs_f64().max(f64::EPSILON);
        Self {
            label: label.to_string(),
            mode,
            duration_s: secs,
            calls,
            ok,
            errors,
            skipped,
            throughput_per_s: ok as f64 / secs,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
            client_cpu_pct: 100.0 * cpu.as_secs_f64() / secs,
        }
    }

    pub fn print(&self) {
        println!(
            "{label}: {mode}, {dur:.1} s: {ok} ok of {calls} calls ({tp:.0}/s), errors {errors:?}, skipped {skipped}",
            label = self.label,
            mode = self.mode,
            dur = self.duration_s,
            ok = self.ok,
            calls = self.calls,
            tp = self.throughput_per_s,
            errors = self.errors,
            skipped = self.skipped,
        );
        println!(
            "{label}: latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}; client cpu {:.0}% of one core",
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.mean_ms,
            self.client_cpu_pct,
            label = self.label,
        );
    }
}
