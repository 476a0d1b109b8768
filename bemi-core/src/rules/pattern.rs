//! `schema.table` patterns with `*` globs, and the glob match they share with column names.

use std::fmt;

/// A table pattern: `schema.table`, each part a glob where `*` matches any run of characters
/// (`public.*`, `*.audit_log`, `billing.invoice_*`). A pattern without a dot names a table of
/// `public`. The first dot separates the parts; patterns do not quote names.
///
/// ```
/// use bemi_core::rules::TablePattern;
///
/// let pattern = TablePattern::new("billing.*");
/// assert!(pattern.matches("billing", "invoices"));
/// assert!(!pattern.matches("public", "invoices"));
/// assert!(TablePattern::new("users").matches("public", "users"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TablePattern {
    schema: String,
    table: String,
}

impl TablePattern {
    /// The pattern `text` (see the type's docs).
    pub fn new(text: &str) -> Self {
        let (schema, table) = text.split_once('.').unwrap_or(("public", text));
        TablePattern {
            schema: schema.to_owned(),
            table: table.to_owned(),
        }
    }

    /// The schema part.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table part.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether the table `schema.table` matches.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        glob(&self.schema, schema) && glob(&self.table, table)
    }

    /// Whether the pattern holds a `*`, so that it may match tables created later.
    pub fn is_glob(&self) -> bool {
        self.schema.contains('*') || self.table.contains('*')
    }

    /// Why the pattern can match nothing, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        (self.schema.is_empty() || self.table.is_empty())
            .then(|| format!("the table pattern {self:?} has an empty schema or table part"))
    }
}

impl fmt::Debug for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none included)
/// and every other character itself. Linear in practice: it backtracks only to the last `*`.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // The position after the last `*` seen, and where in `text` it was tried from.
    let mut retry: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                retry = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match retry {
                Some((after_star, from)) => {
                    p = after_star;
                    t = from + 1;
                    retry = Some((after_star, from + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_of_characters() {
        for (pattern, text) in [
            ("*", ""),
            ("*", "users"),
            ("users", "users"),
            ("user*", "users"),
            ("*_token", "api_token"),
            ("a*b*c", "aXXbYYc"),
            ("a*b*c", "abc"),
            ("*a*", "banana"),
            ("é*", "été"),
        ] {
            assert!(glob(pattern, text), "{pattern} ~ {text}");
        }
        for (pattern, text) in [
            ("users", "user"),
            ("user", "users"),
            ("*_token", "api_tokens"),
            ("a*b*c", "acb"),
            ("", "x"),
        ] {
            assert!(!glob(pattern, text), "{pattern} !~ {text}");
        }
    }

    #[test]
    fn table_patterns_default_to_public_and_split_at_the_first_dot() {
        assert!(TablePattern::new("users").matches("public", "users"));
        assert!(!TablePattern::new("users").matches("app", "users"));
        assert!(TablePattern::new("*.*").matches("app", "users"));
        assert!(TablePattern::new("app.my.table").matches("app", "my.table"));
        assert!(TablePattern::new("app.").problem().is_some());
        assert!(TablePattern::new("app.*").is_glob());
        assert!(!TablePattern::new("app.t").is_glob());
    }
}
