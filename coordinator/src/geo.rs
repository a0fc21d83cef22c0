//! Exit countries from GeoIP databases on the coordinator's disk, when there are any: Debian's
//! `geoip-database` (the legacy GeoIP country format, `GeoIP.dat` and `GeoIPv6.dat`) or a
//! MaxMind DB file (`.mmdb`, such as GeoLite2-Country) the operator points to. Nothing is ever
//! downloaded; without a database no member has a country.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where Debian's `geoip-database` puts its files.
const DEBIAN_FILES: [&str; 2] = ["/usr/share/GeoIP/GeoIP.dat", "/usr/share/GeoIP/GeoIPv6.dat"];

/// What can go wrong opening a database; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read the GeoIP database {path}: {error}")]
    Read { path: String, error: String },
    #[error(
        "{path} is not a GeoIP country database this coordinator reads ({error}); give a MaxMind DB (.mmdb) or a legacy GeoIP country file (.dat)"
    )]
    Format { path: String, error: String },
}

/// The legacy format's first country record: records at or above it are country ids.
const COUNTRY_BEGIN: u32 = 16_776_960;
/// Database types of the legacy format's country editions.
const COUNTRY_EDITION: u8 = 1;
const COUNTRY_EDITION_V6: u8 = 12;

/// Country codes of the legacy format, by id (libGeoIP 1.5's table; "--" is none).
const LEGACY_CODES: [&str; 256] = [
    "--", "AP", "EU", "AD", "AE", "AF", "AG", "AI", "AL", "AM", "CW", "AO", "AQ", "AR", "AS", "AT",
    "AU", "AW", "AZ", "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BM", "BN", "BO", "BR",
    "BS", "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM",
    "CN", "CO", "CR", "CU", "CV", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "SX", "GA", "GB", "GD", "GE",
    "GF", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IN", "IO", "IQ", "IR", "IS", "IT", "JM", "JO", "JP",
    "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK",
    "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "MG", "MH", "MK", "ML", "MM", "MN", "MO",
    "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG",
    "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM",
    "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RU", "RW", "SA", "SB", "SC", "SD", "SE",
    "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "ST", "SV", "SY", "SZ", "TC", "TD",
    "TF", "TG", "TH", "TJ", "TK", "TM", "TN", "TO", "TL", "TR", "TT", "TV", "TW", "TZ", "UA", "UG",
    "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "RS",
    "ZA", "ZM", "ME", "ZW", "A1", "A2", "O1", "AX", "GG", "IM", "JE", "BL", "MF", "BQ", "SS", "O1",
];

/// One database.
enum Db {
    /// A legacy country edition: a binary tree of 6-byte nodes (two 3-byte little-endian
    /// records), 32 levels deep for IPv4, 128 for IPv6.
    Legacy {
        tree: Vec<u8>,
        v6: bool,
    },
    Mmdb(maxminddb::Reader<Vec<u8>>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Legacy { tree, v6 } => write!(f, "Legacy({} bytes, v6: {v6})", tree.len()),
            Db::Mmdb(r) => write!(f, "Mmdb({})", r.metadata.database_type),
        }
    }
}

/// The databases the coordinator found or was given; asked in order.
#[derive(Debug, Default)]
pub struct Geo {
    dbs: Vec<(PathBuf, Db)>,
}

/// The country edition a legacy file holds, read from the structure info at its end (up to 20
/// records back); a file without one is an IPv4 country edition.
fn legacy_edition(data: &[u8]) -> u8 {
    for back in 0..20 {
        let Some(at) = data.len().checked_sub(3 + back) else {
            break;
        };
        if data[at..at + 3] == [0xff, 0xff, 0xff] {
            let mut kind = data.get(at + 3).copied().unwrap_or(COUNTRY_EDITION);
            if kind >= 106 {
                kind -= 105;
            }
            return kind;
        }
    }
    COUNTRY_EDITION
}

/// The country id of `bits` (the address, most significant bit first, `depth` bits) in a legacy
/// tree; None when the tree is cut short or malformed.
fn legacy_lookup(tree: &[u8], address: u128, depth: u32) -> Option<usize> {
    let mut node: u32 = 0;
    for level in (0..depth).rev() {
        let bit = (address >> level) & 1;
        let at = node as usize * 6 + bit as usize * 3;
        let record = tree.get(at..at + 3)?;
        let record = u32::from(record[0]) | u32::from(record[1]) << 8 | u32::from(record[2]) << 16;
        if record >= COUNTRY_BEGIN {
            return Some((record - COUNTRY_BEGIN) as usize);
        }
        // A record that does not point further down is malformed: stop rather than loop.
        if record <= node {
            return None;
        }
        node = record;
    }
    None
}

