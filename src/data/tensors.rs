//! Safetensors evaluation sets: a tensor `inputs` `[N, ...sample shape]` and a tensor `labels`
//! `[N]`.

use std::borrow::Cow;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::array::{Array, ElemType};
use super::idx::read_maybe_gz;
use super::{DataError, DataOptions, EvalSet, Part, assemble, format_err, reject_labels_option};

/// Names tried for each role, the first being the one the format asks for.
const INPUT_NAMES: &[&str] = &["inputs", "x", "images"];
const LABEL_NAMES: &[&str] = &["labels", "y", "targets"];

pub(crate) fn load(path: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    reject_labels_option(path, opts, "tensors 'inputs' and 'labels'")?;
    let bytes = read_maybe_gz(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        format_err(
            path,
            format!(
                "not a readable safetensors file ({e}); expected an 8-byte header length, a JSON \
                 header and the tensor data (truncated?)"
            ),
        )
    })?;
    let x = tensor(path, &st, INPUT_NAMES)?;
    let y = tensor(path, &st, LABEL_NAMES)?;
    assemble(
        path,
        Part {
            path,
            what: &x.0,
            array: &x.1,
        },
        Part {
            path,
            what: &y.0,
            array: &y.1,
        },
    )
}

/// The first tensor present among `names`, as `("tensor 'name'", array)`.
fn tensor<'a>(
    path: &Path,
    st: &SafeTensors<'a>,
    names: &[&str],
) -> Result<(String, Array<'a>), DataError> {
    let Some(name) = names.iter().find(|n| st.tensor(n).is_ok()) else {
        let mut held: Vec<String> = st
            .tensors()
            .iter()
            .map(|(n, v)| format!("{n} ({:?} {:?})", v.dtype(), v.shape()))
            .collect();
        held.sort();
        let held = if held.is_empty() {
            "no tensors".to_string()
        } else {
            held.join(", ")
        };
        return Err(format_err(
            path,
            format!(
                "no tensor '{}' (also tried {}); the file holds: {held}",
                names[0],
                names[1..].join(", ")
            ),
        ));
    };
    let what = format!("tensor '{name}'");
    let view = st
        .tensor(name)
        .map_err(|e| format_err(path, format!("{what}: {e}")))?;
    let elem = match view.dtype() {
        Dtype::BOOL => ElemType::Bool,
        Dtype::U8 => ElemType::U8,
        Dtype::I8 => ElemType::I8,
        Dtype::U16 => ElemType::U16,
        Dtype::I16 => ElemType::I16,
        Dtype::U32 => ElemType::U32,
        Dtype::I32 => ElemType::I32,
        Dtype::U64 => ElemType::U64,
        Dtype::I64 => ElemType::I64,
        Dtype::F16 => ElemType::F16,
        Dtype::BF16 => ElemType::BF16,
        Dtype::F32 => ElemType::F32,
        Dtype::F64 => ElemType::F64,
        other => {
            return Err(format_err(
                path,
                format!(
                    "{what} has dtype {other:?}, which is not supported; expected U8, I8, U16, \
                     I16, U32, I32, U64, I64, F16, BF16, F32 or F64"
                ),
            ));
        }
    };
    let array = Array::new(
        elem,
        false,
        view.shape().to_vec(),
        Cow::Borrowed(view.data()),
    )
    .map_err(|m| format_err(path, format!("{what}: {m}")))?;
    Ok((what, array))
}
