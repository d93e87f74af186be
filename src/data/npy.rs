//! NumPy files: an `.npy` pair (inputs and labels in sibling files) and `.npz` archives holding
//! arrays `x` and `y`. The NPY parser is our own: magic, version, header length, a Python-dict
//! header, then the data, read as a stream up to the rows asked for.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::array::{Array, ElemType};
use super::source::{Source, check_memory};
use super::{DataError, DataOptions, EvalSet, Part, assemble, format_err, reject_labels_option};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The dtypes the reader accepts, for messages.
const ACCEPTED_DTYPES: &str = "|u1 |i1 |b1 <u2 <i2 <u4 <i4 <u8 <i8 <f2 <f4 <f8 (or '>' big-endian)";

/// The most header bytes read: NumPy itself refuses headers over 10,000 bytes by default.
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Reads an NPY array from a stream: the header, then the data of the first `rows` entries
/// of the first dimension (all when `None`; a Fortran-order array is read whole, its rows
/// being scattered). What the header claims is checked against the stream and the memory
/// limit first. Messages are prefixed with `what` (`array 'x': `) inside an archive.
pub(crate) fn read(
    src: &mut Source,
    rows: Option<usize>,
    what: &str,
) -> Result<Array<'static>, DataError> {
    let path = src.path().to_path_buf();
    let fail = |m: String| format_err(&path, format!("{what}{m}"));
    let start = src.prefix(10)?;
    if start.is_empty() {
        return Err(fail("empty file (0 bytes); expected an NPY array".into()));
    }
    if start.len() < 10 {
        if !MAGIC.starts_with(start.get(..6).unwrap_or(&start)) {
            return Err(fail(not_npy(&start)));
        }
        return Err(fail(format!(
            "truncated NPY file: {} bytes, fewer than the 10 a header needs",
            start.len()
        )));
    }
    if start.get(..6) != Some(MAGIC) {
        return Err(fail(not_npy(&start)));
    }
    let (major, minor) = (start[6], start[7]);
    let header_len = match major {
        1 => u64::from(u16::from_le_bytes([start[8], start[9]])),
        2 | 3 => {
            let more = src.prefix(2)?;
            let b = [
                start[8],
                start[9],
                more.first().copied().unwrap_or(0),
                more.get(1).copied().unwrap_or(0),
            ];
            if more.len() < 2 {
                return Err(fail("truncated NPY header (no header length)".into()));
            }
            u64::from(u32::from_le_bytes(b))
        }
        _ => {
            return Err(fail(format!(
                "unsupported NPY format version {major}.{minor} (expected 1.0, 2.0 or 3.0)"
            )));
        }
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(fail(format!(
            "the NPY header claims {header_len} bytes; a header holds a few hundred (corrupt file?)"
        )));
    }
    let header = src.prefix(header_len as usize)?;
    if (header.len() as u64) < header_len {
        return Err(fail(format!(
            "truncated NPY header: it says {header_len} bytes but the file ends {} bytes after it starts",
            header.len()
        )));
    }
    // Version 3 headers are UTF-8; earlier ones latin-1, whose ASCII subset is all a valid
    // header uses.
    let header =
        Header::parse(&String::from_utf8_lossy(&header)).map_err(|e| fail(e.to_string()))?;
    let elem = header.elem;
    let need = super::array::element_count(&header.shape)
        .and_then(|n| n.checked_mul(elem.size()))
        .ok_or_else(|| fail(format!("shape {:?} is too large", header.shape)))?
        as u64;
    if let Some(held) = src.exact_left()
        && held != need
    {
        return Err(fail(super::array::length_mismatch(
            &header.shape,
            elem.name(),
            need,
            held,
        )));
    }
    src.claim(need, &format!("{what}the NPY header ({:?})", header.shape))?;
    let total = header.shape.first().copied().unwrap_or(1);
    let whole = header.fortran_order && header.shape.len() > 1;
    let take = match rows {
        Some(r) if !whole && r < total => r,
        _ => total,
    };
    let take_bytes = if total == 0 {
        0
    } else {
        need / total as u64 * take as u64
    };
    check_memory(
        &path,
        "the data set",
        u128::from(take_bytes).checked_add(
            u128::from(take_bytes) / elem.size() as u128 * std::mem::size_of::<f32>() as u128,
        ),
    )?;
    let data = src.bytes(take_bytes, &format!("{what}the NPY data"))?;
    if take == total && !src.at_end()? {
        return Err(fail(super::array::length_mismatch(
            &header.shape,
            elem.name(),
            need,
            need + 1,
        )));
    }
    let mut shape = header.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = take;
    }
    let data = if whole {
        fortran_to_c(&data, &header.shape, elem.size())
    } else {
        data
    };
    Ok(Array::new(elem, header.big_endian, shape, Cow::Owned(data))
        .map_err(|e| fail(e.to_string()))?
        .first_rows(rows)
        .of_file_rows(total))
}

