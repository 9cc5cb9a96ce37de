//! What a request to run code must be: the contract's checks (code, timeout, libraries, user id, files, session id), done once for every front end.

use super::catalog::Catalog;
use super::files::{self, FileInput};
use super::{ServiceError, Settings};
use crate::sandbox::InputFile;

/// The spec's limit on `code`, in characters.
pub const MAX_CODE_CHARS: usize = 50_000;

/// Seconds (as requests and configuration give them) to the milliseconds a run is limited
/// to, rounded up so a run never gets less than it asked for.
pub fn millis(seconds: f64) -> u64 {
    (seconds * 1000.0).ceil() as u64
}

/// Whether a client's id (`x-request-id`, `x-relaxai-userid`) may go into log lines as
/// it is: 1 to 128 letters, digits and `-_.:/`, so it cannot bloat or forge a line.
pub fn is_usable_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/".contains(c))
}

/// The longest usable client id, bytes.
pub const MAX_ID_BYTES: usize = 128;

/// One request to run code, as every front end gives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodeRequest {
    pub code: String,
    /// Seconds; `None` takes the configured default.
    pub timeout_s: Option<f64>,
    /// Libraries the caller expects (checked against the root filesystem; they also pick
    /// the warm template).
    pub libraries: Vec<String>,
    /// Who asked (`x-relaxai-userid`): logged, and limited to a share of its key's
    /// share of the run slots. Must be [usable](is_usable_id) as it goes into log lines.
    pub user: Option<String>,
    /// How long the caller waits for an answer, seconds, when it says so (the official
    /// SDK's read timeout). A request without its own timeout is kept under it, so the
    /// answer arrives before the caller gives up and sends the code again.
    pub caller_patience_s: Option<f64>,
    /// The front end's id of the request (the one in its [`request_span`]), handed to the
    /// sandbox so its log lines carry it too.
    pub request_id: Option<String>,
    /// Files written into the working directory first; `Some` (even empty) also asks for
    /// the files the code creates or changes.
    pub files: Option<Vec<FileInput>>,
    /// Runs the code in this session instead of a fresh sandbox.
    pub session_id: Option<String>,
    /// Who is asking, for sessions and admission: the API key's fingerprint
    /// ([`key_owner`]), `None` without keys.
    pub owner: Option<String>,
    /// Whether to return notebook results (docs/results.md); `None`: off for a run, the
    /// session's default for a session call.
    pub results: Option<bool>,
    /// `network.allow`: the hosts this run may reach, within the operator's egress policy;
    /// `None` takes the operator's policy as it is.
    pub network: Option<Vec<String>>,
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub code: String,
    pub timeout_ms: u64,
    pub libraries: Vec<String>,
    pub user: Option<String>,
    pub request_id: Option<String>,
    pub files: Vec<InputFile>,
    /// Whether the files the code creates or changes come back.
    pub collect_files: bool,
    /// Notebook results asked for (or not); `None` leaves it to the session, or off.
    pub results: Option<bool>,
    pub session_id: Option<String>,
    pub owner: Option<String>,
    /// The door this run gets (the operator's policy, or the request's narrowing of it);
    /// `None`: no listener and no proxy variables.
    pub egress: Option<std::sync::Arc<crate::egress::Policy>>,
    /// The `libraries` the tree lacks, to come from the package cache (or be installed
    /// into it first); empty without `[packages]`.
    pub packages: Vec<crate::packages::Requirement>,
}

/// A request's `libraries`: the names the tree has pass as they always did; without
/// `[packages]` any other is refused (naming what there is), with it each must be a name
/// (maybe `==version`) the operator's lists admit, and these are returned, to be installed.
pub fn libraries(
    settings: &Settings,
    catalog: &Catalog,
    requested: &[String],
) -> Result<Vec<crate::packages::Requirement>, ServiceError> {
    let Some(packages) = &settings.packages else {
        catalog.check(requested)?;
        return Ok(Vec::new());
    };
    let mut missing = Vec::new();
    for entry in requested {
        if catalog.has(entry) {
            continue;
        }
        let req = crate::packages::Requirement::parse(entry).map_err(ServiceError::Invalid)?;
        if let Some(tree) = catalog.libraries.get(&req.name) {
            match &req.version {
                Some(v) if v != tree => {
                    return Err(ServiceError::Invalid(format!(
                        "`libraries`: {} is in the tree at version {tree}; another version cannot be installed beside it",
                        req.name
                    )))
                }
                _ => continue,
            }
        }
        packages
            .rules
            .admits(&req.name)
            .map_err(ServiceError::Invalid)?;
        missing.push(req);
    }
    missing.sort();
    missing.dedup();
    if missing.len() > packages.rules.max_packages {
        return Err(ServiceError::Invalid(format!(
            "`libraries`: {} packages to install; this server's cap is {}",
            missing.len(),
            packages.rules.max_packages
        )));
    }
    Ok(missing)
}

