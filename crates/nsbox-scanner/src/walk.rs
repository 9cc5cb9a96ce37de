//! Exhaustive, depth-limited traversal of the rustpython syntax tree, and its stack-safe drop.
//!
//! Every statement, expression and pattern variant is matched without a wildcard, so a parser
//! upgrade that adds a node fails to compile here instead of silently hiding code from the
//! scanner.

use rustpython_parser::ast::{
    self, Arguments, CmpOp, ExceptHandler, Expr, Pattern, Ranged, Stmt, TypeParam,
};
use rustpython_parser::text_size::TextRange;

/// How an expression is used by its parent, for the checks that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    Plain,
    /// The callee of a call: `f` in `f(x)`.
    CallFunc,
    /// The object of an attribute access: `x` in `x.y`.
    AttrBase,
    /// The object of a subscript: `x` in `x[k]`.
    SubscriptBase,
    /// The container of a membership test: `y` in `x in y`.
    InOperand,
}

/// Hooks called in pre-order. Children are walked by the walker, not by the hooks.
pub(crate) trait Visitor<'a> {
    fn stmt(&mut self, _s: &'a Stmt) {}
    fn expr(&mut self, _e: &'a Expr, _ctx: Ctx) {}
    fn pattern(&mut self, _p: &'a Pattern) {}
    fn arguments(&mut self, _a: &'a Arguments) {}
    /// Called once, at the first node the walker refused to enter.
    fn too_deep(&mut self, _at: TextRange) {}
}

pub(crate) struct Walker<'v, V> {
    v: &'v mut V,
    max_depth: usize,
    depth: usize,
    pub exceeded: bool,
}

impl<'a, 'v, V: Visitor<'a>> Walker<'v, V> {
    pub(crate) fn new(v: &'v mut V, max_depth: usize) -> Self {
        Walker {
            v,
            max_depth,
            depth: 0,
            exceeded: false,
        }
    }

    /// Returns false (and records it) when entering one more level would pass the limit.
    fn enter(&mut self, at: TextRange) -> bool {
        if self.depth >= self.max_depth {
            if !self.exceeded {
                self.exceeded = true;
                self.v.too_deep(at);
            }
            return false;
        }
        self.depth += 1;
        true
    }

    pub(crate) fn stmts(&mut self, body: &'a [Stmt]) {
        for s in body {
            self.stmt(s);
        }
    }

    fn exprs(&mut self, es: &'a [Expr]) {
        for e in es {
            self.expr(e, Ctx::Plain);
        }
    }

    fn opt(&mut self, e: &'a Option<Box<Expr>>) {
        if let Some(e) = e {
            self.expr(e, Ctx::Plain);
        }
    }

    fn type_params(&mut self, tps: &'a [TypeParam]) {
        for tp in tps {
            match tp {
                TypeParam::TypeVar(t) => self.opt(&t.bound),
                TypeParam::ParamSpec(_) | TypeParam::TypeVarTuple(_) => {}
            }
        }
    }

    fn arguments(&mut self, a: &'a Arguments) {
        self.v.arguments(a);
        for arg in a.posonlyargs.iter().chain(&a.args).chain(&a.kwonlyargs) {
            self.opt(&arg.def.annotation);
            self.opt(&arg.default);
        }
        for arg in a.vararg.iter().chain(&a.kwarg) {
            self.opt(&arg.annotation);
        }
    }

    fn handlers(&mut self, hs: &'a [ExceptHandler]) {
        for h in hs {
            let ExceptHandler::ExceptHandler(h) = h;
            self.opt(&h.type_);
            self.stmts(&h.body);
        }
    }

    pub(crate) fn stmt(&mut self, s: &'a Stmt) {
        if !self.enter(s.range()) {
            return;
        }
        self.v.stmt(s);
        match s {
            Stmt::FunctionDef(f) => {
                self.exprs(&f.decorator_list);
                self.type_params(&f.type_params);
                self.arguments(&f.args);
                self.opt(&f.returns);
                self.stmts(&f.body);
            }
            Stmt::AsyncFunctionDef(f) => {
                self.exprs(&f.decorator_list);
                self.type_params(&f.type_params);
                self.arguments(&f.args);
                self.opt(&f.returns);
                self.stmts(&f.body);
            }
            Stmt::ClassDef(c) => {
                self.exprs(&c.decorator_list);
                self.type_params(&c.type_params);
                self.exprs(&c.bases);
                for k in &c.keywords {
                    self.expr(&k.value, Ctx::Plain);
                }
                self.stmts(&c.body);
            }
            Stmt::Return(r) => self.opt(&r.value),
            Stmt::Delete(d) => self.exprs(&d.targets),
            Stmt::Assign(a) => {
                self.exprs(&a.targets);
                self.expr(&a.value, Ctx::Plain);
            }
            Stmt::TypeAlias(t) => {
                self.expr(&t.name, Ctx::Plain);
                self.type_params(&t.type_params);
                self.expr(&t.value, Ctx::Plain);
            }
            Stmt::AugAssign(a) => {
                self.expr(&a.target, Ctx::Plain);
                self.expr(&a.value, Ctx::Plain);
            }
            Stmt::AnnAssign(a) => {
                self.expr(&a.target, Ctx::Plain);
                self.expr(&a.annotation, Ctx::Plain);
                self.opt(&a.value);
            }
            Stmt::For(f) => {
                self.expr(&f.target, Ctx::Plain);
                self.expr(&f.iter, Ctx::Plain);
                self.stmts(&f.body);
                self.stmts(&f.orelse);
            }
            Stmt::AsyncFor(f) => {
                self.expr(&f.target, Ctx::Plain);
                self.expr(&f.iter, Ctx::Plain);
                self.stmts(&f.body);
                self.stmts(&f.orelse);
            }
            Stmt::While(w) => {
                self.expr(&w.test, Ctx::Plain);
                self.stmts(&w.body);
                self.stmts(&w.orelse);
            }
            Stmt::If(i) => {
                self.expr(&i.test, Ctx::Plain);
                self.stmts(&i.body);
                self.stmts(&i.orelse);
            }
            Stmt::With(w) => {
                for item in &w.items {
                    self.expr(&item.context_expr, Ctx::Plain);
                    self.opt(&item.optional_vars);
                }
                self.stmts(&w.body);
            }
            Stmt::AsyncWith(w) => {
                for item in &w.items {
                    self.expr(&item.context_expr, Ctx::Plain);
                    self.opt(&item.optional_vars);
                }
                self.stmts(&w.body);
            }
            Stmt::Match(m) => {
                self.expr(&m.subject, Ctx::Plain);
                for case in &m.cases {
                    self.pattern(&case.pattern);
                    self.opt(&case.guard);
                    self.stmts(&case.body);
                }
            }
            Stmt::Raise(r) => {
                self.opt(&r.exc);
                self.opt(&r.cause);
            }
            Stmt::Try(t) => {
                self.stmts(&t.body);
                self.handlers(&t.handlers);
                self.stmts(&t.orelse);
                self.stmts(&t.finalbody);
            }
            Stmt::TryStar(t) => {
                self.stmts(&t.body);
                self.handlers(&t.handlers);
                self.stmts(&t.orelse);
                self.stmts(&t.finalbody);
            }
            Stmt::Assert(a) => {
                self.expr(&a.test, Ctx::Plain);
                self.opt(&a.msg);
            }
            Stmt::Expr(e) => self.expr(&e.value, Ctx::Plain),
            Stmt::Import(_)
            | Stmt::ImportFrom(_)
            | Stmt::Global(_)
            | Stmt::Nonlocal(_)
            | Stmt::Pass(_)
            | Stmt::Break(_)
            | Stmt::Continue(_) => {}
        }
        self.depth -= 1;
    }

    fn comprehensions(&mut self, gens: &'a [ast::Comprehension]) {
        for g in gens {
            self.expr(&g.target, Ctx::Plain);
            self.expr(&g.iter, Ctx::Plain);
            self.exprs(&g.ifs);
        }
    }

    pub(crate) fn expr(&mut self, e: &'a Expr, ctx: Ctx) {
        if !self.enter(e.range()) {
            return;
        }
        self.v.expr(e, ctx);
        match e {
            Expr::BoolOp(b) => self.exprs(&b.values),
            Expr::NamedExpr(n) => {
                self.expr(&n.target, Ctx::Plain);
                self.expr(&n.value, Ctx::Plain);
            }
            Expr::BinOp(b) => {
                self.expr(&b.left, Ctx::Plain);
                self.expr(&b.right, Ctx::Plain);
            }
            Expr::UnaryOp(u) => self.expr(&u.operand, Ctx::Plain),
            Expr::Lambda(l) => {
                self.arguments(&l.args);
                self.expr(&l.body, Ctx::Plain);
            }
            Expr::IfExp(i) => {
                self.expr(&i.body, Ctx::Plain);
                self.expr(&i.test, Ctx::Plain);
                self.expr(&i.orelse, Ctx::Plain);
            }
            Expr::Dict(d) => {
                for (k, v) in d.keys.iter().zip(&d.values) {
                    if let Some(k) = k {
                        self.expr(k, Ctx::Plain);
                    }
                    self.expr(v, Ctx::Plain);
                }
            }
            Expr::Set(s) => self.exprs(&s.elts),
            Expr::ListComp(c) => {
                self.expr(&c.elt, Ctx::Plain);
                self.comprehensions(&c.generators);
            }
            Expr::SetComp(c) => {
                self.expr(&c.elt, Ctx::Plain);
                self.comprehensions(&c.generators);
            }
            Expr::DictComp(c) => {
                self.expr(&c.key, Ctx::Plain);
                self.expr(&c.value, Ctx::Plain);
                self.comprehensions(&c.generators);
            }
            Expr::GeneratorExp(c) => {
                self.expr(&c.elt, Ctx::Plain);
                self.comprehensions(&c.generators);
            }
            Expr::Await(a) => self.expr(&a.value, Ctx::Plain),
            Expr::Yield(y) => self.opt(&y.value),
            Expr::YieldFrom(y) => self.expr(&y.value, Ctx::Plain),
            Expr::Compare(c) => {
                self.expr(&c.left, Ctx::Plain);
                for (op, right) in c.ops.iter().zip(&c.comparators) {
                    let ctx = match op {
                        CmpOp::In | CmpOp::NotIn => Ctx::InOperand,
                        _ => Ctx::Plain,
                    };
                    self.expr(right, ctx);
                }
            }
            Expr::Call(c) => {
                self.expr(&c.func, Ctx::CallFunc);
                self.exprs(&c.args);
                for k in &c.keywords {
                    self.expr(&k.value, Ctx::Plain);
                }
            }
            Expr::FormattedValue(f) => {
                self.expr(&f.value, Ctx::Plain);
                self.opt(&f.format_spec);
            }
            Expr::JoinedStr(j) => self.exprs(&j.values),
            Expr::Attribute(a) => self.expr(&a.value, Ctx::AttrBase),
            Expr::Subscript(s) => {
                self.expr(&s.value, Ctx::SubscriptBase);
                self.expr(&s.slice, Ctx::Plain);
            }
            Expr::Starred(s) => self.expr(&s.value, Ctx::Plain),
            Expr::List(l) => self.exprs(&l.elts),
            Expr::Tuple(t) => self.exprs(&t.elts),
            Expr::Slice(s) => {
                self.opt(&s.lower);
                self.opt(&s.upper);
                self.opt(&s.step);
            }
            Expr::Constant(_) | Expr::Name(_) => {}
        }
        self.depth -= 1;
    }

    fn pattern(&mut self, p: &'a Pattern) {
        if !self.enter(p.range()) {
            return;
        }
        self.v.pattern(p);
        match p {
            Pattern::MatchValue(v) => self.expr(&v.value, Ctx::Plain),
            Pattern::MatchSequence(s) => {
                for p in &s.patterns {
                    self.pattern(p);
                }
            }
            Pattern::MatchMapping(m) => {
                for (k, p) in m.keys.iter().zip(&m.patterns) {
                    self.expr(k, Ctx::Plain);
                    self.pattern(p);
                }
            }
            Pattern::MatchClass(c) => {
                self.expr(&c.cls, Ctx::Plain);
                for p in c.patterns.iter().chain(&c.kwd_patterns) {
                    self.pattern(p);
                }
            }
            Pattern::MatchAs(a) => {
                if let Some(p) = &a.pattern {
                    self.pattern(p);
                }
            }
            Pattern::MatchOr(o) => {
                for p in &o.patterns {
                    self.pattern(p);
                }
            }
            Pattern::MatchSingleton(_) | Pattern::MatchStar(_) => {}
        }
        self.depth -= 1;
    }
}

/// An owned node waiting to be taken apart by [`dismantle`].
enum Node {
    S(Stmt),
    E(Expr),
    P(Pattern),
}

/// Drops a syntax tree without recursion.
///
/// The generated `Drop` recurses once per nesting level, and `-` repeated 50,000 times is
/// valid input for the parser: dropping that tree normally overflows a 2 MiB thread stack and
/// aborts the server. Each node's children are moved onto a heap worklist before the node
/// itself is dropped, so every drop that runs is shallow.
pub(crate) fn dismantle(body: Vec<Stmt>) {
    let mut work: Vec<Node> = body.into_iter().map(Node::S).collect();
    while let Some(node) = work.pop() {
        match node {
            Node::S(s) => take_stmt(s, &mut work),
            Node::E(e) => take_expr(e, &mut work),
            Node::P(p) => take_pattern(p, &mut work),
        }
    }
}

fn push_stmts(v: Vec<Stmt>, work: &mut Vec<Node>) {
    work.extend(v.into_iter().map(Node::S));
}

fn push_exprs(v: Vec<Expr>, work: &mut Vec<Node>) {
    work.extend(v.into_iter().map(Node::E));
}

fn push_opt(e: Option<Box<Expr>>, work: &mut Vec<Node>) {
    if let Some(e) = e {
        work.push(Node::E(*e));
    }
}

fn push_args(a: Arguments, work: &mut Vec<Node>) {
    for arg in a.posonlyargs.into_iter().chain(a.args).chain(a.kwonlyargs) {
        push_opt(arg.def.annotation, work);
        push_opt(arg.default, work);
    }
    for arg in a.vararg.into_iter().chain(a.kwarg) {
        push_opt(arg.annotation, work);
    }
}

fn push_type_params(tps: Vec<TypeParam>, work: &mut Vec<Node>) {
    for tp in tps {
        if let TypeParam::TypeVar(t) = tp {
            push_opt(t.bound, work);
        }
    }
}

fn push_handlers(hs: Vec<ExceptHandler>, work: &mut Vec<Node>) {
    for h in hs {
        let ExceptHandler::ExceptHandler(h) = h;
        push_opt(h.type_, work);
        push_stmts(h.body, work);
    }
}

fn push_comprehensions(gens: Vec<ast::Comprehension>, work: &mut Vec<Node>) {
    for g in gens {
        work.push(Node::E(g.target));
        work.push(Node::E(g.iter));
        push_exprs(g.ifs, work);
    }
}

fn take_stmt(s: Stmt, work: &mut Vec<Node>) {
    match s {
        Stmt::FunctionDef(f) => {
            push_exprs(f.decorator_list, work);
            push_type_params(f.type_params, work);
            push_args(*f.args, work);
            push_opt(f.returns, work);
            push_stmts(f.body, work);
        }
        Stmt::AsyncFunctionDef(f) => {
            push_exprs(f.decorator_list, work);
            push_type_params(f.type_params, work);
            push_args(*f.args, work);
            push_opt(f.returns, work);
            push_stmts(f.body, work);
        }
        Stmt::ClassDef(c) => {
            push_exprs(c.decorator_list, work);
            push_type_params(c.type_params, work);
            push_exprs(c.bases, work);
            work.extend(c.keywords.into_iter().map(|k| Node::E(k.value)));
            push_stmts(c.body, work);
        }
        Stmt::Return(r) => push_opt(r.value, work),
        Stmt::Delete(d) => push_exprs(d.targets, work),
        Stmt::Assign(a) => {
            push_exprs(a.targets, work);
            work.push(Node::E(*a.value));
        }
        Stmt::TypeAlias(t) => {
            work.push(Node::E(*t.name));
            push_type_params(t.type_params, work);
            work.push(Node::E(*t.value));
        }
        Stmt::AugAssign(a) => {
            work.push(Node::E(*a.target));
            work.push(Node::E(*a.value));
        }
        Stmt::AnnAssign(a) => {
            work.push(Node::E(*a.target));
            work.push(Node::E(*a.annotation));
            push_opt(a.value, work);
        }
        Stmt::For(f) => {
            work.push(Node::E(*f.target));
            work.push(Node::E(*f.iter));
            push_stmts(f.body, work);
            push_stmts(f.orelse, work);
        }
        Stmt::AsyncFor(f) => {
            work.push(Node::E(*f.target));
            work.push(Node::E(*f.iter));
            push_stmts(f.body, work);
            push_stmts(f.orelse, work);
        }
        Stmt::While(w) => {
            work.push(Node::E(*w.test));
            push_stmts(w.body, work);
            push_stmts(w.orelse, work);
        }
        Stmt::If(i) => {
            work.push(Node::E(*i.test));
            push_stmts(i.body, work);
            push_stmts(i.orelse, work);
        }
        Stmt::With(w) => {
            for item in w.items {
                work.push(Node::E(item.context_expr));
                push_opt(item.optional_vars, work);
            }
            push_stmts(w.body, work);
        }
        Stmt::AsyncWith(w) => {
            for item in w.items {
                work.push(Node::E(item.context_expr));
                push_opt(item.optional_vars, work);
            }
            push_stmts(w.body, work);
        }
        Stmt::Match(m) => {
            work.push(Node::E(*m.subject));
            for case in m.cases {
                work.push(Node::P(case.pattern));
                push_opt(case.guard, work);
                push_stmts(case.body, work);
            }
        }
        Stmt::Raise(r) => {
            push_opt(r.exc, work);
            push_opt(r.cause, work);
        }
        Stmt::Try(t) => {
            push_stmts(t.body, work);
            push_handlers(t.handlers, work);
            push_stmts(t.orelse, work);
            push_stmts(t.finalbody, work);
        }
        Stmt::TryStar(t) => {
            push_stmts(t.body, work);
            push_handlers(t.handlers, work);
            push_stmts(t.orelse, work);
            push_stmts(t.finalbody, work);
        }
        Stmt::Assert(a) => {
            work.push(Node::E(*a.test));
            push_opt(a.msg, work);
        }
        Stmt::Expr(e) => work.push(Node::E(*e.value)),
        Stmt::Import(_)
        | Stmt::ImportFrom(_)
        | Stmt::Global(_)
        | Stmt::Nonlocal(_)
        | Stmt::Pass(_)
        | Stmt::Break(_)
        | Stmt::Continue(_) => {}
    }
}

fn take_expr(e: Expr, work: &mut Vec<Node>) {
    match e {
        Expr::BoolOp(b) => push_exprs(b.values, work),
        Expr::NamedExpr(n) => {
            work.push(Node::E(*n.target));
            work.push(Node::E(*n.value));
        }
        Expr::BinOp(b) => {
            work.push(Node::E(*b.left));
            work.push(Node::E(*b.right));
        }
        Expr::UnaryOp(u) => work.push(Node::E(*u.operand)),
        Expr::Lambda(l) => {
            push_args(*l.args, work);
            work.push(Node::E(*l.body));
        }
        Expr::IfExp(i) => {
            work.push(Node::E(*i.test));
            work.push(Node::E(*i.body));
            work.push(Node::E(*i.orelse));
        }
        Expr::Dict(d) => {
            work.extend(d.keys.into_iter().flatten().map(Node::E));
            push_exprs(d.values, work);
        }
        Expr::Set(s) => push_exprs(s.elts, work),
        Expr::ListComp(c) => {
            work.push(Node::E(*c.elt));
            push_comprehensions(c.generators, work);
        }
        Expr::SetComp(c) => {
            work.push(Node::E(*c.elt));
            push_comprehensions(c.generators, work);
        }
        Expr::DictComp(c) => {
            work.push(Node::E(*c.key));
            work.push(Node::E(*c.value));
            push_comprehensions(c.generators, work);
        }
        Expr::GeneratorExp(c) => {
            work.push(Node::E(*c.elt));
            push_comprehensions(c.generators, work);
        }
        Expr::Await(a) => work.push(Node::E(*a.value)),
        Expr::Yield(y) => push_opt(y.value, work),
        Expr::YieldFrom(y) => work.push(Node::E(*y.value)),
        Expr::Compare(c) => {
            work.push(Node::E(*c.left));
            push_exprs(c.comparators, work);
        }
        Expr::Call(c) => {
            work.push(Node::E(*c.func));
            push_exprs(c.args, work);
            work.extend(c.keywords.into_iter().map(|k| Node::E(k.value)));
        }
        Expr::FormattedValue(f) => {
            work.push(Node::E(*f.value));
            push_opt(f.format_spec, work);
        }
        Expr::JoinedStr(j) => push_exprs(j.values, work),
        Expr::Attribute(a) => work.push(Node::E(*a.value)),
        Expr::Subscript(s) => {
            work.push(Node::E(*s.value));
            work.push(Node::E(*s.slice));
        }
        Expr::Starred(s) => work.push(Node::E(*s.value)),
        Expr::List(l) => push_exprs(l.elts, work),
        Expr::Tuple(t) => push_exprs(t.elts, work),
        Expr::Slice(s) => {
            push_opt(s.lower, work);
            push_opt(s.upper, work);
            push_opt(s.step, work);
        }
        Expr::Constant(_) | Expr::Name(_) => {}
    }
}

fn take_pattern(p: Pattern, work: &mut Vec<Node>) {
    match p {
        Pattern::MatchValue(v) => work.push(Node::E(*v.value)),
        Pattern::MatchSequence(s) => work.extend(s.patterns.into_iter().map(Node::P)),
        Pattern::MatchMapping(m) => {
            push_exprs(m.keys, work);
            work.extend(m.patterns.into_iter().map(Node::P));
        }
        Pattern::MatchClass(c) => {
            work.push(Node::E(*c.cls));
            work.extend(c.patterns.into_iter().map(Node::P));
            work.extend(c.kwd_patterns.into_iter().map(Node::P));
        }
        Pattern::MatchAs(a) => {
            if let Some(p) = a.pattern {
                work.push(Node::P(*p));
            }
        }
        Pattern::MatchOr(o) => work.extend(o.patterns.into_iter().map(Node::P)),
        Pattern::MatchSingleton(_) | Pattern::MatchStar(_) => {}
    }
}
