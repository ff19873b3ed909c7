//! Compilation: the raw model of every file, merged and checked, into a [`CompiledPolicy`].
//!
//! Names are resolved (purposes interned as [`PurposeId`]s), rules become [`ValuePlan`] trees,
//! secrets are loaded, routes are ordered most specific first. Every error is collected; none
//! stops the others. Runtime code never sees anything from this module but its output.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::check::{
    Diagnostics, Step, Taxonomy, is_under, load_secret, parse_method, parse_path, parse_template,
    path_key, template_shape,
};
use super::compiled::{
    Caller, CompiledPolicy, LawfulBasis, ObjectPlan, Passthrough, PathTemplate, Purpose, PurposeId,
    RecordsAt, Route, Segment, SubjectAt, Transform, ValuePlan, View, WithoutBasis,
};
use super::diagnostic::{PolicyError, PolicyErrorKind, at, suggest};
use super::raw::{
    RawBasis, RawCaller, RawObject, RawPassthrough, RawPolicyFile, RawPurpose, RawRoute, RawRule,
    RawSecret, RawWithoutBasis,
};
use super::source::SourceFile;

/// A named definition and where it is.
struct Def<'a, T> {
    src: &'a SourceFile,
    name: &'a Spanned<String>,
    value: &'a T,
}

fn loc_text<T>(src: &SourceFile, s: &Spanned<T>) -> String {
    at(
        &src.path,
        usize::try_from(s.referenced.line()).unwrap_or(0),
        usize::try_from(s.referenced.column()).unwrap_or(0),
    )
}

/// Keeps the first definition of each name; a later one is an error pointing at it.
fn unique<'a, T>(
    what: &'static str,
    items: impl Iterator<Item = (&'a SourceFile, &'a Spanned<String>, &'a T)>,
    diags: &mut Diagnostics,
) -> Vec<Def<'a, T>> {
    let mut seen: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::new();
    for (src, name, value) in items {
        if let Some(first) = seen.get(name.value.as_str()) {
            diags.at(
                src,
                name,
                PolicyErrorKind::DuplicateDefinition {
                    what,
                    name: name.value.clone(),
                    first: first.clone(),
                },
            );
            continue;
        }
        seen.insert(&name.value, loc_text(src, name));
        out.push(Def { src, name, value });
    }
    out
}

/// What one rule does to the values it selects.
#[derive(Debug, Clone, PartialEq)]
struct Assigned {
    /// `Keep`, `Drop` or `Transform`.
    plan: ValuePlan,
    /// `keep` with `special: true`: releases special categories below.
    special: bool,
}

/// A node of the plan trie built from rule paths.
#[derive(Debug, Clone, Default)]
struct Node {
    /// The action assigned here and its priority (2: path rule, 1: category rule).
    own: Option<(u8, Assigned)>,
    /// A declared special-category field is here.
    special: bool,
    /// A declared field is here.
    declared: bool,
    members: BTreeMap<Box<str>, Node>,
    others: Option<Box<Node>>,
    elements: Option<Box<Node>>,
}

impl Node {
    /// Inserts along `steps`; returns false when a node would be both object and array.
    fn insert(&mut self, steps: &[Step], assign: Option<(u8, Assigned)>, special: bool) -> bool {
        let mut node = &mut *self;
        for step in steps {
            node = match step {
                Step::Name(n) => node.members.entry(n.clone()).or_default(),
                Step::Members => node.others.get_or_insert_with(Default::default),
                Step::Elements => node.elements.get_or_insert_with(Default::default),
            };
        }
        node.special |= special;
        if let Some((prio, a)) = assign
            && node.own.as_ref().is_none_or(|(p, _)| prio > *p)
        {
            node.own = Some((prio, a));
        }
        self.shape_ok()
    }

    /// Marks the node at `steps` (created if needed) as a declared field.
    fn mark_declared(&mut self, steps: &[Step]) {
        let mut node = &mut *self;
        for step in steps {
            node = match step {
                Step::Name(n) => node.members.entry(n.clone()).or_default(),
                Step::Members => node.others.get_or_insert_with(Default::default),
                Step::Elements => node.elements.get_or_insert_with(Default::default),
            };
        }
        node.declared = true;
    }

    fn shape_ok(&self) -> bool {
        let object = !self.members.is_empty() || self.others.is_some();
        if object && self.elements.is_some() {
            return false;
        }
        self.members.values().all(Node::shape_ok)
            && self.others.as_ref().is_none_or(|n| n.shape_ok())
            && self.elements.as_ref().is_none_or(|n| n.shape_ok())
    }

    /// A named member is also matched by `.*`: give it what the wildcard says, under its own.
    fn spread_wildcards(&mut self) {
        if let Some(o) = &self.others {
            for m in self.members.values_mut() {
                let named = std::mem::take(m);
                *m = merge((**o).clone(), named);
            }
        }
        for m in self.members.values_mut() {
            m.spread_wildcards();
        }
        if let Some(o) = &mut self.others {
            o.spread_wildcards();
        }
        if let Some(e) = &mut self.elements {
            e.spread_wildcards();
        }
    }

