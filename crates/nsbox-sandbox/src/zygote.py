# nsbox zygote: a warm interpreter that starts one sandbox per run and never runs user code.
#
# Appended to the harness and passed to `python3 -I -B -c`. fd 3 is the control socket
# (SOCK_SEQPACKET) to the spawner, on which supervisors send run sockets; fd 4 is nsbox
# itself built as a shared library (a file, or a sealed memfd holding the copy a static
# build carries), whose nsbox_enter_run() builds the run's sandbox.
import ctypes
import os
import socket


def _nsbox_warm(template, max_forks, huge_pages, nested_runs, grows_ml):
    lib = ctypes.PyDLL("/proc/self/fd/4")
    if lib.nsbox_zygote_init(ctypes.c_int(nested_runs)) != 0:
        raise SystemExit("nsbox zygote: initialisation failed")
    os.close(4)
    if huge_pages:
        # The warm-up's object arenas in one region, which collapses into huge pages with
        # the rest of the heap (warm.rs); the runs inherit it and map new arenas alone.
        lib.nsbox_zygote_arenas.restype = ctypes.c_void_p
        arenas = lib.nsbox_zygote_arenas()
        if arenas:
            ctypes.pythonapi.PyObject_SetArenaAllocator(ctypes.c_void_p(arenas))

    # OpenBLAS starts its threads as it loads, and OpenMP on its first parallel region,
    # sized by the environment; a zygote with threads cannot clone a run (warm.rs), so
    # every run would go cold. The stack loads here with one thread per pool, the
    # environment is put back for the runs (theirs is a cold run's), and each run sizes
    # its pools as that environment says (_nsbox_thread_pools).
    pool_sizes = {v: os.environ[v] for v in _NSBOX_THREAD_POOLS if v in os.environ}
    os.environ.update({v: "1" for v in pool_sizes})
    if template in ("scientific", "ml"):
        # Import and exercise the stack so lazy imports, caches and the font manager are
        # done here once, not in every run.
        _nsbox_prepare_matplotlib()
        import matplotlib
        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        import scipy.stats
        import seaborn as sns

        # rc_context undoes any style change the exercise makes.
        with matplotlib.rc_context():
            df = pd.DataFrame({"a": np.arange(20), "b": np.random.normal(size=20), "c": list("ab" * 10)})
            str(df.describe())
            # A DataFrame's HTML, as a run that asks for notebook results shows it: its
            # formatter's modules are imported on first use.
            df.describe()._repr_html_()
            repr(df.groupby("c").mean())
            f"{df['a'].mean()}"
            scipy.stats.ttest_1samp(df["b"], 0.0)
            sns.scatterplot(data=df, x="a", y="b", hue="c")
            plt.plot([1, 2, 3], label="x")
            plt.legend()
            # The way a run's shown figures take: savefig, then the harness's PNG writer.
            _nsbox_figure_png(plt.gcf())
            plt.close("all")
            del df
        # Libraries' deprecation notices about the warm-up's own calls would go to the
        # server's log (the zygote's stderr), not to any run; catch_warnings also puts the
        # filters back, so runs see their warnings as a cold interpreter would.
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The whole of a result's way out (its HTML, markdown table and JSON), so a run
            # that asks inherits that code already specialised rather than warming it.
            _nsbox_warm_results(pd.DataFrame({"a": np.arange(20), "b": np.arange(20) * 0.5}).describe())
            _nsbox_warm_files()
            if template == "ml":
                _nsbox_warm_models()

    # What the harness imports in every run (traceback pulls in tokenize, re, linecache;
    # ast finds the last expression of a run that asks for results), imported once here so
    # no fork pays for it.
    import ast
    import base64
    import builtins
    import importlib.machinery
    import io
    import json
    import random
    import resource
    import stat
    import struct
    import traceback
    import types

    os.environ.update(pool_sizes)
    pools = _nsbox_thread_pools()
    traceback.format_exception(ValueError, ValueError("warm"), None)
    _nsbox_split_last_expression("x = 1\nx")
    _nsbox_warm_results(1)
    _nsbox_freeze(lib, huge_pages)

    import signal

    # Runs' inits are never waited for (each reports its own run's status): the kernel
    # reaps them, so none lingers as a zombie (nor a grown zygote that ends).
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    if grows_ml:
        # The ml template is this one plus scikit-learn and statsmodels: forked from it now,
        # its zygote shares what this warm-up made instead of holding a copy of its own.
        if os.fork() == 0:
            pools = _nsbox_grow_ml(lib, huge_pages, pool_sizes)
        else:
            os.close(5)
    control = socket.socket(fileno=3)
    # With a pidfd of this process: the spawner ends this zygote through it if it stops
    # answering pings (its pid here means nothing in the spawner's namespace).
    me = os.pidfd_open(os.getpid())
    try:
        socket.send_fds(control, [b"ready"], [me])
    except OSError:
        # The spawner let go of this zygote while it warmed up (a successor was ready
        # first, or the server is stopping): nothing to serve.
        return
    os.close(me)
    forks = 0
    prewarm = max(1, min(50, max_forks // 10))
    # The fork limit is where replacement starts, not where runs stop: this zygote keeps
    # taking runs until its successor is warm and the spawner closes the control socket
    # (EOF below). Stopping at the limit sent every run cold while a scientific successor
    # warmed up under load.
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            break
        if not msg:
            break
        if msg == b"ping":
            # The spawner's liveness check: answered between runs, never during one.
            try:
                control.send(b"pong")
            except OSError:
                break
            continue
        if not fds:
            continue
        forks += 1
        past = forks - (max_forks - prewarm)
        if past >= 0 and past % prewarm == 0:
            # Ask for a successor, so it is warm by the limit; asked again every `prewarm`
            # forks in case one died while warming.
            try:
                control.send(b"replace-soon")
            except OSError:
                break
        # Clones the run's init into fresh namespaces; init builds the sandbox and forks the
        # run's Python process, and 2 comes back in that process. Around it, what os.fork
        # does around fork(): the interpreter's own at-fork work and every library's
        # at-fork hooks (matplotlib drops its open fonts, random reseeds), run while the
        # zygote's descriptors still have their numbers. Init runs no Python.
        ctypes.pythonapi.PyOS_BeforeFork()
        rc = lib.nsbox_enter_run(fds[0])
        if rc != 2:
            ctypes.pythonapi.PyOS_AfterFork_Parent()
            continue
        ctypes.pythonapi.PyOS_AfterFork_Child()
        # The run must see the control socket closed once a retiring zygote exits.
        control.close()
        # The Python process's own steps: nobody, no privileges, seccomp.
        if lib.nsbox_continue_run() != 0:
            os._exit(127)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if pools is not None:
            # Here rather than once a pooled sandbox is claimed: a new OpenBLAS thread
            # spins for a while, and on the request path that cost a pandas run at 2 CPUs
            # more than it did here (scripts/bench/pair.py, both orders).
            pools()
        import random

        random.seed()
        np_random = sys.modules.get("numpy.random")
        if np_random is not None:
            np_random.seed()
        _nsbox_exit(_nsbox_main())


def _nsbox_freeze(lib, huge_pages):
    """Ends a warm-up: what exists now is shared with every fork."""
    import gc

    gc.collect()
    # Freezing keeps the cyclic collector from touching (and so copying) these objects'
    # pages in each run.
    gc.freeze()
    if huge_pages:
        # The memory every run copies, in 2 MiB pages from here on (hugepages.rs).
        lib.nsbox_zygote_huge_pages()


def _nsbox_grow_ml(lib, huge_pages, pool_sizes):
    """Makes this fork of the scientific zygote the ml one: its own control socket (fd 5,
    now 3), its name, then the models' warm-up. Returns its thread pools' sizer."""
    os.dup2(5, 3)
    os.close(5)
    # Before anything is allocated: what is in memory now is the scientific zygote's.
    lib.nsbox_zygote_grown(ctypes.c_int(huge_pages))
    _nsbox_name_template("scientific", "ml")
    os.environ.update({v: "1" for v in pool_sizes})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _nsbox_warm_models()
    os.environ.update(pool_sizes)
    pools = _nsbox_thread_pools()
    _nsbox_freeze(lib, huge_pages)
    return pools


def _nsbox_name_template(old, new):
    """Names this zygote's template in its command line (/proc/<pid>/cmdline, ps), which a
    zygote forked from another shows as the other's: the exec'd arguments are rewritten in
    place, the template's and those after it, NULs after them (the interpreter copied its
    arguments at start and never reads these bytes again)."""
    with open("/proc/self/cmdline", "rb") as f:
        args = f.read().split(b"\0")
    with open("/proc/self/stat", "rb") as f:
        # Field 48, arg_start: the 46th after the command name's closing parenthesis.
        arg_start = int(f.read().rsplit(b")", 1)[1].split()[45])
    if args[5] != old.encode():
        return
    at = sum(len(a) + 1 for a in args[:5])
    tail = b"\0".join(args[5:])
    renamed = b"\0".join([new.encode()] + args[6:])
    renamed += b"\0" * (len(tail) - len(renamed))
    ctypes.memmove(arg_start + at, renamed, len(renamed))


# The thread pools run_env sizes to the run's CPU quota, each started by its library.
_NSBOX_THREAD_POOLS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _nsbox_thread_pools():
    """What a run calls to size the pools of the libraries this zygote loaded to what the
    environment asks (a cold run's size), or None when that is the one thread they have."""
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    if threads <= 1 or "numpy" not in sys.modules:
        return None
    # Found here once (it walks the loaded libraries); each run only sets the sizes.
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        print("nsbox zygote: no threadpoolctl in the root filesystem: warm runs keep one "
              "thread per pool", file=sys.stderr)
        return None

    controller = ThreadpoolController()
    return lambda: controller.limit(limits=threads)


def _nsbox_warm_results(value):
    """Formats value as a run's last expression would be, into a sink."""
    import io

    caps = {"max_count": 1, "max_bytes": 1 << 20, "max_total_bytes": 1 << 20, "markdown_rows": 20}
    _NsboxResults(io.BytesIO(), caps).publish("execute_result", value)


def _nsbox_warm_files():
    """pandas' Excel and Parquet engines. Code reaches them through pandas alone
    (pd.read_excel, df.to_parquet), so the template choice cannot see them: every pandas
    run forks with them loaded. Small (about 10 MiB); imported on first use they cost
    about 300 ms a run."""
    import io

    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"x": np.arange(20.0), "s": list("ab" * 10)})
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as writer:
        df.to_excel(writer, sheet_name="a", index=False)
    pd.read_excel(io.BytesIO(buf.getvalue()), sheet_name=None)
    # fastparquet writes to paths only; the template's /tmp is its own.
    df.to_parquet("/tmp/nsbox-warm.parquet", engine="fastparquet")
    pd.read_parquet("/tmp/nsbox-warm.parquet", engine="fastparquet")
    os.remove("/tmp/nsbox-warm.parquet")


