//! The layer descriptors of compressed files whose ops were tagged by `"kind"` (`{"kind":
//! "conv2d", "weight_name": ..., "format": {...}}`) rather than written in the architecture
//! schema's words: read and turned into today's [`LayerDesc`], never written.

use serde::Deserialize;

use super::desc::{FormatDesc, LayerDesc};
use crate::model::{OpSpec, Pair};

#[derive(Debug, Deserialize)]
pub struct OldLayerDesc {
    name: String,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    op: OldOp,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum OldOp {
    Linear {
        weight_name: String,
        bias_name: String,
        format: FormatDesc,
    },
    Conv2d {
        weight_name: String,
        bias_name: String,
        weight_shape: Vec<usize>,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        format: FormatDesc,
    },
    ChannelAffine,
    Activation {
        function: String,
        #[serde(default)]
        slope: Option<f64>,
    },
    Maxpool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    Avgpool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    GlobalAvgpool,
    Flatten,
    Dropout {
        p: f64,
    },
    Softmax,
    Add {
        from: usize,
    },
}

/// An old descriptor that names no layer squeeze can build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("conv weight shape {0:?} is not 4-D")]
    ConvShape(Vec<usize>),
    #[error("unknown activation \"{0}\"")]
    Activation(String),
    #[error("add reads layer {0}, not an earlier one")]
    Add(usize),
}

impl OldLayerDesc {
    /// The same layer in today's words, given the layers read before it (an `add` named the
    /// layer it reads by position).
    pub fn upgrade(self, earlier: &[LayerDesc]) -> Result<LayerDesc, UpgradeError> {
        let bias = |name: String, f: &FormatDesc| f.bias.then_some(name);
        let (spec, format) = match self.op {
            OldOp::Linear {
                weight_name,
                bias_name,
                format,
            } => (
                OpSpec::Linear {
                    weight: weight_name,
                    bias: bias(bias_name, &format),
                    out_features: Some(format.rows),
                },
                Some(format),
            ),
            OldOp::Conv2d {
                weight_name,
                bias_name,
                weight_shape,
                stride,
                padding,
                dilation,
                groups,
                format,
            } => {
                let &[out, _, kh, kw] = weight_shape.as_slice() else {
                    return Err(UpgradeError::ConvShape(weight_shape));
                };
                (
                    OpSpec::Conv2d {
                        weight: weight_name,
                        bias: bias(bias_name, &format),
                        out_channels: Some(out),
                        kernel: Some(Pair::HW([kh, kw])),
                        stride: Pair::HW(stride),
                        padding: Pair::HW(padding),
                        dilation: Pair::HW(dilation),
                        groups,
                    },
                    Some(format),
                )
            }
            OldOp::ChannelAffine => (OpSpec::batchnorm(&self.name), None),
            OldOp::Activation { function, slope } => {
                let spec = match function.as_str() {
                    "leaky_relu" => OpSpec::LeakyRelu {
                        slope: slope.unwrap_or(0.01),
                    },
                    // The function's name is its op's.
                    other => serde_json::from_value(serde_json::json!({ "op": other }))
                        .ok()
                        .filter(|s: &OpSpec| s.activation().is_some())
                        .ok_or_else(|| UpgradeError::Activation(other.to_string()))?,
                };
                (spec, None)
            }
            OldOp::Maxpool2d {
                kernel,
                stride,
                padding,
            } => (
                OpSpec::Maxpool2d {
                    kernel: Pair::HW(kernel),
                    stride: Some(Pair::HW(stride)),
                    padding: Pair::HW(padding),
                },
                None,
            ),
            OldOp::Avgpool2d {
                kernel,
                stride,
                padding,
            } => (
                OpSpec::Avgpool2d {
                    kernel: Pair::HW(kernel),
                    stride: Some(Pair::HW(stride)),
                    padding: Pair::HW(padding),
                },
                None,
            ),
            OldOp::GlobalAvgpool => (OpSpec::GlobalAvgpool {}, None),
            OldOp::Flatten => (
                OpSpec::Flatten {
                    start_dim: None,
                    end_dim: None,
                },
                None,
            ),
            OldOp::Dropout { p } => (OpSpec::Dropout { p: Some(p) }, None),
            OldOp::Softmax => (OpSpec::Softmax {}, None),
            OldOp::Add { from } => match earlier.get(from) {
                Some(src) => (
                    OpSpec::Add {
                        from: Some(src.name.clone()),
                        param: None,
                    },
                    None,
                ),
                None => return Err(UpgradeError::Add(from)),
            },
        };
        Ok(LayerDesc {
            name: self.name,
            in_shape: self.in_shape,
            out_shape: self.out_shape,
            inputs: Vec::new(),
            spec,
            format,
        })
    }
}
