//! The context keys in use: what a filter form offers to pick from.

use crate::statement::Statement;
use crate::{ChangesTable, Database};
use bemi_core::Result;

/// The keys of the contexts of the `sample` newest changes of `database` (every database's
/// with `None`), sorted: what `user_id`, `request_id`, `endpoint`, … a filter can pick from.
///
/// It reads the newest changes through the `committed_at` index, so it stays fast on a
/// large trail; keys used only by older changes are not listed.
///
/// ```no_run
/// # async fn run(client: &tokio_postgres::Client) -> bemi_core::Result<()> {
/// use bemi_query::{context_keys, ChangesTable};
///
/// let keys = context_keys(client, &ChangesTable::default(), Some("app"), 1000).await?;
/// assert!(keys.iter().all(|key| !key.is_empty()));
/// # Ok(()) }
/// ```
pub async fn context_keys<D: Database>(
    mut db: D,
    changes: &ChangesTable,
    database: Option<&str>,
    sample: u32,
) -> Result<Vec<String>> {
    let mut statement = Statement::default();
    let database = match database {
        Some(name) => format!("WHERE database = {}", statement.text(name)),
        None => String::new(),
    };
    let sample = statement.int8(i64::from(sample));
    statement.set_sql(format!(
        "SELECT DISTINCT key AS _bemi_row \
         FROM (SELECT context FROM {} {database} ORDER BY committed_at DESC LIMIT {sample}) recent, \
              jsonb_object_keys(CASE jsonb_typeof(recent.context) \
                                WHEN 'object' THEN recent.context ELSE '{{}}' END) key \
         ORDER BY 1",
        changes.qualified()
    ));
    Ok(db.rows(&statement).await?.into_iter().flatten().collect())
}
