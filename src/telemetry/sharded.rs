//! Counters and latency histograms for the per-request path, where every request of every
//! worker thread adds to the same series. A shared atomic there makes the cores take turns
//! owning one cache line on every request, and the Prometheus exporter's histogram appends each
//! sample to a shared queue; measured, the two cost the look-ups well beyond noise. Here each
//! thread adds to its own cache-line-padded slot with an uncontended relaxed add, and a scrape
//! sums the slots. Slots are picked per thread, so two threads share one only when there are
//! more threads than slots: then they still count exactly, a little slower.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Slots per series: the async workers and a few blocking threads each get their own.
pub const SLOTS: usize = 8;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

/// This thread's slot.
pub fn slot() -> usize {
    SLOT.with(|slot| *slot)
}

/// A counter that threads add to without contending.
pub struct Counter {
    slots: [CachePadded<AtomicU64>; SLOTS],
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        }
    }
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.slots[slot()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// Upper bounds of the latency buckets, in seconds: look-ups answer in tens of microseconds,
/// writes in milliseconds, a stalled store in seconds. The same bounds as the exporter's
/// `_seconds` histograms, so that dashboards compare like with like.
pub const SECONDS_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

const BUCKETS: usize = SECONDS_BUCKETS.len();

const BOUNDS_NANOS: [u64; BUCKETS] = {
    let mut nanos = [0; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        nanos[i] = (SECONDS_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

#[derive(Default)]
struct HistogramSlot {
    /// Samples per bucket, not cumulative; the last one counts samples above every bound.
    buckets: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

/// A latency histogram that threads record into without contending.
pub struct Histogram {
    slots: Box<[CachePadded<HistogramSlot>; SLOTS]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            slots: Box::new(std::array::from_fn(|_| CachePadded::default())),
        }
    }
}

/// What a histogram holds at one instant, in Prometheus's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Samples at or below each bound of [`SECONDS_BUCKETS`], cumulative.
    pub cumulative: [u64; BUCKETS],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        let slot = &self.slots[slot()];
        slot.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        slot.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut per_bucket = [0u64; BUCKETS + 1];
        let mut sum_nanos = 0u64;
        for slot in self.slots.iter() {
            for (total, bucket) in per_bucket.iter_mut().zip(&slot.buckets) {
                *total += bucket.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(slot.sum_nanos.load(Ordering::Relaxed));
        }
        let mut cumulative = [0u64; BUCKETS];
        let mut running = 0;
        for (i, n) in per_bucket[..BUCKETS].iter().enumerate() {
            running += n;
            cumulative[i] = running;
        }
        HistogramSnapshot {
            cumulative,
            count: running + per_bucket[BUCKETS],
            sum_seconds: sum_nanos as f64 / 1e9,
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
pub fn write_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes `name{labels} value`; `labels` are written as given, quoted and escaped.
pub fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            for c in val.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Writes the `_bucket`, `_sum` and `_count` samples of one histogram series.
pub fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    snapshot: &HistogramSnapshot,
) {
    let bucket_name = format!("{name}_bucket");
    let mut with_le: Vec<(&str, &str)> = labels.to_vec();
    let bounds: Vec<String> = SECONDS_BUCKETS.iter().map(f64::to_string).collect();
    for (bound, count) in bounds.iter().zip(snapshot.cumulative) {
        with_le.push(("le", bound));
        write_sample(out, &bucket_name, &with_le, count as f64);
        with_le.pop();
    }
    with_le.push(("le", "+Inf"));
    write_sample(out, &bucket_name, &with_le, snapshot.count as f64);
    write_sample(out, &format!("{name}_sum"), labels, snapshot.sum_seconds);
    write_sample(out, &format!("{name}_count"), labels, snapshot.count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counter = Arc::new(Counter::default());
        let histogram = Arc::new(Histogram::default());
        let threads: Vec<_> = (0..3 * SLOTS)
            .map(|_| {
                let (counter, histogram) = (counter.clone(), histogram.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.add(2);
                        histogram.record(Duration::from_micros(70));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.get(), 2 * 1000 * 3 * SLOTS as u64);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 1000 * 3 * SLOTS as u64);
        assert_eq!(snapshot.cumulative[0], 0);
        assert_eq!(snapshot.cumulative[1], snapshot.count);
        assert!((snapshot.sum_seconds - 70e-6 * snapshot.count as f64).abs() < 1e-6);
    }

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(50));
        histogram.record(Duration::from_micros(51));
        histogram.record(Duration::from_secs(11));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.cumulative[0], 1);
        assert_eq!(snapshot.cumulative[1], 2);
        assert_eq!(snapshot.cumulative[BUCKETS - 1], 2);
        assert_eq!(snapshot.count, 3);
        let mut text = String::new();
        write_histogram(&mut text, "x_seconds", &[("route", "/a\"b")], &snapshot);
        assert!(text.contains("x_seconds_bucket{route=\"/a\\\"b\",le=\"0.00005\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{route=\"/a\\\"b\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("x_seconds_count{route=\"/a\\\"b\"} 3\n"));
    }
}
