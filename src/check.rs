//! `nsbox check`: what isolation this host gives, probed for real, and whether it is what
//! the configuration asks for (the same rule `nsbox serve` starts by).

use serde::Serialize;

use crate::config::Config;
use crate::host::{self, Probe};

#[derive(Serialize)]
struct Report<'a> {
    /// Whether `nsbox serve` would start with this configuration on this host.
    isolation_complete: bool,
    probes: &'a [Probe],
    /// The effective configuration (keys redacted), to see what file < env < flag gave.
    config: Config,
}

/// The report's last line. A missing speed feature (`Probe::speed`) is a warning only:
/// isolation is complete without it.
fn verdict(probes: &[Probe], complete: bool) -> &'static str {
    let isolating_ok = probes.iter().all(|p| p.ok || p.speed);
    match (complete, isolating_ok) {
        (true, true) => "isolation: complete",
        (true, false) => "isolation: INCOMPLETE, allowed by allow_incomplete_isolation",
        (false, _) => "isolation: INCOMPLETE; nsbox serve will refuse to start",
    }
}

/// Prints the report and returns the exit status: 0 when every required probe passed.
pub fn main(config: &Config, json: bool, end_to_end: bool) -> u8 {
    // Kernel probes first, while the process is single-threaded (they fork).
    let mut probes = host::probe_features(config);
    if end_to_end {
        let required_ok = probes
            .iter()
            .filter(|p| p.feature != "cgroups" && p.required)
            .all(|p| p.ok);
        probes.push(Probe {
            feature: "sandbox run",
            ok: false,
            required: true,
            speed: false,
            detail: String::new(),
        });
        let last = probes.last_mut().expect("just pushed");
        if required_ok {
            match crate::run::probe(config) {
                Ok(d) => (last.ok, last.detail) = (true, d),
                Err(d) => last.detail = d,
            }
        } else {
            last.detail = "skipped: a required feature is missing".into();
        }
    }
    let complete = probes.iter().all(|p| p.ok || !p.required);
    if json {
        let report = Report {
            isolation_complete: complete,
            probes: &probes,
            config: redacted(config),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else {
        for p in &probes {
            let mark = match (p.ok, p.required) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "warn",
            };
            println!("{mark}  {:<16} {}", p.feature, p.detail);
        }
        println!("{}", verdict(&probes, complete));
    }
    if complete {
        0
    } else {
        1
    }
}

/// The configuration as the report shows it: every key replaced, wherever it was given.
fn redacted(config: &Config) -> Config {
    let hide = |keys: &[String]| keys.iter().map(|_| "<redacted>".to_string()).collect();
    let mut shown = config.clone();
    shown.api_keys = hide(&config.api_keys);
    shown.operator_keys = hide(&config.operator_keys);
    for entry in &mut shown.keys {
        entry.key = "<redacted>".into();
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_shows_no_key() {
        let config = Config::parse(
            "api_keys = [\"k-one\"]\noperator_keys = [\"k-two\"]\n\
             [[keys]]\nkey = \"k-three\"\nweight = 2\n",
        )
        .unwrap();
        let text = serde_json::to_string(&redacted(&config)).unwrap();
        assert!(!text.contains("k-"), "{text}");
        assert_eq!(redacted(&config).keys[0].weight, 2);
    }

    fn probe(feature: &'static str, ok: bool, required: bool, speed: bool) -> Probe {
        Probe {
            feature,
            ok,
            required,
            speed,
            detail: String::new(),
        }
    }

    #[test]
    fn a_missing_speed_feature_leaves_isolation_complete_and_a_missing_cgroup_does_not() {
        let mut probes = vec![
            probe("user namespaces", true, true, false),
            probe("cgroup attach", false, false, true),
            probe("huge pages", false, false, true),
            probe("warm path", false, false, true),
        ];
        assert_eq!(verdict(&probes, true), "isolation: complete");
        probes.push(probe("cgroups", false, false, false));
        assert_eq!(
            verdict(&probes, true),
            "isolation: INCOMPLETE, allowed by allow_incomplete_isolation"
        );
    }
}
