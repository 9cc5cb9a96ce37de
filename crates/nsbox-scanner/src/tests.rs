//! Corpus tests: code that must pass, code that must be refused with exact names, evasions.

use super::*;

const SPEC_PANDAS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../..",
    "/tests/fixtures/spec/pandas.py"
));

const SPEC_PLOT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../..",
    "/tests/fixtures/spec/plot.py"
));

const SPEC_SCIPY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../..",
    "/tests/fixtures/spec/scipy.py"
));

const LLM_ANALYSIS: &str = r#"import io
import re
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import seaborn as sns

CSV = """region,month,sales
north,2024-01,120
south,2024-01,95
north,2024-02,130
"""

@dataclass
class Summary:
    region: str
    total: float
    months: List[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.region!r}, {self.total:.1f})"


class Analyzer:
    """Aggregates sales by region."""

    def __init__(self, df: pd.DataFrame, **options):
        self.df = df
        self.__dict__.update(options)
        for key, value in options.items():
            setattr(self, key, value)

    @property
    def regions(self) -> List[str]:
        return sorted(self.df["region"].unique())

    def summarize(self) -> Dict[str, Summary]:
        out = {}
        for region, group in self.df.groupby("region"):
            out[region] = Summary(region, float(group["sales"].sum()), list(group["month"]))
        return out


def describe(series: pd.Series, stats=("mean", "median", "std")) -> Dict[str, float]:
    return {name: getattr(series, name)() for name in ["mean", "median", "std"]}


df = pd.read_csv(io.StringIO(CSV))
pattern = re.compile(r"(\d{4})-(\d{2})")
df["year"] = df["month"].map(lambda m: int(pattern.match(m).group(1)))
analyzer = Analyzer(df, currency="EUR")
summaries = analyzer.summarize()
counts = Counter(df["region"])
by_month = defaultdict(list)
for row in df.itertuples():
    by_month[row.month].append(row.sales)
squares = [x ** 2 for x in range(10) if x % 2 == 0]
lookup = {k: v for k, v in zip("abc", range(3))}
total = sum(math.sqrt(v) for v in df["sales"])
print(json.dumps({k: repr(v) for k, v in summaries.items()}, indent=2))
print(describe(df["sales"]))
if "df" in globals():
    print(type(df).__name__, hasattr(df, "__len__"), counts.most_common(1))

fig, ax = plt.subplots(figsize=(8, 4))
sns.barplot(data=df, x="region", y="sales", ax=ax)
ax.set_title(f"Sales ({analyzer.currency})")
plt.tight_layout()
plt.savefig("sales.png")
print(np.corrcoef(df["sales"], df["year"])[0, 1])
"#;

