//! The egress door (docs/egress.md): the operator's `[egress]` policy, a request's narrowing of it, and the decision on one target; the proxy that holds runs to it is `proxy`, the address rules `addr`.

pub mod addr;
pub mod proxy;
mod splice;
pub mod tunnel;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use proxy::{Door, EgressMetrics, Serving};

/// The port of the proxy's listener on each run's own loopback. Every run has a network
/// namespace of its own, so one fixed port collides with nothing.
pub const PROXY_PORT: u16 = 3128;

/// Ports a rule without `:port` allows.
const DEFAULT_PORTS: [u16; 2] = [443, 80];

/// The `[egress]` table of the configuration. Without it runs have no door at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Hosts runs may reach: `name`, `*.suffix`, or an IP address, each with an optional
    /// `:port` (without one, 443 and 80).
    pub allow: Vec<String>,
    /// Addresses the door may connect to although they are loopback, private, link-local
    /// and so on: exact addresses only.
    pub allow_ips: Vec<IpAddr>,
    /// Names the door resolves to these addresses without asking the resolver (like
    /// `--add-host`); the addresses are still held to the address rules.
    pub hosts: BTreeMap<String, IpAddr>,
    /// Connections a run may open through the door, in all.
    pub max_connections: u32,
    /// Bytes a run may send through the door, MiB in all.
    pub max_upload_mib: u64,
    /// Bytes a run may receive through the door, MiB in all.
    pub max_download_mib: u64,
    /// Seconds after the run starts that the door stays open.
    pub max_seconds: u64,
    /// Seconds a request's head may take to arrive at the proxy (slow clients).
    pub header_timeout: f64,
    /// Seconds the proxy waits for an upstream to accept a connection.
    pub connect_timeout: f64,
    /// A PEM file of CA certificates that runs with a door trust beside the tree's own
    /// (certifi's): for upstreams signed by a private CA. Without it runs trust only those.
    pub ca_file: Option<PathBuf>,
}

impl Default for EgressConfig {
    fn default() -> EgressConfig {
        EgressConfig {
            allow: Vec::new(),
            allow_ips: Vec::new(),
            hosts: BTreeMap::new(),
            max_connections: 64,
            max_upload_mib: 16,
            max_download_mib: 256,
            max_seconds: 300,
            header_timeout: 10.0,
            connect_timeout: 10.0,
            ca_file: None,
        }
    }
}

/// The operator's policy and the keys' narrowings of it: which one a request starts from.
#[derive(Debug, Clone)]
pub struct Policies {
    operator: Arc<Policy>,
    /// By the key's owner fingerprint (`service::key_owner`).
    by_key: std::collections::HashMap<String, Arc<Policy>>,
}

impl Policies {
    /// The configuration's policies; `None` without `[egress]`. The error names what is
    /// wrong (a key's `egress_allow` without `[egress]`, or wider than it).
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Policies>, String> {
        let keyed: Vec<&crate::config::KeyEntry> = config
            .keys
            .iter()
            .filter(|k| k.egress_allow.is_some())
            .collect();
        let Some(egress) = &config.egress else {
            return match keyed.is_empty() {
                true => Ok(None),
                false => Err("`egress_allow` needs an [egress] table".into()),
            };
        };
        let operator =
            Arc::new(Policy::from_config(egress, vec![config.listen]).map_err(|e| e.to_string())?);
        let mut by_key = std::collections::HashMap::new();
        for k in keyed {
            let allow = k.egress_allow.as_deref().unwrap_or_default();
            let narrowed = operator
                .narrow(allow)
                .map_err(|e| format!("`egress_allow`: {e}"))?;
            by_key.insert(
                crate::service::key_owner(k.key.as_bytes()),
                Arc::new(narrowed),
            );
        }
        Ok(Some(Policies { operator, by_key }))
    }

    /// The policy a request of `owner` (an API key's fingerprint) starts from.
    pub fn for_owner(&self, owner: Option<&str>) -> &Arc<Policy> {
        owner
            .and_then(|o| self.by_key.get(o))
            .unwrap_or(&self.operator)
    }

    /// See [`Policy::add_own_listener`]: every key's policy shares the operator's list.
    pub fn add_own_listener(&self, addr: SocketAddr) {
        self.operator.add_own_listener(addr);
    }
}

