//! Policy sources: finding the files of a policy directory and reading YAML with locations.
//!
//! This is the only place that knows the YAML library. It reads with duplicate keys and merge
//! keys as errors and with the parser's budgets on (alias bombs, depth). YAML errors become
//! [`PolicyError`]s with file, line and column like every other error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::{DuplicateKeyPolicy, Location, MergeKeyPolicy};

use super::diagnostic::{PolicyError, PolicyErrorKind, suggest};
use super::raw::RawPolicyFile;

/// One source file: its path (for diagnostics) and its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path shown in diagnostics.
    pub path: PathBuf,
    /// The whole text.
    pub text: Arc<str>,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// A source from its path and text.
    pub fn new(path: PathBuf, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            path,
            text: Arc::from(text),
            line_starts,
        }
    }

    /// The text of a 1-based line, without its line break; empty when out of range.
    pub fn line_text(&self, line: usize) -> &str {
        let Some(start) = line
            .checked_sub(1)
            .and_then(|i| self.line_starts.get(i))
            .copied()
        else {
            return "";
        };
        let end = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        self.text
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches(['\n', '\r'])
    }

    /// An error located at a YAML location of this file.
    pub fn error_at(&self, loc: &Location, kind: PolicyErrorKind) -> PolicyError {
        let line = usize::try_from(loc.line()).unwrap_or(0);
        let col = usize::try_from(loc.column()).unwrap_or(0);
        let span = loc.span();
        let start = span.byte_offset().unwrap_or(span.offset());
        let len = span.byte_len().unwrap_or(span.len());
        let start = usize::try_from(start).unwrap_or(0);
        let len = usize::try_from(len).unwrap_or(0);
        PolicyError {
            kind,
            file: self.path.clone(),
            line,
            col,
            span: start..start + len,
            source_line: Arc::from(self.line_text(line)),
        }
    }

    /// An error that concerns the whole file.
    pub fn error_file(&self, kind: PolicyErrorKind) -> PolicyError {
        file_error(&self.path, kind)
    }
}

/// An error about a file, with no line.
pub fn file_error(path: &Path, kind: PolicyErrorKind) -> PolicyError {
    PolicyError {
        kind,
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        span: 0..0,
        source_line: Arc::from(""),
    }
}

/// The policy files under `dir`: `*.yaml` at any depth, except `*.test.yaml`, sorted by path.
/// Returns the paths relative to `dir` too (for the revision).
pub fn find_policy_files(dir: &Path) -> Result<Vec<PathBuf>, Box<PolicyError>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            file_error(
                &d,
                PolicyErrorKind::Read {
                    reason: e.to_string().to_lowercase(),
                },
            )
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                file_error(
                    &d,
                    PolicyErrorKind::Read {
                        reason: e.to_string().to_lowercase(),
                    },
                )
            })?;
            let path = entry.path();
            let meta = std::fs::metadata(&path).map_err(|e| {
                file_error(
                    &path,
                    PolicyErrorKind::Read {
                        reason: e.to_string().to_lowercase(),
                    },
                )
            })?;
            if meta.is_dir() {
                stack.push(path);
            } else if is_policy_file(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.ends_with(".yaml") && !name.ends_with(".test.yaml")
}

/// Reads one file into the raw model, or the error that stops it.
pub fn parse_file(source: &SourceFile) -> Result<RawPolicyFile, Box<PolicyError>> {
    let options = serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::Error,
        merge_keys: MergeKeyPolicy::Error,
        with_snippet: false,
    };
    if source.text.trim().is_empty() {
        return Ok(RawPolicyFile::default());
    }
    serde_saphyr::from_str_with_options::<Option<RawPolicyFile>>(&source.text, options)
        .map(Option::unwrap_or_default)
        .map_err(|e| Box::new(yaml_error(source, &e)))
}

/// Turns a YAML library error into a located diagnostic with a message of ours.
fn yaml_error(source: &SourceFile, e: &serde_saphyr::Error) -> PolicyError {
    let text = e.without_snippet().to_string();
    let message = strip_location(&text).to_string();
    let kind = classify(&message);
    match e.location() {
        Some(loc) if loc.line() > 0 => source.error_at(&loc, kind),
        _ => source.error_file(kind),
    }
}

/// Removes the trailing ` at line N, column M` the library appends.
fn strip_location(text: &str) -> &str {
    let first = text.lines().next().unwrap_or("");
    match first.rfind(" at line ") {
        Some(i) => first.get(..i).unwrap_or(first),
        None => first,
    }
}

fn classify(message: &str) -> PolicyErrorKind {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or("").to_string();
        let expected = rest.split_once("expected ").map(|(_, e)| e).unwrap_or("");
        let candidates: Vec<&str> = expected
            .trim_start_matches("one of ")
            .split(',')
            .map(|s| s.trim().trim_matches('`'))
            .filter(|s| !s.is_empty())
            .collect();
        let suggestion = suggest(&key, candidates.iter().copied());
        return PolicyErrorKind::UnknownKey { key, suggestion };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let value = rest.split('`').next().unwrap_or("").to_string();
        let list = rest.split_once("expected ").map(|(_, e)| e).unwrap_or("");
        let candidates: Vec<&str> = list
            .trim_start_matches("one of ")
            .split(',')
            .map(|s| s.trim().trim_matches('`'))
            .filter(|s| !s.is_empty())
            .collect();
        let suggestion = suggest(&value, candidates.iter().copied());
        let expected = candidates
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return PolicyErrorKind::UnknownValue {
            value,
            expected,
            suggestion,
        };
    }
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest)
            .to_string();
        return PolicyErrorKind::DuplicateKey { key };
    }
    if message.to_lowercase().contains("merge") {
        return PolicyErrorKind::MergeKey;
    }
    // The library's hints name Rust types (`use Option<String>`): not for policy authors.
    let message = message.split("; use ").next().unwrap_or(message);
    let mut m = message.to_string();
    if let Some(c) = m.get(..1) {
        let lower = c.to_lowercase();
        m.replace_range(..1, &lower);
    }
    PolicyErrorKind::Yaml { message: m }
}
