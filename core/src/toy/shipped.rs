//! The toy model shipped inside clo (`core/assets/toy-model/`, made by the command in its
//! `pretrain.json`), so the quickstart needs no download and no pretraining.

use std::path::Path;

use crate::error::{CoreError, Result};
use crate::fsutil::{replace_dir_atomically, write_atomically};
use crate::toy::data::{quadruples, quadruples_jsonl};
use crate::toy::world::{Lang, World};

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

/// The toy world the shipped model was pretrained on.
pub fn shipped_world() -> Result<World> {
    let (_, bytes) = FILES
        .iter()
        .find(|(name, _)| *name == "toy_world.json")
        .expect("toy_world.json is shipped");
    serde_json::from_slice(bytes)
        .map_err(|e| CoreError::Invalid(format!("shipped toy_world.json: {e}")))
}

/// What `clo serve --toy` offers: the shipped model in `model_dir` and `n` toy quadruples
/// (seed 0, the quickstart's first set) in `data_path`, each written only when missing.
pub fn write_toy_kit(model_dir: &Path, data_path: &Path, n: usize) -> Result<()> {
    write_shipped_model(model_dir)?;
    if !data_path.is_file() {
        let quads = quadruples(&shipped_world()?, Lang::Toy, n, 0);
        write_atomically(data_path, quadruples_jsonl(&quads).as_bytes())?;
    }
    Ok(())
}