/// The contract's rules for the code itself.
pub fn check_code(code: &str) -> Result<(), ServiceError> {
    if code.trim().is_empty() {
        return Err(ServiceError::Invalid(
            "`code` must not be empty or whitespace only".into(),
        ));
    }
    if code.contains('\0') {
        return Err(ServiceError::Invalid(
            "`code` must not contain NUL bytes".into(),
        ));
    }
    let chars = code.chars().count();
    if chars > MAX_CODE_CHARS {
        return Err(ServiceError::TooLarge(format!(
            "`code` is {chars} characters; the maximum is {MAX_CODE_CHARS}"
        )));
    }
    Ok(())
}

/// The door a request gets: the operator's policy (or its key's `egress_allow`), narrowed to `network.allow` when the
/// request gives one (wider is refused, naming the host); none when there is no policy or
/// the request narrows it to nothing.
pub fn egress(
    settings: &Settings,
    owner: Option<&str>,
    network: Option<&[String]>,
    session_call: bool,
) -> Result<Option<std::sync::Arc<crate::egress::Policy>>, ServiceError> {
    let base = settings.egress.as_ref().map(|p| p.for_owner(owner));
    let policy = match (base, network) {
        (_, Some(_)) if session_call => {
            return Err(ServiceError::Invalid(
                "`network` is set when a session is created, not per call".into(),
            ))
        }
        (None, Some(allow)) if !allow.is_empty() => {
            return Err(ServiceError::Invalid(
                "`network`: this server has no egress; runs cannot reach any host".into(),
            ))
        }
        (None, _) => return Ok(None),
        (Some(policy), None) => policy.clone(),
        (Some(policy), Some(allow)) => std::sync::Arc::new(
            policy
                .narrow(allow)
                .map_err(|e| ServiceError::Invalid(format!("`network.allow`: {e}")))?,
        ),
    };
    Ok((!policy.is_empty() && !session_call).then_some(policy))
}

/// Checks a request against the contract and the root filesystem's libraries.
pub fn validate(
    settings: &Settings,
    catalog: &Catalog,
    request: CodeRequest,
) -> Result<Validated, ServiceError> {
    check_code(&request.code)?;
    let max = settings.max_timeout_s;
    let timeout_s = match request.timeout_s {
        Some(t) if t > 0.0 && t <= max => t,
        Some(t) => {
            return Err(ServiceError::Invalid(format!(
                "`timeout` must be more than 0 and at most {max} seconds, got {t}"
            )))
        }
        None => request
            .caller_patience_s
            .and_then(within_patience)
            .map_or(settings.default_timeout_s, |budget| {
                budget.min(settings.default_timeout_s)
            }),
    };
    let packages = libraries(settings, catalog, &request.libraries)?;
    let user = request.user.filter(|u| !u.is_empty());
    if let Some(user) = &user {
        if !is_usable_id(user.as_bytes()) {
            return Err(ServiceError::Invalid(format!(
                "`x-relaxai-userid` must be 1 to {MAX_ID_BYTES} letters, digits and `-_.:/`"
            )));
        }
    }
    let files = files::check_inputs(request.files.as_deref().unwrap_or(&[]), &settings.files)?;
    if let Some(id) = &request.session_id {
        if id.is_empty() {
            return Err(ServiceError::Invalid(
                "`session_id` must not be empty".into(),
            ));
        }
    }
    let egress = egress(
        settings,
        request.owner.as_deref(),
        request.network.as_deref(),
        request.session_id.is_some(),
    )?;
    Ok(Validated {
        egress,
        packages,
        code: request.code,
        timeout_ms: millis(timeout_s),
        libraries: request.libraries,
        user,
        request_id: request.request_id,
        files,
        collect_files: request.files.is_some() || request.session_id.is_some(),
        results: request.results,
        session_id: request.session_id,
        owner: request.owner,
    })
}

