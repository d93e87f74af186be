//! Checked shape arithmetic: the output size of a convolution or pooling window, element counts
//! and the memory a model's tensors and activations take. Loading, export, training and the
//! engine all use these, so a shape is judged the same way everywhere, and arithmetic on sizes
//! read from a file is checked rather than wrapped.

/// A window sliding along one axis: convolution (any dilation) or pooling (dilation 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Window {
    pub fn new(kernel: usize, stride: usize, padding: usize, dilation: usize) -> Window {
        Window {
            kernel,
            stride,
            padding,
            dilation,
        }
    }

    /// The output size along an axis of `size` inputs, as PyTorch computes it:
    /// `(size + 2·padding − dilation·(kernel − 1) − 1) / stride + 1`. An error when kernel,
    /// stride or dilation is 0, when the window does not fit the padded input, or when the
    /// padded axis would pass `isize::MAX` (padding = 2⁶² is an error, not an output of
    /// 2⁶³ + 24).
    pub fn out_size(self, size: usize) -> Result<usize, String> {
        let Window {
            kernel,
            stride,
            padding,
            dilation,
        } = self;
        if kernel == 0 || stride == 0 || dilation == 0 {
            return Err(format!(
                "kernel ({kernel}), stride ({stride}) and dilation ({dilation}) must be at least 1"
            ));
        }
        let overflow = || {
            format!(
                "a window of kernel {kernel}, dilation {dilation}, padding {padding} over {size} inputs is too large to compute"
            )
        };
        let span = dilation
            .checked_mul(kernel - 1)
            .and_then(|s| s.checked_add(1))
            .ok_or_else(overflow)?;
        // No index into a buffer may pass isize::MAX (Rust's bound on any allocation), so a
        // padded axis longer than that is refused however the arithmetic would come out.
        let padded = padding
            .checked_mul(2)
            .and_then(|p| p.checked_add(size))
            .filter(|p| isize::try_from(*p).is_ok())
            .ok_or_else(overflow)?;
        if padded < span {
            return Err(format!(
                "a window spanning {span} (kernel {kernel}, dilation {dilation}) does not fit {size} inputs padded by {padding} on each side"
            ));
        }
        Ok((padded - span) / stride + 1)
    }
}

/// The number of elements of `shape`, or `None` when it overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
}

/// Bytes of `elements` f32 values, or `None` when it overflows.
pub fn f32_bytes(elements: usize) -> Option<usize> {
    elements.checked_mul(4)
}

/// Elements of `shape` as u128, saturating: sizes from a file may multiply past any integer,
/// and a saturated figure is still refused by any memory limit.
pub fn elements_u128(shape: &[usize]) -> u128 {
    shape
        .iter()
        .fold(1u128, |n, d| n.saturating_mul(*d as u128))
}

/// Bytes of f32 values one sample needs at its peak while running `layers`: a layer's input
/// and output, plus the unfolded input patches a convolution multiplies.
pub fn sample_activation_bytes(layers: &[super::Layer]) -> u128 {
    layers
        .iter()
        .map(|l| {
            let mut n = elements_u128(&l.in_shape).saturating_add(elements_u128(&l.out_shape));
            if let super::Op::Conv2d(p, _) = &l.op {
                let dims = p.weight.dims();
                let per_position = elements_u128(dims.get(1..).unwrap_or(&[]));
                let positions = elements_u128(l.out_shape.get(1..).unwrap_or(&[]));
                n = n.saturating_add(per_position.saturating_mul(positions));
            }
            n.saturating_mul(4)
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of the linear and conv parameters held as f32.
pub fn parameter_bytes(layers: &[super::Layer]) -> u128 {
    layers
        .iter()
        .map(|l| (l.param_count() as u128).saturating_mul(4))
        .fold(0u128, u128::saturating_add)
}

/// What loading a model and running one sample allocates: its parameters as f32 and one
/// sample's activations. The loader refuses a model whose figure is over the memory limit.
pub fn run_bytes(layers: &[super::Layer]) -> u128 {
    parameter_bytes(layers).saturating_add(sample_activation_bytes(layers))
}

/// What evaluating `samples` samples of `model` in batches of `batch` allocates, the model
/// included: the prepared inputs, the outputs (the model's and a reference's) and one batch's
/// activations.
pub fn evaluation_bytes(model: &super::Model, samples: usize, batch: usize) -> u128 {
    let n = samples as u128;
    let inputs = n.saturating_mul(elements_u128(&model.input.shape));
    let outputs = n
        .saturating_mul(model.num_classes() as u128)
        .saturating_mul(2);
    let activations =
        (batch.min(samples) as u128).saturating_mul(sample_activation_bytes(&model.layers));
    run_bytes(&model.layers)
        .saturating_add(inputs.saturating_add(outputs).saturating_mul(4))
        .saturating_add(activations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pytorch_on_lenet() {
        assert_eq!(Window::new(5, 1, 0, 1).out_size(28), Ok(24));
        assert_eq!(Window::new(2, 2, 0, 1).out_size(24), Ok(12));
        assert_eq!(Window::new(3, 2, 1, 1).out_size(7), Ok(4));
        assert_eq!(Window::new(3, 1, 0, 2).out_size(7), Ok(3));
    }

    #[test]
    fn refuses_what_does_not_fit_or_overflows() {
        assert!(Window::new(5, 1, 0, 1).out_size(3).is_err());
        assert!(Window::new(0, 1, 0, 1).out_size(3).is_err());
        assert!(Window::new(3, 0, 0, 1).out_size(3).is_err());
        assert!(Window::new(3, 1, 0, 0).out_size(3).is_err());
        let e = Window::new(3, 1, 1 << 62, 1).out_size(28).unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(Window::new(usize::MAX, 1, 0, 2).out_size(28).is_err());
        assert_eq!(element_count(&[1 << 40, 1 << 40]), None);
        assert_eq!(element_count(&[3, 4]), Some(12));
    }
}
