//! `GET /metrics`: Prometheus counters, gauges and histograms of runs, the queue and the warm
//! templates, in the OpenMetrics text format.

use axum::extract::State;
use axum::http::header;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::AppState;
use crate::sandbox::{Cut, RunOutcome, Termination};

/// How a request for a run ended, as counted by `nsbox_runs_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are written as the variant names
pub enum Verdict {
    /// The code ran to its end and exited 0.
    ok,
    /// The code ran to its end with another status (an exception, sys.exit(n)).
    error,
    /// A limit ended it (see `nsbox_limit_kills_total`).
    limit,
    /// Killed by a signal no limit explains (e.g. SIGSEGV).
    signal,
    /// The scanner refused the code.
    refused,
    /// The sandbox could not be set up.
    setup_failed,
    /// The client left or the server shut down first.
    cancelled,
}

/// A limit that ended a run or cut its output, for `nsbox_limit_kills_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Limit {
    timeout,
    memory,
    cpu,
    /// The process limit refused a fork (the run goes on).
    processes,
    /// stdout or stderr were truncated (the run goes on).
    output,
    /// Plots were dropped (the run goes on).
    plots,
}

/// Where a run started.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Start {
    warm,
    cold,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: Verdict,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: Limit,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabel {
    start: Start,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 2.5 ms to ~41 s in doublings: warm runs take milliseconds, timeouts tens of seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0025, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    runs: Family<VerdictLabel, Counter>,
    limit_kills: Family<LimitLabel, Counter>,
    run_seconds: HistogramFamily<StartLabel>,
    request_seconds: Histogram,
    queue_seconds: Histogram,
    rejected: Counter,
    queue_depth: Gauge,
    active_runs: Gauge,
    template_forks: Counter,
    template_respawns: Counter,
    spawner_restarts: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("nsbox"),
            runs: Family::default(),
            limit_kills: Family::default(),
            run_seconds: HistogramFamily::new_with_constructor(latency_histogram),
            request_seconds: latency_histogram(),
            queue_seconds: latency_histogram(),
            rejected: Counter::default(),
            queue_depth: Gauge::default(),
            active_runs: Gauge::default(),
            template_forks: Counter::default(),
            template_respawns: Counter::default(),
            spawner_restarts: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "runs",
            "Requests to run code, by how they ended",
            m.runs.clone(),
        );
        r.register(
            "limit_kills",
            "Runs a limit ended (timeout, memory, cpu) or cut short (processes, output, plots)",
            m.limit_kills.clone(),
        );
        r.register(
            "run_duration_seconds",
            "Wall time of runs in the sandbox, set-up included, by warm or cold start",
            m.run_seconds.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Wall time of run requests from arrival to answer (scan, queue and run)",
            m.request_seconds.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time run requests waited for a slot",
            m.queue_seconds.clone(),
        );
        r.register(
            "admission_rejected",
            "Run requests turned away because the queue or the user's share was full",
            m.rejected.clone(),
        );
        r.register(
            "queue_depth",
            "Run requests waiting for a slot",
            m.queue_depth.clone(),
        );
        r.register("active_runs", "Runs executing now", m.active_runs.clone());
        r.register(
            "template_forks",
            "Runs forked from a warm template (zygote)",
            m.template_forks.clone(),
        );
        r.register(
            "template_respawns",
            "Warm templates started again after retiring at their fork limit or dying",
            m.template_respawns.clone(),
        );
        r.register(
            "spawner_restarts",
            "Spawner processes that died and were started again",
            m.spawner_restarts.clone(),
        );
        m
    }

    pub fn refused(&self) {
        self.count(Verdict::refused);
    }

    pub fn rejected(&self) {
        self.rejected.inc();
    }

    pub fn queued_for(&self, wait: std::time::Duration) {
        self.queue_seconds.observe(wait.as_secs_f64());
    }

    pub fn request_took(&self, d: std::time::Duration) {
        self.request_seconds.observe(d.as_secs_f64());
    }

    pub fn count(&self, verdict: Verdict) {
        self.runs.get_or_create(&VerdictLabel { verdict }).inc();
    }

    /// Counts a finished run: its verdict, the limits it met, its start and duration.
    pub fn finished(&self, outcome: &RunOutcome, limits_hit: &[Limit]) {
        let verdict = match outcome.termination {
            Termination::Exited { code: 0 } => Verdict::ok,
            Termination::Exited { .. } => Verdict::error,
            Termination::TimedOut | Termination::OutOfMemory => Verdict::limit,
            Termination::Signaled { signal } if signal == libc::SIGXCPU => Verdict::limit,
            Termination::Signaled { .. } => Verdict::signal,
            Termination::SetupFailed { .. } => Verdict::setup_failed,
            Termination::Cancelled => Verdict::cancelled,
        };
        self.count(verdict);
        for &limit in limits_hit {
            self.limit_kills.get_or_create(&LimitLabel { limit }).inc();
        }
        let start = if outcome.warm {
            self.template_forks.inc();
            Start::warm
        } else {
            Start::cold
        };
        self.run_seconds
            .get_or_create(&StartLabel { start })
            .observe(outcome.wall_ms as f64 / 1000.0);
    }

    /// The text exposition, with gauges and spawner counters brought up to date first.
    fn encode(&self, state: &AppState) -> String {
        self.queue_depth.set(state.admission.waiting() as i64);
        self.active_runs
            .set(state.admission.running(state.config.max_running) as i64);
        let (respawns, restarts) = state.spawner.restarts();
        catch_up(&self.template_respawns, respawns);
        catch_up(&self.spawner_restarts, restarts);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Raises a counter to a total kept elsewhere (counters only go up).
fn catch_up(counter: &Counter, total: u64) {
    let have = counter.get();
    if total > have {
        counter.inc_by(total - have);
    }
}

/// The limits a run met: the one that ended it, and those that cut it short.
pub fn limits_hit(outcome: &RunOutcome) -> Vec<Limit> {
    let mut hit = Vec::new();
    match outcome.termination {
        Termination::TimedOut => hit.push(Limit::timeout),
        Termination::OutOfMemory => hit.push(Limit::memory),
        Termination::Signaled { signal } if signal == libc::SIGXCPU => hit.push(Limit::cpu),
        _ => {}
    }
    hit.extend(outcome.cut_short.iter().map(|cut| match cut {
        Cut::Processes => Limit::processes,
        Cut::Output => Limit::output,
        Cut::Plots => Limit::plots,
    }));
    hit
}

pub async fn metrics(
    State(state): State<AppState>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(&state),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(termination: Termination, cut_short: &[Cut]) -> RunOutcome {
        RunOutcome {
            termination,
            stdout: String::new(),
            stderr: String::new(),
            plots: vec![],
            notes: vec![],
            cut_short: cut_short.to_vec(),
            wall_ms: 12,
            peak_memory_bytes: None,
            warm: true,
        }
    }

    #[test]
    fn limits_are_read_from_the_termination_and_what_cut_the_run_short() {
        assert_eq!(
            limits_hit(&outcome(Termination::TimedOut, &[])),
            [Limit::timeout]
        );
        assert_eq!(
            limits_hit(&outcome(
                Termination::Exited { code: 0 },
                &[Cut::Processes, Cut::Output]
            )),
            [Limit::processes, Limit::output]
        );
        assert_eq!(
            limits_hit(&outcome(
                Termination::Signaled {
                    signal: libc::SIGXCPU
                },
                &[]
            )),
            [Limit::cpu]
        );
    }

    #[test]
    fn finished_runs_show_in_the_exposition() {
        let m = Metrics::new();
        let o = outcome(Termination::OutOfMemory, &[]);
        m.finished(&o, &limits_hit(&o));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        assert!(
            text.contains("nsbox_runs_total{verdict=\"limit\"} 1"),
            "{text}"
        );
        assert!(text.contains("nsbox_limit_kills_total{limit=\"memory\"} 1"));
        assert!(text.contains("nsbox_template_forks_total 1"));
        assert!(text.contains("nsbox_run_duration_seconds_count{start=\"warm\"} 1"));
    }
}
