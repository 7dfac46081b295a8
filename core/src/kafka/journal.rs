//! `onhand dev`'s copy of its dead letters: the embedded Kafka is lost at every stop, so
//! each dead letter Kafka acknowledged is also appended to a file (one JSON line, synced
//! to disk before the sender moves on), and the next start produces them again into the
//! fresh topic, in order and to their partitions: the same records at the same offsets.

use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Write},
    path::Path,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde::{Deserialize, Serialize};

/// One dead letter as the journal keeps it: where Kafka put it, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub partition: i32,
    pub offset: i64,
    /// Base64, absent when the record had no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Base64.
    pub payload: String,
    /// The headers in order, as (name, value); dead letters' values are UTF-8 text.
    pub headers: Vec<(String, String)>,
}

impl JournalRecord {
    pub fn new(
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Vec<(String, String)>,
    ) -> Self {
        JournalRecord {
            partition,
            offset,
            key: key.map(|k| STANDARD.encode(k)),
            payload: STANDARD.encode(payload),
            headers,
        }
    }

    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        self.key.as_deref().and_then(|k| STANDARD.decode(k).ok())
    }

    pub fn payload_bytes(&self) -> Vec<u8> {
        STANDARD.decode(&self.payload).unwrap_or_default()
    }
}

/// Appends `record` to the journal at `path` and syncs it to disk.
pub fn append(path: &Path, record: &JournalRecord) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    // One write per line: concurrent senders' lines never interleave in an appended file.
    file.write_all(&line)?;
    file.sync_data()
}

/// Every record of the journal at `path` (none when it does not exist), by partition and
/// offset. A line that cannot be read (a write cut by a crash) is skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<JournalRecord>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    for line in BufReader::new(file).lines() {
        if let Ok(record) = serde_json::from_str::<JournalRecord>(&line?) {
            records.push(record);
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records.dedup_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// Writes the journal at `path` again with only `records` (after a start read it: a line
/// cut by a crash would otherwise swallow the next one appended).
pub fn rewrite(path: &Path, records: &[JournalRecord]) -> std::io::Result<()> {
    let fresh = path.with_extension("ndjson.tmp");
    let mut text = Vec::new();
    for record in records {
        text.extend(serde_json::to_vec(record).map_err(std::io::Error::other)?);
        text.push(b'\n');
    }
    let mut file = std::fs::File::create(&fresh)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&fresh, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letters.ndjson");
        assert!(read(&path).unwrap().is_empty(), "no journal yet: nothing");
        let second = JournalRecord::new(0, 1, None, b"{}", vec![("onhand.dlq.reason_code".into(), "not_json".into())]);
        let first = JournalRecord::new(0, 0, Some(b"sku-1"), b"\xff", vec![]);
        append(&path, &second).unwrap();
        append(&path, &first).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"partition\":").unwrap();
        let records = read(&path).unwrap();
        assert_eq!(records, vec![first.clone(), second.clone()]);
        rewrite(&path, &records).unwrap();
        let third = JournalRecord::new(1, 0, None, b"x", vec![]);
        append(&path, &third).unwrap();
        assert_eq!(read(&path).unwrap(), vec![first.clone(), second, third], "rewritten whole, appended after");
        assert_eq!((records[0].key_bytes(), records[0].payload_bytes()), (Some(b"sku-1".to_vec()), b"\xff".to_vec()));
    }
}
