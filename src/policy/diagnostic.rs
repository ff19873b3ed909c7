//! Diagnostics a policy author reads: one [`PolicyError`] per problem, with its file, line and
//! column, a stable code, a one-line message and a help line with the fix.
//!
//! This module owns rendering (human and JSON). It never decides what is an error: the checks
//! in `check.rs` and `compile.rs` do.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One problem found in a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// What is wrong; gives the code, message and help.
    pub kind: PolicyErrorKind,
    /// The file it is in (as given to the loader).
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file or set.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Byte range in the file that the caret underlines.
    pub span: std::ops::Range<usize>,
    /// The source line at `line`, for rendering; empty when unknown.
    pub source_line: Arc<str>,
}

/// Every kind of policy error. Each has a stable [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyErrorKind {
    /// The directory or a file could not be read.
    Read { reason: String },
    /// The directory holds no policy file.
    NoPolicyFiles,
    /// The YAML is not well formed or does not have the expected shape.
    Yaml { message: String },
    /// A key is not part of the language.
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    /// A value that is not one of the allowed words.
    UnknownValue {
        value: String,
        expected: String,
        suggestion: Option<String>,
    },
    /// A key appears twice in one mapping.
    DuplicateKey { key: String },
    /// A YAML merge key (`<<`) was used.
    MergeKey,
    /// A name is defined twice (in one or in several files).
    DuplicateDefinition {
        what: &'static str,
        name: String,
        first: String,
    },
    /// A purpose is referenced but not declared.
    UnknownPurpose {
        name: String,
        suggestion: Option<String>,
    },
    /// A category is referenced but not known.
    UnknownCategory {
        name: String,
        suggestion: Option<String>,
    },
    /// A declared category whose parent is not known.
    UnknownParentCategory { name: String, parent: String },
    /// A route references an object that is not declared.
    UnknownObject {
        name: String,
        suggestion: Option<String>,
    },
    /// A rule names an action that does not exist.
    UnknownAction {
        name: String,
        suggestion: Option<String>,
    },
    /// A JSONPath that does not parse.
    InvalidJsonPath { path: String, reason: String },
    /// A JSONPath using a feature that cannot be evaluated record by record while streaming.
    UnstreamableJsonPath { path: String, feature: &'static str },
    /// A JSONPath whose shape is not allowed where it is used.
    UnsupportedPathShape {
        path: String,
        place: &'static str,
        allowed: &'static str,
    },
    /// A `records` path other than `$`, `$[*]` or `$.k1.k2[*]`.
    InvalidRecordsPath { path: String },
    /// Two rules treat the same member as an object and as an array.
    MixedPathShape { path: String },
    /// A caller with no purpose.
    CallerWithoutPurposes { caller: String },
    /// A key written in clear in the policy.
    KeyInClear,
    /// A `sha256` that is not 64 hexadecimal characters.
    InvalidSha256 { value: String },
    /// A key read from the environment or a file is missing or empty.
    MissingSecret {
        source: &'static str,
        name: String,
        reason: String,
    },
    /// A pseudonym key given by its hash, which cannot be used to compute pseudonyms.
    PseudonymKeyAsHash,
    /// A special-category field or category kept without `special: true`.
    SpecialWithoutFlag { target: String, category: String },
    /// Two rules of one purpose select the same path or category with different actions.
    ConflictingRules {
        selector: String,
        purpose: String,
        first_action: String,
        first: String,
    },
    /// A rule with no selector, or with more than one.
    RuleSelector { found: usize },
    /// An action given parameters it does not take, or missing one it needs.
    InvalidActionParams { action: String, reason: String },
    /// `hash` is used but no `pseudonym_key` is set.
    MissingPseudonymKey,
    /// A path template that is not valid.
    InvalidPathTemplate { path: String, reason: String },
    /// `subject_param` that is not a parameter of the route's template.
    UnknownSubjectParam {
        param: String,
        template: String,
        suggestion: Option<String>,
    },
    /// A single-record route with no way to know whose record it is.
    MissingSubject { route: String },
    /// A list route whose object has no `subject` path.
    ListWithoutSubject { route: String, object: String },
    /// An `envelope` that cannot be applied.
    InvalidEnvelope { path: String, reason: &'static str },
    /// An HTTP method that is not valid or not upper case.
    InvalidMethod {
        method: String,
        suggestion: Option<String>,
    },
    /// A route or passthrough entry without `method`/`methods`, or with both.
    MethodSelector { both: bool },
    /// Two protected routes with the same path template and a common method.
    DuplicateRoute {
        method: String,
        path: String,
        first: String,
    },
    /// A passthrough entry on the path and method of a protected route.
    PassthroughShadowsRoute {
        method: String,
        path: String,
        route: String,
    },
}

impl PolicyErrorKind {
    /// The stable code, as in `error[code]`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read-error",
            Self::NoPolicyFiles => "no-policy-files",
            Self::Yaml { .. } => "yaml",
            Self::UnknownKey { .. } => "unknown-key",
            Self::UnknownValue { .. } => "unknown-value",
            Self::DuplicateKey { .. } => "duplicate-key",
            Self::MergeKey => "merge-key",
            Self::DuplicateDefinition { .. } => "duplicate-definition",
            Self::UnknownPurpose { .. } => "unknown-purpose",
            Self::UnknownCategory { .. } => "unknown-category",
            Self::UnknownParentCategory { .. } => "unknown-parent-category",
            Self::UnknownObject { .. } => "unknown-object",
            Self::UnknownAction { .. } => "unknown-action",
            Self::InvalidJsonPath { .. } => "invalid-jsonpath",
            Self::UnstreamableJsonPath { .. } => "unstreamable-jsonpath",
            Self::UnsupportedPathShape { .. } => "unsupported-path-shape",
            Self::InvalidRecordsPath { .. } => "invalid-records-path",
            Self::MixedPathShape { .. } => "mixed-path-shape",
            Self::CallerWithoutPurposes { .. } => "caller-without-purposes",
            Self::KeyInClear => "key-in-clear",
            Self::InvalidSha256 { .. } => "invalid-sha256",
            Self::MissingSecret { .. } => "missing-secret",
            Self::PseudonymKeyAsHash => "pseudonym-key-as-hash",
            Self::SpecialWithoutFlag { .. } => "special-without-flag",
            Self::ConflictingRules { .. } => "conflicting-rules",
            Self::RuleSelector { .. } => "rule-selector",
            Self::InvalidActionParams { .. } => "invalid-action-params",
            Self::MissingPseudonymKey => "missing-pseudonym-key",
            Self::InvalidPathTemplate { .. } => "invalid-path-template",
            Self::UnknownSubjectParam { .. } => "unknown-subject-param",
            Self::MissingSubject { .. } => "missing-subject",
            Self::ListWithoutSubject { .. } => "list-without-subject",
            Self::InvalidEnvelope { .. } => "invalid-envelope",
            Self::InvalidMethod { .. } => "invalid-method",
            Self::MethodSelector { .. } => "method-selector",
            Self::DuplicateRoute { .. } => "duplicate-route",
            Self::PassthroughShadowsRoute { .. } => "passthrough-shadows-route",
        }
    }

    /// The one-line, lower-case message.
    pub fn message(&self) -> String {
        match self {
            Self::Read { reason } => format!("cannot read the policy: {reason}"),
            Self::NoPolicyFiles => "no policy file (`*.yaml`) in the directory".into(),
            Self::Yaml { message } => message.clone(),
            Self::UnknownKey { key, .. } => format!("unknown key `{key}`"),
            Self::UnknownValue {
                value, expected, ..
            } => {
                format!("`{value}` is not one of {expected}")
            }
            Self::DuplicateKey { key } => format!("key `{key}` appears twice in one mapping"),
            Self::MergeKey => "merge keys (`<<`) are not allowed".into(),
            Self::DuplicateDefinition { what, name, .. } => {
                format!("{what} `{name}` is defined twice")
            }
            Self::UnknownPurpose { name, .. } => format!("purpose `{name}` is not declared"),
            Self::UnknownCategory { name, .. } => format!("category `{name}` is not known"),
            Self::UnknownParentCategory { name, parent } => {
                format!("category `{name}` extends `{parent}`, which is not known")
            }
            Self::UnknownObject { name, .. } => format!("object `{name}` is not declared"),
            Self::UnknownAction { name, .. } => format!("action `{name}` does not exist"),
            Self::InvalidJsonPath { path, reason } => {
                format!("`{path}` is not a valid JSONPath: {reason}")
            }
            Self::UnstreamableJsonPath { path, feature } => {
                format!("`{path}` uses {feature}, which cannot be evaluated while streaming")
            }
            Self::UnsupportedPathShape { path, place, .. } => {
                format!("`{path}` cannot be used as {place}")
            }
            Self::InvalidRecordsPath { path } => {
                format!("`{path}` is not a supported records path")
            }
            Self::MixedPathShape { path } => {
                format!("rules use `{path}` both as an object and as an array")
            }
            Self::CallerWithoutPurposes { caller } => format!("caller `{caller}` has no purpose"),
            Self::KeyInClear => "the API key is written in clear".into(),
            Self::InvalidSha256 { value } => {
                format!("`{value}` is not a SHA-256 (64 hexadecimal characters)")
            }
            Self::MissingSecret {
                source,
                name,
                reason,
            } => {
                format!("key {source} `{name}` {reason}")
            }
            Self::PseudonymKeyAsHash => "the pseudonym key cannot be given as a hash".into(),
            Self::SpecialWithoutFlag { target, category } => {
                format!(
                    "`{target}` keeps the special category `{category}` without `special: true`"
                )
            }
            Self::ConflictingRules {
                selector, purpose, ..
            } => {
                format!("rules of purpose `{purpose}` conflict on `{selector}`")
            }
            Self::RuleSelector { found: 0 } => {
                "the rule has no selector (`path`, `paths` or `category`)".into()
            }
            Self::RuleSelector { .. } => {
                "the rule has more than one selector (`path`, `paths`, `category`)".into()
            }
            Self::InvalidActionParams { action, reason } => {
                format!("invalid parameters for action `{action}`: {reason}")
            }
            Self::MissingPseudonymKey => {
                "action `hash` is used but no `pseudonym_key` is set".into()
            }
            Self::InvalidPathTemplate { path, reason } => {
                format!("path template `{path}` is invalid: {reason}")
            }
            Self::UnknownSubjectParam {
                param, template, ..
            } => {
                format!("`{param}` is not a parameter of `{template}`")
            }
            Self::MissingSubject { route } => {
                format!("single-record route `{route}` has no subject")
            }
            Self::ListWithoutSubject { route, object } => {
                format!("list route `{route}` uses object `{object}`, which has no `subject` path")
            }
            Self::InvalidEnvelope { path, reason } => {
                format!("envelope path `{path}` {reason}")
            }
            Self::InvalidMethod { method, .. } => format!("`{method}` is not an HTTP method"),
            Self::MethodSelector { both: false } => "no `method` or `methods` is given".into(),
            Self::MethodSelector { both: true } => "both `method` and `methods` are given".into(),
            Self::DuplicateRoute { method, path, .. } => {
                format!("`{method} {path}` is covered by two routes")
            }
            Self::PassthroughShadowsRoute {
                method,
                path,
                route,
            } => {
                format!("passthrough `{method} {path}` is the path of protected route `{route}`")
            }
        }
    }

    /// The help line: how to fix it. Never empty.
    pub fn help(&self) -> String {
        fn did_you_mean(s: &Option<String>, otherwise: &str) -> String {
            match s {
                Some(s) => format!("did you mean `{s}`?"),
                None => otherwise.to_string(),
            }
        }
        match self {
            Self::Read { .. } => "check that the path exists and is readable".into(),
            Self::NoPolicyFiles => "point to a directory holding the policy's `.yaml` files".into(),
            Self::Yaml { message } if message.contains("anchor or alias") => {
                "quote the value: in YAML, `*` and `&` start aliases and anchors".into()
            }
            Self::Yaml { .. } => "fix the YAML at this place".into(),
            Self::UnknownKey { suggestion, .. } => did_you_mean(
                suggestion,
                "remove the key; docs/policy-language.md lists the keys of each section",
            ),
            Self::UnknownValue { suggestion, .. } => {
                did_you_mean(suggestion, "use one of the values listed")
            }
            Self::DuplicateKey { .. } => "keep one of the two entries".into(),
            Self::MergeKey => "write the entries out in full".into(),
            Self::DuplicateDefinition { first, .. } => {
                format!("first defined at {first}; rename or remove one of them")
            }
            Self::UnknownPurpose { suggestion, .. } => {
                did_you_mean(suggestion, "declare it under `purposes:`")
            }
            Self::UnknownCategory { suggestion, .. } => did_you_mean(
                suggestion,
                "declare it under `categories:` or use a built-in one",
            ),
            Self::UnknownParentCategory { .. } => {
                "declare the parent under `categories:` first, or extend a built-in category".into()
            }
            Self::UnknownObject { suggestion, .. } => {
                did_you_mean(suggestion, "declare it under `objects:`")
            }
            Self::UnknownAction { suggestion, .. } => did_you_mean(
                suggestion,
                "use one of `keep`, `drop`, `null`, `mask`, `hash`, `generalise`, `constant`",
            ),
            Self::InvalidJsonPath { .. } => {
                "write a JSONPath such as `$.properties.email` or `$['odd name']`".into()
            }
            Self::UnstreamableJsonPath { .. } => {
                "use only `$`, `.name`, `['name']`, `[*]` and `.*`".into()
            }
            Self::UnsupportedPathShape { allowed, .. } => format!("write {allowed}"),
            Self::InvalidRecordsPath { .. } => {
                "use `$` (one record), `$[*]` (a bare array) or `$.key[*]` (an array under keys)"
                    .into()
            }
            Self::MixedPathShape { .. } => "use either `.name`/`.*` or `[*]` below it".into(),
            Self::CallerWithoutPurposes { .. } => {
                "list the purposes it may declare: `purposes: [name]`".into()
            }
            Self::KeyInClear => {
                "write `{ sha256: <hex of the key's SHA-256> }`, `{ env: VAR }` or `{ file: path }`"
                    .into()
            }
            Self::InvalidSha256 { .. } => {
                "write the hex SHA-256 of the key, e.g. the output of `printf %s KEY | sha256sum`"
                    .into()
            }
            Self::MissingSecret { source, .. } => {
                if *source == "file" {
                    "create the file with the key in it, or fix the path".into()
                } else {
                    "set the variable to the key before loading the policy".into()
                }
            }
            Self::PseudonymKeyAsHash => "write `{ env: VAR }` or `{ file: path }`".into(),
            Self::SpecialWithoutFlag { .. } => {
                "add `special: true` to keep it on purpose, or drop or transform it".into()
            }
            Self::ConflictingRules {
                first_action,
                first,
                ..
            } => {
                format!("the other rule (`{first_action}`) is at {first}; keep one of them")
            }
            Self::RuleSelector { .. } => "give exactly one of `path`, `paths` or `category`".into(),
            Self::InvalidActionParams { action, .. } => match action.as_str() {
                "mask" => "`mask` takes `first`, `last` and `with` (one character)".into(),
                "generalise" => {
                    "`generalise` takes one of `to: year`, `to: month`, `prefix: N`, `width: W`"
                        .into()
                }
                "constant" => "`constant` takes `value: <any JSON value>`".into(),
                "keep" => "`keep` takes only `special: true`".into(),
                _ => format!("`{action}` takes no parameter"),
            },
            Self::MissingPseudonymKey => {
                "add `pseudonym_key: { env: VAR }` (or `{ file: path }`) to the policy".into()
            }
            Self::InvalidPathTemplate { .. } => {
                "write a path such as `/crm/v3/objects/contacts/{id}`".into()
            }
            Self::UnknownSubjectParam { suggestion, .. } => {
                did_you_mean(suggestion, "name a `{param}` segment of the route's path")
            }
            Self::MissingSubject { .. } => {
                "add `subject_param: <param>` to the route or `subject: $.id` to its object".into()
            }
            Self::ListWithoutSubject { .. } => {
                "add `subject: <path of the record's id>` to the object".into()
            }
            Self::InvalidEnvelope { .. } => {
                "list paths of the body around the records, such as `$.paging`".into()
            }
            Self::InvalidMethod { suggestion, .. } => {
                did_you_mean(suggestion, "use an upper-case method such as `GET`")
            }
            Self::MethodSelector { .. } => {
                "give exactly one of `method: GET` or `methods: [GET, POST]`".into()
            }
            Self::DuplicateRoute { first, .. } => {
                format!("the other route is at {first}; remove one or change its methods")
            }
            Self::PassthroughShadowsRoute { .. } => {
                "remove the passthrough entry: the route carries personal data".into()
            }
        }
    }

    /// The short note printed after the caret, if any.
    fn label(&self) -> Option<String> {
        match self {
            Self::UnknownPurpose { .. } => Some("not among the declared purposes".into()),
            Self::DuplicateDefinition { .. } => Some("defined again here".into()),
            Self::KeyInClear => Some("a key must never be written in a policy".into()),
            _ => None,
        }
    }
}

