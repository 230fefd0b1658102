//! Tokenizers to and from GGUF metadata (`tokenizer.ggml.*`).
//!
//! In: a byte-level BPE (`tokenizer.ggml.model = "gpt2"`: Llama 3, Qwen, SmolLM, Mistral Nemo) is
//! rebuilt as transformers' GGUF loader rebuilds it (`integrations/gguf/gguf_tokenizer_mapping`):
//! vocabulary and merges from the file, control tokens (type 3) as special added tokens,
//! user-defined ones (type 4) as plain added tokens, the pre-tokenizer split chosen by
//! `tokenizer.ggml.pre`, BOS added when `tokenizer.ggml.add_bos_token` says so. A SentencePiece
//! vocabulary (`"llama"`: Llama 2, Mistral 7B, Gemma) becomes the BPE with byte fallback that
//! transformers' `LlamaTokenizer` (or, for Gemma architectures, `GemmaTokenizer`) builds, its
//! merges recovered from the token scores (Gemma: from the token order) as transformers'
//! `generate_merges` recovers them.
//!
//! Out: a byte-level BPE `tokenizer.json` becomes the same keys, with the `pre` name that
//! llama.cpp knows for its split.

use std::path::Path;

use serde_json::{Value as Json, json};

use super::file::{GgufFile, Value};
use crate::error::{CoreError, Result};

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of a `tokenizer.ggml.pre` name (transformers' `GGUF_PRE_TOKENIZER_SPLITS`,
/// the ones clo reads).
fn split_of(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        table[b as usize] = if printable {
            b as char
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid code point")
        };
    }
    table
}

fn strings(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let items = v
        .as_array()
        .ok_or_else(|| bad(file, format!("`{key}` is not an array")))?;
    items
        .iter()
        .map(|i| {
            i.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(file, format!("`{key}` holds a non-string")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn bad(file: &GgufFile, message: String) -> CoreError {
    CoreError::Gguf {
        path: file.path.clone(),
        message,
    }
}

/// The file's tokenizer, as transformers builds it from the same metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<tokenizers::Tokenizer> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad(
                file,
                "no `tokenizer.ggml.model`: the file carries no tokenizer".into(),
            )
        })?;
    if model == "llama" {
        return sentencepiece_from_gguf(file);
    }
    if model != "gpt2" {
        return Err(bad(
            file,
            format!(
                "`tokenizer.ggml.model` = {model:?}: clo rebuilds byte-level BPE (\"gpt2\") and SentencePiece (\"llama\") vocabularies from GGUF; use the model's Hugging Face directory"
            ),
        ));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| bad(file, "no `tokenizer.ggml.tokens`".into()))?;
    let merges = strings(file, "tokenizer.ggml.merges")?.ok_or_else(|| {
        bad(
            file,
            "no `tokenizer.ggml.merges` in a BPE vocabulary".into(),
        )
    })?;
    let types: Vec<i32> = match file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    {
        Some(items) => items
            .iter()
            .map(|v| v.as_u64().map_or(NORMAL, |t| t as i32))
            .collect(),
        None => vec![NORMAL; tokens.len()],
    };
    let table = byte_chars();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) {
            token.clone()
        } else {
            token.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
        let ty = types.get(id).copied().unwrap_or(NORMAL);
        let special = ty == CONTROL && in_alphabet(token);
        if special || ty == USER_DEFINED {
            added.push(
                json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": !special, "special": special}),
            );
        }
    }
    let merges = merge_pairs(file, &merges)?;
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let pre_tokenizer = match split_of(pre) {
        Some(split) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        None => byte_level(true),
    };
    let add_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    assemble(
        file,
        Parts {
            added,
            normalizer: Json::Null,
            pre_tokenizer,
            post_processor: bos_processor(file, &tokens, add_bos),
            decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
            model: json!({"unk_token": null, "fuse_unk": false, "byte_fallback": false,
                "vocab": vocab, "merges": merges}),
        },
    )
}

