# nsbox harness: runs the user's code as `python3 -c` would, and returns matplotlib figures.
#
# It is passed to `python3 -I -B -c`, reads the code from fd 3 and writes each figure as a
# length-prefixed PNG to fd 4. Everything it defines stays out of the user's namespace.
import sys


# What the current run's show() does; set by _nsbox_main.
_nsbox_state = {"show": lambda: None}
# The working directory (on the run's private /tmp): the current directory the sandbox
# starts the code in, read before any code runs; set by _nsbox_main.
_nsbox_state["workdir"] = None


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
    """matplotlib wants a writable cache directory; a copy of the font cache built into the
    root filesystem saves a run that imports it from rebuilding that cache (seconds). A
    warm interpreter has read it already, so only the directory is made; otherwise the copy
    waits for the first import of matplotlib, which most runs never make."""
    import os

    cache_dst = os.environ.get("MPLCONFIGDIR")
    if not cache_dst:
        return
    if "matplotlib" in sys.modules:
        os.makedirs(cache_dst, exist_ok=True)
        return

    class _NsboxMatplotlibCache:
        # Inert once it has copied (removing itself would shift the list the import
        # system is walking).
        copied = False

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if not cls.copied and (name == "matplotlib" or name.startswith("matplotlib.")):
                cls.copied = True
                _nsbox_copy_matplotlib_cache(cache_dst)
            return None

    sys.meta_path.insert(0, _NsboxMatplotlibCache)


def _nsbox_copy_matplotlib_cache(cache_dst):
    import os

    cache_src = "/usr/local/share/nsbox/mplconfig"
    if os.path.isdir(cache_src):
        os.makedirs(cache_dst, exist_ok=True)
        for name in os.listdir(cache_src):
            with open(os.path.join(cache_src, name), "rb") as src:
                with open(os.path.join(cache_dst, name), "wb") as dst:
                    dst.write(src.read())


# Entries a walk of the working directory visits before it stops, and how deep it goes:
# a run that plants a million files or a deep chain makes the walk end, not the server wait.
_NSBOX_MAX_ENTRIES = 20000
_NSBOX_MAX_DEPTH = 32


def _nsbox_frame(out, kind, payload):
    """Frames on the plots pipe: a kind byte (P: a PNG, F: a file, S: a file skipped, X: the
    exit code, last), a length, the bytes."""
    import struct

    out.write(kind + struct.pack("<I", len(payload)) + payload)


