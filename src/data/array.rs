//! Typed numeric arrays as read from NPY and safetensors files, and their conversion into raw
//! inputs (`f32`) and class labels (`u32`), checked.

use std::borrow::Cow;

/// The element types the readers understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl ElemType {
    pub(crate) fn size(self) -> usize {
        match self {
            ElemType::Bool | ElemType::U8 | ElemType::I8 => 1,
            ElemType::U16 | ElemType::I16 | ElemType::F16 | ElemType::BF16 => 2,
            ElemType::U32 | ElemType::I32 | ElemType::F32 => 4,
            ElemType::U64 | ElemType::I64 | ElemType::F64 => 8,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ElemType::Bool => "bool",
            ElemType::U8 => "u8",
            ElemType::I8 => "i8",
            ElemType::U16 => "u16",
            ElemType::I16 => "i16",
            ElemType::U32 => "u32",
            ElemType::I32 => "i32",
            ElemType::U64 => "u64",
            ElemType::I64 => "i64",
            ElemType::F16 => "f16",
            ElemType::BF16 => "bf16",
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
        }
    }
}

/// A C-order (row-major) array whose byte length has been checked against its shape.
#[derive(Debug)]
pub(crate) struct Array<'a> {
    pub(crate) elem: ElemType,
    pub(crate) big_endian: bool,
    pub(crate) shape: Vec<usize>,
    /// Entries of the first dimension the file holds (`shape[0]` unless only the first rows
    /// were read).
    pub(crate) file_rows: usize,
    bytes: Cow<'a, [u8]>,
}

