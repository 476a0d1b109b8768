//! A table as the stream describes it: its columns, replica identity and primary key.
//!
//! pgoutput describes a table with a Relation message before its first change in each session
//! and again after every `ALTER TABLE`; changes refer to it by OID. A [`RelationInfo`] is built
//! from that message at that stream position, never from the live catalog, so a column added or
//! dropped mid-stream applies exactly from the change where it happened. Only the primary key
//! comes from elsewhere (see [`KeyLookup`](crate::KeyLookup)).

use std::collections::HashSet;

use crate::pgoutput;
use crate::Oid;

/// A table as the stream last described it: name, columns and primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    /// The table's OID.
    pub oid: Oid,
    /// The schema (`public` for unqualified tables).
    pub schema: String,
    /// The table name.
    pub table: String,
    /// The columns, in table order (dropped columns are absent).
    pub columns: Vec<ColumnInfo>,
    /// Whether the table has `REPLICA IDENTITY FULL`, so that old rows are complete.
    pub full_identity: bool,
    /// Positions in `columns` of the primary key, in key order; empty when the table has none.
    pub primary_key: Vec<usize>,
}

/// A column of a [`RelationInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column name.
    pub name: String,
    /// The column's type OID.
    pub type_oid: Oid,
    /// Whether the column is part of the replica identity (all columns with FULL).
    pub replica_key: bool,
    /// Whether the column's type is a user-defined array type (of an enum, a domain, an
    /// extension type such as `citext`, …): PostgreSQL names array types `_element`, and the
    /// stream's Type message gives that name. Its values become JSON arrays of strings.
    pub user_array: bool,
}

impl RelationInfo {
    /// The table a Relation message describes, with the primary key named by
    /// `primary_key_names` (in key order) and the array types the stream's Type messages named.
    ///
    /// When a key column is missing from the message (the table was altered or dropped since
    /// the key was looked up), or there is no key, the replica identity's columns are the key
    /// unless the identity is FULL; otherwise the table has no key.
    pub(crate) fn new(
        relation: &pgoutput::Relation,
        primary_key_names: &[String],
        user_arrays: &HashSet<Oid>,
    ) -> Self {
        let columns: Vec<ColumnInfo> = relation
            .columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.name.as_str().to_owned(),
                type_oid: c.type_oid,
                replica_key: c.is_key(),
                user_array: user_arrays.contains(&c.type_oid),
            })
            .collect();
        let full_identity = relation.replica_identity == pgoutput::ReplicaIdentity::Full;
        let position = |name: &String| columns.iter().position(|c| &c.name == name);
        // All key columns must be in the stream's description; if the catalog moved on (the
        // table was altered or dropped since), fall back to the replica identity.
        let mut primary_key: Vec<usize> = primary_key_names.iter().filter_map(position).collect();
        if primary_key.len() != primary_key_names.len() {
            primary_key.clear();
        }
        if primary_key.is_empty() && !full_identity {
            primary_key = (0..columns.len())
                .filter(|&i| columns.get(i).is_some_and(|c| c.replica_key))
                .collect();
        }
        RelationInfo {
            oid: relation.oid,
            // pgoutput sends an empty namespace for pg_catalog.
            schema: match relation.namespace.as_str() {
                "" => "pg_catalog".to_owned(),
                namespace => namespace.to_owned(),
            },
            table: relation.name.as_str().to_owned(),
            columns,
            full_identity,
            primary_key,
        }
    }
}
