//! The pod spec as a review reads it: only the fields extraction and placement look at, read
//! straight out of the request body while it is decoded.
//!
//! On a review's hot path the whole spec as a JSON tree (probes, resources, volumes, ...) cost
//! more than the rest of the review, and reading it twice (once to find its end, once to read it)
//! was most of what was left. [`SpecView`] is a serde seed: the decoder hands it the spec once,
//! it keeps what [`super::PodSpec`] and [`crate::placement`] read, as written, and skips the rest
//! without building it.
//!
//! It never refuses a shape: a field that is not the object or list the view expects is kept
//! whole, and a repeated key replaces the first (as in a JSON value), so extraction reports from
//! the view exactly what it would from the whole spec
//! (`admission::tests::extractors_read_the_same_from_the_spec_they_are_given`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The non-string scalars of a visitor that keeps any JSON value as `serde_json::Value` reads it,
/// each wrapped by `$wrap` into the visitor's `$out`.
macro_rules! non_strings {
    ($out:ty, $wrap:expr) => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<$out, E> {
            Ok($wrap(Value::Null))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<$out, E> {
            Ok($wrap(Value::Bool(v)))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$out, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$out, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<$out, E> {
            Ok($wrap(Value::from(v)))
        }
    };
}

/// The scalar half of a visitor that keeps any JSON value, as `serde_json::Value` reads it.
macro_rules! scalars {
    () => {
        non_strings!(Value, std::convert::identity);
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
    };
}

/// What to keep of a JSON value.
#[derive(Clone, Copy)]
enum Keep {
    /// All of it.
    Whole,
    /// Of an object, these fields (the rest is skipped). Anything else is kept whole.
    Fields(&'static [(&'static str, Keep)]),
    /// Of a list, each element so. Anything else is kept whole.
    Each(&'static Keep),
    /// Of a list of env entries, the name and value of those named so, and any entry
    /// [`super::EnvEntry`] would refuse. Anything else is kept whole.
    Named(&'static str),
}

/// What [`super::Container`] reads. Of its env, only `TEKTON_PLATFORM_COMMANDS` is ever read:
/// the other entries (often a dozen per container) are dropped while decoding.
const CONTAINER: Keep = Keep::Fields(&[
    ("name", Keep::Whole),
    ("image", Keep::Whole),
    ("env", Keep::Named(super::PLATFORM_COMMANDS)),
    ("command", Keep::Whole),
    ("args", Keep::Whole),
]);

/// What [`super::PodSpec`] reads, and `nodeName`, `nodeSelector` and `affinity`, which placement
/// mode reads.
const POD_SPEC: Keep = Keep::Fields(&[
    ("containers", Keep::Each(&CONTAINER)),
    ("initContainers", Keep::Each(&CONTAINER)),
    ("ephemeralContainers", Keep::Each(&CONTAINER)),
    ("nodeSelector", Keep::Whole),
    ("affinity", Keep::Whole),
    ("tolerations", Keep::Whole),
    ("imagePullSecrets", Keep::Whole),
    ("serviceAccountName", Keep::Whole),
    ("nodeName", Keep::Whole),
]);

/// Reads an object's `spec` whose pod spec sits at `path` below it (`[]` for a Pod,
/// `["template", "spec"]` for a Deployment), keeping only that path and the pod spec's fields.
#[derive(Clone, Copy)]
pub(crate) struct SpecView<'a> {
    pub path: &'a [&'a str],
}

impl SpecView<'_> {
    /// The view of a spec given as JSON text (a spec kept whole while decoding).
    pub(crate) fn of_text(self, spec: &str) -> serde_json::Result<Value> {
        let mut from = serde_json::Deserializer::from_str(spec);
        let value = self.deserialize(&mut from)?;
        from.end()?;
        Ok(value)
    }
}

impl<'de> DeserializeSeed<'de> for SpecView<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, from: D) -> Result<Value, D::Error> {
        match self.path.split_first() {
            None => Trim(POD_SPEC).deserialize(from),
            Some((key, rest)) => from.deserialize_any(Along { key, rest }),
        }
    }
}

/// One step of a [`SpecView`]'s path: of an object, only `key`; anything else whole.
struct Along<'a> {
    key: &'a str,
    rest: &'a [&'a str],
}

