//! A batch's rows as the server takes them: one array per column for `UNNEST`
//! ([`Columns`]), or a binary `COPY` ([`copy_rows`]).

use bytes::{BufMut as _, BytesMut};
use futures_util::{pin_mut, SinkExt as _};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::change::Change;
use crate::changes_table::{ChangesTable, RowId};
use crate::error::{Error, ErrorKind, Result};

const PRIMARY_KEY_CHARS: usize = 255;

/// The binary `COPY` data sent in one message, at least: a batch of small rows goes in one piece
/// (one write to the socket, not one per 4 kB), a batch of large values in pieces this big, so
/// the encoded copy of a batch never takes much memory.
const COPY_PIECE: usize = 1 << 20;

/// The signature, flags and header extension length that open binary `COPY` data.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The columns a binary `COPY` fills, in the order it sends them, with the type it sends; `id`
/// last, so a sink that leaves ids to the column's default sends one column less.
const COPY_COLUMNS: [(&str, Type); 16] = [
    ("primary_key", Type::VARCHAR),
    ("before", Type::JSONB),
    ("after", Type::JSONB),
    ("context", Type::JSONB),
    ("database", Type::VARCHAR),
    ("schema", Type::VARCHAR),
    ("table", Type::VARCHAR),
    ("operation", Type::TEXT),
    ("committed_at", Type::TIMESTAMPTZ),
    ("queued_at", Type::TIMESTAMPTZ),
    ("transaction_id", Type::INT8),
    ("position", Type::INT8),
    ("system_id", Type::INT8),
    ("commit_lsn", Type::INT8),
    ("ordinal", Type::INT4),
    ("id", Type::UUID),
];

/// The `COPY` statement of a batch, with `id` when the sink makes the ids.
pub(super) fn copy_statement(changes: &ChangesTable, ids: bool) -> String {
    let columns: Vec<String> = COPY_COLUMNS[..copy_width(ids)]
        .iter()
        .map(|(name, _)| crate::sql::quote_identifier(name))
        .collect();
    format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        changes.qualified(),
        columns.join(", ")
    )
}

fn copy_width(ids: bool) -> usize {
    COPY_COLUMNS.len() - usize::from(!ids)
}

/// Whether every column a binary `COPY` fills has the type it sends (`text` and `varchar`
/// are the same on the wire). A table of another shape (changed by hand, say) is written with
/// `INSERT`, which converts.
pub(super) async fn copy_fits(
    client: &tokio_postgres::Client,
    changes: &ChangesTable,
) -> Result<bool> {
    let rows = client
        .query(
            "SELECT attname::text, atttypid FROM pg_catalog.pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            &[&changes.qualified()],
        )
        .await?;
    let same_wire = |sent: &Type, oid: u32| {
        let text = [Type::TEXT, Type::VARCHAR];
        sent.oid() == oid || (text.contains(sent) && text.iter().any(|t| t.oid() == oid))
    };
    Ok(COPY_COLUMNS.iter().all(|(name, sent)| {
        rows.iter()
            .any(|row| row.get::<_, &str>(0) == *name && same_wire(sent, row.get(1)))
    }))
}

/// Sends `changes` as the rows of a binary `COPY` (`statement` prepared from
/// [`copy_statement`], with `id` when `ids` are given) on `client`, in a transaction the caller
/// began.
pub(super) async fn copy_rows(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    changes: &[Change],
    system_id: i64,
    ids: Option<&[RowId]>,
) -> Result<()> {
    let width = copy_width(ids.is_some());
    let sink = client.copy_in::<_, bytes::Bytes>(statement).await?;
    pin_mut!(sink);
    let mut data = BytesMut::with_capacity(COPY_PIECE);
    data.put_slice(COPY_HEADER);
    for (i, change) in changes.iter().enumerate() {
        let id = ids.map(|ids| ids[i]);
        let row: [&(dyn ToSql + Sync); 16] = [
            &primary_key(change),
            &Jsonb(change.before.as_json()),
            &Jsonb(change.after.as_json()),
            &Jsonb(change.context.as_str()),
            &change.database,
            &change.schema,
            &change.table,
            &change.operation.as_str(),
            &change.committed_at,
            &change.queued_at,
            &i64::from(change.transaction_id),
            &change.position.to_int8(),
            &system_id,
            &change.commit_lsn.to_int8(),
            &ordinal(change)?,
            &id,
        ];
        encode_row(&row[..width], &mut data)?;
        if data.len() >= COPY_PIECE {
            sink.send(data.split().freeze()).await?;
        }
    }
    // The trailer: a row of -1 fields.
    data.put_i16(-1);
    sink.send(data.freeze()).await?;
    sink.finish().await?;
    Ok(())
}

