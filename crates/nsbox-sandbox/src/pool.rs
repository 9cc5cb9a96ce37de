//! Ready sandboxes: per warm template, a few sandboxes built ahead of requests (namespaces, mounts, cgroup, id maps, released, Python forked and waiting on fd 3), each handed to one request and never reused.
//!
//! ```text
//! spawner --fork--> pooled supervisor: start (warm) -> release -> harness says "waiting"
//!         <--"ready"-- (link)
//! request: spawner --run socket over the link--> that supervisor: request read, limits
//!          applied, bundle (or "session") sent on fd 3 -> today's run (or session) path
//! ```
//! The spawner keeps the books ([`Pool`]): one link per pooled supervisor, a sandbox taken
//! off the books as its run socket is sent (the spawner is single-threaded, so no two
//! requests can take one). Closing a link ends that sandbox unused: how the pool shrinks
//! when idle and drains at shutdown. A pooled supervisor whose spawner dies is killed with
//! it (parent-death signal); its harness sees fd 3 close and exits, and the next spawner
//! sweeps its cgroup.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::capture::Capture;
use super::child::{self, RECORD_LEN};
use super::config::SpawnerConfig;
use super::fdpass;
use super::protocol::read_frame;
use super::run::{Limits, RunRequest, Template};
use super::sandbox::{release, start_with_socket, Phases, Ready, WarmControls};
use super::seccomp::SeccompProgram;
use super::{session, supervisor};
use crate::sys;

/// A template whose ready sandbox failed to build is not refilled for this long.
const FAILURE_PAUSE: Duration = Duration::from_secs(5);
/// How long a pooled sandbox's harness has to say it waits (a warm start takes
/// milliseconds; a cold one, after a failed warm start, seconds).
const BUILD_PATIENCE: Duration = Duration::from_secs(30);
/// What a pooled supervisor says on its link once its sandbox waits.
const READY: &[u8] = b"ready";
/// What a pooled supervisor calls itself while it builds its sandbox, then while the
/// sandbox waits: host-side tools (and the tests' leftover checks) tell a sandbox that ran
/// nothing from a run's processes by the name of the supervisor whose `run-<pid>` cgroup
/// they are in. Nothing in a sandbox can rename a host process.
const BUILDING_NAME: &CStr = c"nsbox-building";
const WAITING_NAME: &CStr = c"nsbox-ready";
/// What it calls itself from the moment a request claims it.
const CLAIMED_NAME: &CStr = c"nsbox-claimed";

/// The hand-off byte of a request a ready sandbox of `template` can serve.
pub fn key_of(template: Template) -> u8 {
    1 + Template::ALL
        .iter()
        .position(|t| *t == template)
        .expect("every template is in ALL") as u8
}

/// The template a hand-off byte names; `None` for a request the pool does not serve (0).
fn template_of(key: u8) -> Option<Template> {
    Template::ALL.get((key as usize).checked_sub(1)?).copied()
}

/// One pooled supervisor, as the spawner sees it.
struct Pooled {
    template: Template,
    pid: Pid,
    /// The spawner's end of the link: "ready" comes in, the run socket goes out.
    link: UnixStream,
    ready: bool,
    born: Instant,
}

/// The spawner's books of ready sandboxes.
pub(crate) struct Pool {
    /// Ready sandboxes kept per template while requests come.
    size: usize,
    /// After this long without a request, the pool keeps one ready sandbox per template
    /// (the next request, an agent's next call, still finds one); it grows back at the
    /// next request.
    idle_after: Duration,
    entries: Vec<Pooled>,
    last_request: Instant,
    failed: Vec<(Template, Instant)>,
    /// Sandboxes handed to requests since the spawner started.
    pub claims: u64,
}

impl Pool {
    pub fn new(size: usize, idle_after: Duration) -> Pool {
        Pool {
            size,
            idle_after,
            entries: Vec::new(),
            last_request: Instant::now(),
            failed: Vec::new(),
            claims: 0,
        }
    }

