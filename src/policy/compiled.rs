//! The compiled policy: the only form of a policy that runtime code ever sees.
//!
//! Everything here is resolved ahead of time: purposes are interned as indices, JSONPaths are
//! trees of [`ValuePlan`]s, path templates are segment lists, secrets are loaded. Nothing in this
//! module parses text at request time, and nothing here depends on tokio, hyper or a store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Index of a purpose in [`CompiledPolicy::purposes`].
pub type PurposeId = u16;

/// A policy set compiled from a directory of YAML files.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// SHA-256 (hex) of the sources, for audit and decision lines.
    pub revision: String,
    /// Purposes, indexed by [`PurposeId`].
    pub purposes: Vec<Purpose>,
    /// Callers, each identified by the hash of its API key.
    pub callers: Vec<Caller>,
    /// Protected routes, most specific first: the first match wins.
    pub routes: Vec<Route>,
    /// Routes served without examination: they carry no personal data.
    pub passthrough: Vec<Passthrough>,
}

/// A purpose of processing and its lawful basis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purpose {
    pub name: Arc<str>,
    pub basis: LawfulBasis,
    /// A CCPA/CPRA "sale or sharing" purpose: it stops when the subject opted out.
    pub sale_or_sharing: bool,
}

/// GDPR art. 6 lawful bases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LawfulBasis {
    Consent,
    Contract,
    LegitimateInterest,
    LegalObligation,
    VitalInterest,
    PublicTask,
}

impl LawfulBasis {
    /// The name used in policies and decision lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consent => "consent",
            Self::Contract => "contract",
            Self::LegitimateInterest => "legitimate_interest",
            Self::LegalObligation => "legal_obligation",
            Self::VitalInterest => "vital_interest",
            Self::PublicTask => "public_task",
        }
    }
}

/// A calling application and the purposes it may declare.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    /// SHA-256 of the API key; compared in constant time.
    pub key_sha256: [u8; 32],
    /// Purposes this caller may declare (purpose limitation).
    pub purposes: Vec<PurposeId>,
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal the (normalised) segment byte for byte.
    Literal(Box<str>),
    /// `{name}`: any non-empty segment, captured.
    Param(Box<str>),
    /// `prefix{name}suffix`, as in OData keys (`contacts({id})`): a segment that starts with
    /// `prefix` and ends with `suffix`, the non-empty text between them captured.
    Affixed {
        prefix: Box<str>,
        name: Box<str>,
        suffix: Box<str>,
    },
}

/// A path template such as `/crm/v3/objects/contacts/{id}`, split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub source: Box<str>,
    pub segments: Vec<Segment>,
}

/// A route that carries no personal data and is forwarded as is.
#[derive(Debug, Clone)]
pub struct Passthrough {
    /// Methods allowed on it (upper case); never empty.
    pub methods: Vec<http::Method>,
    pub path: PathTemplate,
}

/// A protected route of the CRM API.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    /// Methods this route covers; `HEAD` is served as `GET` without a body.
    pub methods: Vec<http::Method>,
    pub path: PathTemplate,
    /// Where the records are in the body.
    pub records: RecordsAt,
    /// Where each record's subject id is.
    pub subject: SubjectAt,
    /// What happens to a record whose subject has no lawful basis for the purpose.
    pub without_basis: WithoutBasis,
    /// One entry per purpose, indexed by [`PurposeId`]; `None`: the purpose may not use this route.
    pub views: Vec<Option<Arc<View>>>,
}

/// Where the records of a response body are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsAt {
    /// `$`: the body is one record.
    Body,
    /// `$.a.b[*]` (or `$[*]` when the key path is empty): each element of the array at this key
    /// path is one record.
    List(Vec<Box<str>>),
}

/// Where a record's subject id is. Ids are compared as text: the number `1000` and the string
/// `"1000"` name the same subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectAt {
    /// A path parameter, by its index among the template's parameters.
    Param(usize),
    /// A key path inside the record (`$.id`, `$.properties.hs_object_id`).
    Field(Vec<Box<str>>),
    /// Both: the record's id must equal the path parameter, else the response is refused.
    ParamAndField(usize, Vec<Box<str>>),
}

