//! What `bemi setup` installs runs as whoever creates a table, superusers included, so it must
//! not call anything a less privileged role could define; and error reports say each text once.

use bemi_core::setup::SourceSetup;
use bemi_core::Error;
use bemi_testkit::TestDatabase;

/// Functions a role with CREATE on `public` defines to catch a superuser's unqualified call:
/// each matches the call's argument types better than pg_catalog's variadic `format`, records
/// the call and makes the role a superuser.
fn decoys(attacker: &str) -> String {
    [
        "text, regclass",
        "text, name, name",
        "text, text, text",
        "text, text",
    ]
    .iter()
    .map(|args| {
        format!(
            "CREATE FUNCTION public.format({args}) RETURNS text LANGUAGE plpgsql AS $$
                 BEGIN
                   INSERT INTO public.decoy_calls VALUES ('format({args})');
                   ALTER ROLE {attacker} SUPERUSER;
                   RETURN pg_catalog.format($1, VARIADIC ARRAY[$2::text]);
                 END $$;"
        )
    })
    .collect()
}

#[tokio::test]
async fn a_role_with_create_on_public_gains_nothing_and_every_new_table_gets_full_identity() {
    let db = TestDatabase::create().await.expect("test database");
    let admin = db.connect().await.unwrap();
    let attacker = format!("{}_attacker", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {attacker} LOGIN;
             GRANT CREATE ON SCHEMA public TO {attacker};
             CREATE TABLE public.decoy_calls (decoy text);
             GRANT INSERT ON public.decoy_calls TO {attacker};
             CREATE TABLE existing (id int PRIMARY KEY, note text);"
        ))
        .await
        .unwrap();
    let attacker_sql = db.options().with_user(&attacker).connect().await.unwrap();
    attacker_sql
        .batch_execute(&decoys(&attacker))
        .await
        .unwrap();

    SourceSetup::new(db.slot(), db.publication())
        .apply(&admin)
        .await
        .expect("setup");

    // The superuser creates tables in every way there is, with the default search_path.
    admin
        .batch_execute(
            "CREATE TABLE plain (id int PRIMARY KEY, note text);
             CREATE TABLE made_as AS SELECT 1 AS id, 'a'::text AS note;
             SELECT 1 AS id, 'a'::text AS note INTO made_by_select_into;
             CREATE TABLE parted (id int, note text) PARTITION BY RANGE (id);
             CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);",
        )
        .await
        .unwrap();
    // And so does the attacker, in its own name.
    attacker_sql
        .batch_execute("CREATE TABLE public.attackers (id int, note text)")
        .await
        .unwrap();

    let calls: Vec<String> = admin
        .query("SELECT decoy FROM public.decoy_calls", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(calls, Vec::<String>::new(), "the decoys were called");
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&attacker],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "{attacker} became a superuser");

    let not_full: Vec<String> = admin
        .query(
            "SELECT relname::text FROM pg_class
             WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')
               AND relname <> 'decoy_calls' AND relreplident <> 'f' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        not_full,
        Vec::<String>::new(),
        "without REPLICA IDENTITY FULL"
    );

    // With a FOR ALL TABLES publication, a table without a replica identity refuses the
    // application's UPDATE and DELETE.
    for table in ["made_as", "made_by_select_into", "parted", "attackers"] {
        admin
            .batch_execute(&format!(
                "UPDATE {table} SET note = 'b'; DELETE FROM {table};"
            ))
            .await
            .unwrap_or_else(|e| panic!("{table}: {}", Error::from(e).report()));
    }
}

#[tokio::test]
async fn a_server_error_is_reported_once() {
    let db = TestDatabase::create().await.expect("test database");
    let sql = db.connect().await.unwrap();
    let server = Error::from(sql.batch_execute("SELECT 1/0").await.unwrap_err());
    // Wrapped as callers do: a message of its own that repeats the cause, with the cause kept.
    let wrapped = Error::new(server.kind(), server.message().to_owned()).with_source(server);
    for e in [
        &wrapped,
        std::error::Error::source(&wrapped)
            .and_then(|s| s.downcast_ref::<Error>())
            .unwrap(),
    ] {
        let report = e.report();
        assert_eq!(report.matches("division by zero").count(), 1, "{report}");
        assert!(report.contains("22012"), "{report}");
    }
    // The driver's error stays reachable.
    let mut source = std::error::Error::source(&wrapped);
    let mut found = false;
    while let Some(cause) = source {
        found |= cause.downcast_ref::<tokio_postgres::Error>().is_some();
        source = cause.source();
    }
    assert!(found, "the tokio_postgres error is in the source chain");
}

#[tokio::test]
async fn the_setup_refuses_objects_of_its_own_that_another_role_made_first() {
    let db = TestDatabase::create().await.expect("test database");
    let admin = db.connect().await.unwrap();
    let attacker = format!("{}_squatter", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {attacker} LOGIN; GRANT CREATE ON SCHEMA public TO {attacker};"
        ))
        .await
        .unwrap();
    // A table the superuser's key-recording trigger would insert into, with a trigger of the
    // attacker's that would then run as the superuser.
    let attacker_sql = db.options().with_user(&attacker).connect().await.unwrap();
    attacker_sql
        .batch_execute(
            "CREATE TABLE public._bemi_key_history (relid oid, lsn pg_lsn, table_schema text,
                                                     table_name text, key_columns text[],
                                                     recorded_at timestamptz DEFAULT now());",
        )
        .await
        .unwrap();
    let err = SourceSetup::new(db.slot(), db.publication())
        .apply(&admin)
        .await
        .unwrap_err();
    assert!(
        err.report().contains("belong(s) to another role"),
        "{}",
        err.report()
    );
    let triggers: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname = '_bemi_record_keys_trigger'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        triggers, 0,
        "nothing of the attacker's is wired to the superuser's DDL"
    );
}