/// (label, code, exact expected violation names)
const CORPUS: &[(&str, &str, &[&str])] = &[
    // ---- the spec's examples -------------------------------------------------------------
    ("spec basic", "print(2**2)", &[]),
    ("spec pandas", SPEC_PANDAS, &[]),
    ("spec plot", SPEC_PLOT, &[]),
    ("spec scipy", SPEC_SCIPY, &[]),
    ("spec runtime error", "result = 10 / 0", &[]),
    ("spec syntax error", "print('Hello world'", &[]),
    ("spec timeout", "import time\ntime.sleep(100)", &[]),
    (
        "spec security",
        "import os\nos.system('ls -la')",
        &["Operating system interface", "os.system line execution"],
    ),
    // ---- allowed: libraries and everyday LLM code ----------------------------------------
    ("llm analysis script", LLM_ANALYSIS, &[]),
    ("json", "import json\ndata = json.loads('{\"a\": 1}')\nprint(json.dumps(data, indent=2))", &[]),
    ("math", "import math\nprint(math.factorial(5), math.pi, math.gcd(12, 18))", &[]),
    ("re with compile", "import re\npat = re.compile(r'\\w+')\nprint(pat.findall('a b'), re.sub('a', 'b', 'aa'))", &[]),
    ("datetime", "from datetime import datetime, timedelta\nprint(datetime(2024, 1, 1) + timedelta(days=3))", &[]),
    ("collections", "from collections import Counter, defaultdict, namedtuple, OrderedDict\nP = namedtuple('P', 'x y')\nprint(Counter('hello'), P(1, 2))", &[]),
    ("itertools", "import itertools\nprint(list(itertools.combinations([1, 2, 3], 2)))\nfor k, g in itertools.groupby('aabb'):\n    print(k, list(g))", &[]),
    ("statistics", "import statistics\nprint(statistics.mean([1, 2, 3]), statistics.stdev([1, 2, 3]))", &[]),
    ("random", "import random\nrandom.seed(0)\nprint(random.choice([1, 2, 3]), random.random())", &[]),
    ("io StringIO with pandas", "import io\nimport pandas as pd\ndf = pd.read_csv(io.StringIO('a,b\\n1,2'))\nprint(df.describe())", &[]),
    ("dataclasses typing functools", "from dataclasses import dataclass\nfrom typing import Optional\nfrom functools import lru_cache, reduce, partial\n@dataclass\nclass P:\n    x: int\n    y: Optional[int] = None\n@lru_cache(maxsize=None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nprint(fib(30), reduce(lambda a, b: a + b, [1, 2]), partial(int, base=2)('101'))", &[]),
    ("seaborn savefig", "import seaborn as sns\nimport matplotlib.pyplot as plt\ntips = sns.load_dataset\nfig, ax = plt.subplots()\nax.plot([1, 2], [3, 4])\nplt.savefig('plot.png')\nplt.close(fig)", &[]),
    ("numpy linalg", "import numpy as np\na = np.array([[1, 2], [3, 4]])\nprint(np.linalg.inv(a) @ a, np.linalg.eig(a)[0])\nrng = np.random.default_rng(42)\nprint(rng.normal(size=3))", &[]),
    ("scipy signal and optimize", "from scipy import signal, optimize\nimport scipy.signal\nb, a = signal.butter(3, 0.05)\nres = optimize.minimize(lambda x: (x - 2) ** 2, 0)\nprint(res.x, scipy.signal.lfilter(b, a, [1, 2, 3]))", &[]),
    ("pandas query with computed string", "import pandas as pd\ndf = pd.DataFrame({'a': [1]})\ncol, v = 'a', 0\nprint(df.query(f'{col} > {v}'))", &[]),
    ("url query attribute", "import urllib.parse\nu = urllib.parse.urlparse('http://x/?a=1')\nprint(u.query, urllib.parse.parse_qs(u.query))", &[]),
    ("torch style eval method", "class M:\n    def eval(self):\n        return self\nm = M()\nm.eval()", &[]),
    ("pandas eval and query", "import pandas as pd\ndf = pd.DataFrame({'a': [1], 'b': [2]})\nprint(df.eval('a + b'), df.query('a > 0'))", &[]),
    ("getattr constant names", "import pandas as pd\ns = pd.Series([1, 2, 3])\nprint(getattr(s, 'mean')(), getattr(s, 'name', None))", &[]),
    ("getattr loop over literal list", "import numpy as np\nx = np.arange(10)\nfor fn in ['mean', 'std', 'max']:\n    print(fn, getattr(np, fn)(x))", &[]),
    ("getattr tuple unpacking loop", "import numpy as np\nfor label, fn in [('avg', 'mean'), ('dev', 'std')]:\n    print(label, getattr(np, fn)([1, 2]))", &[]),
    ("membership in globals", "if 'df' not in globals():\n    df = None\nprint('x' in locals())", &[]),
    ("sys basics", "import sys\nprint(sys.version, sys.platform)\nsys.setrecursionlimit(5000)\nsys.stdout.write('hi\\n')", &[]),
    ("open write tmp", "with open('/tmp/out.txt', 'w') as f:\n    f.write('x')", &[]),
    ("open read relative", "with open('data.csv') as f:\n    print(f.read())", &[]),
    ("open write relative", "import json\nwith open('results.json', 'w') as f:\n    json.dump({'a': 1}, f)", &[]),
    ("pathlib", "from pathlib import Path\np = Path('/tmp/x.txt')\np.write_text('hi')\nprint(p.read_text())", &[]),
    ("asyncio", "import asyncio\nasync def main():\n    await asyncio.sleep(0.01)\n    return 42\nprint(asyncio.run(main()))", &[]),
    ("match statement", "def kind(v):\n    match v:\n        case {'type': 'point', 'x': x}:\n            return x\n        case [a, *rest]:\n            return a\n        case str() as s:\n            return s\n        case _:\n            return None\nprint(kind([1, 2]))", &[]),
    ("fstrings", "x = 3.14159\nw = 10\nprint(f'{x:.2f} {x!r} {x:>{w}} {{literal}}')", &[]),
    ("closures and decorators", "import functools\ndef timer(fn):\n    @functools.wraps(fn)\n    def wrapper(*args, **kwargs):\n        return fn(*args, **kwargs)\n    return wrapper\n@timer\ndef add(a, b=lambda: 1):\n    return a + b()\nprint(add(1))", &[]),
    ("traceback", "import traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError as e:\n    traceback.print_exc()\n    print(type(e).__name__, e.args)", &[]),
    ("thread pool", "from concurrent.futures import ThreadPoolExecutor\nwith ThreadPoolExecutor(2) as ex:\n    print(list(ex.map(abs, [-1, -2])))", &[]),
    ("unicode in strings", "print('Température: 25°C ✓ — données')\n# commentaire: été", &[]),
    ("stdlib misc", "import heapq, bisect, warnings, sqlite3, urllib.parse, string, textwrap\nwarnings.filterwarnings('ignore')\ncon = sqlite3.connect(':memory:')\nprint(heapq.nlargest(2, [1, 3, 2]), urllib.parse.quote('a b'), string.ascii_letters[:3])", &[]),
    ("class internals that are fine", "class A:\n    def __init__(self, **kw):\n        super().__init__()\n        self.__dict__.update(kw)\n    def __repr__(self):\n        return self.__class__.__name__\n    def __eq__(self, other):\n        return vars(self) == vars(other)\nprint(A(x=1), vars(A(y=2)))", &[]),
    ("setattr in kwargs loop", "class C:\n    def __init__(self, **kw):\n        for k, v in kw.items():\n            setattr(self, k, v)\nprint(C(a=1).a)", &[]),
    ("safe constant __import__", "print(__import__('math').sqrt(16))", &[]),
    ("exec-like identifiers", "exec_time = 1.5\nevaluation = {'score': 1}\nexecutor = None\nprint(exec_time, evaluation)", &[]),
    ("gc collect", "import gc\ngc.collect()", &[]),
    ("utf-8 coding declaration", "# -*- coding: utf-8 -*-\nprint('ok')", &[]),
    ("relative path without climbing", "open('out/report.txt', 'w').write('x')", &[]),
    ("dev null", "import sys\nwith open('/dev/null', 'w') as devnull:\n    print('x', file=devnull)", &[]),
    ("pandas read_csv relative", "import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(df.head())", &[]),
    ("pathlib slash in the working directory", "from pathlib import Path\nout = Path('out') / 'summary.csv'\nout.parent.mkdir(exist_ok=True)\nout.write_text('x')\nprint((Path('data') / 'sales.csv').exists())", &[]),
    ("posixpath join of data", "import posixpath\nprint(open(posixpath.join('data', 'sales.csv')).read())", &[]),
    ("pathlib home config of the run", "from pathlib import Path\nprint((Path.home() / 'notes.txt').exists())", &[]),
    ("division stays division", "a = 10\nb = '2'\nprint(a / int(b), 7 / 2)", &[]),
    ("pathlib read tmp", "from pathlib import Path\nprint(Path('/tmp', 'report.txt').read_text())", &[]),
    ("open files named like secrets", "open('passwd_stats.csv').read()\nopen('/tmp/ssh_report.txt', 'w').write('x')", &[]),
    ("loadtxt computed path", "import numpy as np\nname = input()\nrows = np.loadtxt(name)", &[]),
    // ---- refused: modules ------------------------------------------------------------------
    ("import os alone", "import os", &["Operating system interface"]),
    ("import os.path", "import os.path\nprint(os.path.join('a', 'b'))", &["Operating system interface"]),
    ("from os import path", "from os import path\nprint(path.join('a', 'b'))", &["Operating system interface"]),
    ("os getcwd", "import os\nprint(os.getcwd())", &["Operating system interface"]),
    ("subprocess run", "import subprocess\nsubprocess.run(['ls'])", &["Subprocess management", "subprocess command execution"]),
    ("from subprocess import Popen", "from subprocess import Popen\nPopen(['id'])", &["Subprocess management", "subprocess command execution"]),
    ("two imports one line", "import os; import subprocess", &["Operating system interface", "Subprocess management"]),
    ("ctypes", "import ctypes\nctypes.CDLL(None).system(b'id')", &["Foreign function interface"]),
    ("socket", "import socket\ns = socket.socket()", &["Network socket access"]),
    ("pickle", "import pickle\npickle.loads(b'cos\\nsystem\\n.')", &["Unsafe deserialization"]),
    ("marshal", "import marshal", &["Unsafe deserialization"]),
    ("pandas read_pickle", "import pandas as pd\ndf = pd.read_pickle('model.pkl')", &["Unsafe deserialization"]),
    ("multiprocessing", "from multiprocessing import Pool", &["Process spawning"]),
    ("process pool", "from concurrent.futures import ProcessPoolExecutor\nProcessPoolExecutor(2)", &["Process spawning"]),
    ("shutil", "import shutil\nshutil.rmtree('/tmp/x')", &["High-level file operations"]),
    ("pty spawn", "import pty\npty.spawn('/bin/sh')", &["Terminal and descriptor control", "subprocess command execution"]),
    ("signal", "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)", &["Signal handling"]),
    ("pdb", "import pdb", &["Debugger access"]),
    ("importlib util", "import importlib.util", &["Import machinery"]),
    ("builtins module", "import builtins\nbuiltins.print('x')", &["Builtins module access"]),
    // ---- refused: calls ----------------------------------------------------------------------
    ("os exec", "import os\nos.execv('/bin/sh', ['sh'])", &["Operating system interface", "os.exec process replacement"]),
    ("os posix_spawn", "import os\nos.posix_spawn('/bin/sh', ['sh'], {})", &["Operating system interface", "os.spawn process creation"]),
    ("os fork", "import os\nif os.fork() == 0:\n    pass", &["Operating system interface", "os.fork process creation"]),
    ("os kill", "import os\nos.kill(1, 9)", &["Operating system interface", "Process signalling"]),
    ("os remove", "import os\nos.remove('/tmp/x')", &["Operating system interface", "File system modification"]),
    ("os environ", "import os\nprint(os.environ['SECRET'])", &["Operating system interface", "Environment variable access"]),
    ("os popen", "import os\nprint(os.popen('id').read())", &["Operating system interface", "os.popen line execution"]),
    ("asyncio subprocess", "import asyncio\nasync def main():\n    proc = await asyncio.create_subprocess_shell('id')\n    await proc.wait()", &["subprocess command execution"]),
    ("sys modules", "import sys\nsys.modules['os'].system('id')", &["Interpreter internals access", "os.system line execution"]),
    ("gc get_objects", "import gc\nfor o in gc.get_objects():\n    pass", &["Object graph traversal"]),
    ("inspect currentframe", "import inspect\nprint(inspect.currentframe().f_back)", &["Frame introspection"]),
    ("sys getframe", "import sys\nframe = sys._getframe(0)\nprint(frame.f_back.f_globals)", &["Frame introspection"]),
    ("traceback frames", "try:\n    1 / 0\nexcept Exception as e:\n    g = e.__traceback__.tb_frame.f_globals", &["Frame introspection"]),
    // ---- refused: builtins -----------------------------------------------------------------
    ("eval", "eval('1+1')", &["Dynamic code execution"]),
    ("exec", "exec('print(1)')", &["Dynamic code execution"]),
    ("compile builtin", "code = compile('1', '<s>', 'eval')", &["Dynamic code execution"]),
    // Known false positive, kept on purpose: a dangerous builtin's name counts as the builtin
    // even when an import rebinds it, because the flat analysis cannot tell which scope wins
    // (`del compile` brings the builtin back).
    ("re compile imported by name", "from re import compile\nprint(compile('a+').match('aa'))", &["Dynamic code execution"]),
    ("exec of file", "exec(open('x.py').read())", &["Dynamic code execution"]),
    ("breakpoint", "breakpoint()", &["Debugger access"]),
    ("open write etc", "open('/etc/passwd', 'w').write('x')", &["File write outside /tmp"]),
    ("open write climbing out of tmp", "open('/tmp/../etc/cron.d/x', mode='a')", &["File write outside /tmp"]),
    ("open write relative climbing", "import io\nio.open('../../etc/profile', 'w')", &["File write outside /tmp"]),
    ("module file write", "open('helper.py', 'w').write('x = 1')\nimport helper", &["Python module file write"]),
    ("pth file write", "with open('/tmp/evil.pth', 'w') as f:\n    f.write('x')", &["Python module file write"]),
    ("timeit string", "import timeit\ntimeit.timeit('x = 1', number=1)", &["Dynamic code execution"]),
    ("cprofile run", "import cProfile\ncProfile.run('print(1)')", &["Dynamic code execution"]),
    ("webbrowser command", "import webbrowser\nwebbrowser.get('sh -c id %s').open('x')", &["subprocess command execution"]),
    ("event loop subprocess", "import asyncio\nloop = asyncio.new_event_loop()\nloop.run_until_complete(loop.subprocess_shell(asyncio.SubprocessProtocol, 'id'))", &["subprocess command execution"]),
    ("sqlite extension", "import sqlite3\ncon = sqlite3.connect(':memory:')\ncon.enable_load_extension(True)\ncon.load_extension('/tmp/x.so')", &["Foreign function interface"]),
    ("numpy ctypeslib", "import numpy as np\nnp.ctypeslib.ctypes.CDLL(None)", &["Foreign function interface"]),
    ("pandas query injection", "import pandas as pd\ndf = pd.DataFrame({'a': [1]})\ndf.query(\"@__import__('os').system('id')\")", &["Dynamic code execution"]),
    ("open proc environ", "print(open('/proc/self/environ').read())", &["System file access"]),
    // ---- refused: credential and account files --------------------------------------------
    ("open etc shadow", "print(open('/etc/shadow').read())", &["Credential file access"]),
    ("open etc sudoers read mode", "with open('/etc/sudoers', 'r') as f:\n    print(f.read())", &["Credential file access"]),
    ("open keyword file gshadow", "with open(file='/etc/gshadow') as f:\n    lines = f.readlines()", &["Credential file access"]),
    ("open passwd read plus", "open('/etc/passwd', 'r+')", &["File write outside /tmp", "Credential file access"]),
    ("open shadow through tmp", "open('/tmp/../etc/./shadow').read()", &["Credential file access"]),
    ("open shadow concatenated", "p = '/etc/' + 'sha' + 'dow'\nprint(open(p).read())", &["Credential file access"]),
    ("pathlib passwd", "import pathlib\nprint(pathlib.Path('/etc/passwd').read_text())", &["Credential file access"]),
    ("pathlib joined parts", "from pathlib import Path\nprint(Path('/etc', 'shadow').read_text())", &["Credential file access"]),
    ("pathlib home ssh key", "from pathlib import Path\nkey = Path('~/.ssh/id_rsa').expanduser().read_text()", &["Credential file access"]),
    ("pandas read_csv passwd", "import pandas as pd\nusers = pd.read_csv('/etc/passwd', sep=':', header=None)\nprint(users.head())", &["Credential file access"]),
    ("pandas read_csv keyword path", "import pandas as pd\nusers = pd.read_csv(filepath_or_buffer='/etc/passwd', sep=':')", &["Credential file access"]),
    ("numpy loadtxt passwd", "import numpy as np\nrows = np.loadtxt('/etc/passwd', dtype=str, delimiter=':')", &["Credential file access"]),
    ("root ssh authorized keys", "print(open('/root/.ssh/authorized_keys').read())", &["Credential file access"]),
    ("aws credentials in a home", "import io\ntext = io.open('/home/analyst/.aws/credentials').read()", &["Credential file access"]),
    ("relative netrc", "print(open('.netrc').read())", &["Credential file access"]),
    ("pgpass in home", "open('/home/u/.pgpass').read()", &["Credential file access"]),
    ("kube config", "import yaml\ncfg = open('/home/u/.kube/config').read()", &["Credential file access"]),
    // Computed paths: pathlib's `/`, joinpath and home(), os.path's join and the helpers
    // that keep a constant path constant, f-strings of constants.
    ("pathlib slash shadow", "from pathlib import Path\nprint((Path('/etc') / 'shadow').read_text())", &["Credential file access"]),
    ("pathlib slash opened", "from pathlib import Path\np = Path('/etc') / 'passwd'\nwith open(p) as f:\n    rows = f.readlines()", &["Credential file access"]),
    ("pathlib home slash ssh key", "from pathlib import Path\nkey = (Path.home() / '.ssh' / 'id_rsa').read_text()", &["Credential file access"]),
    ("pathlib joinpath sudoers", "import pathlib\nprint(pathlib.Path('/etc').joinpath('sudoers').read_text())", &["Credential file access"]),
    ("os.path.join shadow", "import os\nprint(open(os.path.join('/etc', 'shadow')).read())", &["Operating system interface", "Credential file access"]),
    ("posixpath join imported", "from posixpath import join\nprint(open(join('/etc', 'gshadow')).read())", &["Credential file access"]),
    ("expanduser ssh key", "import os.path\nkey = open(os.path.expanduser('~/.ssh/id_rsa')).read()", &["Operating system interface", "Credential file access"]),
    ("expanduser then join", "from os.path import expanduser, join\nhome = expanduser('~')\nprint(open(join(home, '.aws', 'credentials')).read())", &["Operating system interface", "Credential file access"]),
    ("fstring of constants", "base = '/etc'\nname = 'shadow'\nprint(open(f'{base}/{name}').read())", &["Credential file access"]),
    ("read_csv of a joined path", "import pandas as pd\nimport posixpath\nusers = pd.read_csv(posixpath.join('/etc', 'passwd'), sep=':')", &["Credential file access"]),
    ("service account token", "token = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read()", &["Credential file access"]),
    // ---- refused: introspection escapes ---------------------------------------------------
    ("subclasses walk", "().__class__.__bases__[0].__subclasses__()", &["Class hierarchy traversal"]),
    ("mro walk", "''.__class__.__mro__[1].__subclasses__()", &["Class hierarchy traversal"]),
    ("subclasses in comprehension", "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0]", &["Class hierarchy traversal"]),
    ("type subclasses", "type.__subclasses__(object)", &["Class hierarchy traversal"]),
    ("function globals", "def f():\n    pass\nf.__globals__['os']", &["Function internals access"]),
    ("code swap", "def f():\n    pass\nf.__code__ = compile('1', 's', 'exec')", &["Function internals access", "Dynamic code execution"]),
    ("builtin self", "b = print.__self__", &["Function internals access"]),
    ("module dict", "import numpy as np\nnp.__dict__['os']", &["Module namespace access"]),
    ("loader", "__loader__.load_module('os')", &["Import machinery"]),
    ("match class attribute pattern", "def f():\n    pass\nmatch f:\n    case object(__globals__=g):\n        pass", &["Function internals access"]),
    // ---- evasions: aliases and rebinding ---------------------------------------------------
    ("alias module", "import os as o\no.system('id')", &["Operating system interface", "os.system line execution"]),
    ("alias function", "from os import system as s\ns('id')", &["Operating system interface", "os.system line execution"]),
    ("star import", "from os import *\nsystem('id')", &["Operating system interface", "os.system line execution"]),
    ("rebound eval", "f = eval\nf('1')", &["Dynamic code execution"]),
    ("rebound via tuple", "a, b = eval, exec", &["Dynamic code execution"]),
    ("walrus", "(e := eval)('1')", &["Dynamic code execution"]),
    ("eval as value", "x = [1]\nx.append(eval)", &["Dynamic code execution"]),
    ("alias chain sys", "import sys as s\nm = s\nprint(m.modules)", &["Interpreter internals access"]),
    ("alias subprocess function", "import subprocess as sp\nrun = sp.check_output\nrun(['id'])", &["Subprocess management", "subprocess command execution"]),
    ("module reached through allowed module", "import matplotlib\nmatplotlib.os.system('id')", &["os.system line execution"]),
    ("from builtins import exec", "from builtins import exec as run_code\nrun_code('1')", &["Builtins module access", "Dynamic code execution"]),
    // ---- evasions: __import__ / importlib ----------------------------------------------------
    ("__import__ os", "__import__('os').system('id')", &["Operating system interface", "os.system line execution"]),
    ("__import__ concatenated", "__import__('o' + 's').popen('id')", &["Operating system interface", "os.popen line execution"]),
    ("__import__ chr", "__import__(chr(111) + chr(115))", &["Operating system interface"]),
    ("__import__ bytes", "__import__(bytes([111, 115]).decode())", &["Operating system interface"]),
    ("__import__ base64", "import base64\n__import__(base64.b64decode('b3M=').decode()).system('id')", &["Operating system interface", "os.system line execution"]),
    ("__import__ variable", "name = input()\nm = __import__(name)", &["Dynamic import"]),
    ("__import__ as value", "imp = __import__\nimp('os')", &["Dynamic import", "Operating system interface"]),
    ("importlib constant", "import importlib\nimportlib.import_module('o' + 's')", &["Import machinery", "Operating system interface"]),
    ("importlib keyword", "import importlib\nimportlib.import_module(name='subprocess')", &["Import machinery", "Subprocess management"]),
    ("importlib dynamic", "import importlib\nmod = importlib.import_module(user_choice)", &["Import machinery", "Dynamic import"]),
    ("import_module alias", "from importlib import import_module as im\nim('subprocess')", &["Import machinery", "Subprocess management"]),
    // ---- evasions: computed attribute names -------------------------------------------------
    ("getattr concat", "import os\ngetattr(os, 'sys' + 'tem')('id')", &["Operating system interface", "os.system line execution"]),
    ("getattr reversed slice", "import os\ngetattr(os, 'metsys'[::-1])('id')", &["Operating system interface", "os.system line execution"]),
    ("getattr percent", "import os\ngetattr(os, '%s%s' % ('sys', 'tem'))('id')", &["Operating system interface", "os.system line execution"]),
    ("getattr format", "import os\ngetattr(os, '{}{}'.format('sys', 'tem'))('id')", &["Operating system interface", "os.system line execution"]),
    ("getattr fstring of variables", "import os\na = 'sys'\nb = 'tem'\ngetattr(os, f'{a}{b}')('id')", &["Operating system interface", "os.system line execution"]),
    ("getattr join", "import os\ngetattr(os, ''.join(['s', 'y', 's', 't', 'e', 'm']))('id')", &["Operating system interface", "os.system line execution"]),
    ("getattr map chr", "import os\ngetattr(os, ''.join(map(chr, [115, 121, 115, 116, 101, 109])))('id')", &["Operating system interface", "os.system line execution"]),
    ("getattr rot13", "import os, codecs\ngetattr(os, codecs.decode('flfgrz', 'rot13'))('id')", &["Operating system interface", "os.system line execution"]),
    ("getattr dynamic", "def get(x, attr_name):\n    return getattr(x, attr_name)", &["Dynamic attribute access"]),
    ("getattr over dir", "for name in dir(x):\n    getattr(x, name)", &["Dynamic attribute access"]),
    ("getattr star args", "getattr(*args)", &["Dynamic attribute access"]),
    ("getattr builtins", "getattr(__builtins__, 'ev' + 'al')('1')", &["Builtins namespace access", "Dynamic code execution"]),
    ("getattr nested import", "getattr(getattr(__builtins__, '__imp' + 'ort__')('o' + 's'), 'system')('id')", &["Builtins namespace access", "Operating system interface", "os.system line execution"]),
    ("getattr dunder constant", "f = lambda: 0\nprint(getattr(f, '__glob' + 'als__'))", &["Function internals access"]),
    ("getattr class on literal", "getattr((), '__class__')", &["Class hierarchy traversal"]),
    ("setattr dunder constant", "def f():\n    pass\nsetattr(f, '__code__', None)", &["Function internals access"]),
    ("attrgetter constant", "import operator\nf = lambda: 0\noperator.attrgetter('__globals__')(f)", &["Function internals access"]),
    ("methodcaller dynamic", "import operator\noperator.methodcaller(name)(obj)", &["Dynamic attribute access"]),
    ("getattribute dynamic", "x.__getattribute__(n)", &["Dynamic attribute access"]),
    ("object getattribute constant", "f = lambda: 0\nobject.__getattribute__(f, '__glob' + 'als__')", &["Function internals access"]),
    ("getattr as value", "import functools\nfunctools.reduce(getattr, ['a', 'b'], obj)", &["Dynamic attribute access"]),
    // ---- evasions: namespaces --------------------------------------------------------------
    ("builtins dict exec", "import builtins\nbuiltins.__dict__['exec']('print(1)')", &["Builtins module access", "Module namespace access", "Dynamic code execution"]),
    ("__builtins__ dict", "__builtins__.__dict__['ev' + 'al']('1')", &["Builtins namespace access", "Module namespace access", "Dynamic code execution"]),
    ("globals builtins", "globals()['__builtins__']", &["Dynamic namespace access", "Builtins namespace access"]),
    ("globals copy", "g = globals()\ng['ev' + 'al']('1')", &["Dynamic namespace access", "Dynamic code execution"]),
    ("print globals", "print(globals())", &["Dynamic namespace access"]),
    ("locals subscript", "locals()['x']", &["Dynamic namespace access"]),
    ("vars builtins", "vars(__builtins__)['eval']", &["Builtins namespace access", "Module namespace access", "Dynamic code execution"]),
    ("vars dynamic key", "vars(obj)[key]", &["Dynamic namespace access"]),
    ("vars update", "vars(obj).update(d)", &["Dynamic namespace access"]),
    // ---- evasions: where code hides --------------------------------------------------------
    ("lambda", "run = lambda c: __import__('subprocess').run(c, shell=True)", &["Subprocess management", "subprocess command execution"]),
    ("nested function in class", "class A:\n    def m(self):\n        def inner():\n            return eval('1')\n        return inner", &["Dynamic code execution"]),
    ("decorator", "@eval\ndef f():\n    pass", &["Dynamic code execution"]),
    ("default argument", "def f(x=__import__('os')):\n    pass", &["Operating system interface"]),
    ("comprehension", "[eval(x) for x in ['1', '2']]", &["Dynamic code execution"]),
    ("fstring expression", "print(f\"{__import__('os').getcwd()}\")", &["Operating system interface"]),
    ("match case body", "match cmd:\n    case 'x':\n        __import__('os').system('x')", &["Operating system interface", "os.system line execution"]),
    ("annotation", "def f(x: eval('int')) -> None:\n    pass", &["Dynamic code execution"]),
    ("class keyword", "class A(metaclass=eval('type')):\n    pass", &["Dynamic code execution"]),
    ("try star handler", "try:\n    pass\nexcept* ValueError:\n    exec('1')", &["Dynamic code execution"]),
    ("parenthesized with", "with (open('/tmp/a') as f, open('/tmp/b') as g):\n    eval('1')", &["Dynamic code execution"]),
    ("while else", "while False:\n    pass\nelse:\n    __import__('pty')", &["Terminal and descriptor control"]),
    // ---- evasions: spelling ----------------------------------------------------------------
    ("nfkc eval", "ｅｖａｌ('1')", &["Dynamic code execution"]),
    ("nfkc import", "import ｏｓ\nｏｓ.ｓｙｓｔｅｍ('id')", &["Operating system interface", "os.system line execution"]),
    ("nfkc mixed attribute", "import os\nos.sｙstem('id')", &["Operating system interface", "os.system line execution"]),
    ("utf-7 declaration", "# -*- coding: utf-7 -*-\nprint(1)", &["Non-UTF-8 source encoding"]),
    ("latin-1 declaration second line", "#!/usr/bin/env python\n# vim: set fileencoding=latin-1 :\nprint(1)", &["Non-UTF-8 source encoding"]),
];

