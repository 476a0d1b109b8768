//! The [`Context`] value: a JSON object of application facts attached to database writes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Error;

/// Application context for one unit of work: a JSON object such as
/// `{"user_id": 42, "endpoint": "POST /orders"}`.
///
/// The tracker stores it in the `context` column of every change the unit of work makes.
/// It serializes and deserializes as the plain JSON object, so the payload an adapter emits is
/// exactly `serde_json::to_string(&context)`.
///
/// ```
/// use bemi_context::Context;
/// use serde_json::json;
///
/// let mut ctx = Context::new().with("user_id", 42).with("endpoint", "POST /orders");
/// ctx.insert("job", json!({"name": "invoice", "attempt": 2}));
///
/// assert_eq!(ctx.get("user_id"), Some(&json!(42)));
/// assert_eq!(
///     serde_json::to_value(&ctx).unwrap(),
///     json!({"user_id": 42, "endpoint": "POST /orders", "job": {"name": "invoice", "attempt": 2}})
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(Map<String, Value>);

impl Context {
    /// An empty context. An empty context is never emitted (see [`payload`](crate::payload)).
    pub fn new() -> Self {
        Self(Map::new())
    }

    /// Sets `key` to `value`, returning the value it replaces, if any.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.0.insert(key.into(), value.into())
    }

    /// Builder form of [`insert`](Self::insert): sets `key` to `value` and returns the context.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Removes `key`, returning its value, if it was set.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    /// Copies every key of `other` into this context; where both have a key, `other`'s value
    /// wins.
    ///
    /// The merge is shallow, like Bemi's `mergeBemiContext`: a nested object in `other` replaces
    /// the whole value of its key rather than being merged into it.
    ///
    /// ```
    /// use bemi_context::Context;
    ///
    /// let mut ctx = Context::new().with("user_id", 1).with("endpoint", "/orders");
    /// ctx.merge(Context::new().with("user_id", 2).with("job", "sync"));
    /// assert_eq!(ctx, Context::new().with("user_id", 2).with("endpoint", "/orders").with("job", "sync"));
    /// ```
    pub fn merge(&mut self, other: Context) {
        self.0.extend(other.0);
    }

    /// Whether the context has no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The underlying JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Unwraps the underlying JSON object.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

impl From<Map<String, Value>> for Context {
    fn from(map: Map<String, Value>) -> Self {
        Self(map)
    }
}

impl From<Context> for Map<String, Value> {
    fn from(ctx: Context) -> Self {
        ctx.0
    }
}

impl From<Context> for Value {
    fn from(ctx: Context) -> Self {
        Value::Object(ctx.0)
    }
}

/// Accepts a JSON object; any other JSON value is [`Error::NotAnObject`].
impl TryFrom<Value> for Context {
    type Error = Error;

    fn try_from(value: Value) -> Result<Self, Error> {
        let found = match value {
            Value::Object(map) => return Ok(Self(map)),
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        };
        Err(Error::NotAnObject { found })
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Context {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<Value>> Extend<(K, V)> for Context {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.0
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

impl IntoIterator for Context {
    type Item = (String, Value);
    type IntoIter = serde_json::map::IntoIter;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Context {
    type Item = (&'a String, &'a Value);
    type IntoIter = serde_json::map::Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builder_insert_get_remove() {
        let mut ctx = Context::new().with("a", 1).with("b", "two");
        assert_eq!(ctx.len(), 2);
        assert_eq!(ctx.insert("a", true), Some(json!(1)));
        assert_eq!(ctx.get("a"), Some(&json!(true)));
        assert_eq!(ctx.get("missing"), None);
        assert_eq!(ctx.remove("b"), Some(json!("two")));
        assert_eq!(ctx.as_map(), json!({"a": true}).as_object().unwrap());
    }

    #[test]
    fn new_and_default_are_empty() {
        assert!(Context::new().is_empty());
        assert_eq!(Context::new(), Context::default());
        assert!(!Context::new().with("k", Value::Null).is_empty());
    }

    #[test]
    fn merge_lets_other_win_and_is_shallow() {
        let mut ctx = Context::new()
            .with("keep", 1)
            .with("replace", 1)
            .with("nested", json!({"a": 1, "b": 2}));
        ctx.merge(
            Context::new()
                .with("replace", 2)
                .with("nested", json!({"a": 3}))
                .with("new", 4),
        );
        assert_eq!(
            Value::from(ctx),
            json!({"keep": 1, "replace": 2, "nested": {"a": 3}, "new": 4})
        );
    }

    #[test]
    fn serializes_as_the_plain_object() {
        let ctx = Context::new().with("user", json!({"id": 7}));
        assert_eq!(serde_json::to_string(&ctx).unwrap(), r#"{"user":{"id":7}}"#);
        let back: Context = serde_json::from_str(r#"{"user":{"id":7}}"#).unwrap();
        assert_eq!(back, ctx);
    }

    #[test]
    fn deserializing_a_non_object_fails() {
        for text in ["[]", "1", "\"s\"", "null", "true"] {
            assert!(serde_json::from_str::<Context>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn try_from_value_accepts_only_objects() {
        let ctx = Context::try_from(json!({"a": [1, 2]})).unwrap();
        assert_eq!(ctx.get("a"), Some(&json!([1, 2])));
        let cases = [
            (json!(null), "null"),
            (json!(false), "boolean"),
            (json!(1.5), "number"),
            (json!("x"), "string"),
            (json!([{}]), "array"),
        ];
        for (value, found) in cases {
            assert_eq!(Context::try_from(value), Err(Error::NotAnObject { found }));
        }
    }

    #[test]
    fn map_conversions_and_iteration() {
        let map = json!({"a": 1, "b": 2}).as_object().unwrap().clone();
        let ctx = Context::from(map.clone());
        assert_eq!(Map::from(ctx.clone()), map);
        let keys: Vec<&String> = (&ctx).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b"]);
        let collected: Context = [("a", 1), ("b", 2)].into_iter().collect();
        assert_eq!(collected, ctx);
        let mut extended = Context::new().with("a", 0);
        extended.extend([("a", 1), ("b", 2)]);
        assert_eq!(extended, ctx);
        assert_eq!(ctx.into_iter().count(), 2);
    }
}
