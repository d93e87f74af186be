//! A data file read as a stream: raw, or gzip (every member of a multi-member file) decoded
//! as it is read. Readers take no more than they need, and every size a header claims is
//! checked before anything that large is allocated: against what the file can still hold
//! (exactly for a raw file; for gzip, deflate's largest expansion) and against the memory
//! limit.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{DataError, format_err};

/// Deflate expands at most 1032:1 (a 258-byte match in under two bits): a gzip stream of `n`
/// bytes holds at most this many times `n`.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

/// Reads are made in blocks of this size, so a claim larger than the data behind it fails at
/// the end of the data, not by allocating the claim first.
const BLOCK: usize = 1 << 20;

pub(crate) struct Source<'r> {
    path: PathBuf,
    reader: Box<dyn BufRead + 'r>,
    /// The most bytes the stream can still give: exact for a raw file, a bound otherwise.
    left: u64,
    exact: bool,
    /// What decodes the stream, for messages: `gzip`, or `compressed` for an archive member.
    codec: &'static str,
    /// Bytes given so far, for messages.
    offset: u64,
}

impl Source<'static> {
    /// Opens a regular file, decoding gzip when it starts with gzip's magic bytes.
    pub(crate) fn open(path: &Path) -> Result<Source<'static>, DataError> {
        let (file, len) = crate::files::open_regular(path)?;
        let mut raw = BufReader::with_capacity(1 << 16, file);
        let head = raw.fill_buf().map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Source {
                path: path.to_path_buf(),
                reader: Box::new(BufReader::with_capacity(
                    1 << 16,
                    flate2::bufread::MultiGzDecoder::new(raw),
                )),
                left: len.saturating_mul(MAX_DEFLATE_RATIO),
                exact: false,
                codec: "gzip",
                offset: 0,
            }
        } else {
            Source {
                path: path.to_path_buf(),
                reader: Box::new(raw),
                left: len,
                exact: true,
                codec: "raw",
                offset: 0,
            }
        })
    }
}

