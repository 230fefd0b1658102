//! Running a model: generation with a KV cache (`generate`) and log-probabilities of
//! responses (`score`).

pub mod generate;
pub mod score;
