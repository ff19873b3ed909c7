//! Writes one parsed record (or envelope member) through a [`ValuePlan`], and reads what the
//! engine needs to know about a record before that: that it has no duplicate keys, and its
//! subject id.
//!
//! The parsed value is only ever read: output is written by walking it with the plan, so a
//! member that the plan does not keep is never copied.

use sonic_rs::{JsonContainerTrait, JsonType, JsonValueTrait, Value};

use crate::policy::compiled::{ObjectPlan, ValuePlan};

use super::transform;

/// Writes `value` through `plan` to `out`. Returns false, writing nothing, when the plan drops
/// the value (the caller then leaves out the member or element, and its separator).
pub fn write_value(plan: &ValuePlan, value: &Value, out: &mut Vec<u8>) -> bool {
    match plan {
        ValuePlan::Drop => false,
        ValuePlan::Keep => write_json(value, out),
        ValuePlan::Transform(t) => {
            transform::write(t, value, out);
            true
        }
        ValuePlan::Object(members) => match value.as_object() {
            Some(_) => {
                write_object(members, value, out);
                true
            }
            // A value of another shape than the plan expects carries unknown data: dropped.
            None => false,
        },
        ValuePlan::Array(items) => match value.as_array() {
            Some(array) => {
                out.push(b'[');
                let mut first = true;
                for item in array.iter() {
                    let mark = out.len();
                    if !first {
                        out.push(b',');
                    }
                    if write_value(items, item, out) {
                        first = false;
                    } else {
                        out.truncate(mark);
                    }
                }
                out.push(b']');
                true
            }
            None => false,
        },
    }
}

/// Writes the members of the object `value` that `plan` keeps, as an object.
pub fn write_object(plan: &ObjectPlan, value: &Value, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    if let Some(object) = value.as_object() {
        for (key, member) in object.iter() {
            let Some(member_plan) = plan.member(key) else {
                continue;
            };
            if matches!(member_plan, ValuePlan::Drop) {
                continue;
            }
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            write_key(key, out);
            if write_value(member_plan, member, out) {
                first = false;
            } else {
                out.truncate(mark);
            }
        }
    }
    out.push(b'}');
}

/// Writes `"key":`, escaped.
pub fn write_key(key: &str, out: &mut Vec<u8>) {
    if sonic_rs::to_writer(&mut *out, key).is_err() {
        // INVARIANT: serialising a &str does not fail; an empty key is harmless if it did.
        out.extend_from_slice(b"\"\"");
    }
    out.push(b':');
}

fn write_json(value: &Value, out: &mut Vec<u8>) -> bool {
    let mark = out.len();
    if sonic_rs::to_writer(&mut *out, value).is_err() {
        out.truncate(mark);
        return false;
    }
    true
}

/// Why a record cannot be examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// An object holds the same key twice: which one the CRM's clients would read is unknown.
    DuplicateKey,
    /// Nested deeper than the limit.
    TooDeep,
}

/// Checks the whole value: no object holds a key twice (compared unescaped), and nesting stays
/// within `max_depth`.
pub fn check(value: &Value, max_depth: usize) -> Result<(), Unreadable> {
    check_at(value, 0, max_depth)
}

fn check_at(value: &Value, depth: usize, max_depth: usize) -> Result<(), Unreadable> {
    match value.get_type() {
        JsonType::Object => {
            if depth >= max_depth {
                return Err(Unreadable::TooDeep);
            }
            let Some(object) = value.as_object() else {
                return Ok(());
            };
            if object.len() <= 16 {
                let keys: Vec<&str> = object.iter().map(|(k, _)| k).collect();
                for (i, k) in keys.iter().enumerate() {
                    if keys.iter().skip(i + 1).any(|other| other == k) {
                        return Err(Unreadable::DuplicateKey);
                    }
                }
            } else {
                let mut seen = std::collections::HashSet::with_capacity(object.len());
                for (k, _) in object.iter() {
                    if !seen.insert(k) {
                        return Err(Unreadable::DuplicateKey);
                    }
                }
            }
            for (_, member) in object.iter() {
                check_at(member, depth + 1, max_depth)?;
            }
            Ok(())
        }
        JsonType::Array => {
            if depth >= max_depth {
                return Err(Unreadable::TooDeep);
            }
            if let Some(array) = value.as_array() {
                for item in array.iter() {
                    check_at(item, depth + 1, max_depth)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The subject id at `path` inside a record, as text: a string's contents, or an integer's
/// digits. Anything else (missing, empty, null, a fraction, an object) is no readable id.
pub fn subject_id(record: &Value, path: &[Box<str>]) -> Option<String> {
    let mut at = record;
    for key in path {
        at = at.as_object()?.get(&&**key)?;
    }
    match at.get_type() {
        JsonType::String => at.as_str().filter(|s| !s.is_empty()).map(str::to_owned),
        // Numbers keep their source text (arbitrary precision): an integer of any size is read
        // by its digits; fractions and exponents are no id.
        JsonType::Number => sonic_rs::to_string(at).ok().filter(|t| {
            let digits = t.strip_prefix('-').unwrap_or(t);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }),
        _ => None,
    }
}
