//! Log compaction: a durable server's snapshot of its state, and its restore at a restart
//! (the protocol and the files are in [`crate::storage::snapshot`]).
//!
//! A snapshot is taken at a cut of the log, under the sequencer lock: the log's length then
//! (every record before it applied), the timestamp oracle's last timestamp `at` (every such
//! record at or before it; a timestamp is closed at once, so every later record is after it),
//! a read hold at `at`, the catalog changes, the sources' positions and the recent
//! `Idempotency-Key`s. Then, without the lock, each input collection is read from the
//! workers' arrangements as of `at` (a peek), the answers of those keys are awaited, the
//! snapshot is written, and the log is rewritten to what follows the cut. Pushes go on
//! meanwhile; they wait only for the few microseconds of the cut.
//!
//! A restart restores the snapshot before the log's records: the catalog changes replayed as
//! the log's are, then every collection's rows, read back as events, inserted from `at` on
//! ([`Command::Restore`]) in rounds of [`crate::ClusterConfig::restart_rows_ahead`] rows per
//! worker, each at a timestamp of its own and sent once the round before the last has passed
//! every collection (so that the arrangements seal and merge a round before more comes, and
//! the restart's memory stays near the live state's); then the sources' counts, positions and
//! keys are put back.
//!
//! The events a `retractable` job's sources fed are kept apart, per job (each worker keeps
//! them to retract them when the job is cancelled with `retract`): read at the cut with
//! [`Command::ReadKept`], subtracted from the collections' contents, and restored as kept
//! for their job. Not taken while a retraction is in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use amx_dataflows::event::{Event, TableRow};
use amx_dataflows::prices::MODEL_PRICES;
use amx_dataflows::row::{Datum, Row};
use amx_dataflows::{Diff, Time};

use super::{ClusterError, Command, Controller, IngestReport, JobId, JobState, ReadHold, lock};
use crate::storage::LogRecord;
use crate::storage::snapshot::{self, Contents, Encoder, Manifest, Snapshot, SourceKeys};

/// A push source's recent keys as captured at a cut: `(job, source, [(key, body hash, answer)])`.
type Window = (JobId, String, Vec<(String, u64, super::IngestAnswer)>);

/// How often the log's growth is checked (a lock and a read of its length).
pub const COMPACT_CHECK: Duration = Duration::from_millis(250);

/// Parts of a snapshot (Parquet batches of at most 8,192 rows) sent to the workers ahead of
/// their answers, at most, at a restart: the rows in flight are bounded, not the snapshot.
const RESTORE_WINDOW: usize = 8;

/// What one compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// The snapshot's generation.
    pub generation: u64,
    /// Its timestamp (ms since the Unix epoch).
    pub at: Time,
    /// Distinct rows in it, over every collection.
    pub rows: u64,
    /// Bytes of its files.
    pub snapshot_bytes: u64,
    /// The log's size before (at the cut) and after (bytes).
    pub log_bytes_before: u64,
    /// The log's size after it was rewritten (bytes): the records appended since the cut.
    pub log_bytes_after: u64,
}

/// A durable log's figures (`/metrics`: `aimatrix_log_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of the log after its snapshot (a file log's length; an object-store log's
    /// segments and records waiting for one).
    pub bytes: u64,
    /// The newest snapshot's generation (0: none).
    pub generation: u64,
    /// Snapshots this process took.
    pub compactions: u64,
    /// Compactions that failed in this process (each is tried again later).
    pub failures: u64,
}

/// What a restart restored from a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The snapshot's generation.
    pub generation: u64,
    /// Rows restored (each distinct row counted as many times as it occurs).
    pub rows: u64,
    /// The rounds they were restored in (see [`crate::ClusterConfig::restart_rows_ahead`]).
    pub rounds: u64,
}

