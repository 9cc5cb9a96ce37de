//! The scan from the top-level statements a rule can reach, for code whose verdict is "no
//! violation": nearly all of it, and the case the 2 ms budget is about.
//!
//! Why leaving statements out changes nothing. Call a qualified name *watched* when one of
//! its components is a word the prefilter watches for (or it is the globals() dict): every
//! match of a rule contains such a component (see `policy::Triggers`). A statement without a
//! watched word can then only produce a finding through a name whose value is watched, and a
//! value becomes watched only in a statement with a watched word or one that reads a name
//! already watched. So parsed here, to a fixpoint:
//! - statements with a watched word, imports, and statements that might nest past the depth
//!   limit (`chunks` bounds the depth from the tokens);
//! - every statement that reads a name whose value (over the parsed statements) is watched;
//! - for every name whose whole value can matter to a parsed statement (the base of an
//!   attribute chain with a watched word, an argument of a call or a key of a subscript whose
//!   callee or object is watched), every statement that may bind it, and then the names its
//!   bound expressions read. Statements that only `def` or `class` the name bind it to nothing
//!   the analysis follows and are not parsed for that.
//!
//! Only "nothing found" is answered here. A finding goes back to the whole parse, because a
//! syntax error in a statement never parsed here makes the real answer empty (Python reports
//! it instead). So does anything this module does not follow: a split it cannot make, a
//! statement that does not parse alone, a star import, a subscript of globals().
//!
//! What may differ: for code with a syntax error in a statement left out, the imported
//! modules are those of the parsed statements instead of none (the warm template of a run
//! that fails to compile anyway); and the resolver's caps (32 values, 12 rounds) are reached
//! in a different order on the smaller program, which only matters past those caps.

use std::collections::HashMap;

use rustpython_parser::ast::{self, Expr};
use rustpython_parser::text_size::TextSize;
use rustpython_parser::Parse;

use super::chunks;
use super::policy::{Policy, Triggers};
use super::resolve::{norm, Collector, Env, NAMESPACE};
use super::walk::{Ctx, Visitor, Walker};
use super::{check, prefilter};

/// Rounds of "parse more and look again" before the whole parse is cheaper: each round
/// resolves the parsed statements again, and a chain of aliases (`a1 = sp`, `a2 = a1`...)
/// would otherwise take one round per link.
const MAX_ROUNDS: usize = 6;