fn names_for(code: &str) -> Vec<String> {
    violation_names(&scan(code, &Policy::builtin()))
}

#[test]
fn corpus_gives_exact_names() {
    let policy = Policy::builtin();
    let mut failures = Vec::new();
    for (label, code, expected) in CORPUS {
        let got = violation_names(&scan(code, &policy));
        if got != *expected {
            failures.push(format!("{label}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_is_large_and_mixed() {
    let refused = CORPUS.iter().filter(|c| !c.2.is_empty()).count();
    let allowed = CORPUS.len() - refused;
    println!(
        "corpus: {} cases, {allowed} allowed, {refused} refused",
        CORPUS.len()
    );
    assert!(
        CORPUS.len() >= 60 && refused >= 30 && allowed >= 30,
        "{allowed} allowed, {refused} refused"
    );
}

#[test]
fn prefilter_changes_nothing() {
    let policy = Policy::builtin();
    for (label, code, _) in CORPUS {
        let fast = scan(code, &policy);
        let full = run(code, &policy, Mode::NoPrefilter).violations;
        assert_eq!(fast, full, "{label}");
    }
}

#[test]
fn spec_security_example_in_detail() {
    let v = scan("import os\nos.system('ls -la')", &Policy::builtin());
    let expected = vec![
        Violation {
            rule_id: "os-module".into(),
            name: "Operating system interface".into(),
            category: "module".into(),
            line: 1,
        },
        Violation {
            rule_id: "os-system".into(),
            name: "os.system line execution".into(),
            category: "call".into(),
            line: 2,
        },
    ];
    assert_eq!(v, expected);
}

#[test]
fn one_violation_per_rule_per_line() {
    let v = scan("eval('1'); eval('2')\neval('3')", &Policy::builtin());
    let lines: Vec<(String, usize)> = v.iter().map(|x| (x.rule_id.clone(), x.line)).collect();
    assert_eq!(
        lines,
        vec![
            ("dynamic-code".to_owned(), 1),
            ("dynamic-code".to_owned(), 2)
        ]
    );
}

#[test]
fn lines_count_like_python() {
    let v = scan("x = 1\r\ny = 2\rimport os\n", &Policy::builtin());
    assert_eq!(v[0].line, 3);
}

#[test]
fn violations_serialize_for_the_api() {
    let v = scan("eval('1')", &Policy::builtin());
    let json = serde_json::to_value(&v[0]).expect("serializes");
    assert_eq!(
        json,
        serde_json::json!({
            "rule_id": "dynamic-code",
            "name": "Dynamic code execution",
            "category": "builtin",
            "line": 1
        })
    );
}

#[test]
fn nesting_limit_refuses_what_it_cannot_see() {
    let deep = format!("x = {}1\neval('1')", "-".repeat(300));
    assert_eq!(
        names_for(&deep),
        vec![
            "Code nested too deeply to analyse",
            "Dynamic code execution"
        ]
    );
}

/// Trees far deeper than the walk limit must neither overflow the stack while being checked
/// nor while being dropped (the default 2 MiB test thread stack, in a debug build).
#[test]
fn pathological_depth_does_not_overflow() {
    let cases = [
        format!("x = {}1", "-".repeat(50_000)),
        format!("x = a{}", ".b".repeat(25_000)),
        format!("x = 1{}", "+1".repeat(25_000)),
        format!("x = f{}", "()".repeat(25_000)),
        format!("x = {}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!("x = {}1", "not ".repeat(12_000)),
    ];
    for c in cases {
        let code = format!("{c}\nimport os\n");
        let names = names_for(&code);
        assert!(
            names.contains(&"Operating system interface".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"Code nested too deeply to analyse".to_owned()),
            "{names:?}"
        );
    }
}

#[test]
fn deep_code_without_trigger_words_passes_unparsed() {
    let code = format!("x = {}1", "-".repeat(50_000));
    assert!(names_for(&code).is_empty());
}

#[test]
fn imported_modules_lists_top_level_names() {
    assert_eq!(imported_modules(SPEC_PANDAS), vec!["pandas", "numpy"]);
    assert_eq!(imported_modules(SPEC_PLOT), vec!["matplotlib", "numpy"]);
    assert_eq!(imported_modules(SPEC_SCIPY), vec!["numpy", "scipy"]);
    assert_eq!(
        imported_modules("import os.path as p, json\ndef f():\n    from scipy.stats import norm\n    from . import local\nimport json"),
        vec!["os", "json", "scipy"]
    );
    assert!(imported_modules("import pandas as pd\nprint(").is_empty());
    assert!(imported_modules("print(1)").is_empty());
}

#[test]
fn analyze_returns_both_from_one_parse() {
    let a = analyze("import pandas as pd\nimport os\n", &Policy::builtin());
    assert_eq!(a.imported_modules, vec!["pandas", "os"]);
    assert_eq!(
        violation_names(&a.violations),
        vec!["Operating system interface"]
    );
}

#[test]
fn builtin_policy_parses_and_explains_itself() {
    let policy = Policy::from_toml(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../..",
        "/policy/scanner.toml"
    )))
    .expect("embedded policy parses");
    let rules: Vec<_> = policy.rules().collect();
    assert!(rules.len() >= 30);
    for meta in &policy.rules {
        assert!(!meta.id.is_empty() && !meta.name.is_empty());
    }
    // Comments are checked non-empty by validation; prove validation enforces it.
    let no_comment = "[[rule]]\nid = \"x\"\nname = \"X\"\ncategory = \"module\"\nmodules = [\"os\"]\ncomment = \" \"\n";
    assert!(matches!(
        Policy::from_toml(no_comment),
        Err(ScannerError::Invalid { .. })
    ));
}

#[test]
fn every_builtin_rule_has_a_comment() {
    #[derive(serde::Deserialize)]
    struct File {
        rule: Vec<toml::Table>,
    }
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../policy/scanner.toml"
    ));
    let file: File = toml::from_str(text).expect("policy is TOML");
    for rule in &file.rule {
        let comment = rule.get("comment").and_then(|c| c.as_str()).unwrap_or("");
        assert!(
            comment.trim().len() > 20,
            "rule {:?} needs a comment saying why",
            rule.get("id")
        );
    }
}

#[test]
fn bad_policies_are_errors_naming_the_step() {
    let syntax = Policy::from_toml("[[rule]\nid = ");
    assert!(matches!(syntax, Err(ScannerError::Parse(_))));
    assert!(syntax.unwrap_err().to_string().contains("parsing"));

    let unknown_field = Policy::from_toml(
        "[[rule]]\nid = \"a\"\nname = \"A\"\ncategory = \"module\"\nmodules = [\"os\"]\ncomment = \"why\"\nmodule = \"typo\"\n",
    );
    assert!(matches!(unknown_field, Err(ScannerError::Parse(_))));

    let wrong_fields = Policy::from_toml(
        "[[rule]]\nid = \"a\"\nname = \"A\"\ncategory = \"module\"\nattributes = [\"x\"]\ncomment = \"why\"\n",
    );
    let err = wrong_fields.unwrap_err();
    assert!(matches!(err, ScannerError::Invalid { .. }));
    assert!(err.to_string().contains("validating"), "{err}");

    let duplicate = Policy::from_toml(
        "[[rule]]\nid = \"a\"\nname = \"A\"\ncategory = \"module\"\nmodules = [\"os\"]\ncomment = \"why\"\n[[rule]]\nid = \"a\"\nname = \"A\"\ncategory = \"module\"\nmodules = [\"sys\"]\ncomment = \"why\"\n",
    );
    assert!(matches!(duplicate, Err(ScannerError::Invalid { .. })));

    let missing = Policy::from_path(std::path::Path::new("/nonexistent/scanner.toml"));
    assert!(matches!(missing, Err(ScannerError::Read { .. })));
}

#[test]
fn custom_policy_from_toml_is_used() {
    let policy = Policy::from_toml(
        "[[rule]]\nid = \"no-json\"\nname = \"JSON\"\ncategory = \"module\"\nmodules = [\"json\"]\ncomment = \"test\"\n",
    )
    .expect("valid");
    assert_eq!(violation_names(&scan("import json", &policy)), vec!["JSON"]);
    assert!(scan("import os", &policy).is_empty());
}

/// Analysis code without watched words, to put around the statements under test so the
/// partial parse has something to leave out.
const FILLER: &str = r#"
def load_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"region": rng.choice(["n", "s"], size=n), "sales": rng.normal(100, 15, size=n)})
    frame["revenue"] = frame["sales"] * 2
    return frame


