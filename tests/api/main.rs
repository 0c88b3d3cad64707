//! Integration tests: each starts the real server on port 0 with its own data directory and
//! talks HTTP to it.

mod access;
mod decisions;
mod durability;
mod helpers;
mod hostile;
mod limits;
mod proxies;
mod reports;
mod rules;
mod seed;
mod validation;
