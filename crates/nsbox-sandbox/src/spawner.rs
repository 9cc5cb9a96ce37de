//! The spawner: a single-threaded process, started by the server before or beside its async runtime, that forks one supervisor per run.
//!
//! The server hands each run's socket to the spawner with SCM_RIGHTS; the spawner forks a
//! supervisor that owns that run. Namespaces are never created from the server's threads.
//! If the spawner dies, the server starts a new one on the next run.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::prctl;
use nix::sys::signal::Signal;

use super::config::SpawnerConfig;
use super::fdpass;
use super::pool::Pool;
use super::protocol::{read_frame, write_frame, ProtocolError};
use super::run::RunRequest;
use super::run::Template;
use super::sandbox::WarmControls;
use super::seccomp::SeccompProgram;
use super::template::{self, Liveness, TemplateProcess};
use super::{cgroup, logging, seccomp, session, supervisor};
use crate::sys;

/// The hidden subcommand that turns the nsbox binary into a spawner.
pub const SPAWNER_ARG: &str = "__spawner";
/// The descriptor the spawner receives its control socket on.
pub const CONTROL_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("starting the spawner process: {0}")]
    Start(#[source] io::Error),
    #[error("sending the spawner its configuration: {0}")]
    Configure(#[source] ProtocolError),
    #[error("compiling the seccomp policy: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// What the spawner tells the server, whenever it changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpawnerStatus {
    /// Templates whose zygote is warm and taking runs.
    pub ready: Vec<Template>,
    /// Zygotes started again after the first of their kind (retired at their fork limit,
    /// or died), since this spawner started.
    pub template_respawns: u64,
    /// Ready sandboxes waiting for a request, per template.
    #[serde(default)]
    pub pool_ready: Vec<(Template, usize)>,
    /// Requests served from a ready sandbox since this spawner started.
    #[serde(default)]
    pub pool_claims: u64,
}

/// The ready sandboxes, for `/v1/status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PoolStatus {
    /// Ready sandboxes kept per warm template while requests come (0: none).
    pub size: usize,
    /// Ready sandboxes waiting now, per template.
    pub ready: std::collections::BTreeMap<String, usize>,
    /// Requests served from a ready sandbox so far.
    pub claims: u64,
}

struct Process {
    control: UnixStream,
    child: Child,
}

/// What the server and its spawner keeper share.
struct Shared {
    config: SpawnerConfig,
    process: Mutex<Option<Process>>,
    ready: Mutex<Vec<Template>>,
    stopping: AtomicBool,
    /// The server is shutting down: a spawner that exits now is not replaced.
    shutting_down: AtomicBool,
    /// Zygotes replaced over the server's life (summed over spawners).
    template_respawns: AtomicU64,
    /// Spawners that died and were started again.
    spawner_restarts: AtomicU64,
    /// Ready sandboxes per template, as the spawner last said.
    pool_ready: Mutex<Vec<(Template, usize)>>,
    /// Requests served from ready sandboxes (summed over spawners).
    pool_claims: AtomicU64,
}

/// The server's handle on its spawner.
pub struct Spawner {
    shared: Arc<Shared>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

/// Pause before starting a spawner again, so a spawner that cannot start does not spin.
const RESTART_PAUSE: Duration = Duration::from_millis(500);

impl Spawner {
    /// Starts the spawner (the nsbox binary re-executed, so it begins single-threaded
    /// whatever state the server is in) and a keeper thread that starts a new one whenever
    /// it dies. The keeper lives as long as the server: the spawner's parent-death signal
    /// is tied to the thread that started it.
    pub fn start(config: SpawnerConfig) -> Result<Spawner, SpawnerError> {
        // Fail at start, not at the first run, if the policy does not compile.
        seccomp::builtin()?;
        let shared = Arc::new(Shared {
            config,
            process: Mutex::new(None),
            ready: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            template_respawns: AtomicU64::new(0),
            spawner_restarts: AtomicU64::new(0),
            pool_ready: Mutex::new(Vec::new()),
            pool_claims: AtomicU64::new(0),
        });
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let keeper = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("nsbox-spawner-keeper".into())
                .spawn(move || keep(shared, first_tx))
                .map_err(SpawnerError::Start)?
        };
        first_rx.recv().unwrap_or_else(|_| {
            Err(SpawnerError::Start(io::Error::other(
                "the keeper thread died",
            )))
        })?;
        Ok(Spawner {
            shared,
            keeper: Some(keeper),
        })
    }