frame = load_frame()
monthly = frame.groupby("region")["revenue"].agg(["sum", "mean", "count"])
ratios = {r: round(v, 3) for r, v in monthly["mean"].items()}
if len(ratios) > 1:
    print(sorted(ratios))
else:
    print("one region")
print(f"{len(frame)} rows, {monthly.shape}")
"#;

/// The parse of reachable statements only must give what the whole parse gives, for every
/// corpus case put among statements it leaves out, before and after them, and with the
/// case's own top-level statements spread apart.
#[test]
fn partial_parse_changes_nothing() {
    let policy = Policy::builtin();
    let header = "import numpy as np\nimport pandas as pd\n";
    let mut checked = 0;
    for (label, code, _) in CORPUS {
        let mut variants = vec![
            format!("{header}{FILLER}\n{code}\n"),
            format!("{code}\n{header}{FILLER}{FILLER}"),
            format!("{LLM_ANALYSIS}\n{code}\n{FILLER}"),
        ];
        if !code.lines().any(|l| l.starts_with([' ', '\t'])) {
            let spread: Vec<&str> = code.lines().collect();
            variants.push(format!("{header}{}\n", spread.join(FILLER)));
        }
        for v in variants {
            let fast = analyze(&v, &policy);
            let full = run(&v, &policy, Mode::NoPrefilter);
            assert_eq!(fast.violations, full.violations, "{label}:\n{v}");
            if ast::Suite::parse(&v, "<string>").is_ok() {
                let imports = run(&v, &policy, Mode::Imports).imported_modules;
                assert_eq!(fast.imported_modules, imports, "{label}:\n{v}");
            }
            checked += 1;
        }
    }
    assert!(checked > 3 * CORPUS.len());
}

