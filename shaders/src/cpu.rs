//! What the CPU (Flex) paths of the kernels share.

use burn_flex::FlexTensor;

/// `tensor` as a contiguous buffer of its own elements, starting at 0 (copied if it is not).
pub(crate) fn dense(tensor: FlexTensor) -> FlexTensor {
    let layout = tensor.layout();
    if layout.is_contiguous() && layout.start_offset() == 0 {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// `f` on every item, spread over the cores (`rayon`).
#[cfg(not(target_family = "wasm"))]
pub(crate) fn each<T: Send>(work: Vec<T>, f: impl Fn(T) + Send + Sync) {
    use rayon::prelude::*;
    work.into_par_iter().for_each(f);
}

/// `f` on every item, in order (the browser's wasm has one thread).
#[cfg(target_family = "wasm")]
pub(crate) fn each<T: Send>(work: Vec<T>, f: impl Fn(T) + Send + Sync) {
    work.into_iter().for_each(f);
}
