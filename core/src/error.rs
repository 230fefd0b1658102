//! The one error type of `clo-core`. Every message names the file (and line, field or tensor)
//! and ends with a hint for the next step.

use std::path::{Path, PathBuf};

/// What kind of failure an error is, for callers that map errors to outcomes (the server's
/// HTTP statuses, exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Something named does not exist (a model, a file, a checkpoint).
    NotFound,
    /// The input is malformed or inconsistent; the message names where.
    InvalidInput,
    /// Well-formed, but clo does not support it (a model type, a tensor type, a scaling).
    Unsupported,
    /// Busy or exhausted: a lock held by another process, a full disk, an endpoint that failed.
    Resource,
    /// A failure of clo or the system that the input does not explain.
    Internal,
}

/// Errors of the core library.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file that is needed is not there (a model file, a data file, a checkpoint).
    #[error("missing {what}: {path} does not exist\nHINT: {}", missing_hint(what))]
    MissingFile { path: PathBuf, what: &'static str },

    /// Reading or writing a file failed. The OS error is part of the message and not a
    /// `source`, so that a printed error chain names it once.
    #[error("cannot {action} {path}: {cause}")]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    /// An output path holds something clo did not write there; nothing was changed.
    #[error(
        "{path} already exists and was not written by {writer}; nothing was changed\nHINT: choose another output path, or replace it with the `force` setting (the old one is moved aside, not deleted)"
    )]
    OutputExists { path: PathBuf, writer: &'static str },

    /// An output path is a training run directory (or lies inside one) that is not this
    /// command's own run.
    #[error(
        "{path} is {relation} {run}; clo never writes into or over a run other than its own\nHINT: choose an output path outside the run directory"
    )]
    OutputInRun {
        path: PathBuf,
        run: PathBuf,
        relation: &'static str,
    },

    /// Another process holds the run directory's lock.
    #[error(
        "{path} is in use by process {pid} (another clo train, resume or server run)\nHINT: wait for it to finish or stop it, or choose another `out` setting; a lock left by a killed process is taken over automatically"
    )]
    Locked { path: PathBuf, pid: String },

    /// A prompt (or a record) has more tokens than the model's context or a configured limit.
    #[error("{what}: {tokens} tokens exceed the limit of {limit} ({why})\nHINT: {hint}")]
    TooLong {
        what: String,
        tokens: usize,
        limit: usize,
        why: String,
        hint: &'static str,
    },

    /// A JSON file does not parse, or lacks a field.
    #[error("{path}{location}: {message}\nHINT: {hint}")]
    Json {
        path: PathBuf,
        /// `:line:column` when the parser knows it, else empty.
        location: String,
        message: String,
        hint: &'static str,
    },

    /// The model config names something this code does not implement.
    #[error("{path}: unsupported `{field}` = {value}\nHINT: clo supports {supported}")]
    UnsupportedConfig {
        path: PathBuf,
        field: &'static str,
        value: String,
        supported: &'static str,
    },

    /// A safetensors file is truncated, corrupt or unreadable.
    #[error(
        "{path}: not a readable safetensors file: {message}\nHINT: the file may be truncated or corrupt; download it again and compare its size with the original"
    )]
    Safetensors { path: PathBuf, message: String },

    /// A GGUF file is malformed or holds something clo does not read.
    #[error(
        "{path}: {message}\nHINT: check that the file is a complete GGUF model (llama.cpp, Ollama and LM Studio write them), or pass a Hugging Face model directory"
    )]
    Gguf { path: PathBuf, message: String },

    /// The checkpoint's tensors do not fit the architecture of config.json.
    #[error(
        "{path}: the checkpoint does not match config.json:\n  {}\nHINT: check that config.json belongs to these weights (hidden_size, num_key_value_heads, head_dim, vocab_size)",
        problems.join("\n  ")
    )]
    Weights {
        path: PathBuf,
        problems: Vec<String>,
    },

    /// The tokenizer knows token ids the model has no embedding for.
    #[error(
        "{path}: the tokenizer has {tokenizer} tokens but config.json says vocab_size = {model}\nHINT: tokenizer.json and the weights come from different models; use the tokenizer shipped with the checkpoint"
    )]
    VocabMismatch {
        path: PathBuf,
        tokenizer: usize,
        model: usize,
    },

    /// tokenizer.json cannot be used.
    #[error("{path}: {message}\nHINT: tokenizer.json must be a Hugging Face `tokenizers` file")]
    Tokenizer { path: PathBuf, message: String },

    /// The chat template does not compile or render.
    #[error("chat template of {path}: {message}\nHINT: {hint}")]
    Template {
        path: PathBuf,
        message: String,
        hint: &'static str,
    },

    /// A record of an input file is malformed.
    #[error("{path}:{line}: {message}\nHINT: {hint}")]
    Input {
        path: PathBuf,
        line: usize,
        message: String,
        hint: &'static str,
    },

    /// Training produced NaN or infinity; the last good state was saved.
    #[error(
        "the {what} is not finite at step {step} ({stage}); training stopped before applying it\nHINT: the last good weights are in {}; lower the `lr` setting, raise the `warmup` setting, or check the data, then resume or restart",
        checkpoint.display()
    )]
    NonFinite {
        step: usize,
        stage: &'static str,
        what: &'static str,
        checkpoint: PathBuf,
    },

    /// Arguments that cannot work together.
    #[error("{0}")]
    Invalid(String),

    /// A size (in a model file, a setting or a request) outside clo's bounds
    /// ([`crate::limits`]): the source, the field, the value and why.
    #[error("{origin}: `{field}` = {value} {why}\nHINT: {hint}")]
    OutOfBounds {
        origin: String,
        field: String,
        value: String,
        why: String,
        hint: String,
    },

    /// Work whose memory estimate exceeds the memory this process may use; nothing was
    /// allocated.
    #[error(
        "{what} needs about {} of memory, more than {limit_source} allows ({})\nHINT: {hint}",
        human_bytes(*estimate),
        human_bytes(*limit)
    )]
    TooLarge {
        what: String,
        estimate: u64,
        limit: u64,
        limit_source: String,
        hint: String,
    },

    /// A fault of clo or the device that the input does not explain (a read-back from the
    /// device failed, an invariant broke): the server answers 500, not 400.
    #[error(
        "internal error: {0}\nHINT: this is a fault of clo or the device, not of the input; please report it with the log"
    )]
    Internal(String),

    /// An HTTP endpoint (translator, judge) failed.
    #[error("{url}: {message}")]
    Endpoint { url: String, message: String },
}

