//! Matching a normalised request path against the compiled routes.
//!
//! Routes are sorted most specific first at compile time, so the first match wins. Templates
//! compare decoded segments exactly: case, trailing slashes and extra segments all make a
//! different resource, which no template covers.

use super::compiled::{CompiledPolicy, PathTemplate, Route, Segment};

/// What a request path is, for the policy.
#[derive(Debug)]
pub enum Matched<'p, 'r> {
    /// A protected route, with its index in `routes` (the method may still be one the route
    /// does not cover).
    Route(usize, &'p Route, Vec<&'r str>),
    /// A passthrough entry with this method.
    Passthrough,
    /// Nothing covers it.
    None,
}

impl PathTemplate {
    /// Captures the parameters if `segments` match this template.
    pub fn matches<'r>(&self, segments: &'r [String]) -> Option<Vec<&'r str>> {
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (template, actual) in self.segments.iter().zip(segments) {
            match template {
                Segment::Literal(lit) if **lit == **actual => {}
                Segment::Param(_) if !actual.is_empty() => params.push(actual.as_str()),
                Segment::Affixed { prefix, suffix, .. } => {
                    let inner = actual
                        .strip_prefix(&**prefix)
                        .and_then(|rest| rest.strip_suffix(&**suffix))
                        .filter(|inner| !inner.is_empty())?;
                    params.push(inner);
                }
                _ => return None,
            }
        }
        Some(params)
    }
}

impl CompiledPolicy {
    /// The route or passthrough entry for a method and a normalised, decoded path.
    pub fn match_path<'p, 'r>(
        &'p self,
        method: &http::Method,
        segments: &'r [String],
    ) -> Matched<'p, 'r> {
        for (index, route) in self.routes.iter().enumerate() {
            if let Some(params) = route.path.matches(segments) {
                return Matched::Route(index, route, params);
            }
        }
        let method = if method == http::Method::HEAD {
            &http::Method::GET
        } else {
            method
        };
        if self
            .passthrough
            .iter()
            .any(|p| p.methods.contains(method) && p.path.matches(segments).is_some())
        {
            return Matched::Passthrough;
        }
        Matched::None
    }

    /// The id of a purpose by name.
    pub fn purpose_id(&self, name: &str) -> Option<super::compiled::PurposeId> {
        self.purposes
            .iter()
            .position(|p| *p.name == *name)
            .and_then(|i| u16::try_from(i).ok())
    }
}
