//! The model's tokenizer (`tokenizer.json`, through the `tokenizers` crate) and its chat
//! template (Jinja, rendered with `minijinja`), found where transformers 5 looks for it:
//! `chat_template.jinja`, then `chat_template.json`, then `tokenizer_config.json`'s
//! `chat_template` (a string, or a list of named templates of which `default` is used).
//! Special tokens come from `tokenizer_config.json`, else `special_tokens_map.json`; EOS ids
//! also from `generation_config.json` and `config.json`.
//!
//! Sequences are built as `method.md` section 2 fixes: prompt and response are tokenized
//! separately and concatenated, the response ends with EOS.

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind, context};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CoreError, Result};
use crate::load::files::ModelFiles;

/// Prompt format for base models that ship no chat template (Alpaca's, widely known to them).
pub const PLAIN_TEMPLATE: &str = "### Instruction:\n{prompt}\n\n### Response:\n";

/// A tokenizer with the special tokens and chat template of its model.
#[derive(Clone)]
pub struct ChatTokenizer {
    tokenizer: tokenizers::Tokenizer,
    config_path: PathBuf,
    chat_template: Option<String>,
    /// The file the chat template was read from.
    template_path: Option<PathBuf>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("vocab", &self.vocab_size())
            .field("chat_template", &self.chat_template.is_some())
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

/// The parts of `tokenizer_config.json` (and `special_tokens_map.json`) clo reads.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    chat_template: Option<Value>,
    bos_token: Option<Value>,
    eos_token: Option<Value>,
}

/// Reads an optional JSON file of the model directory (`None` when absent).
fn read_optional_json<T: serde::de::DeserializeOwned>(
    files: &ModelFiles<'_>,
    name: &str,
    what: &'static str,
    hint: &'static str,
) -> Result<Option<T>> {
    if !files.exists(name) {
        return Ok(None);
    }
    let text = files.read_string(name, what)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| CoreError::json(&files.path(name), &e, hint))
}

/// The chat template of a model directory and the file it came from, looked up in the order
/// transformers 5 uses: `chat_template.jinja`, `chat_template.json` (`{"chat_template": ...}`),
/// then `tokenizer_config.json`'s `chat_template`.
fn find_chat_template(
    files: &ModelFiles<'_>,
    config: &TokenizerConfig,
) -> Result<Option<(String, PathBuf)>> {
    if files.exists("chat_template.jinja") {
        return Ok(Some((
            files.read_string("chat_template.jinja", "chat template")?,
            files.path("chat_template.jinja"),
        )));
    }
    #[derive(Deserialize)]
    struct TemplateFile {
        chat_template: Option<Value>,
    }
    if let Some(file) = read_optional_json::<TemplateFile>(
        files,
        "chat_template.json",
        "chat template",
        "chat_template.json must be an object with a `chat_template` string",
    )? && let Some(text) = template_text(&file.chat_template)
    {
        return Ok(Some((text, files.path("chat_template.json"))));
    }
    Ok(template_text(&config.chat_template).map(|t| (t, files.path("tokenizer_config.json"))))
}

/// A special token is a string or an `AddedToken` object with `content`.
fn token_text(value: &Option<Value>) -> Option<String> {
    match value.as_ref()? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which `default` is used.
fn template_text(value: &Option<Value>) -> Option<String> {
    match value.as_ref()? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    }
}

