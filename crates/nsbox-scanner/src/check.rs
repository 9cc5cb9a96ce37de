//! The second pass: matches every node against the policy, using the resolved names.

use rustpython_parser::ast::{self, Expr, ExprContext, Pattern, Ranged, Stmt};
use rustpython_parser::text_size::TextRange;

use super::fold::{self, StrSet};
use super::policy::{AttrScope, FileModes, FileRule, Policy, SinkKind};
use super::prefilter;
use super::resolve::{norm, pick_arg, qual_matches, ArgPick, Env, NAMESPACE};
use super::walk::{Ctx, Visitor};

/// A rule that fired, with the span used for its line and its order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finding {
    pub rule: usize,
    pub start: u32,
    pub end: u32,
}

/// Methods of a vars(obj) dict that read or write by key, the equivalents of getattr/setattr.
const KEYED_DICT_METHODS: &[&str] = &[
    "get",
    "pop",
    "setdefault",
    "update",
    "__getitem__",
    "__setitem__",
    "__delitem__",
    "popitem",
    "clear",
];

/// Attributes that continue a walk up the class hierarchy (`x.__class__.__class__`).
const CLASS_WALK: &[&str] = &["__class__", "__base__", "__bases__", "__mro__"];

pub(crate) struct Checker<'c, 'a, 'p> {
    pub policy: &'p Policy,
    pub env: &'c Env<'a, 'p>,
    pub findings: Vec<Finding>,
}

impl<'a> Visitor<'a> for Checker<'_, 'a, '_> {
    fn stmt(&mut self, s: &'a Stmt) {
        match s {
            Stmt::Import(i) => {
                for alias in &i.names {
                    self.import_event(&norm(alias.name.as_str()), alias.range());
                }
            }
            Stmt::ImportFrom(i) => {
                if i.level.is_some_and(|l| l.to_u32() > 0) {
                    return;
                }
                let Some(module) = &i.module else { return };
                let module = norm(module.as_str());
                let restricted = self.import_event(&module, s.range());
                for alias in &i.names {
                    let name = norm(alias.name.as_str());
                    if name == "*" {
                        continue;
                    }
                    let full = format!("{module}.{name}");
                    if !restricted {
                        self.import_event(&full, alias.range());
                    }
                    self.check_quals(std::slice::from_ref(&full), alias.range());
                }
            }
            _ => {}
        }
    }

    fn expr(&mut self, e: &'a Expr, ctx: Ctx) {
        match e {
            Expr::Name(n) => self.name(n, ctx),
            Expr::Attribute(a) => self.attribute(e, a, ctx),
            Expr::Subscript(s) => self.subscript(e, s),
            Expr::Call(c) => {
                if matches!(&*c.func, Expr::Attribute(a) if a.attr.as_str() == "joinpath") {
                    self.path_object(e);
                }
                self.call(c, ctx)
            }
            Expr::BinOp(b) if b.op == ast::Operator::Div => self.path_object(e),
            _ => {}
        }
    }

    fn pattern(&mut self, p: &'a Pattern) {
        // `case C(__globals__=g)` reads the attribute from the subject.
        if let Pattern::MatchClass(c) = p {
            for attr in &c.kwd_attrs {
                self.attribute_rules(&norm(attr.as_str()), None, p.range());
            }
        }
    }

    fn too_deep(&mut self, at: TextRange) {
        if let Some(r) = self.policy.nesting_rule {
            self.add(r, at);
        }
    }
}

impl<'a> Checker<'_, 'a, '_> {
    fn add(&mut self, rule: usize, at: TextRange) {
        self.findings.push(Finding {
            rule,
            start: at.start().to_u32(),
            end: at.end().to_u32(),
        });
    }

    /// Reports module rules for an import of `module`; true when one fired.
    fn import_event(&mut self, module: &str, at: TextRange) -> bool {
        let mut hit = false;
        for (m, r) in &self.policy.modules {
            if module == m
                || (module.len() > m.len()
                    && module.starts_with(m.as_str())
                    && module.as_bytes()[m.len()] == b'.')
            {
                let r = *r;
                self.add(r, at);
                hit = true;
            }
        }
        hit
    }

