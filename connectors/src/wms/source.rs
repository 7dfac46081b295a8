//! The task that watches the inbox and takes each complete file, oldest first, one at a
//! time, in two streaming passes:
//!
//! 1. read the file once to hash its bytes and check every row; any bad row sends the
//!    file to `rejected/` beside `NAME.errors.json` (every bad line, written as it is
//!    found), and nothing of it is produced;
//! 2. read it again and produce its rows in batches, at most `in_flight_max` records
//!    unacknowledged, then move it to `archive/` once Kafka acknowledged every one.
//!
//! A file leaves the inbox only at the end of either pass, so a crash or a stop at any
//! point leaves it there, and the next run produces it again with the same event ids,
//! which the ledger skips.

use std::{
    collections::HashSet,
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use chrono::{DateTime, Utc};
use futures::{stream::FuturesUnordered, StreamExt};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use onhand_core::{backoff::Backoff, event::LocationId, kafka::Producer};
use rdkafka::{error::KafkaError, producer::FutureRecord};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, instrument, warn};

use super::{
    config::{WmsConfig, NAME},
    mapping::{self, FileContext, Format, LineError},
    metrics::WmsMetrics,
};
use crate::contract::{ConnectorContext, ConnectorError};

/// Why a file could not be taken this time. It stays in the inbox either way; `retryable`
/// says whether taking it again may succeed without a person acting.
#[derive(Debug, thiserror::Error)]
pub enum WmsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("kafka did not acknowledge line {line}: {source}")]
    Kafka { line: u64, source: KafkaError, retryable: bool },
    #[error("{path} changed after it was checked: {error:?}")]
    Changed { path: PathBuf, error: LineError },
    #[error("stopped before the file was done")]
    Stopped,
    #[error("{path} is {bytes} bytes, more than file_bytes_max ({max})")]
    TooLarge { path: PathBuf, bytes: u64, max: u64 },
}

impl WmsError {
    /// Whether taking the file again may succeed without a person acting. A file that
    /// cannot be read (its permissions, bytes the file system refuses) or is too large
    /// fails the same way every time: it is moved aside, so that it blocks no other file.
    pub fn retryable(&self) -> bool {
        match self {
            WmsError::Io { source, .. } => {
                !matches!(source.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidData)
            }
            WmsError::Changed { .. } | WmsError::Stopped => true,
            WmsError::Kafka { retryable, .. } => *retryable,
            WmsError::TooLarge { .. } => false,
        }
    }

    /// The stable code of a file moved aside for this error, in its `NAME.errors.json`.
    fn code(&self) -> &'static str {
        match self {
            WmsError::TooLarge { .. } => mapping::FILE_TOO_LARGE,
            WmsError::Kafka { .. } => mapping::KAFKA_REFUSED,
            _ => mapping::UNREADABLE_FILE,
        }
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> WmsError + '_ {
        move |source| WmsError::Io { path: path.to_path_buf(), source }
    }
}

/// The longest pause between two attempts at a file that failed.
const FILE_RETRY_MAX: Duration = Duration::from_secs(300);

/// The name of the WMS in `GET /v1/sources`: that of the movements it produces
/// (`freshness::source_name`).
pub(super) const SOURCE: &str = "wms";

/// What became of a file taken from the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Produced whole and archived (or gone before it was read).
    Archived,
    /// Moved to `rejected/` for its bad lines, nothing produced.
    Rejected { bad_lines: u64 },
}

