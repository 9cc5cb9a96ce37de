//! Packages on demand (issue 24, docs/egress.md): the `[packages]` configuration, a request's `libraries` split into what the tree has and what must come from the operator's index, and the cache of installed sets on the host (`store`).
//!
//! The install itself is a run: `service::installs` sends [`installer_code`] through the
//! run service's runner like any code, in a sandbox whose only door leads to the index.

pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where the installer sandbox finds the tree's pip: outside every run's `sys.path`.
const INSTALLER_PIP: &str = "/usr/local/lib/nsbox/installer";

/// The installed size a set may have at most: the installed files travel back in the
/// run's outcome, one frame of at most 128 MiB with the files in base64.
pub const MAX_INSTALLED_MIB: u64 = 64;

/// The `[packages]` table. Without it (or without `index_url`), `libraries` only names what
/// the tree has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackagesConfig {
    /// The operator's package index (PEP 503 simple API), reached through the egress door:
    /// `https://pypi.org/simple/` or a mirror.
    pub index_url: String,
    /// Package names that may be installed; empty: any name the deny list does not name.
    pub allow: Vec<String>,
    /// Package names that are never installed.
    pub deny: Vec<String>,
    /// Seconds an install may take (its run's timeout and CPU time).
    pub install_seconds: u64,
    /// Installed size of one set, MiB (at most 64).
    pub max_installed_mib: u64,
    /// Distributions one set may hold, dependencies included.
    pub max_packages: usize,
    /// Files one set may hold.
    pub max_files: usize,
    /// The cache of installed sets on the host; `None`: `/var/lib/nsbox/packages`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PackagesConfig {
    fn default() -> PackagesConfig {
        PackagesConfig {
            index_url: String::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            install_seconds: 120,
            max_installed_mib: MAX_INSTALLED_MIB,
            max_packages: 20,
            max_files: 10_000,
            cache_dir: None,
        }
    }
}

/// The cache's directory when the configuration names none: the server's state directory
/// (systemd's `StateDirectory=nsbox`, writable under `ProtectSystem=strict`).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/nsbox/packages";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackagesError {
    #[error("`index_url` is required to enable packages")]
    NoIndex,
    #[error("`index_url` {0:?} is not an http:// or https:// URL with a host")]
    IndexUrl(String),
    #[error("`{0}` must be at least 1")]
    Zero(&'static str),
    #[error("`max_installed_mib` must be at most {MAX_INSTALLED_MIB}")]
    TooLarge,
    #[error("`max_files` must be at most 20000 (what the harness lists)")]
    TooManyFiles,
    #[error("{0:?} is not a package name")]
    Name(String),
}

/// The `[packages]` rules, checked: what `validate` applies to a request's `libraries`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub index_url: String,
    /// The index's host and port: the only place the installer's door leads.
    pub index_host: String,
    pub index_port: u16,
    allow: Vec<String>,
    deny: Vec<String>,
    pub install_seconds: u64,
    pub max_installed_bytes: u64,
    pub max_packages: usize,
    pub max_files: usize,
    pub cache_dir: PathBuf,
    /// The installer's door: the index's host and port only (with `[egress]`'s `hosts`
    /// and `allow_ips`, which the operator trusts).
    pub policy: Arc<crate::egress::Policy>,
}

impl Rules {
    /// The rules of `config`, or what is wrong with it. `egress` lends its name map and
    /// allowed addresses (a mirror on a private network); `own` are the server's listeners.
    pub fn from_config(
        config: &PackagesConfig,
        egress: Option<&crate::egress::EgressConfig>,
        own: std::net::SocketAddr,
    ) -> Result<Rules, PackagesError> {
        if config.index_url.is_empty() {
            return Err(PackagesError::NoIndex);
        }
        let uri: hyper::Uri = config
            .index_url
            .parse()
            .map_err(|_| PackagesError::IndexUrl(config.index_url.clone()))?;
        let port = match uri.scheme_str() {
            Some("http") => uri.port_u16().unwrap_or(80),
            Some("https") => uri.port_u16().unwrap_or(443),
            _ => return Err(PackagesError::IndexUrl(config.index_url.clone())),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| PackagesError::IndexUrl(config.index_url.clone()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        for (field, v) in [
            ("install_seconds", config.install_seconds),
            ("max_installed_mib", config.max_installed_mib),
            ("max_packages", config.max_packages as u64),
            ("max_files", config.max_files as u64),
        ] {
            if v == 0 {
                return Err(PackagesError::Zero(field));
            }
        }
        if config.max_installed_mib > MAX_INSTALLED_MIB {
            return Err(PackagesError::TooLarge);
        }
        if config.max_files > 20_000 {
            return Err(PackagesError::TooManyFiles);
        }
        let names = |list: &[String]| -> Result<Vec<String>, PackagesError> {
            list.iter()
                .map(|n| match is_name(n) {
                    true => Ok(canonical(n)),
                    false => Err(PackagesError::Name(n.clone())),
                })
                .collect()
        };
        let target = match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        };
        let door = crate::egress::EgressConfig {
            allow: vec![target],
            allow_ips: egress.map(|e| e.allow_ips.clone()).unwrap_or_default(),
            hosts: egress.map(|e| e.hosts.clone()).unwrap_or_default(),
            // A mirror signed by the operator's own CA is trusted as runs trust it.
            ca_file: egress.and_then(|e| e.ca_file.clone()),
            max_seconds: config.install_seconds,
            max_download_mib: 1024,
            ..crate::egress::EgressConfig::default()
        };
        let policy = crate::egress::Policy::from_config(&door, vec![own])
            .map_err(|_| PackagesError::IndexUrl(config.index_url.clone()))?;
        Ok(Rules {
            index_url: config.index_url.clone(),
            index_host: host,
            index_port: port,
            allow: names(&config.allow)?,
            deny: names(&config.deny)?,
            install_seconds: config.install_seconds,
            max_installed_bytes: config.max_installed_mib << 20,
            max_packages: config.max_packages,
            max_files: config.max_files,
            cache_dir: config
                .cache_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR)),
            policy: Arc::new(policy),
        })
    }

    /// Whether the operator lets `name` (canonical) be installed; the refusal says which
    /// list decided.
    pub fn admits(&self, name: &str) -> Result<(), String> {
        if self.deny.iter().any(|d| d == name) {
            return Err(format!(
                "`libraries`: {name} is on this server's deny list of packages"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|a| a == name) {
            return Err(format!(
                "`libraries`: {name} is not on this server's allow list of packages"
            ));
        }
        Ok(())
    }
}

/// One entry of `libraries`: a name, maybe pinned to one version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// Canonical (PEP 503).
    pub name: String,
    pub version: Option<String>,
}