    /// The links to poll, in the order [`Pool::service`] takes their readiness.
    pub fn links(&self) -> impl Iterator<Item = PollFd<'_>> {
        self.entries
            .iter()
            .map(|p| PollFd::new(p.link.as_fd(), PollFlags::POLLIN))
    }

    /// Ready sandboxes per template, for the status.
    pub fn ready(&self) -> Vec<(Template, usize)> {
        let mut counts: Vec<(Template, usize)> = Vec::new();
        for p in self.entries.iter().filter(|p| p.ready) {
            match counts.iter_mut().find(|(t, _)| *t == p.template) {
                Some((_, n)) => *n += 1,
                None => counts.push((p.template, 1)),
            }
        }
        counts.sort_by_key(|(t, _)| t.name());
        counts
    }

    /// Reads what pooled supervisors said: "ready", or EOF (its sandbox ended or failed).
    pub fn service(&mut self, readable: &[bool]) {
        let mut keep = Vec::with_capacity(self.entries.len());
        for (mut p, readable) in std::mem::take(&mut self.entries)
            .into_iter()
            .zip(readable.iter().copied().chain(std::iter::repeat(false)))
        {
            if !readable {
                keep.push(p);
                continue;
            }
            let mut buf = [0u8; 8];
            match fdpass::recv::<1>(p.link.as_raw_fd(), &mut buf) {
                Ok(m) if &buf[..m.len] == READY => {
                    p.ready = true;
                    tracing::debug!(
                        template = p.template.name(),
                        ms = p.born.elapsed().as_millis() as u64,
                        "ready sandbox built"
                    );
                    keep.push(p);
                }
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => keep.push(p),
                // EOF (its sandbox ended, or it failed to build): closing our end lets it
                // exit once it served any run sent before this was read.
                _ => {
                    if !p.ready {
                        tracing::warn!(
                            template = p.template.name(),
                            "a ready sandbox failed to build"
                        );
                        self.failed.retain(|(t, _)| *t != p.template);
                        self.failed.push((p.template, Instant::now()));
                    }
                }
            }
        }
        self.entries = keep;
    }

    /// Ends the sandboxes of `template` that wait or are being built, after a successor
    /// replaced that template's zygote. They were forked from the old zygote and share its
    /// memory: one left waiting in an idle pool would keep a whole interpreter's pages
    /// alive beside the successor's. The next refill builds them from the successor.
    /// Claimed ones are off the books already and run on.
    pub fn forget(&mut self, template: Template) {
        // Closing the link ends that sandbox unused.
        self.entries.retain(|p| p.template != template);
    }

    /// Hands `run` to a ready sandbox for the request's hand-off byte; false when none
    /// can take it (the request then goes the way it would without a pool).
    pub fn claim(&mut self, key: u8, run: &OwnedFd) -> bool {
        self.last_request = Instant::now();
        let Some(template) = template_of(key) else {
            return false;
        };
        while let Some(i) = self
            .entries
            .iter()
            .position(|p| p.ready && p.template == template)
        {
            // Off the books before the send: whatever happens, no other request gets it.
            let p = self.entries.remove(i);
            if fdpass::send(p.link.as_raw_fd(), b"c", &[run.as_raw_fd()]).is_ok() {
                self.claims += 1;
                return true;
            }
        }
        false
    }

    /// Sandboxes wanted per template now: the pool's size while requests come, one after
    /// `idle_after` without any.
    fn target(&self) -> usize {
        if self.last_request.elapsed() >= self.idle_after {
            self.size.min(1)
        } else {
            self.size
        }
    }

    /// When the pool shrinks next, for the spawner's poll timeout.
    pub fn next_check(&self) -> Option<Duration> {
        let idle = self.last_request.elapsed();
        (self.size > 1 && idle < self.idle_after).then(|| self.idle_after.saturating_sub(idle))
    }

    /// Builds what is missing for every warm template, and ends what is more than the
    /// idle pool keeps (the oldest first). `inherited` are the spawner's descriptors a
    /// pooled supervisor must not keep (its control socket).
    pub fn refill(
        &mut self,
        warm: &WarmControls,
        config: &SpawnerConfig,
        program: &SeccompProgram,
        inherited: &[RawFd],
    ) {
        let Some(templates) = config.warm.as_ref().map(|w| w.templates.clone()) else {
            return;
        };
        let target = self.target();
        for template in templates {
            let mine: Vec<usize> = (0..self.entries.len())
                .filter(|i| self.entries[*i].template == template)
                .collect();
            if mine.len() > target {
                let surplus = mine.len() - target;
                let mut n = 0;
                // Closing the link ends that sandbox unused.
                self.entries.retain(|p| {
                    let drop = p.template == template && n < surplus;
                    n += usize::from(drop);
                    !drop
                });
                continue;
            }
            if warm.get(template).is_none()
                || self
                    .failed
                    .iter()
                    .any(|(t, at)| *t == template && at.elapsed() < FAILURE_PAUSE)
            {
                continue;
            }
            for _ in mine.len()..target {
                self.launch(template, warm, config, program, inherited);
            }
        }
    }

    fn launch(
        &mut self,
        template: Template,
        warm: &WarmControls,
        config: &SpawnerConfig,
        program: &SeccompProgram,
        inherited: &[RawFd],
    ) {
        let (ours, theirs) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "a ready sandbox's link");
                return;
            }
        };
        match sys::fork() {
            Ok(None) => {
                let _ = prctl::set_pdeathsig(Signal::SIGKILL);
                let _ = prctl::set_name(BUILDING_NAME);
                // The spawner's ends of every other link (and this one's): a link must
                // close when the spawner closes it, and the spawner's control socket is
                // not ours either.
                drop(ours);
                self.entries.clear();
                for fd in inherited {
                    let _ = nix::unistd::close(*fd);
                }
                let code = pooled_main(theirs, template, config, program, warm);
                sys::exit_now(code)
            }
            Ok(Some(pid)) => {
                drop(theirs);
                self.entries.push(Pooled {
                    template,
                    pid,
                    link: ours,
                    ready: false,
                    born: Instant::now(),
                });
            }
            Err(e) => tracing::error!(error = %e, "forking a ready sandbox's supervisor"),
        }
    }

    /// In a process forked from the spawner: lets go of its copies of the links.
    pub fn close_in_child(&mut self) {
        self.entries.clear();
    }

    /// Ends every ready sandbox unused and waits (boundedly: each ends its own within
    /// seconds) until their supervisors are gone: the spawner is shutting down.
    pub fn drain(&mut self) {
        let pids: Vec<Pid> = self.entries.drain(..).map(|p| p.pid).collect();
        for pid in pids {
            let _ = waitpid(pid, None);
        }
    }
}