/// Number of elements of a shape, `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl<'a> Array<'a> {
    /// Fails when `bytes` does not hold exactly `shape` elements.
    pub(crate) fn new(
        elem: ElemType,
        big_endian: bool,
        shape: Vec<usize>,
        bytes: Cow<'a, [u8]>,
    ) -> Result<Self, ArrayError> {
        let need = element_count(&shape)
            .and_then(|n| n.checked_mul(elem.size()))
            .ok_or_else(|| ArrayError::TooLarge(shape.clone()))?;
        if bytes.len() != need {
            return Err(ArrayError::Length {
                shape,
                elem: elem.name(),
                need: need as u64,
                held: bytes.len() as u64,
            });
        }
        Ok(Array {
            elem,
            big_endian,
            file_rows: shape.first().copied().unwrap_or(1),
            shape,
            bytes,
        })
    }

    /// Marks the array as the first rows of `rows` the file holds.
    pub(crate) fn of_file_rows(self, rows: usize) -> Array<'a> {
        Array {
            file_rows: rows,
            ..self
        }
    }

    /// The number of values.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() / self.elem.size()
    }

    /// The first `rows` entries of the first dimension (all when `None` or more than there
    /// are); a scalar stays as it is.
    pub(crate) fn first_rows(self, rows: Option<usize>) -> Array<'a> {
        let (Some(rows), Some(&held)) = (rows, self.shape.first()) else {
            return self;
        };
        if rows >= held {
            return self;
        }
        let row_bytes = self.bytes.len() / held.max(1);
        let bytes = match self.bytes {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..rows * row_bytes]),
            Cow::Owned(mut b) => {
                b.truncate(rows * row_bytes);
                Cow::Owned(b)
            }
        };
        let mut shape = self.shape;
        shape[0] = rows;
        Array {
            shape,
            bytes,
            ..self
        }
    }

    /// Describes the array for messages: `f32 [10, 28, 28]`.
    pub(crate) fn describe(&self) -> String {
        format!("{} {:?}", self.elem.name(), self.shape)
    }

    /// The values as `f32`, in order.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        let b = &self.bytes[..];
        let be = self.big_endian;
        match self.elem {
            ElemType::Bool | ElemType::U8 => b.iter().map(|&v| v as f32).collect(),
            ElemType::I8 => b.iter().map(|&v| v as i8 as f32).collect(),
            ElemType::U16 => words::<2>(b, be)
                .map(|a| u16::from_le_bytes(a) as f32)
                .collect(),
            ElemType::I16 => words::<2>(b, be)
                .map(|a| i16::from_le_bytes(a) as f32)
                .collect(),
            ElemType::U32 => words::<4>(b, be)
                .map(|a| u32::from_le_bytes(a) as f32)
                .collect(),
            ElemType::I32 => words::<4>(b, be)
                .map(|a| i32::from_le_bytes(a) as f32)
                .collect(),
            ElemType::U64 => words::<8>(b, be)
                .map(|a| u64::from_le_bytes(a) as f32)
                .collect(),
            ElemType::I64 => words::<8>(b, be)
                .map(|a| i64::from_le_bytes(a) as f32)
                .collect(),
            ElemType::F16 => words::<2>(b, be)
                .map(|a| half::f16::from_le_bytes(a).to_f32())
                .collect(),
            ElemType::BF16 => words::<2>(b, be)
                .map(|a| half::bf16::from_le_bytes(a).to_f32())
                .collect(),
            ElemType::F32 => words::<4>(b, be).map(f32::from_le_bytes).collect(),
            ElemType::F64 => words::<8>(b, be)
                .map(|a| f64::from_le_bytes(a) as f32)
                .collect(),
        }
    }

    /// The values as class indices; fails on a negative, fractional or oversized value, naming
    /// the sample.
    pub(crate) fn to_labels(&self) -> Result<Vec<u32>, SampleLabelError> {
        let b = &self.bytes[..];
        let be = self.big_endian;
        fn ints(it: impl Iterator<Item = i128>) -> Result<Vec<u32>, SampleLabelError> {
            it.enumerate()
                .map(|(sample, v)| int_label(v).map_err(|error| SampleLabelError { sample, error }))
                .collect()
        }
        fn floats(it: impl Iterator<Item = f64>) -> Result<Vec<u32>, SampleLabelError> {
            it.enumerate()
                .map(|(sample, v)| {
                    float_label(v).map_err(|error| SampleLabelError { sample, error })
                })
                .collect()
        }
        match self.elem {
            ElemType::Bool | ElemType::U8 => ints(b.iter().map(|&v| v as i128)),
            ElemType::I8 => ints(b.iter().map(|&v| v as i8 as i128)),
            ElemType::U16 => ints(words::<2>(b, be).map(|a| u16::from_le_bytes(a) as i128)),
            ElemType::I16 => ints(words::<2>(b, be).map(|a| i16::from_le_bytes(a) as i128)),
            ElemType::U32 => ints(words::<4>(b, be).map(|a| u32::from_le_bytes(a) as i128)),
            ElemType::I32 => ints(words::<4>(b, be).map(|a| i32::from_le_bytes(a) as i128)),
            ElemType::U64 => ints(words::<8>(b, be).map(|a| u64::from_le_bytes(a) as i128)),
            ElemType::I64 => ints(words::<8>(b, be).map(|a| i64::from_le_bytes(a) as i128)),
            ElemType::F16 => {
                floats(words::<2>(b, be).map(|a| half::f16::from_le_bytes(a).to_f64()))
            }
            ElemType::BF16 => {
                floats(words::<2>(b, be).map(|a| half::bf16::from_le_bytes(a).to_f64()))
            }
            ElemType::F32 => floats(words::<4>(b, be).map(|a| f32::from_le_bytes(a) as f64)),
            ElemType::F64 => floats(words::<8>(b, be).map(f64::from_le_bytes)),
        }
    }
}

/// An array whose data does not fit its shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    #[error("shape {0:?} is too large")]
    TooLarge(Vec<usize>),
    #[error("{}", length_mismatch(.shape, .elem, *.need, *.held))]
    Length {
        shape: Vec<usize>,
        elem: &'static str,
        need: u64,
        held: u64,
    },
}