def _nsbox_walk(notes, skipped=None):
    """The regular files under the working directory, as {relative path: stat signature},
    found without following any link and without leaving the working directory's file
    system. What is not returned (links, FIFOs, sockets, devices, directories past the
    depth, entries past the count) goes in `skipped` as {path: (reason, signature)}, so a
    call reports only what it created or changed; `notes` says when the walk failed."""
    import os
    import stat

    if skipped is None:
        skipped = {}
    found = {}
    try:
        root = os.open(_nsbox_state["workdir"], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        notes.append(f"the working directory cannot be read ({e.strerror})")
        return found
    device = os.fstat(root).st_dev
    stack = [(root, "", 0)]
    visited = 0
    while stack:
        dirfd, prefix, depth = stack.pop()
        try:
            with os.scandir(dirfd) as entries:
                for entry in entries:
                    visited += 1
                    rel = prefix + entry.name
                    if visited > _NSBOX_MAX_ENTRIES:
                        skipped[rel] = ("entry_limit", None)
                        _nsbox_stack_close(stack)
                        return found
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    signature = (st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                    if stat.S_ISDIR(st.st_mode):
                        if depth + 1 >= _NSBOX_MAX_DEPTH:
                            skipped[rel] = ("too_deep", signature)
                            continue
                        try:
                            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
                        except OSError:
                            continue
                        if os.fstat(sub).st_dev != device:
                            os.close(sub)
                            continue
                        stack.append((sub, rel + "/", depth + 1))
                    elif stat.S_ISREG(st.st_mode):
                        found[rel] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                    else:
                        reason = "symlink" if stat.S_ISLNK(st.st_mode) else "not_regular_file"
                        skipped[rel] = (reason, signature)
        except OSError:
            pass
        finally:
            os.close(dirfd)
    return found


def _nsbox_stack_close(stack):
    import os

    for dirfd, _, _ in stack:
        os.close(dirfd)
    stack.clear()


def _nsbox_parts(rel):
    """The components of a relative path inside the working directory (the server checked
    it; the code could not have, but a session's file op comes from the server)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("not a relative path inside the working directory")
    return parts


def _nsbox_parent(parts, create):
    """The directory that holds the last of `parts`, opened one component at a time from
    the working directory with no link followed and without leaving its file system (the
    code can plant `dir -> /` as well as a file link). With `create`, missing directories
    are made on the way, each opened as it is made. Returns (dirfd, device)."""
    import errno
    import os

    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dirfd = os.open(_nsbox_state["workdir"], flags)
    try:
        device = os.fstat(dirfd).st_dev
        for part in parts[:-1]:
            try:
                sub = os.open(part, flags, dir_fd=dirfd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o755, dir_fd=dirfd)
                except FileExistsError:
                    pass
                sub = os.open(part, flags, dir_fd=dirfd)
            os.close(dirfd)
            dirfd = sub
            if os.fstat(dirfd).st_dev != device:
                raise NotADirectoryError(f"{part}: another file system")
    except OSError as e:
        os.close(dirfd)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotADirectoryError("a component of the path is a symbolic link or not a directory") from None
        raise
    return dirfd, device


def _nsbox_open_regular(rel):
    """Opens a file of the working directory for reading: no link followed on the way
    (each directory, then the file), never blocking (a FIFO opens at once and is refused),
    regular files on the working directory's own file system only. Returns (fd, size)."""
    import os
    import stat

    parts = _nsbox_parts(rel)
    dirfd, device = _nsbox_parent(parts, False)
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dirfd)
    finally:
        os.close(dirfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_dev != device:
        os.close(fd)
        raise IsADirectoryError("not a regular file")
    return fd, st.st_size


def _nsbox_send_file(out, rel, caps, sent, notes):
    """Sends one file as an F frame: a JSON header, then the content unless a cap is
    passed (then the header says truncated and `notes` says which cap)."""
    import json
    import os

    try:
        fd, size = _nsbox_open_regular(rel)
    except (OSError, ValueError):
        return False
    try:
        header = {"path": rel, "size": size, "truncated": False}
        cap = None
        if sent["count"] >= caps["max_count"]:
            cap = f"file count limit ({caps['max_count']})"
        elif size > caps["max_file_bytes"]:
            cap = f"file size limit ({caps['max_file_bytes']} bytes)"
        elif sent["bytes"] + size > caps["max_total_bytes"]:
            cap = f"total file size limit ({caps['max_total_bytes']} bytes)"
        content = b""
        if cap is None:
            chunks = []
            left = size
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            content = b"".join(chunks)
            # A file that changed size while read is sent as read.
            header["size"] = len(content)
            sent["bytes"] += len(content)
        else:
            header["truncated"] = True
            notes.append(f"{rel}: not returned, past the {cap}")
    finally:
        os.close(fd)
    sent["count"] += 1
    head = json.dumps(header).encode()
    import struct

    _nsbox_frame(out, b"F", struct.pack("<I", len(head)) + head + content)
    return True


def _nsbox_put_files(files):
    """Writes the input files into the working directory (as the run's own user), each
    beneath it with no link followed at any component, into regular files only: what the
    code planted (a link to `/`, a FIFO, a socket) is refused at once, never written
    through or waited on."""
    import base64
    import os
    import stat

    for f in files:
        parts = _nsbox_parts(f["path"])
        dirfd, device = _nsbox_parent(parts, True)
        try:
            try:
                st = os.lstat(parts[-1], dir_fd=dirfd)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise IsADirectoryError(f"{f['path']} is {kind}")
            append = bool(f.get("append"))
            if st is not None and st.st_nlink > 1:
                if append:
                    # Appending would change the other names too.
                    raise IsADirectoryError(f"{f['path']} has other names (hard links); send it whole")
                # A hard link the code made to a file elsewhere in /tmp: the path gets the
                # new content, the other name keeps its own.
                os.unlink(parts[-1], dir_fd=dirfd)
            # Non-blocking, so a FIFO swapped in after the check fails (ENXIO) or opens
            # at once, then is refused below: nothing here waits for a reader.
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            if append:
                flags |= os.O_APPEND
            try:
                fd = os.open(parts[-1], flags, 0o644, dir_fd=dirfd)
            except OSError as e:
                raise IsADirectoryError(f"{f['path']} is not a regular file ({e.strerror})") from None
        finally:
            os.close(dirfd)
        with open(fd, "wb", closefd=True) as out:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_dev != device:
                raise IsADirectoryError(f"{f['path']} is not a regular file")
            if not append:
                os.ftruncate(fd, 0)
            out.write(base64.b64decode(f["content_base64"]))


def _nsbox_collect(out, before, skipped_before, caps):
    """Sends the files created or changed since `before`, in path order, under the caps,
    then what was created or changed but is not returned (S frames: path and reason); says
    on stderr what was cut."""
    import json
    import struct

    notes = []
    skipped = {}
    after = _nsbox_walk(notes, skipped)
    sent = {"count": 0, "bytes": 0}
    for rel in sorted(after):
        if before.get(rel) != after[rel]:
            _nsbox_send_file(out, rel, caps, sent, notes)
    for rel in sorted(skipped):
        if skipped_before.get(rel) != skipped[rel]:
            _nsbox_frame(out, b"S", json.dumps({"path": rel, "reason": skipped[rel][0]}).encode())
    for note in notes:
        print(f"nsbox: {note}", file=sys.stderr)


# ---- Notebook results (asked for with "results": true; docs/results.md) ------------------
# The value of the code's last expression, what it passes to display(), and the figures it
# shows become Jupyter output objects (nbformat v4), sent as R frames on the plots pipe; an
# exception becomes one E frame. Nothing here runs, or is imported, for a run that did not
# ask, so its answer stays the spec's to the byte.

_NSBOX_RESULT_MIMES = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_json_", "application/json"),
    ("_repr_latex_", "text/latex"),
)
_NSBOX_CHART_MIME = "application/vnd.nsbox.chart+json"
# Points a chart series lists one by one; past this it is summarised.
_NSBOX_CHART_POINTS = 200


class _NsboxResults:
    """Formats objects into MIME bundles under the run's caps and sends them as frames."""

    def __init__(self, out, caps):
        self.out = out
        self.max_count = int(caps["max_count"])
        self.max_bytes = int(caps["max_bytes"])
        self.max_total = int(caps["max_total_bytes"])
        self.markdown_rows = int(caps["markdown_rows"])
        self.sent = 0
        self.sent_bytes = 0
        self.shown_figures = set()

    def publish(self, output_type, obj, raw=None, metadata=None):
        import json

        if self.sent >= self.max_count:
            return
        data, md = raw if raw is not None else _nsbox_format(obj, self)
        md = dict(md or {})
        md.update(metadata or {})
        output = {"output_type": output_type, "data": data, "metadata": md}
        if output_type == "execute_result":
            output["execution_count"] = None
        payload = json.dumps(output, default=str).encode()
        room = min(self.max_bytes, self.max_total - self.sent_bytes)
        if len(payload) > room:
            # Past a bound: the plain text alone, itself cut to fit, and said so.
            text = data.get("text/plain", "")
            output["data"] = {"text/plain": text[: max(0, room // 2 - 256)]}
            output["metadata"] = {"truncated": True}
            payload = json.dumps(output, default=str).encode()
            if len(payload) > room:
                return
        _nsbox_frame(self.out, b"R", payload)
        self.sent += 1
        self.sent_bytes += len(payload)

    def display(self, *objs, include=None, exclude=None, metadata=None, raw=False, **_):
        for obj in objs:
            if raw:
                self.publish("display_data", None, raw=(dict(obj), metadata))
            else:
                self.publish("display_data", obj, metadata=metadata)

    def figure(self, fig, png):
        """A figure shown (or open at the end) as a display result, once."""
        if id(fig) in self.shown_figures:
            return
        self.shown_figures.add(id(fig))
        self.publish("display_data", fig, raw=(_nsbox_figure_bundle(fig, png), {}))


def _nsbox_figure_png(fig):
    """The PNG of a figure the run shows: `fig.savefig(format="png")` as the user would get
    it (size, dpi, colours, their savefig settings, matplotlib's metadata), with the pixels
    written by _nsbox_png_save instead of Pillow's PNG writer."""
    import io

    from PIL import Image

    Image.register_save("NSBOX_PNG", _nsbox_png_save)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"format": "NSBOX_PNG"})
    return buf.getvalue()


def _nsbox_png_save(im, fp, filename):
    """A Pillow save handler writing a PNG with the "up" filter on every row and zlib at
    level 1. Pillow's writer tries all five row filters on every row and keeps the best:
    11 ms for the spec's 1000x600 plot, and still 6.7 ms with compression off; this
    writer takes 3.8 ms. A chart's rows are mostly the row above, which "up" turns into
    zeros: the same pixels came out in 12 % fewer bytes (44.5 against 50.6 KB). An opaque
    figure (every alpha 255) is written as RGB, a quarter fewer bytes to compress; one
    with any transparency keeps RGBA."""
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    if im.mode != "RGBA":
        # matplotlib always hands over RGBA; anything else gets Pillow's own writer.
        return Image.SAVE["PNG"](im, fp, filename)
    width, height = im.size
    if im.getchannel("A").getextrema() == (255, 255):
        colour_type, mode, stride = 2, "RGB", width * 3
    else:
        colour_type, mode, stride = 6, "RGBA", width * 4

    def chunk(kind, data):
        fp.write(struct.pack(">I", len(data)) + kind)
        fp.write(data)
        fp.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))

    fp.write(b"\x89PNG\r\n\x1a\n")
    chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
    # In Pillow's order: matplotlib's text, then the resolution in pixels per metre.
    info = im.encoderinfo.get("pnginfo")
    for kind, data, *_ in info.chunks if info is not None else ():
        chunk(kind, data)
    dpi = im.encoderinfo.get("dpi")
    if dpi:
        chunk(b"pHYs", struct.pack(">IIB", int(dpi[0] / 0.0254 + 0.5), int(dpi[1] / 0.0254 + 0.5), 1))
    deflate = zlib.compressobj(1)
    # A few rows at a time (Pillow packs them, dropping alpha when opaque), each after its
    # filter byte less the row above it, modulo 256 (PNG's "up"; above the first row is
    # zeros). Small buffers, reused: in a run every newly touched page is a page fault, and
    # whole-image copies cost a fresh run 700 more of them (1 ms) for this plot.
    strip = 16
    rows = np.empty((strip, stride + 1), np.uint8)
    rows[:, 0] = 2
    above = np.zeros(stride, np.uint8)
    for top in range(0, height, strip):
        n = min(strip, height - top)
        band = im.crop((0, top, width, top + n)).tobytes("raw", mode)
        pixels = np.frombuffer(band, np.uint8).reshape(n, stride)
        np.subtract(pixels[0], above, out=rows[0, 1:])
        np.subtract(pixels[1:], pixels[:-1], out=rows[1:n, 1:])
        above = pixels[-1]
        data = deflate.compress(rows[:n])
        if data:
            chunk(b"IDAT", data)
    chunk(b"IDAT", deflate.flush())
    chunk(b"IEND", b"")


