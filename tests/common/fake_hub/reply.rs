//! The fake Hub's answers as plain data before they are sent, and the record of an exchange
//! (the transcript `scripts/check_fake_hub.py` takes from the official client's session and
//! `tests/hub.rs` replays).

use base64::Engine;
use serde_json::{Value, json};
use tiny_http::Header;

pub fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header")
}

/// An answer before it is sent: kept as plain data so it can be recorded.
pub struct Reply {
    status: u16,
    headers: Vec<Header>,
    data: Vec<u8>,
}

impl Reply {
    pub fn from_data(data: Vec<u8>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            data,
        }
    }

    pub fn with_status_code(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn with_header(mut self, h: Header) -> Self {
        self.headers.push(h);
        self
    }

    pub fn into_response(self) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let mut r = tiny_http::Response::from_data(self.data).with_status_code(self.status);
        for h in self.headers {
            r = r.with_header(h);
        }
        r
    }
}

/// The headers a client reads the protocol from (others, like Date or Server, vary).
const RECORDED_HEADERS: [&str; 9] = [
    "Content-Type",
    "Content-Range",
    "ETag",
    "Location",
    "X-Repo-Commit",
    "X-Linked-Etag",
    "X-Linked-Size",
    "X-Error-Code",
    "X-Error-Message",
];

/// One exchange as JSON: method, path with query, the request's recorded headers and body,
/// the status, recorded headers and body of the answer. Bodies are text when they are UTF-8,
/// else base64; the servers' own addresses become `{API}` and `{CDN}` so a transcript replays
/// against another instance.
pub fn exchange_record(
    method: &str,
    url: &str,
    req_headers: &[(String, String)],
    body: &[u8],
    reply: &Reply,
    addrs: (&str, &str),
) -> Value {
    let norm = |t: &str| t.replace(addrs.0, "{API}").replace(addrs.1, "{CDN}");
    let body_json = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(t) => json!({"text": norm(t)}),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)}),
    };
    let keep = |name: &str| {
        RECORDED_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    };
    let headers = |hs: Vec<(String, String)>| -> Value {
        let mut hs: Vec<(String, String)> = hs
            .into_iter()
            .filter(|(k, _)| {
                keep(k)
                    || ["Range", "Authorization"]
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(k))
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), norm(&v)))
            .collect();
        hs.sort();
        hs.into_iter().map(|(k, v)| json!([k, v])).collect()
    };
    json!({
        "method": method,
        "url": norm(url),
        "request_headers": headers(req_headers.to_vec()),
        "request_body": body_json(body),
        "status": reply.status,
        "response_headers": headers(
            reply
                .headers
                .iter()
                .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
                .collect()
        ),
        "response_body": body_json(&reply.data),
    })
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// 200 with the body, or 206 for `Range: bytes=a-b`.
pub fn serve_bytes(
    data: &[u8],
    range: Option<&str>,
    headers: &[(&str, String)],
    head: bool,
) -> Reply {
    let len = data.len();
    let (status, start, end) = match range.and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                b.parse().unwrap_or(len.saturating_sub(1))
            };
            (206, a.min(len), (b + 1).min(len))
        }
        None => (200, 0, len),
    };
    // tiny_http leaves the body out of HEAD answers but keeps its Content-Length.
    let _ = head;
    let mut resp = Reply::from_data(data[start..end].to_vec()).with_status_code(status);
    if status == 206 {
        resp = resp.with_header(header(
            "Content-Range",
            &format!("bytes {start}-{}/{len}", end.saturating_sub(1)),
        ));
    }
    for (k, v) in headers {
        resp = resp.with_header(header(k, v));
    }
    resp
}
