//! Primary keys from the tracked database (`CatalogKeys`). The server streams a transaction as
//! soon as its commit is flushed, which can be a moment before other sessions see it committed:
//! the key of a table created in that transaction must still be found (a soak once stored the
//! rows of such a table with no key).

use std::time::Duration;

use bemi_core::{CatalogKeys, KeyLookup, Lsn, Oid};
use bemi_testkit::TestDatabase;

const LATER: Lsn = Lsn(u64::MAX / 2);

/// The oid of `table`, as `sql` sees it.
async fn oid(sql: &tokio_postgres::Client, table: &str) -> Oid {
    let oid: u32 = sql
        .query_one("SELECT $1::text::regclass::oid", &[&table])
        .await
        .unwrap()
        .get(0);
    Oid(oid)
}

#[tokio::test]
async fn a_table_whose_creation_is_not_visible_yet_gets_its_key_once_it_is() {
    let db = TestDatabase::create().await.unwrap();
    let creator = db.connect().await.unwrap();
    creator
        .batch_execute("BEGIN; CREATE TABLE late (id bigint, n int, PRIMARY KEY (n, id))")
        .await
        .unwrap();
    let oid = oid(&creator, "late").await;

    let mut keys = CatalogKeys::new(db.connect().await.unwrap());
    let lookup = tokio::spawn(async move { keys.primary_key(oid, LATER).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !lookup.is_finished(),
        "the lookup waits for the table to show"
    );
    creator.batch_execute("COMMIT").await.unwrap();
    assert_eq!(lookup.await.unwrap().unwrap(), ["n", "id"]);
}

#[tokio::test]
async fn a_table_without_a_key_has_none_and_a_missing_one_none_after_the_wait() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE keyless (v text)")
        .await
        .unwrap();
    let oid = oid(&sql, "keyless").await;
    let mut keys = CatalogKeys::new(db.connect().await.unwrap());

    let started = std::time::Instant::now();
    assert!(keys.primary_key(oid, LATER).await.unwrap().is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no wait for a table that shows"
    );

    sql.batch_execute("DROP TABLE keyless").await.unwrap();
    let started = std::time::Instant::now();
    assert!(keys.primary_key(oid, LATER).await.unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for it to show"
    );
}