/// A pooled supervisor: builds its sandbox, says so, waits for its request, then serves
/// it as a run or a session. Returns the process's exit code (0 when it cleaned up after
/// itself).
fn pooled_main(
    link: UnixStream,
    template: Template,
    config: &SpawnerConfig,
    program: &SeccompProgram,
    warm: &WarmControls,
) -> i32 {
    let shell = RunRequest {
        code: String::new(),
        limits: Limits {
            cpu_seconds: config
                .warm
                .as_ref()
                .map_or(0, |w| w.pool_cpu_seconds)
                .max(config.limits.cpu_seconds),
            ..config.limits.clone()
        },
        template: Some(template),
        request_id: None,
        stream: false,
        files: Vec::new(),
        collect_files: None,
        session: false,
        results: None,
        egress_port: None,
        egress_ca: None,
        site: None,
    };
    let ready = match build(&shell, config, program, warm) {
        Some(ready) => ready,
        None => return 0,
    };
    // The zygotes' control sockets are for starting sandboxes; one held here would keep a
    // retiring zygote from seeing its last reader go.
    for (_, fd) in &warm.0 {
        let _ = nix::unistd::close(*fd);
    }
    // Named before the spawner hears "ready": no request can claim it before.
    let _ = prctl::set_name(WAITING_NAME);
    if fdpass::send(link.as_raw_fd(), READY, &[]).is_err() {
        ready.discard();
        return 0;
    }
    let claim = wait_for_claim(&link, &ready);
    if matches!(claim, Claim::Run(_)) {
        let _ = prctl::set_name(CLAIMED_NAME);
    }
    let run = match claim {
        // The sandbox may have ended as the run came: looked at once more.
        Claim::Run(run) if !ended(&ready) => run,
        Claim::Run(run) => {
            ready.discard();
            return serve_without_pool(run, config, program);
        }
        Claim::Closed => {
            ready.discard();
            return 0;
        }
        Claim::SandboxEnded => {
            ready.discard();
            // The spawner may have sent a run already. Our half of the link is closed (no
            // word sent: a message the spawner never reads would reset the link, and the
            // run with it), which it reads as this sandbox gone; a run it sent before
            // then is served the way it would be without a pool (cold: the zygotes were
            // let go of). It closes its end either way.
            if link.shutdown(std::net::Shutdown::Write).is_err() {
                return 0;
            }
            let mut byte = [0u8; 1];
            return match fdpass::recv::<1>(link.as_raw_fd(), &mut byte) {
                Ok(m) if m.len == 1 && m.fds.len() == 1 => {
                    // Its run's sandbox gets this process's cgroup name.
                    let _ = prctl::set_name(CLAIMED_NAME);
                    let Some(run) = m.fds.into_iter().next() else {
                        return 0;
                    };
                    serve_without_pool(run, config, program)
                }
                _ => 0,
            };
        }
    };
    drop(link);
    let mut stream = UnixStream::from(run);
    let _ = stream.set_nonblocking(false);
    let request: RunRequest = match read_frame(&mut stream) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the supervisor could not read its request");
            ready.discard();
            return 1;
        }
    };
    let request_id = request.request_id.as_deref().map(tracing::field::display);
    // A sandbox of a larger template has all that a smaller one's run needs (the pool
    // of base and ml serves scientific runs from ml, as the zygotes would).
    let fits = request
        .template
        .and_then(|t| t.served_by(|kept| kept == template))
        .is_some()
        && request.needs_nothing_built_per_run()
        && ready.fits(&request.limits);
    if !fits {
        // The server sends only requests that fit; one that does not goes today's way
        // (cold: this process let go of the zygotes).
        tracing::warn!("a request that does not fit its ready sandbox; starting it cold");
        ready.discard();
        return super::spawner::serve_request(
            stream,
            request,
            config,
            program,
            &WarmControls::default(),
        );
    }
    let served = if request.session {
        let _span = tracing::info_span!("session", request_id).entered();
        session::serve_ready(stream, request, ready).map_err(|e| e.to_string())
    } else {
        let _span = tracing::info_span!("run", request_id).entered();
        supervisor::serve_ready(stream, request, ready).map_err(|e| e.to_string())
    };
    match served {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "the supervisor failed");
            1
        }
    }
}