/// Values that travel through statements without a watched word still reach the checker.
#[test]
fn partial_parse_follows_names_through_cold_statements() {
    let cases: &[(&str, &[&str])] = &[
        (
            "import subprocess as sp\n{F}\nx = sp\n{F}\ny = x\n{F}\ny.run(['ls'])\n",
            &["Subprocess management", "subprocess command execution"],
        ),
        (
            "import numpy as np\nc = np.ctypeslib\n{F}\nc.load_library('x', '.')\n",
            &["Foreign function interface"],
        ),
        (
            "import timeit as t\n{F}\nt.Timer('x = 1')\n",
            &["Dynamic code execution"],
        ),
        (
            "def pick(name):\n    return name\n{F}\nname = 'mean'\nprint(getattr(np, name))\n",
            &["Dynamic attribute access"],
        ),
        (
            "a = 'sys'\n{F}\nb = 'tem'\n{F}\nimport os\ngetattr(os, a + b)('id')\n",
            &["Operating system interface", "os.system line execution"],
        ),
        (
            "g = globals\n{F}\nns = g()\n{F}\nns[key]\n",
            &["Dynamic namespace access"],
        ),
        (
            "def f():\n    pass\n{F}\nb = '__co' + 'de__'\n{F}\na = b\n{F}\nsetattr(f, a, None)\n",
            &["Function internals access"],
        ),
        (
            "for attr in names_list:\n    pass\n{F}\nprint(getattr(np, attr))\n",
            &["Dynamic attribute access"],
        ),
        (
            "print(f\"{(attr := input())}\")\n{F}\nattr = 'mean'\nprint(getattr(np, attr))\n",
            &["Dynamic attribute access"],
        ),
        (
            "match v:\n    case [attr]:\n        pass\n{F}\nattr = 'mean'\ngetattr(np, attr)\n",
            &["Dynamic attribute access"],
        ),
        (
            "attr = 'mean'\n{F}\nattr += 'x'\ngetattr(np, attr)\n",
            &["Dynamic attribute access"],
        ),
        (
            "@decorate\ndef run(x):\n    return x\n{F}\nimport subprocess as sp\nalias = sp\n{F}\nrun = alias.check_call\n{F}\nrun(['id'])\n",
            &["Subprocess management", "subprocess command execution"],
        ),
        (
            "import subprocess as sp\na0 = sp\n{F}\na1 = a0\n{F}\na2 = a1\n{F}\na3 = a2\n{F}\na4 = a3\n{F}\na5 = a4\n{F}\na6 = a5\n{F}\na7 = a6\n{F}\na7.run(['id'])\n",
            &["Subprocess management", "subprocess command execution"],
        ),
        ("x = 1 +\n{F}\nprint(getattr(np, 'mean'))\n", &[]),
        ("print(getattr(np, 'mean'))\n{F}\n", &[]),
    ];
    let policy = Policy::builtin();
    for (template, expected) in cases {
        let code = template.replace("{F}", FILLER);
        assert_eq!(names_for(&code), *expected, "{code}");
        let full = run(&code, &policy, Mode::NoPrefilter).violations;
        assert_eq!(scan(&code, &policy), full, "{code}");
    }
}

