//! The tracked database and the `changes` table the read commands (`changes`, `history`,
//! `revert`) work on: their connection flags and the open connections.

use bemi_core::{ConnectOptions, Result};
use bemi_query::{canonical_key, primary_key_columns, ChangesTable, TableName};
use clap::Args;
use tokio_postgres::Client;

use crate::args::{ConnectionArgs, DestinationArgs};

/// The tracked database (where rows are read and reverted) and where `changes` is.
#[derive(Debug, Clone, Args)]
pub(crate) struct DatabaseArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    destination: DestinationArgs,
}

/// Open connections to the tracked database and to the one holding `changes` (the same
/// connection when they are the same database).
pub(crate) struct Connections {
    source: Client,
    changes: Option<Client>,
    /// The `changes` table.
    pub(crate) table: ChangesTable,
    /// The tracked database's name: one `changes` table can hold the changes of several
    /// databases, and the commands read (and revert) only this one's.
    pub(crate) database: String,
}

impl Connections {
    /// `pk` as stored for `table`: a composite key typed with spaces is written without them.
    /// When the table is not in the tracked database's catalog (dropped since), as given.
    pub(crate) async fn stored_key(&self, table: &TableName, pk: &str) -> String {
        match primary_key_columns(self.source(), table).await {
            Ok(columns) => canonical_key(pk, columns.len()),
            Err(_) => pk.to_owned(),
        }
    }

    /// The tracked database.
    pub(crate) fn source(&self) -> &Client {
        &self.source
    }

    /// The tracked database, to write to.
    pub(crate) fn source_mut(&mut self) -> &mut Client {
        &mut self.source
    }

    /// The database holding `changes`.
    pub(crate) fn changes(&self) -> &Client {
        self.changes.as_ref().unwrap_or(&self.source)
    }
}

impl DatabaseArgs {
    /// The settings of the tracked database, of the database holding `changes` (the same
    /// unless DESTINATION_* says otherwise) and the `changes` table.
    pub(crate) fn settings(&self) -> Result<(ConnectOptions, ConnectOptions, ChangesTable)> {
        let source = self.connection.options()?;
        let changes = self.destination.options(&source)?;
        Ok((source, changes, self.destination.changes_table()))
    }

    /// Connects to the tracked database and, if elsewhere, the `changes` database.
    pub(crate) async fn connect(&self) -> Result<Connections> {
        let (source_options, changes_options, table) = self.settings()?;
        let source = source_options.connect().await?;
        let changes = match changes_options == source_options {
            true => None,
            false => Some(changes_options.connect().await?),
        };
        Ok(Connections {
            source,
            changes,
            table,
            database: source_options.dbname().to_owned(),
        })
    }
}