    /// The plan of this node, given what the nearest assigned ancestor says.
    fn plan(&self, inherited: Option<&Assigned>) -> ValuePlan {
        let carved = Assigned {
            plan: ValuePlan::Drop,
            special: false,
        };
        let mut eff = self.own.as_ref().map(|(_, a)| a).or(inherited);
        // A keep that does not say `special: true` never releases a special-category field.
        if self.special && eff.is_some_and(|a| a.plan == ValuePlan::Keep && !a.special) {
            eff = Some(&carved);
        }
        if let Some(el) = &self.elements {
            return match el.plan(eff) {
                ValuePlan::Drop => ValuePlan::Drop,
                p => ValuePlan::Array(Box::new(p)),
            };
        }
        if self.members.is_empty() && self.others.is_none() {
            return match eff {
                // A declared field that the policy does not describe further holds a value:
                // a structure found there is not passed on whole.
                Some(a) if a.plan == ValuePlan::Keep && self.declared => ValuePlan::KeepScalar,
                Some(a) => a.plan.clone(),
                None => ValuePlan::Drop,
            };
        }
        let others = match &self.others {
            Some(o) => Some(o.plan(eff)),
            None => eff.map(|a| a.plan.clone()),
        }
        .filter(|p| *p != ValuePlan::Drop);
        let mut fields = Vec::new();
        for (k, n) in &self.members {
            let p = n.plan(eff);
            // A dropped member needs an entry only to shadow `others`.
            if p != ValuePlan::Drop || others.is_some() {
                fields.push((k.clone(), p));
            }
        }
        // Members all planned like the inherited action: the node is that action, whatever
        // the value's type (only when no `.*` made `others`: that one applies to objects only).
        if let (Some(o), None) = (&others, &self.others)
            && fields.iter().all(|(_, p)| p == o)
        {
            return o.clone();
        }
        if fields.is_empty() && others.is_none() {
            return ValuePlan::Drop;
        }
        // INVARIANT: `fields` comes from a BTreeMap, so it is sorted by name for binary search.
        ValuePlan::Object(ObjectPlan::new(fields, others.map(Box::new)))
    }
}

fn merge(mut base: Node, over: Node) -> Node {
    if over.own.is_some() {
        base.own = over.own;
    }
    base.special |= over.special;
    base.declared |= over.declared;
    for (k, v) in over.members {
        let merged = match base.members.remove(&k) {
            Some(b) => merge(b, v),
            None => v,
        };
        base.members.insert(k, merged);
    }
    base.others = match (base.others, over.others) {
        (Some(b), Some(o)) => Some(Box::new(merge(*b, *o))),
        (b, o) => o.or(b),
    };
    base.elements = match (base.elements, over.elements) {
        (Some(b), Some(o)) => Some(Box::new(merge(*b, *o))),
        (b, o) => o.or(b),
    };
    base
}

/// A record's root plan: a record is never removed by its plan, only emptied.
fn root_plan(node: &Node) -> ValuePlan {
    match node.plan(None) {
        ValuePlan::Drop => ValuePlan::Object(ObjectPlan::default()),
        p => p,
    }
}

/// An object with its checked fields and, per purpose, its record plan.
struct CompiledObject {
    subject: Option<Vec<Box<str>>>,
    plans: Vec<Option<ValuePlan>>,
    non_personal: ValuePlan,
}

/// Everything shared while compiling.
struct Ctx<'a> {
    diags: Diagnostics,
    purpose_ids: HashMap<&'a str, PurposeId>,
    purpose_names: Vec<&'a str>,
    taxonomy: Taxonomy,
    pseudonym_key: Option<Arc<[u8]>>,
}

impl Ctx<'_> {
    fn purpose(&mut self, src: &SourceFile, name: &Spanned<String>) -> Option<PurposeId> {
        if let Some(id) = self.purpose_ids.get(name.value.as_str()) {
            return Some(*id);
        }
        let suggestion = suggest(&name.value, self.purpose_names.iter().copied());
        self.diags.at(
            src,
            name,
            PolicyErrorKind::UnknownPurpose {
                name: name.value.clone(),
                suggestion,
            },
        );
        None
    }

    fn category(&mut self, src: &SourceFile, name: &Spanned<String>) -> bool {
        if self.taxonomy.contains(&name.value) {
            return true;
        }
        let suggestion = self.taxonomy.suggest(&name.value);
        self.diags.at(
            src,
            name,
            PolicyErrorKind::UnknownCategory {
                name: name.value.clone(),
                suggestion,
            },
        );
        false
    }
}