def _nsbox_figure_bundle(fig, png):
    """A matplotlib figure's MIME bundle: its text, its PNG and the summary of its chart."""
    import base64

    data = {
        "text/plain": _nsbox_safe_repr(fig),
        "image/png": base64.b64encode(png).decode(),
    }
    chart = _nsbox_attempt(lambda: _nsbox_chart(fig))
    if isinstance(chart, dict):
        data[_NSBOX_CHART_MIME] = chart
    return data


def _nsbox_attempt(f):
    try:
        return f()
    except Exception as e:
        return e


def _nsbox_safe_repr(obj):
    try:
        return repr(obj)
    except Exception as e:
        return f"<{type(obj).__name__} object: repr raised {type(e).__name__}: {e}>"


def _nsbox_real_method(obj, name):
    """obj's display method `name`, as IPython takes it: not on classes themselves, and not
    from objects that answer every attribute (proxies, mocks)."""
    if isinstance(obj, type):
        return None
    try:
        if getattr(obj, "_nsbox_no_such_attribute_", None) is not None:
            return None
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def _nsbox_mime_value(mime, value):
    import base64

    if isinstance(value, (bytes, bytearray)):
        if mime.startswith("image/") and mime != "image/svg+xml":
            return base64.b64encode(bytes(value)).decode()
        return bytes(value).decode("utf-8", "replace")
    return value


