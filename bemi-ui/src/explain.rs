//! Every page's queries use indexes on a trail of 1,000,000 changes: each is EXPLAINed on the
//! server and no partition that holds rows is read whole.

use std::collections::BTreeSet;

use bemi_query::{ChangeQuery, Cursor, TableName};
use bemi_testkit::trail::{fill_changes, start};

use crate::filters::Filters;
use crate::pages::{change, changes, record, status};
use crate::state::State;
use crate::UiConfig;

const CHANGES: i64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_uses_indexes_on_a_million_changes() {
    let (db, sql, tracker) = start("CREATE TABLE todo (id int PRIMARY KEY)").await;
    fill_changes(&sql, db.name(), CHANGES).await;
    let state = State::new(UiConfig::new(db.options())).expect("the UI's state");
    let filled: BTreeSet<String> = sql
        .query(
            "SELECT tableoid::regclass::text FROM changes GROUP BY 1 HAVING count(*) > 1000",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!filled.is_empty());

    let filtered = |set: &dyn Fn(&mut Filters)| {
        let mut filters = Filters::default();
        set(&mut filters);
        changes::page_query(&state, &filters, None).expect("a valid filter")
    };
    let middle: Cursor = format!(
        "{}-0",
        bemi_core::Lsn::from(1_099_511_627_776_u64 + 500_000 * 64)
    )
    .replace('/', "-")
    .parse()
    .expect("a cursor");
    let queries: Vec<(&str, ChangeQuery)> = vec![
        ("changes, no filter", filtered(&|_| {})),
        ("changes, operation", filtered(&|f| f.op = "DELETE".into())),
        (
            "changes, table",
            filtered(&|f| f.table = "public.bench_7".into()),
        ),
        ("changes, primary key", filtered(&|f| f.pk = "4242".into())),
        (
            "changes, since",
            filtered(&|f| f.since = "2000-01-01".into()),
        ),
        (
            "changes, until",
            filtered(&|f| f.until = "2000-01-01".into()),
        ),
        (
            "changes, context key",
            filtered(&|f| {
                f.key = "user_id".into();
                f.value = "7".into();
            }),
        ),
        (
            "changes, context JSON",
            filtered(&|f| f.context = r#"{"request_id": "r4242"}"#.into()),
        ),
        (
            "changes, transaction",
            filtered(&|f| f.transaction = middle.commit_lsn.to_string()),
        ),
        (
            "changes, second page",
            changes::page_query(&state, &Filters::default(), Some(middle)).unwrap(),
        ),
        ("change", change::transaction_query(&state, middle)),
        (
            "record",
            record::timeline_query(&state, &TableName::qualified("public", "bench_7"), "4207"),
        ),
    ];
    let mut whole = Vec::new();
    for (page, query) in &queries {
        let plan = query.explain(&sql).await.expect("EXPLAIN");
        for partition in &filled {
            if plan.contains(&format!("Seq Scan on {partition}")) {
                whole.push(format!("{page} reads {partition} whole:\n{plan}"));
            }
        }
    }
    assert!(whole.is_empty(), "{}", whole.join("\n\n"));
    let explain = format!("EXPLAIN {}", status::last_minute_sql(&state));
    let plan: Vec<String> = sql
        .query(&explain, &[&db.name()])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    for partition in &filled {
        assert!(
            !plan.contains(&format!("Seq Scan on {partition}")),
            "status:\n{plan}"
        );
    }
    tracker.shutdown().await.unwrap();
}