/// Compiles parsed files (aligned with `files`; `None` where a file did not parse) into a
/// policy, or every error found.
pub(crate) fn compile(
    files: &[(SourceFile, Option<RawPolicyFile>)],
    revision: String,
    mut diags: Diagnostics,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let parsed: Vec<(&SourceFile, &RawPolicyFile)> = files
        .iter()
        .filter_map(|(s, r)| r.as_ref().map(|r| (s, r)))
        .collect();

    // Purposes, interned in the order they are defined.
    let purposes_def: Vec<Def<'_, RawPurpose>> = unique(
        "purpose",
        parsed
            .iter()
            .flat_map(|(s, r)| r.purposes.0.iter().map(move |(k, v)| (*s, k, v))),
        &mut diags,
    );
    let mut purposes = Vec::new();
    let mut purpose_ids = HashMap::new();
    let mut purpose_names = Vec::new();
    for d in &purposes_def {
        let RawPurpose {
            basis,
            description: _,
            sale_or_sharing,
        } = d.value;
        let Ok(id) = PurposeId::try_from(purposes.len()) else {
            break;
        };
        purpose_ids.insert(d.name.value.as_str(), id);
        purpose_names.push(d.name.value.as_str());
        purposes.push(Purpose {
            name: d.name.value.as_str().into(),
            basis: match basis.value {
                RawBasis::Consent => LawfulBasis::Consent,
                RawBasis::Contract => LawfulBasis::Contract,
                RawBasis::LegitimateInterest => LawfulBasis::LegitimateInterest,
                RawBasis::LegalObligation => LawfulBasis::LegalObligation,
                RawBasis::VitalInterest => LawfulBasis::VitalInterest,
                RawBasis::PublicTask => LawfulBasis::PublicTask,
            },
            sale_or_sharing: sale_or_sharing.unwrap_or(false),
        });
    }

    // Categories: parents first, so that a declared category may extend another declared one.
    let mut taxonomy = Taxonomy::default();
    let mut declared: Vec<(&SourceFile, &Spanned<String>)> = Vec::new();
    for (s, r) in &parsed {
        for (name, _) in &r.categories.0 {
            declared.push((s, name));
        }
    }
    let mut seen_cat: HashMap<&str, String> = HashMap::new();
    let mut pending = Vec::new();
    for (s, name) in declared {
        if let Some(first) = seen_cat.get(name.value.as_str()) {
            diags.at(
                s,
                name,
                PolicyErrorKind::DuplicateDefinition {
                    what: "category",
                    name: name.value.clone(),
                    first: first.clone(),
                },
            );
        } else if taxonomy.contains(&name.value) {
            diags.at(
                s,
                name,
                PolicyErrorKind::DuplicateDefinition {
                    what: "category",
                    name: name.value.clone(),
                    first: "the built-in vocabulary".into(),
                },
            );
        } else {
            seen_cat.insert(&name.value, loc_text(s, name));
            pending.push((s, name));
        }
    }
    pending.sort_by_key(|(_, n)| n.value.matches('.').count());
    for (s, name) in pending {
        if let Err(parent) = taxonomy.declare(&name.value) {
            diags.at(
                s,
                name,
                PolicyErrorKind::UnknownParentCategory {
                    name: name.value.clone(),
                    parent,
                },
            );
        }
    }

    // The pseudonym key.
    let keys: Vec<(&SourceFile, &Spanned<RawSecret>)> = parsed
        .iter()
        .filter_map(|(s, r)| r.pseudonym_key.as_ref().map(|k| (*s, k)))
        .collect();
    let mut pseudonym_key = None;
    for (i, (s, k)) in keys.iter().enumerate() {
        if i > 0 {
            let first = keys
                .first()
                .map(|(fs, fk)| loc_text(fs, fk))
                .unwrap_or_default();
            diags.at(
                s,
                k,
                PolicyErrorKind::DuplicateDefinition {
                    what: "setting",
                    name: "pseudonym_key".into(),
                    first,
                },
            );
            continue;
        }
        if let RawSecret::Sha256(_) = k.value {
            diags.at(s, k, PolicyErrorKind::PseudonymKeyAsHash);
            continue;
        }
        if let Some(super::check::Secret::Key(bytes)) = load_secret(s, k, &mut diags) {
            pseudonym_key = Some(Arc::<[u8]>::from(bytes));
        }
    }
    let has_pseudonym_key = !keys.is_empty();

    let mut ctx = Ctx {
        diags,
        purpose_ids,
        purpose_names,
        taxonomy,
        pseudonym_key,
    };

    // Callers.
    let callers_def: Vec<Def<'_, RawCaller>> = unique(
        "caller",
        parsed
            .iter()
            .flat_map(|(s, r)| r.callers.0.iter().map(move |(k, v)| (*s, k, v))),
        &mut ctx.diags,
    );
    let mut callers = Vec::new();
    for d in &callers_def {
        let RawCaller {
            api_key,
            purposes: caller_purposes,
        } = d.value;
        let secret = load_secret(d.src, api_key, &mut ctx.diags);
        let mut ids = Vec::new();
        match caller_purposes {
            Some(list) if !list.value.is_empty() => {
                for p in &list.value {
                    if let Some(id) = ctx.purpose(d.src, p)
                        && !ids.contains(&id)
                    {
                        ids.push(id);
                    }
                }
            }
            _ => ctx.diags.at(
                d.src,
                d.name,
                PolicyErrorKind::CallerWithoutPurposes {
                    caller: d.name.value.clone(),
                },
            ),
        }
        if let Some(secret) = secret {
            callers.push(Caller {
                name: d.name.value.as_str().into(),
                key_sha256: secret.sha256(),
                purposes: ids,
            });
        }
    }

    // Objects.
    let objects_def: Vec<Def<'_, RawObject>> = unique(
        "object",
        parsed
            .iter()
            .flat_map(|(s, r)| r.objects.0.iter().map(move |(k, v)| (*s, k, v))),
        &mut ctx.diags,
    );
    let mut objects: HashMap<&str, CompiledObject> = HashMap::new();
    let mut hash_used = Vec::new();
    for d in &objects_def {
        let compiled = compile_object(&mut ctx, d, purposes.len(), &mut hash_used);
        objects.insert(d.name.value.as_str(), compiled);
    }
    if !has_pseudonym_key {
        for (s, loc) in hash_used {
            ctx.diags
                .push(s.error_at(&loc, PolicyErrorKind::MissingPseudonymKey));
        }
    }

    // Routes.
    let mut routes_def: Vec<(&SourceFile, &Spanned<RawRoute>)> = Vec::new();
    for (s, r) in &parsed {
        for route in &r.routes {
            routes_def.push((s, route));
        }
    }
    let _ = unique(
        "route",
        routes_def
            .iter()
            .map(|(s, r)| (*s, &r.value.name, &r.value)),
        &mut ctx.diags,
    );
    let object_names: Vec<&str> = objects_def.iter().map(|d| d.name.value.as_str()).collect();
    let mut routes = Vec::new();
    // (method, shape) -> (route name, location), to find overlaps.
    let mut covered: HashMap<(http::Method, String), (String, String)> = HashMap::new();
    for (s, r) in &routes_def {
        if let Some(route) = compile_route(&mut ctx, s, r, &objects, &object_names, purposes.len())
        {
            let shape = template_shape(&route.path);
            for m in &route.methods {
                let key = (m.clone(), shape.clone());
                if let Some((_, first)) = covered.get(&key) {
                    let first = first.clone();
                    ctx.diags.at(
                        s,
                        &r.value.path,
                        PolicyErrorKind::DuplicateRoute {
                            method: m.to_string(),
                            path: r.value.path.value.clone(),
                            first,
                        },
                    );
                } else {
                    covered.insert(key, (route.name.to_string(), loc_text(s, &r.value.path)));
                }
            }
            routes.push(route);
        }
    }
    routes.sort_by(|a, b| specificity(&a.path, &b.path));

    // Passthrough.
    let mut passthrough = Vec::new();
    for (s, r) in &parsed {
        for p in &r.passthrough {
            let RawPassthrough {
                method,
                methods,
                path,
            } = &p.value;
            let methods = compile_methods(&mut ctx, s, p, method, methods);
            let template = match parse_template(&path.value) {
                Ok(t) => t,
                Err(reason) => {
                    ctx.diags.at(
                        s,
                        path,
                        PolicyErrorKind::InvalidPathTemplate {
                            path: path.value.clone(),
                            reason,
                        },
                    );
                    continue;
                }
            };
            let shape = template_shape(&template);
            for m in &methods {
                // HEAD is served as GET: a HEAD passthrough would bypass a GET route.
                let as_route = if *m == http::Method::HEAD {
                    http::Method::GET
                } else {
                    m.clone()
                };
                let hit = covered
                    .get(&(m.clone(), shape.clone()))
                    .or_else(|| covered.get(&(as_route, shape.clone())));
                if let Some((route, _)) = hit {
                    ctx.diags.at(
                        s,
                        path,
                        PolicyErrorKind::PassthroughShadowsRoute {
                            method: m.to_string(),
                            path: path.value.clone(),
                            route: route.clone(),
                        },
                    );
                }
            }
            if !methods.is_empty() {
                passthrough.push(Passthrough {
                    methods,
                    path: template,
                });
            }
        }
    }

    let mut errors = ctx.diags.errors;
    if !errors.is_empty() {
        errors.sort_by(|a, b| {
            (&a.file, a.line, a.col, a.kind.code()).cmp(&(&b.file, b.line, b.col, b.kind.code()))
        });
        errors.dedup();
        return Err(errors);
    }
    Ok(CompiledPolicy {
        revision,
        purposes,
        callers,
        routes,
        passthrough,
    })
}