impl PolicyError {
    /// Renders in the human format: `error[code]: message`, the location, the source line with
    /// a caret underline and the help line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "error[{}]: {}", self.kind.code(), self.kind.message());
        if self.line == 0 {
            let _ = writeln!(out, "  --> {}", self.file.display());
            let _ = writeln!(out, "   = help: {}", self.kind.help());
            return out;
        }
        let _ = writeln!(
            out,
            "  --> {}:{}:{}",
            self.file.display(),
            self.line,
            self.col
        );
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        let line = self.source_line.trim_end_matches(['\r', '\n']);
        let _ = writeln!(out, "{num} | {line}");
        // The caret sits under the column (characters) and spans the bytes of `span`, counted in
        // characters of the line so multi-byte text lines up.
        let start = self.col.saturating_sub(1);
        let width = underline_width(line, start, self.span.len());
        let indent: String = line
            .chars()
            .take(start)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let carets = "^".repeat(width);
        match self.kind.label() {
            Some(label) => {
                let _ = writeln!(out, "{pad} | {indent}{carets} {label}");
            }
            None => {
                let _ = writeln!(out, "{pad} | {indent}{carets}");
            }
        }
        let _ = writeln!(out, "{pad} = help: {}", self.kind.help());
        out
    }

    /// The error as a JSON object (for `--error-format json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.kind.code(),
            "message": self.kind.message(),
            "file": self.file.display().to_string(),
            "line": self.line,
            "col": self.col,
            "span": [self.span.start, self.span.end],
            "help": self.kind.help(),
        })
    }
}

