//! The queue of a streamed run's events between its runner and the front end that sends them: bounded in events and bytes, so a client that stops reading costs the server a fixed amount of memory and its run is ended.
//!
//! The runner reads every event as the supervisor sends it (a supervisor must never wait on
//! a client), so the queue is where a slow reader shows. Text events coalesce with the one
//! before them while it waits, which keeps a fast printer's backlog to a few entries; what
//! still does not fit is an overflow: the queue keeps nothing more, the receiver is told,
//! and the runner stops the run.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::sandbox::{Limits, ResultCaps, RunEvent};

/// What one stream's queue may hold before its reader is judged gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Events waiting, after coalescing.
    pub max_events: usize,
    /// Bytes of text and plots waiting.
    pub max_bytes: usize,
}

/// Events a stream may have waiting by default: enough for output that alternates between
/// stdout, stderr and plots thousands of times while a client catches up.
pub const DEFAULT_MAX_EVENTS: usize = 4096;

impl Bounds {
    /// The bounds for a run under `limits`: the bytes are all a run can stream (both
    /// output caps, every plot in base64 and every notebook result, plus room for the
    /// events' own fields), so only the count can end a run whose output the caps already
    /// bound.
    pub fn for_limits(limits: &Limits, results: &ResultCaps, max_events: usize) -> Bounds {
        let plots_base64 = limits.plot_bytes.div_ceil(3) * 4;
        Bounds {
            max_events: max_events.max(1),
            max_bytes: limits
                .output_bytes
                .saturating_mul(2)
                .saturating_add(plots_base64)
                .saturating_add(limits.max_plots.saturating_mul(EVENT_OVERHEAD))
                .saturating_add(results.max_total_bytes)
                .saturating_add(results.max_count.saturating_mul(EVENT_OVERHEAD))
                .saturating_add(1 << 20),
        }
    }
}

/// What an event costs beyond its text or image: the queue entry and the plot's names.
const EVENT_OVERHEAD: usize = 64;

fn size_of(event: &RunEvent) -> usize {
    EVENT_OVERHEAD
        + match event {
            RunEvent::Stdout { text } | RunEvent::Stderr { text } => text.len(),
            RunEvent::Plot { plot } => {
                plot.content_base64.len() + plot.filename.len() + plot.format.len()
            }
            RunEvent::Display { output } => {
                output.metadata.as_str().len()
                    + output
                        .data
                        .iter()
                        .map(|(mime, value)| mime.len() + value.as_str().len())
                        .sum::<usize>()
            }
        }
}

/// The stream's reader fell too far behind: past the queue's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the client did not read the stream as fast as the run wrote it ({max_events} events or {max_bytes} bytes waiting); the run was stopped"
)]
pub struct Overflow {
    pub max_events: usize,
    pub max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    events: VecDeque<RunEvent>,
    bytes: usize,
    overflowed: bool,
    /// The receiver was told of the overflow.
    told: bool,
    /// The sender is gone: nothing more will come.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    ready: Notify,
    bounds: Bounds,
}

impl Shared {
    fn overflow(&self) -> Overflow {
        Overflow {
            max_events: self.bounds.max_events,
            max_bytes: self.bounds.max_bytes,
        }
    }
}

/// A new queue: the runner's end and the front end's.
pub fn channel(bounds: Bounds) -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        ready: Notify::new(),
        bounds,
    });
    (EventSender(shared.clone()), EventReceiver(shared))
}

/// The runner's end.
#[derive(Debug)]
pub struct EventSender(Arc<Shared>);

impl EventSender {
    /// Queues `event`, coalesced with the last one waiting when both are text of the same
    /// stream. Past the bounds, the queue is emptied, the receiver told, and this fails.
    pub fn send(&self, event: RunEvent) -> Result<(), Overflow> {
        let shared = &self.0;
        let mut state = shared.state.lock().expect("event queue lock");
        if state.overflowed {
            return Err(shared.overflow());
        }
        let size = size_of(&event);
        let added = match (state.events.back_mut(), event) {
            (Some(RunEvent::Stdout { text: last }), RunEvent::Stdout { text })
            | (Some(RunEvent::Stderr { text: last }), RunEvent::Stderr { text }) => {
                last.push_str(&text);
                size - EVENT_OVERHEAD
            }
            (_, event) => {
                state.events.push_back(event);
                size
            }
        };
        state.bytes += added;
        // One event always fits in an empty queue, whatever its size: the caps bound it.
        if state.events.len() > 1
            && (state.events.len() > shared.bounds.max_events
                || state.bytes > shared.bounds.max_bytes)
        {
            state.overflowed = true;
            state.events = VecDeque::new();
            state.bytes = 0;
            drop(state);
            shared.ready.notify_one();
            return Err(shared.overflow());
        }
        drop(state);
        shared.ready.notify_one();
        Ok(())
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        self.0.state.lock().expect("event queue lock").closed = true;
        self.0.ready.notify_one();
    }
}

