//! CSV evaluation sets: a header row, one sample per row, the label in the column named `label`
//! (or [`DataOptions::label_column`]) and every other column a feature. A small hand parser:
//! comma, semicolon or tab separated (guessed from the header), CRLF or LF line ends, blank
//! lines skipped, fields optionally in double quotes. Quoted fields may not span lines. Read line
//! by line, up to the samples asked for.

use std::path::Path;

use super::array::{LabelError, float_label, int_label};
use super::source::{Source, check_memory};
use super::{DataError, DataOptions, EvalSet, format_err};

/// The longest line read: a sample of a million features fits several times over; a file
/// with no line end (a binary file, a stream of zeros) stops here.
const MAX_LINE_BYTES: usize = 64 << 20;

pub(crate) fn load(path: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    super::reject_labels_option(path, opts, "a label column")?;
    let mut src = Source::open(path)?;
    let mut number = 0usize;
    // The next non-blank line as text, with its number.
    let mut next_line = |src: &mut Source| -> Result<Option<(usize, String)>, DataError> {
        loop {
            number += 1;
            let Some(bytes) = src.line(MAX_LINE_BYTES, number)? else {
                return Ok(None);
            };
            let mut text = String::from_utf8(bytes).map_err(|e| {
                format_err(
                    path,
                    format!(
                        "line {number}: not UTF-8 text (invalid byte at column {}); expected a CSV file",
                        e.utf8_error().valid_up_to() + 1
                    ),
                )
            })?;
            if text.ends_with('\r') {
                text.pop();
            }
            if number == 1 && text.starts_with('\u{feff}') {
                text.remove(0);
            }
            if !text.trim().is_empty() {
                return Ok(Some((number, text)));
            }
        }
    };
    let want = opts.label_column.as_deref().unwrap_or("label");
    let Some((header_line, header)) = next_line(&mut src)? else {
        return Err(format_err(
            path,
            format!(
                "the CSV file is empty; expected a header row naming the columns, one of them '{want}'"
            ),
        ));
    };
    let sep = guess_separator(&header);
    let at = |line: usize, msg: String| format_err(path, format!("line {line}: {msg}"));
    let names = split_fields(&header, sep).map_err(|m| at(header_line, m.to_string()))?;
    let label_at = names
        .iter()
        .position(|n| n == want)
        .or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(want)))
        .ok_or_else(|| {
            let looks_numeric = names.iter().all(|n| n.parse::<f64>().is_ok());
            let hint = if looks_numeric {
                " (the first row looks like data: the file needs a header row)"
            } else {
                ""
            };
            format_err(
                path,
                format!(
                    "no label column '{want}' in the header{hint}; the columns are: {}",
                    names.join(", ")
                ),
            )
        })?;
    let features = names.len() - 1;
    if features == 0 {
        return Err(format_err(
            path,
            format!("the only column is the label '{want}'; expected feature columns beside it"),
        ));
    }
    let mut inputs = Vec::new();
    let mut labels = Vec::new();
    let memory_limit = crate::limits::memory_limit();
    while opts.limit.is_none_or(|n| labels.len() < n) {
        let Some((line, text)) = next_line(&mut src)? else {
            break;
        };
        // Values arrive row by row: the memory limit is checked as the set grows, with room
        // for the vector's doubling.
        let grown = (inputs.len() + features) as u128 * 2 * std::mem::size_of::<f32>() as u128;
        if grown > u128::from(memory_limit) {
            check_memory(path, "the data set", Some(grown))?;
        }
        let fields = split_fields(&text, sep).map_err(|m| at(line, m.to_string()))?;
        if fields.len() != names.len() {
            return Err(at(
                line,
                format!(
                    "{} fields, but the header has {} columns",
                    fields.len(),
                    names.len()
                ),
            ));
        }
        for (j, (field, name)) in fields.iter().zip(&names).enumerate() {
            if j == label_at {
                labels.push(
                    parse_label(field).map_err(|m| at(line, format!("column '{name}': {m}")))?,
                );
            } else {
                let v = field
                    .parse::<f32>()
                    .map_err(|_| at(line, format!("column '{name}': '{field}' is not a number")))?;
                inputs.push(v);
            }
        }
    }
    Ok(EvalSet {
        source: path.to_path_buf(),
        inputs,
        sample_shape: vec![features],
        labels,
        classes: Vec::new(),
    })
}

fn parse_label(field: &str) -> Result<u32, LabelError> {
    if field.is_empty() {
        return Err(LabelError::Empty);
    }
    if let Ok(v) = field.parse::<i128>() {
        return int_label(v);
    }
    match field.parse::<f64>() {
        Ok(v) => float_label(v),
        Err(_) => Err(LabelError::NotANumber(field.to_string())),
    }
}

/// The separator used by the header: the most frequent of comma, semicolon and tab outside
/// quotes (comma on a tie or when there is only one column).
fn guess_separator(header: &str) -> char {
    let mut in_quotes = false;
    let mut counts = [(',', 0usize), (';', 0), ('\t', 0)];
    for c in header.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if !in_quotes {
            for (s, n) in counts.iter_mut() {
                if *s == c {
                    *n += 1;
                }
            }
        }
    }
    counts
        .iter()
        .fold(
            (',', 0),
            |best, &(s, n)| if n > best.1 { (s, n) } else { best },
        )
        .0
}

/// A line that does not split into fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum FieldError {
    #[error("unterminated quoted field (quoted fields may not span lines)")]
    Unterminated,
    #[error("unexpected '{0}' after a quoted field")]
    AfterQuote(char),
}

/// Splits one line into trimmed fields; a field may be wrapped in double quotes (`""` inside
/// stands for one quote).
fn split_fields(line: &str, sep: char) -> Result<Vec<String>, FieldError> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c != sep && c.is_whitespace()) {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(FieldError::Unterminated);
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c != sep && c.is_whitespace()) {
                chars.next();
            }
            match chars.peek() {
                None => {}
                Some(c) if *c == sep => {}
                Some(c) => return Err(FieldError::AfterQuote(*c)),
            }
            fields.push(field.trim().to_string());
        } else {
            while let Some(&c) = chars.peek() {
                if c == sep {
                    break;
                }
                field.push(c);
                chars.next();
            }
            fields.push(field.trim().to_string());
        }
        match chars.next() {
            Some(c) if c == sep => continue,
            _ => break,
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_fields() {
        assert_eq!(
            split_fields(r#" 1, "2.5" ,"a""b",,x"#, ',').unwrap(),
            vec!["1", "2.5", "a\"b", "", "x"]
        );
        assert_eq!(split_fields(r#"1,"2"#, ','), Err(FieldError::Unterminated));
        assert_eq!(
            split_fields(r#"1,"2"3"#, ','),
            Err(FieldError::AfterQuote('3'))
        );
        assert_eq!(split_fields("a\tb", '\t').unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn guesses_separator() {
        assert_eq!(guess_separator("a,b,label"), ',');
        assert_eq!(guess_separator("a;b;label"), ';');
        assert_eq!(guess_separator("a\tb\t\"x,y\""), '\t');
        assert_eq!(guess_separator("label"), ',');
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("3"), Ok(3));
        assert_eq!(parse_label("3.0"), Ok(3));
        assert_eq!(parse_label("3.5"), Err(LabelError::NotWhole(3.5)));
        assert_eq!(parse_label("-1"), Err(LabelError::IntNegative(-1)));
        assert!(
            parse_label("cat")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
    }
}
