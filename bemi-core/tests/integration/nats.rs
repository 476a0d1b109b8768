//! The NATS JetStream sink against a real `nats-server`: every change once, with its key,
//! context, subject and per-source sequence; the durable position survives a new sink; a
//! replay of what the stream holds is dropped by the duplicate window.

use std::time::{Duration, Instant};

use bemi_core::reexports::async_nats::jetstream::{self, consumer::pull};
use bemi_core::sink::{Batch, ChangeSink, NatsChange, NatsOptions, NatsSink, SourceInfo};
use bemi_core::{Operation, Tracker};
use bemi_testkit::nats::NatsServer;
use bemi_testkit::TestDatabase;
use futures_util::StreamExt as _;

/// Every message of the stream `BEMI`, decoded, in stream order.
async fn read_stream(nats: &NatsServer, expected: usize) -> Vec<NatsChange> {
    let client = NatsOptions::new(nats.url()).connect().await.unwrap();
    let js = jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        if let Ok(mut stream) = js.get_stream("BEMI").await {
            let held = stream.info().await.unwrap().state.messages as usize;
            if held >= expected {
                assert_eq!(
                    held, expected,
                    "the stream holds more messages than changes made"
                );
                break stream;
            }
        }
        assert!(Instant::now() < deadline, "the stream did not fill up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let consumer = stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(expected)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut changes = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let change = NatsChange::decode(&message).unwrap();
        let headers = message.headers.as_ref().unwrap();
        assert_eq!(
            headers.get("Nats-Msg-Id").unwrap().as_str(),
            format!(
                "{}:{}:{}",
                change.system_id, change.change.commit_lsn, change.change.ordinal
            )
        );
        let table = match change.change.table.as_str() {
            "odd.name" => "odd%2Ename",
            other => other,
        };
        assert!(message.subject.starts_with("bemi."), "{}", message.subject);
        assert!(
            message.subject.ends_with(&format!(".public.{table}")),
            "{}",
            message.subject
        );
        changes.push(change);
    }
    assert_eq!(changes.len(), expected);
    changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_stream_once_with_their_key_context_and_sequence() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL);
         CREATE TABLE \"odd.name\" (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let system_id: String = sql
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let sink = NatsSink::new(NatsOptions::new(nats.url()));
    let tracker = Tracker::builder(db.options(), sink)
        .slot(db.slot())
        .publication(db.publication())
        .start()
        .await
        .unwrap();
    sql.batch_execute(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{\"user\": \"ada\"}');
         INSERT INTO todo SELECT g, 'task ' || g FROM generate_series(1, 40) g;
         INSERT INTO \"odd.name\" VALUES (1);
         COMMIT;
         UPDATE todo SET task = 'done' WHERE id <= 10;
         DELETE FROM todo WHERE id > 30;",
    )
    .await
    .unwrap();
    let changes = read_stream(&nats, 61).await;
    let last_commit = changes.last().unwrap().change.commit_lsn;
    // Wait for the durable position to cover the last transaction, then stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracker.progress().confirmed_lsn < last_commit {
        assert!(Instant::now() < deadline, "{:?}", tracker.progress());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracker.shutdown().await.unwrap();

    // In commit order, numbered 1.. without holes, each with its own context.
    let sequences: Vec<u64> = changes.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, (1..=61).collect::<Vec<u64>>());
    assert!(changes.iter().all(|c| c.system_id == system_id));
    let (first, rest) = changes.split_at(41);
    assert!(first
        .iter()
        .all(|c| c.change.context.as_str() == "{\"user\": \"ada\"}"));
    assert!(rest.iter().all(|c| c.change.context.as_str() == "{}"));
    assert_eq!(first[0].change.operation, Operation::Create);
    assert_eq!(
        first[0].change.after.as_json(),
        "{\"id\":1,\"task\":\"task 1\"}"
    );
    assert_eq!(first[40].change.table, "odd.name");
    assert_eq!(rest[0].change.operation, Operation::Update);
    assert_eq!(
        rest[0].change.before.as_json(),
        "{\"id\":1,\"task\":\"task 1\"}"
    );
    assert_eq!(rest[19].change.operation, Operation::Delete);

    // A new sink of the same source resumes where the stream is: the tracker's position.
    let source = SourceInfo::new(&system_id, db.name(), db.slot());
    let mut again = NatsSink::new(NatsOptions::new(nats.url()));
    let start = again.open(&source).await.unwrap();
    let durable = start.durable.expect("the sink keeps a position");
    assert!(durable >= last_commit, "{durable} < {last_commit}");

    // Publishing what the stream holds again (a tracker replaying after a crash) adds
    // nothing: the message ids are the idempotency keys.
    let replay: Vec<_> = changes.iter().map(|c| c.change.clone()).collect();
    again.write(Batch::new(replay, None)).await.unwrap();
    read_stream(&nats, 61).await;
}

/// Submits a batch of one change committed at `commit` whose row carries `bytes` bytes of
/// text, with its position.
async fn submit(sink: &mut NatsSink, commit: u64, bytes: usize) -> bemi_core::sink::Pending {
    let batch = Batch::new(vec![change_of(commit, bytes)], Some(bemi_core::Lsn(commit)));
    sink.submit(batch).await.unwrap()
}

fn change_of(commit: u64, bytes: usize) -> bemi_core::Change {
    let mut change = serde_json::to_value(bemi_core::Change::gap(
        "app",
        bemi_core::Lsn(commit),
        bemi_core::Lsn(commit),
        "test",
        chrono::Utc::now(),
    ))
    .unwrap();
    change["operation"] = "CREATE".into();
    change["schema"] = "public".into();
    change["table"] = "items".into();
    change["ordinal"] = 0.into();
    change["after"] = serde_json::json!({"id": commit, "text": "x".repeat(bytes)});
    serde_json::from_value(change).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_record_positions_in_order_and_none_after_a_refused_one() {
    let nats = NatsServer::start();
    // A stream that refuses messages over 4 KiB, made before the sink checks it.
    let js = jetstream::new(NatsOptions::new(nats.url()).connect().await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "BEMI".to_owned(),
        subjects: vec!["bemi.>".to_owned()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_message_size: 4096,
        ..Default::default()
    })
    .await
    .unwrap();
    let source = SourceInfo::new("7", "app", "slot");
    let mut sink = NatsSink::new(NatsOptions::new(nats.url()));
    assert_eq!(sink.open(&source).await.unwrap().durable, None);

    // Two batches in flight, both stored: the position of the later one is kept.
    let first = submit(&mut sink, 10, 10).await;
    let second = submit(&mut sink, 20, 10).await;
    first.await.unwrap();
    second.await.unwrap();

    // The stream refuses the first of the next two batches: the second is published but its
    // position is not stored.
    let refused = submit(&mut sink, 30, 10_000).await;
    let after = submit(&mut sink, 40, 10).await;
    let error = refused.await.unwrap_err();
    assert!(error.to_string().contains("could not publish"), "{error}");
    let error = after.await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(
        error.to_string().contains("before this one failed"),
        "{error}"
    );

    let mut again = NatsSink::new(NatsOptions::new(nats.url()));
    assert_eq!(
        again.open(&source).await.unwrap().durable,
        Some(bemi_core::Lsn(20))
    );
}
