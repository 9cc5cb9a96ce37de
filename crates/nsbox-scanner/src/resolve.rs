//! Name resolution: what each variable may refer to (qualified names) and may hold (strings).
//!
//! The analysis is flow-insensitive and merges all scopes: a name's possible values are the
//! union over every place the program binds it, computed to a fixpoint. That over-approximates
//! (a local `f` in one function and a global `f` share values) but nothing bound anywhere is
//! lost, which is the direction a policy check wants to err in.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use rustpython_parser::ast::{
    self, Arguments, Constant, ConversionFlag, Expr, Operator, Pattern, Stmt, UnaryOp,
};
use unicode_normalization::UnicodeNormalization;

use super::fold::{self, FmtArg, StrSet};
use super::policy::{Policy, Sink, SinkKind};
use super::walk::{Ctx, Visitor};

/// Pseudo qualified name for the dict returned by globals()/locals()/vars().
pub(crate) const NAMESPACE: &str = "@namespace";
/// Most qualified names one expression may resolve to; beyond that extra ones are dropped.
const MAX_OBJS: usize = 32;
/// Longest qualified name built; long chains are not module paths anyone imports.
const MAX_QUAL_LEN: usize = 256;
/// Recursion limit of the evaluators (they are also bounded by the tree depth limit).
const MAX_EVAL_DEPTH: u32 = 48;
/// Fixpoint rounds; each round lets values flow through one more assignment.
const MAX_ROUNDS: usize = 12;

/// The names Python 3.11 defines in `builtins` (`dir(builtins)`).
const BUILTIN_NAMES: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BaseException",
    "BaseExceptionGroup",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "BytesWarning",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "DeprecationWarning",
    "EOFError",
    "Ellipsis",
    "EncodingWarning",
    "EnvironmentError",
    "Exception",
    "ExceptionGroup",
    "False",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "FutureWarning",
    "GeneratorExit",
    "IOError",
    "ImportError",
    "ImportWarning",
    "IndentationError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "KeyboardInterrupt",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "None",
    "NotADirectoryError",
    "NotImplemented",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PendingDeprecationWarning",
    "PermissionError",
    "ProcessLookupError",
    "RecursionError",
    "ReferenceError",
    "ResourceWarning",
    "RuntimeError",
    "RuntimeWarning",
    "StopAsyncIteration",
    "StopIteration",
    "SyntaxError",
    "SyntaxWarning",
    "SystemError",
    "SystemExit",
    "TabError",
    "TimeoutError",
    "True",
    "TypeError",
    "UnboundLocalError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "UnicodeTranslateError",
    "UnicodeWarning",
    "UserWarning",
    "ValueError",
    "Warning",
    "ZeroDivisionError",
    "__build_class__",
    "__debug__",
    "__doc__",
    "__import__",
    "__loader__",
    "__name__",
    "__package__",
    "__spec__",
    "abs",
    "aiter",
    "all",
    "anext",
    "any",
    "ascii",
    "bin",
    "bool",
    "breakpoint",
    "bytearray",
    "bytes",
    "callable",
    "chr",
    "classmethod",
    "compile",
    "complex",
    "copyright",
    "credits",
    "delattr",
    "dict",
    "dir",
    "divmod",
    "enumerate",
    "eval",
    "exec",
    "exit",
    "filter",
    "float",
    "format",
    "frozenset",
    "getattr",
    "globals",
    "hasattr",
    "hash",
    "help",
    "hex",
    "id",
    "input",
    "int",
    "isinstance",
    "issubclass",
    "iter",
    "len",
    "license",
    "list",
    "locals",
    "map",
    "max",
    "memoryview",
    "min",
    "next",
    "object",
    "oct",
    "open",
    "ord",
    "pow",
    "print",
    "property",
    "quit",
    "range",
    "repr",
    "reversed",
    "round",
    "set",
    "setattr",
    "slice",
    "sorted",
    "staticmethod",
    "str",
    "sum",
    "super",
    "tuple",
    "type",
    "vars",
    "zip",
];

fn is_builtin(name: &str) -> bool {
    BUILTIN_NAMES.binary_search(&name).is_ok()
}

/// Python folds identifiers with NFKC before using them (`ｅｖａｌ` is `eval`), and so must
/// every comparison here. ASCII, the common case, is returned as is.
pub(crate) fn norm(id: &str) -> Cow<'_, str> {
    if id.is_ascii() {
        Cow::Borrowed(id)
    } else {
        Cow::Owned(id.nfkc().collect())
    }
}

#[derive(Debug, Clone, Copy)]
enum Binding<'a> {
    /// An import: the variable is this module or module attribute.
    Qual(usize),
    Expr(&'a Expr),
    /// Bound to something the analysis does not follow (parameters, loop variables over
    /// computed iterables, `with ... as`, function and class names).
    Opaque,
}

#[derive(Debug, Default)]
struct Var<'a> {
    bindings: Vec<Binding<'a>>,
    objs: Vec<String>,
    strs: Option<StrSet>,
}