/// Runs until `context.shutdown` fires.
pub(super) async fn run(
    config: Arc<WmsConfig>,
    metrics: WmsMetrics,
    context: ConnectorContext,
) -> Result<(), ConnectorError> {
    let location_default = match &config.location {
        Some(l) => Some(LocationId::parse(l.as_str()).map_err(|e| fatal(format!("location: {}", e.message)))?),
        None => None,
    };
    for dir in [config.inbox.clone(), config.archive_dir(), config.rejected_dir()] {
        fs::create_dir_all(&dir).map_err(|e| fatal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let wake = Arc::new(Notify::new());
    // Without events the periodic scan still finds every file, only later.
    let _watcher = watch(&config.inbox, Arc::clone(&wake))
        .inspect_err(|e| warn!(error = %e, "the wms inbox is not watched; relying on the periodic scan"))
        .ok();
    let taker = Taker { config: Arc::clone(&config), metrics, context: context.clone(), location_default };
    let scan_interval = Duration::from_millis(config.scan_interval_ms);
    let mut waiting = Waiting::default();
    info!(inbox = %config.inbox.display(), "wms connector watching its inbox");
    loop {
        let pause = match taker.take_ready_files(&mut waiting).await {
            Ok(()) => waiting.next_retry().map_or(scan_interval, |at| at.min(scan_interval)),
            Err(WmsError::Stopped) => return Ok(()),
            Err(e) => {
                // The inbox itself cannot be listed: nothing can be taken until it can.
                error!(error = %e, "the wms inbox cannot be read; trying again");
                context.health.error(SOURCE, format!("the inbox cannot be read: {e}")).await;
                file_backoff(1)
            }
        };
        tokio::select! {
            _ = context.shutdown.cancelled() => return Ok(()),
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Files that failed on an error that may pass, each waiting for its own next attempt:
/// one file Kafka refuses for now does not hold back the files after it.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    files: std::collections::HashMap<String, (u32, std::time::Instant)>,
}

impl Waiting {
    fn due(&self, name: &str) -> bool {
        self.files.get(name).is_none_or(|(_, at)| *at <= std::time::Instant::now())
    }

    fn failed(&mut self, name: &str) -> Duration {
        let entry = self.files.entry(name.to_string()).or_insert((0, std::time::Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        let pause = file_backoff(entry.0);
        entry.1 = std::time::Instant::now() + pause;
        pause
    }

    fn done(&mut self, name: &str) {
        self.files.remove(name);
    }

    /// How long until the next file's attempt, when one waits.
    fn next_retry(&self) -> Option<Duration> {
        let now = std::time::Instant::now();
        self.files.values().map(|(_, at)| at.saturating_duration_since(now)).min()
    }
}

fn fatal(message: String) -> ConnectorError {
    ConnectorError { connector: NAME, message, retryable: false }
}

/// The pause after `failures` failed attempts in a row (1 or more): 1 s, doubling, at most
/// 5 minutes.
pub(super) fn file_backoff(failures: u32) -> Duration {
    Backoff::new(Duration::from_secs(1), FILE_RETRY_MAX).after(failures)
}

/// The pause before sending a record again after its `attempt`-th try (1 or more): 100 ms,
/// doubling, at most 10 s.
pub(super) fn send_backoff(attempt: u32) -> Duration {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).after(attempt)
}

fn watch(inbox: &Path, wake: Arc<Notify>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Any event is only a reason to scan: the scan decides what is ready.
        if event.is_ok() {
            wake.notify_one();
        }
    })?;
    watcher.watch(inbox, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// A file in the inbox, as the scan saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub name: String,
    pub modified: SystemTime,
}

/// The files ready to be taken, oldest first: names ending in `.csv`, not dot-files (a
/// writer's temporary name), and, when markers are required or the file has one, whose
/// `NAME.csv.done` marker exists.
pub(super) fn ready_files(entries: &[Entry], done_marker_required: bool) -> Vec<&Entry> {
    let markers: HashSet<&str> = entries.iter().filter_map(|e| e.name.strip_suffix(".done")).collect();
    let has_marker = |name: &str| markers.contains(name);
    let mut ready: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.name.ends_with(".csv") && !e.name.starts_with('.'))
        .filter(|e| !done_marker_required || has_marker(&e.name))
        .collect();
    ready.sort_by(|a, b| (a.modified, &a.name).cmp(&(b.modified, &b.name)));
    ready
}

fn scan(inbox: &Path) -> Result<Vec<Entry>, WmsError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(inbox).map_err(WmsError::io(inbox))? {
        let entry = entry.map_err(WmsError::io(inbox))?;
        let Ok(metadata) = entry.metadata() else { continue }; // gone since it was listed
        let Ok(name) = entry.file_name().into_string() else { continue }; // not ours: not UTF-8
        if metadata.is_file() {
            entries.push(Entry { name, modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH) });
        }
    }
    Ok(entries)
}

/// Takes files from the inbox.
#[derive(Debug)]
struct Taker {
    config: Arc<WmsConfig>,
    metrics: WmsMetrics,
    context: ConnectorContext,
    location_default: Option<LocationId>,
}

/// What the first pass found.
#[derive(Debug)]
struct Checked {
    sha256: String,
    lines: u64,
    bad_lines: u64,
    /// The errors written so far, when there are any.
    errors: Option<PathBuf>,
}

impl Taker {
    /// Takes every file ready now, oldest first, one at a time. A file that fails for a
    /// passing reason waits for its own next attempt; one that fails for a lasting reason
    /// is moved aside with the reason. Either way the files after it are taken.
    async fn take_ready_files(&self, waiting: &mut Waiting) -> Result<(), WmsError> {
        let inbox = self.config.inbox.clone();
        let entries = joined(tokio::task::spawn_blocking(move || scan(&inbox)).await)?;
        waiting.files.retain(|name, _| entries.iter().any(|e| &e.name == name));
        for entry in ready_files(&entries, self.config.done_marker_required) {
            if self.context.shutdown.is_cancelled() {
                return Err(WmsError::Stopped);
            }
            if !waiting.due(&entry.name) {
                continue;
            }
            let health = &self.context.health;
            match self.take(&entry.name).await {
                Ok(Taken::Archived) => {
                    waiting.done(&entry.name);
                    health.ok(SOURCE).await;
                }
                Ok(Taken::Rejected { bad_lines }) => {
                    waiting.done(&entry.name);
                    health.error(SOURCE, format!("file {} rejected: {bad_lines} bad lines", entry.name)).await;
                }
                Err(WmsError::Stopped) => return Err(WmsError::Stopped),
                Err(e) if e.retryable() => {
                    let pause = waiting.failed(&entry.name);
                    error!(file = %entry.name, error = %e, ?pause, "wms file left in the inbox; taken again later");
                    health.error(SOURCE, format!("file {} left in the inbox: {e}", entry.name)).await;
                }
                Err(e) => {
                    error!(file = %entry.name, error = %e, "wms file cannot be taken; moved to rejected/");
                    health.error(SOURCE, format!("file {} cannot be taken: {e}", entry.name)).await;
                    match self.move_aside(&entry.name, &e).await {
                        Ok(destination) => {
                            waiting.done(&entry.name);
                            self.metrics.files_total.with_label_values(&["rejected"]).inc();
                            warn!(rejected = %destination.display(), "wms file moved aside");
                        }
                        Err(moving) => {
                            let pause = waiting.failed(&entry.name);
                            error!(file = %entry.name, error = %moving, ?pause, "wms file could not be moved aside");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves a file that cannot be taken to `rejected/`, beside a `NAME.errors.json` that
    /// says why.
    async fn move_aside(&self, name: &str, reason: &WmsError) -> Result<PathBuf, WmsError> {
        let (from, dir) = (self.config.inbox.join(name), self.config.rejected_dir());
        let errors = dir.join(format!(".{name}.errors.json.tmp"));
        let error = LineError { line: 0, code: reason.code(), message: reason.to_string() };
        let file_name = name.to_string();
        joined(
            tokio::task::spawn_blocking(move || {
                let mut file = ErrorsFile::new(errors.clone(), &file_name);
                file.push(&error).map_err(WmsError::io(&errors))?;
                let errors = file.finish(0, "").map_err(WmsError::io(&errors))?.expect("one error was written");
                move_file(&from, &dir, Some(&errors))
            })
            .await,
        )
    }

    #[instrument(skip_all, fields(file = name))]
    async fn take(&self, name: &str) -> Result<Taken, WmsError> {
        let path = self.config.inbox.join(name);
        let Ok(metadata) = fs::metadata(&path) else {
            return Ok(Taken::Archived); // taken away since the scan, by another taker
        };
        if metadata.len() > self.config.file_bytes_max {
            return Err(WmsError::TooLarge { path, bytes: metadata.len(), max: self.config.file_bytes_max });
        }
        let now = Utc::now();
        let checked = self.blocking(name, now, |taker, name, now, stop| taker.check(name, now, stop)).await?;
        if checked.bad_lines > 0 {
            let destination = self.move_rejected(name, &checked).await?;
            self.metrics.files_total.with_label_values(&["rejected"]).inc();
            warn!(bad_lines = checked.bad_lines, lines = checked.lines, rejected = %destination.display(), "wms file rejected");
            return Ok(Taken::Rejected { bad_lines: checked.bad_lines });
        }
        self.metrics.file_lines.set(i64::try_from(checked.lines).unwrap_or(i64::MAX));
        let produced = tokio::select! {
            produced = self.produce(name, &checked.sha256, now) => produced,
            _ = self.context.shutdown.cancelled() => Err(WmsError::Stopped),
        };
        self.metrics.file_lines.set(0);
        produced?;
        let (from, to) = (path, self.config.archive_dir());
        let destination = joined(tokio::task::spawn_blocking(move || move_file(&from, &to, None)).await)?;
        self.metrics.files_total.with_label_values(&["archived"]).inc();
        info!(lines = checked.lines, archived = %destination.display(), "wms file produced and archived");
        Ok(Taken::Archived)
    }

    /// Runs `work` on a blocking thread with a copy of what it needs.
    async fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        now: DateTime<Utc>,
        work: impl FnOnce(&Taker, &str, DateTime<Utc>, &CancellationToken) -> Result<T, WmsError> + Send + 'static,
    ) -> Result<T, WmsError> {
        let taker = Taker {
            config: Arc::clone(&self.config),
            metrics: self.metrics.clone(),
            context: self.context.clone(),
            location_default: self.location_default.clone(),
        };
        let name = name.to_string();
        joined(tokio::task::spawn_blocking(move || work(&taker, &name, now, &taker.context.shutdown)).await)
    }

    fn file_context<'a>(&'a self, name: &'a str, sha256: &'a str, now: DateTime<Utc>) -> FileContext<'a> {
        FileContext::new(sha256, name, &self.config.source_instance, self.location_default.as_ref(), now)
    }

    /// The first pass: hashes the bytes and checks every row, writing each bad one to the
    /// errors file as it is found, so memory does not grow with the number of bad lines.
    fn check(&self, name: &str, now: DateTime<Utc>, stop: &CancellationToken) -> Result<Checked, WmsError> {
        let path = self.config.inbox.join(name);
        let file = File::open(&path).map_err(WmsError::io(&path))?;
        let mut reader = csv_reader(Hashing { inner: file, hasher: Sha256::new() });
        let mut errors = ErrorsFile::new(self.config.rejected_dir().join(format!(".{name}.errors.json.tmp")), name);
        let format = self.header(&mut reader);
        // The hash is known only at the end: a stand-in of the same shape makes the same
        // verdicts (`mapping::SHA256_PENDING`).
        let context = self.file_context(name, mapping::SHA256_PENDING, now);
        let mut lines = 0;
        match format {
            Err(e) => errors.push(&e).map_err(WmsError::io(&path))?,
            Ok(format) => {
                let mut record = csv::StringRecord::new();
                while let Some(row) = next_row(&mut reader, &mut record, &path)? {
                    lines += 1;
                    if lines % 10_000 == 0 && stop.is_cancelled() {
                        return Err(WmsError::Stopped);
                    }
                    let verdict = row.and_then(|line| {
                        let fields: Vec<&str> = record.iter().collect();
                        mapping::to_movement(&format, &context, line, &fields).map(|_| ())
                    });
                    if let Err(e) = verdict {
                        errors.push(&e).map_err(WmsError::io(&path))?;
                    }
                }
            }
        }
        // A bad header stops the reading; the rest is hashed all the same.
        let mut hashing = reader.into_inner();
        io::copy(&mut hashing, &mut io::sink()).map_err(WmsError::io(&path))?;
        let sha256 = hex::encode(hashing.hasher.finalize());
        let bad_lines = errors.count;
        let errors = errors.finish(lines, &sha256).map_err(WmsError::io(&path))?;
        Ok(Checked { sha256, lines, bad_lines, errors })
    }

    fn header<R: Read>(&self, reader: &mut csv::Reader<R>) -> Result<Format, LineError> {
        let unreadable = |e: csv::Error| LineError { line: 1, code: mapping::UNKNOWN_FORMAT, message: e.to_string() };
        let header = reader.headers().map_err(unreadable)?;
        mapping::read_header(header.iter(), self.location_default.is_some())
    }

    /// Moves a rejected file and its errors to `rejected/`: the errors first, so that a
    /// crash in between leaves the file in the inbox, to be checked again.
    async fn move_rejected(&self, name: &str, checked: &Checked) -> Result<PathBuf, WmsError> {
        let (from, dir) = (self.config.inbox.join(name), self.config.rejected_dir());
        let errors = checked.errors.clone().expect("a rejected file has errors");
        joined(tokio::task::spawn_blocking(move || move_file(&from, &dir, Some(&errors))).await)
    }

    /// The second pass: reads the file on a blocking thread into batches of records and
    /// sends them, keeping at most `in_flight_max` unacknowledged; done when every record
    /// is acknowledged.
    async fn produce(&self, name: &str, sha256: &str, now: DateTime<Utc>) -> Result<(), WmsError> {
        let (batches, received) = mpsc::channel(2);
        let sha = sha256.to_string();
        let reading =
            self.blocking(name, now, move |taker, name, now, _| taker.read_batches(name, &sha, now, &batches));
        let sending = async {
            // Owned here: when sending fails, the reader's next hand-over fails and it stops.
            let mut received = received;
            let (producer, topic) = (&self.context.producer, self.context.topics.movements.as_str());
            let timeout = Duration::from_millis(self.context.config.kafka.produce_timeout_ms);
            let attempts = self.config.send_attempts_max;
            let mut in_flight = FuturesUnordered::new();
            while let Some(batch) = received.recv().await {
                for Record { key, payload, line } in batch {
                    while in_flight.len() >= self.config.in_flight_max {
                        self.acknowledged(in_flight.next().await)?;
                    }
                    in_flight.push(send(producer, topic, key, payload, line, timeout, attempts));
                }
            }
            while !in_flight.is_empty() {
                self.acknowledged(in_flight.next().await)?;
            }
            Ok::<(), WmsError>(())
        };
        // The reader ends when the file does or the sender stopped listening.
        let (read, sent) = tokio::join!(reading, sending);
        sent.and(read)
    }

    fn acknowledged(&self, result: Option<Result<(), WmsError>>) -> Result<(), WmsError> {
        if let Some(result) = result {
            result?;
            self.metrics.lines_total.inc();
        }
        Ok(())
    }

    /// Reads the file into batches of `batch_lines_max` records and hands them over
    /// through the bounded channel, which holds back reading while the producer is busy.
    fn read_batches(
        &self,
        name: &str,
        sha256: &str,
        now: DateTime<Utc>,
        batches: &mpsc::Sender<Vec<Record>>,
    ) -> Result<(), WmsError> {
        let path = self.config.inbox.join(name);
        let file = File::open(&path).map_err(WmsError::io(&path))?;
        let mut reader = csv_reader(file);
        let changed = |error: LineError| WmsError::Changed { path: path.clone(), error };
        let format = self.header(&mut reader).map_err(changed)?;
        let context = self.file_context(name, sha256, now);
        let mut batch = Vec::with_capacity(self.config.batch_lines_max);
        let mut record = csv::StringRecord::new();
        while let Some(row) = next_row(&mut reader, &mut record, &path)? {
            let fields: Vec<&str> = record.iter().collect();
            let mapped = row.and_then(|line| mapping::to_movement(&format, &context, line, &fields).map(|m| (line, m)));
            let (line, mapped) = mapped.map_err(changed)?;
            batch.push(Record { key: mapped.movement.kafka_key().to_string(), payload: mapped.payload, line });
            if batch.len() == self.config.batch_lines_max {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(self.config.batch_lines_max));
                if batches.blocking_send(full).is_err() {
                    return Ok(()); // the sender stopped: it says why
                }
            }
        }
        if !batch.is_empty() {
            let _ = batches.blocking_send(batch);
        }
        Ok(())
    }
}

/// The end of a step run on a blocking thread. A step the runtime cancelled before it ran
/// (the process is stopping) is a stop, which leaves the file where it is; a panic goes on
/// as the panic it was, for the supervisor to report and restart.
pub(super) fn joined<T>(joined: Result<Result<T, WmsError>, tokio::task::JoinError>) -> Result<T, WmsError> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(WmsError::Stopped),
    }
}

/// One row on its way to Kafka.
#[derive(Debug)]
struct Record {
    key: String,
    payload: Vec<u8>,
    line: u64,
}

/// Sends one record, again after a pause while Kafka answers with a retryable error.
async fn send(
    producer: &Producer,
    topic: &str,
    key: String,
    payload: Vec<u8>,
    line: u64,
    timeout: Duration,
    attempts_max: u32,
) -> Result<(), WmsError> {
    let mut attempt = 1;
    loop {
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        match producer.send(record, timeout).await {
            Ok(_) => return Ok(()),
            Err((source, _)) => {
                let retryable = kafka_retryable(&source);
                if !retryable || attempt >= attempts_max {
                    return Err(WmsError::Kafka { line, source, retryable });
                }
                warn!(error = %source, line, attempt, "kafka refused a wms record; sending it again");
                tokio::time::sleep(send_backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Whether Kafka may take the record later: everything but what a person must fix
/// (authorization, a missing topic, a record the broker will never take).
pub(super) fn kafka_retryable(error: &KafkaError) -> bool {
    !onhand_core::kafka::is_permanent(error)
}

pub(super) fn csv_reader<R: Read>(inner: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new().trim(csv::Trim::All).buffer_capacity(64 * 1024).from_reader(inner)
}

/// The next row: its line, or why the CSV reader could not read it. `None` at the end;
/// an error only when the file cannot be read at all.
fn next_row<R: Read>(
    reader: &mut csv::Reader<R>,
    record: &mut csv::StringRecord,
    path: &Path,
) -> Result<Option<Result<u64, LineError>>, WmsError> {
    match reader.read_record(record) {
        Ok(false) => Ok(None),
        Ok(true) => Ok(Some(Ok(record.position().map_or(0, |p| p.line())))),
        Err(e) if e.is_io_error() => match e.into_kind() {
            csv::ErrorKind::Io(source) => Err(WmsError::Io { path: path.to_path_buf(), source }),
            _ => unreachable!("an io error"),
        },
        Err(e) => {
            record.clear();
            let line = e.position().map_or(0, |p| p.line());
            Ok(Some(Err(LineError { line, code: mapping::UNREADABLE_LINE, message: e.to_string() })))
        }
    }
}

/// Hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// `NAME.errors.json`, written as bad lines are found: `{"file", "errors": [{"line",
/// "code", "message"}, ...], "lines", "bad_lines", "sha256"}`. Created at the first bad
/// line, under a temporary name until the file is done.
struct ErrorsFile {
    path: PathBuf,
    file_name: String,
    out: Option<io::BufWriter<File>>,
    count: u64,
}

impl ErrorsFile {
    fn new(path: PathBuf, file_name: &str) -> ErrorsFile {
        ErrorsFile { path, file_name: file_name.to_string(), out: None, count: 0 }
    }

    fn push(&mut self, error: &LineError) -> io::Result<()> {
        let out = match &mut self.out {
            Some(out) => {
                out.write_all(b",\n")?;
                out
            }
            None => {
                let mut out = io::BufWriter::new(File::create(&self.path)?);
                write!(out, "{{\"file\": {},\n\"errors\": [\n", serde_json::to_string(&self.file_name)?)?;
                self.out.insert(out)
            }
        };
        serde_json::to_writer(&mut *out, error)?;
        self.count += 1;
        Ok(())
    }

    /// Ends the document; its path, when there was any error.
    fn finish(self, lines: u64, sha256: &str) -> io::Result<Option<PathBuf>> {
        let Some(mut out) = self.out else { return Ok(None) };
        write!(out, "\n],\n\"lines\": {lines}, \"bad_lines\": {}, \"sha256\": \"{sha256}\"}}\n", self.count)?;
        out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
        Ok(Some(self.path))
    }
}

/// Moves `from` into `dir` under its own name, or `STEM.N.csv` when that is taken, with
/// its errors (`STEM.errors.json`) first when given; then removes its `.done` marker.
/// The destination.
pub(super) fn move_file(from: &Path, dir: &Path, errors: Option<&Path>) -> Result<PathBuf, WmsError> {
    let name = from.file_name().and_then(|n| n.to_str()).unwrap_or("file.csv");
    let stem = name.strip_suffix(".csv").unwrap_or(name);
    let free =
        |stem: &str| !dir.join(format!("{stem}.csv")).exists() && !dir.join(format!("{stem}.errors.json")).exists();
    let stem = std::iter::once(stem.to_string())
        .chain((1..=10_000).map(|n| format!("{stem}.{n}")))
        .find(|s| free(s))
        .ok_or_else(|| WmsError::Io { path: dir.join(name), source: io::Error::other("no free name left") })?;
    if let Some(errors) = errors {
        let to = dir.join(format!("{stem}.errors.json"));
        fs::rename(errors, &to).map_err(WmsError::io(&to))?;
    }
    let to = dir.join(format!("{stem}.csv"));
    rename_or_copy(from, &to)?;
    let marker = from.with_file_name(format!("{name}.done"));
    match fs::remove_file(&marker) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            warn!(error = %e, marker = %marker.display(), "marker not removed")
        }
        _ => {}
    }
    Ok(to)
}

/// A rename, or a copy and a removal when `to` is on another file system.
fn rename_or_copy(from: &Path, to: &Path) -> Result<(), WmsError> {
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map_err(WmsError::io(to))?;
    File::open(to).and_then(|f| f.sync_all()).map_err(WmsError::io(to))?;
    fs::remove_file(from).map_err(WmsError::io(from))
}
