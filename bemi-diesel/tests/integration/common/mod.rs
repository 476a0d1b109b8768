//! The tracked test database of `bemi_testkit`, and Diesel's view of its `items` table.

#![allow(dead_code, unreachable_pub)]

pub use bemi_testkit::{
    assert_task_contexts, ctx, oversized_context, task_context, tricky_context, Tracked,
};

diesel::table! {
    items (id) {
        id -> Int4,
        task -> Int4,
        note -> Nullable<Text>,
    }
}

/// A libpq connection string for the test database, which Diesel (libpq) and diesel-async
/// (tokio-postgres) both read.
pub fn conninfo(h: &Tracked) -> String {
    h.db.options().to_url()
}

/// How many statements calling `pg_logical_emit_message` the session has prepared.
pub fn emit_statements_prepared() -> diesel::expression::SqlLiteral<diesel::sql_types::BigInt> {
    diesel::dsl::sql(
        "(SELECT count(*) FROM pg_prepared_statements
          WHERE statement LIKE '%pg_logical_emit_message%'
            AND statement NOT LIKE '%pg_prepared_statements%')",
    )
}