def _nsbox_format(obj, results):
    """The MIME bundle of obj, from its own display protocol as IPython's formatter reads
    it, plus what nsbox adds: markdown tables for pandas, Plotly and Altair's JSON, and the
    chart summary of matplotlib figures. A repr that raises becomes a line saying so."""
    data, metadata = {}, {}
    special = _nsbox_attempt(lambda: _nsbox_special(obj, results))
    if isinstance(special, tuple):
        data.update(special[0])
        metadata.update(special[1])
    elif isinstance(special, Exception):
        data["text/plain"] = f"[nsbox: the display of {type(obj).__name__} raised {type(special).__name__}: {special}]"
    if not data:
        method = _nsbox_real_method(obj, "_repr_mimebundle_")
        if method is not None:
            got = _nsbox_attempt(lambda: method(include=None, exclude=None))
            if isinstance(got, tuple) and len(got) == 2:
                got, md = got
                if isinstance(md, dict):
                    metadata.update(md)
            if isinstance(got, dict):
                data.update({k: _nsbox_mime_value(k, v) for k, v in got.items()})
            elif isinstance(got, Exception):
                data["text/plain"] = f"[nsbox: _repr_mimebundle_ raised {type(got).__name__}: {got}]"
        for name, mime in _NSBOX_RESULT_MIMES:
            if mime in data:
                continue
            method = _nsbox_real_method(obj, name)
            if method is None:
                continue
            got = _nsbox_attempt(method)
            if isinstance(got, tuple) and len(got) == 2:
                got, md = got
                if isinstance(md, dict):
                    metadata[mime] = md
            if isinstance(got, Exception):
                data.setdefault(
                    "text/plain",
                    f"[nsbox: {name} raised {type(got).__name__}: {got}]",
                )
            elif got is not None:
                data[mime] = _nsbox_mime_value(mime, got)
    if "text/plain" not in data:
        data["text/plain"] = _nsbox_safe_repr(obj)
    return data, metadata


def _nsbox_special(obj, results):
    """Bundles for the objects nsbox knows better than their own protocol does, found only
    among modules the code already imported."""
    modules = sys.modules
    pandas = modules.get("pandas")
    if pandas is not None and isinstance(obj, (pandas.DataFrame, pandas.Series)):
        frame = obj.to_frame() if isinstance(obj, pandas.Series) else obj
        data = {
            "text/plain": repr(obj),
            "text/html": obj.to_frame().to_html() if isinstance(obj, pandas.Series) else obj._repr_html_(),
            "text/markdown": _nsbox_markdown_table(frame, results.markdown_rows),
        }
        return {k: v for k, v in data.items() if v is not None}, {}
    basedatatypes = modules.get("plotly.basedatatypes")
    if basedatatypes is not None and isinstance(obj, basedatatypes.BaseFigure):
        import json

        # Not the figure's own _repr_mimebundle_: outside a notebook plotly's default
        # renderer is a web browser.
        return {
            "application/vnd.plotly.v1+json": json.loads(obj.to_json()),
            "text/html": obj.to_html(full_html=False, include_plotlyjs="cdn"),
            "text/plain": f"<plotly figure: {len(obj.data)} trace(s)>",
        }, {}
    altair = modules.get("altair")
    if altair is not None and isinstance(obj, getattr(altair, "TopLevelMixin", ())):
        # The Vega-Lite spec itself, under its own MIME type: altair's default renderer
        # gives only HTML outside a notebook.
        major = str(getattr(altair, "SCHEMA_VERSION", "v5")).split(".")[0]
        return {
            f"application/vnd.vegalite.{major}+json": obj.to_dict(),
            "text/plain": f"<altair {type(obj).__name__}>",
        }, {}
    figure = modules.get("matplotlib.figure")
    if figure is not None and isinstance(obj, figure.Figure):
        png = _nsbox_figure_png(obj)
        results.shown_figures.add(id(obj))
        return _nsbox_figure_bundle(obj, png), {}
    return None


def _nsbox_markdown_table(frame, rows):
    """A bounded markdown table of a DataFrame, for a model to read: head and tail rows, at
    most 20 columns, each cell cut at 60 characters, then the shape and the dtypes."""
    total_rows, total_cols = frame.shape
    cols = list(frame.columns[:20])
    part = frame[cols] if total_cols > 20 else frame
    head = rows // 2 if total_rows > rows else total_rows
    tail = rows - head if total_rows > rows else 0

    def cell(v):
        s = str(v).replace("|", "\\|").replace("\n", " ")
        return s if len(s) <= 60 else s[:57] + "..."

    index_name = cell(frame.index.name) if frame.index.name is not None else ""
    lines = ["| " + " | ".join([index_name] + [cell(c) for c in cols]) + " |"]
    lines.append("|" + "---|" * (len(cols) + 1))

    def add(chunk):
        for idx, values in zip(chunk.index, chunk.itertuples(index=False, name=None)):
            lines.append("| " + " | ".join([cell(idx)] + [cell(v) for v in values]) + " |")

    add(part.iloc[:head])
    if tail:
        lines.append("| ... |" + " ... |" * len(cols))
        add(part.iloc[total_rows - tail :])
    more = f", first {len(cols)} shown" if total_cols > 20 else ""
    lines.append("")
    lines.append(f"{total_rows} rows × {total_cols} columns{more}")
    dtypes = ", ".join(f"{cell(c)}: {t}" for c, t in list(frame.dtypes.items())[:20])
    lines.append(f"dtypes: {dtypes}")
    return "\n".join(lines)