/// Serves a run whose ready sandbox ended as it came, the way it would be served without a
/// pool: cold, since this process let go of the zygotes. Returns the process's exit code.
fn serve_without_pool(run: OwnedFd, config: &SpawnerConfig, program: &SeccompProgram) -> i32 {
    let mut stream = UnixStream::from(run);
    let _ = stream.set_nonblocking(false);
    match read_frame::<RunRequest>(&mut stream) {
        Ok(request) => super::spawner::serve_request(
            stream,
            request,
            config,
            program,
            &WarmControls::default(),
        ),
        Err(_) => 1,
    }
}

/// Starts and releases a sandbox and waits until its harness says it waits on fd 3.
fn build(
    shell: &RunRequest,
    config: &SpawnerConfig,
    program: &SeccompProgram,
    warm: &WarmControls,
) -> Option<Ready> {
    let (sandbox, reads, control) = match start_with_socket(shell, config, program, warm) {
        Ok(started) => started,
        Err(failure) => {
            tracing::warn!(step = %failure.step, errno = %failure.errno, "building a ready sandbox");
            return None;
        }
    };
    let mut phases = Phases::new();
    let cgroup = match release(&sandbox, reads.release, config, &shell.limits, &mut phases) {
        Ok(cgroup) => cgroup,
        Err(failure) => {
            tracing::warn!(step = %failure.step, errno = %failure.errno, "releasing a ready sandbox");
            return None;
        }
    };
    let ready = Ready {
        sandbox,
        outputs: reads.outputs,
        cgroup,
        control,
        limits: shell.limits.clone(),
    };
    let deadline = Instant::now() + BUILD_PATIENCE;
    let mut fds = [PollFd::new(ready.control.as_fd(), PollFlags::POLLIN)];
    let waiting = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        match poll(
            &mut fds,
            super::spawner::poll_timeout(Some(left), Duration::from_secs(60)),
        ) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => break true,
            Err(_) => break false,
        }
    };
    let mut buf = [0u8; 64];
    let said = waiting
        .then(|| fdpass::recv::<1>(ready.control.as_raw_fd(), &mut buf).ok())
        .flatten()
        .filter(|m| m.fds.is_empty())
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(&buf[..m.len]).ok());
    if said.is_some_and(|v| v.get("waiting").is_some()) {
        Some(ready)
    } else {
        tracing::warn!("a ready sandbox's harness did not say it waits");
        ready.discard();
        None
    }
}