/// A policy or a request that cannot be used, in words for the operator or the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("`{0}` is not a host name, `*.suffix` or IP address with an optional `:port`")]
    Entry(String),
    #[error("`{0}` is not within this server's egress allowlist")]
    Wider(String),
    #[error("`egress.ca_file` ({path}): {problem}")]
    CaFile { path: String, problem: String },
    #[error("`{field}` {problem}")]
    Limit {
        field: &'static str,
        problem: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// A name, lower case, without a trailing dot.
    Name(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself),
    /// kept with its leading dot.
    Suffix(String),
    Ip(IpAddr),
}

impl HostPattern {
    fn matches_name(&self, name: &str) -> bool {
        match self {
            HostPattern::Name(n) => n == name,
            HostPattern::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
            HostPattern::Ip(_) => false,
        }
    }

    /// Whether everything `other` matches, this matches.
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Ip(a), HostPattern::Ip(b)) => a == b,
            (_, HostPattern::Name(n)) => self.matches_name(n),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => b.ends_with(a.as_str()),
            _ => false,
        }
    }
}

/// One allowed host pattern and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    host: HostPattern,
    ports: Vec<u16>,
}

impl Rule {
    fn parse(entry: &str) -> Result<Rule, PolicyError> {
        let bad = || PolicyError::Entry(entry.to_string());
        let entry_lc = entry.trim().to_ascii_lowercase();
        let (host, port) = split_host_port(&entry_lc).ok_or_else(bad)?;
        let ports = match port {
            Some(p) => vec![p],
            None => DEFAULT_PORTS.to_vec(),
        };
        let host = if let Some(ip) = addr::ip_literal(host) {
            HostPattern::Ip(ip)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !is_name(suffix) || addr::looks_numeric(suffix) {
                return Err(bad());
            }
            HostPattern::Suffix(format!(".{suffix}"))
        } else if is_name(host) && !addr::looks_numeric(host) {
            HostPattern::Name(host.to_string())
        } else {
            return Err(bad());
        };
        Ok(Rule { host, ports })
    }
}

/// `host[:port]`, `[v6][:port]`; the host without brackets' meaning changed (brackets
/// kept for IPv6) and a trailing dot removed.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let rest = &s[end + 1..];
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':')?),
        };
        (&s[..=end], port)
    } else if s.matches(':').count() > 1 {
        // A bare IPv6 address: no port can be told apart.
        (s, None)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return None,
        },
        None => None,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

/// A DNS name: labels of letters, digits, `-` and `_`, 1 to 63 bytes each, 253 in all.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What a run may do through the door.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_upload_bytes: u64,
    pub max_download_bytes: u64,
    pub max_time: Duration,
    pub header_timeout: Duration,
    pub connect_timeout: Duration,
}

/// The operator's policy (or a request's narrowing of it): which targets a run may reach.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    allow_ips: Vec<IpAddr>,
    hosts: BTreeMap<String, IpAddr>,
    /// The server's own listeners: never reachable, whatever else is allowed. Shared with
    /// every narrowing, since the server learns its port once it has bound it.
    own: Arc<RwLock<Vec<SocketAddr>>>,
    pub limits: Limits,
    /// The operator's extra CA certificates (PEM), handed to every run with a door.
    pub ca: Option<Arc<str>>,
}

/// Policies are equal when they allow the same; the server's listeners are the same
/// server's.
impl PartialEq for Policy {
    fn eq(&self, other: &Policy) -> bool {
        self.rules == other.rules
            && self.allow_ips == other.allow_ips
            && self.hosts == other.hosts
            && self.limits == other.limits
            && self.ca == other.ca
    }
}

/// A target the door refuses, and why (for the 403, the log line and the run's stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub host: String,
    pub port: u16,
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.is_empty() {
            // A refusal of the run's, not of one target (its connection limit).
            return write!(f, "egress refused: {}", self.why);
        }
        write!(
            f,
            "egress to {}:{} refused: {}",
            self.host, self.port, self.why
        )
    }
}

/// Where the door may connect for one target: addresses already held to the rules (no
/// second lookup happens after this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Addresses from the operator's `hosts` map, or the target's own IP literal.
    Fixed(Vec<SocketAddr>),
    /// A name the resolver has to answer; its answers go through [`Policy::screen`].
    Resolve(String, u16),
}