    /// Whether runs can start warm (or the warm path is off): what readiness means.
    pub fn is_ready(&self) -> bool {
        let ready = self.shared.ready.lock().unwrap();
        self.shared.process.lock().unwrap().is_some()
            && (self.shared.config.warm.is_none()
                || self
                    .shared
                    .config
                    .warm
                    .as_ref()
                    .is_some_and(|w| w.templates.iter().all(|t| ready.contains(t))))
    }

    pub fn ready_templates(&self) -> Vec<Template> {
        self.shared.ready.lock().unwrap().clone()
    }

    /// Zygotes replaced and spawners restarted so far, for the metrics.
    pub fn restarts(&self) -> (u64, u64) {
        (
            self.shared.template_respawns.load(Ordering::Relaxed),
            self.shared.spawner_restarts.load(Ordering::Relaxed),
        )
    }

    /// The ready sandboxes: their size per template as configured, those waiting now,
    /// and the requests they served so far.
    pub fn pool(&self) -> PoolStatus {
        PoolStatus {
            size: self.shared.config.warm.as_ref().map_or(0, |w| w.pool_size),
            ready: self
                .shared
                .pool_ready
                .lock()
                .unwrap()
                .iter()
                .map(|(t, n)| (t.name().to_string(), *n))
                .collect(),
            claims: self.shared.pool_claims.load(Ordering::Relaxed),
        }
    }

    /// The hand-off byte for `request`: the template of the ready sandboxes that can serve
    /// it (its own, or the next larger one kept warm, as a run without a pool is forked),
    /// or 0 when it must be built at its request (no pool, no warm template, an egress
    /// door, a package set to mount, limits other than those the pool is built under).
    pub fn pool_key(&self, request: &RunRequest) -> u8 {
        let config = &self.shared.config;
        let Some(warm) = &config.warm else {
            return 0;
        };
        let serving = request
            .template
            .and_then(|t| t.served_by(|kept| warm.templates.contains(&kept)));
        match serving {
            Some(t)
                if warm.pool_size > 0
                    && request.needs_nothing_built_per_run()
                    && config.limits.built_alike(&request.limits)
                    && request.limits.cpu_seconds
                        <= warm.pool_cpu_seconds.max(config.limits.cpu_seconds) =>
            {
                super::pool::key_of(t)
            }
            _ => 0,
        }
    }

