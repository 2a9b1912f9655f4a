//! The shape of one convolution, as the slice-level kernels take it.

/// The shape of one convolution, as [`conv2d_weight_grad`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub channels_in: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Output height and width.
    pub out: [usize; 2],
    /// Stride (rows, columns).
    pub stride: [usize; 2],
    /// Zero padding before the first row and column (the same after).
    pub padding: [usize; 2],
}

impl ConvGeometry {
    /// A 3x3, stride-1, padding-1 ("same") convolution of `batch` images of `channels_in` x
    /// `height` x `width` into `channels_out` channels of the same size.
    pub fn same_3x3(
        batch: usize,
        channels_in: usize,
        height: usize,
        width: usize,
        channels_out: usize,
    ) -> Self {
        Self {
            batch,
            channels_in,
            height,
            width,
            channels_out,
            kernel: [3, 3],
            out: [height, width],
            stride: [1, 1],
            padding: [1, 1],
        }
    }
}

/// Output size along one axis of a convolution with symmetric `padding`.
pub(crate) fn out_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride.max(1) + 1
}