impl Policy {
    /// The operator's policy, or what is wrong with it. `own` are the server's listeners.
    pub fn from_config(config: &EgressConfig, own: Vec<SocketAddr>) -> Result<Policy, PolicyError> {
        let rules = config
            .allow
            .iter()
            .map(|e| Rule::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        let positive = |field: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(PolicyError::Limit {
                    field,
                    problem: format!("must be a number above 0, got {v}"),
                })
            }
        };
        let nonzero = |field: &'static str, v: u64| {
            if v > 0 && v < 1 << 40 {
                Ok(v)
            } else {
                Err(PolicyError::Limit {
                    field,
                    problem: format!("must be at least 1 and below 2^40, got {v}"),
                })
            }
        };
        let mut hosts = BTreeMap::new();
        for (name, ip) in &config.hosts {
            let lc = name.to_ascii_lowercase();
            let lc = lc.strip_suffix('.').unwrap_or(&lc).to_string();
            if !is_name(&lc) || addr::looks_numeric(&lc) {
                return Err(PolicyError::Entry(name.clone()));
            }
            hosts.insert(lc, *ip);
        }
        let ca = config.ca_file.as_deref().map(read_ca).transpose()?;
        Ok(Policy {
            ca,
            rules,
            allow_ips: config.allow_ips.clone(),
            hosts,
            own: Arc::new(RwLock::new(own)),
            limits: Limits {
                max_connections: nonzero("egress.max_connections", config.max_connections.into())?
                    as u32,
                max_upload_bytes: nonzero("egress.max_upload_mib", config.max_upload_mib)? << 20,
                max_download_bytes: nonzero("egress.max_download_mib", config.max_download_mib)?
                    << 20,
                max_time: Duration::from_secs(nonzero("egress.max_seconds", config.max_seconds)?),
                header_timeout: positive("egress.header_timeout", config.header_timeout)?,
                connect_timeout: positive("egress.connect_timeout", config.connect_timeout)?,
            },
        })
    }

    /// This policy narrowed to `asked` (a request's `network.allow`): every entry must be
    /// within it, port by port; the error names the first that is not.
    pub fn narrow(&self, asked: &[String]) -> Result<Policy, PolicyError> {
        let mut rules = Vec::with_capacity(asked.len());
        for entry in asked {
            let rule = Rule::parse(entry)?;
            let within = rule.ports.iter().all(|port| {
                self.rules
                    .iter()
                    .any(|r| r.ports.contains(port) && r.host.covers(&rule.host))
            });
            if !within {
                return Err(PolicyError::Wider(entry.clone()));
            }
            rules.push(rule);
        }
        Ok(Policy {
            rules,
            ..self.clone()
        })
    }

    /// Adds a listener of the server's (bound once the policy exists) to those the door
    /// never reaches.
    pub fn add_own_listener(&self, addr: SocketAddr) {
        self.own
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(addr);
    }

    /// Whether the policy lets anything through (a request may narrow it to nothing).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides on a target as a request names it: the allowlist, the port, IP literals,
    /// and the operator's name map; what is left to resolve is a name.
    pub fn route(&self, host: &str, port: u16) -> Result<Route, Refusal> {
        let refuse = |why: &str| Refusal {
            host: host.to_string(),
            port,
            why: why.to_string(),
        };
        let lc = host.to_ascii_lowercase();
        let name = lc.strip_suffix('.').unwrap_or(&lc);
        if let Some(ip) = addr::ip_literal(name) {
            let allowed = self
                .rules
                .iter()
                .any(|r| r.host == HostPattern::Ip(ip) && r.ports.contains(&port));
            if !allowed {
                return Err(refuse("an IP address the allowlist does not name"));
            }
            return self
                .screen(vec![SocketAddr::new(ip, port)])
                .map(Route::Fixed)
                .map_err(|why| refuse(&why));
        }
        if !is_name(name) || addr::looks_numeric(name) {
            return Err(refuse("not a host name"));
        }
        let rules: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.host.matches_name(name))
            .collect();
        if rules.is_empty() {
            return Err(refuse("not in the allowlist"));
        }
        if !rules.iter().any(|r| r.ports.contains(&port)) {
            return Err(refuse("a port the allowlist does not name for this host"));
        }
        match self.hosts.get(name) {
            Some(ip) => self
                .screen(vec![SocketAddr::new(*ip, port)])
                .map(Route::Fixed)
                .map_err(|why| refuse(&why)),
            None => Ok(Route::Resolve(name.to_string(), port)),
        }
    }

    /// The addresses the door may connect to among `addrs` (a name's answers): none of the
    /// server's own listeners, and no special address the operator did not allow exactly.
    /// The reason of the first refused when none is left.
    pub fn screen(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
        let mut why = String::from("the name has no address");
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.refuse_addr(*a) {
                Some(w) => {
                    why = w;
                    false
                }
                None => true,
            })
            .collect();
        if kept.is_empty() {
            Err(why)
        } else {
            Ok(kept)
        }
    }

    fn refuse_addr(&self, a: SocketAddr) -> Option<String> {
        let ip = canonical(a.ip());
        let listeners = self.own.read().unwrap_or_else(|e| e.into_inner());
        let own = listeners
            .iter()
            .any(|o| o.port() == a.port() && (o.ip().is_unspecified() || canonical(o.ip()) == ip));
        if own {
            return Some("the server's own listener".into());
        }
        if self.allow_ips.iter().any(|x| canonical(*x) == ip) {
            return None;
        }
        addr::forbidden(a.ip()).map(|w| format!("{w} ({})", a.ip()))
    }
}