impl CoreError {
    pub(crate) fn io(action: &'static str, path: &Path, cause: std::io::Error) -> Self {
        CoreError::Io {
            action,
            path: path.to_path_buf(),
            cause,
        }
    }

    pub(crate) fn json(path: &Path, err: &serde_json::Error, hint: &'static str) -> Self {
        let location = if err.line() > 0 {
            format!(":{}:{}", err.line(), err.column())
        } else {
            String::new()
        };
        CoreError::Json {
            path: path.to_path_buf(),
            location,
            message: err.to_string(),
            hint,
        }
    }
}

impl CoreError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match self {
            CoreError::MissingFile { .. } => ErrorKind::NotFound,
            CoreError::Io { cause, .. } => match cause.kind() {
                Io::NotFound => ErrorKind::NotFound,
                Io::StorageFull | Io::QuotaExceeded | Io::OutOfMemory | Io::ResourceBusy => {
                    ErrorKind::Resource
                }
                Io::InvalidData | Io::InvalidInput | Io::UnexpectedEof => ErrorKind::InvalidInput,
                _ => ErrorKind::Internal,
            },
            CoreError::Locked { .. } | CoreError::Endpoint { .. } => ErrorKind::Resource,
            CoreError::UnsupportedConfig { .. } => ErrorKind::Unsupported,
            CoreError::NonFinite { .. } | CoreError::Internal(_) => ErrorKind::Internal,
            CoreError::OutputExists { .. }
            | CoreError::OutputInRun { .. }
            | CoreError::TooLong { .. }
            | CoreError::Json { .. }
            | CoreError::Safetensors { .. }
            | CoreError::Gguf { .. }
            | CoreError::Weights { .. }
            | CoreError::VocabMismatch { .. }
            | CoreError::Tokenizer { .. }
            | CoreError::Template { .. }
            | CoreError::Input { .. }
            | CoreError::OutOfBounds { .. }
            | CoreError::TooLarge { .. }
            | CoreError::Invalid(_) => ErrorKind::InvalidInput,
        }
    }
}