/// What happens to a record whose subject has no lawful basis for the purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutBasis {
    /// Leave the record out of the list (on a single-record route: refuse).
    Omit,
    /// Refuse the whole response with 403 (aborted if output already started).
    Refuse,
    /// Keep the record with only the fields whose category is non-personal.
    NonPersonal,
}

/// What one purpose sees of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Applied to each record whose subject has a lawful basis.
    pub record: ValuePlan,
    /// Applied to each record without a lawful basis under [`WithoutBasis::NonPersonal`].
    pub non_personal: ValuePlan,
    /// Applied to the body around the records (paging, totals); the records key itself is
    /// handled by the engine. Under [`RecordsAt::Body`] this is unused.
    pub envelope: ObjectPlan,
}

/// What to do with one JSON value. Anything a plan does not keep is dropped.
#[derive(Debug, Clone, PartialEq)]
pub enum ValuePlan {
    /// Remove the member (or, inside an array, the element).
    Drop,
    /// Copy the value as it is, whatever its type.
    Keep,
    /// Copy a string, number, boolean or null (or an array holding only those) as it is; a
    /// value holding an object becomes `null`. What `keep` means on a declared field: the
    /// field's category describes a value, not a structure whose members no policy declares.
    KeepScalar,
    /// Replace a value by a transformed one.
    Transform(Transform),
    /// Descend into an object; a value of another type is dropped.
    Object(ObjectPlan),
    /// Apply the plan to each element of an array; a value of another type is dropped.
    Array(Box<ValuePlan>),
}

/// A plan for the members of an object.
#[derive(Debug, Clone, Default)]
pub struct ObjectPlan {
    /// Set once per plan built by [`ObjectPlan::new`] (a clone keeps it), never twice: what a
    /// scanner learns about objects of one plan is kept under this (0: the empty plan).
    id: u64,
    /// Plans per member name (unescaped), sorted by name, each name once.
    fields: Vec<(Box<str>, ValuePlan)>,
    /// The head of each name of `fields`, at the same index.
    heads: Vec<NameHead>,
    /// An open-addressing table of the fields by the hash of their heads: indexes into
    /// `fields`, [`NO_FIELD`] for an empty slot; its length is a power of two, at least twice
    /// the number of fields. Empty when the fields are too many to index (binary search).
    slots: Vec<u16>,
    /// Each name of `fields` as JSON writes it without escapes, at the same index.
    quoted: Vec<QuotedName>,
    /// Plan for members not named in `fields` (`$.a.*`); `None` drops them.
    others: Option<Box<ValuePlan>>,
}

impl PartialEq for ObjectPlan {
    /// Plans are equal when they say the same of every member, whatever their identities.
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields && self.others == other.others
    }
}

/// A member name as JSON writes it, quotes included, when the name needs no escape: a
/// member written that way is known by comparing bytes, without reading it as a string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuotedName {
    /// The quoted name; empty when the name holds a byte JSON escapes (it is then never
    /// written this way).
    bytes: Box<[u8]>,
    /// The first 16 bytes of `bytes` (zero-padded, little-endian) and the mask of those that
    /// count: a name of up to 14 bytes is compared in one step.
    head: u128,
    mask: u128,
}

impl QuotedName {
    /// `name` (unescaped) quoted, or the empty quoted name if `name` holds a byte JSON escapes.
    pub fn new(name: &str) -> Self {
        if name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            return Self::default();
        }
        let mut bytes = Vec::with_capacity(name.len() + 2);
        bytes.push(b'"');
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(b'"');
        let mut first = [0u8; 16];
        let counted = bytes.len().min(16);
        if let (Some(dst), Some(src)) = (first.get_mut(..counted), bytes.get(..counted)) {
            dst.copy_from_slice(src);
        }
        let mask = if counted == 16 {
            u128::MAX
        } else {
            (1u128 << (counted * 8)) - 1
        };
        Self {
            bytes: bytes.into_boxed_slice(),
            head: u128::from_le_bytes(first),
            mask,
        }
    }

    /// True for the empty quoted name, of a name that needs escapes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// True if this is the quoted form of `name`.
    pub fn quotes(&self, name: &[u8]) -> bool {
        self.bytes.len() == name.len() + 2 && self.bytes.get(1..=name.len()) == Some(name)
    }

    /// The length of the quoted name if `input` starts with it.
    #[inline(always)]
    pub fn at(&self, input: &[u8]) -> Option<usize> {
        let len = self.bytes.len();
        let same = match input.first_chunk::<16>() {
            Some(first) if len <= 16 => u128::from_le_bytes(*first) & self.mask == self.head,
            _ => input.starts_with(&self.bytes),
        };
        (same && len > 0).then_some(len)
    }
}