/// The imported modules when no rule fires, or None when only the whole parse can answer.
pub(crate) fn scan(code: &str, policy: &Policy, may_violate: bool) -> Option<Vec<String>> {
    let split = chunks::split(code)?;
    let stmts = &split.chunks;
    let ids: HashMap<&str, u32> = split
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    let mut wanted: Vec<bool> = stmts
        .iter()
        .map(|c| {
            c.has_import
                || c.depth_bound >= policy.max_depth
                || (may_violate && prefilter::has_trigger(&code[c.start..c.end], &policy.triggers))
        })
        .collect();
    let mut binders: Vec<Vec<usize>> = vec![Vec::new(); split.names.len()];
    for (k, c) in stmts.iter().enumerate() {
        for &id in &c.binds {
            let list = &mut binders[id as usize];
            if list.last() != Some(&k) {
                list.push(k);
            }
        }
    }
    let mut bodies: Vec<Option<ast::Suite>> = (0..stmts.len()).map(|_| None).collect();
    let mut rounds = 0;
    let answer = loop {
        rounds += 1;
        if rounds > MAX_ROUNDS {
            break None;
        }
        let mut failed = false;
        for (k, c) in stmts.iter().enumerate() {
            if wanted[k] && bodies[k].is_none() {
                let Ok(start) = u32::try_from(c.start) else {
                    failed = true;
                    break;
                };
                let text = &code[c.start..c.end];
                match ast::Suite::parse_starts_at(text, "<string>", TextSize::from(start)) {
                    Ok(body) => bodies[k] = Some(body),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed {
            break None;
        }
        let step = {
            let mut env = Env::new(policy);
            let deep = {
                let mut collector = Collector { env: &mut env };
                let mut walker = Walker::new(&mut collector, policy.max_depth);
                for body in bodies.iter().flatten() {
                    walker.stmts(body);
                }
                walker.exceeded
            };
            for (k, c) in stmts.iter().enumerate() {
                if !wanted[k] {
                    for &id in &c.defines {
                        env.bind_defined(&split.names[id as usize]);
                    }
                }
            }
            if deep || env.has_star_imports() {
                Step::Whole
            } else if !may_violate {
                Step::Clean(std::mem::take(&mut env.imported))
            } else {
                env.solve();
                let watched: Vec<bool> =
                    split.names.iter().map(|n| env.may_reach_rule(n)).collect();
                let mut more: Vec<usize> = (0..stmts.len())
                    .filter(|&k| !wanted[k] && stmts[k].uses.iter().any(|&id| watched[id as usize]))
                    .collect();
                match needed_names(&env, policy, &bodies, &ids, &watched) {
                    None => Step::Whole,
                    Some(needed) => {
                        for id in needed {
                            more.extend(binders[id as usize].iter().filter(|&&k| !wanted[k]));
                        }
                        if more.is_empty() {
                            let mut checker = check::Checker {
                                policy,
                                env: &env,
                                findings: Vec::new(),
                            };
                            let mut walker = Walker::new(&mut checker, policy.max_depth);
                            for body in bodies.iter().flatten() {
                                walker.stmts(body);
                            }
                            if checker.findings.is_empty() {
                                Step::Clean(std::mem::take(&mut env.imported))
                            } else {
                                Step::Whole
                            }
                        } else {
                            Step::More(more)
                        }
                    }
                }
            }
        };
        match step {
            Step::Whole => break None,
            Step::Clean(imported) => break Some(imported),
            Step::More(more) => {
                for k in more {
                    wanted[k] = true;
                }
            }
        }
    };
    for (body, c) in bodies.into_iter().zip(stmts) {
        // Only a statement that may nest past the limit can be deep enough for the recursive
        // drop to overflow the stack.
        if let (Some(body), true) = (body, c.depth_bound >= policy.max_depth) {
            super::walk::dismantle(body);
        }
    }
    answer
}

enum Step {
    /// Parse these statements too and look again.
    More(Vec<usize>),
    Clean(Vec<String>),
    Whole,
}

/// Names whose whole value can matter to the parsed statements, closed over the expressions
/// they are bound to; None when a subscript of a namespace dict makes any name matter.
fn needed_names(
    env: &Env<'_, '_>,
    policy: &Policy,
    bodies: &[Option<ast::Suite>],
    ids: &HashMap<&str, u32>,
    watched: &[bool],
) -> Option<Vec<u32>> {
    let mut needs = Needs {
        env,
        triggers: &policy.triggers,
        ids,
        watched,
        names: Vec::new(),
        roots: Vec::new(),
        gave_up: false,
    };
    {
        let mut walker = Walker::new(&mut needs, policy.max_depth);
        for body in bodies.iter().flatten() {
            walker.stmts(body);
        }
    }
    if needs.gave_up {
        return None;
    }
    let mut seen = vec![false; watched.len()];
    let mut out = Vec::new();
    let mut stack = std::mem::take(&mut needs.roots);
    while let Some(name) = stack.pop() {
        let id = *ids.get(name.as_str())?;
        if std::mem::replace(&mut seen[id as usize], true) {
            continue;
        }
        out.push(id);
        for e in env.bound_exprs(&name) {
            let mut names = NamesIn(Vec::new());
            Walker::new(&mut names, policy.max_depth).expr(e, Ctx::Plain);
            stack.extend(names.0);
        }
    }
    Some(out)
}

/// Collects the names whose value can matter where they are read (see the module comment).
struct Needs<'n, 'a, 'p> {
    env: &'n Env<'a, 'p>,
    triggers: &'n Triggers,
    ids: &'n HashMap<&'n str, u32>,
    watched: &'n [bool],
    /// Scratch for names found inside a subtree.
    names: Vec<String>,
    roots: Vec<String>,
    gave_up: bool,
}

impl<'a> Visitor<'a> for Needs<'_, 'a, '_> {
    fn expr(&mut self, e: &'a Expr, _ctx: Ctx) {
        match e {
            Expr::Name(_) | Expr::Attribute(_) => {
                let (root, watched_word) = self.chain(e);
                if watched_word {
                    if let Some(Expr::Name(n)) = root {
                        self.roots.push(norm(n.id.as_str()).into_owned());
                    }
                }
            }
            Expr::Call(c) if self.matters(&c.func) => {
                for arg in &c.args {
                    self.names_in(arg);
                }
                for k in &c.keywords {
                    self.names_in(&k.value);
                }
            }
            Expr::Subscript(s) => {
                if self.env.objs(&s.value, 0).iter().any(|q| q == NAMESPACE) {
                    // globals()[key] reads whichever variable the key names.
                    self.gave_up = true;
                } else if self.matters(&s.value) {
                    self.names_in(&s.slice);
                }
            }
            _ => {}
        }
    }
}

impl<'a> Needs<'_, 'a, '_> {
    fn watched_word(&self, w: &str) -> bool {
        let t = self.triggers;
        t.words.contains(w)
            || t.bare_words.contains(w)
            || t.prefixes.iter().any(|p| w.starts_with(p.as_str()))
    }

    /// The chain's innermost object (a name, a call...) and whether a watched word is on it.
    fn chain<'x>(&self, e: &'x Expr) -> (Option<&'x Expr>, bool) {
        let mut cur = e;
        let mut watched = false;
        loop {
            match cur {
                Expr::Attribute(a) => {
                    watched |= self.watched_word(&norm(a.attr.as_str()));
                    cur = &a.value;
                }
                Expr::Name(n) => {
                    watched |= self.watched_word(&norm(n.id.as_str()));
                    return (Some(cur), watched);
                }
                other => return (Some(other), watched),
            }
        }
    }

    /// Whether a callee or subscripted object can be something a rule names.
    fn matters(&self, e: &Expr) -> bool {
        let (root, watched) = self.chain(e);
        watched
            || match root {
                Some(Expr::Name(n)) => self
                    .ids
                    .get(norm(n.id.as_str()).as_ref())
                    .is_some_and(|&id| self.watched[id as usize]),
                Some(Expr::Call(c)) => self.matters(&c.func),
                Some(Expr::Subscript(s)) => self.matters(&s.value),
                _ => false,
            }
    }

    fn names_in(&mut self, e: &'a Expr) {
        let mut names = NamesIn(std::mem::take(&mut self.names));
        Walker::new(&mut names, usize::MAX).expr(e, Ctx::Plain);
        self.roots.append(&mut names.0);
        self.names = names.0;
    }
}

/// Every name read or bound inside a subtree.
struct NamesIn(Vec<String>);

impl<'a> Visitor<'a> for NamesIn {
    fn expr(&mut self, e: &'a Expr, _ctx: Ctx) {
        if let Expr::Name(n) = e {
            self.0.push(norm(n.id.as_str()).into_owned());
        }
    }
}
