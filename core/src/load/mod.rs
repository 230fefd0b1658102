//! Getting a model in: architectures and their configs (`models`), weights from safetensors
//! (`weights`) or GGUF (`gguf`), the tokenizer and chat template (`tokenizer`), and all of it
//! as one loaded model (`pretrained`).

pub mod files;
pub mod gguf;
pub mod models;
pub mod peft;
pub mod pretrained;
pub mod tokenizer;
pub mod trainable;
pub mod weights;
