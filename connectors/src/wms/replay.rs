//! `onhand replay connector wms FILE`: an archived file taken again. It is copied back
//! into the inbox (under a dot-name first, then renamed, as a writer should, with its
//! `.done` marker when markers are required), where the connector takes it like any new
//! file. Its event ids are the file's SHA-256 and the line, whatever its name, so the
//! ledger skips the lines it recorded; the archive keeps its copy.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{config::WmsConfig, source::csv_reader};

/// Why an archived file could not be taken again.
#[derive(Debug, thiserror::Error)]
pub enum WmsReplayError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is not a file of the archive ({1}): only an archived file is taken again")]
    NotArchived(PathBuf, PathBuf),
    #[error("{0} is not a .csv file")]
    NotCsv(PathBuf),
    #[error("no free name left in the inbox for {0}")]
    NoName(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WmsReplayError + '_ {
    move |source| WmsReplayError::Io { path: path.to_path_buf(), source }
}

/// What taking a file again would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The archived file.
    pub file: PathBuf,
    /// Where its copy goes in the inbox.
    pub into: PathBuf,
    /// Its lines after the header: the records produced again.
    pub lines: u64,
    /// The SHA-256 of its bytes, in every event id of its lines (`wms:SHA256:LINE`).
    pub sha256: String,
    /// Whether a `.done` marker is written beside it (`done_marker_required`).
    pub marker: bool,
}

/// Finds the archived `file` (a path, or a name in the archive), counts its lines and
/// hashes it, and chooses a free name in the inbox: its own, or `STEM.replay-N.csv`.
pub fn plan(config: &WmsConfig, file: &Path) -> Result<Plan, WmsReplayError> {
    let archive = config.archive_dir();
    let path = if file.components().count() == 1 && !file.exists() { archive.join(file) } else { file.to_path_buf() };
    let canonical = path.canonicalize().map_err(io_error(&path))?;
    let archive = archive.canonicalize().map_err(io_error(&archive))?;
    if canonical.parent() != Some(archive.as_path()) || !canonical.is_file() {
        return Err(WmsReplayError::NotArchived(path, archive));
    }
    let name = canonical.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let Some(stem) = name.strip_suffix(".csv") else { return Err(WmsReplayError::NotCsv(path)) };
    let (lines, sha256) = read(&canonical)?;
    let free = |candidate: &str| {
        let at = config.inbox.join(candidate);
        !at.exists() && !config.inbox.join(format!("{candidate}.done")).exists()
    };
    let into = std::iter::once(name.clone())
        .chain((1..=1_000).map(|n| format!("{stem}.replay-{n}.csv")))
        .find(|candidate| free(candidate))
        .ok_or_else(|| WmsReplayError::NoName(name.clone()))?;
    Ok(Plan { file: canonical, into: config.inbox.join(into), lines, sha256, marker: config.done_marker_required })
}

/// The data lines of a CSV file and the SHA-256 of its bytes.
fn read(path: &Path) -> Result<(u64, String), WmsReplayError> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path).map_err(io_error(path))?, &mut hasher).map_err(io_error(path))?;
    let mut reader = csv_reader(File::open(path).map_err(io_error(path))?);
    let mut record = csv::ByteRecord::new();
    let mut lines = 0;
    // A line the CSV reader refuses counts too: the connector decides what to make of it.
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => lines += 1,
            Err(e) if e.is_io_error() => return Err(io_error(path)(io::Error::other(e.to_string()))),
            Err(_) => lines += 1,
        }
    }
    Ok((lines, hex::encode(hasher.finalize())))
}

/// Copies the file into the inbox under a dot-name the connector leaves alone, makes it
/// durable, then renames it to the plan's name (and writes its marker), so that the
/// connector never sees half of it.
pub fn apply(plan: &Plan) -> Result<PathBuf, WmsReplayError> {
    let name = plan.into.file_name().and_then(|n| n.to_str()).unwrap_or("replay.csv");
    let temporary = plan.into.with_file_name(format!(".{name}.replay.tmp"));
    fs::copy(&plan.file, &temporary).map_err(io_error(&temporary))?;
    File::open(&temporary).and_then(|f| f.sync_all()).map_err(io_error(&temporary))?;
    fs::rename(&temporary, &plan.into).map_err(io_error(&plan.into))?;
    if plan.marker {
        let marker = plan.into.with_file_name(format!("{name}.done"));
        File::create(&marker).map_err(io_error(&marker))?;
    }
    Ok(plan.into.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(inbox: &Path, marker: bool) -> WmsConfig {
        WmsConfig { inbox: inbox.to_path_buf(), done_marker_required: marker, ..WmsConfig::default() }
    }

    #[test]
    fn an_archived_file_goes_back_under_a_free_name_and_nothing_else_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), true);
        fs::create_dir_all(config.archive_dir()).unwrap();
        let text = "sku,location,kind,quantity,occurred_at\nA,dc,receipt,1,2026-11-20T09:00:00Z\nB,dc,receipt,2,2026-11-20T09:00:00Z\n";
        fs::write(config.archive_dir().join("day.csv"), text).unwrap();
        fs::write(dir.path().join("day.csv"), "a new file of the same name").unwrap();

        let plan = plan(&config, Path::new("day.csv")).unwrap();
        assert_eq!(plan.lines, 2);
        assert_eq!(plan.sha256, hex::encode(Sha256::digest(text.as_bytes())));
        assert_eq!(plan.into, dir.path().join("day.replay-1.csv"), "the inbox's own file is left alone");
        let into = apply(&plan).unwrap();
        assert_eq!(fs::read_to_string(&into).unwrap(), text);
        assert!(dir.path().join("day.replay-1.csv.done").exists(), "markers are required here");
        assert!(config.archive_dir().join("day.csv").exists(), "the archive keeps its copy");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let elsewhere = dir.path().join("day.csv");
        assert!(matches!(super::plan(&config, &elsewhere), Err(WmsReplayError::NotArchived(..))));
        assert!(matches!(super::plan(&config, Path::new("nothing.csv")), Err(WmsReplayError::Io { .. })));
    }
}
