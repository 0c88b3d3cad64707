use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade::config::GeoConfig;
use palisade::geo::{Geo, GeoError};
use palisade::rules::Asn;
use palisade::signal::AsnCatalog;

use crate::fixtures::write;

/// Both versions map the probe address, to different ASNs.
const V1: &str = "1.0.0.0,1.0.0.255,64496,One\n";
const V2: &str = "1.0.0.0,1.0.0.255,64497,Two\n2001:db8::,2001:db8::ffff,64497,Two\n";

fn probe() -> IpAddr {
    "1.0.0.77".parse().unwrap()
}

fn asn_of(geo: &Geo) -> Option<u32> {
    geo.lookup(probe()).asn.map(Asn::get)
}

fn config(asn: &Path, interval: u64) -> GeoConfig {
    GeoConfig {
        asn: Some(asn.to_path_buf()),
        country: None,
        watch_interval_secs: interval,
    }
}

fn setup(interval: u64) -> (tempfile::TempDir, PathBuf, Arc<Geo>) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "asn.csv", V1.as_bytes());
    let geo = Arc::new(Geo::open(&config(&path, interval)).unwrap());
    (dir, path, geo)
}

#[test]
fn bad_file_keeps_the_old_data_good_file_swaps() {
    let (dir, _path, geo) = setup(0);
    let mut versions = geo.subscribe();
    assert_eq!((asn_of(&geo), geo.version()), (Some(64496), 0));
    assert!(geo.contains(Asn::new(64496).unwrap()));

    write(dir.path(), "asn.csv", b"1.0.0.0,1.0.0.255,sixty\n");
    assert!(matches!(geo.reload(), Err(GeoError::Csv { line: 1, .. })));
    assert_eq!((asn_of(&geo), geo.version()), (Some(64496), 0));
    assert!(!versions.has_changed().unwrap());

    write(dir.path(), "asn.csv", V2.as_bytes());
    assert!(geo.reload().unwrap());
    assert_eq!((asn_of(&geo), geo.version()), (Some(64497), 1));
    assert!(versions.has_changed().unwrap());
    assert_eq!(*versions.borrow_and_update(), 1);
    assert!(geo.contains(Asn::new(64497).unwrap()));
    assert!(!geo.contains(Asn::new(64496).unwrap()));

    // A missing file is a failed reload too.
    std::fs::remove_file(dir.path().join("asn.csv")).unwrap();
    assert!(matches!(geo.reload(), Err(GeoError::Read { .. })));
    assert_eq!(asn_of(&geo), Some(64497));
}

#[test]
fn a_bad_file_at_start_up_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "asn.csv", b"1.0.0.0,1.0.0.255\n");
    assert!(Geo::open(&config(&path, 5)).is_err());
}

#[test]
fn nothing_configured_is_empty_and_reload_does_nothing() {
    let geo = Geo::open(&GeoConfig::default()).unwrap();
    assert!(!geo.has_asn_source() && !geo.has_country_source());
    assert_eq!(geo.lookup(probe()).asn, None);
    assert!(!geo.reload().unwrap());
    assert_eq!(geo.version(), 0);
}

#[test]
fn look_ups_never_miss_during_reloads() {
    let (dir, _path, geo) = setup(0);
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicU64::new(0));
    let looked_up = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (geo, stop, misses, looked_up) =
                (geo.clone(), stop.clone(), misses.clone(), looked_up.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match asn_of(&geo) {
                        Some(64496 | 64497) => {}
                        _ => {
                            misses.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    looked_up.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for round in 0..60 {
        let text = if round % 2 == 0 { V2 } else { V1 };
        write(dir.path(), "asn.csv", text.as_bytes());
        assert!(geo.reload().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(geo.version(), 60);
    assert_eq!(misses.load(Ordering::Relaxed), 0);
    assert!(looked_up.load(Ordering::Relaxed) > 0);
}

/// Polls `check` until it holds, failing after a generous deadline.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reloads_a_changed_file() {
    let (dir, _path, geo) = setup(1);
    let watcher = geo.spawn_watcher();
    let mut versions = geo.subscribe();

    write(dir.path(), "asn.csv", V2.as_bytes());
    eventually("the new file to be loaded", || asn_of(&geo) == Some(64497)).await;
    tokio::time::timeout(Duration::from_secs(15), versions.changed())
        .await
        .unwrap()
        .unwrap();

    // Whether or not a check falls between the two writes, the watcher ends on the good file.
    write(dir.path(), "asn.csv", b"garbage\n1.0.0.0\n");
    write(dir.path(), "asn.csv", V1.as_bytes());
    eventually("the file after the bad one", || asn_of(&geo) == Some(64496)).await;

    watcher.abort();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    // Polling is off: only the signal can bring the new data in.
    let (dir, _path, geo) = setup(0);
    let watcher = geo.spawn_watcher();
    write(dir.path(), "asn.csv", V2.as_bytes());
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("SIGHUP to load the new file", || {
        asn_of(&geo) == Some(64497)
    })
    .await;
    watcher.abort();
}

#[tokio::test]
async fn watcher_ends_with_its_geo() {
    let (_dir, _path, geo) = setup(1);
    let watcher = geo.spawn_watcher();
    drop(geo);
    tokio::time::timeout(Duration::from_secs(15), watcher)
        .await
        .unwrap()
        .unwrap();
}
