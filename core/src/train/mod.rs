//! Training: quadruple data, the batcher, the losses, reference log-probs, the run loop, and
//! pretraining a model from scratch.

pub mod batch;
pub mod batcher;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod driver;
pub mod examples;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod parallel;
pub mod pretrain;
pub mod reference;
pub mod run;
pub mod session;
pub mod step;
/// The trainable-weights table lives with the weight mapping (`load`); re-exported here.
pub use crate::load::trainable;

pub use batcher::Batcher;
pub use config::{Method, RunConfig, TrainableKind};
pub use run::{Outcome, Progress, RunSummary, StepMetrics, TrainOptions, train};
pub use step::{MicroBatch, Objective, OptimizerSettings, StepReport, Trainer};