    fn check_quals(&mut self, quals: &[String], at: TextRange) {
        let mut rules = Vec::new();
        // Matching is by suffix, so the head of a long chain is kept as one piece that no
        // pattern reaches: splitting it all would make every chain cost its length again.
        let keep = self.policy.dotted.max_comps + 1;
        let mut comps: Vec<&str> = Vec::with_capacity(keep);
        for q in quals {
            comps.clear();
            comps.extend(q.rsplitn(keep, '.'));
            comps.reverse();
            self.policy.dotted.matches(&comps, &mut rules);
        }
        for r in rules {
            self.add(r, at);
        }
    }

    /// Attribute rules for a (possibly computed) attribute name read from `base`.
    fn attribute_rules(&mut self, attr: &str, base: Option<&Expr>, at: TextRange) {
        let Some(rules) = self.policy.attributes.get(attr) else {
            return;
        };
        for &(r, scope) in rules {
            let hit = match (scope, base) {
                (AttrScope::Any, _) => true,
                (AttrScope::Module, Some(b)) => self.is_module_like(b),
                (AttrScope::Literal, Some(b)) => self.is_literal_like(b),
                (_, None) => false,
            };
            if hit {
                self.add(r, at);
            }
        }
    }

    /// The object resolves to an import, a builtin, or something reached from one.
    fn is_module_like(&self, e: &Expr) -> bool {
        self.env.objs(e, 0).iter().any(|q| q != NAMESPACE)
    }

    /// Literals and class walks: the bases `__class__` is only ever taken from in escapes.
    fn is_literal_like(&self, e: &Expr) -> bool {
        match e {
            Expr::Constant(_)
            | Expr::JoinedStr(_)
            | Expr::List(_)
            | Expr::Tuple(_)
            | Expr::Dict(_)
            | Expr::Set(_)
            | Expr::ListComp(_)
            | Expr::SetComp(_)
            | Expr::DictComp(_)
            | Expr::GeneratorExp(_)
            | Expr::Lambda(_) => true,
            Expr::Attribute(a) => CLASS_WALK.contains(&norm(a.attr.as_str()).as_ref()),
            Expr::Name(_) | Expr::Call(_) => self
                .env
                .objs(
                    match e {
                        Expr::Call(c) => &c.func,
                        other => other,
                    },
                    0,
                )
                .iter()
                .any(|q| q.starts_with("builtins.")),
            _ => false,
        }
    }

    fn namespace_rule(&self, objs: &[String]) -> Option<usize> {
        self.policy
            .namespace
            .iter()
            .find(|(n, _)| objs.iter().any(|q| q == n))
            .map(|(_, r)| *r)
    }

    /// References to sinks that are not calls: the function escapes the scanner's view.
    fn uncalled_sinks(&mut self, objs: &[String], at: TextRange) {
        let mut rules = Vec::new();
        for s in &self.policy.sinks {
            // A code string is only judged where it is passed; the function alone is harmless.
            if s.kind == SinkKind::CodeString {
                continue;
            }
            if let Some(n) = &s.name {
                if s.report_dynamic && objs.iter().any(|q| qual_matches(q, n)) {
                    rules.push(s.rule);
                }
            }
        }
        if let Some(r) = self.namespace_rule(objs) {
            rules.push(r);
        }
        for r in rules {
            self.add(r, at);
        }
    }

    fn name(&mut self, n: &'a ast::ExprName, ctx: Ctx) {
        if !matches!(n.ctx, ExprContext::Load) {
            // Binding a name is not using it; a later load of it is checked.
            return;
        }
        let id = norm(n.id.as_str());
        if id.starts_with("__") && id.ends_with("__") {
            self.attribute_rules(&id, None, n.range);
        }
        if self.env.name_is_inert(&id) {
            return;
        }
        let objs = self.env.name_objs(&id);
        self.check_quals(&objs, n.range);
        if ctx != Ctx::CallFunc {
            self.uncalled_sinks(&objs, n.range);
        }
    }

