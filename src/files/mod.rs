//! Every file squeeze writes goes through here, and so does every hash it records; models,
//! data and descriptions are opened here too ([`read`]: regular files only, models
//! memory-mapped).
//!
//! - [`OutputCheck`]: before any work, a command lists its inputs and outputs; an output that
//!   is the same file as an input or as another output (however spelled: canonical path, same
//!   device and inode) is refused naming both, and so is an output that exists and is not a
//!   regular file (a directory, device, FIFO or socket). Each output's directory is probed for
//!   writing.
//! - [`write_atomic`] / [`write_all_atomic`]: a temporary file of our own naming
//!   (`.NAME.squeeze-PID-N.tmp`, with the destination's extension after it for encoders that
//!   need one) in the output's directory, fsynced, renamed over the output,
//!   and the directory fsynced; temporaries left by killed runs are removed.
//! - SHA-256 of byte slices and files ([`sha256`], [`sha256_file`]).
//! - safetensors serialization with sorted keys (the same inputs give the same bytes) and the
//!   checksum record every squeeze-written model carries ([`seal`], [`verify_checksum`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::Dtype;
use sha2::{Digest, Sha256};

mod read;
pub use read::{MAX_TEXT_BYTES, map, open_regular, read_text};

/// safetensors' own bound on a header's length.
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Metadata key of the checksum record: SHA-256 of each tensor and of the other metadata.
pub const CHECKSUM_KEY: &str = "squeeze.checksum";
/// Metadata key naming the file written together with this one and its content digest.
pub const PARTNER_KEY: &str = "squeeze.partner";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{output_role} {output} is the same file as {other_role} {other}; refusing to overwrite it (give another path)"
    )]
    Aliased {
        output_role: String,
        output: PathBuf,
        other_role: String,
        other: PathBuf,
    },
    #[error(
        "{role} {path} is a {kind}, not a regular file; squeeze writes only regular files (give a file path)"
    )]
    NotRegular {
        role: String,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{role} {path}: the directory {dir} does not exist")]
    NoDirectory {
        role: String,
        path: PathBuf,
        dir: PathBuf,
    },
    #[error(
        "{path} is a {kind}, not a regular file; squeeze reads models, data and descriptions from regular files"
    )]
    NotRegularInput { path: PathBuf, kind: &'static str },
    #[error(
        "{path} holds {}, more than {what} can hold ({} at most): is it the right file?",
        crate::units::bytes(*size as f64),
        crate::units::bytes(*max as f64)
    )]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        max: u64,
    },
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{role} {path}: cannot write in {dir}: {source}")]
    NotWritable {
        role: String,
        path: PathBuf,
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a path resolves to, for telling whether two spellings name the same file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// An existing file: its device and inode (hard links and symlinks included).
    Existing { dev: u64, ino: u64 },
    /// A file not there yet: its canonical directory and its name.
    Absent(PathBuf),
}

