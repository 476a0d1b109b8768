//! The crate's error type.

/// An error from `bemi-context`.
///
/// Nothing on the hot path of an application returns this: building a payload never fails
/// (see [`payload`](crate::payload)). Errors come only from converting foreign values into a
/// [`Context`](crate::Context) and from [`emit_statement`](crate::emit_statement).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A JSON value that is not an object was offered as a context.
    #[error("a context must be a JSON object, found a JSON {found}; wrap the value in an object, e.g. {{\"value\": …}}")]
    NotAnObject {
        /// The kind of JSON value that was found: `null`, `boolean`, `number`, `string` or `array`.
        found: &'static str,
    },
    /// A payload contains a NUL character, which no PostgreSQL text value can hold.
    ///
    /// Payloads made by [`payload`](crate::payload) never contain one: JSON encodes U+0000 as the
    /// escape `\u0000`.
    #[error("the payload contains a NUL character, which PostgreSQL text cannot hold; build payloads with bemi_context::payload, which escapes it as \\u0000")]
    NulInPayload,
}

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