/// The time a caller that waits `patience_s` seconds leaves a run: a second less, or half
/// of a very short wait.
fn within_patience(patience_s: f64) -> Option<f64> {
    (patience_s.is_finite() && patience_s > 0.0).then(|| (patience_s - 1.0).max(patience_s / 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScannerMode;
    use crate::sandbox::{Limits, ResultCaps};
    use crate::service::admission::KeyWeights;
    use crate::service::events;
    use crate::service::files::FileLimits;
    use crate::service::sessions::SessionSettings;
    use crate::service::Settings;

    #[test]
    fn seconds_become_milliseconds_rounded_up() {
        assert_eq!(millis(30.0), 30_000);
        assert_eq!(millis(0.25), 250);
        assert_eq!(millis(0.0001), 1);
    }

    #[test]
    fn the_callers_patience_leaves_a_second_for_the_answer() {
        assert_eq!(within_patience(30.0), Some(29.0));
        assert_eq!(within_patience(1.0), Some(0.5));
        assert_eq!(within_patience(f64::NAN), None);
        assert_eq!(within_patience(-3.0), None);
    }

    fn settings() -> Settings {
        Settings {
            limits: Limits::default(),
            default_timeout_s: 30.0,
            max_timeout_s: 300.0,
            scanner: ScannerMode::Enforce,
            warm: false,
            max_running: 1,
            max_queue: 1,
            results: ResultCaps::default(),
            stream_backlog_events: events::DEFAULT_MAX_EVENTS,
            max_running_per_user: Some(1),
            key_weights: KeyWeights::default(),
            files: FileLimits {
                max_count: 2,
                max_file_bytes: 10,
                max_total_bytes: 10,
            },
            sessions: SessionSettings::default(),
            mcp_attach_bytes: 256 << 10,
            mcp_text_chars: 20_000,
            egress: None,
            packages: None,
        }
    }

    fn v(timeout_s: Option<f64>, patience: Option<f64>) -> Result<Validated, ServiceError> {
        validate(
            &settings(),
            &Catalog::default(),
            CodeRequest {
                code: "x".into(),
                timeout_s,
                caller_patience_s: patience,
                ..CodeRequest::default()
            },
        )
    }

    #[test]
    fn timeouts_are_checked_once_and_kept_under_the_callers_patience() {
        assert_eq!(v(None, None).unwrap().timeout_ms, 30_000);
        assert_eq!(v(Some(5.0), None).unwrap().timeout_ms, 5_000);
        assert_eq!(v(Some(0.25), None).unwrap().timeout_ms, 250);
        assert_eq!(v(None, Some(10.0)).unwrap().timeout_ms, 9_000);
        // An explicit timeout is the caller's own choice.
        assert_eq!(v(Some(20.0), Some(10.0)).unwrap().timeout_ms, 20_000);
        // Patience longer than the default leaves the default.
        assert_eq!(v(None, Some(600.0)).unwrap().timeout_ms, 30_000);
        for bad in [0.0, -3.0, 301.0, 1e308, f64::INFINITY, f64::NAN] {
            let err = v(Some(bad), None).unwrap_err();
            assert!(
                matches!(&err, ServiceError::Invalid(m) if m.contains("more than 0 and at most 300")),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn unknown_libraries_are_refused() {
        let err = validate(
            &settings(),
            &Catalog::default(),
            CodeRequest {
                code: "x".into(),
                libraries: vec!["tensorflow".into()],
                ..CodeRequest::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, ServiceError::Invalid(m) if m.contains("tensorflow")));
    }

    #[test]
    fn code_rules() {
        assert!(
            matches!(check_code(" \n\t"), Err(ServiceError::Invalid(m)) if m.contains("empty"))
        );
        assert!(matches!(check_code("a\0b"), Err(ServiceError::Invalid(m)) if m.contains("NUL")));
        assert!(check_code(&"é".repeat(MAX_CODE_CHARS)).is_ok());
        assert!(matches!(
            check_code(&"a".repeat(MAX_CODE_CHARS + 1)),
            Err(ServiceError::TooLarge(_))
        ));
    }
}
