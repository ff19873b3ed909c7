//! The policy as written: serde types mirroring the YAML exactly.
//!
//! Unknown keys are errors (`deny_unknown_fields`); everything a diagnostic may point at is a
//! [`Spanned`] value. No flatten and no untagged enums here: `Spanned` loses its location
//! inside them. Nothing in this module checks meaning: that is `check.rs` and `compile.rs`.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
pub use serde_saphyr::Spanned;

/// A mapping whose keys keep their locations and whose entries keep their order.
#[derive(Debug, Clone)]
pub struct RawMap<V>(pub Vec<(Spanned<String>, V)>);

impl<V> Default for RawMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for RawMap<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = RawMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = m.next_entry()? {
                    entries.push((k, v));
                }
                Ok(RawMap(entries))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawMap(Vec::new()))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// One policy file: every section is optional, sections of all files are merged.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyFile {
    /// `purposes:`, by name.
    #[serde(default)]
    pub purposes: RawMap<RawPurpose>,
    /// `categories:` declared on top of the built-in ones.
    #[serde(default)]
    pub categories: RawMap<RawCategory>,
    /// `callers:`, by name.
    #[serde(default)]
    pub callers: RawMap<RawCaller>,
    /// `pseudonym_key:`, the key of `hash`.
    pub pseudonym_key: Option<Spanned<RawSecret>>,
    /// `objects:`, by name.
    #[serde(default)]
    pub objects: RawMap<RawObject>,
    /// `routes:`, in order.
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    /// `passthrough:`, in order.
    #[serde(default)]
    pub passthrough: Vec<Spanned<RawPassthrough>>,
}

/// A purpose.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPurpose {
    /// GDPR art. 6 basis.
    pub basis: Spanned<RawBasis>,
    /// Free text.
    pub description: Option<String>,
    /// CCPA/CPRA sale or sharing.
    pub sale_or_sharing: Option<bool>,
}

/// A lawful basis as written.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RawBasis {
    /// `consent`
    Consent,
    /// `contract`
    Contract,
    /// `legitimate_interest`
    LegitimateInterest,
    /// `legal_obligation`
    LegalObligation,
    /// `vital_interest`
    VitalInterest,
    /// `public_task`
    PublicTask,
}

/// A declared category (`user.loyalty.tier: {}`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCategory {
    /// Free text.
    pub description: Option<String>,
}

/// A caller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCaller {
    /// Where its API key (or the key's hash) is.
    pub api_key: Spanned<RawSecret>,
    /// The purposes it may declare.
    pub purposes: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A secret: `{ sha256: hex }`, `{ env: VAR }` or `{ file: path }`. A plain string is read as
/// [`RawSecret::Clear`] so that the checker can refuse it with a clear message.
#[derive(Debug, Clone)]
pub enum RawSecret {
    /// A key written in clear (always an error).
    Clear,
    /// `sha256: <hex>`.
    Sha256(Spanned<String>),
    /// `env: VAR`.
    Env(Spanned<String>),
    /// `file: path`.
    File(Spanned<String>),
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`{ sha256: ... }`, `{ env: ... }` or `{ file: ... }`")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(RawSecret::Clear)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RawSecret::Clear)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RawSecret::Clear)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                const KEYS: &[&str] = &["sha256", "env", "file"];
                let mut found: Option<RawSecret> = None;
                while let Some(key) = m.next_key::<String>()? {
                    let value: Spanned<String> = m.next_value()?;
                    let secret = match key.as_str() {
                        "sha256" => RawSecret::Sha256(value),
                        "env" => RawSecret::Env(value),
                        "file" => RawSecret::File(value),
                        other => return Err(de::Error::unknown_field(other, KEYS)),
                    };
                    if found.is_some() {
                        return Err(de::Error::custom(
                            "give only one of `sha256`, `env` or `file`",
                        ));
                    }
                    found = Some(secret);
                }
                found.ok_or_else(|| de::Error::custom("expected one of `sha256`, `env` or `file`"))
            }
        }
        d.deserialize_any(SecretVisitor)
    }
}

/// An object type of the CRM.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObject {
    /// JSONPath of the subject id inside a record.
    pub subject: Option<Spanned<String>>,
    /// JSONPath -> category.
    #[serde(default)]
    pub fields: RawMap<Spanned<String>>,
    /// Purpose -> rules.
    #[serde(default)]
    pub rules: RawMap<Option<Vec<Spanned<RawRule>>>>,
}

/// One rule: a selector, an action and the action's parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// One JSONPath.
    pub path: Option<Spanned<String>>,
    /// Several JSONPaths.
    pub paths: Option<Vec<Spanned<String>>>,
    /// A category.
    pub category: Option<Spanned<String>>,
    /// The action's name.
    pub action: Spanned<RawActionName>,
    /// `keep`: release a special category.
    pub special: Option<Spanned<bool>>,
    /// `mask`: characters kept at the start.
    pub first: Option<Spanned<u64>>,
    /// `mask`: characters kept at the end.
    pub last: Option<Spanned<u64>>,
    /// `mask`: the replacement character.
    pub with: Option<Spanned<String>>,
    /// `generalise`: `year` or `month`.
    pub to: Option<Spanned<String>>,
    /// `generalise`: characters kept.
    pub prefix: Option<Spanned<u64>>,
    /// `generalise`: range width.
    pub width: Option<Spanned<u64>>,
    /// `constant`: the value.
    pub value: Option<Spanned<serde_json::Value>>,
}

/// An action's name. The action `null` is written as a YAML null, so a null reads as `"null"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawActionName(pub String);

impl<'de> Deserialize<'de> for RawActionName {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = RawActionName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an action name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawActionName(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawActionName("null".into()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawActionName("null".into()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawActionName(v.to_string()))
            }
        }
        d.deserialize_any(NameVisitor)
    }
}

/// What to do without a lawful basis, as written.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RawWithoutBasis {
    /// `omit`
    Omit,
    /// `refuse`
    Refuse,
    /// `non_personal`
    NonPersonal,
}

/// A protected route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Its name, for decision lines.
    pub name: Spanned<String>,
    /// One method.
    pub method: Option<Spanned<String>>,
    /// Several methods.
    pub methods: Option<Vec<Spanned<String>>>,
    /// The path template.
    pub path: Spanned<String>,
    /// The object its records are.
    pub object: Spanned<String>,
    /// Where the records are.
    pub records: Spanned<String>,
    /// Parts of the body around the records that are kept.
    #[serde(default)]
    pub envelope: Vec<Spanned<String>>,
    /// The path parameter holding the subject id.
    pub subject_param: Option<Spanned<String>>,
    /// What happens without a lawful basis.
    pub without_basis: Option<Spanned<RawWithoutBasis>>,
}

/// A passthrough entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassthrough {
    /// One method.
    pub method: Option<Spanned<String>>,
    /// Several methods.
    pub methods: Option<Vec<Spanned<String>>>,
    /// The path template.
    pub path: Spanned<String>,
}
