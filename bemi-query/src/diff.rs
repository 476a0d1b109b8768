//! [`Diff`]: the columns a change changed, `{column: [before, after]}`.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::{SerializeMap as _, SerializeTuple as _};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::StoredChange;
use bemi_core::Operation;

/// The columns a change changed, by column name (sorted), each with its value before and after.
///
/// Serializes as `{"column": [before, after]}` with `null` for a missing side, Bemi's diff
/// format, and `{"_bemi_unknown": true}` for a value before the change that the trail does not
/// hold ([`ColumnChange::before_unknown`], shown as `?` by `Display`). Values are the stored
/// JSON text, unaltered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    columns: BTreeMap<String, ColumnChange>,
}

/// The value of one column before and after a change; `None` where the row did not have the
/// column (the empty side of a CREATE or DELETE), or where the value before is unknown.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ColumnChange {
    /// The value before the change.
    pub before: Option<Box<RawValue>>,
    /// The value after the change.
    pub after: Option<Box<RawValue>>,
    /// Whether the value before the change is unknown: the server sent no old row for the
    /// UPDATE (the table's replica identity is not FULL), so the column may not even have
    /// changed. Serialized as `{"_bemi_unknown": true}` in place of the value, never as null.
    pub before_unknown: bool,
}

impl PartialEq for ColumnChange {
    fn eq(&self, other: &Self) -> bool {
        fn text(value: &Option<Box<RawValue>>) -> Option<&str> {
            value.as_deref().map(RawValue::get)
        }
        text(&self.before) == text(&other.before)
            && text(&self.after) == text(&other.after)
            && self.before_unknown == other.before_unknown
    }
}

/// What a diff shows for a value the audit trail does not hold.
const UNKNOWN: &str = r#"{"_bemi_unknown":true}"#;

/// The JSON object text of a row as column → value text; anything but an object gives nothing.
pub(super) fn columns(row: &RawValue) -> BTreeMap<String, &RawValue> {
    serde_json::from_str(row.get()).unwrap_or_default()
}

impl Diff {
    pub(super) fn of(change: &StoredChange) -> Diff {
        let before = columns(&change.before);
        let after = columns(&change.after);
        let owned = |value: &RawValue| Some(value.to_owned());
        let mut diff = BTreeMap::new();
        match change.operation {
            Operation::Create => {
                for (name, value) in after {
                    diff.insert(
                        name,
                        ColumnChange {
                            before: None,
                            after: owned(value),
                            before_unknown: false,
                        },
                    );
                }
            }
            Operation::Delete => {
                for (name, value) in before {
                    diff.insert(
                        name,
                        ColumnChange {
                            before: owned(value),
                            after: None,
                            before_unknown: false,
                        },
                    );
                }
            }
            Operation::Update => {
                // A column of `after` missing from `before`: the old row was not sent.
                for (name, value) in after {
                    let old = before.get(&name).copied();
                    if old.map(RawValue::get) != Some(value.get()) {
                        diff.insert(
                            name,
                            ColumnChange {
                                before: old.and_then(owned),
                                after: owned(value),
                                before_unknown: old.is_none(),
                            },
                        );
                    }
                }
            }
            Operation::Truncate | Operation::Message => {}
        }
        Diff { columns: diff }
    }

    /// Whether no column changed.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// How many columns changed.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// The change of `column`, if it changed.
    pub fn get(&self, column: &str) -> Option<&ColumnChange> {
        self.columns.get(column)
    }

    /// The changed columns and their changes, by column name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ColumnChange)> {
        self.columns
            .iter()
            .map(|(name, change)| (name.as_str(), change))
    }

    /// The names of the changed columns, sorted.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.keys().map(String::as_str)
    }
}

impl Serialize for ColumnChange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut pair = serializer.serialize_tuple(2)?;
        match self.before_unknown {
            true => pair.serialize_element(&serde_json::from_str::<&RawValue>(UNKNOWN).ok())?,
            false => pair.serialize_element(&self.before)?,
        }
        pair.serialize_element(&self.after)?;
        pair.end()
    }
}

impl Serialize for Diff {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.columns.len()))?;
        for (name, change) in &self.columns {
            map.serialize_entry(name, change)?;
        }
        map.end()
    }
}

/// `column: before → after, …`, compact, for terminals and logs.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, change)) in self.columns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let side = |v: &Option<Box<RawValue>>| match v {
                Some(v) => v.get().to_owned(),
                None => "∅".to_owned(),
            };
            let before = match change.before_unknown {
                true => "?".to_owned(),
                false => side(&change.before),
            };
            write!(f, "{name}: {before} → {}", side(&change.after))?;
        }
        Ok(())
    }
}
