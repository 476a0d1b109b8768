//! [`Rules`] compiled for one table, as the stream describes it: what the decoder does with
//! each column and operation, decided once per Relation message instead of once per row.

use super::{named, HashKey, Rules};
use crate::change::Operation;
use crate::pgoutput::{ColumnValue, TupleData};
use crate::relation::RelationInfo;

/// What becomes of one column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnRule {
    /// Stored as it is.
    Keep,
    /// Left out of `before` and `after`.
    Drop,
    /// Replaced by [`MASKED`](super::MASKED).
    Mask,
    /// Replaced by its keyed hash.
    Hash,
}

/// The rules of one table.
#[derive(Debug, Clone)]
pub(crate) struct RelationRules {
    /// Whether the table's changes are recorded at all.
    pub(crate) tracked: bool,
    /// Per column in relation order; empty when every column is kept.
    columns: Vec<ColumnRule>,
    /// The operations recorded, as bits of [`bit`].
    operations: u8,
    /// Whether UPDATEs that change only dropped columns are skipped.
    skip_updates_of_dropped: bool,
    hash_key: Option<HashKey>,
}

fn bit(operation: Operation) -> u8 {
    match operation {
        Operation::Create => 1,
        Operation::Update => 2,
        Operation::Delete => 4,
        Operation::Truncate => 8,
        Operation::Message => 16,
    }
}

const ALL_OPERATIONS: u8 = 0xff;

impl RelationRules {
    /// Records every change of the table as it is.
    pub(crate) fn everything() -> Self {
        RelationRules {
            tracked: true,
            columns: Vec::new(),
            operations: ALL_OPERATIONS,
            skip_updates_of_dropped: false,
            hash_key: None,
        }
    }

    /// The rules of `relation`, from every [`TableRule`](super::TableRule) that matches it.
    pub(crate) fn compile(rules: &Rules, relation: &RelationInfo) -> Self {
        let (schema, table) = (relation.schema.as_str(), relation.table.as_str());
        let mut compiled = RelationRules::everything();
        compiled.tracked = rules.tracks(schema, table);
        let matching: Vec<_> = rules.rules_for(schema, table).collect();
        if !compiled.tracked || matching.is_empty() {
            return compiled;
        }
        for rule in &matching {
            if let Some(operations) = &rule.operations {
                compiled.operations &= operations.iter().fold(0, |bits, &o| bits | bit(o));
            }
        }
        let columns: Vec<ColumnRule> = relation
            .columns
            .iter()
            .enumerate()
            .map(|(index, column)| {
                let name = column.name.as_str();
                let dropped = matching.iter().any(|rule| {
                    named(&rule.ignore, name)
                        || rule.only.as_ref().is_some_and(|only| !named(only, name))
                });
                let key = relation.primary_key.contains(&index);
                let masked = matching.iter().any(|rule| named(&rule.mask, name));
                let hashed = matching.iter().any(|rule| named(&rule.hash, name));
                match (dropped, masked, hashed) {
                    (true, ..) if key => {
                        tracing::warn!(
                            table = %format!("{schema}.{table}"), column = %name,
                            "a rule leaves out a primary key column; it is kept, as every change \
                             must name its row"
                        );
                        ColumnRule::Keep
                    }
                    (true, ..) => ColumnRule::Drop,
                    (false, true, _) => ColumnRule::Mask,
                    (false, false, true) => ColumnRule::Hash,
                    (false, false, false) => ColumnRule::Keep,
                }
            })
            .collect();
        if let Some(index) = relation.primary_key.iter().find(|&&index| {
            matches!(
                columns.get(index),
                Some(ColumnRule::Mask | ColumnRule::Hash)
            )
        }) {
            tracing::warn!(
                table = %format!("{schema}.{table}"),
                column = %relation.columns[*index].name,
                "a rule masks or hashes a primary key column: the changes' primary_key holds the \
                 marker or hash too"
            );
        }
        compiled.skip_updates_of_dropped = columns.contains(&ColumnRule::Drop)
            && !matching.iter().any(|rule| rule.keep_updates_of_ignored);
        if columns.contains(&ColumnRule::Hash) {
            compiled.hash_key = rules.hash_key.clone();
        }
        if columns.iter().any(|&rule| rule != ColumnRule::Keep) {
            compiled.columns = columns;
        }
        compiled
    }

    /// What becomes of the values of column `index`.
    pub(crate) fn column(&self, index: usize) -> ColumnRule {
        self.columns.get(index).copied().unwrap_or(ColumnRule::Keep)
    }

    /// The key for [`ColumnRule::Hash`] columns (set whenever there are any: the rules were
    /// checked at start).
    pub(crate) fn hash_key(&self) -> Option<&HashKey> {
        self.hash_key.as_ref()
    }

    /// Whether changes of `operation` are recorded.
    pub(crate) fn records(&self, operation: Operation) -> bool {
        self.tracked && self.operations & bit(operation) != 0
    }