def _nsbox_number(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f != f or f in (float("inf"), float("-inf")):
        return None
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def _nsbox_points(xs, ys):
    """A series' points, or their aggregates when there are too many to list."""
    xs = [_nsbox_number(x) for x in xs]
    ys = [_nsbox_number(y) for y in ys]
    if len(xs) <= _NSBOX_CHART_POINTS:
        return {"points": [[x, y] for x, y in zip(xs, ys)]}
    numbers = [y for y in ys if isinstance(y, (int, float))]
    xnums = [x for x in xs if isinstance(x, (int, float))]
    summary = {"count": len(xs)}
    if xnums:
        summary.update(x_min=min(xnums), x_max=max(xnums))
    if numbers:
        summary.update(y_min=min(numbers), y_max=max(numbers), y_mean=sum(numbers) / len(numbers))
    return {"aggregate": summary, "first_points": [[x, y] for x, y in zip(xs[:10], ys[:10])]}


def _nsbox_label(artist):
    """An artist's legend label; matplotlib's own placeholders (`_child0`) are no label."""
    label = artist.get_label()
    return "" if not isinstance(label, str) or label.startswith("_") else label


def _nsbox_tick_name(axis, value):
    """The category a bar stands for, when the axis is labelled by category."""
    try:
        for tick, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
            if abs(float(tick) - float(value)) < 1e-9 and label.get_text():
                return label.get_text()
    except Exception:
        pass
    return _nsbox_number(value)


def _nsbox_axes_summary(ax):
    from matplotlib.container import BarContainer
    from matplotlib.collections import PathCollection
    from matplotlib.patches import Wedge

    summary = {
        "type": "other",
        "title": ax.get_title(),
        "x_label": ax.get_xlabel(),
        "y_label": ax.get_ylabel(),
        "x_scale": ax.get_xscale(),
        "y_scale": ax.get_yscale(),
        "series": [],
    }
    series = summary["series"]
    tagged = getattr(ax, "_nsbox_chart", None)
    if tagged is not None:
        kind, items = tagged
        summary["type"] = kind
        series.extend(items)
        return summary
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    if wedges:
        summary["type"] = "pie"
        labels = [t.get_text() for t in ax.texts]
        for i, w in enumerate(wedges):
            label = _nsbox_label(w)
            if not label and i < len(labels):
                label = labels[i]
            series.append({"label": label, "value": round((w.theta2 - w.theta1) / 360.0, 6)})
        return summary
    if ax.images:
        summary["type"] = "image"
        for im in ax.images:
            arr = im.get_array()
            shape = list(getattr(arr, "shape", []))
            clim = im.get_clim()
            series.append({"label": _nsbox_label(im), "shape": shape, "vmin": _nsbox_number(clim[0]), "vmax": _nsbox_number(clim[1])})
        return summary
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    if bars:
        summary["type"] = "bar"
        for c in bars:
            horizontal = getattr(c, "orientation", "vertical") == "horizontal"
            xs, ys = [], []
            for r in c.patches:
                if horizontal:
                    xs.append(_nsbox_tick_name(ax.yaxis, r.get_y() + r.get_height() / 2))
                    ys.append(r.get_width())
                else:
                    xs.append(_nsbox_tick_name(ax.xaxis, r.get_x() + r.get_width() / 2))
                    ys.append(r.get_height())
            entry = {"label": _nsbox_label(c)}
            entry.update(_nsbox_points(xs, ys))
            series.append(entry)
        return summary
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    if scatters:
        summary["type"] = "scatter"
        for c in scatters:
            offsets = c.get_offsets()
            entry = {"label": _nsbox_label(c)}
            entry.update(_nsbox_points([p[0] for p in offsets], [p[1] for p in offsets]))
            series.append(entry)
        return summary
    if ax.lines:
        summary["type"] = "line"
        for ln in ax.lines:
            entry = {"label": _nsbox_label(ln)}
            entry.update(_nsbox_points(ln.get_xdata(), ln.get_ydata()))
            series.append(entry)
    return summary


def _nsbox_chart(fig):
    """A machine-readable summary of a matplotlib figure, for a model that cannot see it."""
    suptitle = getattr(fig, "_suptitle", None)
    return {
        "version": 1,
        "title": suptitle.get_text() if suptitle is not None else "",
        "axes": [_nsbox_axes_summary(ax) for ax in fig.axes if ax.get_visible()],
    }


def _nsbox_tag_matplotlib_charts():
    """Histograms and box plots look like bars and lines once drawn: the calls that make
    them leave their data on the axes for the chart summary."""
    from matplotlib.axes import Axes

    if getattr(Axes, "_nsbox_tagged", False):
        return
    hist, bxp = Axes.hist, Axes.bxp

    def tagged_hist(self, x, *args, **kwargs):
        got = hist(self, x, *args, **kwargs)
        counts, edges = got[0], got[1]
        labels = kwargs.get("label")
        many = getattr(counts, "ndim", 1) > 1 or (len(counts) and hasattr(counts[0], "__len__"))
        sets = list(counts) if many else [counts]
        if not isinstance(labels, (list, tuple)):
            labels = [labels] * len(sets)
        items = [
            {
                "label": str(label) if label is not None else "",
                "bins": [_nsbox_number(e) for e in edges],
                "counts": [_nsbox_number(c) for c in cs],
            }
            for label, cs in zip(labels, sets)
        ]
        self._nsbox_chart = ("histogram", items)
        return got

    def tagged_bxp(self, bxpstats, *args, **kwargs):
        got = bxp(self, bxpstats, *args, **kwargs)
        keys = ("med", "q1", "q3", "whislo", "whishi", "mean")
        items = []
        for i, s in enumerate(bxpstats):
            item = {"label": str(s.get("label", i + 1))}
            item.update({k: _nsbox_number(s[k]) for k in keys if k in s})
            item["outliers"] = len(s.get("fliers", []))
            items.append(item)
        self._nsbox_chart = ("box", items)
        return got

    Axes.hist, Axes.bxp = tagged_hist, tagged_bxp
    Axes._nsbox_tagged = True


def _nsbox_display(*objs, **kwargs):
    """display(), for the code: publishes to the current run's results, or prints as
    IPython's does when no shell (here: no results asked for) takes it."""
    results = _nsbox_state.get("results")
    if results is None:
        print(*objs)
        return
    results.display(*objs, **kwargs)


def _nsbox_after_import(name, then):
    """Calls then(module) once `name` is imported (at once if it already is): a hook on
    modules the code may import, that nsbox itself never imports."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        then(loaded)
        return

    class _NsboxAfterImport:
        done = False

        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if cls.done or fullname != name:
                return None
            for finder in sys.meta_path:
                if finder is cls or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            cls.done = True
            original = spec.loader.exec_module

            def exec_module(module):
                original(module)
                then(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _NsboxAfterImport)


def _nsbox_start_results(plots_out, caps):
    """Results for one run (or session call): display() publishes to them."""
    import builtins

    results = _NsboxResults(plots_out, caps)
    _nsbox_state["results"] = results
    builtins.display = _nsbox_display
    if not _nsbox_state.get("results_hooked"):
        _nsbox_state["results_hooked"] = True

        def patch_ipython(module):
            module.display = _nsbox_display
            shown = sys.modules.get("IPython.display")
            if shown is not None:
                shown.display = _nsbox_display

        _nsbox_after_import("IPython.core.display_functions", patch_ipython)
        _nsbox_after_import("matplotlib.axes", lambda _: _nsbox_tag_matplotlib_charts())
    return results


def _nsbox_split_last_expression(source):
    """The code's statements and its last one when that is an expression not followed by
    `;` (IPython's rule), compiled as `<string>` so tracebacks read as before."""
    import ast

    tree = ast.parse(source, "<string>")
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        return compile(tree, "<string>", "exec"), None
    lines = source.splitlines()
    after = lines[last.end_lineno - 1][last.end_col_offset :] if last.end_lineno <= len(lines) else ""
    rest = "\n".join([after] + lines[last.end_lineno :])
    stripped = "\n".join(l.split("#", 1)[0] for l in rest.splitlines()).strip()
    if stripped.startswith(";"):
        return compile(tree, "<string>", "exec"), None
    body = ast.Module(body=tree.body[:-1], type_ignores=[])
    return compile(body, "<string>", "exec"), compile(ast.Expression(body=last.value), "<string>", "eval")


def _nsbox_error(e, tb, user_globals):
    """nbformat's error object for an exception, with the user's frames only (as stderr),
    and the line of the code it was raised at: the innermost frame of the code's own
    (its globals are the run's module; the harness's code is `<string>` too)."""
    import traceback

    lineno = None
    if isinstance(e, SyntaxError) and e.filename == "<string>":
        lineno = e.lineno
    walk = tb
    while walk is not None:
        if walk.tb_frame.f_globals is user_globals:
            lineno = walk.tb_lineno
        walk = walk.tb_next
    evalue = _nsbox_attempt(lambda: str(e))
    return {
        "ename": type(e).__name__,
        "evalue": evalue if isinstance(evalue, str) else "",
        "traceback": "".join(traceback.format_exception(type(e), e, tb)).rstrip("\n").split("\n"),
        "lineno": lineno,
    }


class _NsboxRun:
    """One piece of code run in a module's namespace, with its figures and files."""

    def __init__(self, main, plots_out, max_plots, results=None):
        self.main = main
        self.plots_out = plots_out
        self.max_plots = max_plots
        self.emitted = 0
        self.dropped = 0
        # Notebook results, when the run asked for them.
        self.results = results

    def emit_open_figures(self):
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        # Figure numbers grow with creation, so this is creation order.
        for num in sorted(pyplot.get_fignums()):
            fig = pyplot.figure(num)
            if self.emitted >= self.max_plots:
                self.dropped += 1
            else:
                png = _nsbox_figure_png(fig)
                _nsbox_frame(self.plots_out, b"P", png)
                self.emitted += 1
                if self.results is not None:
                    self.results.figure(fig, png)
            pyplot.close(fig)

    def execute(self, source, interruptible=False):
        """Runs `source` as `python3 -c` would; returns its exit status. An interruptible
        run (a session call) takes SIGINT as KeyboardInterrupt while the code runs, and
        ignores it before and after, so the harness's own work is never cut."""
        import signal
        import traceback

        _nsbox_state["show"] = self.emit_open_figures
        exit_code = 0
        try:
            if interruptible:
                # The C handler raises without a Python frame of the harness's own.
                signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                if self.results is None:
                    exec(compile(source, "<string>", "exec"), self.main.__dict__)
                else:
                    try:
                        body, last = _nsbox_split_last_expression(source)
                    except SyntaxError as e:
                        # Raised afresh here, as compile() would: no harness frame in it.
                        raise e.with_traceback(None) from None
                    exec(body, self.main.__dict__)
                    if last is not None:
                        value = eval(last, self.main.__dict__)
                        if value is not None:
                            self.main.__dict__["_"] = value
                            self.results.publish("execute_result", value)
            finally:
                if interruptible:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
            while tb is not None and tb.tb_frame.f_code is not _NsboxRun.execute.__code__:
                tb = tb.tb_next
            traceback.print_exception(type(e), e, tb.tb_next if tb else None)
            exit_code = 1
            if self.results is not None:
                import json

                error = _nsbox_error(e, tb.tb_next if tb else None, self.main.__dict__)
                _nsbox_frame(self.plots_out, b"E", json.dumps(error, default=str).encode())
        try:
            self.emit_open_figures()
        except Exception as e:
            print(f"nsbox: a figure could not be rendered: {e}", file=sys.stderr)
        if self.dropped:
            print(
                f"nsbox: plot limit ({self.max_plots}) reached; {self.dropped} more figure(s) not returned",
                file=sys.stderr,
            )
        return exit_code


def _nsbox_use_site():
    """Puts the run's cached package set on sys.path when nsbox mounted one at /opt (an
    empty directory of the tree otherwise), after the tree's own libraries."""
    import os.path

    if os.path.ismount("/opt") and "/opt" not in sys.path:
        sys.path.append("/opt")


def _nsbox_new_main():
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    return main


def _nsbox_main():
    import json
    import os
    import stat

    _nsbox_state["workdir"] = os.getcwd()
    _nsbox_use_site()
    if stat.S_ISSOCK(os.fstat(3).st_mode) and _nsbox_claimed() == "session":
        return _nsbox_session()
    with open(3, "rb", closefd=True) as f:
        bundle = json.loads(f.read())
    plots_out = open(4, "wb", buffering=0, closefd=True)

    # Output reaches the caller even if the run is killed at its timeout.
    sys.stdout.reconfigure(line_buffering=True)
    _nsbox_prepare_matplotlib()
    if os.environ.get("NSBOX_GUARD_RAILS") == "1":
        sys.addaudithook(_nsbox_guard)

    exit_code = _nsbox_step(bundle, plots_out, _nsbox_new_main(), False)
    # Kept open for the exit frame (_nsbox_exit).
    _nsbox_state["exit_to"] = plots_out
    return exit_code


def _nsbox_claimed():
    """A sandbox with a socket on fd 3 says it is waiting, then learns what it is for: one
    run (its bundle attached, which takes fd 3's place) or a session. A ready sandbox
    (the pool) waits here until a request claims it; a session's is told at once. The
    socket closing first means the sandbox was never used: it ends without a word."""
    import json
    import os
    import socket

    _nsbox_rehearse()
    control = socket.socket(fileno=3)
    try:
        control.send(b'{"waiting": true}')
        msg, fds, _, _ = socket.recv_fds(control, 4096, 1)
    except OSError:
        os._exit(0)
    if not msg:
        os._exit(0)
    claim = json.loads(msg)
    mode = claim.get("mode")
    cpu = claim.get("cpu_seconds")
    if cpu is not None:
        # A ready sandbox was built with the most CPU time any request may have; this
        # request's own limit, set before anything of it arrives (lowering needs no
        # privilege, and nothing can raise it again).
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_CPU)

        def capped(v):
            return v if hard == resource.RLIM_INFINITY else min(v, hard)

        try:
            resource.setrlimit(resource.RLIMIT_CPU, (capped(cpu), capped(cpu + 1)))
        except (OSError, ValueError) as e:
            print(f"nsbox: the CPU time limit could not be set: {e}", file=sys.stderr)
            os._exit(127)
    if mode == "session":
        # _nsbox_session wraps fd 3 again.
        control.detach()
        return mode
    if mode != "run" or len(fds) != 1:
        os._exit(1)
    # The bundle takes fd 3's place, as in a run that had it from the start; the socket's
    # peer is gone once it was sent.
    control.detach()
    os.dup2(fds[0], 3)
    os.close(fds[0])
    return mode


def _nsbox_rehearse():
    """A dry run of a run's way through the harness, in a sandbox before it says it waits,
    kept nowhere: a forked interpreter copies each page of its zygote that it first writes
    (reference counts, the allocator's pools), and this makes those copies while the sandbox
    waits rather than on the request's path. What the code will see is untouched: its
    module, the process's state and the output pipes are made or set after the claim."""
    import builtins
    import io
    import json
    import types

    bundle = json.loads('{"code": "pass\\n", "files": [], "max_plots": 1}')
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    _nsbox_step(bundle, io.BytesIO(), main, False)


def _nsbox_step(bundle, plots_out, main, interruptible):
    """One run (or one session call): input files, the code, figures, output files."""
    _nsbox_set_proxy(bundle.get("proxy"), bundle.get("ca"))
    try:
        _nsbox_put_files(bundle.get("files") or [])
    except Exception as e:
        print(f"nsbox: the input files could not be written: {e}", file=sys.stderr)
        return 1
    caps = bundle.get("collect_files")
    skipped_before = {}
    before = _nsbox_walk([], skipped_before) if caps is not None else None
    result_caps = bundle.get("results")
    results = _nsbox_start_results(plots_out, result_caps) if result_caps is not None else None
    if results is None:
        # A session call that did not ask: display() prints, as outside a notebook.
        _nsbox_state["results"] = None
    run = _NsboxRun(main, plots_out, int(bundle["max_plots"]), results)
    exit_code = run.execute(bundle["code"], interruptible)
    if caps is not None:
        try:
            _nsbox_collect(plots_out, before, skipped_before, caps)
        except Exception as e:
            print(f"nsbox: the output files could not be collected: {e}", file=sys.stderr)
    return exit_code


def _nsbox_set_proxy(url, ca):
    """Points HTTP clients at nsbox's egress proxy on the run's loopback when the run has a
    door (a warm run inherits the zygote's environment, so it is set here, per run), and
    their trust at the tree's certificates (certifi's, which the tree's OpenSSL does not
    know by itself) plus the operator's `ca` when there is one."""
    if not url:
        return
    import os

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ[name] = url
    # Everything goes through the door: nothing is exempt from the proxy.
    for name in ("NO_PROXY", "no_proxy"):
        os.environ.pop(name, None)
    trust = _nsbox_trust(ca)
    if trust:
        # OpenSSL (urllib, pandas, httpx, aiohttp) reads SSL_CERT_FILE when a context loads
        # its defaults; requests reads REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE.
        for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            os.environ[name] = trust


_NSBOX_TRUST = "/tmp/.nsbox-trust.pem"


def _nsbox_trust(ca):
    """The file of certificates a run with a door trusts: certifi's bundle, with the
    operator's appended when given (written once per sandbox, outside the working
    directory, so it is no output file)."""
    try:
        import certifi

        bundle = certifi.where()
    except Exception:
        bundle = None
    if not ca:
        return bundle
    import os

    if not os.path.exists(_NSBOX_TRUST):
        with open(_NSBOX_TRUST + ".new", "w") as out:
            if bundle:
                with open(bundle) as f:
                    out.write(f.read())
            out.write("\n" + ca)
        os.replace(_NSBOX_TRUST + ".new", _NSBOX_TRUST)
    return _NSBOX_TRUST


def _nsbox_session():
    """A session: an interpreter that keeps its namespace between calls. The supervisor
    sends each call on fd 3 (a SOCK_SEQPACKET socket) with the call's bundle, stdout,
    stderr and plots pipes attached, and gets {"exit_code": n} or {"error": ...} back,
    with the call's token."""
    import json
    import os
    import signal
    import socket

    control = socket.socket(fileno=3)
    if os.environ.get("NSBOX_GUARD_RAILS") == "1":
        sys.addaudithook(_nsbox_guard)
    _nsbox_prepare_matplotlib()
    sys.stdout.reconfigure(line_buffering=True)
    main = _nsbox_new_main()
    # The supervisor interrupts at a call's timeout; between calls there is nothing to
    # interrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    control.send(json.dumps({"ready": True}).encode())
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, 1 << 16, 4)
        except InterruptedError:
            continue
        except OSError:
            return 0
        if not msg:
            return 0
        op = json.loads(msg)
        bundle_fd, out, err, plots = fds
        with open(bundle_fd, "rb", closefd=True) as f:
            bundle = json.loads(f.read())
        plots_out = open(plots, "wb", buffering=0, closefd=True)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        reply = {"exit_code": 0}
        try:
            if op["op"] == "run":
                reply["exit_code"] = _nsbox_step(bundle, plots_out, main, True)
            else:
                reply = _nsbox_file_op(op["op"], bundle, plots_out)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            plots_out.close()
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        # The call's token: the supervisor takes no answer without it, so nothing the code
        # sent on fd 3 before this call arrived can pass for its answer.
        reply["call"] = op.get("call")
        control.send(json.dumps(reply).encode())


