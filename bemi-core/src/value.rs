//! Type conversion: one pgoutput *text-format* column value to JSON text.
//!
//! pgoutput sends each column of a row as `n` (SQL NULL), `u` (unchanged TOAST value) or `t`
//! followed by the value in the type's text output form (see "TupleData" in
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>). NULL and
//! unchanged values are handled by the caller; this module turns the text of a `t` column into
//! the JSON stored in `before` / `after`, keyed on the column's type OID from the Relation message.
//!
//! Text output depends on the walsender's session settings, so the replication connection pins
//! `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3` (shortest round-trip floats),
//! `IntervalStyle=iso_8601` and `bytea_output=hex`. This module relies on those forms but does
//! not trust them: a `timestamptz` with an offset other than `+00` is converted to UTC, and any
//! text that does not have the expected shape is kept verbatim as a JSON string.
//!
//! | type | JSON |
//! | --- | --- |
//! | `int2`, `int4`, `int8`, `oid` | number, digits as sent |
//! | `numeric`, `float4`, `float8` | number, digits as sent; `NaN`, `Infinity`, `-Infinity` as strings |
//! | `bool` | `true` / `false` |
//! | `json`, `jsonb` | the document itself |
//! | `timestamptz` | RFC 3339 string in UTC, `2024-01-02T03:04:05.123456Z` (µs only when non-zero) |
//! | `timestamp` | ISO 8601 string, `2024-01-02T03:04:05.123456` |
//! | `date`, `time`, `timetz`, `interval`, `bytea` (`\x…`) | string of the text |
//! | arrays of the types above | array, nested per dimension, `NULL` elements as `null` |
//! | arrays with a lower bound other than 1 (`[0:1]={1,2}`, `[4:4]={NULL}`) | string of the text: a JSON array cannot carry bounds, and `jsonb_populate_record` (revert) reads the text back exactly |
//! | arrays of `inet`, `cidr`, `macaddr`, `"char"`, `money`, bit strings, `xml`, `tsvector`, `point`, built-in ranges; user-defined array types (enum, domain, `citext`, …, recognised by the relation decoder) | array of strings, as above |
//! | anything else (text, uuid, enum, domain, composite, range, …) | string of the text |
//!
//! The output is always one complete JSON value, with numbers within `f64` range (so that
//! `serde_json` reads them): conversion never fails and never panics. When the typed rule does
//! not apply, for example a number beyond `f64` range, a timestamp before year 1 or after 9999, a
//! malformed array literal, or a `json` document that is not valid JSON, is nested deeper than
//! 10,000 levels of arrays and objects (a default PostgreSQL accepts about 12,000), or that
//! PostgreSQL's `jsonb` would refuse (`\u0000`, a number beyond `numeric`'s range), the value is
//! the JSON string of the PostgreSQL text, so nothing is lost. Documents nested deeper than `serde_json`'s default limit of 128
//! levels are kept as documents: read them with `RawValue`, or a deserializer without the limit.

use std::io;

use chrono::{Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike};

use crate::Oid;

/// Built-in type OIDs, as in PostgreSQL's `pg_type.dat`.
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const BYTEA: u32 = 17;
    pub(super) const NAME: u32 = 19;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const TEXT: u32 = 25;
    pub(super) const OID: u32 = 26;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const BPCHAR: u32 = 1042;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIME: u32 = 1083;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const INTERVAL: u32 = 1186;
    pub(super) const TIMETZ: u32 = 1266;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UUID: u32 = 2950;
    pub(super) const JSONB: u32 = 3802;

    pub(super) const JSON_ARRAY: u32 = 199;
    pub(super) const BOOL_ARRAY: u32 = 1000;
    pub(super) const BYTEA_ARRAY: u32 = 1001;
    pub(super) const NAME_ARRAY: u32 = 1003;
    pub(super) const INT2_ARRAY: u32 = 1005;
    pub(super) const INT4_ARRAY: u32 = 1007;
    pub(super) const TEXT_ARRAY: u32 = 1009;
    pub(super) const BPCHAR_ARRAY: u32 = 1014;
    pub(super) const VARCHAR_ARRAY: u32 = 1015;
    pub(super) const INT8_ARRAY: u32 = 1016;
    pub(super) const FLOAT4_ARRAY: u32 = 1021;
    pub(super) const FLOAT8_ARRAY: u32 = 1022;
    pub(super) const OID_ARRAY: u32 = 1028;
    pub(super) const TIMESTAMP_ARRAY: u32 = 1115;
    pub(super) const DATE_ARRAY: u32 = 1182;
    pub(super) const TIME_ARRAY: u32 = 1183;
    pub(super) const TIMESTAMPTZ_ARRAY: u32 = 1185;
    pub(super) const INTERVAL_ARRAY: u32 = 1187;
    pub(super) const NUMERIC_ARRAY: u32 = 1231;
    pub(super) const TIMETZ_ARRAY: u32 = 1270;
    pub(super) const UUID_ARRAY: u32 = 2951;
    pub(super) const JSONB_ARRAY: u32 = 3807;
    /// Arrays of types whose values are strings here: network and bit-string types, `"char"`,
    /// `money`, `xml`, `tsvector`, `point` and the built-in ranges (`box[]` is left out: its
    /// elements are separated by `;`).
    pub(super) const STRING_ARRAYS: [u32; 17] = [
        143,  // xml
        651,  // cidr
        775,  // macaddr8
        791,  // money
        1002, // "char"
        1017, // point
        1040, // macaddr
        1041, // inet
        1561, // bit
        1563, // varbit
        3643, // tsvector
        3905, // int4range
        3907, // numrange
        3909, // tsrange
        3911, // tstzrange
        3913, // daterange
        3927, // int8range
    ];
}

/// How the text of a scalar (or of an array element) becomes JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    /// Integer digits, emitted as a number.
    Integer,
    /// `numeric`, `float4`, `float8`: a number, or a string for `NaN` and the infinities.
    Number,
    /// `t` / `f`.
    Bool,
    /// `json`: kept as text by PostgreSQL, so it may hold `\u0000`, which `jsonb` refuses.
    Json,
    /// `jsonb`.
    Jsonb,
    /// `timestamptz`, converted to UTC.
    TimestampTz,
    /// `timestamp`.
    Timestamp,
    /// Everything else: the text as a JSON string.
    Text,
}

/// The conversion for a column type: a scalar, or a one-or-more-dimensional array of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Scalar(Scalar),
    Array(Scalar),
}