/// The pieces of a `tokenizer.json` that differ between vocabulary kinds.
struct Parts {
    added: Vec<Json>,
    normalizer: Json,
    pre_tokenizer: Json,
    post_processor: Json,
    decoder: Json,
    /// BPE fields: unk_token, fuse_unk, byte_fallback, vocab, merges.
    model: Json,
}

/// A `tokenizers` tokenizer from its parts (a BPE model).
fn assemble(file: &GgufFile, parts: Parts) -> Result<tokenizers::Tokenizer> {
    let mut model = json!({"type": "BPE", "dropout": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "ignore_merges": false});
    if let (Some(m), Some(extra)) = (model.as_object_mut(), parts.model.as_object()) {
        m.extend(extra.clone());
    }
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": parts.added,
        "normalizer": parts.normalizer, "pre_tokenizer": parts.pre_tokenizer,
        "post_processor": parts.post_processor, "decoder": parts.decoder, "model": model,
    });
    tokenizers::Tokenizer::from_bytes(tokenizer.to_string().as_bytes()).map_err(|e| {
        bad(
            file,
            format!("the tokenizer built from tokenizer.ggml.* is invalid: {e}"),
        )
    })
}

/// `tokenizer.ggml.merges` ("a b" strings) as tokenizer.json pairs.
fn merge_pairs(file: &GgufFile, merges: &[String]) -> Result<Vec<Json>> {
    merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(bad(file, format!("merge {m:?} is not two tokens"))),
        })
        .collect()
}