/// Random mixtures of corpus cases and statements that pass values along (a fixed seed, so a
/// failure reproduces): the partial parse must agree with the whole one on every mixture.
/// 30,000 mixtures agreed when this was written; the test keeps a few hundred.
#[test]
fn partial_parse_agrees_on_random_mixtures() {
    let policy = Policy::builtin();
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n
    };
    let pieces: Vec<&str> = vec![
        FILLER,
        LLM_ANALYSIS,
        "import numpy as np\n",
        "import pandas as pd\n",
        "x = np\n",
        "y = x.ctypeslib\n",
        "name = input()\n",
        "def g(name):\n    return name\n",
        "attr = 'mean'\n",
        "b = '__co' + 'de__'\n",
        "a = b\n",
        "f = getattr\n",
        "h = sp\n",
        "import subprocess as sp\n",
        "k = h.run\n",
        "k(['x'])\n",
        "setattr(obj, a, 1)\n",
        "print(getattr(np, attr))\n",
        "ns = vars\n",
        "q = ns(obj)\n",
        "q.get(key)\n",
        "m = b\n",
        "getattr(os, m)\n",
        "for m in things:\n    pass\n",
        "z = f\n",
        "z(obj, m)\n",
        "from pathlib import Path as P\n",
        "p = '/etc/' + 'passwd'\n",
        "P(p).read_text()\n",
        "r = P\n",
        "r(p)\n",
        "def r():\n    pass\n",
    ];
    let mut diffs = 0;
    for _ in 0..300 {
        let mut code = String::new();
        for _ in 0..(2 + next(7)) {
            if next(2) == 0 {
                code.push_str(CORPUS[next(CORPUS.len())].1);
                code.push('\n');
            } else {
                code.push_str(pieces[next(pieces.len())]);
            }
        }
        let fast = analyze(&code, &policy);
        let full = run(&code, &policy, Mode::NoPrefilter);
        if fast.violations != full.violations {
            diffs += 1;
            eprintln!(
                "DIFF:\n{code}\nfast {:?}\nfull {:?}",
                violation_names(&fast.violations),
                violation_names(&full.violations)
            );
        }
    }
    assert_eq!(diffs, 0);
}
