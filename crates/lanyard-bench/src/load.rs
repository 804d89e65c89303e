//! Runs one workload with N concurrent agents for a fixed time and measures it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::procstat;
use crate::workloads::{Target, Workload, op, prepare};

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub number: u8,
    pub workload: &'static str,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Server CPU time per successful operation.
    pub cpu_ms_per_op: Option<f64>,
    pub rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// Why the workload did not run, or the first error it met.
    pub note: Option<String>,
}

impl Report {
    fn empty(w: Workload, note: String) -> Self {
        Self {
            number: w.number(),
            workload: w.name(),
            ops: 0,
            errors: 0,
            seconds: 0.0,
            per_second: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            cpu_ms_per_op: None,
            rss_kib: None,
            peak_rss_kib: None,
            note: Some(note),
        }
    }

    pub fn header() -> String {
        format!(
            "{:<2} {:<30} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}  note",
            "#",
            "workload",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "cpu ms/op",
            "rss MiB",
            "peak MiB"
        )
    }

    pub fn row(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let mib =
            |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{:.1}", v as f64 / 1024.0));
        format!(
            "{:<2} {:<30} {:>9.0} {:>8.2} {:>8.2} {:>8} {:>9} {:>8} {:>8}  {}",
            self.number,
            self.workload,
            self.per_second,
            self.p50_ms,
            self.p99_ms,
            self.errors,
            opt(self.cpu_ms_per_op),
            mib(self.rss_kib),
            mib(self.peak_rss_kib),
            self.note.as_deref().unwrap_or("")
        )
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

pub async fn run(
    target: &Arc<Target>,
    w: Workload,
    concurrency: usize,
    duration: Duration,
    pid: Option<u32>,
) -> Report {
    if let Some(why) = target.unsupported(w) {
        return Report::empty(w, format!("not supported: {why}"));
    }
    let mut workers = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        match prepare(target, w, i).await {
            Ok(worker) => workers.push(worker),
            Err(e) => return Report::empty(w, format!("set-up failed: {e:#}")),
        }
    }
    let cpu_before = pid.and_then(procstat::cpu_seconds);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut first_error = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match op(&target, w, &mut worker).await {
                        Ok(()) => {
                            latencies
                                .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut note = None;
    for task in tasks {
        if let Ok((l, e, first)) = task.await {
            latencies.extend(l);
            errors += e;
            if note.is_none() {
                note = first;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = pid.and_then(procstat::cpu_seconds);
    let memory = pid.and_then(procstat::memory_kib);
    latencies.sort_unstable();
    let ops = latencies.len() as u64;
    Report {
        number: w.number(),
        workload: w.name(),
        ops,
        errors,
        seconds,
        per_second: ops as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        cpu_ms_per_op: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if ops > 0 => Some((b - a) * 1000.0 / ops as f64),
            _ => None,
        },
        rss_kib: memory.map(|m| m.0),
        peak_rss_kib: memory.map(|m| m.1),
        note,
    }
}