impl Controller {
    /// Takes a snapshot of the state and rewrites the log to what follows it (see the module
    /// documentation). `Ok(Err(reason))` when there is nothing to do or it cannot be taken
    /// now: no log, a replay running, an empty log, a retraction in flight.
    ///
    /// # Errors
    /// [`ClusterError::Storage`] when the snapshot or the new log cannot be written (disk full,
    /// permission denied): nothing is lost (the old log stays), and the next try starts
    /// over; [`ClusterError::Stopped`].
    pub async fn compact(&self) -> Result<Result<Compaction, String>, ClusterError> {
        let result = self.compact_now().await;
        match &result {
            Ok(Ok(_)) => self.inner.compactions.fetch_add(1, Ordering::Relaxed),
            Ok(Err(_)) | Err(ClusterError::Stopped) => 0,
            Err(_) => self.inner.compaction_failures.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// The durable log's figures, when there is one.
    pub fn log_stats(&self) -> Option<LogStats> {
        let log = lock(&self.inner.seq).log.clone()?;
        Some(LogStats {
            bytes: log.len(),
            generation: log.next_generation().saturating_sub(1),
            compactions: self.inner.compactions.load(Ordering::Relaxed),
            failures: self.inner.compaction_failures.load(Ordering::Relaxed),
        })
    }

    #[tracing::instrument(name = "compact", skip_all)]
    async fn compact_now(&self) -> Result<Result<Compaction, String>, ClusterError> {
        let _one = self.inner.compaction.lock().await;
        let started = std::time::Instant::now();
        let (log, log_bytes_before, at, hold, mut manifest, relations, windows, appended, kept) = {
            let mut seq = lock(&self.inner.seq);
            let Some(log) = seq.log.clone() else { return Ok(Err("no log".into())) };
            if seq.replaying {
                return Ok(Err("the log is being replayed".into()));
            }
            if log.is_empty() {
                return Ok(Err("the log is empty".into()));
            }
            if seq.retracting > 0 {
                return Ok(Err("a retraction is in flight".into()));
            }
            let (cut_generation, cut) = log.cut();
            // Every record before the cut is at or before `at`; every later one after it.
            let at = seq.last_timestamp;
            seq.close_timestamp()?;
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            seq.holds.insert(id, at);
            let hold = ReadHold { id, time: at, controller: Arc::downgrade(&self.inner), owners: Vec::new() };
            // The collections that hold what sources ingested: the canonical relations,
            // `model_prices` and the relations running jobs' sources declare.
            let relations: Vec<(String, arrow::datatypes::SchemaRef)> = seq
                .catalog
                .iter()
                .filter(|(name, entry)| {
                    Event::RELATIONS.contains(&name.as_str())
                        || name.as_str() == MODEL_PRICES
                        || (entry.relation && entry.owner.is_some())
                })
                .map(|(name, entry)| (name.clone(), entry.schema.clone()))
                .collect();
            let positions =
                seq.positions.iter().map(|((job, source), resume)| (job.0, source.clone(), resume.clone())).collect();
            let windows: Vec<Window> = seq
                .keys
                .iter()
                .map(|((job, source), window)| {
                    let keys = window
                        .order
                        .iter()
                        .filter_map(|k| window.answers.get(k).map(|(hash, answer)| (k.clone(), *hash, answer.clone())))
                        .collect();
                    (*job, source.clone(), keys)
                })
                .collect();
            let manifest = Manifest {
                version: snapshot::SNAPSHOT_VERSION,
                generation: log.next_generation(),
                cut_generation,
                cut_offset: cut,
                at,
                catalog: seq.catalog_log.clone(),
                positions,
                keys: Vec::new(),
                stats: Vec::new(),
                files: Vec::new(),
            };
            // What `retractable` jobs fed, as each worker keeps it (in command order: exactly
            // what the records before the cut fed).
            let kept_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (reply, kept) = tokio::sync::oneshot::channel();
            lock(&self.inner.shared.peeks)
                .insert(kept_id, super::PeekWait { remaining: self.peers(), rows: Vec::new(), reply: Some(reply) });
            seq.send(&Command::ReadKept { id: kept_id })?;
            let (size, appended) = (log.len(), log.appended());
            (log, size, at, hold, manifest, relations, windows, appended, kept)
        };
        let kept = kept.await.map_err(|_| ClusterError::Stopped)?;
        // The retractable jobs' events by relation and job, and their sum by relation.
        let mut by_job: BTreeMap<(String, u64), Vec<(Row, Diff)>> = BTreeMap::new();
        let mut kept_sum: HashMap<String, HashMap<Row, Diff>> = HashMap::new();
        for (row, diff) in kept {
            let mut datums = row.into_iter();
            let (Some(Datum::Int(job)), Some(Datum::Text(relation))) = (datums.next(), datums.next()) else {
                continue;
            };
            let row: Row = datums.collect();
            *kept_sum.entry(relation.clone()).or_default().entry(row.clone()).or_default() += diff;
            by_job.entry((relation, job as u64)).or_default().push((row, diff));
        }
        // Each collection as of `at`, read from each worker a part at a time and encoded as it
        // comes (only the encoded file is held), less what the retractable jobs fed (kept apart,
        // per job).
        let mut contents = Vec::new();
        let mut rows = 0u64;
        let encoding = |e: String| ClusterError::Storage(format!("encoding a snapshot: {e}"));
        for (name, schema) in relations {
            let mut less = kept_sum.remove(&name).unwrap_or_default();
            let mut encoder = Encoder::new(&schema).map_err(encoding)?;
            for worker in 0..self.peers() {
                let mut after = None;
                loop {
                    let part = self.peek_part(&name, at, worker, after.take()).await?;
                    let Some((last, _)) = part.last() else { break };
                    after = Some(last.clone());
                    let mut base: Vec<(Row, Diff)> = Vec::with_capacity(part.len());
                    for (row, diff) in part {
                        let diff = diff - less.remove(&row).unwrap_or(0);
                        if diff < 0 {
                            return Ok(Err(format!(
                                "`{name}` holds fewer copies of a row than its retractable jobs fed"
                            )));
                        }
                        if diff != 0 {
                            base.push((row, diff));
                        }
                    }
                    encoder.push(&base).map_err(encoding)?;
                }
            }
            if !less.is_empty() {
                return Ok(Err(format!("`{name}` lacks rows its retractable jobs fed")));
            }
            let jobs: Vec<u64> = by_job.keys().filter(|(r, _)| *r == name).map(|(_, j)| *j).collect();
            for job in jobs {
                let rows_of_job = by_job.remove(&(name.clone(), job)).unwrap_or_default();
                let kept = Contents::of(&name, Some(job), &schema, &rows_of_job).map_err(encoding)?;
                rows += kept.rows;
                contents.push(kept);
            }
            let base = encoder.finish(&name, None).map_err(encoding)?;
            rows += base.rows;
            contents.push(base);
        }
        let stats = self.peek(amx_dataflows::render::SOURCE_STATS, at, None, Vec::new(), None).await?;
        manifest.stats = stats
            .into_iter()
            .filter_map(|(row, _)| match row.as_slice() {
                [Datum::Text(source), Datum::Int(r), Datum::Int(d), Datum::Int(e)] => {
                    Some((source.clone(), (*r as isize, *d as isize, *e as isize)))
                }
                _ => None,
            })
            .collect();
        drop(hold);
        for (job, source, keys) in windows {
            let mut answered = Vec::with_capacity(keys.len());
            for (key, hash, answer) in keys {
                // A push that failed was not applied: its key is not remembered.
                if let Ok(report) = Self::answer(answer).await {
                    answered.push((key, hash, report));
                }
            }
            manifest.keys.push(SourceKeys { job: job.0, source, keys: answered });
        }
        // What the snapshot holds is durable in the log first: a push not yet synced at the cut
        // (not yet acknowledged) is not in a snapshot before it is in the log.
        log.sync(appended).await?;
        let generation = manifest.generation;
        let written = tokio::task::spawn_blocking(move || log.compact(&mut manifest, contents))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        let (snapshot_bytes, log_bytes_after) = written.map_err(ClusterError::Storage)?;
        tracing::info!(
            generation,
            at,
            rows,
            snapshot_bytes,
            log_bytes_before,
            log_bytes_after,
            ms = started.elapsed().as_millis() as u64,
            "log compacted into a snapshot"
        );
        Ok(Ok(Compaction { generation, at, rows, snapshot_bytes, log_bytes_before, log_bytes_after }))
    }

    /// Compacts the log whenever what follows its snapshot — what a restart replays, records
    /// appended while the last snapshot was taken included — holds `after_bytes` or more
    /// (checked every [`COMPACT_CHECK`]; 0: never), until the controller stops. Failures are
    /// logged and tried again after a backoff (1 s, doubling to a minute).
    pub async fn compact_when_grown(self, after_bytes: u64) {
        if after_bytes == 0 {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        drop(self);
        let mut refused = None;
        // After a failure, the next try waits (1 s, doubling to a minute).
        let mut backoff = Duration::ZERO;
        loop {
            tokio::time::sleep(COMPACT_CHECK.max(backoff)).await;
            let Some(inner) = inner.upgrade() else { return };
            let this = Controller { inner };
            let Some(len) = lock(&this.inner.seq).log.as_ref().map(|l| l.len()) else {
                continue;
            };
            if len < after_bytes {
                continue;
            }
            match this.compact().await {
                Ok(Ok(_)) => {
                    refused = None;
                    backoff = Duration::ZERO;
                }
                Ok(Err(why)) => {
                    if refused.as_ref() != Some(&why) {
                        tracing::info!(reason = %why, "the log is not compacted now");
                        refused = Some(why);
                    }
                }
                Err(ClusterError::Stopped) => return,
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "compacting the log failed; tried again later");
                }
            }
        }
    }

    /// Restores a snapshot at a restart (see the module documentation), before the log's
    /// records are replayed.
    ///
    /// # Errors
    /// [`ClusterError::Storage`] when a catalog change no longer applies or a file of the
    /// snapshot does not read (naming it); [`ClusterError::Stopped`].
    pub(super) async fn restore(
        &self,
        snapshot: &Snapshot,
        access: &amx_connectors::FileAccess,
        recovered: &mut super::Recovered,
    ) -> Result<Restored, ClusterError> {
        let manifest = &snapshot.manifest;
        for (index, record) in manifest.catalog.iter().enumerate() {
            let what = match record {
                LogRecord::InstallJob { id, .. } => format!("job {id} submitted"),
                LogRecord::CreateView { id, name, .. } => format!("view `{name}` created as job {id}"),
                LogRecord::CancelJob { id, .. } => format!("job {id} cancelled"),
                _ => continue,
            };
            self.replay_catalog(record.clone(), access, recovered).await.map_err(|e| match e {
                ClusterError::Stopped => e,
                e => ClusterError::Storage(format!(
                    "{}: catalog change {} of the snapshot ({what}) no longer applies: {e}. Start with what it needs \
                     (the same --file-root, its files), or move the data directory aside to start empty",
                    snapshot.location(),
                    index + 1
                )),
            })?;
        }
        // The rows in rounds (see [`ClusterConfig::restart_rows_ahead`]), from the snapshot's
        // timestamp on. (Tried before: every row at the snapshot's one timestamp, 1.36–1.44×
        // the live state's memory at its peak; each Parquet part at a timestamp of its own,
        // sent as fast as the workers took them into their inputs, no less: what bounds the
        // memory is waiting for the dataflows to process a round, not the timestamps.)
        let (mut at, peers) = {
            let mut seq = lock(&self.inner.seq);
            (seq.next_timestamp(Some(manifest.at)), self.peers())
        };
        // Rounds of rows, each at a timestamp of its own; a round is sent once the one before
        // the last has passed every collection (unless one does not move on: then at once).
        let mut round_rows = self.restart_rows_ahead() as u64;
        let mut in_round = 0u64;
        let mut rounds = std::collections::VecDeque::new();
        let mut restored = Restored { generation: manifest.generation, rows: 0, rounds: 1 };
        let mut worker = 0;
        // Parts sent ahead of the workers' answers, at most [`RESTORE_WINDOW`].
        let mut outstanding = std::collections::VecDeque::new();
        for file in &manifest.files {
            let key = {
                let seq = lock(&self.inner.seq);
                match seq.catalog.get(&file.relation) {
                    Some(entry) if !Event::RELATIONS.contains(&file.relation.as_str()) => {
                        table_key(&seq, &file.relation, &entry.schema)
                    }
                    _ => None,
                }
            };
            // The file is read a Parquet batch at a time on a blocking thread, a few batches
            // ahead of the workers.
            let (tx, mut parts) = tokio::sync::mpsc::channel::<Vec<(Row, Diff)>>(2);
            let (from, wanted) = (snapshot.clone(), file.clone());
            let reader =
                tokio::task::spawn_blocking(move || from.read_parts(&wanted, |part| tx.blocking_send(part).is_ok()));
            // `model_prices` holds the shipped prices from the start (see
            // `amx_dataflows::render::render`); its snapshot replaces them: the shipped keys are
            // deleted first (position 0), then the snapshot's rows upserted (position 1), so a
            // shipped price deleted before the snapshot stays deleted.
            let mut replace = (file.relation == MODEL_PRICES).then(amx_dataflows::prices::default_rows);
            loop {
                // The shipped keys' deletes go first, on their own (also when the snapshot's
                // table is empty and its file has no parts).
                let part = if replace.is_some() {
                    Vec::new()
                } else if let Some(part) = parts.recv().await {
                    part
                } else {
                    break;
                };
                let mut events = Vec::with_capacity(part.len());
                for row in replace.take().into_iter().flatten() {
                    let key = row[..3].to_vec();
                    events.push((
                        Event::Table(TableRow { relation: MODEL_PRICES.into(), position: 0, key, row: None }),
                        1,
                    ));
                }
                let position = u64::from(file.relation == MODEL_PRICES);
                for (row, diff) in part {
                    restored.rows += diff.unsigned_abs() as u64;
                    let event = if Event::RELATIONS.contains(&file.relation.as_str()) {
                        Event::from_row(&file.relation, row).map_err(|e| {
                            ClusterError::Storage(format!("{}: {}: {e}", snapshot.location(), file.name))
                        })?
                    } else {
                        let key_row =
                            key.as_ref().map_or_else(Vec::new, |k| k.iter().map(|&i| row[i].clone()).collect());
                        Event::Table(TableRow {
                            relation: file.relation.clone(),
                            position,
                            key: key_row,
                            row: Some(row),
                        })
                    };
                    events.push((event, diff));
                }
                // The part, in pieces that fill the rounds.
                while !events.is_empty() {
                    if in_round >= round_rows {
                        in_round = 0;
                        restored.rounds += 1;
                        rounds.push_back(at);
                        at = lock(&self.inner.seq).next_timestamp(Some(manifest.at));
                        for worker in 0..peers {
                            self.send_restore(Vec::new(), Vec::new(), at, worker, None)?;
                        }
                        while rounds.len() > 1
                            && let Some(done) = rounds.pop_front()
                        {
                            if !self.wait_passed(done).await {
                                round_rows = u64::MAX;
                            }
                        }
                    }
                    let take = usize::try_from(round_rows - in_round).unwrap_or(usize::MAX).min(events.len());
                    let rest = events.split_off(take);
                    let events = std::mem::replace(&mut events, rest);
                    in_round += events.len() as u64;
                    let (wait, applied) = self.wait_for(1);
                    lock(&self.inner.seq).send_to(
                        &Command::Restore {
                            events,
                            stats: Vec::new(),
                            at,
                            kept_for: file.job.map(JobId),
                            wait: Some(wait),
                        },
                        Some(worker),
                    )?;
                    worker = (worker + 1) % peers;
                    outstanding.push_back(applied);
                    while outstanding.len() > RESTORE_WINDOW
                        && let Some(applied) = outstanding.pop_front()
                    {
                        applied.await.map_err(|_| ClusterError::Stopped)?;
                    }
                }
            }
            reader.await.map_err(|_| ClusterError::Stopped)?.map_err(ClusterError::Storage)?;
        }
        for applied in outstanding {
            applied.await.map_err(|_| ClusterError::Stopped)?;
        }
        // Every worker's input moves to `at` (and may close it): the snapshot is complete
        // there on all of them. Worker 0 adds the sources' counts.
        for worker in 0..peers {
            let stats = if worker == 0 { manifest.stats.clone() } else { Vec::new() };
            self.send_restore(Vec::new(), stats, at, worker, None)?;
        }
        let mut seq = lock(&self.inner.seq);
        for (job, source, resume) in &manifest.positions {
            seq.positions.insert((JobId(*job), source.clone()), resume.clone());
        }
        for keys in &manifest.keys {
            let window = seq.keys.entry((JobId(keys.job), keys.source.clone())).or_default();
            for (key, hash, report) in &keys.keys {
                let (_, answer) = tokio::sync::watch::channel(Some(Ok::<IngestReport, ClusterError>(report.clone())));
                window.bytes += report.bytes();
                window.order.push_back(key.clone());
                window.answers.insert(key.clone(), (*hash, answer));
            }
        }
        seq.last_timestamp = seq.last_timestamp.max(at);
        drop(seq);
        self.inner.last_write.fetch_max(at, Ordering::SeqCst);
        Ok(restored)
    }

    fn send_restore(
        &self,
        events: Vec<(Event, amx_dataflows::Diff)>,
        stats: Vec<(String, (isize, isize, isize))>,
        at: Time,
        worker: usize,
        kept_for: Option<JobId>,
    ) -> Result<(), ClusterError> {
        lock(&self.inner.seq).send_to(&Command::Restore { events, stats, at, kept_for, wait: None }, Some(worker))
    }
}

/// The positions of relation `name`'s key columns in `schema`, when a running job's source
/// declares it with a key (`None`: no key, an append-only relation).
fn table_key(seq: &super::Sequencer, name: &str, schema: &arrow::datatypes::SchemaRef) -> Option<Vec<usize>> {
    let position = |k: &str| schema.fields().iter().position(|f| f.name() == k);
    if name == MODEL_PRICES {
        return amx_dataflows::prices::desc().key.iter().map(|k| position(k)).collect();
    }
    let table = seq
        .jobs
        .values()
        .filter(|j| j.state != JobState::Cancelled)
        .flat_map(|j| j.sources.iter())
        .find_map(|s| s.relation.as_ref().filter(|t| t.name == name))?;
    if table.key.is_empty() {
        return None;
    }
    table.key.iter().map(|k| position(k)).collect()
}
