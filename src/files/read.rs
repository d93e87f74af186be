//! Opening what squeeze reads. Only regular files: a device (`/dev/zero`) never ends, a FIFO
//! blocks and a directory is not data, so each is refused by name before a byte is read.
//! Models are memory-mapped, not read whole (safetensors is laid out for it: the header says
//! where each tensor lies); text descriptions (architectures, recipes) are read with a size cap.

use std::fs::File;
use std::path::Path;

use super::{FileError, io_err, kind_of};

/// The largest architecture or recipe file read: a description is a few kilobytes; a file of
/// many megabytes given as one is the wrong file.
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// Opens `path` for reading when it is a regular file, with its size.
pub fn open_regular(path: &Path) -> Result<(File, u64), FileError> {
    let file = open_nonblocking(path).map_err(io_err(path))?;
    // The type is read from the opened file, so what is checked is what is read.
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(FileError::NotRegularInput {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    Ok((file, meta.len()))
}

/// Opening a FIFO for reading waits for a writer; non-blocking, it returns at once and the
/// type check refuses it. On a regular file the flag changes nothing.
#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// A read-only memory map of a regular file: pages are read when touched, so a model's
/// tensors cost address space, not memory, until they are converted.
pub fn map(path: &Path) -> Result<memmap2::Mmap, FileError> {
    let (file, _) = open_regular(path)?;
    // SAFETY: the map is read-only and only ever read as bytes, whose every value is valid.
    // squeeze never writes a file it has open for reading (outputs that resolve to an input
    // are refused, and outputs replace files by rename, which leaves a mapped inode as it
    // was). Another process truncating the file while it is mapped would fault the reads:
    // that is the trade-off every memory-mapped safetensors loader makes.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))
}

/// Reads a text description (architecture, recipe) of at most [`MAX_TEXT_BYTES`].
pub fn read_text(path: &Path) -> Result<String, FileError> {
    use std::io::Read;
    let (file, len) = open_regular(path)?;
    if len > MAX_TEXT_BYTES {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            what: "a text description",
            size: len,
            max: MAX_TEXT_BYTES,
        });
    }
    let mut text = String::new();
    // The file may grow after the size was read: read no more than the cap allows.
    file.take(MAX_TEXT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_err(path))?;
    if text.len() as u64 > MAX_TEXT_BYTES {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            what: "a text description",
            size: text.len() as u64,
            max: MAX_TEXT_BYTES,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn devices_fifos_and_directories_are_refused() {
        let e = open_regular(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("character device"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = map(dir.path()).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without a writer, a blocking open would never return.
        let e = read_text(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
    }

    #[test]
    fn maps_empty_and_small_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        assert!(map(&p).unwrap().is_empty());
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(&map(&p).unwrap()[..], b"abc");
        assert_eq!(read_text(&p).unwrap(), "abc");
    }
}
