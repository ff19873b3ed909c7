//! Checks of single values of a policy: JSONPaths, path templates, methods, secrets, and the
//! category taxonomy. Each check either returns the checked value or pushes a located
//! [`PolicyError`] and returns `None`, so that the compiler can go on and report every error.
//!
//! Nothing here builds plans: that is `compile.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use jsonpath_rust::parser::model::{Segment as JpSegment, Selector};
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::compiled::{PathTemplate, Segment};
use super::diagnostic::{PolicyError, PolicyErrorKind, suggest};
use super::raw::RawSecret;
use super::source::SourceFile;

/// Collects the errors of one compilation.
#[derive(Debug, Default)]
pub struct Diagnostics {
    /// The errors, in the order found; sorted at the end.
    pub errors: Vec<PolicyError>,
}

impl Diagnostics {
    /// Records an error at a located value of `src`.
    pub fn at<T>(&mut self, src: &SourceFile, at: &Spanned<T>, kind: PolicyErrorKind) {
        self.errors.push(src.error_at(&at.referenced, kind));
    }

    /// Records an already built error.
    pub fn push(&mut self, e: PolicyError) {
        self.errors.push(e);
    }
}

/// One step of a supported JSONPath.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// `.name` or `['name']`.
    Name(Box<str>),
    /// `.*`: every member of an object.
    Members,
    /// `[*]`: every element of an array.
    Elements,
}

/// Canonical text of a path, used to compare paths written differently.
pub fn path_key(steps: &[Step]) -> String {
    let mut s = String::from("$");
    for step in steps {
        match step {
            Step::Name(n) if is_shorthand(n) => {
                s.push('.');
                s.push_str(n);
            }
            Step::Name(n) => {
                s.push_str("['");
                s.push_str(&n.replace('\\', "\\\\").replace('\'', "\\'"));
                s.push_str("']");
            }
            Step::Members => s.push_str(".*"),
            Step::Elements => s.push_str("[*]"),
        }
    }
    s
}

fn is_shorthand(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || !c.is_ascii())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii())
}

/// Parses a JSONPath of the supported subset (`$`, `.name`, `['name']`, `[*]`, `.*`).
///
/// Syntax is checked with the RFC 9535 parser; features that cannot be evaluated record by
/// record (filters, slices, indices, `..`, unions) are refused with their own error.
pub fn parse_path(
    src: &SourceFile,
    at: &Spanned<String>,
    diags: &mut Diagnostics,
) -> Option<Vec<Step>> {
    let text = at.value.as_str();
    let query = match jsonpath_rust::parser::parse_json_path(text) {
        Ok(q) => q,
        Err(e) => {
            let (col, reason) = describe_jsonpath_error(&e.to_string());
            let mut err = src.error_at(
                &at.referenced,
                PolicyErrorKind::InvalidJsonPath {
                    path: text.to_string(),
                    reason,
                },
            );
            if let Some(col) = col {
                // Point at the offending character: the error's column counts from the start of
                // the expression, which starts one character later when quoted.
                let quoted = src
                    .text
                    .get(err.span.start..)
                    .is_some_and(|s| s.starts_with(['"', '\'']));
                let shift = col.saturating_sub(1) + usize::from(quoted);
                let byte_shift: usize = text
                    .chars()
                    .take(col.saturating_sub(1))
                    .map(char::len_utf8)
                    .sum::<usize>()
                    + usize::from(quoted);
                err.col += shift;
                err.span = err.span.start + byte_shift..err.span.start + byte_shift + 1;
            }
            diags.push(err);
            return None;
        }
    };
    for seg in &query.segments {
        if let Some(feature) = unstreamable(seg) {
            diags.at(
                src,
                at,
                PolicyErrorKind::UnstreamableJsonPath {
                    path: text.to_string(),
                    feature,
                },
            );
            return None;
        }
    }
    match scan_path(text) {
        Some(steps) if steps.len() == query.segments.len() => Some(steps),
        _ => {
            diags.at(
                src,
                at,
                PolicyErrorKind::InvalidJsonPath {
                    path: text.to_string(),
                    reason: "this form is not supported".into(),
                },
            );
            None
        }
    }
}

