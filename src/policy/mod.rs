//! The policy language: sources -> checked model -> [`compiled::CompiledPolicy`].
//!
//! Runtime code only ever sees the compiled form. This module and its children never depend on
//! tokio, hyper or a consent store: compiling a policy is pure apart from reading the policy
//! files and the secrets they name.

pub mod check;
pub mod compile;
pub mod compiled;
pub mod diagnostic;
pub mod matcher;
pub mod raw;
pub mod source;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use compiled::CompiledPolicy;
pub use diagnostic::{PolicyError, PolicyErrorKind, PolicyErrors};

use check::Diagnostics;
use source::{SourceFile, file_error, find_policy_files, parse_file};

/// Reads every policy file under `dir` (`*.yaml`, recursively, not `*.test.yaml`) and compiles
/// them, or returns every error found.
pub fn load_dir(dir: &Path) -> Result<CompiledPolicy, PolicyErrors> {
    let paths = find_policy_files(dir).map_err(|e| PolicyErrors { errors: vec![*e] })?;
    if paths.is_empty() {
        return Err(PolicyErrors {
            errors: vec![file_error(dir, PolicyErrorKind::NoPolicyFiles)],
        });
    }
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    let mut rel = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                rel.push(path.strip_prefix(dir).unwrap_or(&path).to_path_buf());
                sources.push((path, text));
            }
            Err(e) => errors.push(file_error(
                &path,
                PolicyErrorKind::Read {
                    reason: e.to_string().to_lowercase(),
                },
            )),
        }
    }
    // The revision names files relative to the directory: it must not depend on where the
    // policy is checked out.
    let revision = revision(rel.iter().zip(sources.iter().map(|(_, t)| t.as_str())));
    compile_with(&sources, revision, errors)
}

/// Compiles in-memory sources (path for diagnostics, text). For tests and fuzzing.
pub fn compile_sources(sources: &[(PathBuf, String)]) -> Result<CompiledPolicy, PolicyErrors> {
    let revision = revision(sources.iter().map(|(p, t)| (p, t.as_str())));
    compile_with(sources, revision, Vec::new())
}

fn compile_with(
    sources: &[(PathBuf, String)],
    revision: String,
    errors: Vec<PolicyError>,
) -> Result<CompiledPolicy, PolicyErrors> {
    let mut diags = Diagnostics { errors };
    let mut sorted: Vec<&(PathBuf, String)> = sources.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let files: Vec<(SourceFile, Option<raw::RawPolicyFile>)> = sorted
        .into_iter()
        .map(|(path, text)| {
            let src = SourceFile::new(path.clone(), text);
            let raw = match parse_file(&src) {
                Ok(r) => Some(r),
                Err(e) => {
                    diags.push(*e);
                    None
                }
            };
            (src, raw)
        })
        .collect();
    compile::compile(&files, revision, diags).map_err(|errors| PolicyErrors { errors })
}

/// Hex SHA-256 over the (path, contents) pairs sorted by path, each length-prefixed.
fn revision<'a, P: AsRef<Path> + 'a>(files: impl Iterator<Item = (P, &'a str)>) -> String {
    let mut list: Vec<(String, &str)> = files
        .map(|(p, t)| (p.as_ref().to_string_lossy().replace('\\', "/"), t))
        .collect();
    list.sort();
    let mut h = Sha256::new();
    for (p, t) in list {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
        h.update((t.len() as u64).to_be_bytes());
        h.update(t.as_bytes());
    }
    hex::encode(h.finalize())
}