/// Width of the underline in characters: the span's bytes counted as characters of the line,
/// at least one, at most up to the end of the line.
fn underline_width(line: &str, start_char: usize, span_bytes: usize) -> usize {
    let rest: String = line.chars().skip(start_char).collect();
    let mut bytes = 0;
    let mut chars = 0;
    for c in rest.chars() {
        if bytes >= span_bytes {
            break;
        }
        bytes += c.len_utf8();
        chars += 1;
    }
    chars.max(1)
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for PolicyError {}

/// All the errors of a policy set, sorted by file, line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors {
    /// The errors; never empty when returned by the loader.
    pub errors: Vec<PolicyError>,
}

impl PolicyErrors {
    /// Renders every error in the human format, separated by blank lines, with a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&e.render());
            out.push('\n');
        }
        let n = self.errors.len();
        let _ = writeln!(
            out,
            "error: the policy is invalid ({n} error{})",
            if n == 1 { "" } else { "s" }
        );
        out
    }

    /// Renders every error as one JSON document: `{"errors": [...]}`.
    pub fn render_json(&self) -> String {
        let list: Vec<_> = self.errors.iter().map(PolicyError::to_json).collect();
        serde_json::json!({ "errors": list }).to_string()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for PolicyErrors {}

/// Levenshtein distance between two strings, in characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        if let Some(c0) = cur.first_mut() {
            *c0 = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            if let Some(slot) = cur.get_mut(j + 1) {
                *slot = sub.min(del).min(ins);
            }
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev.last().copied().unwrap_or(0)
}

/// The closest candidate to `name`, if close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, c)| c.to_string())
}

/// Display form of a location, used in "first defined at" notes.
pub(crate) fn at(file: &Path, line: usize, col: usize) -> String {
    format!("{}:{line}:{col}", file.display())
}
