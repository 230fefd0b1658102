//! An incremental parser of Server-Sent Events (the WHATWG `text/event-stream` format), fed with
//! the byte chunks of a `fetch` body. The UI reads SSE through `fetch` rather than
//! `EventSource`, so that POST bodies (chat) and the bearer token header work.

/// One event: its `event:` name (`message` when none was given) and its `data:` lines joined
/// with newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended (a chunk may end inside a line, even inside a UTF-8
    /// character).
    pending: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=end).collect();
            let mut line = String::from_utf8_lossy(&raw[..raw.len() - 1]).into_owned();
            if line.ends_with('\r') {
                line.pop();
            }
            self.line(&line, &mut out);
        }
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            // A blank line dispatches the event; an event without data is dropped.
            let event = std::mem::take(&mut self.event);
            if !self.data.is_empty() {
                out.push(SseEvent {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    },
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            return;
        }
        if line.starts_with(':') {
            return; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => self.data.push(value.to_string()),
            _ => {} // id, retry: not used by clo
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_split_across_chunks_and_characters_are_whole() {
        let text = "event: metric\ndata: {\"step\":0}\n\n: keep-alive\n\ndata: héllo\r\ndata: two\r\n\r\nevent: end\ndata: \"finished\"\n\n";
        let bytes = text.as_bytes();
        // Every split point, including inside the two-byte 'é'.
        for cut in 0..bytes.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&bytes[..cut]);
            got.extend(p.push(&bytes[cut..]));
            assert_eq!(
                got,
                vec![
                    ev("metric", "{\"step\":0}"),
                    ev("message", "héllo\ntwo"),
                    ev("end", "\"finished\""),
                ],
                "cut at byte {cut}"
            );
        }
    }

    #[test]
    fn an_unfinished_event_waits_and_a_dataless_one_is_dropped() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: lonely\n\n").is_empty());
        assert!(p.push(b"data:x").is_empty());
        assert!(p.push(b"\n").is_empty());
        assert_eq!(p.push(b"\n"), vec![ev("message", "x")]);
    }
}

/// The text an OpenAI `chat.completion.chunk` (one `data:` of a streamed chat) adds; `None`
/// for the closing `[DONE]`.
pub fn chat_delta(data: &str) -> Result<Option<String>, String> {
    if data.trim() == "[DONE]" {
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("a chat chunk the UI cannot read: {e}"))?;
    if let Some(err) = v.get("error") {
        return Err(err["message"]
            .as_str()
            .unwrap_or("the server failed")
            .into());
    }
    Ok(Some(
        v["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

#[cfg(test)]
mod chat_tests {
    use super::chat_delta;

    #[test]
    fn chat_chunks_give_their_text_and_done_ends() {
        let chunk = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Ana"},"finish_reason":null}]}"#;
        assert_eq!(chat_delta(chunk).unwrap().as_deref(), Some("Ana"));
        let last = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(chat_delta(last).unwrap().as_deref(), Some(""));
        assert_eq!(chat_delta("[DONE]").unwrap(), None);
        assert!(chat_delta("{oops").is_err());
    }
}
