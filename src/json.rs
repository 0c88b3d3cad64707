//! Reading request JSON without the two things serde_json's own types do silently: keep the
//! last of two values given for one key (`{"action":"unblock","action":"block"}` would block),
//! and hold every element of a list however long it is (a megabyte of `[1,1,...]` is half a
//! million values). Values stay raw text borrowed from the body until a validator reads them.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Members an object may have before the rest is skipped unread. Every request object has at
/// most eight known keys, so past this many one of the kept members is already unknown or
/// repeated, and the object is refused for it.
pub const MAX_MEMBERS: usize = 64;

/// An object's members in the order received, each value as `V`: raw JSON text
/// (`&RawValue`, read later as needed) or already a `serde_json::Value` (small objects).
#[derive(Debug)]
pub struct Members<V> {
    members: Vec<(String, V)>,
    /// More members followed the ones kept.
    pub truncated: bool,
}

/// Why a text is not an object.
#[derive(Debug)]
pub enum NotAnObject {
    /// Not JSON at all.
    Syntax(serde_json::Error),
    /// JSON of another type (kept for the error's `value`).
    Other,
}

impl<'a, V: Deserialize<'a>> Members<V> {
    pub fn parse(text: &'a str) -> Result<Self, NotAnObject> {
        let mut de = serde_json::Deserializer::from_str(text);
        match MembersSeed(PhantomData)
            .deserialize(&mut de)
            .and_then(|m| de.end().map(|()| m))
        {
            Ok(members) => Ok(members),
            Err(e) if e.is_data() => Err(NotAnObject::Other),
            Err(e) => Err(NotAnObject::Syntax(e)),
        }
    }
}

impl<V> Members<V> {
    /// The first value given for `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }

    /// Members in order, repeats included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> + '_ {
        self.members.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The members, each key's first value only.
    pub fn into_first(self) -> Vec<(String, V)> {
        let mut first: Vec<(String, V)> = Vec::with_capacity(self.members.len());
        for (key, value) in self.members {
            if !first.iter().any(|(k, _)| *k == key) {
                first.push((key, value));
            }
        }
        first
    }

    /// The first member, in order, whose key is not in `allowed` or was given before: what to
    /// refuse the object for.
    pub fn first_offending(&self, allowed: &[&str]) -> Option<Offending<'_, V>> {
        self.members
            .iter()
            .enumerate()
            .find_map(|(at, (key, value))| {
                if !allowed.contains(&key.as_str()) {
                    Some(Offending::Unknown(key, value))
                } else if self.members[..at].iter().any(|(k, _)| k == key) {
                    Some(Offending::Repeated(key, value))
                } else {
                    None
                }
            })
    }
}

/// A member an object is refused for.
#[derive(Debug, Clone, Copy)]
pub enum Offending<'m, V> {
    Unknown(&'m str, &'m V),
    /// Given a second time: which value was meant is anyone's guess.
    Repeated(&'m str, &'m V),
}

struct MembersSeed<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> DeserializeSeed<'de> for MembersSeed<V> {
    type Value = Members<V>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for MembersSeed<V> {
    type Value = Members<V>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        let mut truncated = false;
        while let Some(key) = map.next_key::<String>()? {
            if members.len() < MAX_MEMBERS {
                members.push((key, map.next_value::<V>()?));
            } else {
                truncated = true;
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Members { members, truncated })
    }
}

/// A JSON list read up to a limit: the elements past it are counted, never kept.
#[derive(Debug)]
pub struct BoundedList<'a> {
    /// The first elements, at most the limit, as raw JSON text.
    pub items: Vec<&'a RawValue>,
    /// How many elements the list had.
    pub total: usize,
}

impl<'a> BoundedList<'a> {
    /// `None` when `raw` is not a list.
    pub fn parse(raw: &'a RawValue, limit: usize) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_str(raw.get());
        BoundedSeed(limit).deserialize(&mut de).ok()
    }
}

struct BoundedSeed(usize);

impl<'de> DeserializeSeed<'de> for BoundedSeed {
    type Value = BoundedList<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedSeed {
    type Value = BoundedList<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let mut total = 0;
        while total < self.0 {
            match seq.next_element::<&'de RawValue>()? {
                Some(item) => items.push(item),
                None => return Ok(BoundedList { items, total }),
            }
            total += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            total += 1;
        }
        Ok(BoundedList { items, total })
    }
}

/// A raw value as a `serde_json::Value`, for an error's `value` field. Raw values were valid
/// JSON when they were split off, so this does not fail; `null` if it somehow does.
pub fn value_of(raw: &RawValue) -> serde_json::Value {
    serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_unknown_keys_are_found_in_order() {
        let members = Members::<&RawValue>::parse(r#"{"a":1,"b":[2],"a":3,"z":4}"#).unwrap();
        assert_eq!(members.get("a").unwrap().get(), "1");
        assert!(matches!(
            members.first_offending(&["a", "b", "z"]),
            Some(Offending::Repeated("a", v)) if v.get() == "3"
        ));
        assert!(matches!(
            members.first_offending(&["a"]),
            Some(Offending::Unknown("b", _))
        ));
        assert!(members.first_offending(&["a", "b", "z"][..2]).is_some());
        let fine = Members::<&RawValue>::parse(r#"{"a":1,"b":2}"#).unwrap();
        assert!(fine.first_offending(&["a", "b"]).is_none());
    }

    #[test]
    fn objects_and_everything_else() {
        type Raw<'a> = Members<&'a RawValue>;
        assert!(matches!(Raw::parse("[1]"), Err(NotAnObject::Other)));
        assert!(matches!(Raw::parse("\"x\""), Err(NotAnObject::Other)));
        assert!(matches!(Raw::parse("{"), Err(NotAnObject::Syntax(_))));
        assert!(matches!(Raw::parse("{} x"), Err(NotAnObject::Syntax(_))));
        let values = Members::<serde_json::Value>::parse(r#"{"a":1,"a":2,"b":[3]}"#).unwrap();
        assert_eq!(
            values.into_first(),
            [
                ("a".to_owned(), serde_json::json!(1)),
                ("b".to_owned(), serde_json::json!([3]))
            ]
        );
    }

    #[test]
    fn huge_objects_keep_a_bounded_prefix() {
        let text = format!(
            "{{{}}}",
            (0..1000)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let members = Members::<serde_json::Value>::parse(&text).unwrap();
        assert!(members.truncated);
        assert_eq!(members.iter().count(), MAX_MEMBERS);
    }

    #[test]
    fn lists_are_counted_past_their_limit() {
        let raw: Box<RawValue> = serde_json::from_str("[1,\"a\",{\"b\":[3]},4,5]").unwrap();
        let list = BoundedList::parse(&raw, 3).unwrap();
        assert_eq!(list.total, 5);
        assert_eq!(list.items.len(), 3);
        assert_eq!(list.items[2].get(), "{\"b\":[3]}");
        let all = BoundedList::parse(&raw, 10).unwrap();
        assert_eq!((all.items.len(), all.total), (5, 5));
        let not: Box<RawValue> = serde_json::from_str("{\"a\":1}").unwrap();
        assert!(BoundedList::parse(&not, 3).is_none());
    }
}