fn kind(type_oid: Oid) -> Kind {
    use oid::*;
    match type_oid.0 {
        INT2 | INT4 | INT8 | OID => Kind::Scalar(Scalar::Integer),
        NUMERIC | FLOAT4 | FLOAT8 => Kind::Scalar(Scalar::Number),
        BOOL => Kind::Scalar(Scalar::Bool),
        JSON => Kind::Scalar(Scalar::Json),
        JSONB => Kind::Scalar(Scalar::Jsonb),
        TIMESTAMPTZ => Kind::Scalar(Scalar::TimestampTz),
        TIMESTAMP => Kind::Scalar(Scalar::Timestamp),
        INT2_ARRAY | INT4_ARRAY | INT8_ARRAY | OID_ARRAY => Kind::Array(Scalar::Integer),
        NUMERIC_ARRAY | FLOAT4_ARRAY | FLOAT8_ARRAY => Kind::Array(Scalar::Number),
        BOOL_ARRAY => Kind::Array(Scalar::Bool),
        JSON_ARRAY => Kind::Array(Scalar::Json),
        JSONB_ARRAY => Kind::Array(Scalar::Jsonb),
        TIMESTAMPTZ_ARRAY => Kind::Array(Scalar::TimestampTz),
        TIMESTAMP_ARRAY => Kind::Array(Scalar::Timestamp),
        TEXT_ARRAY | VARCHAR_ARRAY | BPCHAR_ARRAY | NAME_ARRAY | UUID_ARRAY | DATE_ARRAY
        | TIME_ARRAY | TIMETZ_ARRAY | INTERVAL_ARRAY | BYTEA_ARRAY => Kind::Array(Scalar::Text),
        array if STRING_ARRAYS.contains(&array) => Kind::Array(Scalar::Text),
        // Already ISO 8601 (or hex for bytea) under the pinned settings.
        TEXT | VARCHAR | BPCHAR | NAME | UUID | DATE | TIME | TIMETZ | INTERVAL | BYTEA => {
            Kind::Scalar(Scalar::Text)
        }
        // Every type this module does not know: enum, domain, composite, range, user arrays, …
        _ => Kind::Scalar(Scalar::Text),
    }
}

/// Appends the JSON text for one text-format value of the type `type_oid` to `out`.
///
/// `text` is the value as pgoutput sends it in a `t` column (PostgreSQL's text output under the
/// replication connection's pinned session settings). Exactly one JSON value is appended; see
/// the [module documentation](crate::value) for the mapping. Text that does not fit the type's rule is
/// appended as a JSON string, so this never fails.
///
/// ```
/// use bemi_core::{value::text_to_json, Oid};
///
/// let mut out = String::new();
/// text_to_json(Oid(20), "9007199254740993", &mut out); // int8
/// out.push(',');
/// text_to_json(Oid(1184), "2024-01-02 03:04:05.5+05:30", &mut out); // timestamptz
/// out.push(',');
/// text_to_json(Oid(1009), r#"{"a,b",NULL}"#, &mut out); // text[]
/// assert_eq!(out, r#"9007199254740993,"2024-01-01T21:34:05.500000Z",["a,b",null]"#);
/// ```
pub fn text_to_json(type_oid: Oid, text: &str, out: &mut String) {
    match kind(type_oid) {
        Kind::Scalar(scalar) => scalar_to_json(scalar, text, out),
        Kind::Array(element) => array_to_json(element, text, out),
    }
}

fn scalar_to_json(scalar: Scalar, text: &str, out: &mut String) {
    match scalar {
        Scalar::Integer => number_or_string(text, true, out),
        Scalar::Number => number_or_string(text, false, out),
        Scalar::Bool => match text {
            "t" => out.push_str("true"),
            "f" => out.push_str("false"),
            _ => push_json_string(text, out),
        },
        Scalar::Json => {
            // `json` keeps its input text; a `\u0000` escape or a number beyond `numeric`'s
            // range in it would make PostgreSQL's `jsonb` (the `changes` columns) refuse the
            // whole row.
            if is_valid_json(text) && !contains_nul_escape(text) && numbers_fit_numeric(text) {
                out.push_str(text);
            } else {
                push_json_string(text, out);
            }
        }
        Scalar::Jsonb => {
            if is_valid_json(text) {
                out.push_str(text);
            } else {
                push_json_string(text, out);
            }
        }
        Scalar::TimestampTz => match parse_timestamptz(text.as_bytes()) {
            Some(utc) => push_iso_datetime(&utc, true, out),
            None => push_json_string(text, out),
        },
        Scalar::Timestamp => match parse_timestamp(text.as_bytes()) {
            Some(naive) => push_iso_datetime(&naive, false, out),
            None => push_json_string(text, out),
        },
        Scalar::Text => push_json_string(text, out),
    }
}

// ---------------------------------------------------------------------------------------------
// Strings

/// Appends `text` as a JSON string literal, escaped by serde_json when it needs escaping.
pub fn push_json_string(text: &str, out: &mut String) {
    // Most values need no escaping (JSON escapes only `"`, `\` and control characters).
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(text.len() + 2);
        out.push('"');
        out.push_str(text);
        out.push('"');
        return;
    }
    let start = out.len();
    if serde_json::to_writer(StringWriter(out), text).is_err() {
        // Unreachable: `StringWriter` never fails. Keep the output well-formed regardless.
        out.truncate(start);
        out.push_str("\"\"");
    }
}

/// `io::Write` into a `String`, so serde_json's escaper can append without an intermediate
/// buffer. serde_json writes a string literal as slices of the input cut at ASCII escape points,
/// plus ASCII escapes, so every chunk is valid UTF-8.
struct StringWriter<'a>(&'a mut String);

impl io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(chunk) => self.0.push_str(chunk),
            Err(_) => self.0.push_str(&String::from_utf8_lossy(buf)),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers

fn number_or_string(text: &str, integer_only: bool, out: &mut String) {
    if is_json_number(text, integer_only) {
        out.push_str(text);
    } else {
        // Includes `NaN`, `Infinity` and `-Infinity`.
        push_json_string(text, out);
    }
}

/// Whether `text` is a number by RFC 8259's grammar (`-? (0 | [1-9][0-9]*) (. [0-9]+)?
/// ([eE] [+-]? [0-9]+)?`, without fraction and exponent if `integer_only`) that serde_json can
/// represent (magnitude within `f64` range; it rejects larger ones as "number out of range").
fn is_json_number(text: &str, integer_only: bool) -> bool {
    let Some(number) = read_number(text.as_bytes(), 0) else {
        return false;
    };
    if number.end != text.len()
        || integer_only && (number.frac_digits.is_some() || number.exponent.is_some())
    {
        return false;
    }
    // The magnitude is below 10^(integer digits + exponent). Anything that might come near
    // f64::MAX (about 1.8e308) is asked of serde_json itself, whose approximate parsing already
    // overflows on some values just below it. Tiny magnitudes just round to zero in serde_json.
    number.int_digits + number.exponent.unwrap_or(0) <= 308
        || serde_json::from_str::<f64>(text).is_ok()
}

/// The parts of a JSON number.
struct NumberParts {
    /// Digits of the integer part; 0 for a lone `0`.
    int_digits: i64,
    /// Digits after the decimal point, if it has one.
    frac_digits: Option<i64>,
    /// The exponent, if it has one (clamped to ±1,000,000,000).
    exponent: Option<i64>,
    /// Where the number ends.
    end: usize,
}

/// Reads the JSON number (RFC 8259 grammar) starting at `start`; `None` when none does.
fn read_number(bytes: &[u8], start: usize) -> Option<NumberParts> {
    let mut i = start + usize::from(bytes.get(start) == Some(&b'-'));
    let int_start = i;
    let int_is_zero = match bytes.get(i) {
        Some(b'0') => {
            i += 1;
            true
        }
        Some(b'1'..=b'9') => {
            i = skip_digits(bytes, i + 1);
            false
        }
        _ => return None,
    };
    let int_digits = if int_is_zero {
        0
    } else {
        (i - int_start) as i64
    };
    let mut frac_digits = None;
    if bytes.get(i) == Some(&b'.') {
        let frac_start = i + 1;
        i = skip_digits(bytes, frac_start);
        if i == frac_start {
            return None;
        }
        frac_digits = Some((i - frac_start) as i64);
    }
    let mut exponent = None;
    if let Some(b'e' | b'E') = bytes.get(i) {
        i += 1;
        let negative = bytes.get(i) == Some(&b'-');
        i += usize::from(matches!(bytes.get(i), Some(b'+' | b'-')));
        let exp_start = i;
        let mut magnitude: i64 = 0;
        while let Some(&digit @ b'0'..=b'9') = bytes.get(i) {
            magnitude = (magnitude * 10 + i64::from(digit - b'0')).min(1_000_000_000);
            i += 1;
        }
        if i == exp_start {
            return None;
        }
        exponent = Some(if negative { -magnitude } else { magnitude });
    }
    Some(NumberParts {
        int_digits,
        frac_digits,
        exponent,
        end: i,
    })
}

