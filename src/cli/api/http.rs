//! Just enough HTTP/1.1 for Firecracker's API shapes over a Unix socket: one request at a
//! time, its head parsed by httparse, its body by Content-Length (bounded), and answers with a
//! status, and a JSON body or none. Firecracker's clients (its SDKs, `curl --unix-socket`)
//! speak this.

use std::io::{Read, Write};

/// The longest request head ember reads.
const MAX_HEAD: usize = 8 << 10;
/// The longest body: a snapshot request is two paths.
const MAX_BODY: usize = 64 << 10;

/// A request, read whole.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// GET, PUT, PATCH, ...
    pub method: String,
    /// The path, without a query.
    pub path: String,
    /// The body (empty without Content-Length).
    pub body: Vec<u8>,
    /// Whether the client asked to close after the answer.
    pub close: bool,
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The client closed the connection (between requests: not an error).
    Closed,
    /// Not HTTP, or too big: answer 400 with this and close.
    Bad(String),
}

/// Reads one request from `conn`; bytes already read past the last one wait in `carry`.
pub fn read_request(conn: &mut impl Read, carry: &mut Vec<u8>) -> Result<Request, ReadError> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(carry) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or_default().to_string();
                let path = req
                    .path
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                };
                let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let len = match header("content-length") {
                    Some(v) => v.parse::<usize>().map_err(|_| {
                        ReadError::Bad(format!("Content-Length {v:?} is no number"))
                    })?,
                    None => 0,
                };
                if len > MAX_BODY {
                    return Err(ReadError::Bad(format!(
                        "a body of {len} bytes; ember takes {MAX_BODY} at most"
                    )));
                }
                while carry.len() < head_len + len {
                    let n = conn.read(&mut chunk).map_err(|_| ReadError::Closed)?;
                    if n == 0 {
                        return Err(ReadError::Bad("the body ended early".into()));
                    }
                    carry.extend_from_slice(&chunk[..n]);
                }
                let body = carry[head_len..head_len + len].to_vec();
                carry.drain(..head_len + len);
                return Ok(Request {
                    method,
                    path,
                    body,
                    close,
                });
            }
            Ok(httparse::Status::Partial) if carry.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(ReadError::Bad(format!(
                    "a request head longer than {MAX_HEAD} bytes"
                )));
            }
            Err(e) => return Err(ReadError::Bad(format!("not an HTTP/1.1 request ({e})"))),
        }
        let n = conn.read(&mut chunk).map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(if carry.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Bad("the request ended early".into())
            });
        }
        carry.extend_from_slice(&chunk[..n]);
    }
}

/// Writes an answer: `status` and, if given, a JSON body.
pub fn write_response(
    conn: &mut impl Write,
    status: u16,
    body: Option<&serde_json::Value>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nServer: ember\r\n");
    if status != 204 {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    conn.write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Vec<Result<Request, ReadError>> {
        let mut conn = input;
        let mut carry = Vec::new();
        let mut out = Vec::new();
        loop {
            let r = read_request(&mut conn, &mut carry);
            let end = r.is_err();
            out.push(r);
            if end {
                return out;
            }
        }
    }

    #[test]
    fn requests_back_to_back_with_and_without_bodies() {
        let got = read_all(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPATCH /vm?x=1 HTTP/1.1\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{\"state\": \"Paused\"}\n",
        );
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().path, "/");
        let patch = got[1].as_ref().unwrap();
        assert_eq!(
            (patch.method.as_str(), patch.path.as_str()),
            ("PATCH", "/vm")
        );
        assert_eq!(patch.body, b"{\"state\": \"Paused\"}\n");
        assert!(patch.close);
        assert_eq!(got[2], Err(ReadError::Closed));
    }

    #[test]
    fn garbage_short_bodies_and_huge_ones_are_bad() {
        assert!(matches!(
            read_all(b"\x00\x01 nonsense\r\n\r\n")[0],
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            read_all(b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")[0],
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            read_all(b"PUT /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")[0],
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            read_all(&[b'a'; MAX_HEAD + 10])[0],
            Err(ReadError::Bad(_))
        ));
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_response(&mut out, 204, None).unwrap();
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nServer: ember\r\n\r\n");
        let mut out = Vec::new();
        write_response(
            &mut out,
            400,
            Some(&serde_json::json!({"fault_message": "no"})),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"fault_message\":\"no\"}"));
    }
}
