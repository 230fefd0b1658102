//! Training: quadruple data, the batcher, the losses, reference log-probs, and the loop.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod examples;
pub mod loss;
pub mod optim;
pub mod reference;
pub mod run;
pub mod trainable;

pub use config::{Method, RunConfig, TrainableKind};
pub use run::{Outcome, Progress, RunSummary, StepMetrics, TrainOptions, train};