fn identity(path: &Path) -> std::io::Result<Identity> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(existing_identity(path, &meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = std::fs::canonicalize(directory_of(path))?;
            let name = path
                .file_name()
                .ok_or_else(|| std::io::Error::other("the path names no file"))?;
            Ok(Identity::Absent(dir.join(name)))
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn existing_identity(_: &Path, meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    Identity::Existing {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

#[cfg(not(unix))]
fn existing_identity(path: &Path, _: &std::fs::Metadata) -> Identity {
    Identity::Absent(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// The directory a file path is written in (`.` for a bare file name).
pub fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What kind of thing a non-regular file is, for messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    "special file"
}

/// The inputs and outputs of one command, checked together before it does any work.
#[derive(Debug, Default)]
pub struct OutputCheck {
    inputs: Vec<(String, PathBuf)>,
    outputs: Vec<(String, PathBuf)>,
}

impl OutputCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// A file (or a directory, meaning every file in it) the command reads; `role` names it in
    /// messages (`--model`, `the labels file`, ...). Paths that do not exist are ignored: the
    /// command reports those itself.
    pub fn input(mut self, role: &str, path: &Path) -> Self {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_file() {
                        self.inputs.push((format!("{role} (in)"), p));
                    }
                }
            }
        } else {
            self.inputs.push((role.to_string(), path.to_path_buf()));
        }
        self
    }

    /// Several input files under one role.
    pub fn inputs<'p>(mut self, role: &str, paths: impl IntoIterator<Item = &'p Path>) -> Self {
        for p in paths {
            self = self.input(role, p);
        }
        self
    }

    /// A file the command will write.
    pub fn output(mut self, role: &str, path: &Path) -> Self {
        self.outputs.push((role.to_string(), path.to_path_buf()));
        self
    }

    /// Refuses an output that is the same file as an input or another output, that exists and
    /// is not a regular file, or whose directory is missing or not writable (probed by creating
    /// and removing a temporary file there, which also clears our stale temporaries).
    pub fn check(&self) -> Result<(), FileError> {
        let mut inputs = Vec::new();
        for (role, path) in &self.inputs {
            if let Ok(id) = identity(path) {
                inputs.push((role, path, id));
            }
        }
        let mut seen: Vec<(&String, &PathBuf, Identity)> = Vec::new();
        for (role, path) in &self.outputs {
            let no_dir = || FileError::NoDirectory {
                role: role.clone(),
                path: path.clone(),
                dir: directory_of(path).to_path_buf(),
            };
            match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => {
                    return Err(FileError::NotRegular {
                        role: role.clone(),
                        path: path.clone(),
                        kind: kind_of(&meta),
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !directory_of(path).is_dir() {
                        return Err(no_dir());
                    }
                }
                Err(source) => return Err(io_err(path)(source)),
            }
            let id = identity(path).map_err(|_| no_dir())?;
            if let Some((other_role, other, _)) = inputs
                .iter()
                .map(|(r, p, i)| (*r, *p, i))
                .chain(seen.iter().map(|(r, p, i)| (*r, *p, i)))
                .find(|(_, _, i)| **i == id)
            {
                return Err(FileError::Aliased {
                    output_role: role.clone(),
                    output: path.clone(),
                    other_role: other_role.clone(),
                    other: other.clone(),
                });
            }
            probe_writable(role, path)?;
            seen.push((role, path, id));
        }
        Ok(())
    }
}

/// Creates and removes a temporary file beside `path`, so a command learns before its work
/// that it could not write its output.
fn probe_writable(role: &str, path: &Path) -> Result<(), FileError> {
    let dir = directory_of(path);
    remove_stale_temporaries(dir);
    let tmp = Temporary::create(path).map_err(|source| FileError::NotWritable {
        role: role.to_string(),
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        source,
    })?;
    drop(tmp);
    Ok(())
}

/// The marker in our temporaries' names: `.NAME.squeeze-PID-N.tmp[.EXT]`.
const TEMP_MARK: &str = ".squeeze-";

/// A temporary file beside its destination, removed on drop unless renamed into place.
struct Temporary {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Temporary {
    fn create(dest: &Path) -> std::io::Result<Temporary> {
        Self::create_with_suffix(dest, "")
    }

    /// `suffix` follows `.tmp` in the name (`.png` for encoders that go by the extension).
    fn create_with_suffix(dest: &Path, suffix: &str) -> std::io::Result<Temporary> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = directory_of(dest).join(format!(
                ".{name}{TEMP_MARK}{}-{n}.tmp{suffix}",
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Temporary {
                        path,
                        file: Some(file),
                    });
                }
                // Left by an earlier process with our pid: take the next number.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `bytes` and flushes them to the disk.
    fn fill(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("temporary file already closed"))?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    /// Renames the temporary over `dest`; from here on it is the destination's business.
    fn commit(mut self, dest: &Path) -> std::io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, dest)?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The process id in one of our temporaries' names, when `name` is one.
fn temporary_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(TEMP_MARK)?;
    let tail = &rest[at + TEMP_MARK.len()..];
    // `PID-N.tmp`, or `PID-N.tmp.EXT` for writers that need the destination's extension.
    let (numbers, after) = tail.split_once(".tmp")?;
    if !(after.is_empty() || after.starts_with('.') && !after[1..].contains('.')) {
        return None;
    }
    let (pid, n) = numbers.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether a process with this id is running.
#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_alive(_: u32) -> bool {
    true
}

/// Removes temporaries of our naming in `dir` whose process no longer runs (left by a killed
/// write). Returns how many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temporary_pid(&name) else {
            continue;
        };
        if pid != me
            && !process_alive(pid)
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Flushes a directory's entries (a rename) to the disk.
fn sync_directory(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes `bytes` to `path` so that it holds either its old content or all of the new one,
/// whatever happens: a temporary file in the same directory, fsynced, renamed over `path`, and
/// the directory fsynced. Refuses to replace anything but a regular file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_all_atomic(&[(path, bytes)])
}