impl Geo {
    /// Opens `paths`; with none, Debian's `geoip-database` files that exist (possibly none).
    pub fn open(paths: &[PathBuf]) -> Result<Geo, GeoError> {
        let paths: Vec<PathBuf> = if paths.is_empty() {
            DEBIAN_FILES
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect()
        } else {
            paths.to_vec()
        };
        let mut dbs = Vec::with_capacity(paths.len());
        for path in paths {
            let db = Geo::open_one(&path)?;
            dbs.push((path, db));
        }
        Ok(Geo { dbs })
    }

    fn open_one(path: &Path) -> Result<Db, GeoError> {
        let name = path.display().to_string();
        let data = std::fs::read(path).map_err(|e| GeoError::Read {
            path: name.clone(),
            error: e.to_string(),
        })?;
        // A MaxMind DB ends with its metadata, after this marker.
        const MMDB_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";
        if memchr_last(&data, MMDB_MARKER) {
            return maxminddb::Reader::from_source(data)
                .map(Db::Mmdb)
                .map_err(|e| GeoError::Format {
                    path: name,
                    error: e.to_string(),
                });
        }
        match legacy_edition(&data) {
            COUNTRY_EDITION => Ok(Db::Legacy {
                tree: data,
                v6: false,
            }),
            COUNTRY_EDITION_V6 => Ok(Db::Legacy {
                tree: data,
                v6: true,
            }),
            other => Err(GeoError::Format {
                path: name,
                error: format!("a legacy GeoIP database of type {other}, not a country edition"),
            }),
        }
    }

    /// The files in use, for the log.
    pub fn files(&self) -> Vec<String> {
        self.dbs
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.dbs.is_empty()
    }

    /// The ISO 3166 alpha-2 code of `ip`'s country, from the first database that knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        // An IPv4-mapped IPv6 address is its IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.dbs.iter().find_map(|(_, db)| match db {
            Db::Legacy { tree, v6 } => {
                let id = match (ip, v6) {
                    (IpAddr::V4(a), false) => legacy_lookup(tree, u128::from(u32::from(a)), 32),
                    (IpAddr::V6(a), true) => legacy_lookup(tree, u128::from(a), 128),
                    _ => None,
                }?;
                LEGACY_CODES
                    .get(id)
                    .filter(|code| **code != "--")
                    .map(|code| code.to_string())
            }
            Db::Mmdb(reader) => reader
                .lookup::<maxminddb::geoip2::Country>(ip)
                .ok()
                .flatten()
                .and_then(|c| c.country.and_then(|c| c.iso_code))
                .map(str::to_ascii_uppercase),
        })
    }
}

/// Whether `needle` occurs in the last 128 KiB of `haystack`, where a MaxMind DB keeps its
/// metadata.
fn memchr_last(haystack: &[u8], needle: &[u8]) -> bool {
    let tail = &haystack[haystack.len().saturating_sub(128 * 1024)..];
    tail.windows(needle.len()).rev().any(|w| w == needle)
}