/// The length of a member name and its first eight bytes (zero-padded, little-endian): most
/// names differ there, so a lookup compares two words before it compares any bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameHead {
    len: usize,
    word: u64,
}

impl NameHead {
    /// The head of an unescaped name.
    #[inline]
    pub fn of(name: &[u8]) -> Self {
        let word = match name.first_chunk::<8>() {
            Some(first) => u64::from_le_bytes(*first),
            None => {
                let mut w = [0u8; 8];
                if let Some(dst) = w.get_mut(..name.len()) {
                    dst.copy_from_slice(name);
                }
                u64::from_le_bytes(w)
            }
        };
        Self {
            len: name.len(),
            word,
        }
    }

    /// The head of the `len`-byte name at the start of `bytes`, where at least eight bytes
    /// follow it in `bytes` when it is shorter (the closing quote, a colon, a value): one load.
    #[inline(always)]
    pub fn at(bytes: &[u8], len: usize) -> Self {
        match bytes.first_chunk::<8>() {
            Some(first) => {
                let word = u64::from_le_bytes(*first);
                let word = if len >= 8 {
                    word
                } else {
                    word & ((1u64 << (len * 8)) - 1)
                };
                Self { len, word }
            }
            None => Self::of(bytes.get(..len).unwrap_or_default()),
        }
    }

    /// Where the name's probe starts in a table of `mask + 1` slots.
    #[inline(always)]
    fn slot(self, mask: usize) -> usize {
        let mixed =
            (self.word ^ (self.len as u64).rotate_right(8)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 40) as usize & mask
    }

    /// A cheap fingerprint of the whole name: the head and the last byte.
    #[inline(always)]
    pub fn tag(self, last: u8) -> u64 {
        self.word ^ ((self.len as u64) << 48) ^ (u64::from(last) << 40).rotate_left(7)
    }
}

/// An empty slot of an object plan's table.
const NO_FIELD: u16 = u16::MAX;

/// What an object plan says of a member.
#[derive(Debug, Clone, Copy)]
pub enum Member<'p> {
    /// A name of the plan's fields: its index among them, and its plan.
    Field(usize, &'p ValuePlan),
    /// Any other name, under the plan's wildcard.
    Other(&'p ValuePlan),
    /// Any other name, without a wildcard: dropped.
    Unplanned,
}

impl<'p> Member<'p> {
    /// The member's plan; `None`: dropped.
    pub fn plan(self) -> Option<&'p ValuePlan> {
        match self {
            Member::Field(_, plan) | Member::Other(plan) => Some(plan),
            Member::Unplanned => None,
        }
    }
}