/// Appends one row of binary `COPY` data: the field count, then each field's length (-1 for
/// NULL) and value in the binary format of its column's type ([`COPY_COLUMNS`]).
fn encode_row(row: &[&(dyn ToSql + Sync)], data: &mut BytesMut) -> Result<()> {
    data.put_i16(row.len() as i16);
    for (value, (column, ty)) in row.iter().zip(&COPY_COLUMNS) {
        let at = data.len();
        data.put_i32(0);
        let length = match value.to_sql_checked(ty, data) {
            Ok(IsNull::Yes) => -1,
            Ok(IsNull::No) => i32::try_from(data.len() - at - 4).map_err(|_| {
                Error::new(
                    ErrorKind::Sink,
                    format!("a {column} value too long for a COPY field (2 GiB or more)"),
                )
            })?,
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!("could not encode the {column} column for COPY: {e}"),
                ))
            }
        };
        data[at..at + 4].copy_from_slice(&length.to_be_bytes());
    }
    Ok(())
}

/// The change's primary key as the `primary_key` column holds it: cut to its 255 characters,
/// with a warning.
fn primary_key(change: &Change) -> Option<&str> {
    change.primary_key.as_deref().map(|key| {
        match key.char_indices().nth(PRIMARY_KEY_CHARS) {
            Some((cut, _)) => {
                tracing::warn!(table = %change.table, "a primary key longer than 255 characters was cut to fit the primary_key column");
                &key[..cut]
            }
            None => key,
        }
    })
}

/// The change's ordinal as the `ordinal` column (integer) holds it.
fn ordinal(change: &Change) -> Result<i32> {
    i32::try_from(change.ordinal).map_err(|_| {
        Error::new(
            ErrorKind::Sink,
            "a transaction has more than 2^31 changes, more than the ordinal column holds",
        )
    })
}

/// The batch as one array per column, for `UNNEST`.
pub(super) struct Columns<'a> {
    pub(super) primary_key: Vec<Option<&'a str>>,
    pub(super) before: Vec<Jsonb<'a>>,
    pub(super) after: Vec<Jsonb<'a>>,
    /// Each change's context, as a 1-based index into `contexts`.
    pub(super) context_index: Vec<i32>,
    /// The distinct contexts of the batch, each once (a transaction's context is shared by
    /// all its rows, and may be large).
    pub(super) contexts: Vec<Jsonb<'a>>,
    pub(super) database: Vec<&'a str>,
    pub(super) schema: Vec<&'a str>,
    pub(super) table: Vec<&'a str>,
    pub(super) operation: Vec<&'static str>,
    pub(super) committed_at: Vec<chrono::DateTime<chrono::Utc>>,
    pub(super) queued_at: Vec<chrono::DateTime<chrono::Utc>>,
    pub(super) transaction_id: Vec<i64>,
    pub(super) position: Vec<i64>,
    pub(super) commit_lsn: Vec<i64>,
    pub(super) ordinal: Vec<i32>,
}

impl<'a> Columns<'a> {
    pub(super) fn new(changes: &'a [Change]) -> Result<Self> {
        let n = changes.len();
        let mut c = Columns {
            primary_key: Vec::with_capacity(n),
            before: Vec::with_capacity(n),
            after: Vec::with_capacity(n),
            context_index: Vec::with_capacity(n),
            contexts: Vec::new(),
            database: Vec::with_capacity(n),
            schema: Vec::with_capacity(n),
            table: Vec::with_capacity(n),
            operation: Vec::with_capacity(n),
            committed_at: Vec::with_capacity(n),
            queued_at: Vec::with_capacity(n),
            transaction_id: Vec::with_capacity(n),
            position: Vec::with_capacity(n),
            commit_lsn: Vec::with_capacity(n),
            ordinal: Vec::with_capacity(n),
        };
        let mut last_context = None;
        for change in changes {
            if last_context != Some(&change.context) {
                c.contexts.push(Jsonb(change.context.as_str()));
                last_context = Some(&change.context);
            }
            c.context_index.push(c.contexts.len() as i32);
            c.primary_key.push(primary_key(change));
            c.before.push(Jsonb(change.before.as_json()));
            c.after.push(Jsonb(change.after.as_json()));
            c.database.push(&change.database);
            c.schema.push(&change.schema);
            c.table.push(&change.table);
            c.operation.push(change.operation.as_str());
            c.committed_at.push(change.committed_at);
            c.queued_at.push(change.queued_at);
            c.transaction_id.push(i64::from(change.transaction_id));
            c.position.push(change.position.to_int8());
            c.commit_lsn.push(change.commit_lsn.to_int8());
            c.ordinal.push(ordinal(change)?);
        }
        Ok(c)
    }
}

/// JSON text sent as `jsonb` without re-encoding (binary format: version 1, then the text).
#[derive(Debug)]
pub(super) struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}