/// Writes several files as [`write_atomic`] does, with every temporary complete and on disk
/// before the first rename: each file ends up entirely old or entirely new, and the renames
/// follow one another with nothing left to fail between them but the renames themselves.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<(), FileError> {
    let mut temps = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        if let Ok(meta) = std::fs::metadata(path)
            && !meta.is_file()
        {
            return Err(FileError::NotRegular {
                role: "output".into(),
                path: path.to_path_buf(),
                kind: kind_of(&meta),
            });
        }
        remove_stale_temporaries(directory_of(path));
        let mut tmp = Temporary::create(path).map_err(io_err(path))?;
        tmp.fill(bytes).map_err(io_err(path))?;
        temps.push(tmp);
    }
    for (tmp, (path, _)) in temps.into_iter().zip(files) {
        tmp.commit(path).map_err(io_err(path))?;
    }
    for (path, _) in files {
        sync_directory(directory_of(path)).map_err(io_err(path))?;
    }
    Ok(())
}

/// Writes `path` atomically through a writer that takes a path (an image encoder): `write`
/// fills the temporary path it is given, which ends in the destination's extension; the file is then fsynced and renamed as by
/// [`write_atomic`]. The error of `write` is reported as an I/O error on `path`.
pub fn write_atomic_with<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), FileError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        return Err(FileError::NotRegular {
            role: "output".into(),
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    remove_stale_temporaries(directory_of(path));
    let suffix = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut tmp = Temporary::create_with_suffix(path, &suffix).map_err(io_err(path))?;
    // The writer opens the path itself.
    tmp.file = None;
    write(&tmp.path).map_err(|e| FileError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    std::fs::File::open(&tmp.path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))?;
    tmp.commit(path).map_err(io_err(path))?;
    sync_directory(directory_of(path)).map_err(io_err(path))
}

/// Opens `path` for a file written as it goes (a journal, a timings log): appended to when
/// `append`, else started empty. Such a file cannot be replaced atomically; what it may not be
/// is anything but a regular file (a directory, device, FIFO or socket is refused by name).
pub fn open_stream(role: &str, path: &Path, append: bool) -> Result<std::fs::File, FileError> {
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        return Err(FileError::NotRegular {
            role: role.into(),
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(io_err(path))
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of a file's content, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String, FileError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One tensor to serialize: name, dtype, shape, little-endian bytes.
pub type TensorBytes = (String, Dtype, Vec<usize>, Vec<u8>);

fn dtype_name(dt: Dtype) -> String {
    // Dtype's Debug is its safetensors name (F32, U8, BF16, ...).
    format!("{dt:?}")
}

/// The SHA-256 of one tensor: its name, dtype, shape and bytes, so a changed shape or a
/// renamed tensor is caught as surely as a flipped bit.
fn tensor_digest(name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(dtype_name(dtype).as_bytes());
    h.update([0]);
    for d in shape {
        h.update((*d as u64).to_le_bytes());
    }
    h.update(data);
    hex(&h.finalize())
}

/// The SHA-256 of the metadata other than the checksum and partner records.
fn metadata_digest(metadata: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in metadata {
        if k == CHECKSUM_KEY || k == PARTNER_KEY {
            continue;
        }
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    hex(&h.finalize())
}

/// The checksum record: `{"sha256": {"metadata": …, "tensors": {name: …}}}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Checksums {
    sha256: Digests,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Digests {
    metadata: String,
    tensors: BTreeMap<String, String>,
}

/// Adds the checksum record to `metadata`: the SHA-256 of every tensor and of the rest of the
/// metadata (the partner record aside). Returns the file's content digest (see
/// [`content_digest`]).
pub fn seal(tensors: &[TensorBytes], metadata: &mut BTreeMap<String, String>) -> String {
    let record = Checksums {
        sha256: Digests {
            metadata: metadata_digest(metadata),
            tensors: tensors
                .iter()
                .map(|(n, dt, shape, data)| (n.clone(), tensor_digest(n, *dt, shape, data)))
                .collect(),
        },
    };
    // A struct of strings always serializes.
    let json = serde_json::to_string(&record).unwrap_or_default();
    let digest = sha256(json.as_bytes());
    metadata.insert(CHECKSUM_KEY.to_string(), json);
    digest
}

/// A sealed file's content digest: the SHA-256 of its checksum record, which covers every
/// tensor and all metadata but the partner record. `None` for a file without one.
pub fn content_digest(metadata: &BTreeMap<String, String>) -> Option<String> {
    metadata.get(CHECKSUM_KEY).map(|j| sha256(j.as_bytes()))
}

/// What [`verify_checksum`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Every tensor and the metadata match the record.
    Intact,
    /// The file carries no checksum record (written by another program): nothing to verify.
    Unsealed,
}

/// Checks a file's tensors and metadata against its checksum record. The error names what
/// does not match: "file is corrupt (checksum mismatch in fc1.values)".
pub fn verify_checksum(
    path: &Path,
    tensors: &safetensors::SafeTensors<'_>,
    metadata: &BTreeMap<String, String>,
) -> Result<Verified, FileError> {
    let Some(json) = metadata.get(CHECKSUM_KEY) else {
        return Ok(Verified::Unsealed);
    };
    let corrupt = |msg: String| FileError::Corrupt {
        path: path.to_path_buf(),
        msg: format!("file is corrupt ({msg})"),
    };
    let record: Checksums = serde_json::from_str(json).map_err(|_| {
        corrupt(format!(
            "metadata \"{CHECKSUM_KEY}\" is not a checksum record"
        ))
    })?;
    if record.sha256.metadata != metadata_digest(metadata) {
        return Err(corrupt("checksum mismatch in the metadata".into()));
    }
    let mut names = tensors.names();
    names.sort();
    if let Some(missing) = record
        .sha256
        .tensors
        .keys()
        .find(|k| !names.contains(&k.as_str()))
    {
        return Err(corrupt(format!("tensor {missing} is missing")));
    }
    for name in &names {
        let Some(expected) = record.sha256.tensors.get(*name) else {
            return Err(corrupt(format!(
                "tensor {name} is not in the checksum record"
            )));
        };
        let view = tensors
            .tensor(name)
            .map_err(|e| corrupt(format!("tensor {name}: {e}")))?;
        if *expected != tensor_digest(name, view.dtype(), view.shape(), view.data()) {
            return Err(corrupt(format!("checksum mismatch in {name}")));
        }
    }
    Ok(Verified::Intact)
}

/// Tensors that cannot be written as safetensors.
#[derive(Debug, thiserror::Error)]
pub enum SerializeError {
    #[error("tensor {name}: shape {shape:?} is too large")]
    TooLarge { name: String, shape: Vec<usize> },
    #[error("tensor {name}: {held} bytes do not hold shape {shape:?} of {dtype:?}")]
    Length {
        name: String,
        held: usize,
        shape: Vec<usize>,
        dtype: Dtype,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// safetensors bytes with the header's keys (tensors and metadata) in sorted order, so the same
/// tensors and metadata always give the same file. Tensors are laid out by decreasing element
/// size, then name, so each stays aligned to its element size.
pub fn serialize(
    tensors: &[TensorBytes],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, SerializeError> {
    let mut order: Vec<&TensorBytes> = tensors.iter().collect();
    order.sort_by(|a, b| {
        b.1.bitsize()
            .cmp(&a.1.bitsize())
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut header: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut offset = 0usize;
    for (name, dtype, shape, data) in &order {
        let count = shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or_else(|| SerializeError::TooLarge {
                name: name.clone(),
                shape: shape.clone(),
            })?;
        // Sub-byte dtypes are not written: squeeze packs low-bit codes into U8 tensors itself.
        let bytes = count
            .checked_mul(dtype.bitsize())
            .filter(|b| b % 8 == 0)
            .map(|b| b / 8);
        if bytes != Some(data.len()) {
            return Err(SerializeError::Length {
                name: name.clone(),
                held: data.len(),
                shape: shape.clone(),
                dtype: *dtype,
            });
        }
        let end = offset + data.len();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype_name(*dtype),
                "shape": shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&header)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend((json.len() as u64).to_le_bytes());
    out.extend(json);
    for (_, _, _, data) in order {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// A safetensors file about to be written: its tensors and metadata, sealed with the checksum
/// record.
#[derive(Debug, Clone)]
pub struct Sealed {
    tensors: Vec<TensorBytes>,
    metadata: BTreeMap<String, String>,
    digest: String,
}

impl Sealed {
    pub fn new(tensors: Vec<TensorBytes>, mut metadata: BTreeMap<String, String>) -> Sealed {
        let digest = seal(&tensors, &mut metadata);
        Sealed {
            tensors,
            metadata,
            digest,
        }
    }

    /// The content digest ([`content_digest`]).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Records `partner`, written together with this file at `this`, and its content digest.
    pub fn set_partner(&mut self, this: &Path, partner: &Path, partner_digest: &str) {
        let record = Partner {
            file: relative_to(directory_of(this), partner)
                .display()
                .to_string(),
            sha256: partner_digest.to_string(),
        };
        self.metadata
            .insert(PARTNER_KEY.to_string(), record.to_json());
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, SerializeError> {
        serialize(&self.tensors, &self.metadata)
    }
}

/// `path` as seen from `dir` (`b.safetensors`, `../out/b.safetensors`); `path` unchanged when
/// either cannot be resolved.
fn relative_to(dir: &Path, path: &Path) -> PathBuf {
    let (Ok(from), Ok(to_dir)) = (
        std::fs::canonicalize(dir),
        std::fs::canonicalize(directory_of(path)),
    ) else {
        return path.to_path_buf();
    };
    let Some(name) = path.file_name() else {
        return path.to_path_buf();
    };
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to_dir.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out.push(name);
    out
}

/// Whether the partner recorded in a file's metadata still is the file it was written with:
/// `None` when the file records no partner or the partner matches; otherwise a warning.
pub fn partner_warning(path: &Path, metadata: &BTreeMap<String, String>) -> Option<String> {
    let partner = Partner::of(metadata)?;
    let at = directory_of(path).join(&partner.file);
    let their = read_metadata(&at);
    match their {
        Ok(meta) if content_digest(&meta).as_deref() == Some(partner.sha256.as_str()) => None,
        Ok(_) => Some(format!(
            "{}: it was written together with {}, which has changed since (the pair no longer matches)",
            path.display(),
            at.display()
        )),
        Err(_) => Some(format!(
            "{}: it was written together with {}, which cannot be read",
            path.display(),
            at.display()
        )),
    }
}

/// Why a safetensors file's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(
        "the header claims {claims} bytes but the file holds {size} (and a header at most {MAX_SAFETENSORS_HEADER})"
    )]
    HeaderSize { claims: u64, size: u64 },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The metadata of a safetensors file, reading only its header.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, MetadataError> {
    let (mut f, size) = open_regular(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > MAX_SAFETENSORS_HEADER {
        return Err(MetadataError::HeaderSize { claims: n, size });
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let value: serde_json::Value = serde_json::from_slice(&header)?;
    Ok(value
        .get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default())
}

/// The partner record: the other file of a pair written together and its content digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partner {
    /// The partner's path as given to the command that wrote the pair.
    pub file: String,
    /// The partner's content digest ([`content_digest`]) when both were written.
    pub sha256: String,
}

impl Partner {
    pub fn of(metadata: &BTreeMap<String, String>) -> Option<Partner> {
        serde_json::from_str(metadata.get(PARTNER_KEY)?).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_strings() {
        assert_eq!(
            sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn temporary_names_are_recognised() {
        assert_eq!(temporary_pid(".m.safetensors.squeeze-123-4.tmp"), Some(123));
        assert_eq!(temporary_pid(".m.safetensors.123.tmp"), None);
        assert_eq!(temporary_pid("m.squeeze-1-2.tmp"), None);
        assert_eq!(temporary_pid(".x.squeeze-1-a.tmp"), None);
        assert_eq!(temporary_pid(".a.png.squeeze-7-0.tmp.png"), Some(7));
        assert_eq!(temporary_pid(".a.squeeze-7-0.tmpx"), None);
    }

    #[test]
    fn serialize_is_read_back_and_sorted() {
        let tensors = vec![
            ("b".to_string(), Dtype::U8, vec![3], vec![1, 2, 3]),
            (
                "a".to_string(),
                Dtype::F32,
                vec![2],
                [1f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("z".to_string(), "1".to_string());
        meta.insert("a".to_string(), "2".to_string());
        seal(&tensors, &mut meta);
        let bytes = serialize(&tensors, &meta).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), &[1, 2, 3]);
        let p = Path::new("x.safetensors");
        assert_eq!(verify_checksum(p, &st, &meta).unwrap(), Verified::Intact);
        let mut other = meta.clone();
        other.insert("a".to_string(), "3".to_string());
        let e = verify_checksum(p, &st, &other).unwrap_err().to_string();
        assert_eq!(
            e,
            "x.safetensors: file is corrupt (checksum mismatch in the metadata)"
        );
        // Reversed input order gives the same bytes.
        let rev: Vec<TensorBytes> = tensors.iter().rev().cloned().collect();
        assert_eq!(serialize(&rev, &meta).unwrap(), bytes);
    }
}
