//! IP address to ASN and country, from files the operator configures
//! ([`GeoConfig`](crate::config::GeoConfig)).
//!
//! Files are read once into compact tables ([`GeoData`]), so a look-up never decodes a MaxMind
//! DB record (the decision index looks every address of a tenant with ASN or country rules up
//! here), and the networks of an ASN or a country are at hand. [`Geo`] holds the data in force
//! and swaps in a new [`GeoData`] when the files change or on SIGHUP; readers never wait and
//! never see a half-loaded set.
//!
//! # Formats
//! A file named `*.mmdb` or carrying the MaxMind DB metadata marker is read as a MaxMind DB;
//! anything else as CSV, gunzipped first when it starts with the gzip magic (`.csv.gz`).
//!
//! - MaxMind DB records may follow the GeoLite2-ASN layout (`autonomous_system_number`), the
//!   GeoLite2-Country layout (`country.iso_code`, else `registered_country.iso_code`), a top-level
//!   `country_code`, or IPinfo Lite (`asn` as `"AS123"` and `country_code`). One IPinfo file can
//!   be both the ASN and the country source; it is then read once.
//! - CSV rows are `start_ip,end_ip,value[,...]` with inclusive ranges of either family. `value`
//!   is the ASN (`13335` or `AS13335`) when the file is the ASN source and a country code when it
//!   is the country source; further fields (the organisation) are ignored. A header line, blank
//!   lines and `#` comments are skipped. Where rows overlap the later row wins, as it would when
//!   the rows are written into a MaxMind DB in order. IPv4 and IPv6 rows may share a file; data
//!   published as one gzipped file per family can be joined with `cat` (gzip streams
//!   concatenate).
//!
//! ASN 0 and country codes [`CountryCode::parse`] refuses count as "no data".
//!
//! # IPv4 inside IPv6 databases
//! A MaxMind DB with an IPv6 tree keeps IPv4 under `::/96` and may alias `::ffff:0:0/96`,
//! `2002::/16` (6to4) and `2001::/32` (Teredo) to that subtree. Aliases are skipped, so every
//! IPv4 network is loaded once, as IPv4. Data stored under `::ffff:0:0/96` itself (not as an
//! alias) is taken as IPv4 too, where `::/96` has nothing for the same addresses. Look-ups turn
//! IPv4-mapped addresses into IPv4 first ([`normalize_ip`]); 6to4 and Teredo addresses are looked
//! up as the IPv6 addresses they are, which is also how rules compiled from
//! [`GeoData::asn_networks`] and [`GeoData::country_networks`] see them.

mod csv;
mod live;
mod mmdb;
pub(crate) mod ranges;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::rules::{Asn, CountryCode, normalize_ip};
use ranges::{NetIndex, Row, Table, merge_steps, overlay};

pub use live::Geo;
pub use ranges::Family;

/// What the data says about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GeoRecord {
    pub asn: Option<Asn>,
    pub country: Option<CountryCode>,
}

/// Which kind of data a file was expected to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Asn,
    Country,
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataKind::Asn => "ASN",
            DataKind::Country => "country",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read geo data file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a usable MaxMind DB: {source}", path.display())]
    Mmdb {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error("{}, line {line}: {problem}", path.display())]
    Csv {
        path: PathBuf,
        line: usize,
        problem: CsvProblem,
    },
    #[error(
        "{} holds no {kind} data (is it the right file, in a layout this reader knows?)",
        path.display()
    )]
    NoData { path: PathBuf, kind: DataKind },
}

/// Why a CSV row was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvProblem {
    #[error("expected start_ip,end_ip,value but found {0} field(s)")]
    TooFewFields(usize),
    #[error("a quoted field is not closed")]
    UnterminatedQuote,
    #[error("text follows a closing quote")]
    TextAfterQuote,
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    #[error("start and end addresses are of different families")]
    MixedFamilies,
    #[error("the end address is below the start address")]
    EndBeforeStart,
    #[error("{0:?} is not an ASN (digits, optionally after AS)")]
    BadAsn(String),
    #[error("{0:?} is not a two-letter country code")]
    BadCountry(String),
}

/// Which values to take from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    pub asn: bool,
    pub country: bool,
}

/// Rows read from one file, per family, before overlaps are resolved.
#[derive(Debug, Default)]
pub(crate) struct Source {
    pub asn: [Vec<Row<u32>>; 2],
    pub country: [Vec<Row<u8>>; 2],
    pub countries: Countries,
}

impl Source {
    pub(crate) fn push_asn(&mut self, family: Family, row: Row<u32>) {
        self.asn[family as usize].push(row);
    }