/// Parses an NPY file held in memory (the reader's unit tests).
#[cfg(test)]
fn parse(bytes: &[u8]) -> Result<Array<'static>, DataError> {
    let mut src = Source::from_reader(Path::new("t.npy"), bytes, bytes.len() as u64, true);
    read(&mut src, None, "")
}

fn not_npy(bytes: &[u8]) -> String {
    let start: Vec<String> = bytes.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!(
        "not an NPY file (bad magic: expected \\x93NUMPY, found [{}])",
        start.join(" ")
    )
}

/// Reorders column-major (Fortran) data into row-major order.
fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let count: usize = shape.iter().product();
    // Fortran strides: the first axis varies fastest.
    let mut strides = Vec::with_capacity(shape.len());
    let mut s = 1usize;
    for &d in shape {
        strides.push(s);
        s = s.saturating_mul(d);
    }
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..count {
        let offset: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        let at = offset * size;
        out.extend_from_slice(data.get(at..at + size).unwrap_or(&[]));
        // Advance the C-order index: the last axis varies fastest.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

#[derive(Debug)]
struct Header {
    elem: ElemType,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    fn parse(text: &str) -> Result<Header, HeaderError> {
        // The header comes from the file: escape control characters so the message stays one
        // line.
        let bad = |what: &str| HeaderError::Malformed {
            what: what.to_string(),
            header: text.trim_end().escape_debug().to_string(),
        };
        let value = PyParser::new(text)
            .parse_all()
            .map_err(|e| bad(&e.to_string()))?;
        let Py::Dict(entries) = value else {
            return Err(bad("expected a dict"));
        };
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
                .map(|(_, v)| v)
        };
        let descr = get("descr").ok_or_else(|| bad("no 'descr'"))?;
        let (elem, big_endian) = match descr {
            Py::Str(s) => parse_descr(s)?,
            Py::List(_) | Py::Tuple(_) => {
                return Err(HeaderError::Structured);
            }
            _ => return Err(bad("'descr' is not a string")),
        };
        let fortran_order = match get("fortran_order") {
            Some(Py::Bool(b)) => *b,
            Some(_) => return Err(bad("'fortran_order' is not True or False")),
            None => return Err(bad("no 'fortran_order'")),
        };
        let shape = match get("shape") {
            Some(Py::Tuple(items)) | Some(Py::List(items)) => items
                .iter()
                .map(|v| match v {
                    Py::Int(n) => usize::try_from(*n).map_err(|_| bad("negative dimension")),
                    _ => Err(bad("'shape' holds a non-integer")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("'shape' is not a tuple")),
            None => return Err(bad("no 'shape'")),
        };
        Ok(Header {
            elem,
            big_endian,
            fortran_order,
            shape,
        })
    }
}

/// Why an NPY header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum HeaderError {
    #[error("malformed NPY header ({what}): {header}")]
    Malformed { what: String, header: String },
    #[error("structured (record) arrays are not supported; save a plain numeric array")]
    Structured,
    #[error(
        "dtype '{0}' is an object array (Python objects, e.g. ragged lists) and cannot be read; \
         save a numeric array, e.g. np.save(path, np.asarray(a, dtype=np.float32))"
    )]
    ObjectDtype(String),
    #[error("dtype '{0}' is not supported; expected one of {ACCEPTED_DTYPES}")]
    UnsupportedDtype(String),
}

/// `'<f4'` → (F32, little-endian).
fn parse_descr(descr: &str) -> Result<(ElemType, bool), HeaderError> {
    let (order, rest) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let big_endian = match order {
        '>' => true,
        '=' => cfg!(target_endian = "big"),
        _ => false,
    };
    let mut chars = rest.chars();
    let kind = chars.next().unwrap_or(' ');
    let size = chars.as_str();
    let elem = match (kind, size) {
        ('b', "1") | ('?', "") => ElemType::Bool,
        ('u', "1") | ('B', "") => ElemType::U8,
        ('i', "1") | ('b', "") => ElemType::I8,
        ('u', "2") => ElemType::U16,
        ('i', "2") => ElemType::I16,
        ('u', "4") => ElemType::U32,
        ('i', "4") => ElemType::I32,
        ('u', "8") => ElemType::U64,
        ('i', "8") => ElemType::I64,
        ('f', "2") => ElemType::F16,
        ('f', "4") => ElemType::F32,
        ('f', "8") => ElemType::F64,
        ('O', _) => {
            return Err(HeaderError::ObjectDtype(descr.to_string()));
        }
        _ => {
            return Err(HeaderError::UnsupportedDtype(descr.to_string()));
        }
    };
    Ok((elem, big_endian))
}

