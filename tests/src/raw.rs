//! Raw TCP helpers: writing hand-made HTTP/1.x bytes (for pipelining) and
//! parsing the responses, plus a tiny echo server for non-HTTP traffic.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// "HTTP/1.1" or "HTTP/1.0".
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body after removing any chunked framing.
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Builds a minimal GET request.
pub fn get_request(path: &str, host: &str, close: bool) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tracer-tests/raw\r\nAccept: */*\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

/// Writes `bytes` in a single `write` call on a new connection to
/// `127.0.0.1:port`, half-closes nothing, and reads until the peer closes
/// (the last request should carry `Connection: close`).
pub fn send_raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let n = stream.write(bytes).expect("writing request bytes");
    if n < bytes.len() {
        // A single write normally takes everything on loopback; finish the
        // rest if the kernel accepted only part of it.
        stream.write_all(&bytes[n..]).expect("writing request bytes");
    }
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap_or_else(|e| panic!("reading responses from 127.0.0.1:{port}: {e}"));
    out
}

/// Parses back-to-back HTTP/1.x responses (Content-Length, chunked, or
/// read-until-close bodies). Responses to HEAD requests are not supported.
pub fn parse_responses(mut data: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let head_end = find(data, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("truncated response head: {:?}", String::from_utf8_lossy(data)));
        let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
        data = &data[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 =
            parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let chunked = get("transfer-encoding").map(|v| v.to_ascii_lowercase().contains("chunked")).unwrap_or(false);
        let mut body = Vec::new();
        if chunked {
            loop {
                let line_end = find(data, b"\r\n").expect("truncated chunk size line");
                let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
                let size_text = size_text.split(';').next().unwrap().trim().to_string();
                let size =
                    usize::from_str_radix(&size_text, 16).unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
                data = &data[line_end + 2..];
                if size == 0 {
                    // Trailers, then an empty line.
                    let end = find(data, b"\r\n").expect("truncated chunked trailer");
                    if end == 0 {
                        data = &data[2..];
                    } else {
                        let end = find(data, b"\r\n\r\n").expect("truncated chunked trailer");
                        data = &data[end + 4..];
                    }
                    break;
                }
                body.extend_from_slice(&data[..size]);
                data = &data[size + 2..];
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().expect("bad content-length");
            body.extend_from_slice(&data[..len]);
            data = &data[len..];
        } else if status == 204 || status == 304 || (100..200).contains(&status) {
            // No body.
        } else {
            body.extend_from_slice(data);
            data = &[];
        }
        out.push(RawResponse { version, status, headers, body, chunked });
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A TCP echo server on `127.0.0.1:<port>`, one thread per connection.
pub struct EchoServer {
    port: u16,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding echo server");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let echoed = echoed.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let echoed = echoed.clone();
                            stream.set_nonblocking(false).ok();
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 16 * 1024];
                                loop {
                                    match stream.read(&mut buf) {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => {
                                            echoed.fetch_add(n as u64, Ordering::Relaxed);
                                            if stream.write_all(&buf[..n]).is_err() {
                                                break;
                                            }
                                        }
                                    }
                                }
                                let _ = stream.shutdown(Shutdown::Both);
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        EchoServer { port, stop, echoed, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Total bytes received (and echoed back) so far.
    pub fn echoed_bytes(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `payload` to an echo server in `chunk`-sized writes and reads the
/// same number of bytes back; returns what was read.
pub fn echo_roundtrip(port: u16, payload: &[u8], chunk: usize) -> Vec<u8> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connecting to echo server on {port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_nodelay(true).ok();
    let mut received = Vec::with_capacity(payload.len());
    let mut buf = vec![0u8; 64 * 1024];
    for piece in payload.chunks(chunk.max(1)) {
        stream.write_all(piece).expect("writing to echo server");
        let want = received.len() + piece.len();
        while received.len() < want {
            let n = stream.read(&mut buf).expect("reading from echo server");
            assert!(n > 0, "echo server closed early");
            received.extend_from_slice(&buf[..n]);
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    received
}