    pub(crate) fn push_country(&mut self, family: Family, row: Row<u8>) {
        self.country[family as usize].push(row);
    }

    fn has(&self, kind: DataKind) -> bool {
        match kind {
            DataKind::Asn => self.asn.iter().any(|rows| !rows.is_empty()),
            DataKind::Country => self.country.iter().any(|rows| !rows.is_empty()),
        }
    }
}

/// The countries of one file, numbered from 1 in order of first appearance; 0 is "none".
#[derive(Debug, Default)]
pub(crate) struct Countries {
    codes: Vec<CountryCode>,
    /// Upper-case code to number, including 0 for codes already refused.
    numbers: HashMap<[u8; 2], u8>,
}

impl Countries {
    pub(crate) fn intern(&mut self, code: [u8; 2]) -> u8 {
        let key = code.map(|b| b.to_ascii_uppercase());
        if let Some(&n) = self.numbers.get(&key) {
            return n;
        }
        let parsed = std::str::from_utf8(&key).ok().and_then(CountryCode::parse);
        let n = match parsed {
            // At most 249 codes are officially assigned, so the numbers fit a u8.
            Some(country) if self.codes.len() < usize::from(u8::MAX) => {
                self.codes.push(country);
                self.codes.len() as u8
            }
            _ => 0,
        };
        self.numbers.insert(key, n);
        n
    }
}

/// Sizes for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GeoStats {
    /// Look-up ranges per family, the gaps between data ranges included.
    pub ranges_v4: usize,
    pub ranges_v6: usize,
    /// Distinct ASNs and countries.
    pub asns: usize,
    pub countries: usize,
    /// CIDR blocks kept for [`GeoData::asn_networks`] and [`GeoData::country_networks`].
    pub asn_networks: usize,
    pub country_networks: usize,
    /// Heap bytes of the look-up tables and of the network lists.
    pub lookup_bytes: usize,
    pub network_bytes: usize,
}

impl fmt::Display for GeoStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges = self.ranges_v4 + self.ranges_v6;
        write!(
            f,
            "{} IPv4 + {} IPv6 look-up ranges ({:.1} MiB, {:.1} bytes/range), {} ASNs in {} \
             networks, {} countries in {} networks ({:.1} MiB)",
            self.ranges_v4,
            self.ranges_v6,
            mib(self.lookup_bytes),
            self.lookup_bytes as f64 / ranges.max(1) as f64,
            self.asns,
            self.asn_networks,
            self.countries,
            self.country_networks,
            mib(self.network_bytes),
        )
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One immutable, fully loaded data set.
pub struct GeoData {
    v4: Table<u32>,
    v6: Table<u128>,
    /// Country number `n` is `countries[n - 1]`.
    countries: Vec<CountryCode>,
    asn_networks: NetIndex,
    country_networks: NetIndex,
    has_asn: bool,
    has_country: bool,
}

impl GeoData {
    /// No data: every look-up answers nothing, no ASN exists.
    pub fn empty() -> Self {
        Self::build(Source::default(), Source::default(), false, false)
    }

    /// Reads the files (either may be absent). Fails on any unreadable or malformed file, and on
    /// a file that yields no data of the kind it was configured for.
    pub fn load(asn: Option<&Path>, country: Option<&Path>) -> Result<Self, GeoError> {
        const ASN: Want = Want {
            asn: true,
            country: false,
        };
        const COUNTRY: Want = Want {
            asn: false,
            country: true,
        };
        const BOTH: Want = Want {
            asn: true,
            country: true,
        };
        let (asn_source, country_source) = match (asn, country) {
            (Some(a), Some(c)) if same_file(a, c) => {
                let both = read(a, BOTH)?;
                require(&both, a, DataKind::Asn)?;
                require(&both, c, DataKind::Country)?;
                (both, Source::default())
            }
            _ => {
                // Two files: read them side by side, the machine has cores to spare at start-up.
                let (asn_result, country_result) = std::thread::scope(|scope| {
                    let asn_task = asn.map(|path| scope.spawn(move || read(path, ASN)));
                    let country_result = country.map(|path| read(path, COUNTRY));
                    let asn_result = asn_task.map(|task| {
                        task.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    });
                    (asn_result, country_result)
                });
                let asn_source = asn_result.transpose()?.unwrap_or_default();
                let country_source = country_result.transpose()?.unwrap_or_default();
                if let Some(path) = asn {
                    require(&asn_source, path, DataKind::Asn)?;
                }
                if let Some(path) = country {
                    require(&country_source, path, DataKind::Country)?;
                }
                (asn_source, country_source)
            }
        };
        Ok(Self::build(
            asn_source,
            country_source,
            asn.is_some(),
            country.is_some(),
        ))
    }

