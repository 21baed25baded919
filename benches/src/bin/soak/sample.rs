//! The proxy's resident memory, open descriptors and threads, read from /proc every few
//! seconds, and the verdict on whether they stay flat after warm-up.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

pub fn take(pid: u32, start: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some(Sample {
        at: start.elapsed(),
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
    })
}

/// The first fifth of the run (at least 10 s) is warm-up and not judged.
pub fn after_warmup(samples: &[Sample], run: Duration) -> &[Sample] {
    let warm = (run / 5).max(Duration::from_secs(10));
    let from = samples
        .iter()
        .position(|s| s.at >= warm)
        .unwrap_or(samples.len());
    &samples[from..]
}

/// One measure over the run: mean of the first and of the last third after warm-up, and
/// whether the last stays within `1 + rel` times the first plus `abs`.
pub struct Trend {
    pub name: &'static str,
    pub first: f64,
    pub last: f64,
    pub max: u64,
    pub tolerance: String,
    pub flat: bool,
}

pub fn trend(
    samples: &[Sample],
    name: &'static str,
    get: fn(&Sample) -> u64,
    rel: f64,
    abs: f64,
    unit: &str,
) -> Trend {
    let third = samples.len() / 3;
    let mean = |s: &[Sample]| s.iter().map(|x| get(x) as f64).sum::<f64>() / s.len().max(1) as f64;
    let (first, last) = if third == 0 {
        (0.0, 0.0)
    } else {
        (
            mean(&samples[..third]),
            mean(&samples[samples.len() - third..]),
        )
    };
    Trend {
        name,
        first,
        last,
        max: samples.iter().map(get).max().unwrap_or(0),
        tolerance: format!("+{:.0}% +{abs} {unit}", rel * 100.0),
        flat: third > 0 && last <= first * (1.0 + rel) + abs,
    }
}