impl<'de> Visitor<'de> for Along<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(found) = map.next_key_seed(Field::One(self.key))? {
            match found {
                Some(_) => {
                    let value = map.next_value_seed(SpecView { path: self.rest })?;
                    out.insert(self.key.to_string(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        whole_seq(seq)
    }

    scalars!();
}

/// A value trimmed as its [`Keep`] says.
struct Trim(Keep);

impl<'de> DeserializeSeed<'de> for Trim {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, from: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep::Whole => serde::Deserialize::deserialize(from),
            keep => from.deserialize_any(TrimVisitor(keep)),
        }
    }
}

struct TrimVisitor(Keep);

impl<'de> Visitor<'de> for TrimVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Keep::Fields(fields) = self.0 else {
            return whole_map(map);
        };
        let mut out = Map::new();
        while let Some(found) = map.next_key_seed(Field::Of(fields))? {
            match found {
                Some(i) => {
                    let (name, keep) = fields[i];
                    let value = map.next_value_seed(Trim(keep))?;
                    out.insert(name.to_string(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        match self.0 {
            Keep::Each(element) => {
                while let Some(value) = seq.next_element_seed(Trim(*element))? {
                    out.push(value);
                }
            }
            Keep::Named(wanted) => {
                while let Some(entry) = seq.next_element_seed(EnvEntry)? {
                    out.extend(entry.kept(wanted));
                }
            }
            _ => return whole_seq(seq),
        }
        Ok(Value::Array(out))
    }

    scalars!();
}

/// One element of an env list, its name and value borrowed from the body where they can be.
enum Entry<'de> {
    /// Not an object: kept whole.
    Whole(Value),
    /// An object's `name` and `value` (anything else in it is never read).
    Fields {
        name: Option<Piece<'de>>,
        value: Option<Piece<'de>>,
    },
}

impl Entry<'_> {
    /// The entry as the view keeps it: `None` when extraction could not tell it was there (a
    /// string name other than `wanted`, and a string or null value, or none).
    fn kept(self, wanted: &str) -> Option<Value> {
        let (name, value) = match self {
            Self::Whole(value) => return Some(value),
            Self::Fields { name, value } => (name, value),
        };
        let other_name = matches!(&name, Some(Piece::Text(n)) if n != wanted);
        let plain_value = matches!(
            value,
            None | Some(Piece::Text(_) | Piece::Other(Value::Null))
        );
        if other_name && plain_value {
            return None;
        }
        let mut out = Map::new();
        for (key, piece) in [("name", name), ("value", value)] {
            if let Some(piece) = piece {
                out.insert(key.to_string(), piece.into_value());
            }
        }
        Some(Value::Object(out))
    }
}

/// A JSON value that is most often a string: the string borrowed, anything else whole.
enum Piece<'de> {
    Text(Cow<'de, str>),
    Other(Value),
}

impl Piece<'_> {
    fn into_value(self) -> Value {
        match self {
            Self::Text(text) => Value::String(text.into_owned()),
            Self::Other(value) => value,
        }
    }
}

/// Reads an [`Entry`].
struct EnvEntry;

impl<'de> DeserializeSeed<'de> for EnvEntry {
    type Value = Entry<'de>;

    fn deserialize<D: Deserializer<'de>>(self, from: D) -> Result<Entry<'de>, D::Error> {
        from.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EnvEntry {
    type Value = Entry<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry<'de>, A::Error> {
        const FIELDS: &[(&str, Keep)] = &[("name", Keep::Whole), ("value", Keep::Whole)];
        let (mut name, mut value) = (None, None);
        while let Some(found) = map.next_key_seed(Field::Of(FIELDS))? {
            match found {
                // A repeated key replaces the first, as in a JSON value.
                Some(0) => name = Some(map.next_value_seed(PieceSeed)?),
                Some(_) => value = Some(map.next_value_seed(PieceSeed)?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Entry::Fields { name, value })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Entry<'de>, A::Error> {
        whole_seq(seq).map(Entry::Whole)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Entry<'de>, E> {
        Ok(Entry::Whole(Value::String(v.to_string())))
    }

    non_strings!(Entry<'de>, Entry::Whole);
}

/// Reads a [`Piece`].
struct PieceSeed;

impl<'de> DeserializeSeed<'de> for PieceSeed {
    type Value = Piece<'de>;

    fn deserialize<D: Deserializer<'de>>(self, from: D) -> Result<Piece<'de>, D::Error> {
        from.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PieceSeed {
    type Value = Piece<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Piece<'de>, E> {
        Ok(Piece::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Piece<'de>, E> {
        Ok(Piece::Text(Cow::Owned(v.to_string())))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Piece<'de>, A::Error> {
        whole_map(map).map(Piece::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Piece<'de>, A::Error> {
        whole_seq(seq).map(Piece::Other)
    }

    non_strings!(Piece<'de>, Piece::Other);
}

/// A map key: the index of the field it names, or `None`. Read without allocating (most keys of
/// a spec are skipped).
enum Field<'a> {
    One(&'a str),
    Of(&'static [(&'static str, Keep)]),
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, from: D) -> Result<Option<usize>, D::Error> {
        from.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(match self {
            Self::One(name) => (name == key).then_some(0),
            Self::Of(fields) => fields.iter().position(|(name, _)| *name == key),
        })
    }
}

fn whole_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Value, A::Error> {
    let mut out = Map::new();
    while let Some((key, value)) = map.next_entry::<String, Value>()? {
        out.insert(key, value);
    }
    Ok(Value::Object(out))
}

fn whole_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Value, A::Error> {
    let mut out = Vec::new();
    while let Some(value) = seq.next_element::<Value>()? {
        out.push(value);
    }
    Ok(Value::Array(out))
}