fn skip_digits(bytes: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = bytes.get(i) {
        i += 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// JSON documents

/// The deepest nesting of arrays and objects kept as a JSON document; a deeper one is kept as
/// its text, a JSON string.
///
/// PostgreSQL parses `json` and `jsonb` recursively, within `max_stack_depth`: with the default
/// 2 MB, PostgreSQL 15 accepts about 12,000 levels and refuses 15,000 ("stack depth limit
/// exceeded"). The `changes` table's `jsonb` columns must accept every row the tracker writes,
/// or it would retry that row forever, so the limit stays below what a default server accepts
/// (a context message, unlike a `jsonb` value, was never parsed by PostgreSQL). Checking never
/// recurses, so a hostile document of any depth is safe.
pub(crate) const MAX_JSON_DEPTH: usize = 10_000;

/// What keeps `text` from being stored as a JSON document, or `None` when nothing does: it is
/// not one JSON value, it is nested deeper than [`MAX_JSON_DEPTH`], or it has a number beyond
/// `f64` range (which `serde_json::Value` refuses). Nothing here recurses.
pub(crate) fn json_problem(text: &str) -> Option<String> {
    // Parsing a `RawValue` only skips over the value, without recursion or a depth limit.
    if let Err(e) = serde_json::from_str::<&serde_json::value::RawValue>(text) {
        return Some(format!("not valid JSON: {e}"));
    }
    if nesting_depth(text) > MAX_JSON_DEPTH {
        return Some(format!(
            "nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"
        ));
    }
    let fits_f64 = |number: &NumberParts, digits: &str| {
        number.int_digits + number.exponent.unwrap_or(0) <= 308
            || serde_json::from_str::<f64>(digits).is_ok()
    };
    if !every_number(text, fits_f64) {
        return Some("a number is beyond the range of a double".to_owned());
    }
    None
}

fn is_valid_json(text: &str) -> bool {
    json_problem(text).is_none()
}

/// The deepest nesting of arrays and objects in the valid JSON text `json`.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut bytes = json.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'"' => skip_string(&mut bytes),
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Moves `bytes` past the end of the JSON string whose opening quote was just read.
fn skip_string(bytes: &mut impl Iterator<Item = u8>) {
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                bytes.next();
            }
            b'"' => return,
            _ => {}
        }
    }
}

/// Whether a string of the valid JSON text `json` holds `\u0000`, which `jsonb` refuses (a raw
/// NUL cannot be in valid JSON).
pub(crate) fn contains_nul_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            if bytes.get(i + 1..i + 6) == Some(b"u0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// The most digits `numeric`, which `jsonb` stores numbers as, holds before the decimal point,
/// and after it.
const NUMERIC_MAX_INT_DIGITS: i64 = 131_072;
const NUMERIC_MAX_SCALE: i64 = 16_383;

/// Whether every number in the valid JSON text `json` fits `numeric`, counting the digits its
/// exponent implies: `json` accepts any number text, and one like `1e-20000` makes `jsonb`
/// refuse the whole document ("value overflows numeric format").
pub(crate) fn numbers_fit_numeric(json: &str) -> bool {
    every_number(json, |number, _| {
        let exponent = number.exponent.unwrap_or(0);
        number.int_digits + exponent <= NUMERIC_MAX_INT_DIGITS
            && number.frac_digits.unwrap_or(0) - exponent <= NUMERIC_MAX_SCALE
    })
}

/// Whether `fits` holds for every number (its parts and its text) outside the strings of the
/// valid JSON text `json`.
fn every_number(json: &str, fits: impl Fn(&NumberParts, &str) -> bool) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => match read_number(bytes, i) {
                Some(number) => {
                    if !fits(&number, json.get(i..number.end).unwrap_or_default()) {
                        return false;
                    }
                    i = number.end;
                }
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Timestamps

/// Parses ISO `YYYY-MM-DD HH:MM:SS[.f{1,6}]±HH[:MM[:SS]]` into UTC.
fn parse_timestamptz(bytes: &[u8]) -> Option<NaiveDateTime> {
    let (local, rest) = parse_datetime(bytes)?;
    let offset = parse_utc_offset(rest)?;
    let utc = if offset == 0 {
        local
    } else {
        FixedOffset::east_opt(offset)?
            .from_local_datetime(&local)
            .single()?
            .naive_utc()
    };
    // RFC 3339 has four-digit years; year 0 would be 1 BC.
    (1..=9999).contains(&utc.year()).then_some(utc)
}

/// Parses ISO `YYYY-MM-DD HH:MM:SS[.f{1,6}]` with nothing after it (so not ` BC`).
fn parse_timestamp(bytes: &[u8]) -> Option<NaiveDateTime> {
    match parse_datetime(bytes)? {
        (naive, []) if naive.year() >= 1 => Some(naive),
        _ => None,
    }
}

/// Parses the leading `YYYY-MM-DD HH:MM:SS[.f{1,6}]` (`T` also accepted as the separator) and
/// returns what follows it.
fn parse_datetime(bytes: &[u8]) -> Option<(NaiveDateTime, &[u8])> {
    let (head, rest) = bytes.split_at_checked(19)?;
    let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2, b' ' | b'T', h1, h2, b':', i1, i2, b':', s1, s2] =
        *head
    else {
        return None;
    };
    let year = digits(&[y1, y2, y3, y4])?;
    let date = NaiveDate::from_ymd_opt(year as i32, digits(&[m1, m2])?, digits(&[d1, d2])?)?;
    let (hour, minute, second) = (digits(&[h1, h2])?, digits(&[i1, i2])?, digits(&[s1, s2])?);
    let (micros, rest) = match rest {
        [b'.', fraction @ ..] => {
            let len = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
            if !(1..=6).contains(&len) {
                return None;
            }
            let value = digits(&fraction[..len])?;
            (value * 10u32.pow(6 - len as u32), &fraction[len..])
        }
        _ => (0, rest),
    };
    // `second` is at most 59 here and `micros` below one million, so no leap seconds.
    let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micros)?;
    Some((date.and_time(time), rest))
}

/// Parses a whole `±HH[:MM[:SS]]` offset into seconds east of UTC.
fn parse_utc_offset(bytes: &[u8]) -> Option<i32> {
    let (sign, rest) = match bytes {
        [b'+', rest @ ..] => (1, rest),
        [b'-', rest @ ..] => (-1, rest),
        _ => return None,
    };
    let (h, m, s) = match *rest {
        [h1, h2] => (digits(&[h1, h2])?, 0, 0),
        [h1, h2, b':', m1, m2] => (digits(&[h1, h2])?, digits(&[m1, m2])?, 0),
        [h1, h2, b':', m1, m2, b':', s1, s2] => {
            (digits(&[h1, h2])?, digits(&[m1, m2])?, digits(&[s1, s2])?)
        }
        _ => return None,
    };
    if m > 59 || s > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60 + s) as i32)
}