/// Whether the sandbox ended while it waited: its harness's socket or its init's report
/// pipe says something (neither does while it waits).
fn ended(ready: &Ready) -> bool {
    let mut fds = [
        PollFd::new(ready.control.as_fd(), PollFlags::POLLIN),
        PollFd::new(ready.outputs.report.as_fd(), PollFlags::POLLIN),
    ];
    !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// How a pooled supervisor's wait ended.
enum Claim {
    /// A request's run socket.
    Run(OwnedFd),
    /// The spawner closed the link: the pool shrinks or drains.
    Closed,
    /// The sandbox ended while it waited (nothing in it should).
    SandboxEnded,
}

/// Waits for the spawner to send a run socket.
fn wait_for_claim(link: &UnixStream, ready: &Ready) -> Claim {
    let Ok(report) = ready.outputs.report.try_clone() else {
        return Claim::SandboxEnded;
    };
    let mut reports = Capture::new(report, RECORD_LEN * 4);
    loop {
        let mut fds = [
            PollFd::new(link.as_fd(), PollFlags::POLLIN),
            PollFd::new(ready.control.as_fd(), PollFlags::POLLIN),
            PollFd::new(ready.outputs.report.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Claim::SandboxEnded,
        }
        let seen: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        // A sandbox that ended goes first: a run sent meanwhile is still on the link,
        // and is served without it.
        if seen[0] && !seen[1] && !seen[2] {
            let mut byte = [0u8; 1];
            return match fdpass::recv::<1>(link.as_raw_fd(), &mut byte) {
                Ok(m) if m.len == 1 && m.fds.len() == 1 => {
                    m.fds.into_iter().next().map_or(Claim::Closed, Claim::Run)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                _ => Claim::Closed,
            };
        }
        if seen[1] || seen[2] {
            reports.drain();
            if let Some((step, errno)) = child::reported_failure(&reports.data) {
                tracing::warn!(step, errno, "a ready sandbox failed while it waited");
            }
            return Claim::SandboxEnded;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_has_a_hand_off_byte_and_zero_is_none() {
        for t in Template::ALL {
            assert_ne!(key_of(t), 0);
            assert_eq!(template_of(key_of(t)), Some(t));
        }
        assert_eq!(template_of(0), None);
        assert_eq!(template_of(200), None);
    }
}
