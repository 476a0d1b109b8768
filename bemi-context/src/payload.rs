//! The `_bemi` logical decoding message: its payload and the SQL that emits it.
//!
//! Adapters write the payload into the WAL as the first statement of each transaction with
//! [`pg_logical_emit_message`](https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-REPLICATION)
//! (`transactional = true`, so a rolled-back transaction leaves no context behind). The tracker
//! reads it back through `pgoutput` with the `messages 'true'` option (PostgreSQL 14+).

use crate::scope::with_current;
use crate::{Context, Error, Result};

/// The logical decoding message prefix of context messages: `_bemi`.
///
/// The tracker ignores messages with every other prefix, including Bemi's heartbeat prefix
/// `_bemi_heartbeat`.
pub const PREFIX: &str = "_bemi";

/// The largest payload emitted, in characters (Unicode scalar values): 1,000,000.
///
/// Bemi's packages skip a context larger than this; [`payload`] does the same.
pub const MAX_PAYLOAD_CHARS: usize = 1_000_000;

/// The statement that emits a context, with the payload as its only bound parameter, `$1`
/// (type `text`).
///
/// Adapters prepare this statement and bind the output of [`payload`] to it:
///
/// ```text
/// sqlx:            sqlx::query(EMIT_SQL).bind(payload).execute(&mut *tx)
/// Diesel:          diesel::sql_query(EMIT_SQL).bind::<Text, _>(payload).execute(conn)
/// tokio-postgres:  tx.execute(EMIT_SQL, &[&payload])
/// ```
///
/// Because the payload travels as a parameter, never as part of the SQL text, it cannot change
/// the statement, whatever it contains.
pub const EMIT_SQL: &str = "SELECT pg_logical_emit_message(true, '_bemi', $1)";

/// The JSON text to emit for `ctx`, or `None` when there is nothing to emit.
///
/// - An empty context gives `None`: no context, no message.
/// - A context whose JSON text is longer than [`MAX_PAYLOAD_CHARS`] characters gives `None` and
///   logs a `tracing` warning with its size, as Bemi's packages skip such contexts. The write
///   itself goes ahead without context; this function never fails and never panics.
///
/// Any JSON text is a valid payload: quotes, backslashes, `/*`, `*/`, newlines and non-ASCII
/// characters need no treatment, because the payload is sent as a bound parameter of
/// [`EMIT_SQL`], never interpolated into SQL (and when it must be, [`emit_statement`] quotes it).
/// The text never contains a NUL character: JSON writes U+0000 as the escape `\u0000`.
///
/// ```
/// use bemi_context::{payload, Context};
///
/// assert_eq!(payload(&Context::new()), None);
/// assert_eq!(
///     payload(&Context::new().with("user_id", 42)).as_deref(),
///     Some(r#"{"user_id":42}"#)
/// );
/// ```
pub fn payload(ctx: &Context) -> Option<String> {
    if ctx.is_empty() {
        return None;
    }
    let text = match serde_json::to_string(ctx) {
        Ok(text) => text,
        // Unreachable for a map of JSON values with string keys; never fail the write for it.
        Err(error) => {
            tracing::warn!(%error, "bemi context could not be encoded as JSON; not emitting it");
            return None;
        }
    };
    // A character takes at least one byte, so only long texts need counting.
    if text.len() > MAX_PAYLOAD_CHARS {
        let chars = text.chars().count();
        if chars > MAX_PAYLOAD_CHARS {
            tracing::warn!(
                chars,
                limit = MAX_PAYLOAD_CHARS,
                "bemi context payload exceeds the size limit; not emitting it"
            );
            return None;
        }
    }
    Some(text)
}

/// The payload of the [`current`](crate::current) context: `None` outside any scope, and
/// otherwise as [`payload`].
pub fn current_payload() -> Option<String> {
    with_current(payload).flatten()
}