fn unstreamable(seg: &JpSegment) -> Option<&'static str> {
    match seg {
        JpSegment::Descendant(_) => Some("recursive descent (`..`)"),
        JpSegment::Selector(s) => unstreamable_selector(s),
        JpSegment::Selectors(list) if list.len() > 1 => Some("a union of selectors"),
        JpSegment::Selectors(list) => list.iter().find_map(unstreamable_selector),
    }
}

fn unstreamable_selector(s: &Selector) -> Option<&'static str> {
    match s {
        Selector::Name(_) | Selector::Wildcard => None,
        Selector::Index(_) => Some("an index"),
        Selector::Slice(..) => Some("a slice"),
        Selector::Filter(_) => Some("a filter"),
    }
}

/// The column (in the expression) and the reason of a JSONPath parser error.
fn describe_jsonpath_error(text: &str) -> (Option<usize>, String) {
    let col = text
        .split_once("--> ")
        .and_then(|(_, rest)| rest.split_once(':'))
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
    let reason = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("= "))
        .unwrap_or("unexpected syntax")
        .to_string();
    (col, reason)
}

/// Scans the supported subset, telling `.*` from `[*]` (the RFC parser does not).
fn scan_path(text: &str) -> Option<Vec<Step>> {
    let mut chars = text.chars().peekable();
    if chars.next()? != '$' {
        return None;
    }
    let mut steps = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if chars.peek() == Some(&'*') {
                    chars.next();
                    steps.push(Step::Members);
                    continue;
                }
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii() {
                        name.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if name.is_empty() {
                    return None;
                }
                steps.push(Step::Name(name.into()));
            }
            '[' => {
                skip_ws(&mut chars);
                match chars.next()? {
                    '*' => steps.push(Step::Elements),
                    q @ ('\'' | '"') => {
                        let mut name = String::new();
                        loop {
                            match chars.next()? {
                                '\\' => name.push(unescape(&mut chars)?),
                                c if c == q => break,
                                c => name.push(c),
                            }
                        }
                        steps.push(Step::Name(name.into()));
                    }
                    _ => return None,
                }
                skip_ws(&mut chars);
                if chars.next()? != ']' {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(steps)
}

fn skip_ws(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars
        .peek()
        .is_some_and(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
    {
        chars.next();
    }
}

fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    Some(match chars.next()? {
        'b' => '\u{8}',
        'f' => '\u{c}',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'u' => {
            let hex: String = (0..4).filter_map(|_| chars.next()).collect();
            char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
        }
        c @ ('\'' | '"' | '\\' | '/') => c,
        _ => return None,
    })
}

/// Parses a path template: starts with `/`, at most one `{param}` per segment (a whole segment,
/// or between a literal prefix and suffix as in `contacts({id})`), no `..`, no `%`. A trailing
/// `/` is part of the template, as it is of a request path: `/query/` matches `/query/` only.
pub fn parse_template(text: &str) -> Result<PathTemplate, String> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err("it must start with `/`".into());
    };
    if text.contains('%') {
        return Err("percent-encoding (`%`) is not allowed".into());
    }
    if text.contains(['?', '#']) {
        return Err("a query or fragment is not part of a path".into());
    }
    let mut segments = Vec::new();
    let mut params: Vec<&str> = Vec::new();
    if !rest.is_empty() {
        let last = rest.split('/').count() - 1;
        for (i, seg) in rest.split('/').enumerate() {
            if seg.is_empty() && i == last {
                // A trailing slash: the final empty segment a normalised request path keeps.
                segments.push(Segment::Literal("".into()));
                continue;
            }
            if seg.is_empty() {
                return Err("it has an empty segment (`//`)".into());
            }
            if seg == ".." || seg == "." {
                return Err(format!("the segment `{seg}` is not allowed"));
            }
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("`{seg}` is not a valid parameter"));
                }
                if params.contains(&name) {
                    return Err(format!("the parameter `{name}` appears twice"));
                }
                params.push(name);
                segments.push(Segment::Param(name.into()));
            } else if seg.contains(['{', '}']) {
                let affixed = seg.split_once('{').and_then(|(prefix, rest)| {
                    let (name, suffix) = rest.split_once('}')?;
                    let plain = |t: &str| !t.contains(['{', '}']);
                    let valid = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && plain(prefix)
                        && plain(suffix);
                    valid.then_some((prefix, name, suffix))
                });
                let Some((prefix, name, suffix)) = affixed else {
                    return Err(format!(
                        "`{seg}`: a segment holds at most one `{{param}}`, with a valid name"
                    ));
                };
                if params.contains(&name) {
                    return Err(format!("the parameter `{name}` appears twice"));
                }
                params.push(name);
                segments.push(Segment::Affixed {
                    prefix: prefix.into(),
                    name: name.into(),
                    suffix: suffix.into(),
                });
            } else {
                segments.push(Segment::Literal(seg.into()));
            }
        }
    }
    Ok(PathTemplate {
        source: text.into(),
        segments,
    })
}

