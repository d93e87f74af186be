//! The session journal: every evaluated point and every change of the current configuration,
//! appended as JSON lines as they happen, so a crash, a closed terminal or an accidental quit
//! loses nothing. `read` takes a journal back (ignoring a torn last line).
//!
//! Default location: `$XDG_DATA_HOME/squeeze/sessions/` (or `~/.local/share/...`, the
//! platform's data directory elsewhere), one file per model and evaluation set.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crossbeam_channel::{Sender, unbounded};
use serde::{Deserialize, Serialize};

use super::config::Config;
use super::eval::{Figures, Stage};
use super::jobs::WorkerMsg;
use super::session::Provenance;

/// The format version written in each session header.
pub const JOURNAL_VERSION: u32 = 1;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// Written when a session starts: what the points were measured on.
    Session {
        version: u32,
        model: String,
        data: String,
        /// Hex of the model + data fingerprint; points of another fingerprint do not apply.
        fingerprint: String,
    },
    Point {
        key: String,
        stage: Stage,
        config: Config,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        figures: Box<Figures>,
        /// How the measured model came about (compressed as it is unless said).
        #[serde(default, skip_serializing_if = "Provenance::is_compressed")]
        provenance: Provenance,
        /// Hex hash of the inputs activations were calibrated on, for configurations that
        /// quantize activations (absent: the evaluation set's own samples).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calibration: Option<String>,
        /// A fine-tuned point's model: the SHA-256 of the packed file saved beside the journal
        /// (`finetune::tuned_model_name` names it in `models_dir`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    Failed {
        key: String,
        stage: Stage,
        config: Config,
        error: String,
    },
    /// The configuration being edited (written on every change), and how the current
    /// point's model came about: a fine-tuned point stays current after `--resume`.
    Current {
        config: Config,
        #[serde(default, skip_serializing_if = "Provenance::is_compressed")]
        provenance: Provenance,
    },
    /// The configuration pinned in a slot (A to D), or none, and how the pinned point's
    /// model came about (compressed as it is unless said).
    Pin {
        config: Option<Config>,
        #[serde(default = "slot_a")]
        slot: char,
        #[serde(default, skip_serializing_if = "Provenance::is_compressed")]
        provenance: Provenance,
    },
}

fn slot_a() -> char {
    'A'
}

pub fn key_hex(key: u64) -> String {
    format!("{key:016x}")
}

pub fn parse_key(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{}: cannot open the session journal: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the session was recorded for {model} on {data}, not for this model and data", path.display())]
    OtherModel {
        path: PathBuf,
        model: String,
        data: String,
    },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
}

/// What a journal file held.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// Lines that could not be read (a torn last line after a crash, or an edit by hand).
    pub skipped: usize,
}

/// Reads every record of `path`. A record of a newer format or a damaged line (a torn write,
/// bytes that are not text) is skipped and counted, never fatal: the rest of the session is
/// still worth having. A path that cannot be read (a directory, no permission) is an error.
pub fn read(path: &Path) -> Result<Loaded, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    // A directory, FIFO or device is refused by name before a byte is read.
    let (file, _) = crate::files::open_regular(path)?;
    let mut loaded = Loaded::default();
    let mut reader = BufReader::new(file);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        // Reading lines as bytes: a line that is not UTF-8 is one damaged line, and an error
        // of the file itself ends the reading instead of being retried forever.
        if reader.read_until(b'\n', &mut bytes).map_err(io)? == 0 {
            break;
        }
        let Ok(line) = std::str::from_utf8(&bytes) else {
            loaded.skipped += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => loaded.records.push(r),
            Err(_) => loaded.skipped += 1,
        }
    }
    Ok(loaded)
}

/// Checks that the journal's session headers match `fingerprint`.
pub fn check_fingerprint(
    path: &Path,
    loaded: &Loaded,
    fingerprint: u64,
) -> Result<(), JournalError> {
    let want = key_hex(fingerprint);
    for r in &loaded.records {
        if let Record::Session {
            model,
            data,
            fingerprint,
            ..
        } = r
            && *fingerprint != want
        {
            return Err(JournalError::OtherModel {
                path: path.to_path_buf(),
                model: model.clone(),
                data: data.clone(),
            });
        }
    }
    Ok(())
}

/// Appends records to a journal on its own thread, so the UI thread never waits on the disk.
/// Write errors are reported once on the worker channel as a failed task.
pub struct JournalWriter {
    tx: Option<Sender<Record>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub path: PathBuf,
}