/// A complete statement that emits `payload`, with the payload quoted as a SQL string literal:
/// `SELECT pg_logical_emit_message(true, '_bemi', '…')`.
///
/// Prefer [`EMIT_SQL`] with a bound parameter. This exists for drivers that can send only literal
/// SQL in one round trip with `BEGIN` (a simple-query batch such as
/// `BEGIN; SELECT pg_logical_emit_message(…);`).
///
/// Quoting follows PostgreSQL's own `PQescapeLiteral`: each `'` is doubled, and when the payload
/// contains a backslash each backslash is doubled and the literal becomes an escape string
/// (`E'…'`). An escape string means the same whatever the server's
/// `standard_conforming_strings` setting is, where a plain literal with backslashes would not.
/// Everything else, including `*/`, `/*`, `--`, `$$`, newlines and any non-ASCII character, is
/// ordinary text inside a literal and is kept as is (the statement is UTF-8, as is the client
/// encoding every Rust driver uses).
///
/// # Errors
///
/// [`Error::NulInPayload`] when `payload` contains a NUL character: PostgreSQL text cannot hold
/// one. A payload made by [`payload`] never does.
///
/// ```
/// use bemi_context::emit_statement;
///
/// assert_eq!(
///     emit_statement(r#"{"name":"O'Brien"}"#).unwrap(),
///     r#"SELECT pg_logical_emit_message(true, '_bemi', '{"name":"O''Brien"}')"#
/// );
/// assert_eq!(
///     emit_statement(r#"{"path":"C:\\tmp"}"#).unwrap(),
///     r#"SELECT pg_logical_emit_message(true, '_bemi', E'{"path":"C:\\\\tmp"}')"#
/// );
/// ```
pub fn emit_statement(payload: &str) -> Result<String> {
    if payload.contains('\0') {
        return Err(Error::NulInPayload);
    }
    Ok(format!(
        "SELECT pg_logical_emit_message(true, '_bemi', {})",
        quote_literal(payload)
    ))
}

