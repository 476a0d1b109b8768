//! `bemi setup`: prepare the source database.

use bemi_core::setup::SourceSetup;
use bemi_core::Result;

use crate::args::SetupArgs;

/// An optional dedicated role, printed with `--print-sql` (never created by `bemi setup`).
const ROLE_SQL: &str = "
-- Optional: a dedicated read-only role for the worker (set your own password), then run
-- bemi with DB_USER=bemi_tracker.
-- CREATE ROLE bemi_tracker WITH LOGIN REPLICATION PASSWORD 'change-me';
-- GRANT SELECT ON ALL TABLES IN SCHEMA public TO bemi_tracker;
-- ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO bemi_tracker;
";

pub(crate) async fn setup(args: SetupArgs) -> Result<()> {
    let setup =
        SourceSetup::new(&args.source.slot, &args.source.publication).tables(args.source.tables());
    if args.print_sql {
        print!("{}{ROLE_SQL}", setup.script());
        return Ok(());
    }
    let client = args.source.options()?.connect().await?;
    let report = setup.apply(&client).await?;
    let did = |done: bool| if done { "created" } else { "already there" };
    println!("wal_level: logical");
    println!(
        "publication {:?}: {}",
        args.source.publication,
        did(report.created_publication)
    );
    println!(
        "replication slot {:?}: {}",
        args.source.slot,
        did(report.created_slot)
    );
    if report.tables_without_full_identity.is_empty() {
        println!("replica identity: FULL on every tracked table");
    } else {
        println!(
            "replica identity: not FULL on {}",
            report.tables_without_full_identity.join(", ")
        );
    }
    Ok(())
}