/// Test data: databases written in both formats, with the countries of given networks.
#[cfg(test)]
pub(crate) mod write {
    /// A legacy IPv4 country edition mapping each `(network, prefix length, country id)`.
    pub(crate) fn legacy_v4(networks: &[(std::net::Ipv4Addr, u32, u32)]) -> Vec<u8> {
        // Nodes as pairs of records; a record is a node index or COUNTRY_BEGIN + id (0: none).
        let none = super::COUNTRY_BEGIN;
        let mut nodes: Vec<[u32; 2]> = vec![[none, none]];
        for &(net, len, id) in networks {
            let bits = u32::from(net);
            let mut node = 0usize;
            for level in 0..len {
                let bit = ((bits >> (31 - level)) & 1) as usize;
                if level + 1 == len {
                    nodes[node][bit] = super::COUNTRY_BEGIN + id;
                } else {
                    if nodes[node][bit] >= none {
                        nodes.push([none, none]);
                        nodes[node][bit] = (nodes.len() - 1) as u32;
                    }
                    node = nodes[node][bit] as usize;
                }
            }
        }
        let mut out = Vec::new();
        for pair in nodes {
            for record in pair {
                out.extend_from_slice(&record.to_le_bytes()[..3]);
            }
        }
        // Structure info: the marker, then the database type.
        out.extend_from_slice(&[0xff, 0xff, 0xff, super::COUNTRY_EDITION]);
        out
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 29);
        out.push(0x40 | s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    /// A uint16 (type 5, two bytes) or uint32 (type 6, four bytes).
    fn uint(out: &mut Vec<u8>, type_bits: u8, value: u32) {
        let bytes = value.to_be_bytes();
        let size = if type_bits == 5 { 2 } else { 4 };
        out.push(type_bits << 5 | size as u8);
        out.extend_from_slice(&bytes[4 - size..]);
    }

    /// A MaxMind DB (IPv4 tree, 24-bit records) where `network/len` is in `country`.
    pub(crate) fn mmdb_v4(network: std::net::Ipv4Addr, len: u32, country: &str) -> Vec<u8> {
        let node_count = len;
        let bits = u32::from(network);
        let mut out = Vec::new();
        for level in 0..len {
            let bit = (bits >> (31 - level)) & 1;
            let down = if level + 1 == len {
                node_count + 16 // the data section's first record
            } else {
                level + 1
            };
            let (left, right) = if bit == 0 {
                (down, node_count)
            } else {
                (node_count, down)
            };
            out.extend_from_slice(&left.to_be_bytes()[1..]);
            out.extend_from_slice(&right.to_be_bytes()[1..]);
        }
        out.extend_from_slice(&[0; 16]);
        // {"country": {"iso_code": COUNTRY}}
        out.push(0xe1);
        string(&mut out, "country");
        out.push(0xe1);
        string(&mut out, "iso_code");
        string(&mut out, country);
        out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
        out.push(0xe0 | 9);
        string(&mut out, "binary_format_major_version");
        uint(&mut out, 5, 2);
        string(&mut out, "binary_format_minor_version");
        uint(&mut out, 5, 0);
        string(&mut out, "build_epoch");
        out.extend_from_slice(&[0x08, 0x02, 0, 0, 0, 0, 0, 0, 0, 1]);
        string(&mut out, "database_type");
        string(&mut out, "Test-Country");
        string(&mut out, "description");
        out.push(0xe0);
        string(&mut out, "ip_version");
        uint(&mut out, 5, 4);
        string(&mut out, "languages");
        out.extend_from_slice(&[0x00, 0x04]);
        string(&mut out, "node_count");
        uint(&mut out, 6, node_count);
        string(&mut out, "record_size");
        uint(&mut out, 5, 24);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn geo_of(bytes: Vec<u8>) -> Geo {
        let path = std::env::temp_dir().join(format!(
            "proxyfleet-geo-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::write(&path, bytes).unwrap();
        let geo = Geo::open(std::slice::from_ref(&path)).unwrap();
        let _ = std::fs::remove_file(&path);
        geo
    }

    #[test]
    fn a_legacy_country_file_names_countries() {
        // DE is id 56, US 225, JP 111 in the legacy table.
        assert_eq!(
            (LEGACY_CODES[56], LEGACY_CODES[225], LEGACY_CODES[111]),
            ("DE", "US", "JP")
        );
        let geo = geo_of(write::legacy_v4(&[
            (Ipv4Addr::new(127, 0, 0, 0), 8, 56),
            (Ipv4Addr::new(10, 1, 0, 0), 16, 225),
        ]));
        let at = |a, b, c, d| geo.country(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        assert_eq!(at(127, 0, 0, 9).as_deref(), Some("DE"));
        assert_eq!(at(10, 1, 200, 3).as_deref(), Some("US"));
        assert_eq!(at(10, 2, 0, 1), None);
        assert_eq!(at(192, 0, 2, 1), None);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(geo.country(mapped).as_deref(), Some("DE"));
        assert_eq!(geo.country("2001:db8::1".parse().unwrap()), None);
    }

    #[test]
    fn a_maxmind_db_names_countries() {
        let geo = geo_of(write::mmdb_v4(Ipv4Addr::new(127, 0, 0, 0), 8, "NL"));
        assert_eq!(
            geo.country("127.1.2.3".parse().unwrap()).as_deref(),
            Some("NL")
        );
        assert_eq!(geo.country("128.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn debians_database_where_installed() {
        let geo = Geo::open(&[]).unwrap();
        if !std::path::Path::new(DEBIAN_FILES[0]).exists() {
            assert!(
                geo.is_empty(),
                "nothing is found where nothing is installed"
            );
            return;
        }
        // Addresses whose country has long been stable: Google's public DNS, RIPE NCC.
        assert_eq!(
            geo.country("8.8.8.8".parse().unwrap()).as_deref(),
            Some("US")
        );
        assert_eq!(
            geo.country("193.0.6.139".parse().unwrap()).as_deref(),
            Some("NL")
        );
        assert_eq!(geo.country("127.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn files_that_are_no_database_are_refused_by_name() {
        let path = std::env::temp_dir().join(format!("proxyfleet-geo-bad-{}", std::process::id()));
        std::fs::write(&path, b"not a database\xff\xff\xff\x02").unwrap();
        let e = Geo::open(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("type 2"),
            "{e}"
        );
        let _ = std::fs::remove_file(&path);
        let missing = Geo::open(&[PathBuf::from("/nonexistent/GeoIP.dat")]).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/GeoIP.dat"));
    }
}
