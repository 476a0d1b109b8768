//! The `id` of new rows: time-ordered UUIDs (version 7, [RFC 9562](https://www.rfc-editor.org/rfc/rfc9562#name-uuid-version-7)),
//! so that the primary-key index grows at its right edge instead of taking inserts all over a
//! tree that no longer fits in memory, as random (version 4) ids do. Ids already stored, random
//! or not, stay valid: the column is a plain `uuid`.
//!
//! Layout: 48 bits of Unix time in milliseconds, the version, 12 bits of sub-millisecond time
//! (RFC 9562 method 3; raised by one when the clock has not moved, so ids of one generator
//! always increase), the variant, and 62 random bits.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BufMut as _;
use rand::{RngCore as _, SeedableRng as _};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// How the sink gives new rows of `changes` their `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RowIds {
    /// UUID version 7, made by the tracker: ordered by time (the default).
    #[default]
    TimeOrdered,
    /// The column's default, `gen_random_uuid()` (version 4), as Bemi's worker and earlier
    /// versions stored.
    Random,
}

/// Makes increasing version-7 ids.
#[derive(Debug)]
pub(crate) struct IdClock {
    /// The last id's 60 time bits: milliseconds << 12 | sub-millisecond fraction.
    last: u64,
    random: rand::rngs::StdRng,
}

impl IdClock {
    pub(crate) fn new() -> Self {
        IdClock {
            last: 0,
            random: rand::rngs::StdRng::from_entropy(),
        }
    }

    /// The next id: later than every id this clock made before.
    pub(crate) fn next_id(&mut self) -> RowId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let millis = u64::try_from(now.as_millis()).unwrap_or(u64::MAX) & 0xFFFF_FFFF_FFFF;
        // The nanoseconds within the millisecond, scaled to 12 bits.
        let fraction = u64::from(now.subsec_nanos() % 1_000_000) * 4096 / 1_000_000;
        let time = ((millis << 12) | fraction).max(self.last + 1);
        self.last = time;
        let random = self.random.next_u64();
        let high = ((time >> 12) << 16) | 0x7000 | (time & 0xFFF);
        let low = (random >> 2) | 0x8000_0000_0000_0000;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&high.to_be_bytes());
        id[8..].copy_from_slice(&low.to_be_bytes());
        RowId(id)
    }
}

/// A UUID sent to the server in its binary form (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RowId([u8; 16]);

impl ToSql for RowId {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_with_the_variant_and_the_current_millisecond() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let RowId(id) = IdClock::new().next_id();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(id[6] >> 4, 7, "version");
        assert_eq!(id[8] >> 6, 0b10, "variant");
        let mut millis = [0u8; 8];
        millis[2..].copy_from_slice(&id[..6]);
        let millis = u64::from_be_bytes(millis);
        assert!(
            (before..=after).contains(&millis),
            "{before} <= {millis} <= {after}"
        );
    }

    #[test]
    fn ids_of_one_clock_increase_and_differ_in_their_random_bits() {
        let mut clock = IdClock::new();
        let ids: Vec<RowId> = (0..100_000).map(|_| clock.next_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not increasing");
        let a = clock.next_id().0;
        let b = IdClock::new().next_id().0;
        assert_ne!(a[8..], b[8..], "two clocks made the same random bits");
    }
}
