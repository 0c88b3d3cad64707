//! The real, unmodified `crowdsec-firewall-bouncer` (Debian's package) in iptables + ipset mode,
//! pulling from Palisade inside a private network namespace: packets from a blocked address are
//! dropped, and an unblock lets them through again.
//!
//! Palisade, the bouncer and every probe run in a named namespace of their own (`ip netns`),
//! so the firewall rules the bouncer installs touch nothing outside it. The namespace has only
//! `lo`, carrying the server's address and the addresses probes connect from.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{Server, require, start_command};

const EVENTUALLY: Duration = Duration::from_secs(30);
const SERVER_IP: &str = "10.99.0.1";
const BLOCKED: &str = "192.0.2.77";
const IN_RANGE: &str = "198.51.100.9";
const BYSTANDER: &str = "192.0.2.78";
const SET: &str = "palisade-test";

/// A network namespace, deleted with whatever still runs in it.
struct Namespace {
    name: String,
}

impl Namespace {
    fn new() -> Self {
        let name = format!(
            "palisade-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        run("ip", &["netns", "add", &name]);
        let ns = Namespace { name };
        ns.run("ip", &["link", "set", "lo", "up"]);
        for addr in [SERVER_IP, BLOCKED, IN_RANGE, BYSTANDER] {
            ns.run("ip", &["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        ns
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = self.command(program, args).output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn succeeds(&self, program: &str, args: &[&str]) -> bool {
        self.command(program, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Whether a TCP connection from `source` to the server gets an answer; `false` only when
    /// the packets are dropped (curl times out), never for a refused connection.
    fn reaches(&self, source: &str, port: u16) -> bool {
        let url = format!("http://{SERVER_IP}:{port}/healthz");
        let status = self
            .command(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-m",
                    "2",
                    "--interface",
                    source,
                    &url,
                ],
            )
            .status()
            .unwrap();
        match status.code() {
            Some(0) => true,
            // 28: timed out, the SYN went unanswered.
            Some(28) => false,
            other => panic!("curl from {source} ended with {other:?}"),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}");
}

struct Bouncer(Child);

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < EVENTUALLY,
            "not within {EVENTUALLY:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bouncer_config(dir: &Path, port: u16, key: &str) -> std::path::PathBuf {
    let path = dir.join("crowdsec-firewall-bouncer.yaml");
    let yaml = format!(
        "mode: iptables
pid_dir: {dir}
update_frequency: 1s
daemonize: false
log_mode: stdout
log_dir: {dir}
log_level: info
api_url: http://127.0.0.1:{port}/
api_key: {key}
disable_ipv6: true
deny_action: DROP
deny_log: false
supported_decisions_types:
  - ban
blacklists_ipv4: {SET}
blacklists_ipv6: {SET}6
ipset_type: nethash
iptables_chains:
  - INPUT
",
        dir = dir.display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
#[ignore = "needs crowdsec-firewall-bouncer, ipset, iptables, curl and root: installed by .ci/run"]
fn an_unmodified_firewall_bouncer_drops_blocked_addresses() {
    require("crowdsec-firewall-bouncer", &["-V"]);
    require("ipset", &["--version"]);
    require("iptables", &["--version"]);
    require("curl", &["--version"]);
    require("ip", &["netns", "list"]);
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = ns.command(
        env!("CARGO_BIN_EXE_palisade"),
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let (server, admin): (Server, _) = start_command(serve, true);
    let admin = admin.expect("a new data directory prints an admin key");
    let port: u16 = server.base.rsplit(':').next().unwrap().parse().unwrap();
    let api = format!("http://127.0.0.1:{port}");

    let created = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "keys",
            "create",
            "--name",
            "firewall",
            "--role",
            "reader",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(created.status.success());
    let reader = String::from_utf8(created.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();

    let signal = |events: &str| {
        let answer = ns.run(
            "curl",
            &[
                "-s",
                "-H",
                &format!("Authorization: Bearer {admin}"),
                "-d",
                events,
                &format!("{api}/v1/signal"),
            ],
        );
        assert!(answer.contains(r#""success":true"#), "{answer}");
    };
    signal(&format!(
        r#"[{{"type":"access_rules","action":"block","ip":"{BLOCKED}","expiration":3600}},
            {{"type":"access_rules","action":"block","ip":"198.51.100.0/24"}}]"#
    ));
    assert!(
        ns.reaches(BLOCKED, port),
        "nothing blocks before the bouncer runs"
    );

    let config = bouncer_config(dir.path(), port, &reader);
    let _bouncer = Bouncer(
        ns.command(
            "crowdsec-firewall-bouncer",
            &["-c", config.to_str().unwrap()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let in_set = |addr: &str| ns.succeeds("ipset", &["test", SET, addr]);
    eventually("the bouncer loads the blocked address and range", || {
        in_set(BLOCKED) && in_set(IN_RANGE)
    });
    assert!(
        !ns.reaches(BLOCKED, port),
        "packets from a blocked address are dropped"
    );
    assert!(
        !ns.reaches(IN_RANGE, port),
        "and from an address in a blocked range"
    );
    assert!(ns.reaches(BYSTANDER, port), "others get through");

    signal(&format!(
        r#"[{{"type":"access_rules","action":"unblock","ip":"{BLOCKED}"}}]"#
    ));
    eventually("the unblock reaches the firewall", || !in_set(BLOCKED));
    assert!(
        ns.reaches(BLOCKED, port),
        "an unblock lets packets through again"
    );
    assert!(!ns.reaches(IN_RANGE, port));

    // A block made while the bouncer runs arrives through its stream.
    signal(&format!(
        r#"[{{"type":"access_rules","action":"block","ip":"{BYSTANDER}","expiration":600}}]"#
    ));
    eventually("a new block reaches the firewall", || in_set(BYSTANDER));
    assert!(!ns.reaches(BYSTANDER, port));
    drop(server);
}