/// The next step for a missing file: model files get the model directory's layout, everything
/// else a plain check of the path.
fn missing_hint(what: &str) -> &'static str {
    const MODEL: [&str; 6] = [
        "model config",
        "tokenizer",
        "tokenizer config",
        "model directory",
        "shard index",
        "weights (model.safetensors or model.safetensors.index.json)",
    ];
    if MODEL.contains(&what) || what.starts_with("shard") {
        "a Hugging Face model directory holds config.json, model.safetensors (or model.safetensors.index.json and its shards), tokenizer.json and tokenizer_config.json"
    } else if what.contains("checkpoint") || what.contains("run") {
        "check the run directory (clo train writes RUN/config.toml, RUN/checkpoints/ and RUN/best/)"
    } else {
        "check the path (relative paths are taken from the current directory)"
    }
}

/// A byte count for people: `1.50 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..0x10_0000 => format!("{:.1} KiB", b / 1024.0),
        0x10_0000..0x4000_0000 => format!("{:.1} MiB", b / (1 << 20) as f64),
        _ => format!("{:.2} GiB", b / (1u64 << 30) as f64),
    }
}

/// Result with [`CoreError`].
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Reads a whole file, naming it in the error.
pub(crate) fn read_to_string(path: &Path, what: &'static str) -> Result<String> {
    if !path.exists() {
        return Err(CoreError::MissingFile {
            path: path.to_path_buf(),
            what,
        });
    }
    // The JSON and TOML files read whole (configs, indexes, states, summaries) are small.
    check_file_size(path, what, 256 << 20)?;
    std::fs::read_to_string(path).map_err(|e| CoreError::io("read", path, e))
}

/// Refuses a file that is to be read whole into memory when it is larger than `max` bytes: one
/// of gigabytes is not what its name says, and is not read.
pub(crate) fn check_file_size(path: &Path, what: &str, max: u64) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| CoreError::io("stat", path, e))?
        .len();
    if len > max {
        return Err(CoreError::OutOfBounds {
            origin: path.display().to_string(),
            field: format!("{what} size"),
            value: format!("{len} bytes"),
            why: format!("is above clo's limit of {max} bytes for such a file"),
            hint: "check that the file is what its name says".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_kinds() {
        let missing = CoreError::MissingFile {
            path: "m".into(),
            what: "model config",
        };
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(
            CoreError::Invalid("x".into()).kind(),
            ErrorKind::InvalidInput
        );
        let locked = CoreError::Locked {
            path: "r".into(),
            pid: "1".into(),
        };
        assert_eq!(locked.kind(), ErrorKind::Resource);
        let io = |k| CoreError::io("read", Path::new("f"), std::io::Error::from(k)).kind();
        assert_eq!(io(std::io::ErrorKind::NotFound), ErrorKind::NotFound);
        assert_eq!(io(std::io::ErrorKind::StorageFull), ErrorKind::Resource);
        assert_eq!(io(std::io::ErrorKind::Other), ErrorKind::Internal);
        assert_eq!(CoreError::Internal("x".into()).kind(), ErrorKind::Internal);
    }
}