    /// Whether an UPDATE from the whole old row `old` to `new` changed only dropped columns,
    /// and is to be skipped. Compares the values as the server sent them: equal text is an
    /// equal stored value. A new value the server did not send (unchanged TOAST) is unchanged;
    /// an old one it did not send is unknown, so the UPDATE is kept.
    pub(crate) fn skips_update(&self, old: &TupleData, new: &TupleData) -> bool {
        self.skip_updates_of_dropped
            && old.columns.len() == new.columns.len()
            && old
                .columns
                .iter()
                .zip(&new.columns)
                .enumerate()
                .all(|(index, (old, new))| {
                    self.column(index) == ColumnRule::Drop
                        || match (old, new) {
                            (_, ColumnValue::UnchangedToast) => true,
                            (ColumnValue::UnchangedToast, _) => false,
                            (old, new) => old == new,
                        }
                })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Rules, TableRule};
    use super::*;
    use crate::relation::ColumnInfo;
    use crate::Oid;
    use bytes::Bytes;

    fn users() -> RelationInfo {
        let column = |name: &str| ColumnInfo {
            name: name.to_owned(),
            type_oid: Oid(25),
            replica_key: true,
            user_array: false,
        };
        RelationInfo {
            oid: Oid(1),
            schema: "public".to_owned(),
            table: "users".to_owned(),
            columns: ["id", "email", "password_digest", "api_token", "updated_at"]
                .map(column)
                .to_vec(),
            full_identity: true,
            primary_key: vec![0],
        }
    }

    fn tuple(values: &[Option<&'static str>]) -> TupleData {
        TupleData {
            columns: values
                .iter()
                .map(|value| match value {
                    Some(text) => ColumnValue::Text(Bytes::from_static(text.as_bytes())),
                    None => ColumnValue::UnchangedToast,
                })
                .collect(),
        }
    }

    #[test]
    fn matching_rules_add_up_and_the_key_is_never_dropped() {
        let rules = Rules::new()
            .table(TableRule::new("public.*").ignore(["updated_at", "id"]))
            .table(
                TableRule::new("public.users")
                    .mask(["password_digest"])
                    .hash(["*_token"])
                    .operations([Operation::Create, Operation::Update]),
            )
            .table(TableRule::new("public.*").operations([Operation::Update]))
            .hash_key(HashKey::new("sixteen bytes at least").unwrap());
        let compiled = RelationRules::compile(&rules, &users());
        let columns: Vec<ColumnRule> = (0..5).map(|i| compiled.column(i)).collect();
        use ColumnRule::*;
        assert_eq!(columns, [Keep, Keep, Mask, Hash, Drop]);
        assert!(compiled.records(Operation::Update));
        assert!(!compiled.records(Operation::Create));
        assert!(!compiled.records(Operation::Delete));
        assert!(compiled.hash_key().is_some());
    }

    #[test]
    fn only_keeps_the_named_columns_and_the_key() {
        let rules = Rules::new().table(TableRule::new("users").only(["email"]));
        let compiled = RelationRules::compile(&rules, &users());
        let kept: Vec<bool> = (0..5)
            .map(|i| compiled.column(i) == ColumnRule::Keep)
            .collect();
        assert_eq!(kept, [true, true, false, false, false]);
    }

    #[test]
    fn untracked_and_unmatched_tables() {
        let rules = Rules::new().track("app.*").ignore_table("app.secret*");
        assert!(rules.tracks("app", "users"));
        assert!(!rules.tracks("app", "secrets"));
        assert!(!rules.tracks("public", "users"));
        let compiled = RelationRules::compile(&rules, &users());
        assert!(!compiled.tracked);
        assert!(!compiled.records(Operation::Create));
        let everything = RelationRules::compile(&Rules::new(), &users());
        assert!(everything.tracked && everything.columns.is_empty());
    }

    #[test]
    fn updates_of_dropped_columns_only_are_skipped() {
        let rules = Rules::new().table(TableRule::new("users").ignore(["updated_at"]));
        let compiled = RelationRules::compile(&rules, &users());
        let old = tuple(&[Some("1"), Some("a@x"), Some("d"), Some("t"), Some("10:00")]);
        let touched = tuple(&[Some("1"), Some("a@x"), None, Some("t"), Some("10:01")]);
        assert!(compiled.skips_update(&old, &touched));
        let changed = tuple(&[Some("1"), Some("b@x"), None, Some("t"), Some("10:01")]);
        assert!(!compiled.skips_update(&old, &changed));
        // An old value the server did not send: unknown, kept.
        let unknown_old = tuple(&[Some("1"), Some("a@x"), Some("d"), None, Some("10:00")]);
        assert!(!compiled.skips_update(&unknown_old, &touched));
        let kept = RelationRules::compile(
            &Rules::new().table(
                TableRule::new("users")
                    .ignore(["updated_at"])
                    .keep_updates_of_ignored_columns(true),
            ),
            &users(),
        );
        assert!(!kept.skips_update(&old, &touched));
    }
}
