//! What keeps the web pages a user opens from driving the server: a loopback server is
//! reachable from any page the browser shows, and a DNS-rebinding page reaches it under a name
//! of the attacker's.
//!
//! - **Host**: a request whose `Host` is not the bound address, `localhost`, a loopback address
//!   (on a loopback server), any IP address (on a server bound to all addresses) or a name given
//!   with `--allowed-host` is refused with 421 Misdirected Request: a rebinding page's requests
//!   carry its own name.
//! - **Origin**: a state-changing request (POST, PUT, PATCH, DELETE) that carries an `Origin`
//!   other than the server's own (same scheme, host and port as its `Host`) or one given with
//!   `--allowed-origin` is refused with 403. Browsers send `Origin` on every cross-origin POST,
//!   forms included; the OpenAI clients and curl send none and pass.
//! - **Content types**: the API takes JSON only; the types a page may send without a CORS
//!   preflight (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`) are
//!   refused with 415 on `/api` and `/v1`, whatever the route.
//!
//! CORS stays off: no `Access-Control-Allow-*` header is ever sent, so another origin's script
//! cannot read a response either.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The names and origins the server answers.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The address the server is bound to.
    pub bound: IpAddr,
    /// Host names besides the bound address and `localhost` (`--allowed-host`), lowercase.
    pub allowed_hosts: Vec<String>,
    /// Origins besides the server's own that may send state-changing requests
    /// (`--allowed-origin`, as `scheme://host[:port]`), lowercase.
    pub allowed_origins: Vec<String>,
}

impl Guard {
    /// A server on 127.0.0.1 that takes nothing more.
    #[cfg(test)]
    pub fn loopback() -> Self {
        Self::new(IpAddr::from([127, 0, 0, 1]), &[], &[])
    }

    pub fn new(bound: IpAddr, hosts: &[String], origins: &[String]) -> Self {
        Self {
            bound,
            allowed_hosts: hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            allowed_origins: origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a `Host` header value (`name[:port]`, `[v6][:port]`) names this server.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || self.allowed_hosts.contains(&name) {
            return true;
        }
        let ip: IpAddr = match name.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => ip,
            Err(_) => return false,
        };
        // A rebinding page needs a name of its own: an address in Host is never one. Still,
        // only addresses the server can be reached at are taken.
        ip == self.bound
            || self.bound.is_unspecified()
            || (self.bound.is_loopback() && ip.is_loopback())
    }

    /// Whether a state-changing request from `origin` is taken, given the request's `Host`.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.allowed_origins.contains(&origin) {
            return true;
        }
        // The server's own origin: http(s)://HOST, HOST as the request gave it.
        let Some(rest) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false; // `null` (sandboxed frames, file: pages) and other schemes
        };
        host.is_some_and(|h| h.trim().to_ascii_lowercase() == rest)
    }
}

/// The host part of a `Host` header value.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Content types a page may POST across origins without a CORS preflight.
const SIMPLE_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// The middleware: Host, then Origin, then content type (see the module's documentation).
pub async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let host = text(header::HOST);
    if let Some(h) = host
        && !guard.host_allowed(h)
    {
        tracing::warn!(
            host = h,
            "request for a host this server is not: refused (421)"
        );
        return ApiError(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server does not answer to the host {h:?}; it answers to localhost and the address it is bound to (start it with --allowed-host NAME to add a name)"
            ),
        )
        .into_response();
    }
    let changes = !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if changes
        && let Some(origin) = text(header::ORIGIN)
        && !guard.origin_allowed(origin, host)
    {
        tracing::warn!(
            origin,
            "state-changing request from another origin: refused (403)"
        );
        return ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "requests that change something are not taken from the origin {origin:?}, only from the server's own pages (start it with --allowed-origin {origin} to allow it)"
            ),
        )
        .into_response();
    }
    let path = req.uri().path();
    let api = path.starts_with("/api/") || path.starts_with("/v1/");
    if api
        && changes
        && let Some(kind) = text(header::CONTENT_TYPE)
    {
        let essence = kind
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if SIMPLE_TYPES.contains(&essence.as_str()) {
            return ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "the API takes JSON bodies (Content-Type: application/json), not {essence}"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let g = Guard::loopback();
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.:1",
            "127.0.0.1:8080",
            "127.0.0.2",
            "[::1]:8080",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let g = Guard::new("0.0.0.0".parse().unwrap(), &["Box.LAN".into()], &[]);
        assert!(g.host_allowed("10.0.0.1:8080") && g.host_allowed("box.lan:80"));
        assert!(!g.host_allowed("evil.example"));
        let g = Guard::new("192.168.1.5".parse().unwrap(), &[], &[]);
        assert!(g.host_allowed("192.168.1.5:8080") && !g.host_allowed("192.168.1.6"));
    }

    #[test]
    fn origins() {
        let g = Guard::new(
            IpAddr::from([127, 0, 0, 1]),
            &[],
            &["https://app.example/".into()],
        );
        let host = Some("127.0.0.1:8080");
        assert!(g.origin_allowed("http://127.0.0.1:8080", host));
        assert!(!g.origin_allowed("http://127.0.0.1:9999", host));
        assert!(!g.origin_allowed("http://evil.example", host));
        assert!(!g.origin_allowed("null", host));
        assert!(!g.origin_allowed("http://127.0.0.1:8080", None));
        assert!(g.origin_allowed("https://app.example", host));
    }
}
