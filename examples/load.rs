//! Load generator for a running Palisade server.
//!
//! ```sh
//! cargo run --release --example load -- ingest --url http://127.0.0.1:8080 --key "$KEY" \
//!     --clients 4 --batch 1000 --seconds 20
//! ```
//!
//! `ingest` sends batches of block events for distinct /32 addresses from `--clients` concurrent
//! connections and counts events acknowledged with 200 (committed before the answer).
//!
//! `propagate` measures how long a write acknowledged by one node takes to be enforced by
//! another: it blocks a fresh address on `--write`, then polls `--read` until its `/v1/check`
//! says blocked, `--count` times, and prints the latencies' percentiles.
//!
//! `hostile` holds connections the way an attacker without a key would: `--idle` keep-alive
//! connections that made one request and then say nothing, and `--half-open` ones that send
//! part of a request head and stop. Whatever the server closes is opened again at once, so the
//! pressure stays for `--seconds`; it prints how many it held and how often it reconnected.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// POST /v1/signal batches.
    Ingest {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "PALISADE_KEY")]
        key: String,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// First address of the range the events block.
        #[arg(long, default_value = "11.0.0.0")]
        base: Ipv4Addr,
        /// `spread`: addresses scattered over 11.0.0.0-126.255.255.255 (as attack sources are);
        /// `sequential`: consecutive addresses from `--base` (a dense blocklist in few /16s).
        #[arg(long, default_value = "spread")]
        pattern: Pattern,
    },
    /// Time from a write's acknowledgement on one node to its enforcement on another.
    Propagate {
        /// The node written to.
        #[arg(long)]
        write: String,
        /// The node read from.
        #[arg(long)]
        read: String,
        #[arg(long, env = "PALISADE_KEY")]
        key: String,
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// Hold idle and half-open connections against a server, reopening what it closes.
    Hostile {
        /// host:port
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        #[arg(long, default_value_t = 1000)]
        idle: usize,
        #[arg(long, default_value_t = 200)]
        half_open: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

/// Keeps one connection of the given kind open until `deadline`, reopening it whenever the
/// server closes it; returns how many times it connected.
async fn hold(addr: std::net::SocketAddr, half_open: bool, deadline: Instant) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut connects = 0;
    while Instant::now() < deadline {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        connects += 1;
        let opening: &[u8] = if half_open {
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        } else {
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        };
        if stream.write_all(opening).await.is_err() {
            continue;
        }
        // Read whatever comes (the one answer, for idle ones) until the server closes.
        let mut buf = [0u8; 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, async {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
    connects
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Pattern {
    Spread,
    Sequential,
}

/// A bijection on u32 (multiply by an odd constant, xor-shift), so spread addresses repeat
/// only when the counter does.
fn scatter(n: u32) -> u32 {
    let x = n.wrapping_mul(0x9E37_79B1);
    x ^ (x >> 15)
}

fn address(pattern: Pattern, base: u32, n: u32) -> Ipv4Addr {
    match pattern {
        Pattern::Sequential => Ipv4Addr::from(base.wrapping_add(n)),
        // 11.0.0.0 .. 126.255.255.255: public-looking, never loopback or multicast.
        Pattern::Spread => Ipv4Addr::from((11u32 << 24) + scatter(n) % (116u32 << 24)),
    }
}

fn batch_body(pattern: Pattern, base: u32, first: u32, count: usize) -> String {
    let mut body = String::with_capacity(count * 130);
    body.push('[');
    for i in 0..count {
        if i > 0 {
            body.push(',');
        }
        let ip = address(pattern, base, first + i as u32);
        body.push_str(&format!(
            r#"{{"type":"access_rules","action":"block","ip":"{ip}","expiration":3600,"description":"load test","name":"load"}}"#
        ));
    }
    body.push(']');
    body
}

#[tokio::main]
async fn main() {
    match Cli::parse().mode {
        Mode::Propagate {
            write,
            read,
            key,
            count,
        } => {
            let http = reqwest::Client::new();
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count as u32 {
                // 100.0.0.0/8 and up: away from what `ingest` writes.
                let ip = Ipv4Addr::from((100u32 << 24) + (std::process::id() << 12) + i);
                let event = format!(r#"[{{"type":"access_rules","action":"block","ip":"{ip}"}}]"#);
                let answer = http
                    .post(format!("{write}/v1/signal"))
                    .bearer_auth(&key)
                    .body(event)
                    .send()
                    .await
                    .expect("write");
                assert!(
                    answer.status().is_success(),
                    "write answered {}",
                    answer.status()
                );
                let acknowledged = Instant::now();
                loop {
                    let check: serde_json::Value = http
                        .get(format!("{read}/v1/check?ip={ip}"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .expect("read")
                        .json()
                        .await
                        .expect("a check answer");
                    if check["blocked"] == true {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                latencies.push(acknowledged.elapsed());
            }
            latencies.sort();
            let ms = |p: f64| {
                latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
                    .as_secs_f64()
                    * 1000.0
            };
            println!(
                "propagate: {count} writes; from acknowledgement on one node to enforcement on the other: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(1.0)
            );
        }
        Mode::Hostile {
            addr,
            idle,
            half_open,
            seconds,
        } => {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let tasks: Vec<_> = (0..idle + half_open)
                .map(|i| tokio::spawn(hold(addr, i >= idle, deadline)))
                .collect();
            let mut connects = 0;
            for task in tasks {
                connects += task.await.expect("connection task");
            }
            println!(
                "hostile: held {idle} idle and {half_open} half-open connections for {seconds} s; {connects} connects in all"
            );
        }
        Mode::Ingest {
            url,
            key,
            clients,
            batch,
            seconds,
            base,
            pattern,
        } => {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for client in 0..clients {
                let url = format!("{url}/v1/signal");
                let key = key.clone();
                // Each client owns a disjoint block of counters.
                let base = u32::from(base);
                let mut next = (client as u32) * (1 << 26);
                tasks.push(tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut committed = 0usize;
                    let mut failed = 0usize;
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let body = batch_body(pattern, base, next, batch);
                        next += batch as u32;
                        let sent = Instant::now();
                        let response = http
                            .post(&url)
                            .bearer_auth(&key)
                            .header("Content-Type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        match response {
                            Ok(r) if r.status() == reqwest::StatusCode::OK => {
                                let _ = r.bytes().await;
                                committed += batch;
                                latencies.push(sent.elapsed());
                            }
                            Ok(r) => {
                                failed += 1;
                                eprintln!(
                                    "status {}: {}",
                                    r.status(),
                                    r.text().await.unwrap_or_default()
                                );
                            }
                            Err(e) => {
                                failed += 1;
                                eprintln!("request failed: {e}");
                            }
                        }
                    }
                    (committed, failed, latencies)
                }));
            }
            let mut committed = 0;
            let mut failed = 0;
            let mut latencies = Vec::new();
            for task in tasks {
                let (c, f, l) = task.await.expect("client task");
                committed += c;
                failed += f;
                latencies.extend(l);
            }
            let elapsed = started.elapsed().as_secs_f64();
            latencies.sort();
            let pct = |p: f64| {
                latencies
                    .get(
                        ((latencies.len() as f64 * p) as usize)
                            .min(latencies.len().saturating_sub(1)),
                    )
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(0.0)
            };
            println!(
                "ingest: {committed} events committed in {elapsed:.1} s = {:.0} events/s; {} requests, {failed} failed; batch latency p50 {:.1} ms, p99 {:.1} ms",
                committed as f64 / elapsed,
                latencies.len(),
                pct(0.5),
                pct(0.99),
            );
        }
    }
}
