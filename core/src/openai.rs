//! A client of OpenAI-compatible chat endpoints (vLLM, llama.cpp server, Ollama, OpenAI, clo's
//! own server): the translator of `clo prepare` and the judge of `clo eval judge`.
//!
//! Specs are written `openai:BASE_URL#MODEL`, with `BASE_URL` the API base an OpenAI client
//! takes (requests go to `BASE_URL/chat/completions`). Transient failures (connection errors,
//! timeouts, 429 and 5xx) are retried with exponential backoff, honouring `Retry-After`; a
//! shared limiter spaces requests to at most `requests_per_second`.

use std::sync::Mutex;

pub use crate::parallel::map_concurrent;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{CoreError, Result};

/// A parsed `openai:BASE_URL#MODEL` spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub base_url: String,
    pub model: String,
}

impl EndpointSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: &str| {
            CoreError::Invalid(format!(
                "bad endpoint spec `{spec}`: {why}; write openai:BASE_URL#MODEL, e.g. openai:http://127.0.0.1:8000/v1#qwen2.5-7b"
            ))
        };
        let rest = spec
            .strip_prefix("openai:")
            .ok_or_else(|| bad("it must start with `openai:`"))?;
        let (base, model) = rest
            .rsplit_once('#')
            .ok_or_else(|| bad("the model name after `#` is missing"))?;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(bad("the base URL must start with http:// or https://"));
        }
        if model.is_empty() {
            return Err(bad("the model name after `#` is empty"));
        }
        Ok(Self {
            base_url: base.trim_end_matches('/').to_string(),
            model: model.to_string(),
        })
    }

    /// The spec in its written form.
    pub fn to_spec(&self) -> String {
        format!("openai:{}#{}", self.base_url, self.model)
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// How a client talks to its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Bearer token (from the environment: never stored in outputs).
    pub api_key: Option<String>,
    /// Retries after the first attempt for transient failures.
    pub max_retries: usize,
    /// First backoff; doubles on each retry.
    pub backoff: Duration,
    /// Per request, connection to last byte.
    pub timeout: Duration,
    /// 0 for no limit.
    pub requests_per_second: f64,
}

impl ClientOptions {
    /// Defaults with the API key read from the environment variable `api_key_env` (if set and
    /// not empty) and a rate limit (0 for none).
    pub fn from_env(api_key_env: &str, requests_per_second: f64) -> Self {
        Self {
            api_key: std::env::var(api_key_env).ok().filter(|k| !k.is_empty()),
            requests_per_second,
            ..Self::default()
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            api_key: None,
            max_retries: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(120),
            requests_per_second: 0.0,
        }
    }
}

/// A chat-completions client; share it across threads for concurrent requests.
pub struct ChatClient {
    spec: EndpointSpec,
    options: ClientOptions,
    agent: ureq::Agent,
    next_slot: Mutex<Instant>,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<CompletionChoice>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    message: ChatMessage,
}

impl ChatClient {
    pub fn new(spec: EndpointSpec, options: ClientOptions) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            spec,
            options,
            agent,
            next_slot: Mutex::new(Instant::now()),
        }
    }

    pub fn spec(&self) -> &EndpointSpec {
        &self.spec
    }

    /// Waits for this request's turn under the rate limit.
    fn pace(&self) {
        if self.options.requests_per_second <= 0.0 {
            return;
        }
        let gap = Duration::from_secs_f64(1.0 / self.options.requests_per_second);
        let wait = {
            let mut next = self.next_slot.lock().expect("rate limiter lock");
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + gap;
            slot - now
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// The assistant's reply to `messages` (`max_tokens`: `None` leaves it to the server).
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        temperature: f64,
        max_tokens: Option<usize>,
    ) -> Result<String> {
        let url = format!("{}/chat/completions", self.spec.base_url);
        let mut body = json!({
            "model": self.spec.model,
            "messages": messages,
            "temperature": temperature,
        });
        if let Some(m) = max_tokens {
            body["max_tokens"] = json!(m);
        }
        let mut last_error = String::new();
        for attempt in 0..=self.options.max_retries {
            if attempt > 0 {
                tracing::warn!(%url, attempt, error = %last_error, "retrying");
            }
            self.pace();
            let mut request = self.agent.post(&url);
            if let Some(key) = &self.options.api_key {
                request = request.header("Authorization", &format!("Bearer {key}"));
            }
            let mut backoff = self.options.backoff * 2u32.saturating_pow(attempt as u32);
            match request.send_json(&body) {
                Err(e) => last_error = format!("request failed: {e}"),
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let text = response
                        .body_mut()
                        .with_config()
                        .limit(64 << 20)
                        .read_to_string()
                        .unwrap_or_default();
                    if status == 200 {
                        let completion: Completion =
                            serde_json::from_str(&text).map_err(|e| CoreError::Endpoint {
                                url: url.clone(),
                                message: format!(
                                    "the reply is not a chat completion: {e}: {}",
                                    clip(&text)
                                ),
                            })?;
                        return completion
                            .choices
                            .into_iter()
                            .next()
                            .map(|c| c.message.content)
                            .ok_or_else(|| CoreError::Endpoint {
                                url: url.clone(),
                                message: "the reply has no choices".into(),
                            });
                    }
                    last_error = format!("HTTP {status}: {}", clip(&text));
                    if !(status == 429 || status >= 500) {
                        return Err(CoreError::Endpoint {
                            url,
                            message: format!(
                                "{last_error} (not retried: check the URL, the model name and the API key)"
                            ),
                        });
                    }
                    if let Some(after) = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                    {
                        backoff = backoff.max(Duration::from_secs_f64(after.min(600.0)));
                    }
                }
            }
            if attempt < self.options.max_retries {
                std::thread::sleep(backoff);
            }
        }
        Err(CoreError::Endpoint {
            url,
            message: format!(
                "gave up after {} attempts; last: {last_error}",
                self.options.max_retries + 1
            ),
        })
    }
}

fn clip(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    if t.len() < text.len() {
        format!("{t}…")
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_explain_mistakes() {
        let s = EndpointSpec::parse("openai:http://127.0.0.1:8000/v1/#m").unwrap();
        assert_eq!(
            (s.base_url.as_str(), s.model.as_str()),
            ("http://127.0.0.1:8000/v1", "m")
        );
        let s = EndpointSpec::parse("openai:https://api.example.com/v1#gpt-4o").unwrap();
        assert_eq!(
            (s.base_url.as_str(), s.model.as_str()),
            ("https://api.example.com/v1", "gpt-4o")
        );
        assert_eq!(s.to_spec(), "openai:https://api.example.com/v1#gpt-4o");
        for (spec, why) in [
            ("http://x/v1#m", "must start with `openai:`"),
            ("openai:http://x/v1", "after `#` is missing"),
            ("openai:x/v1#m", "http:// or https://"),
            ("openai:http://x/v1#", "is empty"),
        ] {
            let e = EndpointSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }
}
