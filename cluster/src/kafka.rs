//! Kafka sources on a server: one thread per source in process 0 reads the topic
//! ([`amx_connectors::kafka::KafkaReader`]) and hands each batch of records to the controller,
//! which logs it with the partitions' positions after it (with a data directory) and sends it
//! to one worker to decode, as a push. The next batch is read once the last one is applied and
//! durable; a restart resumes every partition at the position logged with the last durable
//! batch, so each message is applied once, also across `kill -9`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amx_connectors::kafka::{KafkaPositions, KafkaReader};

use crate::controller::{ClusterError, Controller, Inner};
use crate::job::SourceConfig;
use crate::protocol::JobId;

/// Records in one batch, at most.
pub const BATCH_RECORDS: usize = 10_000;

/// Bytes of message values in one batch, about (a batch ends after the record that passes it).
pub const BATCH_BYTES: usize = 4 << 20;

/// How long a read waits for messages before it hands over what it has.
pub const BATCH_WAIT: Duration = Duration::from_millis(20);

/// A running Kafka source: stopped (and its thread left to end by itself) when dropped.
pub(crate) struct KafkaSource {
    stop: Arc<AtomicBool>,
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts reading Kafka source `source` of job `job`, resuming at `resume`.
///
/// # Errors
/// The thread cannot be spawned, or there is no tokio runtime here (the thread waits on the
/// controller's answers with it).
pub(crate) fn start(
    controller: &Controller,
    job: JobId,
    source: SourceConfig,
    resume: KafkaPositions,
    max_record_bytes: u64,
) -> Result<KafkaSource, ClusterError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| ClusterError::BadRequest("a Kafka source needs the server's runtime".into()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let inner = Arc::downgrade(&controller.inner);
    std::thread::Builder::new()
        .name(format!("amx-kafka-{}", source.name))
        .spawn(move || run(inner, runtime, job, source, resume, max_record_bytes, &stopped))
        .map_err(|e| ClusterError::BadRequest(format!("starting Kafka source: {e}")))?;
    Ok(KafkaSource { stop })
}

/// The source's thread: reads batches and submits them until stopped, the job is gone or the
/// controller is.
fn run(
    inner: Weak<Inner>,
    runtime: tokio::runtime::Handle,
    job: JobId,
    source: SourceConfig,
    resume: KafkaPositions,
    max_record_bytes: u64,
    stop: &AtomicBool,
) {
    // The controller answers in tasks of the server's runtime.
    let _runtime = runtime.enter();
    let name = source.name.clone();
    let Some(config) = source.kafka.as_ref() else { return };
    let group = format!("aimatrix-job-{job}-{name}");
    let controller = |inner: &Weak<Inner>| inner.upgrade().map(|inner| Controller { inner });
    let mut reader = match KafkaReader::new(config, &group, resume, max_record_bytes) {
        Ok(r) => r,
        Err(e) => {
            if let Some(c) = controller(&inner) {
                c.source_problem(job, &name, &e.to_string());
            }
            return;
        }
    };
    tracing::info!(job = %job, source = %name, topic = %config.topic, positions = ?reader.positions(), "Kafka source started");
    let mut batch = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Some(problem) = reader.poll(BATCH_WAIT, BATCH_RECORDS, BATCH_BYTES, &mut batch) {
            tracing::warn!(job = %job, source = %name, %problem, "Kafka source");
            let Some(c) = controller(&inner) else { return };
            c.source_problem(job, &name, &problem);
        }
        if batch.is_empty() {
            continue;
        }
        let records: Vec<_> = batch.drain(..).map(|r| r.record).collect();
        let positions = reader.positions().clone();
        // Submitted once: a refusal (the log's store failing) is retried with the same records.
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(c) = controller(&inner) else { return };
            match c.submit_records(job, &name, records.clone(), positions.clone()) {
                Ok(answer) => {
                    // The next batch waits for this one to be applied and durable.
                    if let Err(e) = runtime.block_on(Controller::answer(answer)) {
                        tracing::warn!(job = %job, source = %name, error = %e, "Kafka batch");
                    }
                    break;
                }
                Err(ClusterError::Storage(why)) if !stop.load(Ordering::SeqCst) => {
                    tracing::warn!(job = %job, source = %name, %why, "Kafka batch refused by the log; retrying");
                    drop(c);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                // The job was cancelled, or the server stops.
                Err(_) => return,
            }
        }
    }
}