def _nsbox_file_op(op, bundle, plots_out):
    """The session's file requests, answered from inside the sandbox."""
    if op == "put":
        try:
            _nsbox_put_files(bundle["files"])
        except Exception as e:
            return {"error": f"the file could not be written: {e}"}
        # Its size once written (an appended piece's file is more than the piece).
        import json
        import os
        import struct

        for f in bundle["files"]:
            try:
                fd, size = _nsbox_open_regular(f["path"])
                os.close(fd)
            except (OSError, ValueError):
                continue
            head = json.dumps({"path": f["path"], "size": size, "truncated": True}).encode()
            _nsbox_frame(plots_out, b"F", struct.pack("<I", len(head)) + head)
        return {"exit_code": 0}
    if op == "list":
        import json
        import struct

        for rel, sig in sorted(_nsbox_walk([]).items()):
            head = json.dumps({"path": rel, "size": sig[0], "truncated": True}).encode()
            _nsbox_frame(plots_out, b"F", struct.pack("<I", len(head)) + head)
        return {"exit_code": 0}
    if op == "read":
        notes = []
        if not _nsbox_send_file(plots_out, bundle["path"], bundle["caps"], {"count": 0, "bytes": 0}, notes):
            return {"error": "not_found"}
        if notes:
            return {"error": "too_large"}
        return {"exit_code": 0}
    return {"error": f"unknown operation {op}"}


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
    plots_out = _nsbox_state.get("exit_to")
    if plots_out is not None:
        # The output is complete: say how the run ends and close every output pipe, so
        # the supervisor answers now rather than after the interpreter's address space
        # is torn down (which is what closes them otherwise).
        try:
            import struct

            _nsbox_frame(plots_out, b"X", struct.pack("<i", code & 0xFF))
            plots_out.close()
            os.close(1)
            os.close(2)
        except Exception:
            pass
    os._exit(code & 0xFF)


# A zygote (warm path) defines _NSBOX_ZYGOTE and calls _nsbox_main in each fork instead.
if not globals().get("_NSBOX_ZYGOTE"):
    _nsbox_exit(_nsbox_main())