/// The shape of a template for comparisons: literals as is, parameters as `{}`.
pub fn template_shape(t: &PathTemplate) -> String {
    let mut s = String::new();
    for seg in &t.segments {
        s.push('/');
        match seg {
            Segment::Literal(l) => s.push_str(l),
            Segment::Param(_) => s.push_str("{}"),
            Segment::Affixed { prefix, suffix, .. } => {
                s.push_str(prefix);
                s.push_str("{}");
                s.push_str(suffix);
            }
        }
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Parses a method: upper case, one of the methods a CRM API uses.
pub fn parse_method(
    src: &SourceFile,
    at: &Spanned<String>,
    diags: &mut Diagnostics,
) -> Option<http::Method> {
    if METHODS.contains(&at.value.as_str())
        && let Ok(m) = http::Method::from_bytes(at.value.as_bytes())
    {
        return Some(m);
    }
    let upper = at.value.to_uppercase();
    let suggestion = if METHODS.contains(&upper.as_str()) {
        Some(upper)
    } else {
        suggest(&upper, METHODS.iter().copied())
    };
    diags.at(
        src,
        at,
        PolicyErrorKind::InvalidMethod {
            method: at.value.clone(),
            suggestion,
        },
    );
    None
}

/// A secret as loaded: either only the key's hash, or the key itself.
pub enum Secret {
    /// `sha256:` given.
    Hash([u8; 32]),
    /// The key read from the environment or a file.
    Key(Vec<u8>),
}

impl Secret {
    /// SHA-256 of the key.
    pub fn sha256(&self) -> [u8; 32] {
        match self {
            Self::Hash(h) => *h,
            Self::Key(k) => Sha256::digest(k).into(),
        }
    }
}

/// Loads a secret: checks the hash, or reads the key from the environment or a file (relative
/// to the policy file's directory). Reports a key written in clear.
pub fn load_secret(
    src: &SourceFile,
    at: &Spanned<RawSecret>,
    diags: &mut Diagnostics,
) -> Option<Secret> {
    match &at.value {
        RawSecret::Clear => {
            diags.at(src, at, PolicyErrorKind::KeyInClear);
            None
        }
        RawSecret::Sha256(hex_at) => {
            let hex = hex_at.value.trim();
            let mut out = [0u8; 32];
            if hex.len() == 64 && hex::decode_to_slice(hex, &mut out).is_ok() {
                Some(Secret::Hash(out))
            } else {
                diags.at(
                    src,
                    hex_at,
                    PolicyErrorKind::InvalidSha256 {
                        value: hex.to_string(),
                    },
                );
                None
            }
        }
        RawSecret::Env(var) => {
            let missing = |reason: &str| PolicyErrorKind::MissingSecret {
                source: "variable",
                name: var.value.clone(),
                reason: reason.to_string(),
            };
            match std::env::var_os(&var.value) {
                None => {
                    diags.at(src, var, missing("is not set"));
                    None
                }
                Some(v) if v.is_empty() => {
                    diags.at(src, var, missing("is empty"));
                    None
                }
                Some(v) => Some(Secret::Key(v.into_encoded_bytes())),
            }
        }
        RawSecret::File(file) => {
            let path = Path::new(&file.value);
            let path = if path.is_relative() {
                src.path.parent().unwrap_or(Path::new("")).join(path)
            } else {
                path.to_path_buf()
            };
            let missing = |reason: String| PolicyErrorKind::MissingSecret {
                source: "file",
                name: file.value.clone(),
                reason,
            };
            match std::fs::read(&path) {
                Err(e) => {
                    diags.at(
                        src,
                        file,
                        missing(format!("cannot be read: {}", e.to_string().to_lowercase())),
                    );
                    None
                }
                Ok(mut bytes) => {
                    // One trailing newline is how editors and `echo` end a file, not key material.
                    if bytes.last() == Some(&b'\n') {
                        bytes.pop();
                        if bytes.last() == Some(&b'\r') {
                            bytes.pop();
                        }
                    }
                    if bytes.is_empty() {
                        diags.at(src, file, missing("is empty".into()));
                        None
                    } else {
                        Some(Secret::Key(bytes))
                    }
                }
            }
        }
    }
}

/// The category vocabulary: built-in fideslang-style categories plus declared ones.
#[derive(Debug, Clone)]
pub struct Taxonomy {
    /// Name -> special (GDPR art. 9).
    categories: BTreeMap<Arc<str>, bool>,
}

/// Built-in categories (fideslang data categories). Special ones are listed apart.
const BUILT_IN: &[&str] = &[
    "system",
    "system.authentication",
    "system.operations",
    "user",
    "user.account",
    "user.account.settings",
    "user.account.username",
    "user.authorization",
    "user.authorization.credentials",
    "user.authorization.password",
    "user.behavior",
    "user.behavior.browsing_history",
    "user.behavior.media_consumption",
    "user.behavior.purchase_history",
    "user.behavior.search_history",
    "user.childrens",
    "user.contact",
    "user.contact.address",
    "user.contact.address.city",
    "user.contact.address.country",
    "user.contact.address.postal_code",
    "user.contact.address.state",
    "user.contact.address.street",
    "user.contact.email",
    "user.contact.fax_number",
    "user.contact.organization",
    "user.contact.phone_number",
    "user.contact.url",
    "user.content",
    "user.content.private",
    "user.content.public",
    "user.criminal_history",
    "user.demographic",
    "user.demographic.age_range",
    "user.demographic.date_of_birth",
    "user.demographic.gender",
    "user.demographic.language",
    "user.demographic.marital_status",
    "user.demographic.profile",
    "user.device",
    "user.device.cookie",
    "user.device.cookie_id",
    "user.device.device_id",
    "user.device.ip_address",
    "user.device.telemetry",
    "user.financial",
    "user.financial.bank_account",
    "user.financial.credit_card",
    "user.government_id",
    "user.government_id.drivers_license_number",
    "user.government_id.national_identification_number",
    "user.government_id.passport_number",
    "user.job_title",
    "user.location",
    "user.location.imprecise",
    "user.location.precise",
    "user.name",
    "user.name.first",
    "user.name.last",
    "user.privacy_preferences",
    "user.social",
    "user.unique_id",
    "user.unique_id.pseudonymous",
    "user.workplace",
];

/// GDPR art. 9 special categories.
const SPECIAL: &[&str] = &[
    "user.health_and_medical",
    "user.genetic",
    "user.biometric",
    "user.demographic.race_ethnicity",
    "user.demographic.religious_belief",
    "user.demographic.political_opinion",
    "user.demographic.sexual_orientation",
    "user.demographic.trade_union_membership",
];

impl Default for Taxonomy {
    fn default() -> Self {
        let mut categories = BTreeMap::new();
        for c in BUILT_IN {
            categories.insert(Arc::from(*c), false);
        }
        for c in SPECIAL {
            categories.insert(Arc::from(*c), true);
        }
        Self { categories }
    }
}

impl Taxonomy {
    /// Whether a category is known.
    pub fn contains(&self, name: &str) -> bool {
        self.categories.contains_key(name)
    }

    /// Whether a known category is special (itself or through a parent).
    pub fn is_special(&self, name: &str) -> bool {
        self.categories.get(name).copied().unwrap_or(false)
    }

    /// Adds a declared category; its parent must exist. Returns the parent when it does not.
    pub fn declare(&mut self, name: &str) -> Result<(), String> {
        let parent = name.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        match self.categories.get(parent).copied() {
            Some(special) => {
                self.categories.insert(Arc::from(name), special);
                Ok(())
            }
            None => Err(parent.to_string()),
        }
    }

    /// The closest known name, for did-you-mean.
    pub fn suggest(&self, name: &str) -> Option<String> {
        suggest(name, self.categories.keys().map(|k| &**k))
    }
}

/// Whether `category` is `parent` or below it.
pub fn is_under(category: &str, parent: &str) -> bool {
    category == parent
        || category
            .strip_prefix(parent)
            .is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_supported_paths() {
        assert_eq!(
            scan_path("$.a['b c'][*].*"),
            Some(vec![
                Step::Name("a".into()),
                Step::Name("b c".into()),
                Step::Elements,
                Step::Members
            ])
        );
        assert_eq!(
            path_key(&scan_path("$['a'].b").unwrap_or_default()),
            "$.a.b"
        );
        assert_eq!(scan_path("$"), Some(vec![]));
    }

    #[test]
    fn categories_nest() {
        assert!(is_under("user.contact.email", "user.contact"));
        assert!(!is_under("user.contactx", "user.contact"));
        let mut t = Taxonomy::default();
        assert!(t.declare("user.health_and_medical.allergies").is_ok());
        assert!(t.is_special("user.health_and_medical.allergies"));
        assert_eq!(t.declare("user.nope.x"), Err("user.nope".to_string()));
    }

    #[test]
    fn templates() {
        assert!(parse_template("/a/{id}").is_ok());
        assert!(parse_template("a").is_err());
        let odata = parse_template("/api/data/v9.2/contacts({id})").unwrap();
        assert_eq!(
            odata.segments.last(),
            Some(&Segment::Affixed {
                prefix: "contacts(".into(),
                name: "id".into(),
                suffix: ")".into()
            })
        );
        assert!(parse_template("/a/x{id}{b}").is_err());
        assert!(parse_template("/a/x{}").is_err());
        assert!(parse_template("/a/{id}/b({id})").is_err());
        assert!(parse_template("/a/../b").is_err());
        assert!(parse_template("/a/%2e").is_err());
        assert!(parse_template("/").is_ok_and(|t| t.segments.is_empty()));
        assert!(parse_template("/a//b").is_err());
        assert!(parse_template("//").is_err());
        assert!(parse_template("/a//").is_err());
        // A trailing slash is a final empty segment, as `path::normalise` gives one.
        let slash = parse_template("/services/data/{v}/query/").unwrap();
        assert_eq!(slash.segments.last(), Some(&Segment::Literal("".into())));
        let normal = crate::proxy::path::normalise("/services/data/v59.0/query/").unwrap();
        assert_eq!(slash.matches(&normal.segments), Some(vec!["v59.0"]));
        let bare = crate::proxy::path::normalise("/services/data/v59.0/query").unwrap();
        assert_eq!(slash.matches(&bare.segments), None);
        let plain = parse_template("/services/data/{v}/query").unwrap();
        assert_eq!(plain.matches(&normal.segments), None);
    }
}