def _nsbox_warm_models():
    """scikit-learn and statsmodels, imported and each used once so the modules they load
    on first use are loaded here too (about 60 MiB more than the scientific template)."""
    import numpy as np
    import pandas as pd
    import sklearn.datasets
    import sklearn.ensemble
    import sklearn.linear_model
    import sklearn.metrics
    import sklearn.model_selection
    import sklearn.pipeline
    import sklearn.preprocessing
    import statsmodels.api
    import statsmodels.formula.api as smf

    df = pd.DataFrame({"x": np.arange(20.0), "y": np.arange(20.0) * 2 + np.sin(np.arange(20.0))})
    smf.ols("y ~ x", data=df).fit().summary().as_text()
    X, y = sklearn.datasets.make_classification(n_samples=40, n_features=4, random_state=0)
    model = sklearn.pipeline.make_pipeline(
        sklearn.preprocessing.StandardScaler(), sklearn.linear_model.LogisticRegression()
    )
    model.fit(X, y).score(X, y)


_nsbox_template, _nsbox_max_forks = sys.argv[1], int(sys.argv[2])
_nsbox_huge_pages, _nsbox_nested_runs = sys.argv[3] == "1", sys.argv[4] == "1"
_nsbox_grows_ml = sys.argv[5] == "1"
# Runs see the argv of `python3 -c`, as on the cold path.
sys.argv = ["-c"]
_nsbox_warm(_nsbox_template, _nsbox_max_forks, _nsbox_huge_pages, _nsbox_nested_runs, _nsbox_grows_ml)