impl ChatTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from a model directory.
    /// `config_eos` are the EOS ids of config.json, used besides the tokenizer's own.
    pub fn from_dir(dir: &Path, config_eos: &[u32]) -> Result<Self> {
        Self::from_files(&ModelFiles::Dir(dir), config_eos)
    }

    /// [`Self::from_dir`] over a model directory's files wherever they are.
    pub fn from_files(files: &ModelFiles<'_>, config_eos: &[u32]) -> Result<Self> {
        let tok_path = files.path("tokenizer.json");
        let bytes = files.read_string("tokenizer.json", "tokenizer")?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(bytes.as_bytes()).map_err(|e| {
            CoreError::Tokenizer {
                path: tok_path.clone(),
                message: e.to_string(),
            }
        })?;
        let config_path = files.path("tokenizer_config.json");
        let config: TokenizerConfig = read_optional_json(
            files,
            "tokenizer_config.json",
            "tokenizer config",
            "tokenizer_config.json must be a JSON object",
        )?
        .unwrap_or_else(|| {
            tracing::warn!(path = %config_path.display(), "no tokenizer_config.json: special tokens from special_tokens_map.json, EOS from config.json");
            TokenizerConfig::default()
        });
        // Older checkpoints keep their special tokens in special_tokens_map.json only.
        let map: TokenizerConfig = read_optional_json(
            files,
            "special_tokens_map.json",
            "special tokens map",
            "special_tokens_map.json must be a JSON object",
        )?
        .unwrap_or_default();
        let template = find_chat_template(files, &config)?;
        #[derive(Deserialize)]
        struct GenerationConfig {
            eos_token_id: Option<crate::load::models::TokenIds>,
        }
        let generation_eos = read_optional_json::<GenerationConfig>(
            files,
            "generation_config.json",
            "generation config",
            "generation_config.json must be a JSON object",
        )?
        .and_then(|g| g.eos_token_id)
        .map(|ids| ids.to_vec())
        .unwrap_or_default();
        let eos_token = token_text(&config.eos_token).or_else(|| token_text(&map.eos_token));
        let bos_token = token_text(&config.bos_token).or_else(|| token_text(&map.bos_token));
        // The tokenizer's own EOS ends responses (Llama 3 Instruct: <|eot_id|>, while
        // config.json lists <|end_of_text|> first); config.json's ids also stop generation.
        let mut eos_ids: Vec<u32> = eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            .into_iter()
            .collect();
        for id in config_eos.iter().chain(&generation_eos) {
            if !eos_ids.contains(id) {
                eos_ids.push(*id);
            }
        }
        let (chat_template, template_path) = template.unzip();
        Ok(Self {
            tokenizer,
            config_path,
            chat_template,
            template_path,
            bos_token,
            eos_token,
            eos_ids,
        })
    }

    /// A tokenizer built elsewhere (from a GGUF file's metadata); `source` names it in errors.
    pub fn from_parts(
        tokenizer: tokenizers::Tokenizer,
        source: &Path,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        eos_ids: Vec<u32>,
    ) -> Self {
        Self {
            tokenizer,
            config_path: source.to_path_buf(),
            template_path: chat_template.as_ref().map(|_| source.to_path_buf()),
            chat_template,
            bos_token,
            eos_token,
            eos_ids,
        }
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The BOS and EOS token texts of the tokenizer config.
    pub fn special_tokens(&self) -> (Option<&str>, Option<&str>) {
        (self.bos_token.as_deref(), self.eos_token.as_deref())
    }

    /// Number of token ids the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Token ids that end a response.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The template text prompts are rendered with (the plain fallback for base models).
    pub fn template_source(&self) -> &str {
        self.chat_template.as_deref().unwrap_or(PLAIN_TEMPLATE)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The file the chat template was read from (`None`: the model has none).
    pub fn template_path(&self) -> Option<&Path> {
        self.template_path.as_deref()
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| CoreError::Tokenizer {
                path: self.config_path.with_file_name("tokenizer.json"),
                message: format!("cannot encode {text:?}: {e}"),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| CoreError::Tokenizer {
                path: self.config_path.with_file_name("tokenizer.json"),
                message: format!("cannot decode {ids:?}: {e}"),
            })
    }

    /// The model's chat template applied to one user message with the generation prompt, or
    /// [`PLAIN_TEMPLATE`] for base models.
    pub fn render_prompt(&self, user: &str) -> Result<String> {
        self.render_chat(&[("user", user)])
    }

    /// The model's chat template applied to a conversation (`(role, content)` in order) with the
    /// generation prompt. Without a template, the contents joined by blank lines fill
    /// [`PLAIN_TEMPLATE`].
    pub fn render_chat(&self, messages: &[(&str, &str)]) -> Result<String> {
        let Some(template) = &self.chat_template else {
            let text: Vec<&str> = messages.iter().map(|(_, c)| *c).collect();
            return Ok(PLAIN_TEMPLATE.replace("{prompt}", &text.join("\n\n")));
        };
        let template_err = |e: minijinja::Error, hint| CoreError::Template {
            path: self
                .template_path
                .clone()
                .unwrap_or_else(|| self.config_path.clone()),
            message: format!("{e:#}"),
            hint,
        };
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| template_err(e, "the chat template is not valid Jinja"))?;
        env.get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => messages
                        .iter()
                        .map(|(role, content)| context! { role => role, content => content })
                        .collect::<Vec<_>>(),
                    add_generation_prompt => true,
                    bos_token => self.bos_token.clone().unwrap_or_default(),
                    eos_token => self.eos_token.clone().unwrap_or_default(),
                })
            })
            .map_err(|e| template_err(e, "the template failed on these messages; score raw prompts instead (without the `chat_template` setting)"))
    }

    /// Prompt tokens of a conversation under the chat template (as [`Self::prompt_ids`] with
    /// `chat`).
    pub fn chat_ids(&self, messages: &[(&str, &str)]) -> Result<Vec<u32>> {
        self.encode(&self.render_chat(messages)?, !self.has_chat_template())
    }

    /// Prompt tokens: with `chat`, the rendered template (its own special tokens, nothing
    /// added); without, the raw prompt with the tokenizer's special tokens (BOS).
    pub fn prompt_ids(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        match (chat, self.has_chat_template()) {
            (true, true) => self.encode(&self.render_prompt(prompt)?, false),
            (true, false) => self.encode(&self.render_prompt(prompt)?, true),
            (false, _) => self.encode(prompt, true),
        }
    }

    /// Response tokens followed by the first EOS id (if the model has one).
    pub fn response_ids(&self, response: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(response, false)?;
        ids.extend(self.eos_ids.first());
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory with the llama fixture's tokenizer.json and the given extra files.
    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama");
        std::fs::copy(
            fixture.join("tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn template_is_found_where_transformers_5_looks() {
        let config =
            r#"{"chat_template": "from config {{ messages[0].content }}", "eos_token": "</s>"}"#;
        // tokenizer_config.json alone.
        let d = dir_with(&[("tokenizer_config.json", config)]);
        let t = ChatTokenizer::from_dir(d.path(), &[]).unwrap();
        assert_eq!(t.render_prompt("x").unwrap(), "from config x");
        assert_eq!(
            t.template_path(),
            Some(d.path().join("tokenizer_config.json").as_path())
        );
        // chat_template.json wins over tokenizer_config.json.
        let d = dir_with(&[
            ("tokenizer_config.json", config),
            (
                "chat_template.json",
                r#"{"chat_template": "from json {{ messages[0].content }}"}"#,
            ),
        ]);
        let t = ChatTokenizer::from_dir(d.path(), &[]).unwrap();
        assert_eq!(t.render_prompt("x").unwrap(), "from json x");
        // chat_template.jinja wins over both.
        let d = dir_with(&[
            ("tokenizer_config.json", config),
            ("chat_template.json", r#"{"chat_template": "from json"}"#),
            (
                "chat_template.jinja",
                "from jinja {{ messages[0].content }}",
            ),
        ]);
        let t = ChatTokenizer::from_dir(d.path(), &[]).unwrap();
        assert_eq!(t.render_prompt("x").unwrap(), "from jinja x");
        assert_eq!(
            t.template_path(),
            Some(d.path().join("chat_template.jinja").as_path())
        );
        // A list of named templates: "default" is used, not "tool_use".
        let d = dir_with(&[(
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "default {{ messages[0].content }}"}]}"#,
        )]);
        let t = ChatTokenizer::from_dir(d.path(), &[]).unwrap();
        assert_eq!(t.render_prompt("x").unwrap(), "default x");
        // No template anywhere: the plain fallback, and no template file.
        let d = dir_with(&[]);
        let t = ChatTokenizer::from_dir(d.path(), &[]).unwrap();
        assert!(!t.has_chat_template() && t.template_path().is_none());
    }

    #[test]
    fn special_tokens_and_eos_come_from_every_file_that_states_them() {
        // special_tokens_map.json fills what tokenizer_config.json lacks; generation_config.json
        // adds stop ids (a list too).
        let d = dir_with(&[
            (
                "tokenizer_config.json",
                r#"{"chat_template": "{{ bos_token }}|{{ eos_token }}"}"#,
            ),
            (
                "special_tokens_map.json",
                r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}"#,
            ),
            ("generation_config.json", r#"{"eos_token_id": [0, 2]}"#),
        ]);
        let t = ChatTokenizer::from_dir(d.path(), &[1]).unwrap();
        assert_eq!(t.render_prompt("x").unwrap(), "<s>|</s>");
        let eos = t.tokenizer.token_to_id("</s>").unwrap();
        assert_eq!(t.eos_ids()[0], eos, "the tokenizer's own EOS first");
        for id in [1, 0, 2] {
            assert!(t.eos_ids().contains(&id), "{:?}", t.eos_ids());
        }
        // A broken optional file is an error naming it, not silently skipped.
        let d = dir_with(&[("generation_config.json", "{")]);
        let err = ChatTokenizer::from_dir(d.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("generation_config.json"), "{err}");
    }
}
