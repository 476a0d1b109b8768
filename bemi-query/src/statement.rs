//! The statements the read API runs: SQL text with `$n` placeholders and typed parameters,
//! built here and run by any driver through [`Database`](crate::Database).
//!
//! Every statement that returns rows returns one text column, `_bemi_row` (`EXPLAIN` returns
//! its own single text column): a JSON array of the row's values. So a driver only ever reads
//! one text column and binds text and `int8` parameters, and all drivers read the same values
//! the same way. Placeholders carry their type (`$1::text`, `$2::int8`), so drivers that bind
//! untyped parameters and drivers that infer types from the statement agree.

use serde_json::value::RawValue;

use bemi_core::{Error, ErrorKind, Result};

/// A parameter of a [`Statement`]; the placeholder in the SQL text is cast to its type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Param {
    /// A `text` value (`$n::text`).
    Text(String),
    /// An `int8` value (`$n::int8`).
    Int8(i64),
}

/// SQL text with `$n` placeholders and its parameters, as the read API runs it on a
/// [`Database`](crate::Database).
///
/// ```
/// use bemi_query::{ChangeFilter, Param};
///
/// let statement = ChangeFilter::new().table("todo").query().limit(10).statement();
/// assert!(statement.sql().contains("\"table\" = $1::text"));
/// assert_eq!(statement.params()[0], Param::Text("todo".to_owned()));
/// assert_eq!(statement.params()[1], Param::Int8(10));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    sql: String,
    params: Vec<Param>,
}

impl Statement {
    /// A statement without parameters.
    pub(crate) fn new(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    /// The SQL text, with `$1`, `$2`, … for the parameters.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The parameters, `$1` first.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Binds a text parameter and returns its placeholder, `$n::text`.
    pub(crate) fn text(&mut self, value: impl Into<String>) -> String {
        self.params.push(Param::Text(value.into()));
        format!("${}::text", self.params.len())
    }

    /// Binds an `int8` parameter and returns its placeholder, `$n::int8`.
    pub(crate) fn int8(&mut self, value: i64) -> String {
        self.params.push(Param::Int8(value));
        format!("${}::int8", self.params.len())
    }

    /// Appends a parameter whose placeholder the SQL text already has.
    pub(crate) fn push(&mut self, param: Param) {
        self.params.push(param);
    }

    /// Sets the SQL text (after binding the parameters it names).
    pub(crate) fn set_sql(&mut self, sql: String) {
        self.sql = sql;
    }
}

/// A statement's conditions, joined with `AND` into a `WHERE` clause.
#[derive(Debug, Default)]
pub(crate) struct Conditions(Vec<String>);

impl Conditions {
    pub(crate) fn push(&mut self, condition: String) {
        self.0.push(condition);
    }

    pub(crate) fn where_clause(&self) -> String {
        match self.0.is_empty() {
            true => String::new(),
            false => format!(" WHERE {}", self.0.join(" AND ")),
        }
    }
}

/// One row as a statement returns it: the JSON array of its values.
#[derive(Debug)]
pub(crate) struct Row<'a> {
    values: Vec<&'a RawValue>,
}

impl<'a> Row<'a> {
    /// Reads the text a driver returned for one row.
    pub(crate) fn parse(text: &'a str) -> Result<Self> {
        let values = serde_json::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                "a row of the read API is not a JSON array",
            )
            .with_source(e)
        })?;
        Ok(Row { values })
    }

    /// The value at `index` as JSON text.
    pub(crate) fn json(&self, index: usize) -> Result<&'a RawValue> {
        self.values.get(index).copied().ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!("a row of the read API has no column {index}"),
            )
        })
    }

    /// The value at `index` read as `T` (`Option<T>` for a nullable one).
    pub(crate) fn get<T: serde::de::DeserializeOwned>(&self, index: usize) -> Result<T> {
        let json = self.json(index)?;
        serde_json::from_str(json.get()).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("column {index} of a row of the read API is not what was expected: {json}"),
            )
            .with_source(e)
        })
    }

    /// How many values the row has.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}
