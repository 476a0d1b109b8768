//! Reading the audit trail on a real server, through the tracker: history, filters, diff,
//! pagination and index use, time travel, and revert.

use bemi_core::Operation;
use bemi_query::{
    ChangeFilter, ChangeQuery, ConflictKind, Cursor, Order, Revert, StoredChange, TimeTravel,
};
use bemi_testkit::trail::{clock, rows, start, sync, write};
use serde_json::{json, Value};
use tokio_postgres::Client;

fn value(raw: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap()
}

fn afters(changes: &[StoredChange], column: &str) -> Vec<Value> {
    changes
        .iter()
        .map(|c| value(&c.after).get(column).cloned().unwrap_or(Value::Null))
        .collect()
}

#[tokio::test]
async fn history_filters_diff_and_pagination() {
    let (db, sql, tracker) = start(
        "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done bool NOT NULL DEFAULT false,
                            meta jsonb NOT NULL DEFAULT '{}');
         ALTER TABLE todo REPLICA IDENTITY FULL;
         CREATE TABLE bulk (id int PRIMARY KEY, n int);
         ALTER TABLE bulk REPLICA IDENTITY FULL;",
    )
    .await;

    write(
        &sql,
        json!({"request_id": "r1", "user": "alice"}),
        "INSERT INTO todo (id, task) VALUES (1, 'a0'), (2, 'b');",
    )
    .await;
    for i in 1..=5 {
        write(
            &sql,
            json!({"request_id": format!("u{i}"), "user": "alice", "step": i}),
            &format!(
                "UPDATE todo SET task = 'a{i}', done = {}, meta = '{{\"step\": {i}}}' WHERE id = 1;",
                i % 2 == 1
            ),
        )
        .await;
    }
    write(
        &sql,
        json!({"user": "bob"}),
        "DELETE FROM todo WHERE id = 1;",
    )
    .await;
    write(
        &sql,
        json!({"user": "carol"}),
        "INSERT INTO todo (id, task) VALUES (1, 'again');",
    )
    .await;
    // Enough rows for the planner to prefer indexes.
    write(
        &sql,
        json!({"job": "bulk"}),
        "INSERT INTO bulk SELECT g, g FROM generate_series(1, 3000) g;",
    )
    .await;
    sync(&sql, &tracker).await;

    // History of row 1: created, 5 updates, deleted, re-inserted; oldest first.
    let history = ChangeQuery::history("todo".parse().unwrap(), "1")
        .fetch(&sql)
        .await
        .unwrap();
    let operations: Vec<Operation> = history.iter().map(|c| c.operation).collect();
    use Operation::*;
    assert_eq!(
        operations,
        [Create, Update, Update, Update, Update, Update, Delete, Create]
    );
    assert_eq!(
        afters(&history, "task"),
        [
            json!("a0"),
            json!("a1"),
            json!("a2"),
            json!("a3"),
            json!("a4"),
            json!("a5"),
            Value::Null,
            json!("again")
        ]
    );
    assert!(history.windows(2).all(|w| w[0].cursor() < w[1].cursor()));
    assert!(history.iter().all(|c| c.primary_key.as_deref() == Some("1")
        && c.table == "todo"
        && c.schema == "public"
        && c.database == db.name()));
    assert_eq!(value(&history[6].context), json!({"user": "bob"}));
    assert_eq!(value(&history[6].before)["task"], json!("a5"));
    assert_eq!(value(&history[6].after), json!({}));
    // The schema-qualified name gives the same history; newest first reverses it.
    let qualified = ChangeQuery::history("public.todo".parse().unwrap(), "1")
        .order(Order::Desc)
        .fetch(&sql)
        .await
        .unwrap();
    let mut ids: Vec<&str> = qualified.iter().map(|c| c.id.as_str()).collect();
    ids.reverse();
    assert_eq!(
        ids,
        history.iter().map(|c| c.id.as_str()).collect::<Vec<_>>()
    );

    // Keyset pagination, both directions, gives the same changes.
    for order in [Order::Asc, Order::Desc] {
        let mut seen = Vec::new();
        let mut query = ChangeQuery::history("todo".parse().unwrap(), "1")
            .order(order)
            .limit(3);
        let mut pages = 0;
        loop {
            let page = query.clone().fetch_page(&sql).await.unwrap();
            pages += 1;
            seen.extend(page.changes.iter().map(|c| c.id.clone()));
            match page.next {
                Some(next) => {
                    let text = next.to_string();
                    query = query.after(text.parse::<Cursor>().unwrap());
                }
                None => break,
            }
        }
        assert_eq!(pages, 3, "8 changes in pages of 3");
        let mut expected: Vec<String> = history.iter().map(|c| c.id.clone()).collect();
        if order == Order::Desc {
            expected.reverse();
        }
        assert_eq!(seen, expected);
    }

    // Containment filters on each JSON column, and their negations.
    let todo = || ChangeFilter::new().table("todo");
    let count = |filter: ChangeFilter| {
        let sql = &sql;
        async move { filter.query().fetch(sql).await.unwrap() }
    };
    let all = count(todo()).await;
    assert_eq!(all.len(), 9);
    let a3 = count(todo().after_contains(json!({"task": "a3"}))).await;
    assert_eq!(afters(&a3, "task"), [json!("a3")]);
    let not_a3 = count(todo().after_not_contains(json!({"task": "a3"}))).await;
    assert_eq!(not_a3.len(), 8);
    assert!(not_a3
        .iter()
        .all(|c| value(&c.after)["task"] != json!("a3")));
    let from_a3 = count(todo().before_contains(json!({"task": "a3"}))).await;
    assert_eq!(afters(&from_a3, "task"), [json!("a4")]);
    let nested = count(todo().after_contains(json!({"meta": {"step": 2}}))).await;
    assert_eq!(afters(&nested, "task"), [json!("a2")]);
    let not_from_a3 = count(todo().before_not_contains(json!({"task": "a3"}))).await;
    assert_eq!(not_from_a3.len(), 8);
    let bob = count(todo().context_contains(json!({"user": "bob"}))).await;
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].operation, Delete);
    let not_alice = count(todo().context_not_contains(json!({"user": "alice"}))).await;
    assert_eq!(
        not_alice.iter().map(|c| c.operation).collect::<Vec<_>>(),
        [Delete, Create]
    );
    let combined = count(
        todo()
            .context_contains(json!({"user": "alice"}))
            .context_not_contains(json!({"step": 1}))
            .after_not_contains(json!({"done": true})),
    )
    .await;
    assert_eq!(
        afters(&combined, "task"),
        [json!("a0"), json!("b"), json!("a2"), json!("a4")]
    );
    // Operations, a transaction, a time range.
    let deletes_and_creates = count(todo().operation(Delete).operation(Create)).await;
    assert_eq!(deletes_and_creates.len(), 4);
    let first = count(todo().transaction(history[0].commit_lsn)).await;
    assert_eq!(afters(&first, "task"), [json!("a0"), json!("b")]);
    let range = count(
        todo()
            .since(history[2].committed_at)
            .until(history[4].committed_at),
    )
    .await;
    assert_eq!(
        afters(&range, "task"),
        [json!("a2"), json!("a3"), json!("a4")]
    );

    // Diff: the changed columns only; all columns for CREATE and DELETE.
    let diff = serde_json::to_value(history[3].diff()).unwrap();
    assert_eq!(
        diff,
        json!({"task": ["a2", "a3"], "done": [false, true], "meta": [{"step": 2}, {"step": 3}]})
    );
    assert_eq!(
        serde_json::to_value(history[0].diff()).unwrap(),
        json!({"id": [null, 1], "task": [null, "a0"], "done": [null, false], "meta": [null, {}]})
    );
    assert_eq!(
        serde_json::to_value(history[6].diff()).unwrap(),
        json!({"id": [1, null], "task": ["a5", null], "done": [true, null], "meta": [{"step": 5}, null]})
    );
    assert_eq!(
        history[3].diff().columns().collect::<Vec<_>>(),
        ["done", "meta", "task"]
    );

    // The history query runs on an index, never a sequential scan.
    sql.batch_execute("ANALYZE changes; SET enable_seqscan = off")
        .await
        .unwrap();
    let plan = ChangeQuery::history("bulk".parse().unwrap(), "2500")
        .explain(&sql)
        .await
        .unwrap();
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("table_primary_key_committed_at"), "{plan}");
    let history = ChangeQuery::history("bulk".parse().unwrap(), "2500")
        .fetch(&sql)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    let plan = ChangeFilter::new()
        .context_contains(json!({"user": "bob"}))
        .query()
        .explain(&sql)
        .await
        .unwrap();
    // On the partitioned table each partition scans its own copy of the context index.
    assert!(
        plan.lines()
            .any(|line| line.contains("Bitmap Index Scan on") && line.contains("context_")),
        "{plan}"
    );
    sql.batch_execute("RESET enable_seqscan").await.unwrap();

    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn time_travel_rebuilds_rows_and_tables_at_every_moment() {
    let (_db, sql, tracker) = start(
        "CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL, balance numeric(10, 2));
         ALTER TABLE acct REPLICA IDENTITY FULL;
         -- A row from before tracking began.
         INSERT INTO acct VALUES (9, 'old', 1.50);",
    )
    .await;

    let steps = [
        "INSERT INTO acct VALUES (1, 'ann', 10), (2, 'ben', 20.25);",
        "UPDATE acct SET balance = 15 WHERE id = 1; UPDATE acct SET owner = 'older' WHERE id = 9;",
        "UPDATE acct SET id = 3, owner = 'ben3' WHERE id = 2;",
        "DELETE FROM acct WHERE id = 1;",
        "INSERT INTO acct VALUES (1, 'ann again', 5);",
        "UPDATE acct SET id = 2 WHERE id = 9; UPDATE acct SET balance = NULL WHERE id = 3;",
        "TRUNCATE acct;",
        "INSERT INTO acct VALUES (3, 'cat', 7), (4, 'dan', 8);",
        "UPDATE acct SET balance = balance + 1 WHERE id = 3; DELETE FROM acct WHERE id = 4;",
    ];
    // The moment before each step and after the last, with the table as it was then.
    let mut moments = vec![(clock(&sql).await, rows(&sql, "acct", "id").await)];
    for (i, step) in steps.iter().enumerate() {
        write(&sql, json!({"step": i}), step).await;
        moments.push((clock(&sql).await, rows(&sql, "acct", "id").await));
    }
    sync(&sql, &tracker).await;

    let travel = TimeTravel::new("acct".parse().unwrap());
    let mut rows_checked = 0;
    for (moment, table) in &moments {
        for id in [1, 2, 3, 4, 9] {
            let expected = table.iter().find(|r| r["id"] == json!(id)).cloned();
            let got = travel
                .row_at(&sql, &sql, &id.to_string(), *moment)
                .await
                .unwrap()
                .map(|r| value(&r.row));
            assert_eq!(got, expected, "row {id} at {moment}");
            if expected.is_some() {
                rows_checked += 1;
            }
        }
        let snapshot: Vec<Value> = travel
            .table_at(&sql, &sql, *moment)
            .await
            .unwrap()
            .iter()
            .map(|r| value(&r.row))
            .collect();
        assert_eq!(&snapshot, table, "table at {moment}");
    }
    assert_eq!(moments.len(), 10);
    assert!(
        rows_checked >= 15,
        "{rows_checked} rows existed at the moments"
    );
    // Explicit key columns (no catalog) give the same answer.
    let (moment, table) = &moments[3];
    let explicit = TimeTravel::new("public.acct".parse().unwrap()).key_columns(["id"]);
    let got: Vec<Value> = explicit
        .table_at(&sql, &sql, *moment)
        .await
        .unwrap()
        .iter()
        .map(|r| value(&r.row))
        .collect();
    assert_eq!(&got, table);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn time_travel_with_a_composite_key() {
    let (_db, sql, tracker) = start(
        "CREATE TABLE slot (day date, room text, who text, PRIMARY KEY (room, day));
         ALTER TABLE slot REPLICA IDENTITY FULL;",
    )
    .await;
    write(
        &sql,
        json!({}),
        "INSERT INTO slot VALUES ('2024-01-01', 'a b', 'x'), ('2024-01-02', 'a b', 'y');",
    )
    .await;
    let first = clock(&sql).await;
    write(
        &sql,
        json!({}),
        "UPDATE slot SET day = '2024-01-03', who = 'z' WHERE day = '2024-01-01';",
    )
    .await;
    let second = clock(&sql).await;
    write(
        &sql,
        json!({}),
        "DELETE FROM slot WHERE day = '2024-01-02';",
    )
    .await;
    let third = clock(&sql).await;
    sync(&sql, &tracker).await;
    let travel = TimeTravel::new("slot".parse().unwrap());
    let old_key = r#"["a b", "2024-01-01"]"#;
    let new_key = r#"["a b","2024-01-03"]"#;
    let at = |key, moment| {
        let travel = &travel;
        let sql = &sql;
        async move {
            travel
                .row_at(sql, sql, key, moment)
                .await
                .unwrap()
                .map(|r| value(&r.row))
        }
    };
    assert_eq!(
        at(old_key, first).await,
        Some(json!({"day": "2024-01-01", "room": "a b", "who": "x"}))
    );
    assert_eq!(at(old_key, second).await, None);
    assert_eq!(at(new_key, first).await, None);
    assert_eq!(
        at(new_key, second).await,
        Some(json!({"day": "2024-01-03", "room": "a b", "who": "z"}))
    );
    let keys: Vec<String> = travel
        .table_at(&sql, &sql, second)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.primary_key)
        .collect();
    assert_eq!(keys, [r#"["a b","2024-01-02"]"#, r#"["a b","2024-01-03"]"#]);
    assert!(travel.row_at(&sql, &sql, "7", second).await.is_err());
    // a key typed with spaces finds the row created and deleted under its stored form
    let spaced = r#"["a b", "2024-01-02"]"#;
    assert_eq!(
        at(spaced, second).await,
        Some(json!({"day": "2024-01-02", "room": "a b", "who": "y"}))
    );
    assert_eq!(at(spaced, third).await, None);
    tracker.shutdown().await.unwrap();
}

const SHOP: &str = "
    CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(10, 2),
                         placed timestamptz NOT NULL DEFAULT '2024-01-01 10:00:00+00',
                         tags text[], note jsonb);
    CREATE TABLE items (order_id int NOT NULL REFERENCES orders (id), line int NOT NULL,
                        sku text NOT NULL, qty int NOT NULL,
                        id bigint GENERATED ALWAYS AS IDENTITY,
                        label text GENERATED ALWAYS AS (sku || ' x' || qty) STORED,
                        PRIMARY KEY (order_id, line));
    ALTER TABLE orders REPLICA IDENTITY FULL;
    ALTER TABLE items REPLICA IDENTITY FULL;";

async fn shop_baseline(sql: &Client) {
    write(
        sql,
        json!({"request_id": "r0"}),
        "INSERT INTO orders (id, customer, total, tags, note) VALUES
           (1, 'ann', 10.50, '{a,b}', '{\"gift\": true}'),
           (2, 'ben', 20, NULL, NULL),
           (5, 'eve', 5, '{}', '[1, 2.50]');
         INSERT INTO items (order_id, line, sku, qty) VALUES
           (1, 1, 'apple', 1), (1, 2, 'pear', 2), (2, 1, 'plum', 3), (5, 1, 'fig', 1);",
    )
    .await;
}

async fn shop(sql: &Client) -> (Vec<Value>, Vec<Value>) {
    (
        rows(sql, "orders", "id").await,
        rows(sql, "items", "order_id, line").await,
    )
}

#[tokio::test]
async fn reverting_a_request_restores_both_tables_and_is_itself_tracked() {
    let (_db, mut sql, tracker) = start(SHOP).await;
    shop_baseline(&sql).await;
    let earlier = shop(&sql).await;

    // Request r1, in two transactions: inserts, updates (one of a composite key), deletes.
    let r1 = json!({"request_id": "r1", "user": "mallory"});
    write(
        &sql,
        r1.clone(),
        "INSERT INTO orders (id, customer, total) VALUES (3, 'cat', 30);
         INSERT INTO items (order_id, line, sku, qty) VALUES (3, 1, 'kiwi', 4), (3, 2, 'lime', 5);
         UPDATE orders SET total = 99.99, tags = '{x}', note = '{\"gift\": false}' WHERE id = 1;
         UPDATE items SET line = 7, qty = 20 WHERE order_id = 1 AND line = 2;
         DELETE FROM items WHERE order_id = 2;",
    )
    .await;
    write(
        &sql,
        r1.clone(),
        "DELETE FROM orders WHERE id = 2;
         UPDATE orders SET customer = 'ann!', placed = '2030-01-01' WHERE id = 1;
         UPDATE items SET qty = 21 WHERE order_id = 1 AND line = 7;",
    )
    .await;
    // Another request's changes to other rows stay.
    write(
        &sql,
        json!({"request_id": "r2"}),
        "UPDATE orders SET customer = 'eve2' WHERE id = 5;",
    )
    .await;
    sync(&sql, &tracker).await;
    assert_ne!(shop(&sql).await, earlier);

    let revert =
        Revert::new(ChangeFilter::new().context_contains(json!({"request_id": "r1"}))).by("tester");
    // A dry run: SQL, no conflicts, nothing written.
    let plan = revert.plan(&sql, &sql).await.unwrap();
    assert_eq!(plan.changes.len(), 9);
    assert_eq!(plan.steps.len(), 9);
    assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
    let script = plan.sql();
    assert!(script.starts_with("BEGIN;\nSELECT pg_logical_emit_message(true, '_bemi', '{"));
    assert!(
        script.contains("INSERT INTO \"public\".\"orders\""),
        "{script}"
    );
    assert!(
        script.contains("DELETE FROM \"public\".\"items\""),
        "{script}"
    );
    assert!(script.contains("'{\"id\": 2, "), "{script}");
    assert!(script.ends_with("COMMIT;\n"));
    let after_request = shop(&sql).await;

    let outcome = revert.run(&mut sql).await.unwrap();
    assert_eq!(outcome.changes, 9);
    assert_eq!(outcome.rows, 9);
    let (orders, items) = shop(&sql).await;
    let mut expected_orders = earlier.0.clone();
    expected_orders[2]["customer"] = json!("eve2");
    assert_eq!(orders, expected_orders);
    // Generated columns are recomputed; the identity column keeps the reverted row's value.
    assert_eq!(items, earlier.1);
    assert_ne!(after_request, (orders, items));

    // The revert is in the audit trail with its own context.
    sync(&sql, &tracker).await;
    let reverted = ChangeFilter::new()
        .context_contains(json!({"reverted": {"context": {"request_id": "r1"}}, "by": "tester"}))
        .query()
        .fetch(&sql)
        .await
        .unwrap();
    assert_eq!(reverted.len(), 9);
    assert_eq!(
        value(&reverted[0].context),
        json!({"reverted": {"context": {"request_id": "r1"}}, "by": "tester", "changes": 9})
    );
    assert!(reverted
        .iter()
        .all(|c| c.commit_lsn == reverted[0].commit_lsn));
    // Undone newest first: the re-inserted order 2 comes before its items.
    let ops: Vec<(String, Operation)> = reverted
        .iter()
        .map(|c| (c.table.clone(), c.operation))
        .collect();
    assert_eq!(ops[0], ("items".to_owned(), Operation::Update));
    assert_eq!(
        ops.last().unwrap(),
        &("orders".to_owned(), Operation::Delete)
    );

    // Reverting the revert (one transaction) brings the request's state back.
    Revert::new(ChangeFilter::new().transaction(reverted[0].commit_lsn))
        .run(&mut sql)
        .await
        .unwrap();
    assert_eq!(shop(&sql).await, after_request);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn conflicting_edits_make_a_revert_refuse_and_name_the_rows() {
    let (_db, mut sql, tracker) = start(SHOP).await;
    shop_baseline(&sql).await;
    let r1 = json!({"request_id": "r1"});
    write(
        &sql,
        r1.clone(),
        "UPDATE orders SET total = 11 WHERE id = 1;
         INSERT INTO orders (id, customer) VALUES (3, 'cat');
         DELETE FROM items WHERE order_id = 5;
         UPDATE orders SET total = 1 WHERE id = 5;",
    )
    .await;
    // Later edits: order 1 changes again, the deleted item is back, order 3 is gone; and order 5
    // changes between two changes of r1.
    write(
        &sql,
        json!({"request_id": "r2"}),
        "UPDATE orders SET total = 12 WHERE id = 1;
         INSERT INTO items (order_id, line, sku, qty) VALUES (5, 1, 'fig', 9);
         DELETE FROM orders WHERE id = 3;
         UPDATE orders SET total = 2 WHERE id = 5;",
    )
    .await;
    write(
        &sql,
        r1.clone(),
        "UPDATE orders SET total = 3 WHERE id = 5;",
    )
    .await;
    sync(&sql, &tracker).await;
    let before = shop(&sql).await;

    let revert = Revert::new(ChangeFilter::new().context_contains(r1.clone())).by("tester");
    let plan = revert.plan(&sql, &sql).await.unwrap();
    let mut conflicts: Vec<(String, String, ConflictKind)> = plan
        .conflicts
        .iter()
        .map(|c| (c.table.to_string(), c.primary_key.clone(), c.kind))
        .collect();
    conflicts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        conflicts,
        [
            (
                "public.items".to_owned(),
                "[5,1]".to_owned(),
                ConflictKind::ExistsAgain
            ),
            (
                "public.orders".to_owned(),
                "1".to_owned(),
                ConflictKind::Changed
            ),
            (
                "public.orders".to_owned(),
                "3".to_owned(),
                ConflictKind::Missing
            ),
            (
                "public.orders".to_owned(),
                "5".to_owned(),
                ConflictKind::ChangedInBetween
            ),
        ]
    );
    let error = revert.run(&mut sql).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("revert refused"), "{message}");
    assert!(message.contains("public.orders 5"), "{message}");
    // Only the trail conflict is reported first; without it the live ones are named.
    let without_5 = Revert::new(
        ChangeFilter::new()
            .context_contains(r1.clone())
            .after_not_contains(json!({"id": 5, "customer": "eve"})),
    );
    let message = without_5.run(&mut sql).await.unwrap_err().to_string();
    for row in ["public.orders 1", "public.orders 3", "public.items [5,1]"] {
        assert!(message.contains(row), "{row} in {message}");
    }
    assert!(message.contains("\"total\": 12"), "{message}");
    assert_eq!(shop(&sql).await, before, "a refused revert changes nothing");

    // Forced, the request's changes are undone anyway.
    let outcome = without_5.force(true).run(&mut sql).await.unwrap();
    assert_eq!(outcome.overridden.len(), 3);
    let orders = rows(&sql, "orders", "id").await;
    assert_eq!(orders[0]["total"], json!(10.50));
    assert_eq!(orders.iter().filter(|o| o["id"] == json!(3)).count(), 0);
    let items = rows(&sql, "items", "order_id, line").await;
    let fig = items.iter().find(|i| i["order_id"] == json!(5)).unwrap();
    assert_eq!(fig["qty"], json!(1));

    // A TRUNCATE cannot be reverted.
    write(&sql, json!({"request_id": "r9"}), "TRUNCATE items;").await;
    sync(&sql, &tracker).await;
    let error = Revert::new(ChangeFilter::new().context_contains(json!({"request_id": "r9"})))
        .plan(&sql, &sql)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("TRUNCATE"), "{error}");
    // Nor can everything at once.
    assert!(Revert::new(ChangeFilter::new())
        .plan(&sql, &sql)
        .await
        .is_err());
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn time_travel_resolves_an_unqualified_table_from_the_tracked_catalog() {
    let (_db, sql, tracker) = start(
        "CREATE SCHEMA other;
         CREATE TABLE public.todo (id int PRIMARY KEY, task text);
         CREATE TABLE other.todo (id int PRIMARY KEY, task text);
         ALTER TABLE public.todo REPLICA IDENTITY FULL;
         ALTER TABLE other.todo REPLICA IDENTITY FULL;",
    )
    .await;
    write(
        &sql,
        json!({"user": "a"}),
        "INSERT INTO public.todo VALUES (1, 'public'); INSERT INTO other.todo VALUES (2, 'other');",
    )
    .await;
    sync(&sql, &tracker).await;
    let at = clock(&sql).await;

    // Key columns given without the schema: every schema's `todo` matches.
    let loose = TimeTravel::new("todo".parse().unwrap()).key_columns(["id"]);
    assert_eq!(loose.table_at(&sql, &sql, at).await.unwrap().len(), 2);
    // Resolved from the tracked database's catalog: the table `search_path` finds, public.todo.
    let rows = TimeTravel::new("todo".parse().unwrap())
        .table_at(&sql, &sql, at)
        .await
        .unwrap();
    let rows: Vec<Value> = rows.iter().map(|r| value(&r.row)).collect();
    assert_eq!(rows, [json!({"id": 1, "task": "public"})]);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revert_that_would_cascade_beyond_its_changes_refuses() {
    let (_db, mut sql, tracker) = start(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY,
                             parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE);
         ALTER TABLE parent REPLICA IDENTITY FULL; ALTER TABLE child REPLICA IDENTITY FULL;",
    )
    .await;
    // r1 makes a parent and its child; r2 later adds another child to it
    write(
        &sql,
        json!({"request_id": "r1"}),
        "INSERT INTO parent VALUES (1); INSERT INTO child VALUES (10, 1);",
    )
    .await;
    write(
        &sql,
        json!({"request_id": "r2"}),
        "INSERT INTO child VALUES (11, 1);",
    )
    .await;
    sync(&sql, &tracker).await;
    let r1 = || Revert::new(ChangeFilter::new().context_contains(json!({"request_id": "r1"})));

    // Deleting parent 1 would cascade into child 11, which r1 did not make.
    let message = r1().run(&mut sql).await.unwrap_err().to_string();
    assert!(message.contains("revert refused"), "{message}");
    assert!(
        message.contains("public.child: 1 more deleted"),
        "{message}"
    );
    let children = rows(&sql, "child", "id").await;
    assert_eq!(children.len(), 2, "nothing was changed");

    // Without r2's child, the cascade reaches nothing else: r1 reverts cleanly.
    sql.batch_execute("DELETE FROM child WHERE id = 11")
        .await
        .unwrap();
    sync(&sql, &tracker).await;
    let outcome = r1().run(&mut sql).await.unwrap();
    assert_eq!(outcome.statements, 2);
    assert!(rows(&sql, "parent", "id").await.is_empty());
    assert!(rows(&sql, "child", "id").await.is_empty());
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revert_refuses_changes_stored_before_the_upgrade_from_bemi() {
    let (db, mut sql, tracker) =
        start("CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t REPLICA IDENTITY FULL;").await;
    write(
        &sql,
        json!({"request_id": "r1"}),
        "INSERT INTO t VALUES (1);",
    )
    .await;
    sync(&sql, &tracker).await;
    tracker.shutdown().await.unwrap();
    // A row Bemi's own worker stored before the table was upgraded: no commit_lsn, no ordinal.
    sql.execute(
        r#"INSERT INTO changes (primary_key, before, after, context, database, schema, "table",
             operation, committed_at, queued_at, transaction_id, position)
           VALUES ('0', '{}', '{"id": 0}', '{"request_id": "r1"}', $1, 'public', 't', 'CREATE',
             now(), now(), 1, 1)"#,
        &[&db.name()],
    )
    .await
    .unwrap();
    let r1 = Revert::new(ChangeFilter::new().context_contains(json!({"request_id": "r1"})));
    let message = r1.run(&mut sql).await.unwrap_err().to_string();
    assert!(message.contains("1 of the selected changes"), "{message}");
    assert!(
        message.contains("before the table was upgraded"),
        "{message}"
    );
    assert_eq!(rows(&sql, "t", "id").await.len(), 1, "nothing was changed");
}
