# nsbox harness: runs the user's code as `python3 -c` would, and returns matplotlib figures.
#
# It is passed to `python3 -I -B -c`, reads the code from fd 3 and writes each figure as a
# length-prefixed PNG to fd 4. Everything it defines stays out of the user's namespace.
import sys


# What the current run's show() does; set by _nsbox_main.
_nsbox_state = {"show": lambda: None}


class _NsboxBackendFinder:
    """Provides `nsbox_backend` (MPLBACKEND=module://nsbox_backend): the Agg canvas with
    a show() that hands figures to nsbox. It is built only when matplotlib loads its
    backend, so code that never plots never imports matplotlib."""

    def find_spec(self, name, path=None, target=None):
        if name != "nsbox_backend":
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from matplotlib.backends import backend_agg

        module.FigureCanvas = backend_agg.FigureCanvas
        module.FigureManager = backend_agg.FigureManager
        module.show = lambda *args, **kwargs: _nsbox_state["show"]()


sys.meta_path.insert(0, _NsboxBackendFinder())


# Guard rails (on unless the scanner is off): operations the sandbox blocks anyway, turned
# into a clear exception when the user's own code asks for them, instead of a bare errno.
_NSBOX_BLOCKED = {
    "os.system": "running shell commands",
    "os.exec": "replacing the process with another program",
    "os.posix_spawn": "starting other programs",
    "os.spawn": "starting other programs",
    "subprocess.Popen": "starting other programs",
    "ctypes.dlopen": "loading native libraries with ctypes",
    "socket.connect": "network access",
}
_NSBOX_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _nsbox_guard(event, args):
    what = _NSBOX_BLOCKED.get(event)
    if what is None:
        return
    if event == "socket.connect":
        address = args[1]
        # Unix sockets and the run's own loopback stay usable.
        if not isinstance(address, tuple) or address[0] in _NSBOX_LOOPBACK:
            return
    # Refuse only calls the user's code makes itself: walk past the standard library module
    # that raised the event; libraries (pandas, matplotlib...) keep their internal uses.
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith("/usr/lib/python3"):
        frame = frame.f_back
    if frame is not None and frame.f_code.co_filename == "<string>":
        raise PermissionError(f"nsbox: {what} is not allowed in this sandbox ({event})")


def _nsbox_prepare_matplotlib():
    import os

    # matplotlib wants a writable cache directory; copying the font cache built into the
    # root filesystem saves every run from rebuilding it.
    cache_src = "/usr/local/share/nsbox/mplconfig"
    cache_dst = os.environ.get("MPLCONFIGDIR")
    if cache_dst and os.path.isdir(cache_src):
        os.makedirs(cache_dst, exist_ok=True)
        for name in os.listdir(cache_src):
            with open(os.path.join(cache_src, name), "rb") as src:
                with open(os.path.join(cache_dst, name), "wb") as dst:
                    dst.write(src.read())


def _nsbox_main():
    import builtins
    import io
    import os
    import struct
    import traceback
    import types

    with open(3, "rb", closefd=True) as f:
        source = f.read().decode("utf-8")
    plots_out = open(4, "wb", buffering=0, closefd=True)
    max_plots = int(os.environ.get("NSBOX_MAX_PLOTS", "16"))
    state = {"emitted": 0, "dropped": 0}

    # Output reaches the caller even if the run is killed at its timeout.
    sys.stdout.reconfigure(line_buffering=True)

    _nsbox_prepare_matplotlib()

    def emit_open_figures():
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        # Figure numbers grow with creation, so this is creation order.
        for num in sorted(pyplot.get_fignums()):
            fig = pyplot.figure(num)
            if state["emitted"] >= max_plots:
                state["dropped"] += 1
            else:
                buf = io.BytesIO()
                # Level 1 encodes several times faster than the default for a few % more bytes.
                fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
                data = buf.getvalue()
                plots_out.write(struct.pack("<I", len(data)) + data)
                state["emitted"] += 1
            pyplot.close(fig)

    _nsbox_state["show"] = emit_open_figures

    if os.environ.get("NSBOX_GUARD_RAILS") == "1":
        sys.addaudithook(_nsbox_guard)

    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    exit_code = 0
    try:
        exec(compile(source, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        if e.code is None:
            exit_code = 0
        elif isinstance(e.code, int):
            exit_code = e.code
        else:
            print(e.code, file=sys.stderr)
            exit_code = 1
    except BaseException as e:
        # Show the user's frames only, as `python3 -c` would.
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code is not _nsbox_main.__code__:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb.tb_next if tb else None)
        exit_code = 1

    try:
        emit_open_figures()
    except Exception as e:
        print(f"nsbox: a figure could not be rendered: {e}", file=sys.stderr)
    if state["dropped"]:
        print(
            f"nsbox: plot limit ({max_plots}) reached; {state['dropped']} more figure(s) not returned",
            file=sys.stderr,
        )
    plots_out.close()
    return exit_code


def _nsbox_exit(code):
    """Ends the run as a normal exit would (threads joined, atexit handlers run, output
    flushed) but skips tearing down every module: in a warm fork that teardown costs more
    than the run."""
    import os

    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code & 0xFF)


# A zygote (warm path) defines _NSBOX_ZYGOTE and calls _nsbox_main in each fork instead.
if not globals().get("_NSBOX_ZYGOTE"):
    _nsbox_exit(_nsbox_main())
