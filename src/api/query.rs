//! Query strings parsed into the same typed structs the OpenAPI document describes. Unknown
//! parameters, a parameter given twice and bad values are 400s that name the parameter, never a
//! silent pick.

use std::borrow::Cow;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::Value;

use super::error::ApiError;

/// Query parameters as `T`, a `#[derive(Deserialize)]` struct whose fields are its parameters.
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse(parts.uri.query().unwrap_or("")).map(StrictQuery)
    }
}

/// Parses a query string into `T`.
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let known = field_names::<T>();
    let pairs: Vec<(Cow<str>, Cow<str>)> = form_urlencoded::parse(query.as_bytes()).collect();
    for (at, (key, value)) in pairs.iter().enumerate() {
        let bad = |message: &str| ApiError::invalid(key, message, Value::from(value.as_ref()));
        if !known.contains(&key.as_ref()) {
            return Err(bad("unknown query parameter"));
        }
        if pairs[..at].iter().any(|(earlier, _)| earlier == key) {
            return Err(bad("is given more than once"));
        }
    }
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let message = e.inner().to_string();
        // serde names a missing field only in its message.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            return ApiError::invalid(missing, "is required", Value::Null);
        }
        let field = e.path().to_string();
        let value = pairs
            .iter()
            .find(|(key, _)| *key == field)
            .map_or(Value::Null, |(_, value)| Value::from(value.as_ref()));
        ApiError::invalid(&field, message, value)
    })
}

/// The field names of a struct `T`, asked of its `Deserialize` impl.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Names(Option<&'static [&'static str]>);

    impl<'de> Deserializer<'de> for &mut Names {
        type Error = de::value::Error;

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(de::Error::custom("only the field names were wanted"))
        }

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut names = Names(None);
    let _ = T::deserialize(&mut names);
    names.0.unwrap_or(&[])
}

/// A `limit` parameter: 1 to 1000.
pub fn limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=super::rules::MAX_PAGE).contains(n))
        .map(Some)
        .ok_or_else(|| de::Error::custom("must be an integer from 1 to 1000"))
}

/// A `cursor` parameter: a `next_cursor` handed out earlier.
pub fn cursor<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<i64>()
        .ok()
        .filter(|c| *c >= 0)
        .map(Some)
        .ok_or_else(|| de::Error::custom("must be a cursor returned as next_cursor"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Filter {
        name: Option<String>,
        #[serde(default, deserialize_with = "limit")]
        limit: Option<usize>,
    }

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Validation(details) => details[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parameters_by_name() {
        assert_eq!(
            parse::<Filter>("name=a%20b&limit=5").unwrap(),
            Filter {
                name: Some("a b".into()),
                limit: Some(5)
            }
        );
        assert_eq!(
            parse::<Filter>("").unwrap(),
            Filter {
                name: None,
                limit: None
            }
        );
        assert_eq!(field_of(parse::<Filter>("limit=0").unwrap_err()), "limit");
        assert_eq!(field_of(parse::<Filter>("sort=id").unwrap_err()), "sort");
        assert_eq!(
            field_of(parse::<Filter>("name=a&name=b").unwrap_err()),
            "name"
        );
        assert_eq!(field_names::<Filter>(), ["name", "limit"]);

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Needs {
            ip: String,
        }
        match parse::<Needs>("").unwrap_err() {
            ApiError::Validation(details) => {
                assert_eq!(
                    (details[0].field.as_str(), details[0].message.as_str()),
                    ("ip", "is required")
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
