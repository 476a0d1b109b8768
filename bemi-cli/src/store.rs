//! `bemi store`: the changes a `bemi run --destination nats://…` publishes, written into a
//! `changes` table exactly once by a durable pull consumer that several processes share.

use std::time::Duration;

use bemi_core::reexports::async_nats::jetstream::{self, consumer::pull, AckKind};
use bemi_core::sink::{NatsChange, PostgresSink};
use bemi_core::{Change, ConnectOptions, Error, ErrorKind, Result};
use clap::Args;
use futures_util::StreamExt as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::DestinationArgs;
use crate::nats::NatsArgs;

#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// The NATS server(s): nats://host:4222 (several comma-separated; tls://… for TLS)
    #[arg(long, env = "NATS_URL")]
    pub(crate) from: String,
    /// The durable consumer; processes with the same name share the work
    #[arg(long, env = "BEMI_NATS_CONSUMER", default_value = "bemi-store")]
    pub(crate) consumer: String,
    /// Keep only the changes on this subject, e.g. bemi.app.public.> (default: the whole
    /// stream); fixed when the consumer is created
    #[arg(long, env = "BEMI_NATS_FILTER_SUBJECT")]
    pub(crate) filter_subject: Option<String>,
    /// How long, in milliseconds, a fetched change may stay unacknowledged before NATS hands
    /// it to another process (the consumer's ack wait, fixed when it is created)
    #[arg(long, env = "BEMI_NATS_ACK_WAIT_MS", default_value_t = 30_000)]
    pub(crate) ack_wait_ms: u64,
    /// Most changes stored in one transaction
    #[arg(long, env = "BEMI_BATCH_SIZE", default_value_t = 1000)]
    pub(crate) batch_size: usize,
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    #[command(flatten)]
    pub(crate) destination: DestinationArgs,
}

/// How long a fetch waits for messages before asking again.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// The pause after a failure before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

pub(crate) async fn store(args: StoreArgs) -> Result<()> {
    let options = args
        .destination
        .options(&ConnectOptions::new().with_application_name("bemi store"))?;
    let mut sink = PostgresSink::connect(&options)?.schema(&args.destination.destination_schema);
    while let Err(e) = sink.prepare().await {
        if !e.is_transient() {
            return Err(e);
        }
        tracing::warn!(error = %e.report(), "preparing the changes table failed; trying again");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    let client = args
        .nats
        .options(&args.from, "bemi store")
        .connect()
        .await?;
    let js = jetstream::new(client);
    let consumer = retry_transient("opening the consumer", || consumer(&js, &args)).await?;
    tracing::info!(
        stream = %args.nats.stream,
        consumer = %args.consumer,
        filter = ?args.filter_subject,
        "bemi store ready"
    );

    let signal_error =
        |e: std::io::Error| Error::config("could not listen for signals").with_source(e);
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut stored = 0_u64;
    loop {
        let fetched = tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            fetched = fetch(&consumer, args.batch_size) => fetched,
        };
        let messages = match fetched {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e.report(), "could not fetch from NATS; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        stored += store_batch(&mut sink, &messages).await?;
        for message in &messages {
            // A lost ack means a redelivery, which the table's unique key drops.
            if let Err(e) = message.ack_with(AckKind::Ack).await {
                tracing::warn!(error = %e, "could not acknowledge a message; it comes again");
            }
        }
        tracing::debug!(batch = messages.len(), stored, "stored");
    }
    tracing::info!(stored, "stopped");
    Ok(())
}

/// The durable pull consumer, created when missing (explicit acks: a process acks only what
/// it stored).
async fn consumer(
    js: &jetstream::Context,
    args: &StoreArgs,
) -> Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = js.get_stream(&args.nats.stream).await.map_err(|e| {
        Error::new(
            ErrorKind::Connect,
            format!(
                "the stream {} is not there (yet): `bemi run --destination nats://…` creates it",
                args.nats.stream
            ),
        )
        .with_source(e)
    })?;
    stream
        .get_or_create_consumer(
            &args.consumer,
            pull::Config {
                durable_name: Some(args.consumer.clone()),
                description: Some("bemi store: changes into the changes table".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(args.ack_wait_ms),
                filter_subject: args.filter_subject.clone().unwrap_or_default(),
                ..pull::Config::default()
            },
        )
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Connect,
                format!("could not open the consumer {}", args.consumer),
            )
            .with_source(e)
        })
}

/// Up to `max` messages, waiting at most [`FETCH_WAIT`] for the first.
async fn fetch(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    max: usize,
) -> Result<Vec<jetstream::Message>> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
        Error::new(ErrorKind::Connect, "fetching from NATS failed").with_source(e)
    };
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(FETCH_WAIT)
        .messages()
        .await
        .map_err(|e| failed(e.into()))?;
    let mut messages = Vec::new();
    while let Some(message) = batch.next().await {
        messages.push(message.map_err(failed)?);
    }
    Ok(messages)
}

/// Stores the changes of `messages`, each run of one source cluster in one transaction,
/// retrying transient failures (on a sink prepared again: the table may have changed); returns
/// how many there were. A message that is not a change stops the process (it stays
/// unacknowledged in the stream).
async fn store_batch(sink: &mut PostgresSink, messages: &[jetstream::Message]) -> Result<u64> {
    let mut runs: Vec<(String, Vec<Change>)> = Vec::new();
    for message in messages {
        let decoded = NatsChange::decode(message).map_err(|e| {
            let at = message
                .info()
                .map(|info| info.stream_sequence.to_string())
                .unwrap_or_default();
            Error::new(
                ErrorKind::Protocol,
                format!("message {at} of the stream: {}", e.report()),
            )
        })?;
        match runs.last_mut() {
            Some((system_id, changes)) if *system_id == decoded.system_id => {
                changes.push(decoded.change)
            }
            _ => runs.push((decoded.system_id, vec![decoded.change])),
        }
    }
    for (system_id, changes) in &runs {
        while let Err(e) = sink.store(system_id, changes).await {
            if !e.is_transient() {
                return Err(e);
            }
            tracing::warn!(error = %e.report(), "storing changes failed; trying again");
            tokio::time::sleep(RETRY_PAUSE).await;
            if let Err(e) = sink.prepare().await {
                tracing::warn!(error = %e.report(), "preparing the changes table failed");
            }
        }
    }
    Ok(messages.len() as u64)
}

/// Runs `attempt` until it succeeds or fails with an error that is not transient.
async fn retry_transient<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    loop {
        match attempt().await {
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e.report(), "{what} failed; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            done => return done,
        }
    }
}