/// The resolved program: every variable's possible qualified names and string values.
pub(crate) struct Env<'a, 'p> {
    policy: &'p Policy,
    index: HashMap<String, usize>,
    vars: Vec<Var<'a>>,
    quals: Vec<String>,
    star_modules: Vec<String>,
    /// Top-level modules imported by statements, first-seen order.
    pub imported: Vec<String>,
    /// objs() of compound nodes by address, once the fixpoint is reached. The checker asks
    /// for every prefix of `a.b.c.d...` and every level of `x[0][0]...`; without this each
    /// chain costs its length squared, which a 50 kB input turns into a 100+ ms stall.
    memo: RefCell<Option<HashMap<usize, Vec<String>>>>,
}

/// Which argument a sink names, if the call has it.
pub(crate) enum ArgPick<'a> {
    Expr(&'a Expr),
    /// The call spreads `*args`/`**kwargs` before it: the argument cannot be located.
    Unknown,
    Missing,
}

impl<'a, 'p> Env<'a, 'p> {
    pub(crate) fn new(policy: &'p Policy) -> Self {
        Env {
            policy,
            index: HashMap::new(),
            vars: Vec::new(),
            quals: Vec::new(),
            star_modules: Vec::new(),
            imported: Vec::new(),
            memo: RefCell::new(None),
        }
    }