    fn attribute(&mut self, e: &'a Expr, a: &'a ast::ExprAttribute, ctx: Ctx) {
        let attr = norm(a.attr.as_str());
        let at = a.range;
        self.attribute_rules(&attr, Some(&a.value), at);
        // Resolved names (`sp.run` with sp = subprocess) are matched whatever they end in;
        // the written chain only when its tail could match (`x.os.system`).
        let objs = self.env.objs(e, 0);
        self.check_quals(&objs, at);
        let head = match &*a.value {
            Expr::Attribute(b) => Some(norm(b.attr.as_str())),
            Expr::Name(n) => Some(norm(n.id.as_str())),
            _ => None,
        };
        if self.policy.dotted.may_match(head.as_deref(), &attr) {
            self.check_quals(&[syntactic_chain(e)], at);
        }
        if ctx != Ctx::CallFunc && self.policy.callee_words.contains(attr.as_ref()) {
            let mut rules: Vec<usize> = self
                .policy
                .sinks
                .iter()
                .filter(|s| {
                    s.report_dynamic
                        && s.kind != SinkKind::CodeString
                        && s.attribute.as_deref() == Some(attr.as_ref())
                })
                .map(|s| s.rule)
                .collect();
            let named_here = self
                .policy
                .sinks
                .iter()
                .filter_map(|s| s.name.as_deref())
                .chain(self.policy.namespace.iter().map(|(n, _)| n.as_str()))
                .any(|n| n.rsplit('.').next() == Some(attr.as_ref()));
            for r in rules.drain(..) {
                self.add(r, at);
            }
            if named_here {
                let objs = self.env.objs(e, 0);
                self.uncalled_sinks(&objs, at);
            }
        }
        // vars(obj).get(name) and friends read or write by key like getattr/setattr.
        if let Expr::Call(c) = &*a.value {
            if !c.args.is_empty() && KEYED_DICT_METHODS.contains(&attr.as_ref()) {
                let fobjs = self.env.objs(&c.func, 0);
                if let Some(r) = self.namespace_rule(&fobjs) {
                    self.add(r, at);
                }
            }
        }
    }

    fn subscript(&mut self, e: &'a Expr, s: &'a ast::ExprSubscript) {
        let at = s.range;
        let objs = self.env.objs(e, 0);
        self.check_quals(&objs, at);

        let vars_call = match &*s.value {
            Expr::Call(c) if !c.args.is_empty() => self.namespace_rule(&self.env.objs(&c.func, 0)),
            _ => None,
        };
        let base = self.env.objs(&s.value, 0);
        let on_namespace = base.iter().any(|q| q == NAMESPACE);
        if !on_namespace && vars_call.is_none() {
            return;
        }
        match self.env.strs(&s.slice, 0) {
            StrSet::Known(keys) if !keys.is_empty() => {
                for k in &keys {
                    // globals()['__builtins__'] is the bare name; vars(obj)['x'] is obj.x.
                    self.attribute_rules(k, None, at);
                }
            }
            _ => {
                let rule = vars_call.or_else(|| self.namespace_rule_for_dict(&s.value));
                if let Some(r) = rule {
                    self.add(r, at);
                }
            }
        }
    }

    /// The namespace rule behind a globals()/locals() dict expression.
    fn namespace_rule_for_dict(&self, e: &Expr) -> Option<usize> {
        match e {
            Expr::Call(c) => self.namespace_rule(&self.env.objs(&c.func, 0)),
            _ => self.policy.namespace.first().map(|(_, r)| *r),
        }
    }

    /// Whether the callee could be a sink, namespace or file function at all; most calls
    /// (`df.groupby(...)`) cannot, and skip resolution.
    fn callee_may_matter(&self, func: &Expr) -> bool {
        match func {
            Expr::Name(n) => {
                let id = norm(n.id.as_str());
                self.policy.callee_words.contains(id.as_ref()) || !self.env.name_is_inert(&id)
            }
            Expr::Attribute(a) => self
                .policy
                .callee_words
                .contains(norm(a.attr.as_str()).as_ref()),
            _ => true,
        }
    }