impl Requirement {
    /// `name` or `name==version`; anything else (ranges, extras, URLs, options) is refused,
    /// so nothing a request says reaches pip's command line but a name and a version.
    pub fn parse(entry: &str) -> Result<Requirement, String> {
        let entry = entry.trim();
        let (name, version) = match entry.split_once("==") {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (entry, None),
        };
        let version_ok = |v: &str| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+!-".contains(&b))
                && v.as_bytes()[0].is_ascii_alphanumeric()
        };
        if !is_name(name) || version.is_some_and(|v| !version_ok(v)) {
            return Err(format!(
                "`libraries`: {entry:?} is not a package name, or a name and `==version`"
            ));
        }
        Ok(Requirement {
            name: canonical(name),
            version: version.map(str::to_string),
        })
    }

    /// As pip reads it.
    pub fn spec(&self) -> String {
        match &self.version {
            Some(v) => format!("{}=={v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A distribution name as PEP 508 allows it, at most 100 characters.
pub fn is_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 100
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// PEP 503 normalisation: `Scikit_Learn` and `scikit-learn` are one distribution (the
/// catalog reads the tree's names with it too).
pub fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_sep = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_sep {
                out.push('-');
            }
            in_sep = true;
        } else {
            out.extend(c.to_lowercase());
            in_sep = false;
        }
    }
    out
}

/// What the installer tells the server on its last line of stdout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum InstallReport {
    Installed { packages: Vec<Installed> },
    Refused { package: String, reason: String },
}

/// One distribution the installer put in the set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Installed {
    pub name: String,
    pub version: String,
    /// The wheel's SHA-256 as pip checked it, when the index published it.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The installer's Python code for `requirements` (each already a checked
/// [`Requirement::spec`]): pip from the tree, wheels only, into the working directory's
/// `site/`, which the harness sends back as the run's files.
pub fn installer_code(rules: &Rules, requirements: &[Requirement]) -> String {
    let args = serde_json::json!({
        "pip": INSTALLER_PIP,
        "index": rules.index_url,
        "requirements": requirements.iter().map(Requirement::spec).collect::<Vec<_>>(),
        "max_packages": rules.max_packages,
        "trusted_host": match rules.index_host.contains(':') {
            true => format!("[{}]:{}", rules.index_host, rules.index_port),
            false => format!("{}:{}", rules.index_host, rules.index_port),
        },
    });
    // The arguments go in as one JSON string literal (valid Python too), which the code
    // parses: nothing of a request is ever spliced into Python source.
    format!(
        "ARGS = __import__('json').loads({})\n{}",
        serde_json::to_string(&args.to_string()).unwrap_or_default(),
        include_str!("installer.py")
    )
}

/// The distributions of the tree that a set must not shadow: keyed by canonical name.
pub type TreeLibraries = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_and_exact_versions_reach_pip() {
        let r = Requirement::parse(" Tabulate_X == 0.9.0 ").unwrap();
        assert_eq!(r.spec(), "tabulate-x==0.9.0");
        assert_eq!(Requirement::parse("plotly").unwrap().version, None);
        for bad in [
            "",
            "a>=1",
            "a[extra]",
            "--index-url=http://evil/",
            "-r/etc/passwd",
            "a==",
            "a==1 --hash=x",
            "git+https://x/y",
            "a; python_version<'4'",
            "a==-1",
        ] {
            assert!(Requirement::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_allow_list_admits_only_its_names() {
        let config = PackagesConfig {
            index_url: "https://pypi.org/simple/".into(),
            allow: vec!["Tabulate".into()],
            ..PackagesConfig::default()
        };
        let rules = Rules::from_config(&config, None, "127.0.0.1:8080".parse().unwrap()).unwrap();
        assert!(rules.admits("tabulate").is_ok());
        assert!(rules
            .admits("termcolor")
            .unwrap_err()
            .contains("allow list"));
        assert_eq!(
            (rules.index_host.as_str(), rules.index_port),
            ("pypi.org", 443)
        );
        let code = installer_code(&rules, &[Requirement::parse("tabulate").unwrap()]);
        assert!(
            code.starts_with("ARGS = __import__('json').loads(\"{"),
            "{code}"
        );
    }
}