/// The subset of Python literals NPY headers use.
#[derive(Debug, Clone, PartialEq)]
enum Py {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Py>),
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

/// Why an NPY header's Python literal does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SyntaxError {
    #[error("unexpected {0:?} after the dict")]
    Trailing(char),
    #[error("unterminated string")]
    UnterminatedString,
    #[error("bad integer '{0}'")]
    BadInteger(String),
    #[error("unexpected name '{0}'")]
    UnexpectedName(String),
    #[error("unexpected {0:?}")]
    Unexpected(char),
    #[error("unexpected end")]
    UnexpectedEnd,
    #[error("nested too deeply")]
    TooDeep,
    #[error("expected ':' after a dict key")]
    NoColon,
    #[error("expected ',' or '{close}', found {found:?}")]
    NoSeparator { close: char, found: char },
    #[error("missing '{0}'")]
    Missing(char),
}

struct PyParser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    depth: usize,
}

impl<'a> PyParser<'a> {
    fn new(text: &'a str) -> Self {
        PyParser {
            chars: text.chars().peekable(),
            depth: 0,
        }
    }

    fn parse_all(mut self) -> Result<Py, SyntaxError> {
        let v = self.value()?;
        self.skip_ws();
        match self.chars.next() {
            None => Ok(v),
            Some(c) => Err(SyntaxError::Trailing(c)),
        }
    }

    fn skip_ws(&mut self) {
        while self.chars.peek().is_some_and(|c| c.is_whitespace()) {
            self.chars.next();
        }
    }

    fn value(&mut self) -> Result<Py, SyntaxError> {
        self.skip_ws();
        match self.chars.peek().copied() {
            Some('{') => {
                self.chars.next();
                let items = self.sequence('}', true)?;
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Ok(Py::Dict(pairs))
            }
            Some('(') => {
                self.chars.next();
                Ok(Py::Tuple(self.sequence(')', false)?))
            }
            Some('[') => {
                self.chars.next();
                Ok(Py::List(self.sequence(']', false)?))
            }
            Some(q @ ('\'' | '"')) => {
                self.chars.next();
                let mut s = String::new();
                loop {
                    match self.chars.next() {
                        None => return Err(SyntaxError::UnterminatedString),
                        Some('\\') => {
                            if let Some(c) = self.chars.next() {
                                s.push(c);
                            }
                        }
                        Some(c) if c == q => break,
                        Some(c) => s.push(c),
                    }
                }
                Ok(Py::Str(s))
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => {
                let mut s = String::new();
                while let Some(&c) = self.chars.peek() {
                    if c.is_ascii_digit() || c == '-' || c == '+' {
                        s.push(c);
                        self.chars.next();
                    } else {
                        break;
                    }
                }
                // Python 2 wrote long integers as `3L`.
                if matches!(self.chars.peek(), Some('L' | 'l')) {
                    self.chars.next();
                }
                match s.parse() {
                    Ok(n) => Ok(Py::Int(n)),
                    Err(_) => Err(SyntaxError::BadInteger(s)),
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let mut s = String::new();
                while let Some(&c) = self.chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        s.push(c);
                        self.chars.next();
                    } else {
                        break;
                    }
                }
                match s.as_str() {
                    "True" => Ok(Py::Bool(true)),
                    "False" => Ok(Py::Bool(false)),
                    "None" => Ok(Py::None),
                    _ => Err(SyntaxError::UnexpectedName(s)),
                }
            }
            Some(c) => Err(SyntaxError::Unexpected(c)),
            None => Err(SyntaxError::UnexpectedEnd),
        }
    }

    /// Items up to `close`, separated by commas (and by colons inside a dict, whose keys and
    /// values alternate in the result).
    fn sequence(&mut self, close: char, dict: bool) -> Result<Vec<Py>, SyntaxError> {
        self.depth += 1;
        if self.depth > 16 {
            return Err(SyntaxError::TooDeep);
        }
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.chars.peek() == Some(&close) {
                self.chars.next();
                break;
            }
            items.push(self.value()?);
            if dict {
                self.skip_ws();
                if self.chars.next() != Some(':') {
                    return Err(SyntaxError::NoColon);
                }
                items.push(self.value()?);
            }
            self.skip_ws();
            match self.chars.next() {
                Some(',') => {}
                Some(c) if c == close => break,
                Some(found) => return Err(SyntaxError::NoSeparator { close, found }),
                None => return Err(SyntaxError::Missing(close)),
            }
        }
        self.depth -= 1;
        Ok(items)
    }
}