/// `text` as a PostgreSQL string literal, quoted as libpq's `PQescapeLiteral` quotes it: each
/// `'` doubled, and when `text` contains a backslash, each backslash doubled and the literal
/// written as an escape string (`E'…'`), which means the same whatever the server's
/// `standard_conforming_strings` is. PostgreSQL text cannot hold NUL; a literal with one is
/// refused by the server.
///
/// ```
/// assert_eq!(bemi_context::quote_literal("O'Brien"), "'O''Brien'");
/// assert_eq!(bemi_context::quote_literal(r"C:\tmp"), r"E'C:\\tmp'");
/// ```
pub fn quote_literal(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        literal.push('E');
    }
    literal.push('\'');
    for c in text.chars() {
        match c {
            '\'' => literal.push_str("''"),
            '\\' => literal.push_str("\\\\"),
            c => literal.push(c),
        }
    }
    literal.push('\'');
    literal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use std::sync::{Arc, Mutex};

    /// A context whose payload is exactly `chars` characters long, made of `fill`.
    fn context_of_chars(chars: usize, fill: char) -> Context {
        // {"k":"…"} is 8 characters around the value
        let value: String = std::iter::repeat_n(fill, chars - 8).collect();
        Context::new().with("k", value)
    }

    /// Undoes the quoting of `emit_statement`, the way PostgreSQL's lexer reads the literal.
    fn literal_of(sql: &str) -> String {
        let rest = sql
            .strip_prefix("SELECT pg_logical_emit_message(true, '_bemi', ")
            .unwrap()
            .strip_suffix(")")
            .unwrap();
        let (escape, body) = match rest.strip_prefix('E') {
            Some(body) => (true, body),
            None => (false, rest),
        };
        let body = body.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap();
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => assert_eq!(chars.next(), Some('\''), "lone quote in {sql}"),
                '\\' if escape => assert_eq!(chars.next(), Some('\\'), "lone backslash in {sql}"),
                '\\' => panic!("backslash in a plain literal: {sql}"),
                _ => {}
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn empty_context_has_no_payload() {
        assert_eq!(payload(&Context::new()), None);
    }

    #[test]
    fn payload_is_the_json_object() {
        let ctx = Context::new()
            .with("user", json!({"id": 7, "roles": ["admin"]}))
            .with("note", "it's */ /* \"quoted\" \\ é 🦀\n");
        let text = payload(&ctx).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, Value::from(ctx));
    }

    #[test]
    fn payload_at_the_limit_is_emitted() {
        let ctx = context_of_chars(MAX_PAYLOAD_CHARS, 'x');
        assert_eq!(payload(&ctx).unwrap().chars().count(), MAX_PAYLOAD_CHARS);
        let ctx = context_of_chars(MAX_PAYLOAD_CHARS - 1, 'x');
        assert_eq!(payload(&ctx).unwrap().len(), MAX_PAYLOAD_CHARS - 1);
    }

    #[test]
    fn payload_over_the_limit_is_skipped() {
        assert_eq!(payload(&context_of_chars(MAX_PAYLOAD_CHARS + 1, 'x')), None);
        assert_eq!(payload(&context_of_chars(3 * MAX_PAYLOAD_CHARS, 'x')), None);
    }

    #[test]
    fn the_limit_counts_characters_not_bytes() {
        // 2 bytes each: about 2 MB of text, but exactly the limit in characters
        let ctx = context_of_chars(MAX_PAYLOAD_CHARS, 'é');
        let text = payload(&ctx).unwrap();
        assert!(text.len() > MAX_PAYLOAD_CHARS);
        assert_eq!(text.chars().count(), MAX_PAYLOAD_CHARS);
        assert_eq!(
            payload(&context_of_chars(MAX_PAYLOAD_CHARS + 1, '🦀')),
            None
        );
    }

    #[test]
    fn oversized_payload_logs_a_warning_with_its_size() {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(payload(&context_of_chars(MAX_PAYLOAD_CHARS + 5, 'x')), None);
        });
        let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("WARN"), "{logged}");
        assert!(logged.contains("chars=1000005"), "{logged}");
        assert!(logged.contains("limit=1000000"), "{logged}");
    }

    #[tokio::test]
    async fn current_payload_follows_the_scope() {
        assert_eq!(current_payload(), None);
        let text = scope(Context::new().with("a", 1), async { current_payload() }).await;
        assert_eq!(text.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(
            scope(Context::new(), async { current_payload() }).await,
            None
        );
    }

    #[test]
    fn json_never_contains_a_raw_nul() {
        let ctx = Context::new().with("nul\0key", "nul\0value\u{1}");
        let text = payload(&ctx).unwrap();
        assert!(!text.contains('\0'));
        assert_eq!(text, r#"{"nul\u0000key":"nul\u0000value\u0001"}"#);
        assert!(emit_statement(&text).is_ok());
    }

    #[test]
    fn emit_statement_rejects_nul() {
        assert_eq!(emit_statement("{\"a\":\"\0\"}"), Err(Error::NulInPayload));
    }

    #[test]
    fn emit_statement_quoting() {
        let cases = [
            (r#"{"a":1}"#, r#"'{"a":1}'"#),
            (r#"{"name":"O'Brien"}"#, r#"'{"name":"O''Brien"}'"#),
            ("{\"q\":\"''\"}", "'{\"q\":\"''''\"}'"),
            (r#"{"p":"a\\b"}"#, r#"E'{"p":"a\\\\b"}'"#),
            (r#"{"s":"\"x\""}"#, r#"E'{"s":"\\"x\\""}'"#),
            (
                r#"{"c":"*/ DROP TABLE t; /*"}"#,
                r#"'{"c":"*/ DROP TABLE t; /*"}'"#,
            ),
            (r#"{"d":"-- $$ $bemi$"}"#, r#"'{"d":"-- $$ $bemi$"}'"#),
            (
                r#"{"name":"Zoë Ångström 東京"}"#,
                r#"'{"name":"Zoë Ångström 東京"}'"#,
            ),
            (r#"{"emoji":"🦀👩‍💻"}"#, r#"'{"emoji":"🦀👩‍💻"}'"#),
            ("{\"nl\":\"a\nb\"}", "'{\"nl\":\"a\nb\"}'"),
            (r#"{"mix":"'\\'"}"#, r#"E'{"mix":"''\\\\''"}'"#),
        ];
        for (payload, literal) in cases {
            let sql = emit_statement(payload).unwrap();
            assert_eq!(
                sql,
                format!("SELECT pg_logical_emit_message(true, '_bemi', {literal})")
            );
            assert_eq!(literal_of(&sql), payload);
        }
    }

    #[test]
    fn emit_statement_of_a_real_payload_round_trips() {
        let ctx = Context::new()
            .with("sql", "UPDATE t SET a = 'x' /* c */ WHERE b = E'\\n'")
            .with("path", "C:\\Users\\zoë")
            .with("crab", "🦀");
        let text = payload(&ctx).unwrap();
        let sql = emit_statement(&text).unwrap();
        assert!(sql.starts_with("SELECT pg_logical_emit_message(true, '_bemi', E'"));
        assert_eq!(literal_of(&sql), text);
    }

    proptest! {
        #[test]
        fn emit_statement_round_trips_any_text(text in "[^\0]*") {
            let sql = emit_statement(&text).unwrap();
            prop_assert_eq!(literal_of(&sql), text);
        }

        #[test]
        fn payload_round_trips_any_string_context(key in ".*", value in ".*") {
            let ctx = Context::new().with(key, value);
            let text = payload(&ctx).unwrap();
            prop_assert!(!text.contains('\0'));
            let back: Context = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, ctx);
            prop_assert_eq!(literal_of(&emit_statement(&text).unwrap()), text);
        }
    }
}
