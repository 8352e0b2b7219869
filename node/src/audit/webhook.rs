//! A minimal HTTP/1.1 client for the alarm webhook and for peer auditors' checkpoints:
//! `http://` URLs only (put a TLS relay in front for `https`), bounded in time and size.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read, in bytes.
const MAX_ANSWER: usize = 1 << 20;

/// The host:port and path of an `http://` URL (port 80 if none is given).
fn split_url(url: &str) -> Result<(String, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let host = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path))
}

/// Checks that `url` is one this client can use.
pub fn check_url(url: &str) -> Result<(), String> {
    split_url(url).map(|_| ())
}

/// One request; returns the status code and the body.
async fn request(
    url: &str,
    method: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let (host, path) = split_url(url)?;
    let exchange = async {
        let mut sock = TcpStream::connect(host.as_str())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: pyralog-auditor\r\nconnection: close\r\n"
        );
        if method == "POST" {
            req.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        sock.write_all(&bytes)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        read_answer(url, &mut sock).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {} s", timeout.as_secs()))?
}

/// Reads an answer: the head, then `content-length` bytes of body (or up to the close
/// without one), at most [`MAX_ANSWER`] bytes in all.
async fn read_answer(url: &str, sock: &mut TcpStream) -> Result<(u16, Vec<u8>), String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| answer.len() >= end + 4 + n) {
                return parse_answer(url, &answer);
            }
        }
        if answer.len() > MAX_ANSWER {
            return Err(format!("{url}: answer over {MAX_ANSWER} bytes"));
        }
        let n = sock
            .read(&mut buf)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if n == 0 {
            return parse_answer(url, &answer);
        }
        answer.extend_from_slice(&buf[..n]);
    }
}

fn parse_answer(url: &str, answer: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{url}: no HTTP status"))?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let body = &answer[split + 4..];
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(body.len());
    Ok((code, body[..length.min(body.len())].to_vec()))
}

/// POSTs `value` as JSON, up to `tries` times (1 s, 2 s, ... apart) until a 2xx answer.
pub async fn post_json<T: serde::Serialize>(
    url: &str,
    value: &T,
    timeout: Duration,
    tries: u32,
) -> Result<(), String> {
    let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let mut last = String::new();
    for attempt in 0..tries.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
        match request(url, "POST", &body, timeout).await {
            Ok((code, _)) if (200..300).contains(&code) => return Ok(()),
            Ok((code, _)) => last = format!("{url}: HTTP status {code}"),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// GETs `url`; the body of a 2xx answer.
pub async fn get(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    match request(url, "GET", &[], timeout).await? {
        (code, body) if (200..300).contains(&code) => Ok(body),
        (code, body) => Err(format!(
            "{url}: HTTP status {code}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn urls_and_answers_parse() {
        assert_eq!(
            split_url("http://127.0.0.1:9/hook").unwrap(),
            ("127.0.0.1:9".to_string(), "/hook")
        );
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1".to_string(), "/"));
        assert_eq!(split_url("http://h/x").unwrap(), ("h:80".to_string(), "/x"));
        assert!(split_url("https://h/x").is_err());
        assert!(split_url("http:///x").is_err());
        assert_eq!(
            parse_answer("u", b"HTTP/1.1 204 No Content\r\n\r\n").unwrap(),
            (204, Vec::new())
        );
        assert_eq!(
            parse_answer("u", b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nbody").unwrap(),
            (200, b"body".to_vec())
        );
        assert_eq!(
            parse_answer("u", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbody").unwrap(),
            (200, b"bo".to_vec())
        );
        assert!(parse_answer("u", b"garbage").is_err());
    }
}
