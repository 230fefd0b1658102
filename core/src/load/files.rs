//! Where a model directory's files come from: the disk, or bytes already fetched (the browser,
//! which has no file system, downloads them first). Errors name the file under `root`: a path,
//! or the URL the files came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// The files of a model directory that loading reads, and whether each must be there (the
/// weights are `model.safetensors`, or shards that `model.safetensors.index.json` names).
pub const MODEL_FILES: [(&str, bool); 9] = [
    ("config.json", true),
    ("tokenizer.json", true),
    ("tokenizer_config.json", false),
    ("special_tokens_map.json", false),
    ("generation_config.json", false),
    ("chat_template.jinja", false),
    ("chat_template.json", false),
    ("model.safetensors", false),
    ("model.safetensors.index.json", false),
];

/// Whether loading a model directory reads file `name`: one of [`MODEL_FILES`] or a shard
/// (`model-*.safetensors`).
pub fn is_model_file(name: &str) -> bool {
    MODEL_FILES.iter().any(|(n, _)| *n == name)
        || (name.starts_with("model-") && name.ends_with(".safetensors"))
}

/// Whether `name` is one plain file name, never a path: not empty, not hidden (no leading
/// `.`, so neither `.` nor `..`), no separator of any OS, no NUL, no drive colon. What the index
/// check and the server's files route both require.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0', ':'])
        && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name))
}

/// Checks a shard name that `model.safetensors.index.json` (at `index`) gives: a plain file name
/// in the model directory ending in `.safetensors`, never a path (no separator, no `..`, not
/// absolute), so that an index can never make clo open a file outside its model. Checked
/// before anything is opened.
pub fn check_shard_name(index: &Path, name: &str) -> Result<()> {
    if is_plain_file_name(name) && name.ends_with(".safetensors") {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "{}: `weight_map` names the shard {name:?}, which is not a plain `.safetensors` file name in the model directory; clo reads only files inside a model's directory\nHINT: the index is damaged or hostile; shard names look like model-00001-of-00002.safetensors",
            index.display()
        )))
    }
}

/// A model directory's files.
#[derive(Debug, Clone, Copy)]
pub enum ModelFiles<'a> {
    /// A directory on disk.
    Dir(&'a Path),
    /// Files already in memory, by name (`config.json`, `model.safetensors`, ...); `root` names
    /// where they came from in messages.
    Memory {
        root: &'a Path,
        files: &'a BTreeMap<String, Vec<u8>>,
    },
}

impl ModelFiles<'_> {
    /// The directory (or URL) the files are named under.
    pub fn root(&self) -> &Path {
        match self {
            ModelFiles::Dir(dir) => dir,
            ModelFiles::Memory { root, .. } => root,
        }
    }

    /// Where file `name` is, for messages.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            ModelFiles::Dir(dir) => dir.join(name).exists(),
            ModelFiles::Memory { files, .. } => files.contains_key(name),
        }
    }

    /// The bytes of `name`; `what` says what it is if it is missing.
    pub fn read(&self, name: &str, what: &'static str) -> Result<Vec<u8>> {
        match self {
            ModelFiles::Dir(dir) => {
                let path = dir.join(name);
                if !path.exists() {
                    return Err(CoreError::MissingFile { path, what });
                }
                // Tokenizers, templates and configs: tens of MB at most (Gemma 3's tokenizer.json
                // is 33 MB).
                crate::error::check_file_size(&path, what, 1 << 30)?;
                std::fs::read(&path).map_err(|e| CoreError::io("read", &path, e))
            }
            ModelFiles::Memory { files, .. } => {
                files
                    .get(name)
                    .cloned()
                    .ok_or_else(|| CoreError::MissingFile {
                        path: self.path(name),
                        what,
                    })
            }
        }
    }

    /// The text of `name`.
    pub fn read_string(&self, name: &str, what: &'static str) -> Result<String> {
        let bytes = self.read(name, what)?;
        String::from_utf8(bytes).map_err(|_| {
            CoreError::Invalid(format!(
                "{}: {what} is not UTF-8 text",
                self.path(name).display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use burn::prelude::*;

    use super::*;
    use crate::Pretrained;
    use crate::infer::generate::{SamplingConfig, generate, generate_async};

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen2")
    }

    fn in_memory(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    use crate::ready;

    /// The browser's path: the same model from bytes as from the directory (logits, chat
    /// prompt, greedy tokens through the awaited decoder), and a missing file named by URL.
    #[test]
    fn a_model_in_memory_loads_as_from_disk() {
        let device = Device::flex();
        let disk = Pretrained::load(&fixture(), &device).unwrap();
        let mut files = in_memory(&fixture());
        let url = Path::new("http://127.0.0.1:8080/api/models/qwen2/files");
        let mem = Pretrained::from_memory(url, &files, &device).unwrap();
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 2], [1, 4]), &device);
        let a: Vec<f32> = disk
            .model
            .forward(ids.clone(), None)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b: Vec<f32> = mem
            .model
            .forward(ids, None)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(a, b);
        let messages = [("user", "hello there")];
        assert_eq!(
            disk.tokenizer.chat_ids(&messages).unwrap(),
            mem.tokenizer.chat_ids(&messages).unwrap()
        );
        assert_eq!(disk.tokenizer.eos_ids(), mem.tokenizer.eos_ids());

        let prompt = mem.tokenizer.chat_ids(&messages).unwrap();
        let config = SamplingConfig {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            max_new_tokens: 12,
        };
        let sync = generate(
            &disk.model,
            &prompt,
            disk.tokenizer.eos_ids(),
            &config,
            &device,
            |_| {},
        );
        let mut streamed = Vec::new();
        let awaited = ready(generate_async(
            &mem.model,
            &prompt,
            mem.tokenizer.eos_ids(),
            &config,
            &device,
            |t| {
                streamed.push(t);
                ControlFlow::Continue(())
            },
        ))
        .unwrap();
        assert_eq!(sync, awaited);
        assert_eq!(streamed, awaited.ids);

        files.remove("model.safetensors");
        let err = Pretrained::from_memory(url, &files, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http://127.0.0.1:8080/api/models/qwen2/files/model.safetensors"),
            "{err}"
        );
    }
}