impl ObjectPlan {
    /// A plan with plans per member name (sorted here; of a name given twice, the first
    /// counts) and one for the other members (`None`: dropped).
    pub fn new(mut fields: Vec<(Box<str>, ValuePlan)>, others: Option<Box<ValuePlan>>) -> Self {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields.dedup_by(|later, first| later.0 == first.0);
        let heads: Vec<NameHead> = fields
            .iter()
            .map(|(k, _)| NameHead::of(k.as_bytes()))
            .collect();
        let mut slots = Vec::new();
        if heads.len() < usize::from(NO_FIELD) {
            slots = vec![NO_FIELD; (heads.len() * 2).next_power_of_two().max(4)];
            let mask = slots.len() - 1;
            for (index, head) in (0u16..).zip(&heads) {
                let mut at = head.slot(mask);
                // INVARIANT: at most half the slots are taken, so a free one is found.
                while slots.get(at).is_some_and(|&s| s != NO_FIELD) {
                    at = (at + 1) & mask;
                }
                if let Some(slot) = slots.get_mut(at) {
                    *slot = index;
                }
            }
        }
        let quoted = fields.iter().map(|(k, _)| QuotedName::new(k)).collect();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            fields,
            heads,
            slots,
            quoted,
            others,
        }
    }

    /// Field `field` and the length of its quoted name, if `input` starts with that name
    /// written without escapes (on its opening quote): the member is then that field for
    /// sure, its name already read and valid.
    #[inline(always)]
    pub fn quoted_at(&self, field: usize, input: &[u8]) -> Option<(usize, Member<'_>)> {
        let len = self.quoted.get(field)?.at(input)?;
        let (_, plan) = self.fields.get(field)?;
        Some((len, Member::Field(field, plan)))
    }

    /// The plan's identity: equal for a plan and its clones, different for any two plans
    /// built apart.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Plans per member name, sorted by name.
    pub fn fields(&self) -> &[(Box<str>, ValuePlan)] {
        &self.fields
    }

    /// The plan for the other members; `None` drops them.
    pub fn others(&self) -> Option<&ValuePlan> {
        self.others.as_deref()
    }

    /// What the plan says of a name that is none of its fields.
    #[inline(always)]
    pub fn other_member(&self) -> Member<'_> {
        match self.others.as_deref() {
            Some(plan) => Member::Other(plan),
            None => Member::Unplanned,
        }
    }

    /// The plan for a member name (unescaped).
    pub fn member(&self, name: &str) -> Option<&ValuePlan> {
        self.member_bytes(name.as_bytes())
    }

    /// The plan for a member name given as its unescaped UTF-8 bytes.
    #[inline]
    pub fn member_bytes(&self, name: &[u8]) -> Option<&ValuePlan> {
        self.lookup(name, NameHead::of(name)).plan()
    }

    /// What the plan says of the member `name` (unescaped) whose head is `head`.
    #[inline(always)]
    pub fn lookup(&self, name: &[u8], head: NameHead) -> Member<'_> {
        let found = if self.slots.is_empty() {
            self.fields
                .binary_search_by(|(k, _)| k.as_bytes().cmp(name))
                .ok()
        } else {
            // Probe from the head's slot until the name or an empty slot.
            let mask = self.slots.len() - 1;
            let mut at = head.slot(mask);
            loop {
                let index = match self.slots.get(at) {
                    Some(&NO_FIELD) | None => break None,
                    Some(&index) => usize::from(index),
                };
                let same = self.heads.get(index) == Some(&head)
                    && (head.len <= 8
                        || self
                            .fields
                            .get(index)
                            .is_some_and(|(k, _)| k.as_bytes().get(8..) == name.get(8..)));
                if same {
                    break Some(index);
                }
                at = (at + 1) & mask;
            }
        };
        match found.and_then(|i| Some((i, &self.fields.get(i)?.1))) {
            Some((i, plan)) => Member::Field(i, plan),
            None => self.other_member(),
        }
    }
}

/// A value transformation. Applied to a type it does not fit (an object to mask, say), the
/// value becomes `null`: never the original.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Replace by `null`.
    Null,
    /// Replace by a constant JSON value, held serialised.
    Constant(Box<str>),
    /// Keep the first and last characters, replace the others with `with`. Numbers are masked
    /// as their text; a string no longer than `first + last` is kept whole.
    Mask {
        first: usize,
        last: usize,
        with: char,
    },
    /// Keyed pseudonym: hex of HMAC-SHA-256(key, text of the value).
    Hash { key: Arc<[u8]> },
    /// `YYYY-MM-DD...` to `YYYY`.
    DateToYear,
    /// `YYYY-MM-DD...` to `YYYY-MM`.
    DateToMonth,
    /// A string to its first `n` characters.
    Prefix(usize),
    /// A number to the range `"lo-hi"` of width `width` that holds it.
    Range { width: u64 },
}