    fn call(&mut self, c: &'a ast::ExprCall, ctx: Ctx) {
        let at = c.range;
        if !self.callee_may_matter(&c.func) {
            return;
        }
        let fobjs = self.env.objs(&c.func, 0);

        if let Some(r) = self.namespace_rule(&fobjs) {
            if c.args.is_empty() && c.keywords.is_empty() {
                if ctx != Ctx::InOperand {
                    self.add(r, at);
                }
            } else if let [arg] = c.args.as_slice() {
                // vars(module) is module.__dict__.
                self.attribute_rules("__dict__", Some(arg), at);
            }
        }

        let sinks: Vec<_> = self.env.sinks_for(&c.func, &fobjs).collect();
        for sink in sinks {
            if sink.kind == SinkKind::CodeString {
                // Only constant expression strings are judged; see the policy's comment.
                if let ArgPick::Expr(arg) = pick_arg(c, sink) {
                    if let StrSet::Known(texts) = self.env.strs(arg, 0) {
                        if texts
                            .iter()
                            .any(|t| prefilter::has_trigger(t, &self.policy.triggers))
                        {
                            self.add(sink.rule, at);
                        }
                    }
                }
                continue;
            }
            let names = match pick_arg(c, sink) {
                ArgPick::Missing => continue,
                ArgPick::Unknown => StrSet::Unknown,
                ArgPick::Expr(arg) => self.env.strs(arg, 0),
            };
            let names = match names {
                StrSet::Known(v) if !v.is_empty() => v,
                _ => {
                    if sink.report_dynamic {
                        self.add(sink.rule, at);
                    }
                    continue;
                }
            };
            match sink.kind {
                SinkKind::CodeString => {}
                SinkKind::Import => {
                    for m in &names {
                        self.import_event(m, at);
                    }
                }
                SinkKind::Attribute => {
                    let base_expr: Option<&Expr> = match (sink.base, &*c.func) {
                        (Some(i), _) => c.args.get(i),
                        (None, Expr::Attribute(a)) if sink.attribute.is_some() => Some(&a.value),
                        _ => None,
                    };
                    let bases = self.env.sink_base_objs(c, sink, 0);
                    for n in &names {
                        // attrgetter('a.b') walks a dotted path.
                        for comp in n.split('.') {
                            self.attribute_rules(comp, base_expr, at);
                        }
                        let quals: Vec<String> = bases.iter().map(|b| format!("{b}.{n}")).collect();
                        self.check_quals(&quals, at);
                    }
                }
            }
        }

        for fr in &self.policy.file_rules {
            let covered: Vec<&str> = fobjs
                .iter()
                .filter(|q| {
                    let comps: Vec<&str> = q.split('.').collect();
                    let mut hits = Vec::new();
                    fr.functions.matches(&comps, &mut hits);
                    !hits.is_empty()
                })
                .map(|q| q.rsplit('.').next().unwrap_or(q))
                .collect();
            if !covered.is_empty() && self.file_access_hits(c, fr, &covered) {
                self.findings.push(Finding {
                    rule: fr.rule,
                    start: at.start().to_u32(),
                    end: at.end().to_u32(),
                });
            }
        }
    }

    /// A pathlib path built from constants after its constructor (`Path('/etc') /
    /// 'shadow'`, `.joinpath('shadow')`): judged as the constructor is, by the rules that
    /// name pathlib's `Path` among the readers.
    fn path_object(&mut self, e: &Expr) {
        let StrSet::Known(paths) = self.env.strs(e, 0) else {
            return;
        };
        let mut hits = Vec::new();
        for fr in &self.policy.file_rules {
            hits.clear();
            fr.functions.matches(&["pathlib", "Path"], &mut hits);
            if !hits.is_empty()
                && fr.modes != FileModes::Write
                && paths.iter().any(|p| path_hits(p, fr))
            {
                self.findings.push(Finding {
                    rule: fr.rule,
                    start: e.range().start().to_u32(),
                    end: e.range().end().to_u32(),
                });
            }
        }
    }

