//! Kafka sources: every partition of a topic, read with
//! [`amx_connectors::kafka::KafkaReader`] from the offsets the log gave back (see
//! [`super`]).

use std::time::Duration;

use amx_connectors::Record;
use amx_connectors::kafka::KafkaReader;

use super::{BATCH_BYTES, BATCH_RECORDS, BatchSource, SourcePosition, SourceResume};
use crate::job::SourceConfig;
use crate::protocol::JobId;

/// How long a read waits for a first message (then it takes only what has already arrived).
pub const BATCH_WAIT: Duration = Duration::from_millis(20);

/// A Kafka source's reader.
pub(crate) struct KafkaSource {
    reader: KafkaReader,
    read: Vec<amx_connectors::kafka::KafkaRecord>,
    /// The positions it resumed at, advertised to the consumer group at the first read:
    /// the commit after the last batch before a crash may never have reached the broker, and
    /// with nothing new to read no later batch would send it.
    resumed: Option<Vec<(i32, i64)>>,
}

/// Opens Kafka source `source` of job `job` at `resume`'s offsets. It commits each applied
/// batch's offsets to the consumer group `aimatrix-job-JOB-SOURCE`, for outside tools only.
///
/// # Errors
/// A source without `[sources.kafka]`, or a property librdkafka refuses.
pub(crate) fn open(
    job: JobId,
    source: &SourceConfig,
    resume: SourceResume,
    max_record_bytes: u64,
) -> Result<KafkaSource, String> {
    let config = source.kafka.as_ref().ok_or("a Kafka source needs a `[sources.kafka]` table")?;
    let group = format!("aimatrix-job-{job}-{}", source.name);
    // Each message's metadata is kept only when the source's format reads it.
    let metadata = source.decoder().is_ok_and(|d| d.reads_metadata());
    let resumed: Vec<(i32, i64)> = resume.kafka.iter().map(|(p, o)| (*p, *o)).collect();
    let reader = KafkaReader::new(config, &group, resume.kafka, max_record_bytes)
        .map_err(|e| e.to_string())?
        .with_metadata(metadata);
    tracing::info!(job = %job, source = %source.name, topic = %config.topic, positions = ?reader.positions(), "Kafka source started");
    Ok(KafkaSource { reader, read: Vec::new(), resumed: (!resumed.is_empty()).then_some(resumed) })
}

impl BatchSource for KafkaSource {
    fn read(&mut self, out: &mut Vec<Record>) -> Result<Option<SourcePosition>, String> {
        let problem = self.reader.poll(BATCH_WAIT, BATCH_RECORDS, BATCH_BYTES, &mut self.read);
        if let Some(resumed) = self.resumed.take()
            && let Err(e) = self.reader.commit(&resumed)
        {
            tracing::debug!(error = %e, "committing the resumed offsets to the consumer group");
        }
        // Partitions assigned at resolved start offsets: their positions are logged at once
        // (with no records, if none came), so that a restart starts them where this did.
        let assigned = self.reader.take_assigned();
        if self.read.is_empty() && !assigned {
            return problem.map_or(Ok(None), Err);
        }
        if let Some(problem) = problem {
            tracing::warn!(%problem, "Kafka source");
        }
        out.extend(self.read.drain(..).map(|r| r.record));
        let offsets = self.reader.positions().iter().map(|(p, o)| (*p, *o)).collect();
        Ok(Some(SourcePosition::Kafka { offsets }))
    }

    fn applied(&mut self, position: &SourcePosition, _upper: amx_dataflows::Time) {
        if let SourcePosition::Kafka { offsets } = position
            && let Err(e) = self.reader.commit(offsets)
        {
            tracing::debug!(error = %e, "committing offsets to the consumer group");
        }
    }
}
