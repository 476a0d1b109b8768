//! The filters of the Changes and Revert pages, as URL query parameters, so a filtered page is
//! a link that can be shared.

use std::fmt::Write as _;

use bemi_core::{Error, Lsn, Operation, Result};
use bemi_query::{ChangeFilter, Cursor};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

/// The query parameters of a filtered page. Empty parameters (an empty form field) mean no
/// filter.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub(crate) struct Filters {
    /// `CREATE`, `UPDATE`, `DELETE` or `TRUNCATE`.
    pub(crate) op: String,
    /// `table` or `schema.table`.
    pub(crate) table: String,
    /// The primary key as stored (`7`, `alice`, `[7,"x"]`).
    pub(crate) pk: String,
    /// Committed at or after (RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` in UTC, or a date).
    pub(crate) since: String,
    /// Committed at or before.
    pub(crate) until: String,
    /// A context key …
    pub(crate) key: String,
    /// … and its value: JSON when it reads as JSON (`42`, `true`, `"42"`), else text.
    pub(crate) value: String,
    /// Raw JSON the context must contain.
    pub(crate) context: String,
    /// The commit LSN of one transaction.
    pub(crate) transaction: String,
}

impl Filters {
    /// The filter these parameters select, over the changes of `database`.
    pub(crate) fn to_filter(&self, database: &str) -> Result<ChangeFilter> {
        let mut filter = ChangeFilter::new().database(database);
        if let Some(op) = given(&self.op) {
            filter = filter.operation(op.parse::<Operation>().map_err(|_| {
                Error::config(format!(
                    "unknown operation {op:?}: use CREATE, UPDATE, DELETE or TRUNCATE"
                ))
            })?);
        }
        if let Some(table) = given(&self.table) {
            filter = filter.table_name(table.parse()?);
        }
        if let Some(pk) = given(&self.pk) {
            filter = filter.primary_key(pk);
        }
        if let Some(since) = given(&self.since) {
            filter = filter.since(parse_time(since)?);
        }
        if let Some(until) = given(&self.until) {
            filter = filter.until(parse_time(until)?);
        }
        match (given(&self.key), given(&self.value)) {
            (Some(key), value) => {
                let value = value.unwrap_or("");
                let value = serde_json::from_str(value)
                    .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
                filter = filter.context_contains(serde_json::json!({ key: value }));
            }
            (None, Some(_)) => return Err(Error::config("pick the context key the value is for")),
            (None, None) => {}
        }
        if let Some(context) = given(&self.context) {
            let value: serde_json::Value = serde_json::from_str(context).map_err(|e| {
                Error::config(format!("the context filter is not JSON: {e}")).with_source(e)
            })?;
            filter = filter.context_contains(value);
        }
        if let Some(transaction) = given(&self.transaction) {
            let lsn: Lsn = transaction.parse().map_err(|_| {
                Error::config(format!(
                    "the transaction {transaction:?} is not a commit LSN like 0/16B3748"
                ))
            })?;
            filter = filter.transaction(lsn);
        }
        Ok(filter)
    }

    /// Whether no filter is set (the page shows every change).
    pub(crate) fn is_empty(&self) -> bool {
        self.pairs().next().is_none()
    }

    /// The set parameters, as `name=value&…` with values percent-encoded.
    pub(crate) fn query_string(&self) -> String {
        let mut query = String::new();
        for (name, value) in self.pairs() {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(name);
            query.push('=');
            query.push_str(&percent_encode(value));
        }
        query
    }

    /// The set parameters, by name.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("op", &self.op),
            ("table", &self.table),
            ("pk", &self.pk),
            ("since", &self.since),
            ("until", &self.until),
            ("key", &self.key),
            ("value", &self.value),
            ("context", &self.context),
            ("transaction", &self.transaction),
        ]
        .into_iter()
        .filter_map(|(name, value)| given(value).map(|value| (name, value)))
    }
}

/// The parameter's value, unless it is empty.
pub(crate) fn given(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty()).then_some(value)
}

/// A cursor parameter (`after`, `newer`), unless empty.
pub(crate) fn cursor(value: &str) -> Result<Option<Cursor>> {
    given(value).map(str::parse).transpose()
}

/// A moment typed by a person or a `datetime-local` field: RFC 3339, or a date and time
/// without zone (UTC), or a date (its midnight, UTC).
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(time.and_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(Error::config(format!(
        "{text:?} is not a time: use 2026-12-02T14:30:00Z, 2026-12-02T14:30 (UTC) or 2026-12-02"
    )))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte))
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filtered_page_is_a_link_and_reads_back_the_same() {
        let filters = Filters {
            op: "UPDATE".into(),
            table: "public.todo".into(),
            key: "user".into(),
            value: "alice & bob".into(),
            context: r#"{"request_id": "r1"}"#.into(),
            ..Filters::default()
        };
        let query = filters.query_string();
        assert_eq!(
            query,
            "op=UPDATE&table=public.todo&key=user&value=alice%20%26%20bob\
             &context=%7B%22request_id%22%3A%20%22r1%22%7D"
        );
        let parsed: Filters =
            axum::extract::Query::try_from_uri(&format!("/?{query}").parse().expect("a URI"))
                .map(|q: axum::extract::Query<Filters>| q.0)
                .expect("the query reads back");
        assert_eq!(parsed, filters);
    }

    #[test]
    fn filters_become_the_read_apis_filter() {
        let filters = Filters {
            key: "user_id".into(),
            value: "42".into(),
            since: "2026-12-01".into(),
            ..Filters::default()
        };
        let json = filters.to_filter("app").unwrap().to_json();
        assert_eq!(json["database"], "app");
        assert_eq!(json["context"], serde_json::json!({"user_id": 42}));
        assert_eq!(json["since"], "2026-12-01T00:00:00Z");

        let text = Filters {
            key: "user".into(),
            value: "alice".into(),
            ..Filters::default()
        };
        let json = text.to_filter("app").unwrap().to_json();
        assert_eq!(json["context"], serde_json::json!({"user": "alice"}));
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let bad = |filters: Filters| filters.to_filter("app").unwrap_err().to_string();
        assert!(bad(Filters {
            op: "UPSERT".into(),
            ..Filters::default()
        })
        .contains("UPSERT"));
        assert!(bad(Filters {
            context: "{".into(),
            ..Filters::default()
        })
        .contains("not JSON"));
        assert!(bad(Filters {
            since: "yesterday".into(),
            ..Filters::default()
        })
        .contains("is not a time"));
        assert!(bad(Filters {
            value: "x".into(),
            ..Filters::default()
        })
        .contains("context key"));
        assert!(bad(Filters {
            transaction: "x".into(),
            ..Filters::default()
        })
        .contains("commit LSN"));
        assert!(Filters::default().is_empty());
    }
}
