//! A batch of DNS queries sent while the tracer watches (`tracer probe`, `tracer validate`).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use super::{Error, Settings, Target, Tracer, attribute_backends};
use crate::{
    flow::record::QueryRecord as TraceRecord,
    measure::{BatchResult, BatchSpec, query_batch},
    report::trace::TraceSummary,
};

/// A batch sent while the tracer watched.
#[derive(Debug)]
pub struct Traced {
    /// What the client saw.
    pub result: BatchResult,
    /// The tracer's records: failed and slow queries (every query with `Settings::all`).
    pub records: Vec<TraceRecord>,
    /// The trace summary; `None` when the tracer did not run.
    pub summary: Option<TraceSummary>,
}

/// Sends `spec` from `netns` to `server` while the tracer (when `trace` is given) follows every
/// query: the tracer starts before the first query and stops after the last one was answered or
/// timed out. `progress` counts lookups as they are sent.
pub fn traced_batch(
    netns: Option<&str>,
    server: SocketAddr,
    spec: &BatchSpec,
    trace: Option<(Target, Settings)>,
    progress: &ProgressBar,
) -> Result<Traced, Error> {
    let (result, records, summary) =
        traced_traffic(spec, trace, progress, || query_batch(netns, server, spec))?;
    Ok(Traced {
        result,
        records,
        summary,
    })
}

/// The tracer's records and summary of some traffic, and what `traffic` returned.
pub type TracedTraffic<T> = (T, Vec<TraceRecord>, Option<TraceSummary>);

/// Runs `traffic` (a batch like `spec`, and whatever else is sent with it) while the tracer
/// (when `trace` is given) follows every query, as [`traced_batch`] does.
pub fn traced_traffic<T: Send>(
    spec: &BatchSpec,
    trace: Option<(Target, Settings)>,
    progress: &ProgressBar,
    traffic: impl FnOnce() -> Result<T, crate::measure::Error> + Send,
) -> Result<TracedTraffic<T>, Error> {
    let mut tracer = match trace {
        Some((target, settings)) => Some(Tracer::start(target, &settings)?),
        None => None,
    };
    let mut records = Vec::new();
    let start = Instant::now();
    let result = std::thread::scope(|scope| -> Result<T, Error> {
        let sender = scope.spawn(traffic);
        while !sender.is_finished() {
            if let Some(t) = tracer.as_mut() {
                records.extend(t.poll()?);
            }
            let due = (start.elapsed().as_secs_f64() * spec.rate) as u64;
            progress.set_position(due.min(u64::from(spec.count)));
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sender.join().map_err(|_| Error::Panicked)??)
    })?;
    progress.finish_and_clear();
    let summary = match tracer {
        Some(mut t) => {
            // The client gave up on its last query a moment ago; let the tracer see the
            // kernel's last word on it before judging.
            let grace = Instant::now() + Duration::from_millis(300);
            while Instant::now() < grace {
                records.extend(t.poll()?);
                std::thread::sleep(Duration::from_millis(50));
            }
            let (rest, summary) = t.finish()?;
            records.extend(rest);
            attribute_backends(&mut records, &summary.rule_counters);
            Some(summary)
        }
        None => None,
    };
    Ok((result, records, summary))
}

/// A progress bar on stderr for `count` lookups; hidden when stderr is not a terminal (or when
/// `hidden`).
pub fn progress_bar(count: u32, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(u64::from(count));
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} lookups ({eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}