    /// open(path, mode): both must fold to constants for a file rule to judge them. Only the
    /// open family takes a mode; the other readers a rule may name (pathlib.Path, read_csv)
    /// read, and pathlib joins its positional arguments into one path.
    fn file_access_hits(&self, c: &ast::ExprCall, fr: &FileRule, functions: &[&str]) -> bool {
        let keyword = |names: &[&str]| -> Option<&Expr> {
            c.keywords
                .iter()
                .find(|k| k.arg.as_deref().is_some_and(|a| names.contains(&a)))
                .map(|k| &k.value)
        };
        if c.args.iter().any(Expr::is_starred_expr) {
            return false;
        }
        let opens = functions.contains(&"open");
        let joins = !opens && functions.iter().any(|f| f.contains("Path"));
        let paths = if joins && c.args.len() > 1 {
            let parts: Vec<StrSet> = c.args.iter().map(|a| self.env.strs(a, 0)).collect();
            if parts.contains(&StrSet::Unknown) {
                return false;
            }
            let mut with_slashes = Vec::with_capacity(parts.len() * 2);
            for (i, p) in parts.into_iter().enumerate() {
                if i > 0 {
                    with_slashes.push(StrSet::one("/".to_owned()));
                }
                with_slashes.push(p);
            }
            fold::product(with_slashes)
        } else {
            let Some(path_expr) = keyword(PATH_KEYWORDS).or_else(|| c.args.first()) else {
                return false;
            };
            self.env.strs(path_expr, 0)
        };
        let StrSet::Known(paths) = paths else {
            return false;
        };
        let mode_expr = if opens {
            keyword(&["mode"]).or_else(|| c.args.get(1))
        } else {
            None
        };
        let modes = match mode_expr {
            None => vec!["r".to_owned()],
            Some(m) => match self.env.strs(m, 0) {
                StrSet::Known(v) => v,
                StrSet::Unknown => return false,
            },
        };
        let mode_hits = match fr.modes {
            FileModes::Any => true,
            FileModes::Write => modes.iter().any(|m| m.contains(['w', 'a', 'x', '+'])),
            FileModes::Read => modes.iter().any(|m| m.contains(['r', '+'])),
        };
        mode_hits && paths.iter().any(|p| path_hits(p, fr))
    }
}

/// Keyword names the readers a file rule may cover give their path argument.
const PATH_KEYWORDS: &[&str] = &["file", "filepath_or_buffer", "fname", "filename", "path"];

/// Whether a constant path falls under a file rule. Absolute paths are normalised lexically
/// (`/tmp/../etc` is `/etc`); relative paths count only for rules that say so, except that
/// climbing with `..` is treated as leaving the working directory for the root.
fn path_hits(path: &str, fr: &FileRule) -> bool {
    if !fr.suffixes.is_empty() && !fr.suffixes.iter().any(|s| path.ends_with(s.as_str())) {
        return false;
    }
    // `~/.ssh/id_rsa` and `../.aws/credentials` are as telling as absolute paths.
    if !fr.segments.is_empty() {
        let comps: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if fr
            .segments
            .iter()
            .any(|seg| comps.windows(seg.len()).any(|w| w == seg.as_slice()))
        {
            return true;
        }
    }
    let normalised = if path.starts_with('/') {
        let mut parts: Vec<&str> = Vec::new();
        for comp in path.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        format!("/{}", parts.join("/"))
    } else if path.split('/').any(|c| c == "..") {
        "/".to_owned()
    } else {
        return fr.relative;
    };
    let under = |prefix: &str| {
        let prefix = prefix.trim_end_matches('/');
        prefix.is_empty()
            || normalised == prefix
            || (normalised.starts_with(prefix)
                && normalised.as_bytes().get(prefix.len()) == Some(&b'/'))
    };
    fr.paths.iter().any(|p| under(p)) && !fr.allowed.iter().any(|a| under(a))
}

/// The attribute chain as written, with `?` for a base that is not a name
/// (`f().os.system` is `?.os.system`), so `something.os.system` matches `os.system`.
fn syntactic_chain(e: &Expr) -> String {
    let mut comps = Vec::new();
    let mut cur = e;
    loop {
        match cur {
            Expr::Attribute(a) => {
                comps.push(norm(a.attr.as_str()).into_owned());
                cur = &a.value;
            }
            Expr::Name(n) => {
                comps.push(norm(n.id.as_str()).into_owned());
                break;
            }
            _ => {
                comps.push("?".to_owned());
                break;
            }
        }
    }
    comps.reverse();
    comps.join(".")
}