impl<'r> Source<'r> {
    /// A stream of at most `most` bytes (exactly `most` when `exact`), e.g. an archive member.
    pub(crate) fn from_reader(
        path: &Path,
        reader: impl Read + 'r,
        most: u64,
        exact: bool,
    ) -> Source<'r> {
        Source {
            path: path.to_path_buf(),
            reader: Box::new(BufReader::with_capacity(1 << 16, reader)),
            left: most,
            exact,
            codec: "compressed",
            offset: 0,
        }
    }

    /// The file the stream reads, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `n` bytes: fewer only where the stream ends.
    pub(crate) fn prefix(&mut self, n: usize) -> Result<Vec<u8>, DataError> {
        let mut out = vec![0u8; n];
        let got = self.fill(&mut out)?;
        out.truncate(got);
        Ok(out)
    }

    /// The bytes left when the stream is a raw file (known without reading).
    pub(crate) fn exact_left(&self) -> Option<u64> {
        self.exact.then_some(self.left)
    }

    /// Refuses a claim of `bytes` more bytes that the stream cannot hold.
    pub(crate) fn claim(&self, bytes: u64, what: &str) -> Result<(), DataError> {
        if bytes <= self.left {
            return Ok(());
        }
        let human = |b: u64| crate::units::bytes(b as f64);
        Err(format_err(
            &self.path,
            if self.exact {
                format!(
                    "{what} claims {bytes} bytes but the file holds {} after byte {} (truncated?)",
                    self.left, self.offset
                )
            } else {
                format!(
                    "{what} claims {}, more than this {} data can hold (at most {})",
                    human(bytes),
                    self.codec,
                    human(self.left)
                )
            },
        ))
    }

    /// Reads exactly `n` bytes of `what`, checked against the stream first.
    pub(crate) fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, DataError> {
        let mut out = Vec::new();
        self.blocks(n, 1, what, |b| out.extend_from_slice(b))?;
        Ok(out)
    }

    /// Reads exactly `n` bytes of `what` and hands them to `each` in blocks whose lengths are
    /// multiples of `unit` (an element's width).
    pub(crate) fn blocks(
        &mut self,
        n: u64,
        unit: usize,
        what: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), DataError> {
        self.claim(n, what)?;
        let block = BLOCK - BLOCK % unit.max(1);
        let mut buf = vec![0u8; block.min(usize::try_from(n).unwrap_or(block))];
        let mut done = 0u64;
        while done < n {
            let want = buf
                .len()
                .min(usize::try_from(n - done).unwrap_or(buf.len()));
            let got = self.fill(&mut buf[..want])?;
            if got < want {
                return Err(format_err(
                    &self.path,
                    format!(
                        "{what}: the file ends after {} of the {n} bytes it claims (truncated?)",
                        done + got as u64
                    ),
                ));
            }
            each(&buf[..want]);
            done += want as u64;
        }
        Ok(())
    }

    /// Fills `buf` as far as the stream goes; returns how many bytes were read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DataError> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        self.left = self.left.saturating_sub(got as u64);
        self.offset += got as u64;
        Ok(got)
    }

    /// Whether the stream has nothing left.
    pub(crate) fn at_end(&mut self) -> Result<bool, DataError> {
        if self.exact {
            return Ok(self.left == 0);
        }
        match self.reader.fill_buf() {
            Ok(b) => Ok(b.is_empty()),
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// The next line (without its `\n`) of at most `cap` bytes; `None` at the end.
    pub(crate) fn line(&mut self, cap: usize, number: usize) -> Result<Option<Vec<u8>>, DataError> {
        let mut line = Vec::new();
        loop {
            let (used, done) = {
                let buf = match self.reader.fill_buf() {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.read_error(e)),
                };
                if buf.is_empty() {
                    break;
                }
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&buf[..i]);
                        (i + 1, true)
                    }
                    None => {
                        line.extend_from_slice(buf);
                        (buf.len(), false)
                    }
                }
            };
            self.reader.consume(used);
            self.left = self.left.saturating_sub(used as u64);
            self.offset += used as u64;
            if line.len() > cap {
                return Err(format_err(
                    &self.path,
                    format!(
                        "line {number} is longer than {} (no line end: is this a text file?)",
                        crate::units::bytes(cap as f64)
                    ),
                ));
            }
            if done {
                return Ok(Some(line));
            }
        }
        Ok((!line.is_empty()).then_some(line))
    }

    fn read_error(&self, e: std::io::Error) -> DataError {
        if self.exact {
            DataError::Io {
                path: self.path.clone(),
                source: e,
            }
        } else {
            format_err(&self.path, format!("broken {} stream: {e}", self.codec))
        }
    }
}

/// Refuses a data set whose values would take more than the memory limit.
pub(crate) fn check_memory(path: &Path, what: &str, bytes: Option<u128>) -> Result<(), DataError> {
    crate::limits::check_memory(what, bytes).map_err(|source| DataError::Memory {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_bounded_by_the_stream() {
        let data = [7u8; 10];
        let mut s = Source::from_reader(Path::new("f"), &data[..], 10, true);
        let e = s.claim(11, "the header").unwrap_err().to_string();
        assert!(
            e.contains("claims 11 bytes") && e.contains("holds 10"),
            "{e}"
        );
        assert_eq!(s.bytes(4, "x").unwrap(), vec![7; 4]);
        assert_eq!(s.exact_left(), Some(6));
        assert!(s.bytes(7, "y").is_err());
        // A bound that is not exact: the stream ends before the claim.
        let mut s = Source::from_reader(Path::new("f"), &data[..], 1000, false);
        let e = s.bytes(20, "the body").unwrap_err().to_string();
        assert!(e.contains("ends after 10 of the 20"), "{e}");
    }

    #[test]
    fn lines_are_capped() {
        let text = b"a,b\r\n1,2\nlast";
        let mut s = Source::from_reader(Path::new("f"), &text[..], 100, true);
        assert_eq!(s.line(10, 1).unwrap().unwrap(), b"a,b\r");
        assert_eq!(s.line(10, 2).unwrap().unwrap(), b"1,2");
        assert_eq!(s.line(10, 3).unwrap().unwrap(), b"last");
        assert!(s.line(10, 4).unwrap().is_none());
        let long = [b'0'; 100];
        let mut s = Source::from_reader(Path::new("f"), &long[..], 100, true);
        let e = s.line(50, 1).unwrap_err().to_string();
        assert!(e.contains("line 1 is longer"), "{e}");
    }
}