/// The most a `ca_file` may hold: a few certificates, not a system's whole store.
const MAX_CA_BYTES: u64 = 1 << 20;

/// The operator's CA file, checked: PEM certificates and nothing else. A private key in it
/// would be handed to every run, so it stops the start instead.
fn read_ca(path: &Path) -> Result<Arc<str>, PolicyError> {
    let bad = |problem: String| PolicyError::CaFile {
        path: path.display().to_string(),
        problem,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| bad(format!("cannot be read: {e}")))?
        .len();
    if len > MAX_CA_BYTES {
        return Err(bad(format!("{len} bytes, more than {MAX_CA_BYTES}")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let mut certificates = 0;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if label != "CERTIFICATE" {
                return Err(bad(format!(
                    "holds a {label}; only CERTIFICATE blocks belong there"
                )));
            }
            certificates += 1;
        }
    }
    if certificates == 0 {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(Arc::from(text))
}

/// IPv4-mapped IPv6 as the IPv4 it is, so the same host compares equal either way.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> Policy {
        let config = EgressConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            allow_ips: vec!["127.0.0.2".parse().unwrap()],
            hosts: [
                ("up.test".to_string(), "127.0.0.2".parse().unwrap()),
                ("inside.test".to_string(), "10.0.0.5".parse().unwrap()),
                ("self.test".to_string(), "127.0.0.2".parse().unwrap()),
            ]
            .into(),
            ..EgressConfig::default()
        };
        Policy::from_config(&config, vec!["127.0.0.2:8080".parse().unwrap()]).unwrap()
    }

    #[test]
    fn names_wildcards_and_ports_match_as_written() {
        let p = policy(&["pypi.org", "*.example.com:8443", "up.test:9000"]);
        assert!(matches!(p.route("pypi.org", 443), Ok(Route::Resolve(..))));
        assert!(matches!(p.route("PyPI.org.", 80), Ok(Route::Resolve(..))));
        assert!(p.route("pypi.org", 8443).is_err());
        assert!(p.route("files.pypi.org", 443).is_err());
        assert!(matches!(
            p.route("a.b.example.com", 8443),
            Ok(Route::Resolve(..))
        ));
        assert!(
            p.route("example.com", 8443).is_err(),
            "a wildcard is not its apex"
        );
        assert!(p.route("evilexample.com", 8443).is_err());
        assert!(p.route("a.example.com", 443).is_err());
        assert_eq!(
            p.route("up.test", 9000),
            Ok(Route::Fixed(vec!["127.0.0.2:9000".parse().unwrap()]))
        );
    }

    #[test]
    fn ip_literals_pass_only_when_allowed_by_ip() {
        let p = policy(&["up.test:9000", "127.0.0.2:9000"]);
        for host in [
            "127.0.0.1",
            "2130706433",
            "0x7f.1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "0",
        ] {
            let e = p.route(host, 9000).unwrap_err();
            assert!(e.why.contains("IP address"), "{host}: {e}");
        }
        assert!(p.route("127.0.0.2", 9000).is_ok());
        assert!(
            p.route("0x7f000002", 9000).is_ok(),
            "the same address, spelt otherwise"
        );
        assert!(p
            .route("08.1.1.1", 443)
            .unwrap_err()
            .why
            .contains("not a host name"));
    }

    #[test]
    fn special_addresses_need_the_operators_exact_allowance() {
        let p = policy(&[
            "inside.test",
            "up.test:8080",
            "self.test:8080",
            "169.254.169.254",
        ]);
        let e = p.route("inside.test", 443).unwrap_err();
        assert!(e.why.contains("private"), "{e}");
        let e = p.route("169.254.169.254", 80).unwrap_err();
        assert!(e.why.contains("metadata"), "{e}");
        let e = p.route("self.test", 8080).unwrap_err();
        assert!(e.why.contains("own listener"), "{e}");
        // Answers of a resolver are screened the same way.
        assert!(p
            .screen(vec![
                "127.0.0.1:443".parse().unwrap(),
                "[::ffff:10.0.0.1]:443".parse().unwrap()
            ])
            .is_err());
        assert_eq!(
            p.screen(vec![
                "10.0.0.1:443".parse().unwrap(),
                "8.8.8.8:443".parse().unwrap()
            ]),
            Ok(vec!["8.8.8.8:443".parse().unwrap()])
        );
        assert!(p
            .screen(vec!["[::ffff:127.0.0.2]:80".parse().unwrap()])
            .is_ok());
    }

    #[test]
    fn a_request_narrows_and_never_widens() {
        let p = policy(&["pypi.org", "*.example.com", "up.test:9000"]);
        assert!(p
            .narrow(&["pypi.org:443".into(), "a.example.com".into()])
            .is_ok());
        assert!(p.narrow(&["*.b.example.com:80".into()]).is_ok());
        assert!(p.narrow(&[]).unwrap().is_empty());
        for wider in [
            "evil.com",
            "*.com",
            "example.com",
            "pypi.org:8080",
            "up.test",
            "127.0.0.2:9000",
        ] {
            assert_eq!(
                p.narrow(&["pypi.org".into(), wider.into()]).err(),
                Some(PolicyError::Wider(wider.into())),
                "{wider}"
            );
        }
        let narrowed = p.narrow(&["a.example.com:443".into()]).unwrap();
        assert!(narrowed.route("a.example.com", 443).is_ok());
        assert!(narrowed.route("a.example.com", 80).is_err());
        assert!(narrowed.route("pypi.org", 443).is_err());
        assert!(matches!(
            p.narrow(&["not a host".into()]),
            Err(PolicyError::Entry(_))
        ));
    }

    #[test]
    fn a_key_starts_from_its_own_narrowing() {
        use crate::config::Config;
        let text = "[[keys]]\nkey = \"alpha\"\negress_allow = [\"up.test:9000\"]\n\
                    [[keys]]\nkey = \"beta\"\n\
                    [egress]\nallow = [\"up.test:9000\", \"pypi.org\"]\n";
        let c = Config::parse(text).unwrap();
        c.validate().unwrap();
        let p = Policies::from_config(&c).unwrap().unwrap();
        let alpha = crate::service::key_owner(b"alpha");
        let beta = crate::service::key_owner(b"beta");
        assert!(p.for_owner(Some(&alpha)).route("pypi.org", 443).is_err());
        assert!(p.for_owner(Some(&alpha)).route("up.test", 9000).is_ok());
        assert!(p.for_owner(Some(&beta)).route("pypi.org", 443).is_ok());
        assert!(p.for_owner(None).route("pypi.org", 443).is_ok());
        let wider = Config::parse(&text.replace("up.test:9000\"]\n[[", "evil.test\"]\n[["))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            wider.contains("`keys`") && wider.contains("evil.test"),
            "{wider}"
        );
        let alone = Config::parse("[[keys]]\nkey = \"a\"\negress_allow = []\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(alone.contains("needs an [egress] table"), "{alone}");
    }

    #[test]
    fn bad_entries_and_limits_are_named() {
        for entry in [
            "",
            "*.",
            "a..b",
            "host:0",
            "host:99999",
            "*.*.com",
            "x:y",
            "a/b",
        ] {
            let config = EgressConfig {
                allow: vec![entry.into()],
                ..EgressConfig::default()
            };
            assert!(
                matches!(
                    Policy::from_config(&config, vec![]),
                    Err(PolicyError::Entry(_))
                ),
                "{entry}"
            );
        }
        let config = EgressConfig {
            max_connections: 0,
            ..EgressConfig::default()
        };
        let e = Policy::from_config(&config, vec![]).unwrap_err();
        assert!(e.to_string().contains("egress.max_connections"), "{e}");
    }

    #[test]
    fn a_ca_file_holds_certificates_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
        let policy = |text: Option<&str>| {
            let path = dir.path().join("ca.pem");
            if let Some(text) = text {
                std::fs::write(&path, text).unwrap();
            }
            let config = EgressConfig {
                ca_file: Some(path),
                ..EgressConfig::default()
            };
            Policy::from_config(&config, vec![])
        };
        assert_eq!(policy(Some(cert)).unwrap().ca.as_deref(), Some(cert));
        for (text, says) in [
            (Some(format!("{cert}{key}")), "PRIVATE KEY"),
            (Some("not a certificate\n".into()), "no PEM certificate"),
        ] {
            let e = policy(text.as_deref()).unwrap_err().to_string();
            assert!(e.contains("egress.ca_file") && e.contains(says), "{e}");
        }
        std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
        let e = policy(None).unwrap_err().to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }
}
