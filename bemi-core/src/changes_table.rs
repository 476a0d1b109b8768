//! The contract of the `changes` table that the sink writes and every reader reads: where it
//! is ([`ChangesTable`]) and the text form of primary keys ([`format_key`]). Positions are
//! stored as `int8` ([`Lsn::to_int8`](crate::Lsn::to_int8)); the DDL and its in-place upgrades
//! are the [`PostgresSink`](crate::sink::PostgresSink)'s.

use std::borrow::Cow;

use crate::sql::quote_qualified;

/// Where the `changes` table is: `public.changes` unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChangesTable {
    schema: String,
    name: String,
}

impl ChangesTable {
    /// The changes table `name` in `schema`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        ChangesTable {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quoted, schema-qualified name for SQL (`"public"."changes"`).
    pub fn qualified(&self) -> String {
        quote_qualified(Some(&self.schema), &self.name)
    }
}

impl Default for ChangesTable {
    fn default() -> Self {
        ChangesTable::new("public", "changes")
    }
}

/// The primary key text from the JSON texts of the key's columns, in key order: the value
/// itself for one column (a string unquoted, anything else as JSON), a JSON array of the values
/// for several (`[1,"a"]`). `None` without columns, when a value is missing, or when a
/// single-column key is null. The one definition of the form stored in `primary_key`, which
/// the queries of the audit trail look keys up by.
pub fn format_key<'a, I>(values: I) -> Option<String>
where
    I: IntoIterator<Item = Option<Cow<'a, str>>>,
    I::IntoIter: ExactSizeIterator,
{
    let mut values = values.into_iter();
    match values.len() {
        0 => None,
        1 => {
            let json = values.next()??;
            match serde_json::from_str::<String>(&json) {
                Ok(text) => Some(text),
                Err(_) if json == "null" => None,
                Err(_) => Some(json.into_owned()),
            }
        }
        _ => {
            let parts: Option<Vec<Cow<'a, str>>> = values.collect();
            Some(format!("[{}]", parts?.join(",")))
        }
    }
}
