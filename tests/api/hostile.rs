//! Clients that stall: request heads that never end, bodies that never arrive, idle
//! connections, more connections than the cap, and too few file descriptors. Every wait here
//! is a generous upper bound on something that must happen, never a measurement.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use palisade::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_with, start_with};

/// Longest wait for something that should happen within a few seconds.
const EVENTUALLY: Duration = Duration::from_secs(30);

fn short_timeouts(config: &mut Config) {
    config.server.header_read_timeout_secs = 1;
    config.server.idle_timeout_secs = 2;
    config.server.body_read_timeout_secs = 1;
}

fn addr(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

async fn connect(app_base: &str) -> TcpStream {
    TcpStream::connect(addr(app_base)).await.unwrap()
}

/// Reads until the server closes the connection and returns what it sent; panics if it is
/// still open after `EVENTUALLY`.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(EVENTUALLY, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&received).into_owned()
}

/// One `GET /healthz` on a fresh connection; the status line's code.
async fn healthz(base: &str) -> String {
    let mut stream = connect(base).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut stream).await;
    answer.split_whitespace().nth(1).unwrap_or("").to_owned()
}

/// A connection that sent part of a request head and nothing more.
async fn stalled_head(base: &str) -> TcpStream {
    let mut stream = connect(base).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn request_heads_that_never_end_are_cut_off() {
    let app = spawn_with(
        |c| {
            short_timeouts(c);
            c.server.max_connections = 20;
        },
        None,
    )
    .await;
    // Twice the cap: the first twenty hold every slot, the rest wait to be accepted.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        stalled.push(stalled_head(&app.base).await);
    }
    assert_eq!(healthz(&app.base).await, "200");
    for stream in &mut stalled {
        // Closed without an answer: the head never ended.
        until_closed(stream).await;
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let app = spawn_with(short_timeouts, None).await;
    let mut stream = connect(&app.base).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn bodies_that_never_arrive_get_408() {
    let app = spawn_with(short_timeouts, None).await;
    let mut stream = connect(&app.base).await;
    let head = format!(
        "POST /v1/signal HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"type\":",
        app.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"RequestTimeout""#), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let app = spawn_with(|c| c.server.max_connections = 3, None).await;
    // Accepted in the order they connected: these three take every slot.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&app.base).await);
    }
    let mut fourth = connect(&app.base).await;
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a connection beyond the cap was served while the cap was reached"
    );
    held.pop();
    let answer = until_closed(&mut fourth).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn sigterm_does_not_wait_for_stalled_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, key) = start_with(dir.path(), true, |c| {
        c.env("PALISADE_SERVER__SHUTDOWN_TIMEOUT_SECS", "1")
            .env("PALISADE_SERVER__BODY_READ_TIMEOUT_SECS", "600")
            .env("PALISADE_SERVER__IDLE_TIMEOUT_SECS", "600");
    });
    let key = key.unwrap();
    // A request in flight whose body never comes.
    let mut stream = connect(&server.base).await;
    let head = format!(
        "POST /v1/signal HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 1000\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Past the deadline, the server kept waiting for a client that never finished its request.
    let (status, logs) = server.terminate(EVENTUALLY).await;
    assert!(status.success(), "{status}: {logs}");
}

/// Runs the binary with `soft` and `hard` limits on open files.
fn with_open_files(soft: u64, hard: u64) -> impl FnOnce(&mut std::process::Command) {
    move |command| unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn soft_open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_server_raises_its_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_with(dir.path(), true, with_open_files(256, 4096));
    assert_eq!(soft_open_files_limit(server.child.id()), 4096);
}

#[tokio::test]
async fn running_out_of_descriptors_stalls_no_one_for_long() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_with(dir.path(), true, |c| {
        with_open_files(64, 64)(c);
        c.env("PALISADE_SERVER__HEADER_READ_TIMEOUT_SECS", "1");
    });
    // More stalled clients than the process has descriptors.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        stalled.push(stalled_head(&server.base).await);
    }
    assert_eq!(
        healthz(&server.base).await,
        "200",
        "{}",
        server.logs.lock().unwrap()
    );
}
