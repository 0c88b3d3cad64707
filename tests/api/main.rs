//! Integration tests: each starts the real server on port 0 with its own data directory and
//! talks HTTP to it.

#[path = "../common/pg.rs"]
mod pg;
#[path = "../common/private_pg.rs"]
mod private_pg;

mod access;
mod bouncers;
mod cluster;
mod console;
mod console_browser;
mod decisions;
mod disk;
mod durability;
mod exports;
mod firewall;
mod helpers;
mod history;
mod hostile;
mod limits;
mod metrics;
mod operations;
mod proxies;
mod reports;
mod rules;
mod seed;
mod subscriptions;
mod validation;
