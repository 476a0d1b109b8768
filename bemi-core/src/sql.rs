//! SQL text: quoting identifiers and literals, and table names written the way PostgreSQL
//! writes them ([`TableName`]). Shared by the setup, the sink, the tracker and the read side.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, Result};

/// Quotes an SQL identifier: `a"b` → `"a""b"`.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a table name for SQL, schema-qualified when a schema is given: `"public"."todo"`.
pub fn quote_qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("{}.{}", quote_identifier(schema), quote_identifier(name)),
        None => quote_identifier(name),
    }
}

pub use bemi_context::quote_literal;

/// A tracked table, optionally schema-qualified.
///
/// Its text form is the one PostgreSQL writes: `table` or `schema.table`, each part either
/// written plainly or double-quoted, with a double quote inside a quoted part doubled. A part
/// that holds a dot or a double quote must be quoted: `"Billing Dept"."In""voice.2024"` is
/// table `In"voice.2024` in schema `Billing Dept`, `"my.table"` is table `my.table`, and
/// `public."my.table"` is that table in `public`. Unlike SQL, a plain part is taken as written,
/// not folded to lower case (`Todo` and `"Todo"` are the same table), because `changes` stores
/// names as the catalog spells them; whitespace around a plain part is ignored. Anything else
/// (an unbalanced quote, a quote inside a plain part, an empty part, more than two parts) is
/// refused by [`TableName::parse`].
///
/// Without a schema, a table means `todo` in whichever schema (for queries), the first schema
/// of the search path that has it (for time travel), or `public` (for a publication).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema, if given.
    pub schema: Option<String>,
    /// The table name.
    pub name: String,
}

impl TableName {
    /// A table without a schema, named exactly `name` (no parsing).
    pub fn new(name: impl Into<String>) -> Self {
        TableName {
            schema: None,
            name: name.into(),
        }
    }

    /// Table `name` in `schema`, both exactly as given (no parsing).
    pub fn qualified(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: Some(schema.into()),
            name: name.into(),
        }
    }

    /// Reads `table` or `schema.table`, each part plain or double-quoted (see [`TableName`]).
    /// Fails with [`ErrorKind::Config`](crate::ErrorKind::Config) on anything else, naming the accepted forms.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |problem: &str| {
            Error::config(format!(
                "invalid table name {text:?}: {problem}; write table or schema.table, \
                 double-quoting a part that holds a dot or a double quote and doubling a double \
                 quote inside it, e.g. \"my.table\", public.\"my.table\" or \
                 \"Billing Dept\".\"In\"\"voice.2024\""
            ))
        };
        let mut parts = Vec::new();
        let mut rest = text;
        loop {
            let trimmed = rest.trim_start();
            let (part, after) = match trimmed.strip_prefix('"') {
                Some(quoted) => {
                    let (part, after) = split_quoted(quoted)
                        .ok_or_else(|| invalid("a double quote is not closed"))?;
                    if part.is_empty() {
                        return Err(invalid("a quoted part is empty"));
                    }
                    (part, after.trim_start())
                }
                None => {
                    let end = trimmed.find(['.', '"']).unwrap_or(trimmed.len());
                    let (part, after) = trimmed.split_at(end);
                    if after.starts_with('"') {
                        return Err(invalid("a double quote inside a part that is not quoted"));
                    }
                    let part = part.trim_end();
                    if part.is_empty() {
                        return Err(invalid("a part is empty"));
                    }
                    (part.to_owned(), after)
                }
            };
            parts.push(part);
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => return Err(invalid("text follows a closing double quote")),
            }
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => Ok(TableName::new(name)),
            (Some(schema), Some(name), None) => Ok(TableName::qualified(schema, name)),
            _ => Err(invalid("more than two parts")),
        }
    }
}

/// Splits the text after an opening double quote at its closing quote: the part, with doubled
/// quotes made single, and the rest. `None` when no closing quote follows.
fn split_quoted(text: &str) -> Option<(String, &str)> {
    let mut part = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            part.push(c);
        } else if text[i + 1..].starts_with('"') {
            part.push('"');
            chars.next();
        } else {
            return Some((part, &text[i + 1..]));
        }
    }
    None
}

impl FromStr for TableName {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        TableName::parse(text)
    }
}

/// Serializes as its text form (`schema.table`).
impl Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The text form [`TableName::parse`] reads back: each part plain, or double-quoted when it
/// holds a dot or a double quote, starts or ends with whitespace, or is empty.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn part(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
            let plain = !text.is_empty() && text.trim() == text && !text.contains(['.', '"']);
            match plain {
                true => f.write_str(text),
                false => write!(f, "\"{}\"", text.replace('"', "\"\"")),
            }
        }
        if let Some(schema) = &self.schema {
            part(f, schema)?;
            f.write_str(".")?;
        }
        part(f, &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let parse = |text: &str| TableName::parse(text).unwrap();
        assert_eq!(parse("audit.todo"), TableName::qualified("audit", "todo"));
        assert_eq!(parse("todo"), TableName::new("todo"));
        assert_eq!(parse(" Todo "), TableName::new("Todo"));
        assert_eq!(parse("\"Todo\""), TableName::new("Todo"));
        assert_eq!(parse("\"my.table\""), TableName::new("my.table"));
        assert_eq!(
            parse("public.\"my.table\""),
            TableName::qualified("public", "my.table")
        );
        let invoice = TableName::qualified("Billing Dept", "In\"voice.2024");
        assert_eq!(parse(r#""Billing Dept"."In""voice.2024""#), invoice);
        assert_eq!(parse(r#""Billing Dept" . "In""voice.2024""#), invoice);
        // The text form reads back as the same name.
        assert_eq!(invoice.to_string(), r#"Billing Dept."In""voice.2024""#);
        assert_eq!(parse("audit.todo").to_string(), "audit.todo");
        for name in [
            invoice,
            TableName::new(" x"),
            TableName::qualified("a\"\"b", ".."),
        ] {
            assert_eq!(parse(&name.to_string()), name);
        }
    }
    #[test]
    fn malformed_table_names_are_refused_with_the_accepted_forms() {
        for (text, problem) in [
            (r#"Billing Dept..In"voice.2024"#, "a part is empty"),
            ("", "a part is empty"),
            ("todo.", "a part is empty"),
            (".todo", "a part is empty"),
            (r#""""#, "a quoted part is empty"),
            (r#""my.table"#, "not closed"),
            (r#"In"voice"#, "inside a part that is not quoted"),
            (r#""a"b"#, "text follows a closing double quote"),
            ("db.public.todo", "more than two parts"),
        ] {
            let error = TableName::parse(text).unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::Config, "{text}");
            let message = error.to_string();
            assert!(message.contains(problem), "{text}: {message}");
            assert!(message.contains("schema.table"), "{message}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_identifier("bemi"), "\"bemi\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            quote_literal(&format!(
                "{},{}",
                quote_identifier("a"),
                quote_identifier("b")
            )),
            "'\"a\",\"b\"'"
        );
    }
}