    /// The server's shutdown began: the spawner keeps serving the runs in flight, but if it
    /// exits now, no other is started (the server takes no new runs).
    pub fn begin_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Hands one run's socket to the spawner, which forks a supervisor for it. Fails with
    /// ENOTCONN while a dead spawner is being replaced (about a second); the caller decides
    /// how long to wait for the new one.
    /// `key` is [`Spawner::pool_key`]'s: a ready sandbox serves the run when there is one.
    pub fn hand_off(&self, theirs: &OwnedFd, key: u8) -> Result<(), nix::errno::Errno> {
        let guard = self.shared.process.lock().unwrap();
        let process = guard.as_ref().ok_or(nix::errno::Errno::ENOTCONN)?;
        fdpass::send(process.control.as_raw_fd(), &[key], &[theirs.as_raw_fd()])
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Closing the control socket makes the spawner exit; shut it down rather than
        // just close it, since the keeper reads statuses from a clone.
        if let Some(p) = self.shared.process.lock().unwrap().as_ref() {
            let _ = p.control.shutdown(std::net::Shutdown::Both);
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

/// The keeper thread: starts the spawner, relays its status, and starts a new one when it
/// dies, until the server stops.
fn keep(shared: Arc<Shared>, first: std::sync::mpsc::Sender<Result<(), SpawnerError>>) {
    let mut first = Some(first);
    loop {
        match launch(&shared.config) {
            Ok((process, mut status)) => {
                let pid = process.child.id();
                *shared.process.lock().unwrap() = Some(process);
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                let mut respawns_seen = 0;
                let mut claims_seen = 0;
                while let Ok(s) = read_frame::<SpawnerStatus>(&mut status) {
                    *shared.ready.lock().unwrap() = s.ready;
                    *shared.pool_ready.lock().unwrap() = s.pool_ready;
                    shared
                        .pool_claims
                        .fetch_add(s.pool_claims.saturating_sub(claims_seen), Ordering::Relaxed);
                    claims_seen = s.pool_claims;
                    shared.template_respawns.fetch_add(
                        s.template_respawns.saturating_sub(respawns_seen),
                        Ordering::Relaxed,
                    );
                    respawns_seen = s.template_respawns;
                }
                shared.ready.lock().unwrap().clear();
                shared.pool_ready.lock().unwrap().clear();
                if let Some(mut old) = shared.process.lock().unwrap().take() {
                    let _ = old.child.kill();
                    let _ = old.child.wait();
                }
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                if shared.shutting_down.load(Ordering::SeqCst) {
                    tracing::warn!(
                        pid,
                        "the spawner exited during the shutdown; runs in flight end with it"
                    );
                    return;
                }
                shared.spawner_restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pid, "the spawner exited; starting a new one");
            }
            Err(e) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::error!(error = %e, "restarting the spawner");
            }
        }
        std::thread::sleep(RESTART_PAUSE);
        if shared.stopping.load(Ordering::SeqCst) || shared.shutting_down.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// Starts a spawner; returns it and a clone of its control socket to read statuses from.
fn launch(config: &SpawnerConfig) -> Result<(Process, UnixStream), SpawnerError> {
    let (control, theirs) = UnixStream::pair().map_err(SpawnerError::Start)?;
    let mut cmd = Command::new("/proc/self/exe");
    // The spawner's parent-death check compares its parent with this pid: "my parent is 1"
    // cannot tell a dead server from a server that is PID 1 of its container.
    cmd.arg(SPAWNER_ARG)
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // A process group of its own: a signal to the server's group (Ctrl-C in a terminal,
        // `kill -- -PGID`, `timeout`) reaches the server, which owns the shutdown and its
        // grace for runs in flight, and not the spawner and its supervisors, which would
        // die at once and take those runs with them.
        .process_group(0)
        .env_clear();
    if let Ok(filter) = std::env::var("RUST_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    // The format and default level go the way RUST_LOG goes, rather than in the
    // configuration frame: the spawner installs its subscriber before it reads anything,
    // so a frame it cannot read is logged like every other line.
    cmd.envs(logging::spawner_env());
    sys::pass_fd(&mut cmd, theirs.as_raw_fd(), CONTROL_FD);
    let child = cmd.spawn().map_err(SpawnerError::Start)?;
    drop(theirs);
    let mut control = control;
    write_frame(&mut control, config).map_err(SpawnerError::Configure)?;
    let status = control.try_clone().map_err(SpawnerError::Start)?;
    Ok((Process { control, child }, status))
}

/// A poll timeout for something due in `due` (`None`: nothing due), at most `longest`, in
/// whole milliseconds rounded up: rounded down, a wait of less than a millisecond would be
/// 0, and poll would return at once, again and again until the due time (a busy loop of up
/// to a millisecond before every ping of the zygotes).
pub(crate) fn poll_timeout(due: Option<Duration>, longest: Duration) -> PollTimeout {
    let wait = due.unwrap_or(longest).min(longest);
    PollTimeout::from(wait.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16)
}

/// Entry point of the spawner process. Returns the process's exit code.
pub fn main() -> i32 {
    // fd 3 was placed there by `launch`; nothing else in this process owns it.
    let control = UnixStream::from(sys::take_fd(CONTROL_FD));
    // Lines on the stderr the server gave us, in the server's format. This process stays
    // single-threaded, so no other thread can hold one of the subscriber's locks when it
    // forks a supervisor or a template: a fork's copy of every lock is free.
    logging::init_from_env();
    // The spawner must not outlive the server that started it. The signal is armed first,
    // then the parent checked: a server that died before the signal was armed left this
    // process with another parent (PID 1 or a subreaper).
    let Some(server) = server_pid() else {
        tracing::error!("the spawner was started without its server's pid");
        return 1;
    };
    if prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != server {
        return 1;
    }
    let mut control = control;
    let config: SpawnerConfig = match read_frame(&mut control) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the spawner could not read its configuration");
            return 1;
        }
    };
    let program = match seccomp::builtin() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the spawner could not compile the seccomp policy");
            return 1;
        }
    };
    if let Some(cgroup) = &config.cgroup {
        // Runs whose supervisor died with an earlier spawner.
        cgroup.sweep_runs();
    }
    let mut templates = Templates::start(&config);
    let mut pool = Pool::new(
        config.warm.as_ref().map_or(0, |w| w.pool_size),
        Duration::from_millis(config.warm.as_ref().map_or(0, |w| w.pool_idle_ms)),
    );
    let mut reported: Option<SpawnerStatus> = None;
    // With favordynmods the lock never leaves the fast mode: nothing to keep.
    let mut keeper = cgroup::AttachKeeper::open(
        config.cgroup.is_some() && config.attach == cgroup::AttachMode::Keeper,
    );
    loop {
        // Off the request path: after the hand-offs the last round took, and before this
        // round waits.
        // A pooled supervisor keeps the control sockets of the zygotes it may start its
        // sandbox from until it is built; the server's socket and those of zygotes still
        // starting it closes at once. One kept would hold that zygote open: a successor's
        // predecessor then never sees its last reader go, and lives on beside it.
        let mut inherited = vec![control.as_raw_fd()];
        inherited.extend(templates.unready_controls());
        pool.refill(&templates.controls(), &config, &program, &inherited);
        let mut fds = vec![PollFd::new(control.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            templates
                .live
                .iter()
                .map(|t| PollFd::new(t.control.as_fd(), PollFlags::POLLIN)),
        );
        let zygotes = templates.live.len();
        fds.extend(pool.links());
        let due = [
            keeper.as_ref().and_then(|k| k.due_in()),
            templates.next_check(),
            pool.next_check(),
        ];
        let wait = poll_timeout(due.into_iter().flatten().min(), Duration::from_secs(1));
        match poll(&mut fds, wait) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 1,
        }
        if let Some(k) = keeper.as_mut() {
            k.tick();
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        reap_supervisors(&config);
        pool.service(&ready[1 + zygotes..]);
        for kind in templates.service(&ready[1..=zygotes]) {
            pool.forget(kind);
        }
        templates.check_liveness();
        templates.restart_missing();
        let now = SpawnerStatus {
            ready: templates.ready(),
            template_respawns: templates.respawns,
            pool_ready: pool.ready(),
            pool_claims: pool.claims,
        };
        if reported.as_ref() != Some(&now) {
            // The server's health endpoint says "ready" once every template is warm.
            if write_frame(&mut control, &now).is_err() {
                pool.drain();
                templates.stop();
                return 0;
            }
            reported = Some(now);
        }
        if !ready[0] {
            continue;
        }
        let mut byte = [0u8; 1];
        let msg = match fdpass::recv::<1>(control.as_raw_fd(), &mut byte) {
            Ok(m) => m,
            // A message with more descriptors than one run's was cut short: nothing to do.
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::ENOBUFS) => continue,
            Err(_) => return 0,
        };
        if msg.len == 0 {
            // The server closed the control socket once its runs were over: shut down,
            // ending the ready sandboxes first (each removes its own cgroup).
            pool.drain();
            templates.stop();
            return 0;
        }
        let key = byte[0];
        if let Some(k) = keeper.as_mut() {
            k.run_started();
        }
        templates.run_arrived();
        for run in msg.fds {
            if pool.claim(key, &run) {
                drop(run);
                continue;
            }
            match sys::fork() {
                Ok(None) => {
                    // Forked from a single-threaded process, so no lock of the subscriber
                    // (or of stderr) is held here: the supervisor logs like the spawner.
                    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
                    drop(control);
                    pool.close_in_child();
                    let code = supervise(
                        UnixStream::from(run),
                        &config,
                        &program,
                        &templates.controls(),
                    );
                    sys::exit_now(code);
                }
                Ok(Some(_)) => drop(run),
                Err(e) => {
                    tracing::error!(error = %e, "forking a supervisor failed");
                    drop(run);
                }
            }
        }
    }
}

