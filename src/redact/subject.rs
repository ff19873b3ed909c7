//! When the id a request path names and the id a record holds name the same subject.
//!
//! CRMs write one id more than one way. Salesforce takes the case-sensitive 15-character form
//! of an id (the one its user interface shows) and answers with the 18-character form: the same
//! characters followed by a checksum of their case. Dynamics (OData) takes a GUID key in either
//! case and answers in lower case. Nothing else is taken as the same: a CRM that answers a
//! lookup with a merged or aliased record is answering for another subject.

/// True when a path naming `path` may be answered with a record whose id is `record`.
pub fn same_subject(path: &str, record: &str) -> bool {
    path == record || salesforce_long_form(path, record) || same_guid(path, record)
}

/// `record` is the 18-character form of the 15-character Salesforce id `path`.
fn salesforce_long_form(path: &str, record: &str) -> bool {
    let (Ok(short), Some((head, suffix))) = (
        <&[u8; 15]>::try_from(path.as_bytes()),
        record.as_bytes().split_first_chunk::<15>(),
    ) else {
        return false;
    };
    short.iter().all(u8::is_ascii_alphanumeric)
        && head == short
        && suffix == salesforce_checksum(short).as_slice()
}

/// The three characters Salesforce appends to a 15-character id: for each group of five, the
/// bits of which characters are upper-case letters, as one character of `A`-`Z`, `0`-`5`.
fn salesforce_checksum(id: &[u8; 15]) -> [u8; 3] {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let mut out = [0u8; 3];
    for (slot, group) in out.iter_mut().zip(id.chunks_exact(5)) {
        let bits = group
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        *slot = ALPHABET[bits & 31];
    }
    out
}

/// Both are GUIDs (`8-4-4-4-12` hexadecimal digits) and differ in case only.
fn same_guid(path: &str, record: &str) -> bool {
    is_guid(path) && is_guid(record) && path.eq_ignore_ascii_case(record)
}

fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salesforce_ids_are_the_same_in_both_forms() {
        // Groups `0035g`, `00000`, `ABCDE`: no capitals, none, all five.
        assert!(same_subject("0035g00000ABCDE", "0035g00000ABCDEAA5"));
        // Ids as the Salesforce documentation shows them.
        assert!(same_subject("001D000000IRt53", "001D000000IRt53IAD"));
        assert!(same_subject("0015000000GhTqE", "0015000000GhTqEAAV"));
        // The long form in the path is compared as it is.
        assert!(same_subject("0035g00000ABCDEAA5", "0035g00000ABCDEAA5"));
        assert!(!same_subject("0035g00000ABCDEAA5", "0035g00000ABCDE"));
    }

    #[test]
    fn other_ids_of_salesforce_shape_are_other_subjects() {
        // Another checksum, another case, another record.
        assert!(!same_subject("0035g00000ABCDE", "0035g00000ABCDEAAA"));
        assert!(!same_subject("0035g00000abcde", "0035g00000ABCDEAA5"));
        assert!(!same_subject("0035g00000ABCDF", "0035g00000ABCDEAA5"));
        // The record's id must be exactly 18 characters, the path's exactly 15 alphanumerics.
        assert!(!same_subject("0035g00000ABCDE", "0035g00000ABCDEAA5x"));
        assert!(!same_subject("0035g00000ABCD", "0035g00000ABCDAA5"));
        assert!(!same_subject("0035g0000-ABCDE", "0035g0000-ABCDEAA5"));
        // Ids of other CRMs stay exact.
        assert!(!same_subject("100000000000000", "1000000000000000"));
        assert!(same_subject("1001", "1001"));
        assert!(!same_subject("1001", "01001"));
    }

    #[test]
    fn guids_differ_in_case_only() {
        let lower = "7d577253-3ef0-4a0a-bb7f-8335c2596e70";
        let upper = "7D577253-3EF0-4A0A-BB7F-8335C2596E70";
        assert!(same_subject(upper, lower));
        assert!(same_subject(lower, upper));
        assert!(!same_subject(upper, "7d577253-3ef0-4a0a-bb7f-8335c2596e71"));
        // Not GUIDs: compared exactly.
        assert!(!same_subject("Ada", "ada"));
        assert!(!same_subject(
            "{7D577253-3EF0-4A0A-BB7F-8335C2596E70}",
            lower
        ));
        assert!(!same_subject("7D5772533EF04A0ABB7F8335C2596E70", lower));
    }
}