/// The value of a short run of ASCII digits.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// Appends `"YYYY-MM-DDTHH:MM:SS[.ffffff][Z]"`, with six fractional digits when the fraction is
/// non-zero. The year must be within 1..=9999.
fn push_iso_datetime(dt: &NaiveDateTime, utc: bool, out: &mut String) {
    out.push('"');
    push_padded(dt.year().unsigned_abs(), 4, out);
    out.push('-');
    push_padded(dt.month(), 2, out);
    out.push('-');
    push_padded(dt.day(), 2, out);
    out.push('T');
    push_padded(dt.hour(), 2, out);
    out.push(':');
    push_padded(dt.minute(), 2, out);
    out.push(':');
    push_padded(dt.second(), 2, out);
    let micros = dt.nanosecond() / 1_000;
    if micros != 0 {
        out.push('.');
        push_padded(micros, 6, out);
    }
    if utc {
        out.push('Z');
    }
    out.push('"');
}

/// Appends the last `width` (at most 6) decimal digits of `value`, zero-padded.
fn push_padded(mut value: u32, width: usize, out: &mut String) {
    let mut buf = [b'0'; 6];
    let width = width.min(buf.len());
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend(buf[..width].iter().map(|&b| char::from(b)));
}

// ---------------------------------------------------------------------------------------------
// Arrays

/// PostgreSQL's `MAXDIM`: more dimensions than this is not an array PostgreSQL wrote.
const MAX_DIMENSIONS: usize = 6;

/// Converts an array literal (`array_out`'s form: nested `{…}` with `,`-separated elements,
/// double-quoted with backslash escapes where needed, and unquoted `NULL` for SQL NULL), or, if
/// it is malformed or has bounds (`[0:1]={…}`), appends the whole text as a string.
/// Appends a value of a user-defined array type: a JSON array of the elements' texts (as
/// [`text_to_json`] does for `text[]`).
pub fn user_array_to_json(text: &str, out: &mut String) {
    array_to_json(Scalar::Text, text, out);
}

fn array_to_json(element: Scalar, text: &str, out: &mut String) {
    let start = out.len();
    let mut parser = ArrayParser {
        text,
        pos: 0,
        element,
        scratch: String::new(),
    };
    if parser.parse(out).is_none() {
        out.truncate(start);
        push_json_string(text, out);
    }
}

/// A recursive-descent reader of one array literal that writes JSON as it goes.
struct ArrayParser<'a> {
    text: &'a str,
    pos: usize,
    element: Scalar,
    /// Unescaped element text, only used (and allocated) for elements with backslashes.
    scratch: String,
}

/// How an element was written, and where its unescaped text is.
enum Element {
    /// Unquoted and without escapes: `text[start..end]`, possibly `NULL`.
    Bare { start: usize, end: usize },
    /// Quoted without escapes: `text[start..end]`.
    Quoted { start: usize, end: usize },
    /// With escapes: in `scratch`.
    Escaped,
}

impl ArrayParser<'_> {
    fn parse(&mut self, out: &mut String) -> Option<()> {
        self.skip_whitespace();
        // `array_out` writes bounds (`[0:1]={…}`) only when a lower bound is not 1. A JSON
        // array cannot carry them, so such an array is kept as its text.
        if self.peek() == Some(b'[') {
            return None;
        }
        self.parse_level(1, out)?;
        self.skip_whitespace();
        (self.pos == self.text.len()).then_some(())
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// `array_isspace`: what `array_in` skips around elements.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c') = self.peek() {
            self.pos += 1;
        }
    }

    /// One `{…}` level, with the parser on its `{`.
    fn parse_level(&mut self, depth: usize, out: &mut String) -> Option<()> {
        if depth > MAX_DIMENSIONS {
            return None;
        }
        self.eat(b'{')?;
        out.push('[');
        self.skip_whitespace();
        if self.eat(b'}').is_some() {
            out.push(']');
            return Some(());
        }
        // A level holds either sub-arrays or elements, never both.
        let mut holds_arrays = None;
        loop {
            self.skip_whitespace();
            let is_array = self.peek()? == b'{';
            if *holds_arrays.get_or_insert(is_array) != is_array {
                return None;
            }
            if is_array {
                self.parse_level(depth + 1, out)?;
            } else {
                let element = self.parse_element()?;
                self.push_element(element, out)?;
            }
            self.skip_whitespace();
            match self.peek()? {
                b',' => out.push(','),
                b'}' => break,
                _ => return None,
            }
            self.pos += 1;
        }
        self.pos += 1;
        out.push(']');
        Some(())
    }

    fn parse_element(&mut self) -> Option<Element> {
        let bytes = self.text.as_bytes();
        if self.peek()? == b'"' {
            self.pos += 1;
            let start = self.pos;
            let mut run = start;
            let mut escaped = false;
            loop {
                match *bytes.get(self.pos)? {
                    b'"' => break,
                    b'\\' => {
                        self.start_escape(&mut escaped, start, run)?;
                        run = self.pos + 1;
                        self.pos = run + utf8_len(*bytes.get(run)?);
                    }
                    _ => self.pos += 1,
                }
            }
            let end = self.pos;
            self.pos += 1;
            if escaped {
                self.scratch.push_str(self.text.get(run..end)?);
                return Some(Element::Escaped);
            }
            return Some(Element::Quoted { start, end });
        }
        // Unquoted: up to the next `,` or `}`, with trailing whitespace dropped unless escaped.
        let start = self.pos;
        let mut run = start;
        let mut end = start;
        let mut escaped = false;
        loop {
            match *bytes.get(self.pos)? {
                b',' | b'}' => break,
                b'{' | b'"' => return None,
                b'\\' => {
                    self.start_escape(&mut escaped, start, run)?;
                    run = self.pos + 1;
                    self.pos = run + utf8_len(*bytes.get(run)?);
                    end = self.pos;
                }
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => self.pos += 1,
                _ => {
                    self.pos += 1;
                    end = self.pos;
                }
            }
        }
        if end == start {
            return None; // `{,}`, `{1,}`: an empty unquoted element is malformed.
        }
        if escaped {
            self.scratch.push_str(self.text.get(run..end.max(run))?);
            return Some(Element::Escaped);
        }
        Some(Element::Bare { start, end })
    }

    /// At a backslash: moves the text read so far (`start..run` on the first escape, the last
    /// unescaped run after that) into `scratch`.
    fn start_escape(&mut self, escaped: &mut bool, start: usize, run: usize) -> Option<()> {
        if !*escaped {
            *escaped = true;
            self.scratch.clear();
            self.scratch.push_str(self.text.get(start..self.pos)?);
        } else {
            self.scratch.push_str(self.text.get(run..self.pos)?);
        }
        Some(())
    }

    fn push_element(&self, element: Element, out: &mut String) -> Option<()> {
        let text = match element {
            Element::Bare { start, end } => {
                let text = self.text.get(start..end)?;
                if text.eq_ignore_ascii_case("NULL") {
                    out.push_str("null");
                    return Some(());
                }
                text
            }
            Element::Quoted { start, end } => self.text.get(start..end)?,
            Element::Escaped => &self.scratch,
        };
        scalar_to_json(self.element, text, out);
        Some(())
    }
}

