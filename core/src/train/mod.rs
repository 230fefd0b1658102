//! Training: quadruple data, the batcher, the losses, and (in later modules) the loop.

pub mod batch;
pub mod data;
pub mod loss;
pub mod optim;
pub mod trainable;
