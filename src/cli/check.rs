//! `consentry check DIR`: compiles a policy directory and prints every error, or a summary.
//!
//! Exit codes: 0 the policy compiles, 3 it is invalid.

use std::path::Path;
use std::process::ExitCode;

use crate::policy;

/// Exit code of an invalid policy.
const INVALID_POLICY: u8 = 3;

/// Checks the policy in `dir`; `json` selects `--error-format json`.
pub fn run(dir: &Path, json: bool) -> ExitCode {
    match policy::load_dir(dir) {
        Ok(p) => {
            let summary = format!(
                "ok: {} routes, {} purposes, {} callers, revision {}",
                p.routes.len(),
                p.purposes.len(),
                p.callers.len(),
                p.revision
            );
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "routes": p.routes.len(),
                        "purposes": p.purposes.len(),
                        "callers": p.callers.len(),
                        "revision": p.revision,
                    })
                );
            } else {
                println!("{summary}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            if json {
                println!("{}", errors.render_json());
            } else {
                eprint!("{}", errors.render());
            }
            ExitCode::from(INVALID_POLICY)
        }
    }
}