/// Loads an `.npy` inputs file and its labels (`DataOptions::labels` or the sibling found by
/// [`labels_candidates`]).
pub(crate) fn load_pair(path: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    let labels_path = match &opts.labels {
        Some(l) => l.clone(),
        None => find_labels(path)?,
    };
    let x = read(&mut Source::open(path)?, opts.limit, "")?;
    let y = read(&mut Source::open(&labels_path)?, opts.limit, "")?;
    assemble(
        path,
        Part {
            path,
            what: "the inputs array",
            array: &x,
        },
        Part {
            path: &labels_path,
            what: "the labels array",
            array: &y,
        },
    )
}

fn find_labels(inputs: &Path) -> Result<PathBuf, DataError> {
    let candidates = labels_candidates(inputs);
    if candidates.is_empty() {
        return Err(format_err(
            inputs,
            "cannot guess the labels file from this name (expected inputs named like x_test.npy, \
             foo_x.npy or images.npy, with labels y_test.npy, foo_y.npy or labels.npy); \
             give the labels file with --labels",
        ));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let dir = inputs
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| ".".into());
    Err(format_err(
        inputs,
        format!(
            "no labels file found beside it: tried {} in {dir}; give the labels file with --labels",
            tried.join(", ")
        ),
    ))
}

/// The sibling files that may hold the labels for an inputs file, most likely first:
/// `x_test.npy` → `y_test.npy`, `foo_x.npy` → `foo_y.npy`, `images.npy` → `labels.npy`
/// (each also with `.gz` toggled).
pub(crate) fn labels_candidates(inputs: &Path) -> Vec<PathBuf> {
    let Some(name) = inputs.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let lower = name.to_ascii_lowercase();
    let suffix_len = if lower.ends_with(".npy.gz") {
        7
    } else if lower.ends_with(".npy") {
        4
    } else {
        // Anything else: replace in the part before the first dot.
        name.len() - name.find('.').unwrap_or(name.len())
    };
    let (stem, suffix) = name.split_at(name.len() - suffix_len);
    let tokens = tokenize(stem);
    let replaced: Vec<Option<String>> = tokens.iter().map(|t| swap_token(t)).collect();
    let join = |pick: &dyn Fn(usize) -> bool| -> String {
        tokens
            .iter()
            .zip(&replaced)
            .enumerate()
            .map(|(i, (t, r))| match r {
                Some(r) if pick(i) => r.as_str(),
                _ => t.as_str(),
            })
            .collect()
    };
    let mut stems = vec![join(&|_| true)];
    for (i, r) in replaced.iter().enumerate() {
        if r.is_some() {
            stems.push(join(&|j| j == i));
        }
    }
    let alt_suffix = match suffix.strip_suffix(".gz") {
        Some(plain) => plain.to_string(),
        None => format!("{suffix}.gz"),
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for s in stems.into_iter().filter(|s| s != stem) {
        for suf in [suffix, alt_suffix.as_str()] {
            let p = inputs.with_file_name(format!("{s}{suf}"));
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Splits a file stem into alternating runs of letters/digits and separators.
fn tokenize(stem: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    let mut last_alnum = None;
    for c in stem.chars() {
        let alnum = c.is_alphanumeric();
        match tokens.last_mut() {
            Some(t) if last_alnum == Some(alnum) => t.push(c),
            _ => tokens.push(c.to_string()),
        }
        last_alnum = Some(alnum);
    }
    tokens
}

/// The labels counterpart of an inputs word, in the same letter case.
fn swap_token(token: &str) -> Option<String> {
    let lower = token.to_lowercase();
    let repl = match lower.as_str() {
        "x" => "y",
        "images" | "inputs" | "features" | "data" => "labels",
        "image" | "input" => "label",
        _ => return None,
    };
    Some(if token == lower {
        repl.to_string()
    } else if token == token.to_uppercase() {
        repl.to_uppercase()
    } else {
        let mut c = repl.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    })
}

/// Names tried for the inputs and the labels inside an NPZ archive, the first being the one
/// the format asks for.
const NPZ_INPUTS: &[&str] = &["x", "X", "inputs", "images"];
const NPZ_LABELS: &[&str] = &["y", "Y", "labels", "targets"];

/// Loads an `.npz` archive holding arrays `x` (inputs) and `y` (labels).
pub(crate) fn load_npz(path: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    reject_labels_option(path, opts, "arrays 'x' and 'y'")?;
    // Mapped: the zip reader seeks to the members it reads and touches nothing else.
    let bytes = crate::files::map(path)?;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).map_err(|e| {
        format_err(
            path,
            format!("not a readable NPZ file (a zip archive of .npy files; truncated?): {e}"),
        )
    })?;
    let members: Vec<String> = zip.file_names().map(str::to_string).collect();
    let array_name = |m: &str| m.strip_suffix(".npy").unwrap_or(m).to_string();
    let find = |names: &[&str]| -> Result<String, DataError> {
        names
            .iter()
            .find_map(|n| members.iter().find(|m| array_name(m) == *n))
            .cloned()
            .ok_or_else(|| {
                let mut held: Vec<String> = members.iter().map(|m| array_name(m)).collect();
                held.sort();
                let held = if held.is_empty() {
                    "nothing".to_string()
                } else {
                    held.join(", ")
                };
                format_err(
                    path,
                    format!(
                        "no array '{}' in the archive (also tried {}); it holds: {held}",
                        names[0],
                        names[1..].join(", ")
                    ),
                )
            })
    };
    let x_member = find(NPZ_INPUTS)?;
    let y_member = find(NPZ_LABELS)?;
    let mut read_member = |member: &str, what: &str| -> Result<Array<'static>, DataError> {
        let f = zip
            .by_name(member)
            .map_err(|e| format_err(path, format!("{what}: {e}")))?;
        // The size the archive declares bounds what is read from the member.
        let declared = f.size();
        read(
            &mut Source::from_reader(path, f, declared, false),
            opts.limit,
            &format!("{what}: "),
        )
    };
    let x_what = format!("array '{}'", array_name(&x_member));
    let y_what = format!("array '{}'", array_name(&y_member));
    let x = read_member(&x_member, &x_what)?;
    let y = read_member(&y_member, &y_what)?;
    assemble(
        path,
        Part {
            path,
            what: &x_what,
            array: &x,
        },
        Part {
            path,
            what: &y_what,
            array: &y,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn parses_header_and_data() {
        let bytes = npy("|u1", false, "(2, 3)", &[1, 2, 3, 4, 5, 6]);
        let a = parse(&bytes).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn fortran_order_is_transposed() {
        // The 2×3 array [[1,2,3],[4,5,6]] stored column by column.
        let bytes = npy("|u1", true, "(2, 3)", &[1, 4, 2, 5, 3, 6]);
        let a = parse(&bytes).unwrap();
        assert_eq!(a.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn rejects_bad_headers_without_panicking() {
        for bad in [
            &b""[..],
            b"\x93NUM",
            b"\x93NUMPY\x01\x00\xff\x00{",
            b"\x93NUMPY\x02\x00\xff\xff\xff\xff",
            b"\x93NUMPY\x09\x00\x00\x00",
            b"PK\x03\x04 not npy at all",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        for header in [
            "{",
            "{'descr': '<f4'}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
            "{'descr': 3, 'fortran_order': False, 'shape': ()}",
            "((((((((((((((((((((((((((((((",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} trailing",
        ] {
            assert!(Header::parse(header).is_err(), "{header}");
        }
        let e = parse(&npy("|O", false, "(1,)", &[0; 8]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("object array"), "{e}");
        let e = parse(&npy("<U3", false, "(1,)", &[0; 12]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported") && e.contains("<f4"), "{e}");
    }

    #[test]
    fn python2_longs_and_big_endian() {
        let bytes = npy(">i2", false, "(2L,)", &[0, 1, 0xff, 0xff]);
        let a = parse(&bytes).unwrap();
        assert_eq!(a.to_f32(), vec![1.0, -1.0]);
    }

    #[test]
    fn label_names() {
        let names = |p: &str| -> Vec<String> {
            labels_candidates(Path::new(p))
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names("x_test.npy")[0], "y_test.npy");
        assert_eq!(names("foo_x.npy")[0], "foo_y.npy");
        assert_eq!(names("images.npy")[0], "labels.npy");
        assert_eq!(names("X_train.npy")[0], "Y_train.npy");
        assert_eq!(names("Test_Images.npy.gz")[0], "Test_Labels.npy.gz");
        assert!(names("x_test.npy").contains(&"y_test.npy.gz".to_string()));
        assert!(names("xylophone.npy").is_empty());
    }
}
