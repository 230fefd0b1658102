//! A load test of `clo serve` on loopback: 32 chats at once against the built-in toy model, a
//! few with prompts beyond the model's context, a few streaming clients that hang up after the
//! first chunk. Every well-formed request is answered, the oversized ones get 400, the server
//! stays up with bounded memory, and no generation runs on 1 s after its client left.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
fn request(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn health(port: u16) -> serde_json::Value {
    let (status, body) = request(port, "GET", "/api/health", "").expect("the server answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Peak resident memory of a process, in bytes (Linux).
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn start(work: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args([
            "serve",
            "--toy",
            "--workdir",
            work.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--web",
            "/nonexistent",
            "--max-generations",
            "4",
            "--generation-queue",
            "64",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let started = Instant::now();
    while request(port, "GET", "/api/health", "").is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "clo serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[test]
fn thirty_two_concurrent_chats_with_oversized_prompts_and_hang_ups() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir.path().join("work"));
    let port = server.port;
    let chat = |content: &str, max_tokens: usize, stream: bool| {
        serde_json::json!({"model": "toy", "stream": stream, "temperature": 0.8, "seed": 1,
                           "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]})
        .to_string()
    };
    // Warm up: the model is loaded once, before the crowd arrives.
    let (status, body) = request(
        port,
        "POST",
        "/v1/chat/completions",
        &chat("Hello", 4, false),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let oversized = "What pet does Nia have? ".repeat(2000);
    let mut threads = Vec::new();
    for i in 0..32 {
        let normal = chat(&format!("What pet does person {i} have?"), 24, false);
        let big = chat(&oversized, 24, false);
        let streamed = chat("Tell me a long story.", 4096, true);
        threads.push(std::thread::spawn(move || -> (&'static str, u16, Instant) {
            match i % 8 {
                // 4 prompts beyond the context.
                3 => {
                    let (status, _) = request(port, "POST", "/v1/chat/completions", &big).unwrap();
                    ("oversized", status, Instant::now())
                }
                // 4 streaming clients that hang up after the first event.
                5 => {
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    write!(
                        stream,
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{streamed}",
                        streamed.len()
                    )
                    .unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    let mut status = 0;
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        if status == 0 {
                            status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                        }
                        if line.starts_with("data:") {
                            break;
                        }
                        line.clear();
                    }
                    drop(reader);
                    ("hung up", status, Instant::now())
                }
                _ => {
                    let (status, body) =
                        request(port, "POST", "/v1/chat/completions", &normal).unwrap();
                    if status == 200 {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        assert!(v["choices"][0]["message"]["content"].is_string(), "{body}");
                    }
                    ("normal", status, Instant::now())
                }
            }
        }));
    }
    let results: Vec<(&str, u16, Instant)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let count = |kind: &str, status: u16| {
        results
            .iter()
            .filter(|r| r.0 == kind && r.1 == status)
            .count()
    };
    assert_eq!(
        count("normal", 200),
        24,
        "{:?}",
        results.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>()
    );
    assert_eq!(count("oversized", 400), 4);
    assert_eq!(count("hung up", 200), 4);

    // No generation still running 1 s after the last client left.
    let last_left = results.iter().map(|r| r.2).max().unwrap();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(last_left.elapsed()));
    let h = health(port);
    assert_eq!(h["generations_running"], 0, "{h}");
    assert_eq!(h["generations_waiting"], 0, "{h}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
    if let Some(rss) = peak_rss(server.child.id()) {
        assert!(rss < 2 << 30, "peak RSS {} MiB", rss >> 20);
        eprintln!("clo serve peak RSS under load: {} MiB", rss >> 20);
    }
}
