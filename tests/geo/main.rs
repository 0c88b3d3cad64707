//! Geo data: loading every supported layout, look-ups, networks, reloads and the watcher.
//! The tests against the real data in /work/shared/geo are ignored by default (`real`).

mod fixtures;
mod lookup;
mod real;
mod reload;
