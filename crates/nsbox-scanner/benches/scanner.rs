//! Scanner latency on ~50,000 characters of LLM-style analysis code (`cargo bench --bench scanner`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use nsbox_scanner::{analyze, analyze_parsing_everything, scan, Policy};
use rustpython_parser::{ast, Parse};

/// One block of the kind of code an LLM writes for a data question; `{i}` keeps blocks apart.
const BLOCK: &str = r#"
# ---- section {i}: regional summary -------------------------------------------------------
REGIONS_{i} = ["north", "south", "east", "west"]


@dataclass
class RegionStats{i}:
    region: str
    mean: float
    std: float
    samples: List[float] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.region}: mean={self.mean:.2f} std={self.std:.2f} n={len(self.samples)}"


def load_frame_{i}(n: int = 200, seed: int = {i}) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "region": rng.choice(REGIONS_{i}, size=n),
        "sales": rng.normal(100, 15, size=n).round(2),
        "units": rng.integers(1, 20, size=n),
        "day": pd.date_range("2024-01-01", periods=n, freq="D"),
    })
    frame["revenue"] = frame["sales"] * frame["units"]
    return frame


def summarize_{i}(frame: pd.DataFrame) -> Dict[str, RegionStats{i}]:
    out = {}
    for region, group in frame.groupby("region"):
        values = group["revenue"].tolist()
        out[region] = RegionStats{i}(region, float(np.mean(values)), float(np.std(values)), values)
    return out


frame_{i} = load_frame_{i}()
stats_{i} = summarize_{i}(frame_{i})
monthly_{i} = frame_{i}.set_index("day").resample("M")["revenue"].agg(["sum", "mean", "count"])
top_{i} = sorted(stats_{i}.values(), key=lambda s: s.mean, reverse=True)[:3]
ratios_{i} = {r: round(s.mean / max(s.std, 1e-9), 3) for r, s in stats_{i}.items()}
flags_{i} = [x for x in frame_{i}["units"] if x > 10 and x % 2 == 0]
corr_{i} = frame_{i}[["sales", "units", "revenue"]].corr().round(3)
t_{i}, p_{i} = stats.ttest_ind(frame_{i}["sales"][:50], frame_{i}["sales"][50:100])
counts_{i} = Counter(frame_{i}["region"])
print(f"section {i}: {len(frame_{i})} rows, t={t_{i}:.3f}, p={p_{i}:.4f}")
for s in top_{i}:
    print(s.describe())
print(monthly_{i}.head(3).to_string())
fig, ax = plt.subplots(1, 2, figsize=(10, 4))
frame_{i}.groupby("region")["revenue"].sum().plot(kind="bar", ax=ax[0], title="Revenue {i}")
sns.histplot(frame_{i}["sales"], bins=20, ax=ax[1])
plt.tight_layout()
plt.close(fig)
"#;

const HEADER: &str = r#"import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import seaborn as sns
from scipy import stats
"#;

/// Watched words an analysis script uses innocently, every few statements: a pandas query
/// string, files opened for reading and writing, getattr over a literal list.
const WATCHED_BLOCK: &str = r#"
big_{i} = frame_{i}.query("revenue > 1000 and units > 5")
with open("summary_{i}.txt", "w") as fh:
    fh.write(monthly_{i}.to_string())
with open("summary_{i}.txt") as fh:
    lines_{i} = fh.read().splitlines()
moments_{i} = {name: getattr(frame_{i}["sales"], name)() for name in ["mean", "std", "skew"]}
"#;

fn build(extra: &str) -> String {
    build_to(extra, 50_000)
}

fn build_to(extra: &str, size: usize) -> String {
    build_with(extra, BLOCK, size)
}

fn build_with(extra: &str, block: &str, size: usize) -> String {
    let mut code = String::from(HEADER);
    code.push_str(extra);
    let mut i = 0;
    while code.len() < size {
        code.push_str(&block.replace("{i}", &i.to_string()));
        i += 1;
    }
    code
}

fn measure(label: &str, code: &str, policy: &Policy, runs: usize, f: fn(&str, &Policy) -> usize) {
    // Warm caches and the allocator before timing.
    for _ in 0..3 {
        black_box(f(black_box(code), policy));
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f(black_box(code), policy));
            t.elapsed()
        })
        .collect();
    times.sort();
    let found = f(code, policy);
    println!(
        "{label:<62} {:>6} chars  min {:>9.3?}  p50 {:>9.3?}  p90 {:>9.3?}  ({found} violations, {runs} runs)",
        code.chars().count(),
        times[0],
        times[runs / 2],
        times[runs * 9 / 10],
    );
}

fn main() {
    let policy = Policy::builtin();
    let runs = 200;
    let scan_count = |c: &str, p: &Policy| scan(c, p).len();
    let analyze_count = |c: &str, p: &Policy| analyze(c, p).violations.len();
    // The scan before the partial parse: every statement parsed once a rule may apply.
    let whole_count = |c: &str, p: &Policy| analyze_parsing_everything(c, p).violations.len();

    let clean = build("");
    measure(
        "scan: analysis code, no watched words (prefilter)",
        &clean,
        &policy,
        runs,
        scan_count,
    );

    // re.compile is an attribute, but `compile` is a watched word, so the code is parsed.
    let watched = build("import re\nPATTERN = re.compile(r'(\\d+)')\nMETHODS = [getattr(np, m) for m in ['mean', 'std']]\nwith open('/tmp/notes.txt', 'w') as out:\n    out.write('start')\n");
    measure(
        "analyze: watched words, whole parse (before)",
        &watched,
        &policy,
        runs,
        whole_count,
    );
    measure(
        "analyze: watched words, partial parse (after)",
        &watched,
        &policy,
        runs,
        analyze_count,
    );
    measure(
        "scan: watched words, partial parse",
        &watched,
        &policy,
        runs,
        scan_count,
    );

    // Watched words in every block: the partial parse has less to leave out.
    let dense = build_with("", &format!("{BLOCK}{WATCHED_BLOCK}"), 50_000);
    measure(
        "analyze: watched words in every block, whole parse (before)",
        &dense,
        &policy,
        runs,
        whole_count,
    );
    measure(
        "analyze: watched words in every block, partial (after)",
        &dense,
        &policy,
        runs,
        analyze_count,
    );

    // Imports but no watched word: only the imported modules are wanted.
    measure(
        "analyze: no watched words, whole parse (before)",
        &clean,
        &policy,
        runs,
        whole_count,
    );
    measure(
        "analyze: no watched words, partial (after)",
        &clean,
        &policy,
        runs,
        analyze_count,
    );

    // A violation is confirmed by the whole parse, so refused code costs what it did.
    let refused = build("import os\nos.system('ls -la')\n");
    measure(
        "scan: analysis code with violations (whole parse)",
        &refused,
        &policy,
        runs,
        scan_count,
    );

    // The floor under every whole scan: rustpython-parser alone (parse and drop the tree).
    let parse_only = |c: &str, _: &Policy| usize::from(ast::Suite::parse(c, "<string>").is_err());
    measure(
        "rustpython-parser alone: parse + drop (reference)",
        &watched,
        &policy,
        runs,
        parse_only,
    );

    // What a typical request costs: LLM answers are a few kB, not 50.
    let typical = build_to(
        "import re\nPATTERN = re.compile(r'(\\d+)')\nimport os\n",
        2_500,
    );
    measure(
        "scan: typical 4 kB request with violations (whole parse)",
        &typical,
        &policy,
        runs,
        scan_count,
    );
}
