#!/usr/bin/env python3
"""What each library the warm templates load costs a fresh interpreter: the anonymous memory
(its objects), the file pages (its code) and the time its import adds, measured inside real
nsbox runs. The numbers behind the idle-memory floor in docs/operating.md: a warm template
holds one copy of what its libraries make at import, and idle memory is mostly that.

    python3 scripts/bench/imports.py URL [ROUNDS]

URL is a running `nsbox serve --mode cold --scanner off`: cold, so every run is a fresh
interpreter with nothing imported yet (a warm server's runs inherit the imports and would show
nothing); the scanner off, as the program reads its own /proc/self/smaps_rollup, which the
scanner's policy refuses (the sandbox is the same either way). Each round is
one run that takes the warm-up's steps in the zygote's order (crates/nsbox-sandbox/src/
zygote.py) and reads its own /proc/self/smaps_rollup after each, after a collection as the
zygote's freeze does. Prints the median over ROUNDS (default 3) of each step.
"""

import json
import statistics
import sys
import urllib.request

# One run's program: each step, then the memory and time it added. The steps are the
# zygote's warm-up, grouped as its templates hold them.
PROGRAM = r'''
import gc, io, json, os, sys, time

def reading():
    gc.collect()
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields["Anonymous"], fields["Rss"] - fields["Anonymous"], time.perf_counter()

def numpy_():
    import numpy
def pandas_():
    import pandas
def pyplot():
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot
def scipy_stats():
    import scipy.stats
def seaborn_():
    import seaborn
def file_engines():
    import openpyxl, fastparquet
def scientific_exercise():
    import numpy as np, pandas as pd, scipy.stats, seaborn as sns, matplotlib.pyplot as plt
    df = pd.DataFrame({"a": np.arange(20), "b": np.random.normal(size=20), "c": list("ab" * 10)})
    str(df.describe()); df.describe()._repr_html_(); repr(df.groupby("c").mean())
    scipy.stats.ttest_1samp(df["b"], 0.0)
    sns.scatterplot(data=df, x="a", y="b", hue="c")
    plt.savefig(io.BytesIO(), format="png"); plt.close("all")
def sklearn_():
    import sklearn.datasets, sklearn.ensemble, sklearn.linear_model, sklearn.metrics
    import sklearn.model_selection, sklearn.pipeline, sklearn.preprocessing
def statsmodels_():
    import statsmodels.api, statsmodels.formula.api
def models_exercise():
    import numpy as np, pandas as pd, sklearn.datasets, sklearn.linear_model, sklearn.pipeline
    import sklearn.preprocessing, statsmodels.formula.api as smf
    df = pd.DataFrame({"x": np.arange(20.0), "y": np.arange(20.0) * 2})
    smf.ols("y ~ x", data=df).fit().summary().as_text()
    X, y = sklearn.datasets.make_classification(n_samples=40, n_features=4, random_state=0)
    sklearn.pipeline.make_pipeline(sklearn.preprocessing.StandardScaler(),
                                   sklearn.linear_model.LogisticRegression()).fit(X, y)

steps = [numpy_, pandas_, pyplot, scipy_stats, seaborn_, file_engines, scientific_exercise,
         sklearn_, statsmodels_, models_exercise]
out, last = [], reading()
for step in steps:
    step()
    now = reading()
    out.append([step.__name__.rstrip("_"), now[0] - last[0], now[1] - last[1], (now[2] - last[2]) * 1000])
    last = reading()
print(json.dumps({"steps": out}))
'''

# Which template holds each step's memory (the ml template grows from the scientific one).
TEMPLATE = {"sklearn": "ml", "statsmodels": "ml", "models_exercise": "ml"}


def run_once(url):
    body = json.dumps({"code": PROGRAM, "lang": "python", "timeout": 120}).encode()
    req = urllib.request.Request(url + "/v1/tools/code", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=180) as resp:
        answer = json.load(resp)
    if answer.get("exit_code") != 0:
        raise SystemExit(f"the measuring run failed: {answer.get('stderr', '')[-2000:]}")
    return json.loads(answer["stdout"])["steps"]


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    url = sys.argv[1].rstrip("/")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results = [run_once(url) for _ in range(rounds)]
    print(f"{'step':22s} {'template':10s} {'anon MiB':>8s} {'file MiB':>8s} {'ms':>7s}")
    totals = {}
    for i, (name, *_) in enumerate(results[0]):
        anon, files, ms = (statistics.median(r[i][k] for r in results) for k in (1, 2, 3))
        template = TEMPLATE.get(name, "scientific")
        print(f"{name:22s} {template:10s} {anon / 1024:8.1f} {files / 1024:8.1f} {ms:7.0f}")
        t = totals.setdefault(template, [0.0, 0.0, 0.0])
        t[0], t[1], t[2] = t[0] + anon, t[1] + files, t[2] + ms
    for template, (anon, files, ms) in totals.items():
        print(f"{'all of ' + template:22s} {template:10s} {anon / 1024:8.1f} {files / 1024:8.1f} {ms:7.0f}")


if __name__ == "__main__":
    main()