    /// Takes the ASN rows of `asn_source` and the country rows of either source (one of them has
    /// none: either one file serves both, or each file was read for one kind only).
    fn build(asn_source: Source, country_source: Source, has_asn: bool, has_country: bool) -> Self {
        let Source {
            asn: [asn_v4, asn_v6],
            country: shared_country,
            countries: shared_countries,
        } = asn_source;
        let (country_rows, countries) = if shared_country.iter().any(|rows| !rows.is_empty()) {
            (shared_country, shared_countries)
        } else {
            (country_source.country, country_source.countries)
        };
        let [country_v4, country_v6] = country_rows;

        let asn_v4 = overlay(asn_v4);
        let asn_v6 = overlay(asn_v6);
        let country_v4 = overlay(country_v4);
        let country_v6 = overlay(country_v6);

        let v4 = Table::from_steps(merge_steps(&asn_v4, &country_v4, Family::V4));
        let v6 = Table::from_steps(merge_steps(&asn_v6, &country_v6, Family::V6));
        GeoData {
            v4,
            v6,
            countries: countries.codes,
            asn_networks: NetIndex::build(&asn_v4, &asn_v6),
            country_networks: NetIndex::build(&country_v4, &country_v6),
            has_asn,
            has_country,
        }
    }

    /// Whether an ASN file was configured (and loaded).
    pub fn has_asn_source(&self) -> bool {
        self.has_asn
    }

    /// Whether a country file was configured (and loaded).
    pub fn has_country_source(&self) -> bool {
        self.has_country
    }

    /// ASN and country of an address. IPv4-mapped IPv6 addresses are looked up as IPv4.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> GeoRecord {
        let slot = match normalize_ip(ip) {
            IpAddr::V4(v4) => self.v4.find(u32::from(v4)),
            IpAddr::V6(v6) => self.v6.find(u128::from(v6)),
        };
        GeoRecord {
            asn: Asn::new(slot.asn()),
            country: usize::from(slot.country())
                .checked_sub(1)
                .and_then(|i| self.countries.get(i))
                .copied(),
        }
    }

    /// Whether the ASN data maps any address to `asn`.
    pub fn asn_exists(&self, asn: Asn) -> bool {
        self.asn_networks.contains(asn.get())
    }

    /// The fewest CIDR blocks covering exactly the addresses of `asn`: IPv4 blocks (as IPv4)
    /// first, then IPv6, each in address order. Empty for an unknown ASN.
    pub fn asn_networks(&self, asn: Asn) -> &[IpNet] {
        self.asn_networks.get(asn.get())
    }

    /// As [`GeoData::asn_networks`], for a country.
    pub fn country_networks(&self, code: CountryCode) -> &[IpNet] {
        match self.countries.iter().position(|&c| c == code) {
            // Positions are below 255 (see `Countries::intern`), and numbers start at 1.
            Some(i) => self.country_networks.get(i as u32 + 1),
            None => &[],
        }
    }

    /// The countries that have at least one network.
    pub fn countries(&self) -> &[CountryCode] {
        &self.countries
    }

    pub fn stats(&self) -> GeoStats {
        GeoStats {
            ranges_v4: self.v4.len(),
            ranges_v6: self.v6.len(),
            asns: self.asn_networks.keys(),
            countries: self.country_networks.keys(),
            asn_networks: self.asn_networks.networks(),
            country_networks: self.country_networks.networks(),
            lookup_bytes: self.v4.heap_bytes() + self.v6.heap_bytes(),
            network_bytes: self.asn_networks.heap_bytes() + self.country_networks.heap_bytes(),
        }
    }
}

/// Sizes only: the tables hold millions of entries.
impl fmt::Debug for GeoData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoData")
            .field("stats", &self.stats())
            .field("has_asn_source", &self.has_asn)
            .field("has_country_source", &self.has_country)
            .finish_non_exhaustive()
    }
}

fn require(source: &Source, path: &Path, kind: DataKind) -> Result<(), GeoError> {
    if source.has(kind) {
        Ok(())
    } else {
        Err(GeoError::NoData {
            path: path.to_path_buf(),
            kind,
        })
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn read(path: &Path, want: Want) -> Result<Source, GeoError> {
    let read_error = |source| GeoError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read_error)?;
    if mmdb::looks_like_mmdb(path, &bytes) {
        return mmdb::read(path, bytes, want);
    }
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut text = Vec::with_capacity(bytes.len() * 4);
        std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
            &mut text,
        )
        .map_err(read_error)?;
        return csv::read(path, &text, want);
    }
    csv::read(path, &bytes, want)
}