impl JournalWriter {
    pub fn open(path: &Path, errors: Sender<WorkerMsg>) -> Result<JournalWriter, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = crate::files::open_stream("session journal", path, true)?;
        let (tx, rx) = unbounded::<Record>();
        let shown = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("squeeze-journal".into())
            .spawn(move || {
                let mut failed = false;
                for record in rx {
                    let mut line = serde_json::to_string(&record).unwrap_or_default();
                    line.push('\n');
                    // One write per record keeps lines whole when the process dies between.
                    if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush())
                        && !failed
                    {
                        failed = true;
                        let _ = errors.send(WorkerMsg::TaskDone {
                            task: "journal".into(),
                            result: Err(format!(
                                "cannot write the session journal {}: {e}",
                                shown.display()
                            )),
                        });
                    }
                }
            })
            .map_err(io)?;
        Ok(JournalWriter {
            tx: Some(tx),
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }

    pub fn append(&self, record: Record) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(record);
        }
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish the queue, then we wait for it.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The platform's per-user data directory for squeeze.
pub fn data_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if cfg!(target_os = "windows") {
        return env("APPDATA").map(|d| d.join("squeeze"));
    }
    if cfg!(target_os = "macos") {
        return env("HOME").map(|h| h.join("Library/Application Support/squeeze"));
    }
    env("XDG_DATA_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".local/share")))
        .map(|d| d.join("squeeze"))
}

/// The folder beside a journal that holds its fine-tuned models: `session.jsonl` keeps them in
/// `session.models/`.
pub fn models_dir(journal: &Path) -> PathBuf {
    journal.with_extension("models")
}

/// The default journal of a model and data set: `<data dir>/sessions/<model>-<fp>.jsonl`.
pub fn default_path(model_name: &str, fingerprint: u64) -> Option<PathBuf> {
    let safe: String = model_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    data_dir().map(|d| {
        d.join("sessions")
            .join(format!("{safe}-{}.jsonl", &key_hex(fingerprint)[..8]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/session.jsonl");
        let (tx, _rx) = unbounded();
        {
            let w = JournalWriter::open(&path, tx).unwrap();
            w.append(Record::Session {
                version: JOURNAL_VERSION,
                model: "m".into(),
                data: "d".into(),
                fingerprint: key_hex(7),
            });
            w.append(Record::Point {
                key: key_hex(42),
                stage: Stage::Full,
                config: Config::dense(2),
                label: None,
                figures: Box::new(Figures {
                    size_bytes: Some(10),
                    ..Figures::default()
                }),
                provenance: Provenance::Compressed,
                calibration: None,
                model: None,
            });
            w.append(Record::Current {
                config: Config::dense(2),
                provenance: Provenance::Compressed,
            });
        }
        // A crash in the middle of a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"type\":\"point\",\"key\":\"00").unwrap();
        drop(f);
        let loaded = read(&path).unwrap();
        assert_eq!(loaded.records.len(), 3);
        assert_eq!(loaded.skipped, 1);
        assert!(check_fingerprint(&path, &loaded, 7).is_ok());
        let err = check_fingerprint(&path, &loaded, 8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("recorded for m on d"), "{err}");
        assert_eq!(parse_key(&key_hex(42)), Some(42));
    }

    #[test]
    fn lines_written_before_pins_and_provenance_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.jsonl");
        let mut bytes = concat!(
            r#"{"type":"point","key":"00000000000000aa","stage":"full","config":{"layers":[]},"figures":{"size_bytes":10}}"#,
            "\n",
            r#"{"type":"pin","config":null}"#,
            "\n",
        )
        .as_bytes()
        .to_vec();
        bytes.extend_from_slice(b"\xff\xfe not text\n");
        std::fs::write(&path, bytes).unwrap();
        let loaded = read(&path).unwrap();
        assert_eq!(loaded.records.len(), 2);
        assert!(matches!(
            &loaded.records[0],
            Record::Point {
                provenance: Provenance::Compressed,
                calibration: None,
                ..
            }
        ));
        assert!(matches!(loaded.records[1], Record::Pin { slot: 'A', .. }));
    }

    /// A directory given as the journal used to be read forever (every read failed and was
    /// counted as a damaged line): it is refused at once, by reading and by writing.
    #[test]
    fn a_directory_is_not_a_journal() {
        let dir = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        let (tx, _rx) = unbounded();
        let err = JournalWriter::open(dir.path(), tx)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
    }
}
