//! Prometheus counters, gauges and histograms of runs, the queue and the warm templates,
//! kept by the run service and written in the OpenMetrics text format (`GET /metrics`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{Ending, RunResult};
use crate::sandbox::Cut;

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

/// Why a session ended, as counted by `nsbox_sessions_ended_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SessionEnd {
    /// Its client deleted it.
    closed,
    /// Idle past its TTL, or past the maximum lifetime.
    expired,
    /// A limit ended it: a call's timeout that the code did not come back from, memory.
    limit,
    /// Its interpreter or sandbox went away by itself (the code exited or crashed it).
    lost,
    /// The server shut down.
    shutdown,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionEndLabel {
    reason: SessionEnd,
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
    stream_overflows: Counter,
    log_suppressed: Counter,
    queue_depth: Gauge,
    active_runs: Gauge,
    template_forks: Counter,
    template_respawns: Counter,
    spawner_restarts: Counter,
    sessions_active: Gauge,
    sessions_created: Counter,
    sessions_ended: Family<SessionEndLabel, Counter>,
    sessions_memory: Gauge,
    egress: std::sync::Arc<crate::egress::EgressMetrics>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// The egress door's counters, which each run's door adds to.
    pub fn egress(&self) -> std::sync::Arc<crate::egress::EgressMetrics> {
        self.egress.clone()
    }

    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("nsbox"),
            runs: Family::default(),
            limit_kills: Family::default(),
            run_seconds: HistogramFamily::new_with_constructor(latency_histogram),
            request_seconds: latency_histogram(),
            queue_seconds: latency_histogram(),
            rejected: Counter::default(),
            stream_overflows: Counter::default(),
            log_suppressed: Counter::default(),
            queue_depth: Gauge::default(),
            active_runs: Gauge::default(),
            template_forks: Counter::default(),
            template_respawns: Counter::default(),
            spawner_restarts: Counter::default(),
            sessions_active: Gauge::default(),
            sessions_created: Counter::default(),
            sessions_ended: Family::default(),
            sessions_memory: Gauge::default(),
            egress: Default::default(),
        };
        m.egress.register(&mut m.registry);
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
            "Run requests turned away (429) because the queue, the API key's share or the \
             user's share was full",
            m.rejected.clone(),
        );
        r.register(
            "stream_overflows",
            "Streamed runs ended because their client fell behind the queue's bounds",
            m.stream_overflows.clone(),
        );
        r.register(
            "log_lines_suppressed",
            "Log lines about refused requests left out past the rate limit",
            m.log_suppressed.clone(),
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
        r.register(
            "sessions_active",
            "Sessions open now",
            m.sessions_active.clone(),
        );
        r.register(
            "sessions_created",
            "Sessions created",
            m.sessions_created.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions ended, by why: closed, expired, limit, lost, shutdown",
            m.sessions_ended.clone(),
        );
        r.register(
            "sessions_memory_bytes",
            "Memory the open sessions hold, as measured after their last call",
            m.sessions_memory.clone(),
        );
        m
    }

    pub fn session_created(&self) {
        self.sessions_created.inc();
    }

    pub fn session_ended(&self, reason: SessionEnd) {
        self.sessions_ended
            .get_or_create(&SessionEndLabel { reason })
            .inc();
    }

    /// Sessions created and ended so far (of every reason).
    pub fn session_totals(&self) -> (u64, u64) {
        let ended = [
            SessionEnd::closed,
            SessionEnd::expired,
            SessionEnd::limit,
            SessionEnd::lost,
            SessionEnd::shutdown,
        ]
        .iter()
        .map(|&reason| {
            self.sessions_ended
                .get_or_create(&SessionEndLabel { reason })
                .get()
        })
        .sum();
        (self.sessions_created.get(), ended)
    }

    pub fn rejected(&self) {
        self.rejected.inc();
    }

    pub fn stream_overflowed(&self) {
        self.stream_overflows.inc();
    }

    pub fn log_line_suppressed(&self) {
        self.log_suppressed.inc();
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

    /// Counts a run that reached the sandbox: its verdict, the limits it met, its start and
    /// duration.
    pub fn finished(&self, result: &RunResult) {
        let verdict = match result.ending {
            Ending::Exited { code: 0 } => Verdict::ok,
            Ending::Exited { .. } => Verdict::error,
            Ending::Limit(_) => Verdict::limit,
            Ending::Signaled { .. } => Verdict::signal,
            Ending::Refused => Verdict::refused,
        };
        self.count(verdict);
        for limit in limits_hit(result) {
            self.limit_kills.get_or_create(&LimitLabel { limit }).inc();
        }
        let Some(run) = &result.run else { return };
        let start = if run.warm {
            self.template_forks.inc();
            Start::warm
        } else {
            Start::cold
        };
        self.run_seconds
            .get_or_create(&StartLabel { start })
            .observe(run.wall_ms as f64 / 1000.0);
    }

    /// The text exposition, with the gauges and the spawner's counters brought up to date
    /// first: (`queued`, `running`) runs now, (`template_respawns`, `spawner_restarts`) so far.
    pub fn encode(
        &self,
        (queued, running): (usize, usize),
        (respawns, restarts): (u64, u64),
        (sessions, session_memory): (usize, u64),
    ) -> String {
        self.sessions_active.set(sessions as i64);
        self.sessions_memory.set(session_memory as i64);
        self.queue_depth.set(queued as i64);
        self.active_runs.set(running as i64);
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
pub fn limits_hit(result: &RunResult) -> Vec<Limit> {
    let mut hit = Vec::new();
    if let Ending::Limit(ended) = result.ending {
        hit.push(match ended {
            super::Limit::Timeout => Limit::timeout,
            super::Limit::Memory => Limit::memory,
            super::Limit::Cpu => Limit::cpu,
        });
    }
    let cuts = result.run.as_ref().map_or(&[][..], |r| &r.cut_short[..]);
    hit.extend(cuts.iter().map(|cut| match cut {
        Cut::Processes => Limit::processes,
        Cut::Output => Limit::output,
        Cut::Plots => Limit::plots,
    }));
    hit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Limit as Ended, RunFacts};

    fn result(ending: Ending, cut_short: &[Cut]) -> RunResult {
        RunResult {
            ending,
            stdout: String::new(),
            stderr: String::new(),
            plots: vec![],
            violations: vec![],
            violation_lines: vec![],
            execution_time: std::time::Duration::from_millis(12),
            scan_time: std::time::Duration::ZERO,
            queue_time: std::time::Duration::ZERO,
            run: Some(RunFacts {
                cut_short: cut_short.to_vec(),
                wall_ms: 12,
                peak_memory_bytes: None,
                warm: true,
            }),
            files: None,
            skipped_files: Vec::new(),
            session: None,
            results: None,
            error: None,
        }
    }

    #[test]
    fn limits_are_read_from_the_ending_and_what_cut_the_run_short() {
        assert_eq!(
            limits_hit(&result(Ending::Limit(Ended::Timeout), &[])),
            [Limit::timeout]
        );
        assert_eq!(
            limits_hit(&result(
                Ending::Exited { code: 0 },
                &[Cut::Processes, Cut::Output]
            )),
            [Limit::processes, Limit::output]
        );
        assert_eq!(
            limits_hit(&result(Ending::Limit(Ended::Cpu), &[])),
            [Limit::cpu]
        );
    }

    #[test]
    fn finished_runs_show_in_the_exposition() {
        let m = Metrics::new();
        m.finished(&result(Ending::Limit(Ended::Memory), &[]));
        let text = m.encode((0, 0), (0, 0), (0, 0));
        assert!(
            text.contains("nsbox_runs_total{verdict=\"limit\"} 1"),
            "{text}"
        );
        assert!(text.contains("nsbox_limit_kills_total{limit=\"memory\"} 1"));
        assert!(text.contains("nsbox_template_forks_total 1"));
        assert!(text.contains("nsbox_run_duration_seconds_count{start=\"warm\"} 1"));
    }
}
