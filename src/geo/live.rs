//! The data set in force, and its replacement when the files change.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{GeoData, GeoError, GeoRecord};
use crate::config::GeoConfig;
use crate::rules::Asn;
use crate::signal::AsnCatalog;

/// The live geo data: look-ups read whatever set is current without waiting; a reload builds a
/// complete new set beside it and swaps it in, or leaves the old one in place if a file is bad.
#[derive(Debug)]
pub struct Geo {
    data: ArcSwap<GeoData>,
    asn_path: Option<PathBuf>,
    country_path: Option<PathBuf>,
    watch_interval: Duration,
    version: watch::Sender<u64>,
    /// Held for the whole of a reload, so two never race to swap; holds what the files looked
    /// like when last read, so polling reloads only what changed since.
    seen: Mutex<Vec<Option<Stamp>>>,
}

/// What a file looked like: a changed time, size or inode (a file replaced by rename) means it
/// changed. `None` in a list of stamps: the file could not be examined.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino())
            },
        })
    }
}

impl Geo {
    /// Loads the configured files. Any bad file fails, so a server does not start with data the
    /// operator did not mean. With no files configured the data is empty.
    pub fn open(config: &GeoConfig) -> Result<Self, GeoError> {
        let asn_path = config.asn.clone();
        let country_path = config.country.clone();
        let stamps = stamps(&asn_path, &country_path);
        let data = GeoData::load(asn_path.as_deref(), country_path.as_deref())?;
        Ok(Geo {
            data: ArcSwap::from_pointee(data),
            asn_path,
            country_path,
            watch_interval: Duration::from_secs(config.watch_interval_secs),
            version: watch::Sender::new(0),
            seen: Mutex::new(stamps),
        })
    }

    /// The data in force. Cheap; meant to be dropped soon (a long-held guard keeps the old set
    /// alive after a swap). Clone the `Arc` inside to keep a set for longer.
    pub fn current(&self) -> Guard<Arc<GeoData>> {
        self.data.load()
    }

    /// [`GeoData::lookup`] on the data in force.
    pub fn lookup(&self, ip: IpAddr) -> GeoRecord {
        self.data.load().lookup(ip)
    }

    pub fn has_asn_source(&self) -> bool {
        self.asn_path.is_some()
    }

    pub fn has_country_source(&self) -> bool {
        self.country_path.is_some()
    }

    /// When each configured file was last modified (`"asn"`, `"country"`): how old the data
    /// is, for operators who must refresh it.
    pub fn files_modified(&self) -> Vec<(&'static str, SystemTime)> {
        [("asn", &self.asn_path), ("country", &self.country_path)]
            .into_iter()
            .filter_map(|(source, path)| {
                let modified = std::fs::metadata(path.as_ref()?).ok()?.modified().ok()?;
                Some((source, modified))
            })
            .collect()
    }

    /// Number of swaps since [`Geo::open`].
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Changes to [`Geo::version`]: whoever keeps a set of the data (the decision index, which
    /// matches ASN and country rules by it) takes the new one when this changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Reads the files again and swaps the new set in. `Ok(false)` when no file is configured.
    /// On error the data in force stays; the caller decides how to report it.
    ///
    /// Loading takes a while (seconds for full-size databases); call it off the async runtime.
    pub fn reload(&self) -> Result<bool, GeoError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        self.reload_locked(&mut seen)
    }

    /// Reloads when a file's time, size or inode changed since it was last read. A file that
    /// failed to load is not retried until it changes again, so a bad file is reported once
    /// rather than at every check.
    fn reload_if_changed(&self) -> Result<bool, GeoError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if *seen == stamps(&self.asn_path, &self.country_path) {
            return Ok(false);
        }
        self.reload_locked(&mut seen)
    }

    fn reload_locked(&self, seen: &mut Vec<Option<Stamp>>) -> Result<bool, GeoError> {
        if self.asn_path.is_none() && self.country_path.is_none() {
            return Ok(false);
        }
        // Taken before reading: a change made while the files are read shows at the next check.
        *seen = stamps(&self.asn_path, &self.country_path);
        let data = GeoData::load(self.asn_path.as_deref(), self.country_path.as_deref())?;
        self.data.store(Arc::new(data));
        self.version.send_modify(|version| *version += 1);
        Ok(true)
    }

    /// Reloads on SIGHUP, and when a file changes (checked every `watch_interval_secs`; 0 turns
    /// the checks off). Failures are logged and the data in force stays. The task ends once the
    /// last other `Arc` of this `Geo` is dropped (at its next wake-up), or when aborted. Call it
    /// inside a Tokio runtime.
    pub fn spawn_watcher(self: &Arc<Self>) -> JoinHandle<()> {
        let geo = Arc::downgrade(self);
        // Listening starts before this returns: from then on SIGHUP reloads rather than ending
        // the process (its default action).
        let hangup = hangup_signal();
        tokio::spawn(watch_files(geo, hangup, self.watch_interval))
    }
}

fn stamps(asn: &Option<PathBuf>, country: &Option<PathBuf>) -> Vec<Option<Stamp>> {
    [asn, country]
        .into_iter()
        .flatten()
        .map(|path| Stamp::of(path))
        .collect()
}

enum Wake {
    Hangup,
    HangupGone,
    Tick,
}

async fn watch_files(geo: Weak<Geo>, mut hangup: Option<Hangup>, interval: Duration) {
    let mut ticks = (!interval.is_zero()).then(|| {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    loop {
        let wake = tokio::select! {
            received = next_hangup(&mut hangup) => {
                if received { Wake::Hangup } else { Wake::HangupGone }
            }
            () = next_tick(&mut ticks) => Wake::Tick,
        };
        let forced = match wake {
            Wake::Hangup => true,
            Wake::Tick => false,
            Wake::HangupGone => {
                hangup = None;
                continue;
            }
        };
        let Some(live) = geo.upgrade() else {
            return;
        };
        let outcome = tokio::task::spawn_blocking(move || {
            let result = if forced {
                live.reload()
            } else {
                live.reload_if_changed()
            };
            (result, live)
        })
        .await;
        match outcome {
            Ok((Ok(true), live)) => {
                let data = live.current();
                tracing::info!(
                    version = live.version(),
                    stats = %data.stats(),
                    reason = if forced { "SIGHUP" } else { "file changed" },
                    "geo data reloaded"
                );
            }
            Ok((Ok(false), _)) if forced => {
                tracing::info!("SIGHUP: no geo data files configured, nothing to reload");
            }
            Ok((Ok(false), _)) => {}
            Ok((Err(error), _)) => {
                tracing::warn!(%error, "geo data reload failed; the previous data stays in force");
            }
            Err(error) => {
                tracing::error!(%error, "geo data reload task failed; the previous data stays in force");
            }
        }
    }
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = std::convert::Infallible;

#[cfg(unix)]
fn hangup_signal() -> Option<Hangup> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; geo data reloads only on file changes");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<Hangup> {
    None
}

/// `false` when the signal stream ended; never resolves without a stream.
async fn next_hangup(hangup: &mut Option<Hangup>) -> bool {
    match hangup {
        #[cfg(unix)]
        Some(stream) => stream.recv().await.is_some(),
        #[cfg(not(unix))]
        Some(never) => match *never {},
        None => std::future::pending().await,
    }
}

async fn next_tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Lets signal validation check ASNs against the data in force.
impl AsnCatalog for Geo {
    fn contains(&self, asn: Asn) -> bool {
        self.data.load().asn_exists(asn)
    }
}
