//! Safetensors evaluation sets: a tensor `inputs` `[N, ...sample shape]` and a tensor `labels`
//! `[N]`. A raw file is memory-mapped; a gzip-compressed one is decoded up to what its header
//! claims.

use std::borrow::Cow;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::array::{Array, ElemType};
use super::source::{Source, check_memory};
use super::{DataError, DataOptions, EvalSet, Part, assemble, format_err, reject_labels_option};

/// Names tried for each role, the first being the one the format asks for.
const INPUT_NAMES: &[&str] = &["inputs", "x", "images"];
const LABEL_NAMES: &[&str] = &["labels", "y", "targets"];

pub(crate) fn load(path: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    reject_labels_option(path, opts, "tensors 'inputs' and 'labels'")?;
    // Raw: mapped, so only the rows read are touched. Compressed: decoded up to the size the
    // header claims, once that claim is checked.
    let mut src = Source::open(path)?;
    let (mapped, decoded);
    let bytes: &[u8] = match src.exact_left() {
        Some(_) => {
            mapped = crate::files::map(path)?;
            &mapped
        }
        None => {
            decoded = read_claimed(&mut src, path)?;
            &decoded
        }
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
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
    let (x, y) = (
        (x.0, x.1.first_rows(opts.limit)),
        (y.0, y.1.first_rows(opts.limit)),
    );
    check_memory(
        path,
        "the data set",
        (x.1.len() as u128).checked_mul(std::mem::size_of::<f32>() as u128),
    )?;
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

/// The whole safetensors file from a compressed stream: the 8-byte header length, the header,
/// and the data up to the last offset the header names — each claim checked before it is read.
fn read_claimed(src: &mut Source, path: &Path) -> Result<Vec<u8>, DataError> {
    let bad = |msg: String| {
        format_err(
            path,
            format!(
                "not a readable safetensors file ({msg}); expected an 8-byte header length, a JSON header and the tensor data"
            ),
        )
    };
    let mut out = src.bytes(8, "the header length")?;
    let n = u64::from_le_bytes(
        out[..8]
            .try_into()
            .map_err(|_| bad("no header length".into()))?,
    );
    if n > crate::files::MAX_SAFETENSORS_HEADER {
        return Err(bad(format!(
            "the header length {n} is over safetensors' limit of {}",
            crate::files::MAX_SAFETENSORS_HEADER
        )));
    }
    out.extend(src.bytes(n, "the safetensors header")?);
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out[8..]).map_err(|e| bad(format!("header: {e}")))?;
    let end = header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    check_memory(path, "the safetensors data", Some(u128::from(end)))?;
    out.extend(src.bytes(end, "the safetensors data")?);
    if !src.at_end()? {
        return Err(bad("data follows the last tensor".into()));
    }
    Ok(out)
}