/// The front end's end.
#[derive(Debug)]
pub struct EventReceiver(Arc<Shared>);

impl EventReceiver {
    /// The next event; `None` once the sender is gone and everything was taken, or an
    /// overflow (after which nothing more comes).
    pub async fn recv(&mut self) -> Option<Result<RunEvent, Overflow>> {
        loop {
            {
                let mut state = self.0.state.lock().expect("event queue lock");
                if state.overflowed {
                    let first = !std::mem::replace(&mut state.told, true);
                    return first.then(|| Err(self.0.overflow()));
                }
                if let Some(event) = state.events.pop_front() {
                    state.bytes -= size_of(&event);
                    return Some(Ok(event));
                }
                if state.closed {
                    return None;
                }
            }
            // notify_one keeps a permit when nobody waits, so a send between the check
            // above and this wait is not missed.
            self.0.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(text: &str) -> RunEvent {
        RunEvent::Stdout { text: text.into() }
    }

    fn err(text: &str) -> RunEvent {
        RunEvent::Stderr { text: text.into() }
    }

    #[tokio::test]
    async fn text_coalesces_while_it_waits_and_arrives_in_order() {
        let (tx, mut rx) = channel(Bounds {
            max_events: 2,
            max_bytes: 1 << 20,
        });
        for _ in 0..10_000 {
            tx.send(out("a")).unwrap();
        }
        tx.send(err("b")).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(Ok(out(&"a".repeat(10_000)))));
        assert_eq!(rx.recv().await, Some(Ok(err("b"))));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn past_the_count_the_queue_empties_and_the_reader_is_told_once() {
        let bounds = Bounds {
            max_events: 3,
            max_bytes: 1 << 20,
        };
        let (tx, mut rx) = channel(bounds);
        let mut sent = 0;
        let overflow = loop {
            let event = if sent % 2 == 0 { out("x") } else { err("y") };
            match tx.send(event) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(sent, 3, "three alternating events fit, the fourth does not");
        assert_eq!(overflow.max_events, 3);
        assert!(tx.send(out("more")).is_err(), "nothing is queued after");
        assert_eq!(rx.recv().await, Some(Err(overflow)));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn past_the_bytes_the_queue_overflows_but_one_large_event_fits() {
        let (tx, mut rx) = channel(Bounds {
            max_events: 100,
            max_bytes: 1000,
        });
        tx.send(out(&"a".repeat(5000))).unwrap();
        assert!(tx.send(err("b")).is_err());
        assert!(matches!(rx.recv().await, Some(Err(_))));
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_never_overflows() {
        let (tx, mut rx) = channel(Bounds {
            max_events: 2,
            max_bytes: 1 << 20,
        });
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while let Some(event) = rx.recv().await {
                event.unwrap();
                n += 1;
            }
            n
        });
        for i in 0..1000 {
            tx.send(if i % 2 == 0 { out("x") } else { err("y") })
                .unwrap();
            tokio::task::yield_now().await;
        }
        drop(tx);
        assert!(reader.await.unwrap() > 0);
    }

    #[test]
    fn the_bytes_bound_is_all_a_run_can_stream() {
        let limits = Limits::default();
        let bounds = Bounds::for_limits(&limits, &ResultCaps::default(), DEFAULT_MAX_EVENTS);
        assert!(bounds.max_bytes >= 2 * limits.output_bytes + limits.plot_bytes * 4 / 3);
        assert!(bounds.max_bytes > ResultCaps::default().max_total_bytes);
        assert!(bounds.max_bytes < 4 * (2 * limits.output_bytes + limits.plot_bytes) + (32 << 20));
    }
}