/// The message for data whose length is not what its shape needs (`elem`: the element type's
/// name).
pub(crate) fn length_mismatch(shape: &[usize], elem: &str, need: u64, held: u64) -> String {
    let what = if held < need {
        "truncated?"
    } else {
        "extra data after the array"
    };
    format!("shape {shape:?} of {elem} needs {need} bytes of data but {held} are present ({what})")
}

/// A value that is not a class index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    #[error("label {0} is negative; labels must be class indices 0, 1, 2, ...")]
    Negative(f64),
    #[error("label {0} is not a whole number; labels must be integer class indices 0, 1, 2, ...")]
    NotWhole(f64),
    #[error("label {0} is too large for a class index")]
    TooLarge(f64),
    /// An integer label outside u32 (kept whole: an f64 would round it).
    #[error("label {0} is too large for a class index")]
    IntTooLarge(i128),
    #[error("label {0} is negative; labels must be class indices 0, 1, 2, ...")]
    IntNegative(i128),
    #[error("the label is empty; expected a class index 0, 1, 2, ...")]
    Empty,
    #[error("label '{0}' is not a number; expected a class index 0, 1, 2, ...")]
    NotANumber(String),
}

/// The label of one sample is not a class index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("sample {sample}: {error}")]
pub struct SampleLabelError {
    pub sample: usize,
    pub error: LabelError,
}

/// Fixed-size little-endian words (byte-swapped first when the data is big-endian).
fn words<const N: usize>(bytes: &[u8], big_endian: bool) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(move |c| {
        let mut a = [0u8; N];
        // `chunks_exact(N)` yields slices of exactly N bytes, so the lengths agree.
        a.copy_from_slice(c);
        if big_endian {
            a.reverse();
        }
        a
    })
}

/// An integer label as a class index.
pub(crate) fn int_label(v: i128) -> Result<u32, LabelError> {
    if v < 0 {
        return Err(LabelError::IntNegative(v));
    }
    u32::try_from(v).map_err(|_| LabelError::IntTooLarge(v))
}

/// A floating-point label as a class index: it must be a whole number.
pub(crate) fn float_label(v: f64) -> Result<u32, LabelError> {
    if !v.is_finite() || v.fract() != 0.0 {
        return Err(LabelError::NotWhole(v));
    }
    if v < 0.0 {
        return Err(LabelError::Negative(v));
    }
    if v > u32::MAX as f64 {
        return Err(LabelError::TooLarge(v));
    }
    Ok(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked() {
        let e = Array::new(ElemType::F32, false, vec![2, 2], Cow::Owned(vec![0; 15]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("16 bytes") && e.contains("15"), "{e}");
        let e =
            Array::new(ElemType::U8, false, vec![usize::MAX, 3], Cow::Owned(vec![])).unwrap_err();
        assert_eq!(e, ArrayError::TooLarge(vec![usize::MAX, 3]));
        let e = e.to_string();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn big_endian_decodes() {
        let a = Array::new(
            ElemType::I16,
            true,
            vec![2],
            Cow::Owned(vec![0xff, 0xfe, 0, 7]),
        )
        .unwrap();
        assert_eq!(a.to_f32(), vec![-2.0, 7.0]);
    }

    #[test]
    fn labels_are_checked() {
        let a = Array::new(ElemType::I8, false, vec![3], Cow::Owned(vec![1, 0, 0xff])).unwrap();
        let e = a.to_labels().unwrap_err();
        assert_eq!(e.error, LabelError::IntNegative(-1));
        let e = e.to_string();
        assert!(e.contains("sample 2") && e.contains("negative"), "{e}");
        let bytes: Vec<u8> = [1.0f32, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = Array::new(ElemType::F32, false, vec![2], Cow::Owned(bytes)).unwrap();
        let e = a.to_labels().unwrap_err().to_string();
        assert!(e.contains("sample 1") && e.contains("whole number"), "{e}");
        assert_eq!(float_label(3.0), Ok(3));
        assert!(float_label(f64::NAN).is_err());
    }
}