/// A supervisor, in the process forked for it: reads its request, then serves it as one
/// run or as a session. Returns the process's exit code.
fn supervise(
    mut stream: UnixStream,
    config: &SpawnerConfig,
    program: &SeccompProgram,
    warm: &WarmControls,
) -> i32 {
    // The server's end was non-blocking; ours is a separate file description.
    let _ = stream.set_nonblocking(false);
    let request: RunRequest = match read_frame(&mut stream) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the supervisor could not read its request");
            return 1;
        }
    };
    serve_request(stream, request, config, program, warm)
}

/// Serves a request already read, as one run or as a session, building its sandbox now.
/// Returns the process's exit code.
pub(crate) fn serve_request(
    stream: UnixStream,
    request: RunRequest,
    config: &SpawnerConfig,
    program: &SeccompProgram,
    warm: &WarmControls,
) -> i32 {
    // The server's request span, as far as the supervisor knows it: its lines carry the
    // request's id like the server's own.
    let request_id = request.request_id.as_deref().map(tracing::field::display);
    let served = if request.session {
        let _span = tracing::info_span!("session", request_id).entered();
        session::serve(stream, request, config, program, warm).map_err(|e| e.to_string())
    } else {
        let _span = tracing::info_span!("run", request_id).entered();
        supervisor::serve(stream, request, config, program, warm).map_err(|e| e.to_string())
    };
    match served {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "the supervisor failed");
            1
        }
    }
}

