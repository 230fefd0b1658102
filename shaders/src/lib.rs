//! Custom GPU kernels for clo. Each kernel lives beside a reference written in plain Burn tensor
//! ops, with a test that outputs and gradients agree and a benchmark against the reference.
//!
//! No kernel has been needed yet: the model core runs on Burn's own kernels on every backend.
