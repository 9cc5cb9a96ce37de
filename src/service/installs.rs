//! The run service's package installs (issue 24): a request's missing `libraries` found in the cache, or installed into it by a run of the installer in a sandbox whose only door is the index; one install per set at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;

use super::outcome::{classify, Ending, Limit};
use super::{RunService, ServiceError};
use crate::packages::store::Store;
use crate::packages::{installer_code, InstallReport, Requirement, Rules};
use crate::sandbox::warm::Template;
use crate::sandbox::{FileCaps, Limits, RunRequest};

/// `[packages]` as the service holds it: the rules and the cache.
#[derive(Debug, Clone)]
pub struct Packages {
    pub rules: Rules,
    pub store: Arc<Store>,
}

/// Installs under way, by the key of the libraries they install.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// A session's packages come with it: a call may name only those it was created with.
pub fn check_session_has(
    session_libraries: &[String],
    packages: &[Requirement],
) -> Result<(), ServiceError> {
    let has: Vec<Requirement> = session_libraries
        .iter()
        .filter_map(|l| Requirement::parse(l).ok())
        .collect();
    match packages
        .iter()
        .find(|p| !has.iter().any(|h| h.name == p.name))
    {
        None => Ok(()),
        Some(p) => Err(ServiceError::Invalid(format!(
            "`libraries`: {} is not among this session's packages; a session's packages are installed when it is created",
            p.name
        ))),
    }
}

/// Room on the installer's tmpfs beyond twice the set's cap: the wheels pip downloads and
/// its own temporary files.
const INSTALL_SCRATCH_BYTES: u64 = 64 << 20;

impl RunService {
    /// The distributions in the package cache (name → versions), when packages are on.
    pub fn cached_packages(&self) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
        self.settings.packages.as_ref().map(|p| p.store.cached())
    }

    /// The cached set of `packages` (its directory's name), installed first when the cache
    /// lacks it; `None` for no packages.
    pub(super) async fn site_for(
        &self,
        packages: &[Requirement],
        request_id: Option<&str>,
    ) -> Result<Option<String>, ServiceError> {
        let Some(p) = self
            .settings
            .packages
            .as_ref()
            .filter(|_| !packages.is_empty())
        else {
            return Ok(None);
        };
        let spec = p.store.spec_key(&p.rules.index_url, packages);
        if let Some(key) = p.store.lookup(&spec) {
            return Ok(Some(key));
        }
        let lock = {
            let mut map = self.installs.0.lock().map_err(|_| ServiceError::Internal)?;
            map.entry(spec.clone()).or_default().clone()
        };
        let installed = {
            let _one_at_a_time = lock.lock().await;
            // Whoever held the lock before may have installed it.
            match p.store.lookup(&spec) {
                Some(key) => Ok(key),
                None => self.install(p, packages, &spec, request_id).await,
            }
        };
        if let Ok(mut map) = self.installs.0.lock() {
            // The last one out removes the entry (ours and the map's references).
            if Arc::strong_count(&lock) <= 2 {
                map.remove(&spec);
            }
        }
        installed.map(Some)
    }

    /// One run of the installer; its files become the set `spec` maps to.
    async fn install(
        &self,
        p: &Packages,
        packages: &[Requirement],
        spec: &str,
        request_id: Option<&str>,
    ) -> Result<String, ServiceError> {
        let names: Vec<String> = packages.iter().map(Requirement::spec).collect();
        let names = names.join(", ");
        let cap = p.rules.max_installed_bytes;
        let limits = Limits {
            timeout_ms: p.rules.install_seconds * 1000,
            cpu_seconds: p.rules.install_seconds,
            tmp_bytes: 2 * cap + INSTALL_SCRATCH_BYTES,
            file_size_bytes: self.settings.limits.file_size_bytes.max(cap),
            ..self.settings.limits.clone()
        };
        let request = RunRequest {
            code: installer_code(&p.rules, packages),
            limits: limits.clone(),
            template: self.settings.warm.then_some(Template::Base),
            request_id: request_id.map(str::to_string),
            stream: false,
            files: Vec::new(),
            collect_files: Some(FileCaps {
                max_count: p.rules.max_files,
                max_file_bytes: cap,
                max_total_bytes: cap,
            }),
            session: false,
            results: None,
            egress_port: None,
            // The runner sets it from the door's policy.
            egress_ca: None,
            site: None,
        };
        let door = crate::egress::Door {
            policy: p.rules.policy.clone(),
            request_id: request.request_id.clone(),
            metrics: self.metrics.egress(),
        };
        let started = Instant::now();
        let outcome = self
            .runner
            .run_with_door(request, None, door)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "package install failed");
                ServiceError::Unavailable("the sandbox is restarting; retry the request".into())
            })?;
        let (ending, stderr) = classify(&outcome, &limits)?;
        let refuse = |why: String| Err(ServiceError::Invalid(format!("`libraries`: {why}")));
        match ending {
            Ending::Exited { code: 0 } => {}
            Ending::Limit(Limit::Timeout) | Ending::Limit(Limit::Cpu) => {
                return refuse(format!(
                    "installing {names} took longer than this server's cap ({} s)",
                    p.rules.install_seconds
                ))
            }
            Ending::Limit(Limit::Memory) => {
                return refuse(format!(
                    "installing {names} is past this server's memory cap"
                ))
            }
            other => {
                tracing::warn!(ending = ?other, stderr = %stderr, "the package installer failed");
                return refuse(format!("installing {names} failed"));
            }
        }
        let report = outcome
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| serde_json::from_str::<InstallReport>(l).ok());
        let installed = match report {
            Some(InstallReport::Installed { packages }) => packages,
            Some(InstallReport::Refused { package, reason }) => {
                tracing::info!(package = %package, reason = %reason, pip = %stderr, "package install refused");
                return refuse(format!("{package}: {reason}"));
            }
            None => {
                tracing::warn!(stderr = %stderr, "the package installer gave no report");
                return refuse(format!("installing {names} failed"));
            }
        };
        if outcome.files.iter().any(|f| f.truncated) {
            return refuse(format!(
                "installing {names} is past this server's caps ({} MiB, {} files)",
                cap >> 20,
                p.rules.max_files
            ));
        }
        // A link, a special file or a tree past the harness's depth or entry count would
        // leave the set incomplete: refused, not stored without it.
        if let Some(skipped) = outcome.skipped_files.first() {
            return refuse(format!(
                "installing {names} made {} ({:?}), which nsbox does not copy into a set",
                skipped.path, skipped.reason
            ));
        }
        let mut files = Vec::with_capacity(outcome.files.len());
        for f in outcome.files {
            let Some(rel) = f.path.strip_prefix("site/") else {
                continue;
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(f.content_base64.unwrap_or_default())
                .map_err(|_| ServiceError::Internal)?;
            files.push((rel.to_string(), bytes));
        }
        let store = p.store.clone();
        let spec = spec.to_string();
        let set = installed.clone();
        let key = tokio::task::spawn_blocking(move || store.put(&spec, &set, files))
            .await
            .map_err(|_| ServiceError::Internal)?
            .map_err(|e| {
                tracing::error!(error = %e, "storing a package set");
                ServiceError::Invalid(format!("`libraries`: installing {names} failed"))
            })?;
        tracing::info!(
            packages = ?installed.iter().map(|i| format!("{}=={}", i.name, i.version)).collect::<Vec<_>>(),
            set = %key,
            ms = started.elapsed().as_millis() as u64,
            "package set installed"
        );
        Ok(key)
    }
}
