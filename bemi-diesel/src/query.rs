//! The statement that emits a context, as a Diesel query.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::Text;
use diesel::QueryResult;

/// `SELECT pg_logical_emit_message(true, '_bemi', $1)` ([`bemi_context::EMIT_SQL`]) with the
/// payload bound as `$1`.
///
/// Unlike `diesel::sql_query`, which Diesel never caches, this query has a static
/// [`QueryId`], so each connection's statement cache prepares it once: every later emit is a
/// single execute of the prepared statement, one round trip with no parsing or planning. With
/// diesel-async an uncached query costs a prepare round trip on every call.
#[derive(Debug, Clone)]
pub(crate) struct EmitQuery {
    payload: String,
}

impl EmitQuery {
    pub(crate) fn new(payload: String) -> Self {
        Self { payload }
    }
}

impl QueryFragment<Pg> for EmitQuery {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT pg_logical_emit_message(true, '_bemi', ");
        out.push_bind_param::<Text, _>(&self.payload)?;
        out.push_sql(")");
        Ok(())
    }
}

impl QueryId for EmitQuery {
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<Conn> diesel::RunQueryDsl<Conn> for EmitQuery {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_is_emit_sql_with_the_payload_bound() {
        let payload = r#"{"note":"it's */ /* \\ é"}"#;
        let query = EmitQuery::new(payload.to_owned());
        let debug = diesel::debug_query::<Pg, _>(&query).to_string();
        assert_eq!(
            debug,
            format!("{} -- binds: [{payload:?}]", bemi_context::EMIT_SQL)
        );
    }

    #[test]
    fn the_query_is_cached_by_type() {
        assert!(EmitQuery::query_id().is_some());
        assert!(EmitQuery::new(String::new())
            .is_safe_to_cache_prepared(&Pg)
            .unwrap());
    }
}