/// The length of the UTF-8 sequence that starts with `lead` (1 for a stray continuation byte,
/// which `str` never starts a char with anyway).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Converts `text` after some existing output, checks that exactly one JSON value that
    /// `serde_json::Value` accepts (without its depth limit) was appended, and returns it.
    fn convert(type_oid: u32, text: &str) -> String {
        let mut out = String::from("[0,");
        text_to_json(Oid(type_oid), text, &mut out);
        assert!(out.starts_with("[0,"), "existing output was changed: {out}");
        let appended = out["[0,".len()..].to_owned();
        let checked = match nesting_depth(&appended) {
            0..=128 => serde_json::from_str::<serde_json::Value>(&appended).map(drop),
            _ => serde_json::from_str::<&serde_json::value::RawValue>(&appended).map(drop),
        };
        if let Err(e) = checked {
            panic!("oid {type_oid}, text {text:?}: {appended:?} is not JSON: {e}");
        }
        assert!(is_valid_json(&appended), "{appended:?}");
        appended
    }

    fn check(cases: &[(u32, &str, &str)]) {
        for &(type_oid, text, expected) in cases {
            assert_eq!(
                convert(type_oid, text),
                expected,
                "oid {type_oid}, text {text:?}"
            );
        }
    }

    #[test]
    fn integers_keep_their_digits() {
        check(&[
            (oid::INT2, "-32768", "-32768"),
            (oid::INT4, "0", "0"),
            (oid::INT4, "2147483647", "2147483647"),
            (oid::INT8, "9007199254740993", "9007199254740993"),
            (oid::INT8, "-9223372036854775808", "-9223372036854775808"),
            (oid::OID, "4294967295", "4294967295"),
            // Not an integer: kept as a string.
            (oid::INT4, "", r#""""#),
            (oid::INT4, "01", r#""01""#),
            (oid::INT4, "1.5", r#""1.5""#),
            (oid::INT4, "1e3", r#""1e3""#),
            (oid::INT4, "+1", r#""+1""#),
            (oid::INT4, " 1", r#"" 1""#),
            (oid::INT4, "-", r#""-""#),
        ]);
        let value: serde_json::Value =
            serde_json::from_str(&convert(oid::INT8, "9007199254740993")).expect("int8 is JSON");
        assert_eq!(value.as_u64(), Some(9_007_199_254_740_993));
    }

    #[test]
    fn numerics_keep_their_digits() {
        check(&[
            (
                oid::NUMERIC,
                "12345678901234567890.123456789",
                "12345678901234567890.123456789",
            ),
            (
                oid::NUMERIC,
                "-0.00000000000000000001",
                "-0.00000000000000000001",
            ),
            (oid::NUMERIC, "42", "42"),
            (oid::NUMERIC, "1.50", "1.50"),
            (oid::NUMERIC, "NaN", r#""NaN""#),
            (oid::NUMERIC, "Infinity", r#""Infinity""#),
            (oid::NUMERIC, "-Infinity", r#""-Infinity""#),
            (oid::NUMERIC, ".5", r#"".5""#),
            (oid::NUMERIC, "5.", r#""5.""#),
        ]);
        // Beyond f64 range serde_json refuses the number, so the digits go in a string.
        let huge = format!("1{}", "0".repeat(400));
        assert_eq!(convert(oid::NUMERIC, &huge), format!("\"{huge}\""));
        let tiny = format!("0.{}1", "0".repeat(400));
        assert_eq!(convert(oid::NUMERIC, &tiny), tiny);
        let e308 = format!("1{}", "0".repeat(308));
        assert_eq!(convert(oid::NUMERIC, &e308), e308);
        // serde_json's approximate parsing overflows on this one, although it is below f64::MAX.
        let near_max = format!("17976931348623157{}", "0".repeat(292));
        assert_eq!(convert(oid::NUMERIC, &near_max), format!("\"{near_max}\""));
    }

    #[test]
    fn floats_as_postgres_printed_them() {
        check(&[
            (oid::FLOAT8, "0.1", "0.1"),
            (oid::FLOAT8, "1e+100", "1e+100"),
            (oid::FLOAT8, "-1.5e-07", "-1.5e-07"),
            (oid::FLOAT8, "1e-05", "1e-05"),
            (oid::FLOAT8, "1e+20", "1e+20"),
            (oid::FLOAT8, "-0", "-0"),
            (
                oid::FLOAT8,
                "1.7976931348623157e+308",
                "1.7976931348623157e+308",
            ),
            (oid::FLOAT8, "5e-324", "5e-324"),
            (oid::FLOAT8, "NaN", r#""NaN""#),
            (oid::FLOAT8, "Infinity", r#""Infinity""#),
            (oid::FLOAT8, "-Infinity", r#""-Infinity""#),
            (oid::FLOAT4, "0.1", "0.1"),
            (oid::FLOAT4, "1e+38", "1e+38"),
            (oid::FLOAT4, "3.4028235e+38", "3.4028235e+38"),
            (oid::FLOAT4, "-Infinity", r#""-Infinity""#),
            // Not JSON numbers (or out of f64 range): strings.
            (oid::FLOAT8, "1e", r#""1e""#),
            (oid::FLOAT8, "1e+", r#""1e+""#),
            (oid::FLOAT8, "inf", r#""inf""#),
            (oid::FLOAT8, "1e309", r#""1e309""#),
            (
                oid::FLOAT8,
                "1e99999999999999999999",
                r#""1e99999999999999999999""#,
            ),
            (
                oid::FLOAT8,
                "1e-99999999999999999999",
                "1e-99999999999999999999",
            ),
            (oid::FLOAT8, "0e99999", "0e99999"),
        ]);
    }

    #[test]
    fn booleans() {
        check(&[
            (oid::BOOL, "t", "true"),
            (oid::BOOL, "f", "false"),
            (oid::BOOL, "true", r#""true""#),
            (oid::BOOL, "", r#""""#),
        ]);
    }

    #[test]
    fn numbers_fit_numeric_as_postgresql_15_decides() {
        // Each checked against `SELECT '<text>'::json::jsonb` on PostgreSQL 15.
        for fits in [
            "[1e-16383]",
            "[1e131071]",
            "[1e1000]",
            "[-0.5, 12.25e3, 0]",
            r#"{"1e-99999": "1e-99999"}"#,
            r#"["a\"1e-99999"]"#,
        ] {
            assert!(numbers_fit_numeric(fits), "{fits}");
        }
        for overflows in [
            "[1e-16384]",
            "[1e-20000]",
            "[0e-99999]",
            "[1e131072]",
            "[0.00000000001e-16380]",
            "[1e-99999999999999999999999]",
            r#"{"a": [1, {"b": 1E+999999}]}"#,
        ] {
            assert!(!numbers_fit_numeric(overflows), "{overflows}");
        }
    }

    #[test]
    fn json_documents_are_nested() {
        check(&[
            (
                oid::JSONB,
                r#"{"a": {"b": [1, 2.5, null, true, "x\"y"]}, "c": 9007199254740993}"#,
                r#"{"a": {"b": [1, 2.5, null, true, "x\"y"]}, "c": 9007199254740993}"#,
            ),
            (oid::JSONB, "[]", "[]"),
            (oid::JSONB, r#""just a string""#, r#""just a string""#),
            (oid::JSONB, "3", "3"),
            (
                oid::JSON,
                " {\"a\" : 1 ,\n\"a\": 2} ",
                " {\"a\" : 1 ,\n\"a\": 2} ",
            ),
            (oid::JSON, r#"["\ud83d\ude00"]"#, r#"["\ud83d\ude00"]"#),
            // Not JSON (or not something serde_json or jsonb would take): the text as a string.
            (oid::JSONB, "{", r#""{""#),
            (oid::JSONB, "", r#""""#),
            (oid::JSONB, "[1] [2]", r#""[1] [2]""#),
            (oid::JSONB, "[1e999]", r#""[1e999]""#),
            (oid::JSONB, r#"{"a": 1e999}"#, r#""{\"a\": 1e999}""#),
            (oid::JSONB, "NaN", r#""NaN""#),
            (oid::JSON, r#"["\u0000"]"#, r#""[\"\\u0000\"]""#),
            // `json` keeps numbers `jsonb` (PostgreSQL's `numeric`) refuses: a string then.
            (oid::JSON, "[1e-20000]", r#""[1e-20000]""#),
            (oid::JSON, r#"{"z": 0e-99999}"#, r#""{\"z\": 0e-99999}""#),
            (oid::JSON, "[1e-16383, 1e300]", "[1e-16383, 1e300]"),
        ]);
        // Deeper than serde_json's default limit of 128, within PostgreSQL's: a document.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(convert(oid::JSONB, &deep), deep);
        let deep_object = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert_eq!(convert(oid::JSON, &deep_object), deep_object);
        let deepest = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert_eq!(convert(oid::JSONB, &deepest), deepest);
        // Deeper than the limit (and a hostile depth): the text, without exhausting the stack.
        for depth in [MAX_JSON_DEPTH + 1, 1_000_000] {
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(convert(oid::JSONB, &text), format!("\"{text}\""));
        }
        let bad_number = format!("{}1e999{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            convert(oid::JSONB, &bad_number),
            format!("\"{bad_number}\"")
        );
    }

    #[test]
    fn nul_escapes_are_found_only_in_strings_and_not_after_an_escaped_backslash() {
        assert!(contains_nul_escape(r#"{"a": "x\u0000"}"#));
        assert!(contains_nul_escape(r#"{"\u0000": 1}"#));
        assert!(!contains_nul_escape(r#"{"a": "\\u0000"}"#));
        assert!(!contains_nul_escape(r#"{"a": "\u0001"}"#));
    }

    #[test]
    fn timestamptz_is_rfc3339_utc() {
        check(&[
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05.123456+00",
                r#""2024-01-02T03:04:05.123456Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05+00",
                r#""2024-01-02T03:04:05Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05.5+00",
                r#""2024-01-02T03:04:05.500000Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05.000001+00",
                r#""2024-01-02T03:04:05.000001Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05.0+00",
                r#""2024-01-02T03:04:05Z""#,
            ),
            // Other offsets are converted.
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05.5+05:30",
                r#""2024-01-01T21:34:05.500000Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-12-31 23:00:00-08",
                r#""2025-01-01T07:00:00Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "1883-11-18 12:00:00-04:56:02",
                r#""1883-11-18T16:56:02Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-02-29 00:00:00+01",
                r#""2024-02-28T23:00:00Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "0001-01-01 00:00:00+00",
                r#""0001-01-01T00:00:00Z""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02T03:04:05+00",
                r#""2024-01-02T03:04:05Z""#,
            ),
            // Kept as PostgreSQL wrote them.
            (oid::TIMESTAMPTZ, "infinity", r#""infinity""#),
            (oid::TIMESTAMPTZ, "-infinity", r#""-infinity""#),
            (
                oid::TIMESTAMPTZ,
                "0044-03-15 12:00:00+00 BC",
                r#""0044-03-15 12:00:00+00 BC""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "20000-01-01 00:00:00+00",
                r#""20000-01-01 00:00:00+00""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "9999-12-31 23:00:00-05",
                r#""9999-12-31 23:00:00-05""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "0001-01-01 00:30:00+01",
                r#""0001-01-01 00:30:00+01""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05",
                r#""2024-01-02 03:04:05""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05.1234567+00",
                r#""2024-01-02 03:04:05.1234567+00""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05.+00",
                r#""2024-01-02 03:04:05.+00""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-02-30 03:04:05+00",
                r#""2024-02-30 03:04:05+00""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 24:00:00+00",
                r#""2024-01-02 24:00:00+00""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:60+00",
                r#""2024-01-02 03:04:60+00""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05+0530",
                r#""2024-01-02 03:04:05+0530""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05+05:60",
                r#""2024-01-02 03:04:05+05:60""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05+99",
                r#""2024-01-02 03:04:05+99""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "Tue Jan 02 03:04:05 2024 UTC",
                r#""Tue Jan 02 03:04:05 2024 UTC""#,
            ),
            (
                oid::TIMESTAMPTZ,
                "2024-01-02 03:04:05+00 ",
                r#""2024-01-02 03:04:05+00 ""#,
            ),
            (oid::TIMESTAMPTZ, "", r#""""#),
        ]);
    }

    #[test]
    fn timestamp_is_iso8601_without_zone() {
        check(&[
            (
                oid::TIMESTAMP,
                "2024-01-02 03:04:05.123456",
                r#""2024-01-02T03:04:05.123456""#,
            ),
            (
                oid::TIMESTAMP,
                "2024-01-02 03:04:05",
                r#""2024-01-02T03:04:05""#,
            ),
            (
                oid::TIMESTAMP,
                "2024-01-02 03:04:05.12",
                r#""2024-01-02T03:04:05.120000""#,
            ),
            (oid::TIMESTAMP, "infinity", r#""infinity""#),
            (
                oid::TIMESTAMP,
                "0044-03-15 12:00:00 BC",
                r#""0044-03-15 12:00:00 BC""#,
            ),
            (
                oid::TIMESTAMP,
                "2024-01-02 03:04:05+00",
                r#""2024-01-02 03:04:05+00""#,
            ),
            (
                oid::TIMESTAMP,
                "0000-01-01 00:00:00",
                r#""0000-01-01 00:00:00""#,
            ),
        ]);
    }

    #[test]
    fn other_types_are_strings_of_their_text() {
        check(&[
            (oid::DATE, "2024-01-02", r#""2024-01-02""#),
            (oid::DATE, "infinity", r#""infinity""#),
            (oid::TIME, "03:04:05.5", r#""03:04:05.5""#),
            (oid::TIMETZ, "03:04:05+05:30", r#""03:04:05+05:30""#),
            (
                oid::INTERVAL,
                "P1Y2M3DT4H5M6.789S",
                r#""P1Y2M3DT4H5M6.789S""#,
            ),
            (oid::BYTEA, r"\x0102ff", r#""\\x0102ff""#),
            (
                oid::UUID,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#,
            ),
            (oid::TEXT, "", r#""""#),
            (oid::TEXT, r#"say "hi" \ bye"#, r#""say \"hi\" \\ bye""#),
            (
                oid::TEXT,
                "tab\tnl\ncr\rbell\u{7}",
                r#""tab\tnl\ncr\rbell\u0007""#,
            ),
            (oid::TEXT, "héllo ✓ 😀", r#""héllo ✓ 😀""#),
            (oid::TEXT, "NULL", r#""NULL""#),
            (oid::VARCHAR, "v", r#""v""#),
            (oid::BPCHAR, "ab   ", r#""ab   ""#),
            (oid::NAME, "pg_class", r#""pg_class""#),
            // Unknown OIDs: composite, enum, range, inet, money, user types.
            (16_384, r#"(1,"a b")"#, r#""(1,\"a b\")""#),
            (16_385, "happy", r#""happy""#),
            (3904, "[1,10)", r#""[1,10)""#),
            (869, "192.168.0.1/32", r#""192.168.0.1/32""#),
            (790, "$1,000.00", r#""$1,000.00""#),
            (0, "x", r#""x""#),
            (u32::MAX, "{1,2}", r#""{1,2}""#),
            // An array of an unknown element type is not parsed.
            (
                1020,
                "{(1,1),(0,0);(2,2),(1,1)}",
                r#""{(1,1),(0,0);(2,2),(1,1)}""#,
            ),
        ]);
    }

    #[test]
    fn arrays_become_json_arrays() {
        check(&[
            (oid::INT4_ARRAY, "{}", "[]"),
            (oid::INT4_ARRAY, "{1,2,3}", "[1,2,3]"),
            (oid::INT4_ARRAY, "{{1,2},{3,4}}", "[[1,2],[3,4]]"),
            (oid::INT4_ARRAY, "{{{{{{1}}}}}}", "[[[[[[1]]]]]]"),
            // Bounds other than 1, which a JSON array cannot carry: the text, losslessly.
            (oid::INT4_ARRAY, "[0:1]={1,2}", r#""[0:1]={1,2}""#),
            (oid::NUMERIC_ARRAY, "[4:4]={NULL}", r#""[4:4]={NULL}""#),
            (
                oid::INT4_ARRAY,
                "[2:3][-1:0]={{1,2},{3,4}}",
                r#""[2:3][-1:0]={{1,2},{3,4}}""#,
            ),
            (oid::INT4_ARRAY, " { 1 , 2 } ", "[1,2]"),
            (oid::INT4_ARRAY, "{ }", "[]"),
            (oid::INT4_ARRAY, "{1,NULL,null}", "[1,null,null]"),
            (oid::INT8_ARRAY, "{9007199254740993}", "[9007199254740993]"),
            (oid::INT2_ARRAY, "{-1}", "[-1]"),
            (oid::OID_ARRAY, "{26}", "[26]"),
            (
                oid::TEXT_ARRAY,
                r#"{"a,b","c\"d","e\\f",NULL,"",plain,"NULL"," sp "}"#,
                r#"["a,b","c\"d","e\\f",null,"","plain","NULL"," sp "]"#,
            ),
            (
                oid::TEXT_ARRAY,
                r#"{{"a b",c},{NULL,"\\"}}"#,
                r#"[["a b","c"],[null,"\\"]]"#,
            ),
            (
                oid::TEXT_ARRAY,
                "{\"ä \\\"x\\\"\",\"tab\there\"}",
                r#"["ä \"x\"","tab\there"]"#,
            ),
            (oid::TEXT_ARRAY, r#"{"(1,\"a b\")"}"#, r#"["(1,\"a b\")"]"#),
            (
                oid::TEXT_ARRAY,
                r#"{"\é",a\,b,  x y  ,\ }"#,
                r#"["é","a,b","x y"," "]"#,
            ),
            (oid::TEXT_ARRAY, r#"{"\\\"\\"}"#, r#"["\\\"\\"]"#),
            (oid::VARCHAR_ARRAY, "{a}", r#"["a"]"#),
            (oid::BPCHAR_ARRAY, r#"{"a  "}"#, r#"["a  "]"#),
            (oid::NAME_ARRAY, "{pg_class}", r#"["pg_class"]"#),
            (
                oid::UUID_ARRAY,
                "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
                r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#,
            ),
            (
                oid::NUMERIC_ARRAY,
                "{12345678901234567890.123456789,NaN}",
                r#"[12345678901234567890.123456789,"NaN"]"#,
            ),
            (
                oid::FLOAT8_ARRAY,
                "{1.5,NaN,-Infinity,1e-05}",
                r#"[1.5,"NaN","-Infinity",1e-05]"#,
            ),
            (oid::FLOAT4_ARRAY, "{0.1}", "[0.1]"),
            (oid::BOOL_ARRAY, "{t,f,NULL}", "[true,false,null]"),
            (
                oid::JSONB_ARRAY,
                r#"{"{\"a\": [1, \"x\"]}",NULL,"[]",3}"#,
                r#"[{"a": [1, "x"]},null,[],3]"#,
            ),
            (
                oid::JSON_ARRAY,
                r#"{"{\"a\": 1}","not json"}"#,
                r#"[{"a": 1},"not json"]"#,
            ),
            (
                oid::TIMESTAMPTZ_ARRAY,
                r#"{"2024-01-02 03:04:05.5+00","2024-01-02 03:04:05+05:30",infinity}"#,
                r#"["2024-01-02T03:04:05.500000Z","2024-01-01T21:34:05Z","infinity"]"#,
            ),
            (
                oid::TIMESTAMP_ARRAY,
                r#"{"2024-01-02 03:04:05.123456"}"#,
                r#"["2024-01-02T03:04:05.123456"]"#,
            ),
            (
                oid::DATE_ARRAY,
                "{2024-01-02,NULL}",
                r#"["2024-01-02",null]"#,
            ),
            (oid::TIME_ARRAY, "{03:04:05}", r#"["03:04:05"]"#),
            (oid::TIMETZ_ARRAY, "{03:04:05+00}", r#"["03:04:05+00"]"#),
            (
                oid::INTERVAL_ARRAY,
                "{P1D,P1Y2M3DT4H5M6.789S}",
                r#"["P1D","P1Y2M3DT4H5M6.789S"]"#,
            ),
            (
                oid::BYTEA_ARRAY,
                r#"{"\\x0102",NULL}"#,
                r#"["\\x0102",null]"#,
            ),
            // Elements that do not fit the element type are strings, like scalars.
            (oid::INT4_ARRAY, "{1,abc}", r#"[1,"abc"]"#),
            (oid::INT4_ARRAY, r#"{"NULL"}"#, r#"["NULL"]"#),
        ]);
    }

    #[test]
    fn malformed_arrays_are_strings_of_their_text() {
        check(&[
            (oid::INT4_ARRAY, "", r#""""#),
            (oid::INT4_ARRAY, "{", r#""{""#),
            (oid::INT4_ARRAY, "}", r#""}""#),
            (oid::INT4_ARRAY, "{1,2", r#""{1,2""#),
            (oid::INT4_ARRAY, "{1,2}}", r#""{1,2}}""#),
            (oid::INT4_ARRAY, "{1,2} x", r#""{1,2} x""#),
            (oid::INT4_ARRAY, "{,}", r#""{,}""#),
            (oid::INT4_ARRAY, "{1,}", r#""{1,}""#),
            (oid::INT4_ARRAY, "{1,{2}}", r#""{1,{2}}""#),
            (oid::INT4_ARRAY, "{{1},2}", r#""{{1},2}""#),
            (oid::INT4_ARRAY, "{{{{{{{1}}}}}}}", r#""{{{{{{{1}}}}}}}""#),
            (oid::INT4_ARRAY, "[0:1]{1,2}", r#""[0:1]{1,2}""#),
            (oid::INT4_ARRAY, "[0:]={1,2}", r#""[0:]={1,2}""#),
            (oid::INT4_ARRAY, "[a:1]={1}", r#""[a:1]={1}""#),
            (oid::TEXT_ARRAY, r#"{"a}"#, r#""{\"a}""#),
            (oid::TEXT_ARRAY, r#"{"a"b}"#, r#""{\"a\"b}""#),
            (oid::TEXT_ARRAY, r#"{a"b"}"#, r#""{a\"b\"}""#),
            (oid::TEXT_ARRAY, r#"{"a\"#, r#""{\"a\\""#),
            (oid::TEXT_ARRAY, r"{a\", r#""{a\\""#),
            (oid::TEXT_ARRAY, "plain", r#""plain""#),
            (
                oid::JSONB_ARRAY,
                r#"{"{\"a\":1}""#,
                r#""{\"{\\\"a\\\":1}\"""#,
            ),
        ]);
        let deep = format!("{}1{}", "{".repeat(10_000), "}".repeat(10_000));
        assert_eq!(convert(oid::INT4_ARRAY, &deep), format!("\"{deep}\""));
    }

    #[test]
    fn output_is_appended() {
        let mut out = String::from("{\"a\":");
        text_to_json(Oid(oid::INT4_ARRAY), "{1,x,", &mut out);
        out.push_str(",\"b\":");
        text_to_json(Oid(oid::TEXT), "y", &mut out);
        out.push('}');
        assert_eq!(out, r#"{"a":"{1,x,","b":"y"}"#);
    }

    #[test]
    fn every_listed_oid_has_its_rule() {
        use oid::*;
        let scalars = [
            (BOOL, Scalar::Bool, BOOL_ARRAY),
            (BYTEA, Scalar::Text, BYTEA_ARRAY),
            (NAME, Scalar::Text, NAME_ARRAY),
            (INT8, Scalar::Integer, INT8_ARRAY),
            (INT2, Scalar::Integer, INT2_ARRAY),
            (INT4, Scalar::Integer, INT4_ARRAY),
            (TEXT, Scalar::Text, TEXT_ARRAY),
            (OID, Scalar::Integer, OID_ARRAY),
            (JSON, Scalar::Json, JSON_ARRAY),
            (FLOAT4, Scalar::Number, FLOAT4_ARRAY),
            (FLOAT8, Scalar::Number, FLOAT8_ARRAY),
            (BPCHAR, Scalar::Text, BPCHAR_ARRAY),
            (VARCHAR, Scalar::Text, VARCHAR_ARRAY),
            (DATE, Scalar::Text, DATE_ARRAY),
            (TIME, Scalar::Text, TIME_ARRAY),
            (TIMESTAMP, Scalar::Timestamp, TIMESTAMP_ARRAY),
            (TIMESTAMPTZ, Scalar::TimestampTz, TIMESTAMPTZ_ARRAY),
            (INTERVAL, Scalar::Text, INTERVAL_ARRAY),
            (TIMETZ, Scalar::Text, TIMETZ_ARRAY),
            (NUMERIC, Scalar::Number, NUMERIC_ARRAY),
            (UUID, Scalar::Text, UUID_ARRAY),
            (JSONB, Scalar::Jsonb, JSONB_ARRAY),
        ];
        for (scalar_oid, scalar, array_oid) in scalars {
            assert_eq!(
                kind(Oid(scalar_oid)),
                Kind::Scalar(scalar),
                "oid {scalar_oid}"
            );
            assert_eq!(kind(Oid(array_oid)), Kind::Array(scalar), "oid {array_oid}");
        }
    }

    /// Every OID with a rule, plus neighbours and a user type.
    const INTERESTING_OIDS: &[u32] = &[
        16, 17, 19, 20, 21, 23, 25, 26, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1186,
        1266, 1700, 2950, 3802, 199, 1000, 1001, 1003, 1005, 1007, 1009, 1014, 1015, 1016, 1021,
        1022, 1028, 1115, 1182, 1183, 1185, 1187, 1231, 1270, 2951, 3807, 0, 1020, 16_384,
    ];

    fn type_oids() -> impl Strategy<Value = u32> {
        prop_oneof![
            3 => proptest::sample::select(INTERESTING_OIDS),
            1 => any::<u32>(),
        ]
    }

    fn texts() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            // Array-literal-ish.
            r#"(\[[0-9:-]{1,4}\]=)?[{}",\\ NULLnul0-9a-zé.eE+-]{0,40}"#,
            // Number-ish.
            "-?[0-9]{0,3}(\\.[0-9]{0,3})?([eE][+-]?[0-9]{0,5})?",
            // Timestamp-ish.
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,7})?\
             ([+-][0-9]{2}(:[0-9]{2}){0,2})?( BC)?",
            // JSON-ish.
            r#"[\[\]{}":,0-9a-z\\ .eE+-]{0,30}"#,
        ]
    }

    /// Formats `x` the way float8out does with `extra_float_digits` > 0: shortest round-trip
    /// digits, exponent form (`1e+100`, `1.5e-07`) outside 1e-4 <= |x| < 1e15.
    fn postgres_float(x: f64) -> String {
        let abs = x.abs();
        if abs == 0.0 || (1e-4..1e15).contains(&abs) {
            return format!("{x}");
        }
        let sci = format!("{x:e}");
        let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` has an exponent");
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(digits) => ('-', digits),
            None => ('+', exponent),
        };
        format!("{mantissa}e{sign}{digits:0>2}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn finite_floats_stay_numbers(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let text = postgres_float(x);
            // serde_json's own parsing may overflow right below f64::MAX: strings there.
            if x.abs() < 1e308 {
                prop_assert_eq!(convert(oid::FLOAT8, &text), text);
            } else {
                convert(oid::FLOAT8, &text);
            }
        }

        #[test]
        fn timestamptz_matches_chrono(
            days in 0i64..3_652_059,
            micros_of_day in 0i64..86_400_000_000,
            offset in -57_599i32..=57_599,
        ) {
            let base = NaiveDate::from_ymd_opt(1, 1, 1).expect("date") .and_hms_opt(0, 0, 0).expect("time");
            let local = base + chrono::TimeDelta::days(days) + chrono::TimeDelta::microseconds(micros_of_day);
            // PostgreSQL's form: trailing fractional zeros dropped, offset minutes and seconds
            // only when non-zero.
            let mut text = local.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
            text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
            let abs = offset.unsigned_abs();
            text.push_str(&format!("{}{:02}", if offset < 0 { '-' } else { '+' }, abs / 3600));
            if abs % 3600 != 0 {
                text.push_str(&format!(":{:02}", abs / 60 % 60));
                if abs % 60 != 0 {
                    text.push_str(&format!(":{:02}", abs % 60));
                }
            }
            let utc = local - chrono::TimeDelta::seconds(offset.into());
            let expected = if !(1..=9999).contains(&utc.year()) {
                serde_json::to_string(&text).expect("string")
            } else if utc.nanosecond() == 0 {
                utc.format("\"%Y-%m-%dT%H:%M:%SZ\"").to_string()
            } else {
                utc.format("\"%Y-%m-%dT%H:%M:%S%.6fZ\"").to_string()
            };
            prop_assert_eq!(convert(oid::TIMESTAMPTZ, &text), expected, "text {}", text);
        }

        #[test]
        fn strings_are_escaped_like_serde_json(text in any::<String>()) {
            let mut out = String::new();
            push_json_string(&text, &mut out);
            prop_assert_eq!(out, serde_json::to_string(&text).expect("string"));
        }

        #[test]
        fn any_text_under_any_oid_is_one_json_value(type_oid in type_oids(), text in texts()) {
            convert(type_oid, &text);
        }

        #[test]
        fn text_arrays_round_trip(items in proptest::collection::vec(
            proptest::option::of(any::<String>()), 0..6,
        )) {
            // Quote every element the way array_out does, then expect the elements back.
            let mut literal = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    literal.push(',');
                }
                match item {
                    None => literal.push_str("NULL"),
                    Some(s) => {
                        literal.push('"');
                        for c in s.chars() {
                            if c == '"' || c == '\\' {
                                literal.push('\\');
                            }
                            literal.push(c);
                        }
                        literal.push('"');
                    }
                }
            }
            literal.push('}');
            let json = convert(oid::TEXT_ARRAY, &literal);
            let parsed: Vec<Option<String>> = serde_json::from_str(&json).expect("array");
            prop_assert_eq!(parsed, items);
        }
    }
}