fn token_types(file: &GgufFile, n: usize) -> Vec<i32> {
    match file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    {
        Some(items) => items
            .iter()
            .map(|v| match v {
                Value::I32(t) => *t,
                other => other.as_u64().map_or(NORMAL, |t| t as i32),
            })
            .collect(),
        None => vec![NORMAL; n],
    }
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
/// tokens of the vocabulary, best score first (ties: shorter left piece, then shorter right).
fn generate_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let index: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i)) // a duplicated token keeps its last id, as in Python
        .collect();
    // A Python dict of token -> score keeps the first position and the last score of a token.
    let mut order: Vec<usize> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        match seen.get(t.as_str()) {
            Some(&slot) => order[slot] = i,
            None => {
                seen.insert(t.as_str(), order.len());
                order.push(i);
            }
        }
    }
    let mut merges: Vec<(String, String, f64)> = Vec::new();
    for i in order {
        let token = &tokens[i];
        let bounds: Vec<usize> = token.char_indices().map(|(b, _)| b).skip(1).collect();
        let mut local: Vec<(&str, &str)> = bounds
            .iter()
            .map(|&b| (&token[..b], &token[b..]))
            .filter(|(l, r)| index.contains_key(l) && index.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r)| (index[l], index[r]));
        merges.extend(
            local
                .into_iter()
                .map(|(l, r)| (l.to_owned(), r.to_owned(), scores[i])),
        );
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|a, b| {
        let key = |m: &(String, String, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`) as transformers rebuilds it:
/// `LlamaTokenizer` (Metaspace, prefix space on the first word, byte fallback), or for the
/// Gemma architectures `GemmaTokenizer` (spaces as `▁`, no prefix space, multi-space tokens
/// respelled, merges in token order).
fn sentencepiece_from_gguf(file: &GgufFile) -> Result<tokenizers::Tokenizer> {
    let mut tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| bad(file, "no `tokenizer.ggml.tokens`".into()))?;
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let gemma = matches!(arch, "gemma" | "gemma2" | "gemma3");
    let scores: Vec<f64> = if gemma {
        tokens.iter_mut().for_each(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                *t = "▁".repeat(t.chars().count());
            }
        });
        (0..tokens.len()).map(|i| -(i as f64)).collect()
    } else {
        match file.get("tokenizer.ggml.scores").and_then(Value::as_array) {
            Some(items) => items.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
            None => {
                return Err(bad(
                    file,
                    "no `tokenizer.ggml.scores` in a SentencePiece vocabulary".into(),
                ));
            }
        }
    };
    if scores.len() != tokens.len() {
        return Err(bad(
            file,
            format!("{} scores for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let merges: Vec<Json> = match strings(file, "tokenizer.ggml.merges")? {
        Some(list) => merge_pairs(file, &list)?,
        None => generate_merges(&tokens, &scores)
            .into_iter()
            .map(|(l, r)| json!([l, r]))
            .collect(),
    };
    let types = token_types(file, tokens.len());
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), json!(id));
        let ty = types.get(id).copied().unwrap_or(NORMAL);
        if ty == CONTROL || ty == USER_DEFINED {
            let special = ty == CONTROL;
            added.push(
                json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": !special, "special": special}),
            );
        }
    }
    let unk = "<unk>";
    let (normalizer, pre_tokenizer, decoder) = if gemma {
        (
            json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}),
            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]}),
        )
    } else {
        (
            Json::Null,
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}),
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
        )
    };
    let add_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    assemble(
        file,
        Parts {
            added,
            normalizer,
            pre_tokenizer,
            post_processor: bos_processor(file, &tokens, add_bos),
            decoder,
            model: json!({"unk_token": unk, "fuse_unk": true, "byte_fallback": true,
                "vocab": vocab, "merges": merges}),
        },
    )
}

/// A post-processor that puts BOS first when `add_bos` (and the file names a BOS), else none.
fn bos_processor(file: &GgufFile, tokens: &[String], add_bos: bool) -> Json {
    let bos = file
        .get("tokenizer.ggml.bos_token_id")
        .and_then(Value::as_u64)
        .and_then(|id| Some((tokens.get(id as usize)?.clone(), id)));
    match (add_bos, bos) {
        (true, Some((bos, id))) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [id], "tokens": [bos]}}}),
        _ => Json::Null,
    }
}

/// The `tokenizer.ggml.*` metadata of a byte-level BPE tokenizer (`tokenizer.json` form).
pub fn gguf_from_tokenizer(
    tokenizer: &tokenizers::Tokenizer,
    source: &Path,
) -> Result<Vec<(String, Value)>> {
    let unsupported = |what: String| CoreError::Tokenizer {
        path: source.to_path_buf(),
        message: format!(
            "{what}; clo writes BPE vocabularies to GGUF: byte-level (Llama 3, Qwen, SmolLM, clo's own) or SentencePiece-style with byte fallback (Llama 2, Mistral, Gemma), not WordPiece or Unigram ones"
        ),
    };
    let value: Json = serde_json::from_str(
        &tokenizer
            .to_string(false)
            .map_err(|e| unsupported(format!("cannot serialise the tokenizer: {e}")))?,
    )
    .map_err(|e| unsupported(format!("tokenizer JSON: {e}")))?;
    let model = &value["model"];
    if model["type"] == "BPE" && model["byte_fallback"] == true {
        return Ok(sentencepiece_to_gguf(tokenizer, &value));
    }
    if model["type"] != "BPE" {
        return Err(unsupported(format!(
            "the tokenizer model is {}",
            model["type"]
        )));
    }
    let pre = pre_name(&value["pre_tokenizer"]).ok_or_else(|| {
        unsupported(format!(
            "the pre-tokenizer {} is not byte-level",
            value["pre_tokenizer"]
        ))
    })?;
    let size = tokenizer.get_vocab_size(true);
    let mut tokens = vec![String::new(); size];
    let mut types = vec![NORMAL; size];
    for (token, id) in tokenizer.get_vocab(false) {
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = token;
        }
    }
    for (id, added) in tokenizer.get_added_tokens_decoder() {
        if let Some(slot) = tokens.get_mut(id as usize) {
            slot.clone_from(&added.content);
            types[id as usize] = if added.special { CONTROL } else { USER_DEFINED };
        }
    }
    if let Some(hole) = tokens.iter().position(String::is_empty) {
        return Err(unsupported(format!("token id {hole} has no token")));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::Array(pair) => Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            )),
            other => Value::String(other.as_str().unwrap_or_default().to_owned()),
        })
        .collect();
    let adds_bos = value["post_processor"]["type"] == "TemplateProcessing"
        && value["post_processor"]["single"][0]
            .get("SpecialToken")
            .is_some();
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(adds_bos)),
    ])
}

/// llama.cpp's BYTE and UNKNOWN token types.
const UNKNOWN: i32 = 2;
const BYTE: i32 = 6;

/// A SentencePiece-style BPE (`byte_fallback`, `▁` for spaces: Llama 2, Mistral, Gemma) as
/// llama.cpp's `"llama"` vocabulary: tokens by id, types (`<0xNN>` bytes, `<unk>`, special
/// added tokens as control), and scores. `tokenizer.json` has no scores; a token made by the
/// merge of rank `r` gets `-r` (SentencePiece's own BPE scores are exactly that), others
/// `-1e9`, so that llama.cpp's highest-score-first merging, and transformers' merges rebuilt
/// from scores, follow the original merge order.
fn sentencepiece_to_gguf(tokenizer: &tokenizers::Tokenizer, value: &Json) -> Vec<(String, Value)> {
    let size = tokenizer.get_vocab_size(true);
    let mut tokens = vec![String::new(); size];
    for (token, id) in tokenizer.get_vocab(true) {
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = token;
        }
    }
    let mut rank: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (r, m) in value["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let merged = match m {
            Json::Array(pair) => format!(
                "{}{}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            ),
            other => other.as_str().unwrap_or_default().replacen(' ', "", 1),
        };
        rank.entry(merged).or_insert(r);
    }
    let added = tokenizer.get_added_tokens_decoder();
    let unk = value["model"]["unk_token"].as_str();
    let mut scores = Vec::with_capacity(size);
    let mut types = Vec::with_capacity(size);
    for (id, token) in tokens.iter().enumerate() {
        scores.push(Value::F32(rank.get(token).map_or(-1e9, |&r| -(r as f32))));
        let is_byte = token.len() == 6 && token.starts_with("<0x") && token.ends_with('>');
        types.push(Value::I32(match added.get(&(id as u32)) {
            _ if Some(token.as_str()) == unk => UNKNOWN,
            Some(a) if a.special => CONTROL,
            Some(_) => USER_DEFINED,
            None if is_byte => BYTE,
            None => NORMAL,
        }));
    }
    let adds_bos = value["post_processor"]["type"] == "TemplateProcessing"
        && value["post_processor"]["single"][0]
            .get("SpecialToken")
            .is_some();
    // A Metaspace that prepends, or a normalizer that prepends "▁" (older Llama 2 files).
    let prefix = value["pre_tokenizer"]["prepend_scheme"]
        .as_str()
        .is_some_and(|s| s != "never")
        || value["normalizer"].to_string().contains("Prepend");
    let unk_id = unk.and_then(|u| tokenizer.token_to_id(u)).map(|id| {
        (
            "tokenizer.ggml.unknown_token_id".to_string(),
            Value::U32(id),
        )
    });
    let mut keys = vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.scores".into(), Value::Array(scores)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(adds_bos)),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(prefix),
        ),
    ];
    keys.extend(unk_id);
    keys
}

/// llama.cpp's `tokenizer.ggml.pre` name for a byte-level pre-tokenizer, `None` if it is not one.
fn pre_name(pre: &Json) -> Option<&'static str> {
    let byte_level = |p: &Json| p["type"] == "ByteLevel";
    if byte_level(pre) {
        // GPT-2's own split, which llama.cpp calls "gpt-2".
        return (pre["use_regex"] != false).then_some("gpt-2");
    }
    let parts = pre["pretokenizers"].as_array()?;
    let last = parts.last()?;
    if !byte_level(last) {
        return None;
    }
    match &parts[..parts.len() - 1] {
        [] => Some("gpt-2"),
        [split] if split["type"] == "Split" => match split["pattern"]["Regex"].as_str()? {
            LLAMA3_SPLIT => Some("llama-bpe"),
            QWEN2_SPLIT => Some("qwen2"),
            _ => None,
        },
        // SmolLM: single digits, then GPT-2's split.
        [digits] if digits["type"] == "Digits" => Some("smollm"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
    }
}