/// Most specific first: at the first segment where two templates differ, a literal beats a
/// parameter; then literals by text; a longer template before its prefix.
fn specificity(a: &PathTemplate, b: &PathTemplate) -> Ordering {
    for (x, y) in a.segments.iter().zip(&b.segments) {
        let o = match (x, y) {
            (Segment::Literal(x), Segment::Literal(y)) => x.cmp(y),
            (Segment::Literal(_), _) => Ordering::Less,
            (_, Segment::Literal(_)) => Ordering::Greater,
            (
                Segment::Affixed {
                    prefix: px,
                    suffix: sx,
                    ..
                },
                Segment::Affixed {
                    prefix: py,
                    suffix: sy,
                    ..
                },
            ) => (py.len() + sy.len())
                .cmp(&(px.len() + sx.len()))
                .then_with(|| px.cmp(py))
                .then_with(|| sx.cmp(sy)),
            (Segment::Affixed { .. }, Segment::Param(_)) => Ordering::Less,
            (Segment::Param(_), Segment::Affixed { .. }) => Ordering::Greater,
            (Segment::Param(_), Segment::Param(_)) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    b.segments.len().cmp(&a.segments.len())
}

fn compile_methods<T>(
    ctx: &mut Ctx<'_>,
    src: &SourceFile,
    whole: &Spanned<T>,
    method: &Option<Spanned<String>>,
    methods: &Option<Vec<Spanned<String>>>,
) -> Vec<http::Method> {
    let list: Vec<&Spanned<String>> = match (method, methods) {
        (Some(m), None) => vec![m],
        (None, Some(ms)) if !ms.is_empty() => ms.iter().collect(),
        (Some(_), Some(_)) => {
            ctx.diags
                .at(src, whole, PolicyErrorKind::MethodSelector { both: true });
            return Vec::new();
        }
        _ => {
            ctx.diags
                .at(src, whole, PolicyErrorKind::MethodSelector { both: false });
            return Vec::new();
        }
    };
    let mut out: Vec<http::Method> = Vec::new();
    for m in list {
        if let Some(m) = parse_method(src, m, &mut ctx.diags)
            && !out.contains(&m)
        {
            out.push(m);
        }
    }
    out
}

/// A path made only of names (`$.a.b`), or `None` with `steps` of another shape.
fn key_path(steps: &[Step]) -> Option<Vec<Box<str>>> {
    steps
        .iter()
        .map(|s| match s {
            Step::Name(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn compile_route(
    ctx: &mut Ctx<'_>,
    src: &SourceFile,
    r: &Spanned<RawRoute>,
    objects: &HashMap<&str, CompiledObject>,
    object_names: &[&str],
    n_purposes: usize,
) -> Option<Route> {
    let RawRoute {
        name,
        method,
        methods,
        path,
        object,
        records,
        envelope,
        subject_param,
        without_basis,
    } = &r.value;
    let methods = compile_methods(ctx, src, r, method, methods);
    let template = match parse_template(&path.value) {
        Ok(t) => Some(t),
        Err(reason) => {
            ctx.diags.at(
                src,
                path,
                PolicyErrorKind::InvalidPathTemplate {
                    path: path.value.clone(),
                    reason,
                },
            );
            None
        }
    };
    let obj = objects.get(object.value.as_str());
    if obj.is_none() {
        let suggestion = suggest(&object.value, object_names.iter().copied());
        ctx.diags.at(
            src,
            object,
            PolicyErrorKind::UnknownObject {
                name: object.value.clone(),
                suggestion,
            },
        );
    }
    let records_at = match parse_path(src, records, &mut ctx.diags) {
        Some(steps) => match steps.split_last() {
            None => Some(RecordsAt::Body),
            Some((Step::Elements, keys)) => match key_path(keys) {
                Some(keys) => Some(RecordsAt::List(keys)),
                None => {
                    ctx.diags.at(
                        src,
                        records,
                        PolicyErrorKind::InvalidRecordsPath {
                            path: records.value.clone(),
                        },
                    );
                    None
                }
            },
            Some(_) => {
                ctx.diags.at(
                    src,
                    records,
                    PolicyErrorKind::InvalidRecordsPath {
                        path: records.value.clone(),
                    },
                );
                None
            }
        },
        None => None,
    };

    // The envelope: only meaningful around a list, and never the records themselves.
    let mut env_root = Node::default();
    for e in envelope {
        let Some(steps) = parse_path(src, e, &mut ctx.diags) else {
            continue;
        };
        let reason = if steps.is_empty() {
            Some("keeps the whole body, records included")
        } else if matches!(records_at, Some(RecordsAt::Body)) {
            Some("is not used on a single-record route (`records: $`)")
        } else if let Some(RecordsAt::List(keys)) = &records_at {
            let overlaps = steps
                .iter()
                .zip(keys)
                .all(|(s, k)| matches!(s, Step::Name(n) if n == k) || *s == Step::Members);
            overlaps.then_some("covers the records")
        } else {
            None
        };
        if let Some(reason) = reason {
            ctx.diags.at(
                src,
                e,
                PolicyErrorKind::InvalidEnvelope {
                    path: e.value.clone(),
                    reason,
                },
            );
            continue;
        }
        let keep = Assigned {
            plan: ValuePlan::Keep,
            special: false,
        };
        if !env_root.insert(&steps, Some((2, keep)), false) {
            ctx.diags.at(
                src,
                e,
                PolicyErrorKind::MixedPathShape {
                    path: e.value.clone(),
                },
            );
        }
    }
    let envelope_plan = match env_root.plan(None) {
        ValuePlan::Object(o) => o,
        _ => ObjectPlan::default(),
    };

    // The subject.
    let param_index = match (subject_param, &template) {
        (Some(p), Some(t)) => {
            let params: Vec<&str> = t
                .segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) | Segment::Affixed { name: n, .. } => Some(&**n),
                    Segment::Literal(_) => None,
                })
                .collect();
            match params.iter().position(|n| *n == p.value) {
                Some(i) => Some(i),
                None => {
                    let suggestion = suggest(&p.value, params.iter().copied());
                    ctx.diags.at(
                        src,
                        p,
                        PolicyErrorKind::UnknownSubjectParam {
                            param: p.value.clone(),
                            template: t.source.to_string(),
                            suggestion,
                        },
                    );
                    return None;
                }
            }
        }
        _ => None,
    };
    let obj = obj?;
    let records_at = records_at?;
    let field = obj.subject.clone();
    let subject = match (&records_at, param_index, field) {
        (_, Some(i), Some(f)) => SubjectAt::ParamAndField(i, f),
        (RecordsAt::Body, Some(i), None) => SubjectAt::Param(i),
        (RecordsAt::Body, None, Some(f)) => SubjectAt::Field(f),
        (RecordsAt::List(_), None, Some(f)) => SubjectAt::Field(f),
        (RecordsAt::Body, None, None) => {
            ctx.diags.at(
                src,
                name,
                PolicyErrorKind::MissingSubject {
                    route: name.value.clone(),
                },
            );
            return None;
        }
        (RecordsAt::List(_), _, None) => {
            ctx.diags.at(
                src,
                object,
                PolicyErrorKind::ListWithoutSubject {
                    route: name.value.clone(),
                    object: object.value.clone(),
                },
            );
            return None;
        }
    };
    let without_basis = match without_basis.as_ref().map(|w| w.value) {
        Some(RawWithoutBasis::Omit) => WithoutBasis::Omit,
        Some(RawWithoutBasis::Refuse) => WithoutBasis::Refuse,
        Some(RawWithoutBasis::NonPersonal) => WithoutBasis::NonPersonal,
        None if records_at == RecordsAt::Body => WithoutBasis::Refuse,
        None => WithoutBasis::Omit,
    };
    let views = (0..n_purposes)
        .map(|i| {
            obj.plans.get(i).cloned().flatten().map(|record| {
                Arc::new(View {
                    record,
                    non_personal: obj.non_personal.clone(),
                    envelope: envelope_plan.clone(),
                })
            })
        })
        .collect();
    if methods.is_empty() {
        return None;
    }
    Some(Route {
        name: name.value.as_str().into(),
        methods,
        path: template?,
        records: records_at,
        subject,
        without_basis,
        views,
    })
}

/// A selector of a rule, checked.
enum Selector {
    Path(Vec<Step>, Spanned<String>),
    Category(Spanned<String>),
}

fn compile_object(
    ctx: &mut Ctx<'_>,
    d: &Def<'_, RawObject>,
    n_purposes: usize,
    hash_used: &mut Vec<(SourceFile, serde_saphyr::Location)>,
) -> CompiledObject {
    let src = d.src;
    let RawObject {
        subject,
        fields,
        rules,
    } = d.value;
    let subject = subject.as_ref().and_then(|s| {
        let steps = parse_path(src, s, &mut ctx.diags)?;
        match key_path(&steps) {
            Some(k) if !k.is_empty() => Some(k),
            _ => {
                ctx.diags.at(
                    src,
                    s,
                    PolicyErrorKind::UnsupportedPathShape {
                        path: s.value.clone(),
                        place: "a subject path",
                        allowed: "a path of names, such as `$.id`",
                    },
                );
                None
            }
        }
    });

    // Declared fields: path -> category.
    let mut declared: Vec<(Vec<Step>, String)> = Vec::new();
    let mut seen_field: HashMap<String, String> = HashMap::new();
    for (path, category) in &fields.0 {
        let steps = parse_path(src, path, &mut ctx.diags);
        let known = ctx.category(src, category);
        let Some(steps) = steps else { continue };
        let key = path_key(&steps);
        if let Some(first) = seen_field.get(&key) {
            ctx.diags.at(
                src,
                path,
                PolicyErrorKind::DuplicateDefinition {
                    what: "field",
                    name: key,
                    first: first.clone(),
                },
            );
            continue;
        }
        seen_field.insert(key, loc_text(src, path));
        if known {
            declared.push((steps, category.value.clone()));
        }
    }

    // Non-personal view: what is under `system.`.
    let mut np = Node::default();
    for (steps, cat) in &declared {
        if is_under(cat, "system") {
            np.insert(
                steps,
                Some((
                    1,
                    Assigned {
                        plan: ValuePlan::Keep,
                        special: false,
                    },
                )),
                false,
            );
        }
    }
    for (steps, _) in &declared {
        np.mark_declared(steps);
    }
    np.spread_wildcards();
    let non_personal = root_plan(&np);

    let mut plans: Vec<Option<ValuePlan>> = vec![None; n_purposes];
    for (purpose, list) in &rules.0 {
        let pid = ctx.purpose(src, purpose);
        let mut root = Node::default();
        let mut shape_error = false;
        for (steps, cat) in &declared {
            if ctx.taxonomy.is_special(cat) && !root.insert(steps, None, true) {
                shape_error = true;
            }
            root.mark_declared(steps);
        }
        // selector key -> (action, location), for conflicts.
        let mut chosen: HashMap<String, (Assigned, String, String)> = HashMap::new();
        let mut category_rules: Vec<(String, Assigned)> = Vec::new();
        for rule in list.iter().flatten() {
            let Some((selectors, assigned, action_name)) = compile_rule(ctx, src, rule, hash_used)
            else {
                continue;
            };
            for sel in selectors {
                let (key, at_loc) = match &sel {
                    Selector::Path(steps, p) => (format!("path {}", path_key(steps)), p),
                    Selector::Category(c) => (format!("category {}", c.value), c),
                };
                if let Some((first, first_action, first_loc)) = chosen.get(&key) {
                    if *first != assigned {
                        ctx.diags.at(
                            src,
                            at_loc,
                            PolicyErrorKind::ConflictingRules {
                                selector: at_loc.value.clone(),
                                purpose: purpose.value.clone(),
                                first_action: first_action.clone(),
                                first: first_loc.clone(),
                            },
                        );
                    }
                    continue;
                }
                chosen.insert(
                    key,
                    (assigned.clone(), action_name.clone(), loc_text(src, at_loc)),
                );
                let keeps_plainly = assigned.plan == ValuePlan::Keep && !assigned.special;
                match sel {
                    Selector::Path(steps, p) => {
                        if keeps_plainly
                            && let Some((_, cat)) = declared
                                .iter()
                                .find(|(s, c)| *s == steps && ctx.taxonomy.is_special(c))
                        {
                            ctx.diags.at(
                                src,
                                &p,
                                PolicyErrorKind::SpecialWithoutFlag {
                                    target: p.value.clone(),
                                    category: cat.clone(),
                                },
                            );
                        }
                        if !root.insert(&steps, Some((2, assigned.clone())), false) {
                            ctx.diags.at(
                                src,
                                &p,
                                PolicyErrorKind::MixedPathShape {
                                    path: p.value.clone(),
                                },
                            );
                        }
                    }
                    Selector::Category(c) => {
                        if keeps_plainly && ctx.taxonomy.is_special(&c.value) {
                            ctx.diags.at(
                                src,
                                &c,
                                PolicyErrorKind::SpecialWithoutFlag {
                                    target: c.value.clone(),
                                    category: c.value.clone(),
                                },
                            );
                        }
                        category_rules.push((c.value.clone(), assigned.clone()));
                    }
                }
            }
        }
        // A field takes the narrowest category rule that covers its category.
        for (steps, cat) in &declared {
            let best = category_rules
                .iter()
                .filter(|(rc, _)| is_under(cat, rc))
                .max_by_key(|(rc, _)| rc.len());
            if let Some((_, a)) = best
                && !root.insert(steps, Some((1, a.clone())), false)
            {
                shape_error = true;
            }
        }
        if shape_error {
            ctx.diags.at(
                src,
                purpose,
                PolicyErrorKind::MixedPathShape {
                    path: format!("the fields of `{}`", d.name.value),
                },
            );
        }
        root.spread_wildcards();
        if let Some(slot) = pid.and_then(|id| plans.get_mut(usize::from(id))) {
            *slot = Some(root_plan(&root));
        }
    }
    CompiledObject {
        subject,
        plans,
        non_personal,
    }
}

/// Checks a rule: its selectors, its action and the action's parameters.
fn compile_rule(
    ctx: &mut Ctx<'_>,
    src: &SourceFile,
    rule: &Spanned<RawRule>,
    hash_used: &mut Vec<(SourceFile, serde_saphyr::Location)>,
) -> Option<(Vec<Selector>, Assigned, String)> {
    let RawRule {
        path,
        paths,
        category,
        action,
        special,
        first,
        last,
        with,
        to,
        prefix,
        width,
        value,
    } = &rule.value;
    let given = usize::from(path.is_some())
        + usize::from(paths.is_some())
        + usize::from(category.is_some());
    let mut selectors = Vec::new();
    let mut ok = true;
    if given != 1 {
        ctx.diags
            .at(src, rule, PolicyErrorKind::RuleSelector { found: given });
        ok = false;
    }
    for p in path.iter().chain(paths.iter().flatten()) {
        match parse_path(src, p, &mut ctx.diags) {
            Some(steps) => selectors.push(Selector::Path(steps, p.clone())),
            None => ok = false,
        }
    }
    if let Some(c) = category {
        if ctx.category(src, c) {
            selectors.push(Selector::Category(c.clone()));
        } else {
            ok = false;
        }
    }

    // Which parameters each action takes.
    let params: [(&str, Option<&serde_saphyr::Location>); 8] = [
        ("special", special.as_ref().map(|s| &s.referenced)),
        ("first", first.as_ref().map(|s| &s.referenced)),
        ("last", last.as_ref().map(|s| &s.referenced)),
        ("with", with.as_ref().map(|s| &s.referenced)),
        ("to", to.as_ref().map(|s| &s.referenced)),
        ("prefix", prefix.as_ref().map(|s| &s.referenced)),
        ("width", width.as_ref().map(|s| &s.referenced)),
        ("value", value.as_ref().map(|s| &s.referenced)),
    ];
    let allowed: &[&str] = match action.value.0.as_str() {
        "keep" => &["special"],
        "drop" | "null" | "hash" => &[],
        "mask" => &["first", "last", "with"],
        "generalise" => &["to", "prefix", "width"],
        "constant" => &["value"],
        other => {
            let suggestion = suggest(
                other,
                [
                    "keep",
                    "drop",
                    "null",
                    "mask",
                    "hash",
                    "generalise",
                    "constant",
                ],
            );
            ctx.diags.at(
                src,
                action,
                PolicyErrorKind::UnknownAction {
                    name: other.to_string(),
                    suggestion,
                },
            );
            return None;
        }
    };
    let bad = |ctx: &mut Ctx<'_>, loc: &serde_saphyr::Location, reason: String| {
        ctx.diags.push(src.error_at(
            loc,
            PolicyErrorKind::InvalidActionParams {
                action: action.value.0.clone(),
                reason,
            },
        ));
    };
    for (name, loc) in params {
        if let Some(loc) = loc
            && !allowed.contains(&name)
        {
            bad(
                ctx,
                loc,
                format!("`{name}` does not apply to `{}`", action.value.0),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let plan = match action.value.0.as_str() {
        "keep" => ValuePlan::Keep,
        "drop" => ValuePlan::Drop,
        "null" => ValuePlan::Transform(Transform::Null),
        "hash" => match &ctx.pseudonym_key {
            Some(key) => ValuePlan::Transform(Transform::Hash { key: key.clone() }),
            None => {
                hash_used.push((src.clone(), action.referenced));
                return None;
            }
        },
        "mask" => {
            let mut ch = '*';
            if let Some(w) = with {
                let mut chars = w.value.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => ch = c,
                    _ => {
                        bad(ctx, &w.referenced, "`with` must be one character".into());
                        return None;
                    }
                }
            }
            let n = |v: &Option<Spanned<u64>>| {
                v.as_ref()
                    .map_or(0, |v| usize::try_from(v.value).unwrap_or(usize::MAX))
            };
            ValuePlan::Transform(Transform::Mask {
                first: n(first),
                last: n(last),
                with: ch,
            })
        }
        "generalise" => match (to, prefix, width) {
            (Some(t), None, None) => match t.value.as_str() {
                "year" => ValuePlan::Transform(Transform::DateToYear),
                "month" => ValuePlan::Transform(Transform::DateToMonth),
                other => {
                    bad(
                        ctx,
                        &t.referenced,
                        format!("`to: {other}` must be `year` or `month`"),
                    );
                    return None;
                }
            },
            (None, Some(p), None) => ValuePlan::Transform(Transform::Prefix(
                usize::try_from(p.value).unwrap_or(usize::MAX),
            )),
            (None, None, Some(w)) if w.value > 0 => {
                ValuePlan::Transform(Transform::Range { width: w.value })
            }
            (None, None, Some(w)) => {
                bad(ctx, &w.referenced, "`width` must be at least 1".into());
                return None;
            }
            _ => {
                bad(
                    ctx,
                    &action.referenced,
                    "give exactly one of `to`, `prefix` or `width`".into(),
                );
                return None;
            }
        },
        "constant" => match value {
            Some(v) => match serde_json::to_string(&v.value) {
                Ok(text) => ValuePlan::Transform(Transform::Constant(text.into())),
                Err(e) => {
                    bad(ctx, &v.referenced, format!("the value is not JSON: {e}"));
                    return None;
                }
            },
            None => {
                bad(
                    ctx,
                    &action.referenced,
                    "`value` is missing (for `null`, use action `null`)".into(),
                );
                return None;
            }
        },
        _ => return None,
    };
    let special = special.as_ref().is_some_and(|s| s.value);
    Some((
        selectors,
        Assigned { plan, special },
        action.value.0.clone(),
    ))
}
