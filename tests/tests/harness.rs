//! Checks of the test programs themselves (no agent involved): the nginx
//! configuration, python's http.server and the raw socket helpers behave
//! the way the agent tests rely on.

use std::fs;

use tracer_tests::*;

#[test]
fn nginx_serves_files_errors_and_chunked_gzip() {
    let _serial = serial();
    let root = WebRoot::new();
    let port = free_port();
    let nginx = Nginx::start(port, root.path());
    assert_eq!(nginx.worker_pids().len(), 1, "exactly one nginx worker");
    assert_eq!(proc_comm(nginx.worker_pids()[0]).as_deref(), Some("nginx"));

    let run = curl(&["-o", "/dev/null", "-w", "%{http_code} %{size_download}\n", &nginx.url("/big.bin")]);
    assert_eq!(run.stdout().trim(), format!("200 {BIG_FILE_SIZE}"));

    let run = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        &nginx.url(NGINX_MISSING_PATH),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        &nginx.url(NGINX_ERROR_PATH),
    ]);
    assert_eq!(run.stdout(), "404\n500\n");

    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    curl(&[
        "-H",
        "Accept-Encoding: gzip",
        "-D",
        headers.to_str().unwrap(),
        "-o",
        body.to_str().unwrap(),
        &nginx.url(NGINX_CHUNKED_PATH),
    ]);
    let headers = fs::read_to_string(headers).unwrap().to_ascii_lowercase();
    assert!(headers.contains("transfer-encoding: chunked"), "{headers}");
    assert!(headers.contains("content-encoding: gzip"), "{headers}");
    let body = fs::read(body).unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip magic");
    assert!((body.len() as u64) < root.file_size(NGINX_CHUNKED_PATH));

    // The same through the raw helper: pipelined requests, chunked decoding.
    let mut req = String::new();
    for i in 0..3 {
        req.push_str(&get_request(&numbered_path(i), "127.0.0.1", false));
    }
    req.push_str(&format!(
        "GET {NGINX_CHUNKED_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    ));
    let responses = parse_responses(&send_raw(port, req.as_bytes()));
    assert_eq!(responses.len(), 4);
    for (i, r) in responses[..3].iter().enumerate() {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, numbered_body(i).as_bytes());
    }
    assert!(responses[3].chunked);
    assert_eq!(responses[3].body, body, "same gzip body as curl received");
}

#[test]
fn python_http_server_answers_http_1_0() {
    let _serial = serial();
    let root = WebRoot::new();
    let port = free_port();
    let server = PyHttpServer::start(port, root.path());
    assert_eq!(proc_comm(server.pid()).as_deref(), Some("python3"));
    let w = "%{http_code} %{num_connects} %{size_download}\n";
    let run = curl(&[
        "-o",
        "/dev/null",
        "-w",
        w,
        &server.url("/hello.txt"),
        "-o",
        "/dev/null",
        "-w",
        w,
        &server.url("/hello.txt"),
    ]);
    // One new connection per request: the server closes after each.
    let expected = format!("200 1 {}\n", HELLO_BODY.len());
    assert_eq!(run.stdout(), format!("{expected}{expected}"));
    // The status line says HTTP/1.0 even for an HTTP/1.1 request.
    let raw = send_raw(port, get_request("/hello.txt", "127.0.0.1", true).as_bytes());
    let responses = parse_responses(&raw);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].version, "HTTP/1.0");
    assert_eq!(responses[0].body, HELLO_BODY.as_bytes());
}

#[test]
fn echo_server_round_trips_random_bytes() {
    let echo = EchoServer::start();
    let payload = random_bytes(100_000);
    assert_eq!(echo_roundtrip(echo.port(), &payload, 7_000), payload);
    assert_eq!(echo.echoed_bytes(), payload.len() as u64);
}

#[test]
fn wrk_is_available() {
    let _serial = serial();
    let root = WebRoot::new();
    let port = free_port();
    let nginx = Nginx::start(port, root.path());
    let run = wrk(&["-t1", "-c2", "-d1s", &nginx.url("/hello.txt")]);
    assert!(run.requests > 0, "{}", run.stdout);
    assert_eq!(run.non_2xx, 0, "{}", run.stdout);
}
