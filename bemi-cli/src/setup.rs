//! `bemi setup`: prepare the source database.

use std::sync::Arc;

use bemi_core::setup::SourceSetup;
use bemi_core::Result;

use crate::args::SetupArgs;

pub(crate) async fn setup(args: SetupArgs) -> Result<()> {
    let (rules, tables) =
        crate::config::rules_and_tables(args.rules.as_deref(), args.source.tables())?;
    let setup = SourceSetup::new(&args.source.slot, &args.source.publication)
        .tables(tables)
        .rules(Arc::new(rules));
    let options = args.source.options()?;
    if args.print_sql {
        print!(
            "{}{}",
            setup.script(),
            setup.roles_script(options.dbname(), &args.destination_schema)
        );
        return Ok(());
    }
    let client = options.connect().await?;
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