/// The server's pid, as `launch` passed it after [`SPAWNER_ARG`].
fn server_pid() -> Option<nix::unistd::Pid> {
    let arg = std::env::args().nth(2)?;
    arg.parse().ok().map(nix::unistd::Pid::from_raw)
}

/// Reaps supervisors (and template inits) that have exited. A supervisor that did not end
/// normally may have left its run behind (a warm run's init is not its child), so
/// everything in that run's cgroup is killed and the cgroup removed.
fn reap_supervisors(config: &SpawnerConfig) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => {
                if let Some(cgroup) = &config.cgroup {
                    cgroup.remove_run(&format!("run-{pid}"));
                }
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The spawner's warm templates: started at once, restarted when one retires or dies.
struct Templates<'a> {
    config: &'a SpawnerConfig,
    library: Option<OwnedFd>,
    live: Vec<TemplateProcess>,
    /// When each template was last started, to slow down a template that keeps dying.
    last_start: Vec<(Template, Instant)>,
    respawns: u64,
    /// When the last run arrived: zygotes are pinged only for a while after one.
    last_run: Option<Instant>,
}

/// A template that dies sooner than this after its start is restarted only after a pause.
const RESTART_BACKOFF: Duration = Duration::from_secs(5);

impl<'a> Templates<'a> {
    fn start(config: &'a SpawnerConfig) -> Templates<'a> {
        let library = config.warm.as_ref().and_then(|w| match w.library.open() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::error!(error = %e, "opening the warm library failed; runs are cold");
                None
            }
        });
        let mut t = Templates {
            config,
            library,
            live: Vec::new(),
            last_start: Vec::new(),
            respawns: 0,
            last_run: None,
        };
        t.restart_missing();
        t
    }

    /// Kills every template (and with it anything still running in it).
    fn stop(&mut self) {
        for t in self.live.drain(..) {
            let _ = nix::sys::signal::kill(t.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn ready(&self) -> Vec<Template> {
        let mut ready: Vec<Template> = self
            .live
            .iter()
            .filter(|t| t.ready)
            .map(|t| t.template)
            .collect();
        ready.sort_by_key(|t| t.name());
        ready.dedup();
        ready
    }

    /// Control sockets of the templates whose zygote said it is ready.
    fn controls(&self) -> WarmControls {
        WarmControls(
            self.live
                .iter()
                .filter(|t| t.ready)
                .map(|t| (t.template, t.control.as_raw_fd()))
                .collect(),
        )
    }

    /// Control sockets of the templates whose zygote is still starting.
    fn unready_controls(&self) -> Vec<RawFd> {
        self.live
            .iter()
            .filter(|t| !t.ready)
            .map(|t| t.control.as_raw_fd())
            .collect()
    }

    /// Reads what zygotes said: "ready", "replace-soon" (near its fork limit), or EOF when one
    /// died. Returns the templates whose zygote a warm successor replaced just now.
    fn service(&mut self, readable: &[bool]) -> Vec<Template> {
        let mut keep = Vec::with_capacity(self.live.len());
        let mut successors = Vec::new();
        let mut newly_ready = Vec::new();
        for (t, readable) in std::mem::take(&mut self.live)
            .into_iter()
            .zip(readable.iter().copied().chain(std::iter::repeat(false)))
        {
            if !readable {
                keep.push(t);
                continue;
            }
            let mut buf = [0u8; 16];
            // Readable, so a message (or EOF) is there: this does not block.
            match fdpass::recv::<1>(t.control.as_raw_fd(), &mut buf) {
                Ok(m) if &buf[..m.len] == b"ready" => {
                    newly_ready.push((t.template, t.pid, t.launched));
                    let mut t = t;
                    t.became_ready(m.fds.into_iter().next());
                    keep.push(t);
                }
                Ok(m) if &buf[..m.len] == b"pong" => {
                    let mut t = t;
                    t.answered();
                    keep.push(t);
                }
                Ok(m) if &buf[..m.len] == b"replace-soon" => {
                    successors.push(t.template);
                    keep.push(t);
                }
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => keep.push(t),
                // Retiring or gone: dropping its socket stops new runs; runs in flight finish.
                _ => {}
            }
        }
        // A successor that is warm replaces its predecessor: closing the old control socket
        // makes that zygote stop taking runs and exit once its runs are over. One started
        // later and still warming is no predecessor (an ml zygote started alone can become
        // ready after a new pair was started).
        let mut replaced = Vec::new();
        keep.retain(|t| {
            let old = newly_ready.iter().any(|(kind, pid, launched)| {
                t.template == *kind && t.pid != *pid && t.launched < *launched
            });
            if old {
                replaced.push(t.template);
            }
            !old
        });
        self.live = keep;
        for kind in successors {
            if self.live.iter().filter(|t| t.template == kind).count() < 2 {
                self.launch(kind, false);
            }
        }
        replaced
    }

    /// Pings the ready zygotes and replaces one that stalled (stopped, frozen, blocked): its
    /// runs in flight go on, the runs queued for it start cold at once, and the next runs
    /// of its kind go cold until its successor is warm.
    fn check_liveness(&mut self) {
        let active = self.active();
        let mut stalled = Vec::new();
        for (i, t) in self.live.iter_mut().enumerate() {
            if let Liveness::Stalled(waited) = t.check(active) {
                tracing::warn!(
                    template = t.template.name(),
                    waited_ms = waited.as_millis() as u64,
                    "the zygote stopped answering; replacing it"
                );
                t.kill_zygote();
                stalled.push(i);
            }
        }
        for i in stalled.into_iter().rev() {
            // Dropping its control socket: no supervisor forked from now on hands it a run.
            self.live.remove(i);
        }
    }

    /// How long until a zygote is due a ping or a ping's deadline is up.
    fn next_check(&self) -> Option<Duration> {
        let active = self.active();
        self.live.iter().filter_map(|t| t.next_check(active)).min()
    }

    /// Whether runs are coming (one arrived within [`PING_WHILE_ACTIVE`]).
    fn active(&self) -> bool {
        self.last_run
            .is_some_and(|at| at.elapsed() < template::PING_WHILE_ACTIVE)
    }

    /// A run arrived: the zygotes are pinged from now on for a while (at once after a
    /// pause: their last answer is older than the ping interval).
    fn run_arrived(&mut self) {
        self.last_run = Some(Instant::now());
    }

    fn restart_missing(&mut self) {
        let (Some(warm), Some(_)) = (&self.config.warm, &self.library) else {
            return;
        };
        for &kind in &warm.templates {
            if self.live.iter().any(|t| t.template == kind) {
                continue;
            }
            if let Some((_, at)) = self.last_start.iter().find(|(t, _)| *t == kind) {
                if at.elapsed() < RESTART_BACKOFF {
                    continue;
                }
            }
            // An ml zygote that died, stalled or failed its warm-up starts alone: starting the
            // pair would warm a healthy scientific zygote again at every retry. The next
            // scientific successor grows ml again.
            self.launch(kind, kind == Template::Ml);
        }
    }

    /// Starts a template. With scientific and ml both kept warm, the ml zygote is grown from
    /// the scientific one (they share its warm-up's memory), so starting either starts both
    /// unless `alone`.
    fn launch(&mut self, kind: Template, alone: bool) {
        let (Some(warm), Some(library)) = (&self.config.warm, &self.library) else {
            return;
        };
        let grows_ml = [Template::Scientific, Template::Ml]
            .iter()
            .all(|t| warm.templates.contains(t));
        let (kind, kinds): (Template, &[Template]) = match kind {
            Template::Scientific | Template::Ml if grows_ml && !alone => {
                (Template::Scientific, &[Template::Scientific, Template::Ml])
            }
            _ => (kind, std::slice::from_ref(&kind)),
        };
        for &k in kinds {
            if self.last_start.iter().any(|(t, _)| *t == k) {
                self.respawns += 1;
            }
            self.last_start.retain(|(t, _)| *t != k);
            self.last_start.push((k, Instant::now()));
        }
        let grows = kinds.len() == 2;
        match template::launch(kind, self.config, library, warm.max_forks, grows) {
            Ok(started) => self.live.extend(started),
            Err(e) => {
                tracing::error!(template = kind.name(), error = %e, "starting a template failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(due: Option<Duration>, longest: Duration) -> Option<u32> {
        poll_timeout(due, longest).as_millis()
    }

    #[test]
    fn a_poll_timeout_is_whole_milliseconds_rounded_up_and_capped() {
        let second = Duration::from_secs(1);
        // Under a millisecond away is one millisecond, never 0 (poll at once: a busy loop).
        assert_eq!(ms(Some(Duration::from_micros(1)), second), Some(1));
        assert_eq!(ms(Some(Duration::from_micros(900)), second), Some(1));
        assert_eq!(ms(Some(Duration::from_micros(1001)), second), Some(2));
        // Due now (or past due) is 0: poll only looks.
        assert_eq!(ms(Some(Duration::ZERO), second), Some(0));
        // Nothing due, or due later than the longest wait: the longest wait.
        assert_eq!(ms(None, second), Some(1000));
        assert_eq!(ms(Some(Duration::from_secs(90)), second), Some(1000));
        assert_eq!(
            ms(Some(Duration::from_secs(90)), Duration::from_secs(60)),
            Some(60_000)
        );
    }
}
