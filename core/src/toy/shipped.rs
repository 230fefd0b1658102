//! The toy model shipped inside clo (`core/assets/toy-model/`, made by the command in its
//! `pretrain.json`), so the quickstart needs no download and no pretraining.

use std::path::Path;

use crate::error::Result;
use crate::fsutil::{replace_dir_atomically, write_atomically};

macro_rules! asset {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../assets/toy-model/", $name)).as_slice(),
        )
    };
}

/// The files of the shipped model directory.
pub const FILES: [(&str, &[u8]); 7] = [
    asset!("config.json"),
    asset!("generation_config.json"),
    asset!("model.safetensors"),
    asset!("pretrain.json"),
    asset!("tokenizer.json"),
    asset!("tokenizer_config.json"),
    asset!("toy_world.json"),
];

/// Whether `dir` already holds the shipped model, byte for byte.
pub fn is_shipped_model(dir: &Path) -> bool {
    FILES
        .iter()
        .all(|(name, bytes)| std::fs::read(dir.join(name)).is_ok_and(|b| b == *bytes))
}

/// Writes the shipped model to `dir` (atomically; kept as it is when already there).
pub fn write_shipped_model(dir: &Path) -> Result<()> {
    if is_shipped_model(dir) {
        return Ok(());
    }
    replace_dir_atomically(dir, |tmp| {
        for (name, bytes) in FILES {
            write_atomically(&tmp.join(name), bytes)?;
        }
        Ok(())
    })
}
