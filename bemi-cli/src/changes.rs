//! `bemi changes`: the changes that match filters, a page at a time.

use bemi_core::Result;
use bemi_query::{Cursor, Order};
use clap::Args;
use serde::Serialize;

use crate::database::DatabaseArgs;
use crate::filter::FilterArgs;
use crate::output::{print_changes, print_json, ChangeJson};

/// `bemi changes`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChangesArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Most changes to show (a page); the next page's --cursor is printed after it
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Continue after this position (the cursor printed after the previous page)
    #[arg(long)]
    cursor: Option<Cursor>,
    /// Newest changes first
    #[arg(long)]
    desc: bool,
    /// Print JSON for scripts
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

pub(crate) async fn changes(args: ChangesArgs) -> Result<()> {
    let connections = args.database.connect().await?;
    let mut query = args
        .filter
        .filter_for(&connections)
        .await
        .query()
        .changes_table(connections.table.clone())
        .limit(args.limit)
        .order(match args.desc {
            true => Order::Desc,
            false => Order::Asc,
        });
    if let Some(cursor) = args.cursor {
        query = query.after(cursor);
    }
    let page = query.fetch_page(connections.changes()).await?;
    if args.json {
        #[derive(Serialize)]
        struct Output<'a> {
            changes: Vec<ChangeJson<'a>>,
            next_cursor: Option<Cursor>,
        }
        print_json(&Output {
            changes: page.changes.iter().map(ChangeJson::new).collect(),
            next_cursor: page.next,
        })?;
    } else {
        print_changes(&page.changes, true);
        if let Some(next) = page.next {
            println!("\nnext page: --cursor {next}");
        }
    }
    Ok(())
}