    fn var_mut(&mut self, name: &str) -> &mut Var<'a> {
        let name = norm(name);
        let i = match self.index.get(name.as_ref()) {
            Some(&i) => i,
            None => {
                self.vars.push(Var::default());
                self.index.insert(name.into_owned(), self.vars.len() - 1);
                self.vars.len() - 1
            }
        };
        &mut self.vars[i]
    }

    fn bind(&mut self, name: &str, b: Binding<'a>) {
        self.var_mut(name).bindings.push(b);
    }

    fn bind_qual(&mut self, name: &str, qual: String) {
        self.quals.push(qual);
        let q = self.quals.len() - 1;
        self.bind(name, Binding::Qual(q));
    }

    fn note_import(&mut self, module: &str) {
        let top = module.split('.').next().unwrap_or(module);
        if !top.is_empty() && !self.imported.iter().any(|m| m == top) {
            self.imported.push(top.to_owned());
        }
    }

    /// Binds an assignment target to a value, element-wise when both sides are literals of
    /// the same shape (`a, b = "sys", "tem"`).
    fn bind_target(&mut self, target: &'a Expr, value: Option<&'a Expr>) {
        match target {
            Expr::Name(n) => {
                let b = value.map_or(Binding::Opaque, Binding::Expr);
                self.bind(n.id.as_str(), b);
            }
            Expr::Tuple(ast::ExprTuple { elts, .. }) | Expr::List(ast::ExprList { elts, .. }) => {
                let values = match value {
                    Some(Expr::Tuple(ast::ExprTuple { elts: vs, .. }))
                    | Some(Expr::List(ast::ExprList { elts: vs, .. }))
                        if vs.len() == elts.len()
                            && !vs.iter().chain(elts.iter()).any(Expr::is_starred_expr) =>
                    {
                        Some(vs)
                    }
                    _ => None,
                };
                for (i, t) in elts.iter().enumerate() {
                    self.bind_target(t, values.map(|vs| &vs[i]));
                }
            }
            Expr::Starred(s) => self.bind_target(&s.value, None),
            _ => {}
        }
    }

    /// Binds a loop target to each element of a literal iterable, or opaquely.
    fn bind_iter(&mut self, target: &'a Expr, iter: &'a Expr) {
        match iter {
            Expr::List(ast::ExprList { elts, .. })
            | Expr::Tuple(ast::ExprTuple { elts, .. })
            | Expr::Set(ast::ExprSet { elts, .. }) => {
                if elts.is_empty() {
                    self.bind_target(target, None);
                }
                for e in elts {
                    let v = (!e.is_starred_expr()).then_some(e);
                    self.bind_target(target, v);
                }
            }
            _ => self.bind_target(target, None),
        }
    }

    fn bind_arguments(&mut self, a: &'a Arguments) {
        for arg in a.posonlyargs.iter().chain(&a.args).chain(&a.kwonlyargs) {
            self.bind(arg.def.arg.as_str(), Binding::Opaque);
        }
        for arg in a.vararg.iter().chain(&a.kwarg) {
            self.bind(arg.arg.as_str(), Binding::Opaque);
        }
    }

    /// Computes every variable's values to a fixpoint.
    pub(crate) fn solve(&mut self) {
        // Imports and opaque bindings never change; seed them once.
        let mut pending = Vec::new();
        for i in 0..self.vars.len() {
            let mut objs = Vec::new();
            let mut strs = StrSet::empty();
            let mut has_expr = false;
            for b in &self.vars[i].bindings {
                match *b {
                    Binding::Qual(q) => {
                        push_obj(&mut objs, self.quals[q].clone());
                        strs = StrSet::Unknown;
                    }
                    Binding::Opaque => strs = StrSet::Unknown,
                    Binding::Expr(_) => has_expr = true,
                }
            }
            self.vars[i].objs = objs;
            self.vars[i].strs = Some(strs);
            if has_expr {
                pending.push(i);
            }
        }
        for _ in 0..MAX_ROUNDS {
            let mut changed = false;
            for &i in &pending {
                let mut objs = self.vars[i].objs.clone();
                let mut strs = self.vars[i].strs.clone().unwrap_or(StrSet::Unknown);
                for b in &self.vars[i].bindings {
                    if let Binding::Expr(e) = *b {
                        for o in self.objs(e, 0) {
                            push_obj(&mut objs, o);
                        }
                        if strs != StrSet::Unknown {
                            strs.union(self.strs(e, 0));
                        }
                    }
                }
                let var = &mut self.vars[i];
                if var.objs != objs || var.strs.as_ref() != Some(&strs) {
                    var.objs = objs;
                    var.strs = Some(strs);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Values are final from here on, so results can be reused.
        *self.memo.borrow_mut() = Some(HashMap::new());
    }

    /// What a `def`, `class` or `type` statement left unparsed binds the name to.
    pub(crate) fn bind_defined(&mut self, name: &str) {
        self.bind(name, Binding::Opaque);
    }

    /// The expressions a name is bound to (assignments, loop elements, walrus).
    pub(crate) fn bound_exprs(&self, name: &str) -> Vec<&'a Expr> {
        self.lookup(&norm(name))
            .map(|v| {
                v.bindings
                    .iter()
                    .filter_map(|b| match *b {
                        Binding::Expr(e) => Some(e),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A `from m import *` was seen: then any free name may be one of m's.
    pub(crate) fn has_star_imports(&self) -> bool {
        !self.star_modules.is_empty()
    }

    /// Whether `name` may hold something a rule can name once more attributes are read from
    /// it: the namespace dict, or a qualified name with a component the policy watches for
    /// (every match of a rule contains such a component; see `prefilter`). Valid after solve.
    pub(crate) fn may_reach_rule(&self, name: &str) -> bool {
        let Some(var) = self.lookup(name) else {
            return false;
        };
        let t = &self.policy.triggers;
        var.objs.iter().any(|q| {
            q == NAMESPACE
                || q.split('.').any(|c| {
                    t.words.contains(c)
                        || t.bare_words.contains(c)
                        || t.prefixes.iter().any(|p| c.starts_with(p.as_str()))
                })
        })
    }

    fn lookup(&self, name: &str) -> Option<&Var<'a>> {
        self.index.get(name).map(|&i| &self.vars[i])
    }

    /// True when checking a load of `name` cannot find anything: it is bound to nothing the
    /// analysis follows, is not a builtin any rule names, and no star import could supply it.
    pub(crate) fn name_is_inert(&self, name: &str) -> bool {
        let var = self.lookup(name);
        var.is_none_or(|v| v.objs.is_empty())
            && !self.policy.watched_builtins.contains(name)
            && name != "__builtins__"
            && (var.is_some() || self.star_modules.is_empty())
    }

    /// What a bare name may refer to. A builtin name always includes the builtin, even when
    /// the program also binds it: rebinding `eval` elsewhere must not hide a use of `eval`.
    pub(crate) fn name_objs(&self, name: &str) -> Vec<String> {
        let var = self.lookup(name);
        let mut out = var.map(|v| v.objs.clone()).unwrap_or_default();
        if name == "__builtins__" {
            push_obj(&mut out, "builtins".to_owned());
        } else if is_builtin(name) {
            push_obj(&mut out, format!("builtins.{name}"));
        } else if var.is_none() {
            for m in &self.star_modules {
                push_obj(&mut out, format!("{m}.{name}"));
            }
        }
        out
    }

    /// Qualified names an expression may evaluate to (empty when it is not a module, module
    /// member or builtin the analysis can follow).
    pub(crate) fn objs(&self, e: &Expr, depth: u32) -> Vec<String> {
        if depth > MAX_EVAL_DEPTH {
            return Vec::new();
        }
        if !matches!(e, Expr::Attribute(_) | Expr::Subscript(_) | Expr::Call(_)) {
            return self.objs_uncached(e, depth);
        }
        // The address identifies the node for as long as the tree lives, which outlasts the
        // checker. A result first computed deep inside a longer chain may have been cut by
        // MAX_EVAL_DEPTH; reusing it only matters for chains longer than that limit.
        let key = e as *const Expr as usize;
        if let Some(hit) = self.memo.borrow().as_ref().and_then(|m| m.get(&key)) {
            return hit.clone();
        }
        let out = self.objs_uncached(e, depth);
        if let Some(m) = self.memo.borrow_mut().as_mut() {
            m.insert(key, out.clone());
        }
        out
    }

    fn objs_uncached(&self, e: &Expr, depth: u32) -> Vec<String> {
        match e {
            Expr::Name(n) => self.name_objs(&norm(n.id.as_str())),
            Expr::Attribute(a) => {
                let attr = norm(a.attr.as_str());
                let mut out = Vec::new();
                for q in self.objs(&a.value, depth + 1) {
                    if q != NAMESPACE {
                        push_obj(&mut out, format!("{q}.{attr}"));
                    }
                }
                out
            }
            Expr::Subscript(s) => {
                let base = self.objs(&s.value, depth + 1);
                if base.is_empty() {
                    return base;
                }
                let StrSet::Known(keys) = self.strs(&s.slice, depth + 1) else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                for q in base {
                    for k in &keys {
                        for r in subscript_objs(self, &q, k) {
                            push_obj(&mut out, r);
                        }
                    }
                }
                out
            }
            Expr::Call(c) => self.call_objs(c, depth),
            _ => Vec::new(),
        }
    }

    fn call_objs(&self, c: &ast::ExprCall, depth: u32) -> Vec<String> {
        let fobjs = self.objs(&c.func, depth + 1);
        let mut out = Vec::new();
        // Only sinks and namespace functions return something nameable; an unresolved
        // method call (`df.groupby(...)`) can only be an attribute sink.
        if fobjs.is_empty()
            && !matches!(&*c.func, Expr::Attribute(a)
                if self.policy.callee_words.contains(norm(a.attr.as_str()).as_ref()))
        {
            return out;
        }
        if self.is_namespace_fn(&fobjs) {
            if c.args.is_empty() && c.keywords.is_empty() {
                push_obj(&mut out, NAMESPACE.to_owned());
            } else if let [arg] = c.args.as_slice() {
                for q in self.objs(arg, depth + 1) {
                    push_obj(&mut out, format!("{q}.__dict__"));
                }
            }
            return out;
        }
        for sink in self.sinks_for(&c.func, &fobjs) {
            let ArgPick::Expr(arg) = pick_arg(c, sink) else {
                continue;
            };
            let StrSet::Known(names) = self.strs(arg, depth + 1) else {
                continue;
            };
            match sink.kind {
                SinkKind::Import => {
                    for m in names {
                        if let Some(top) = m.split('.').next() {
                            push_obj(&mut out, top.to_owned());
                        }
                        push_obj(&mut out, m);
                    }
                }
                SinkKind::CodeString => {}
                SinkKind::Attribute => {
                    for base in self.sink_base_objs(c, sink, depth) {
                        for n in &names {
                            push_obj(&mut out, format!("{base}.{n}"));
                        }
                    }
                }
            }
        }
        out
    }

    /// The qualified names of the object whose attribute an attribute sink reads.
    pub(crate) fn sink_base_objs(&self, c: &ast::ExprCall, sink: &Sink, depth: u32) -> Vec<String> {
        match (sink.base, &*c.func) {
            (Some(i), _) => c
                .args
                .get(i)
                .map(|b| self.objs(b, depth + 1))
                .unwrap_or_default(),
            (None, Expr::Attribute(a)) if sink.attribute.is_some() => {
                self.objs(&a.value, depth + 1)
            }
            _ => Vec::new(),
        }
    }

    pub(crate) fn is_namespace_fn(&self, fobjs: &[String]) -> bool {
        fobjs
            .iter()
            .any(|q| self.policy.namespace.iter().any(|(n, _)| n == q))
    }

    /// Sinks a call's callee is: by qualified name, or by the attribute it calls.
    pub(crate) fn sinks_for<'s>(
        &'s self,
        func: &'s Expr,
        fobjs: &'s [String],
    ) -> impl Iterator<Item = &'p Sink> + 's {
        let attr = match func {
            Expr::Attribute(a) => Some(norm(a.attr.as_str())),
            _ => None,
        };
        self.policy
            .sinks
            .iter()
            .filter(move |s| match (&s.name, &s.attribute) {
                (Some(n), _) => fobjs.iter().any(|q| qual_matches(q, n)),
                (None, Some(a)) => attr.as_deref() == Some(a.as_str()),
                (None, None) => false,
            })
    }

    /// Possible string values of an expression.
    pub(crate) fn strs(&self, e: &Expr, depth: u32) -> StrSet {
        if depth > MAX_EVAL_DEPTH {
            return StrSet::Unknown;
        }
        let d = depth + 1;
        match e {
            Expr::Constant(c) => match &c.value {
                Constant::Str(s) => StrSet::one(s.clone()),
                Constant::Bytes(b) => {
                    String::from_utf8(b.clone()).map_or(StrSet::Unknown, StrSet::one)
                }
                _ => StrSet::Unknown,
            },
            Expr::Name(n) => self
                .lookup(&norm(n.id.as_str()))
                .and_then(|v| v.strs.clone())
                .unwrap_or(StrSet::Unknown),
            Expr::BinOp(b) => match b.op {
                Operator::Add => fold::product(vec![self.strs(&b.left, d), self.strs(&b.right, d)]),
                Operator::Mod => {
                    let StrSet::Known(fmts) = self.strs(&b.left, d) else {
                        return StrSet::Unknown;
                    };
                    let args = match &*b.right {
                        Expr::Tuple(t) => t.elts.iter().map(|a| self.fmt_arg(a, d)).collect(),
                        other => self.fmt_arg(other, d).map(|a| vec![a]),
                    };
                    let Some(args) = args else {
                        return StrSet::Unknown;
                    };
                    StrSet::Known(fmts).map(|f| fold::percent(f, &args))
                }
                // `str / str` raises: strings on both sides mean a PurePath on the left.
                Operator::Div => {
                    fold::join_paths(vec![self.strs(&b.left, d), self.strs(&b.right, d)])
                }
                Operator::Mult => match (self.strs(&b.left, d), ints(&b.right)) {
                    (s @ StrSet::Known(_), Some(n)) if (0..=64).contains(&n) => {
                        s.map(|x| Some(x.repeat(n as usize)))
                    }
                    _ => StrSet::Unknown,
                },
                _ => StrSet::Unknown,
            },
            Expr::JoinedStr(j) => {
                let parts = j.values.iter().map(|v| self.fstring_part(v, d)).collect();
                fold::product(parts)
            }
            Expr::Call(c) => self.call_strs(c, d),
            Expr::Subscript(s) => {
                let base = self.strs(&s.value, d);
                match &*s.slice {
                    Expr::Slice(sl) => {
                        let bound = |b: &Option<Box<Expr>>| match b {
                            None => Some(None),
                            Some(e) => ints(e).map(Some),
                        };
                        match (bound(&sl.lower), bound(&sl.upper), bound(&sl.step)) {
                            (Some(lo), Some(hi), Some(st)) => {
                                base.map(|x| fold::slice(x, lo, hi, st))
                            }
                            _ => StrSet::Unknown,
                        }
                    }
                    idx => match ints(idx) {
                        Some(i) => base.map(|x| fold::index(x, i)),
                        None => StrSet::Unknown,
                    },
                }
            }
            Expr::IfExp(i) => {
                let mut s = self.strs(&i.body, d);
                s.union(self.strs(&i.orelse, d));
                s
            }
            Expr::BoolOp(b) => {
                let mut s = StrSet::empty();
                for v in &b.values {
                    s.union(self.strs(v, d));
                }
                s
            }
            _ => StrSet::Unknown,
        }
    }

    fn fmt_arg(&self, e: &Expr, depth: u32) -> Option<FmtArg> {
        if let Some(i) = ints(e) {
            return Some(FmtArg::Int(i));
        }
        self.strs(e, depth)
            .single()
            .map(|s| FmtArg::Str(s.to_owned()))
    }

    fn fstring_part(&self, e: &Expr, depth: u32) -> StrSet {
        match e {
            Expr::Constant(_) => self.strs(e, depth),
            Expr::FormattedValue(f)
                if f.format_spec.is_none()
                    && matches!(f.conversion, ConversionFlag::None | ConversionFlag::Str) =>
            {
                match ints(&f.value) {
                    Some(i) => StrSet::one(i.to_string()),
                    None => self.strs(&f.value, depth),
                }
            }
            _ => StrSet::Unknown,
        }
    }

    fn call_strs(&self, c: &ast::ExprCall, d: u32) -> StrSet {
        let args = &c.args;
        if let Some(path) = self.path_call_strs(c, d) {
            return path;
        }
        match &*c.func {
            Expr::Name(n) => match (norm(n.id.as_str()).as_ref(), args.as_slice()) {
                ("str", [a]) => self.strs(a, d),
                ("chr", [a]) => char_of(a).map_or(StrSet::Unknown, |c| StrSet::one(c.to_string())),
                ("bytes" | "bytearray", [a]) => match self.items(a, d, true) {
                    Some(parts) => fold::product(parts),
                    None => StrSet::Unknown,
                },
                _ => StrSet::Unknown,
            },
            Expr::Attribute(a) => {
                let method = norm(a.attr.as_str());
                let base = || self.strs(&a.value, d);
                match (method.as_ref(), args.as_slice()) {
                    ("join", [it]) => match (base(), self.items(it, d, false)) {
                        (StrSet::Known(seps), Some(parts)) => {
                            let mut out = StrSet::empty();
                            for sep in seps {
                                let mut seq = Vec::new();
                                for (i, p) in parts.iter().enumerate() {
                                    if i > 0 {
                                        seq.push(StrSet::one(sep.clone()));
                                    }
                                    seq.push(p.clone());
                                }
                                out.union(fold::product(seq));
                            }
                            out
                        }
                        _ => StrSet::Unknown,
                    },
                    ("format", _) => {
                        let pos: Option<Vec<FmtArg>> =
                            args.iter().map(|x| self.fmt_arg(x, d)).collect();
                        let kw: Option<Vec<(String, FmtArg)>> = c
                            .keywords
                            .iter()
                            .map(|k| {
                                Some((k.arg.as_ref()?.to_string(), self.fmt_arg(&k.value, d)?))
                            })
                            .collect();
                        match (pos, kw) {
                            (Some(p), Some(k)) => base().map(|f| fold::format(f, &p, &k)),
                            _ => StrSet::Unknown,
                        }
                    }
                    ("lower" | "casefold", []) => base().map(|s| Some(s.to_lowercase())),
                    ("upper", []) => base().map(|s| Some(s.to_uppercase())),
                    ("strip", []) => base().map(|s| Some(s.trim().to_owned())),
                    ("lstrip", []) => base().map(|s| Some(s.trim_start().to_owned())),
                    ("rstrip", []) => base().map(|s| Some(s.trim_end().to_owned())),
                    ("replace", [from, to]) => {
                        match (self.strs(from, d).single(), self.strs(to, d).single()) {
                            (Some(f), Some(t)) if !f.is_empty() => {
                                base().map(|s| Some(s.replace(f, t)))
                            }
                            _ => StrSet::Unknown,
                        }
                    }
                    // Methods of a pathlib path that keep it constant.
                    ("expanduser" | "resolve" | "absolute", []) => base(),
                    ("joinpath", parts) if !parts.iter().any(Expr::is_starred_expr) => {
                        let mut all = vec![base()];
                        all.extend(parts.iter().map(|p| self.strs(p, d)));
                        fold::join_paths(all)
                    }
                    ("decode" | "encode", []) => base(),
                    ("decode" | "encode", [_]) if !is_name(&a.value, "codecs") => base(),
                    ("decode" | "encode", [x, codec]) if is_name(&a.value, "codecs") => {
                        match self
                            .strs(codec, d)
                            .single()
                            .map(str::to_ascii_lowercase)
                            .as_deref()
                        {
                            Some("rot13" | "rot_13" | "rot-13") => {
                                self.strs(x, d).map(|s| Some(fold::rot13(s)))
                            }
                            _ => StrSet::Unknown,
                        }
                    }
                    (
                        "b64decode" | "decodebytes" | "urlsafe_b64decode" | "standard_b64decode",
                        [x],
                    ) => self.strs(x, d).map(fold::b64decode),
                    ("fromhex", [x]) => self.strs(x, d).map(fold::fromhex),
                    _ => StrSet::Unknown,
                }
            }
            _ => StrSet::Unknown,
        }
    }

    /// The functions that build a path from constant parts: os.path's join (and posixpath's),
    /// pathlib's constructors and `Path.home()`, and the helpers that leave a constant path
    /// as telling as it was (expanduser, normpath, abspath, realpath, fspath). `None` when the
    /// callee is none of them.
    fn path_call_strs(&self, c: &ast::ExprCall, d: u32) -> Option<StrSet> {
        let last = match &*c.func {
            Expr::Name(n) => n.id.as_str(),
            Expr::Attribute(a) => a.attr.as_str(),
            _ => return None,
        };
        const WORDS: &[&str] = &[
            "join",
            "Path",
            "PurePath",
            "PosixPath",
            "PurePosixPath",
            "home",
            "expanduser",
            "normpath",
            "abspath",
            "realpath",
            "fspath",
        ];
        if !WORDS.contains(&norm(last).as_ref()) {
            return None;
        }
        if c.args.iter().any(Expr::is_starred_expr) || !c.keywords.is_empty() {
            return None;
        }
        let parts = || c.args.iter().map(|a| self.strs(a, d)).collect::<Vec<_>>();
        for q in self.objs(&c.func, d) {
            let q = q.strip_prefix("os.path.").map_or(q.as_str(), |f| f);
            let q = q.strip_prefix("posixpath.").unwrap_or(q);
            match (q, c.args.as_slice()) {
                ("join", [_, ..]) => return Some(fold::join_paths(parts())),
                (
                    "pathlib.Path"
                    | "pathlib.PurePath"
                    | "pathlib.PosixPath"
                    | "pathlib.PurePosixPath",
                    [],
                ) => return Some(StrSet::one(".".into())),
                (
                    "pathlib.Path"
                    | "pathlib.PurePath"
                    | "pathlib.PosixPath"
                    | "pathlib.PurePosixPath",
                    _,
                ) => return Some(fold::join_paths(parts())),
                ("pathlib.Path.home" | "pathlib.PosixPath.home", []) => {
                    return Some(StrSet::one("~".into()))
                }
                ("expanduser" | "normpath" | "abspath" | "realpath" | "os.fspath", [a]) => {
                    return Some(self.strs(a, d))
                }
                _ => {}
            }
        }
        None
    }

    /// Folded elements of an iterable given to join() or bytes(): literals, strings (as their
    /// characters), map(chr, ...), reversed(...) and one-loop comprehensions over literals.
    /// With `codes`, integer elements are character codes (bytes([111, 115]), map(chr, ...)).
    fn items(&self, e: &Expr, d: u32, codes: bool) -> Option<Vec<StrSet>> {
        match e {
            Expr::List(ast::ExprList { elts, .. }) | Expr::Tuple(ast::ExprTuple { elts, .. }) => {
                Some(
                    elts.iter()
                        .map(|x| match (codes, char_of(x)) {
                            (true, Some(c)) => StrSet::one(c.to_string()),
                            _ => self.strs(x, d),
                        })
                        .collect(),
                )
            }
            Expr::Constant(_) | Expr::Name(_) | Expr::BinOp(_) | Expr::Subscript(_) => {
                let s = self.strs(e, d);
                let single = s.single()?;
                Some(single.chars().map(|c| StrSet::one(c.to_string())).collect())
            }
            Expr::Call(c) => match (&*c.func, c.args.as_slice()) {
                (Expr::Name(n), [f, it]) if norm(n.id.as_str()) == "map" => {
                    if is_name(f, "chr") {
                        self.items(it, d, true)
                    } else if is_name(f, "str") {
                        self.items(it, d, false)
                    } else {
                        None
                    }
                }
                (Expr::Name(n), [x]) if norm(n.id.as_str()) == "reversed" => {
                    let mut v = self.items(x, d, codes)?;
                    v.reverse();
                    Some(v)
                }
                _ => None,
            },
            Expr::ListComp(ast::ExprListComp {
                elt, generators, ..
            })
            | Expr::GeneratorExp(ast::ExprGeneratorExp {
                elt, generators, ..
            }) => {
                let [g] = generators.as_slice() else {
                    return None;
                };
                let (Expr::Name(t), true) = (&g.target, g.ifs.is_empty()) else {
                    return None;
                };
                let (Expr::List(ast::ExprList { elts, .. })
                | Expr::Tuple(ast::ExprTuple { elts, .. })) = &g.iter
                else {
                    return None;
                };
                elts.iter()
                    .map(|x| {
                        comprehension_item(elt, t.id.as_str(), x)
                            .map(|c| StrSet::one(c.to_string()))
                    })
                    .collect()
            }
            _ => None,
        }
    }
}

/// `chr(t)` / `chr(t + k)` / `t` evaluated with the loop variable `t` bound to `x`.
fn comprehension_item(elt: &Expr, var: &str, x: &Expr) -> Option<char> {
    let xi = ints(x);
    match elt {
        Expr::Name(n) if n.id.as_str() == var => char_of(x),
        Expr::Call(c) if is_name(&c.func, "chr") => {
            let [arg] = c.args.as_slice() else {
                return None;
            };
            let v = match arg {
                Expr::Name(n) if n.id.as_str() == var => xi?,
                Expr::BinOp(b) if matches!(&*b.left, Expr::Name(n) if n.id.as_str() == var) => {
                    let k = ints(&b.right)?;
                    match b.op {
                        Operator::Add => xi?.checked_add(k)?,
                        Operator::Sub => xi?.checked_sub(k)?,
                        _ => return None,
                    }
                }
                _ => return None,
            };
            char::from_u32(u32::try_from(v).ok()?)
        }
        _ => None,
    }
}

fn is_name(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Name(n) if norm(n.id.as_str()) == name)
}

/// `chr(<int>)` or a bare small int (as an element of bytes([...])) as a character.
fn char_of(e: &Expr) -> Option<char> {
    let v = match e {
        Expr::Call(c) if is_name(&c.func, "chr") => match c.args.as_slice() {
            [a] => ints(a)?,
            _ => return None,
        },
        other => ints(other)?,
    };
    char::from_u32(u32::try_from(v).ok()?)
}

/// Small integer arithmetic on constants (`chr(100 + 15)`, `ord('a')`).
pub(crate) fn ints(e: &Expr) -> Option<i64> {
    match e {
        Expr::Constant(c) => match &c.value {
            Constant::Int(i) => i.to_string().parse().ok(),
            Constant::Bool(b) => Some(i64::from(*b)),
            _ => None,
        },
        Expr::UnaryOp(u) => match u.op {
            UnaryOp::USub => ints(&u.operand)?.checked_neg(),
            UnaryOp::UAdd => ints(&u.operand),
            _ => None,
        },
        Expr::BinOp(b) => {
            let (l, r) = (ints(&b.left)?, ints(&b.right)?);
            match b.op {
                Operator::Add => l.checked_add(r),
                Operator::Sub => l.checked_sub(r),
                Operator::Mult => l.checked_mul(r),
                Operator::FloorDiv if r != 0 => Some(l.div_euclid(r)),
                Operator::Mod if r != 0 => Some(l.rem_euclid(r)),
                _ => None,
            }
        }
        Expr::Call(c) if is_name(&c.func, "ord") => match c.args.as_slice() {
            [Expr::Constant(ast::ExprConstant {
                value: Constant::Str(s),
                ..
            })] => {
                let mut it = s.chars();
                match (it.next(), it.next()) {
                    (Some(ch), None) => Some(i64::from(u32::from(ch))),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// What `q[key]` refers to, for the dict-like objects that hold named things.
fn subscript_objs(env: &Env<'_, '_>, q: &str, key: &str) -> Vec<String> {
    if q == NAMESPACE {
        env.name_objs(key)
    } else if let Some(owner) = q.strip_suffix(".__dict__") {
        vec![format!("{owner}.{key}")]
    } else if q == "builtins" {
        vec![format!("builtins.{key}")]
    } else if q == "sys.modules" {
        vec![key.to_owned()]
    } else {
        Vec::new()
    }
}

/// True when qualified name `q` is `pattern` or ends with `.pattern`.
pub(crate) fn qual_matches(q: &str, pattern: &str) -> bool {
    q == pattern
        || (q.len() > pattern.len()
            && q.ends_with(pattern)
            && q.as_bytes()[q.len() - pattern.len() - 1] == b'.')
}

fn push_obj(out: &mut Vec<String>, q: String) {
    if out.len() < MAX_OBJS && q.len() <= MAX_QUAL_LEN && !out.contains(&q) {
        out.push(q);
    }
}

/// Picks the argument a sink names: by keyword, else by position (negative counts from the
/// end, as Python indexes).
pub(crate) fn pick_arg<'e>(c: &'e ast::ExprCall, sink: &Sink) -> ArgPick<'e> {
    if let Some(kw) = &sink.keyword {
        if let Some(k) = c
            .keywords
            .iter()
            .find(|k| k.arg.as_deref() == Some(kw.as_str()))
        {
            return ArgPick::Expr(&k.value);
        }
    }
    let starred = c.args.iter().position(Expr::is_starred_expr);
    let len = c.args.len() as i64;
    let i = if sink.arg < 0 {
        len + sink.arg
    } else {
        sink.arg
    };
    if let Some(s) = starred {
        if sink.arg < 0 || s as i64 <= i {
            return ArgPick::Unknown;
        }
    }
    if i < 0 || i >= len {
        if c.keywords.iter().any(|k| k.arg.is_none()) {
            return ArgPick::Unknown;
        }
        return ArgPick::Missing;
    }
    ArgPick::Expr(&c.args[i as usize])
}

/// Collects bindings and imports: the first pass over the tree.
pub(crate) struct Collector<'e, 'a, 'p> {
    pub env: &'e mut Env<'a, 'p>,
}

impl<'a> Visitor<'a> for Collector<'_, 'a, '_> {
    fn stmt(&mut self, s: &'a Stmt) {
        let env = &mut *self.env;
        match s {
            Stmt::Import(i) => {
                for alias in &i.names {
                    let module = norm(alias.name.as_str()).into_owned();
                    env.note_import(&module);
                    match &alias.asname {
                        Some(as_) => env.bind_qual(as_.as_str(), module),
                        None => {
                            let top = module.split('.').next().unwrap_or(&module).to_owned();
                            env.bind_qual(&top, top.clone());
                        }
                    }
                }
            }
            Stmt::ImportFrom(i) => {
                let relative = i.level.is_some_and(|l| l.to_u32() > 0);
                let module = i.module.as_ref().map(|m| norm(m.as_str()).into_owned());
                match (&module, relative) {
                    (Some(m), false) => {
                        env.note_import(m);
                        for alias in &i.names {
                            let name = norm(alias.name.as_str());
                            if name == "*" {
                                env.star_modules.push(m.clone());
                                continue;
                            }
                            let bound = alias.asname.as_ref().unwrap_or(&alias.name);
                            env.bind_qual(bound.as_str(), format!("{m}.{name}"));
                        }
                    }
                    _ => {
                        for alias in &i.names {
                            let bound = alias.asname.as_ref().unwrap_or(&alias.name);
                            env.bind(bound.as_str(), Binding::Opaque);
                        }
                    }
                }
            }
            Stmt::Assign(a) => {
                for t in &a.targets {
                    env.bind_target(t, Some(&a.value));
                }
            }
            Stmt::AnnAssign(a) => {
                if let Some(v) = &a.value {
                    env.bind_target(&a.target, Some(v));
                }
            }
            Stmt::AugAssign(a) => env.bind_target(&a.target, None),
            Stmt::For(f) => env.bind_iter(&f.target, &f.iter),
            Stmt::AsyncFor(f) => env.bind_iter(&f.target, &f.iter),
            Stmt::With(w) => {
                for item in &w.items {
                    if let Some(v) = &item.optional_vars {
                        env.bind_target(v, None);
                    }
                }
            }
            Stmt::AsyncWith(w) => {
                for item in &w.items {
                    if let Some(v) = &item.optional_vars {
                        env.bind_target(v, None);
                    }
                }
            }
            Stmt::FunctionDef(f) => {
                env.bind(f.name.as_str(), Binding::Opaque);
                bind_type_params(env, &f.type_params);
            }
            Stmt::AsyncFunctionDef(f) => {
                env.bind(f.name.as_str(), Binding::Opaque);
                bind_type_params(env, &f.type_params);
            }
            Stmt::ClassDef(c) => {
                env.bind(c.name.as_str(), Binding::Opaque);
                bind_type_params(env, &c.type_params);
            }
            Stmt::TypeAlias(t) => {
                env.bind_target(&t.name, None);
                bind_type_params(env, &t.type_params);
            }
            Stmt::Try(ast::StmtTry { handlers, .. })
            | Stmt::TryStar(ast::StmtTryStar { handlers, .. }) => {
                for h in handlers {
                    let ast::ExceptHandler::ExceptHandler(h) = h;
                    if let Some(n) = &h.name {
                        env.bind(n.as_str(), Binding::Opaque);
                    }
                }
            }
            _ => {}
        }
    }

    fn expr(&mut self, e: &'a Expr, _ctx: Ctx) {
        match e {
            Expr::NamedExpr(n) => self.env.bind_target(&n.target, Some(&n.value)),
            Expr::ListComp(ast::ExprListComp { generators, .. })
            | Expr::SetComp(ast::ExprSetComp { generators, .. })
            | Expr::DictComp(ast::ExprDictComp { generators, .. })
            | Expr::GeneratorExp(ast::ExprGeneratorExp { generators, .. }) => {
                for g in generators {
                    self.env.bind_iter(&g.target, &g.iter);
                }
            }
            _ => {}
        }
    }

    fn pattern(&mut self, p: &'a Pattern) {
        let name = match p {
            Pattern::MatchAs(a) => a.name.as_ref(),
            Pattern::MatchStar(s) => s.name.as_ref(),
            Pattern::MatchMapping(m) => m.rest.as_ref(),
            _ => None,
        };
        if let Some(n) = name {
            self.env.bind(n.as_str(), Binding::Opaque);
        }
    }

    fn arguments(&mut self, a: &'a Arguments) {
        self.env.bind_arguments(a);
    }
}

fn bind_type_params(env: &mut Env<'_, '_>, tps: &[ast::TypeParam]) {
    for tp in tps {
        let name = match tp {
            ast::TypeParam::TypeVar(t) => &t.name,
            ast::TypeParam::ParamSpec(p) => &p.name,
            ast::TypeParam::TypeVarTuple(t) => &t.name,
        };
        env.bind(name.as_str(), Binding::Opaque);
    }
}

#[cfg(test)]
mod tests;
