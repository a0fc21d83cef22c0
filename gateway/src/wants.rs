//! What a client asks of its upstream, from its username (`USER-session-ID-country-DE...`) and
//! the listener's defaults. Pure.

use proxyfleet_common::text::shorten;
use proxyfleet_proto::v1 as pb;

use crate::choose::Upstream;

/// The protocols by the names users write, in the order error messages list them.
const PROTOCOLS: [(&str, pb::Protocol); 6] = [
    ("http", pb::Protocol::Http),
    ("https", pb::Protocol::Https),
    ("socks4", pb::Protocol::Socks4),
    ("socks4a", pb::Protocol::Socks4a),
    ("socks5", pb::Protocol::Socks5),
    ("socks5h", pb::Protocol::Socks5h),
];

/// The anonymity levels by the names users write, weakest first.
const ANONYMITIES: [(&str, pb::Anonymity); 3] = [
    ("transparent", pb::Anonymity::Transparent),
    ("anonymous", pb::Anonymity::Anonymous),
    ("elite", pb::Anonymity::Elite),
];

/// Longest session id a username may carry.
const MAX_SESSION_LEN: usize = 64;

/// How much of a bad value an error quotes.
const QUOTED: usize = 40;

/// The option keys of a username, in the order the format lists them.
const KEYS: [&str; 5] = ["session", "country", "protocol", "anonymity", "maxlatency"];

/// What a client asks of its upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wants {
    /// Sticky session key, if any.
    pub session: Option<String>,
    /// Any of these protocols (empty: any).
    pub protocols: Vec<pb::Protocol>,
    /// At least this (Unknown: any).
    pub min_anonymity: pb::Anonymity,
    /// At most this recent average latency, in milliseconds (None: any).
    pub max_latency_ms: Option<u32>,
    /// Upper case; None: any. An upstream with no country never matches a country.
    pub country: Option<String>,
}

impl Wants {
    /// Whether `u` gives what is asked; the session plays no part.
    pub fn passes(&self, u: &Upstream) -> bool {
        (self.protocols.is_empty() || self.protocols.contains(&u.protocol))
            && u.anonymity as i32 >= self.min_anonymity as i32
            && self
                .max_latency_ms
                .is_none_or(|max| u.latency_avg_ms <= max)
            && self
                .country
                .as_deref()
                .is_none_or(|c| !u.country.is_empty() && u.country.eq_ignore_ascii_case(c))
    }

    /// This client's asks over the listener's defaults: each field the client gives wins.
    pub fn over(self, defaults: &Wants) -> Wants {
        Wants {
            session: self.session.or_else(|| defaults.session.clone()),
            protocols: if self.protocols.is_empty() {
                defaults.protocols.clone()
            } else {
                self.protocols
            },
            min_anonymity: if self.min_anonymity == pb::Anonymity::Unknown {
                defaults.min_anonymity
            } else {
                self.min_anonymity
            },
            max_latency_ms: self.max_latency_ms.or(defaults.max_latency_ms),
            country: self.country.or_else(|| defaults.country.clone()),
        }
    }

    /// Sets option `key` to `value`, or says what `key` takes.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "session" => self.session = Some(session(value)?),
            "country" => self.country = Some(country(value)?),
            "protocol" => self.protocols = protocols(value)?,
            "anonymity" => self.min_anonymity = anonymity(value)?,
            "maxlatency" => self.max_latency_ms = Some(max_latency(value)?),
            _ => {
                return Err(format!(
                    "unknown option {:?}: expected one of {}",
                    shorten(key, QUOTED),
                    KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The user name a scheme is known by, such as `socks5h`.
pub fn protocol_name(protocol: pb::Protocol) -> &'static str {
    PROTOCOLS
        .iter()
        .find(|(_, p)| *p == protocol)
        .map_or("unknown", |(name, _)| name)
}

/// A username with options: `USER[-session-ID][-country-CC][-protocol-P[+P...]][-anonymity-A][-maxlatency-MS]`,
/// keys in any order, each at most once. Returns the base user (what the password is checked
/// against) and the options. Keys: session (1–64 of [A-Za-z0-9_]), country (2 letters), protocol
/// (http, https, socks4, socks4a, socks5, socks5h; several joined by `+`), anonymity (transparent,
/// anonymous, elite), maxlatency (milliseconds). The base user is everything before the first
/// `-KEY-` of a known key, so base users may contain `-`. An error names the key and what it takes.
///
/// Keys are lower case; values are read in any case (a country comes back upper case).
pub fn parse_username(name: &str) -> Result<(String, Wants), String> {
    let start = KEYS
        .iter()
        .filter_map(|key| name.find(&format!("-{key}-")))
        .min();
    let Some(start) = start else {
        return Ok((name.to_string(), Wants::default()));
    };
    let (base, options) = name.split_at(start);
    // No value holds a '-', so after the base the words alternate key, value.
    let words: Vec<&str> = options[1..].split('-').collect();
    let mut wants = Wants::default();
    let mut given: Vec<&str> = Vec::new();
    for pair in words.chunks(2) {
        let key = pair[0];
        let Some(value) = pair.get(1) else {
            return Err(if KEYS.contains(&key) {
                format!("option {key} has no value: {}", takes(key))
            } else {
                format!(
                    "unknown option {:?}: expected one of {}",
                    shorten(key, QUOTED),
                    KEYS.join(", ")
                )
            });
        };
        if given.contains(&key) {
            return Err(format!("option {key} is given twice"));
        }
        wants.set(key, value)?;
        given.push(key);
    }
    Ok((base.to_string(), wants))
}

/// Listener defaults from a flag such as `country=DE,protocol=socks5+http,anonymity=elite,maxlatency=800`
/// (`session` not allowed there). An error names the key.
pub fn parse_defaults(spec: &str) -> Result<Wants, String> {
    let mut wants = Wants::default();
    let mut given: Vec<&str> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!(
                "{:?} is not key=value: expected one of country, protocol, anonymity, maxlatency",
                shorten(entry, QUOTED)
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "session" {
            return Err(
                "session is not a default: each client names its own, in its username".to_string(),
            );
        }
        if given.contains(&key) {
            return Err(format!("{key} is given twice"));
        }
        wants.set(key, value)?;
        given.push(key);
    }
    Ok(wants)
}

/// What an option takes, for error messages.
fn takes(key: &str) -> String {
    match key {
        "session" => {
            format!("session takes 1 to {MAX_SESSION_LEN} letters, digits or underscores")
        }
        "country" => "country takes a two-letter country code, such as DE".to_string(),
        "protocol" => format!(
            "protocol takes {}, several joined by +",
            PROTOCOLS.map(|(name, _)| name).join(", ")
        ),
        "anonymity" => format!(
            "anonymity takes {}",
            ANONYMITIES.map(|(name, _)| name).join(", ")
        ),
        "maxlatency" => "maxlatency takes milliseconds, a whole number from 1".to_string(),
        _ => String::new(),
    }
}

/// `takes(key)` and the value that did not fit.
fn refused(key: &str, value: &str) -> String {
    format!("{}; got {:?}", takes(key), shorten(value, QUOTED))
}

fn session(value: &str) -> Result<String, String> {
    let fits = (1..=MAX_SESSION_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if fits {
        Ok(value.to_string())
    } else {
        Err(refused("session", value))
    }
}

fn country(value: &str) -> Result<String, String> {
    if value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(value.to_ascii_uppercase())
    } else {
        Err(refused("country", value))
    }
}

fn protocols(value: &str) -> Result<Vec<pb::Protocol>, String> {
    let mut out = Vec::new();
    for name in value.split('+') {
        let protocol = PROTOCOLS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
            .ok_or_else(|| refused("protocol", name))?;
        if !out.contains(&protocol) {
            out.push(protocol);
        }
    }
    Ok(out)
}

fn anonymity(value: &str) -> Result<pb::Anonymity, String> {
    ANONYMITIES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(value))
        .map(|(_, a)| *a)
        .ok_or_else(|| refused("anonymity", value))
}

fn max_latency(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(ms) if ms > 0 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(ms),
        _ => Err(refused("maxlatency", value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(
        protocol: pb::Protocol,
        anonymity: pb::Anonymity,
        latency: u32,
        country: &str,
    ) -> Upstream {
        Upstream {
            key: "http://10.0.0.1:8080".to_string(),
            protocol,
            host: "10.0.0.1".to_string(),
            port: 8080,
            auth: None,
            latency_avg_ms: latency,
            anonymity,
            country: country.to_string(),
            score: 50.0,
        }
    }

    fn parsed(name: &str) -> (String, Wants) {
        parse_username(name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn refusal(name: &str) -> String {
        match parse_username(name) {
            Ok(got) => panic!("{name} was accepted as {got:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn nothing_asked_passes_everything() {
        let any = Wants::default();
        for (_, protocol) in PROTOCOLS {
            assert!(any.passes(&upstream(protocol, pb::Anonymity::Unknown, 0, "")));
        }
        assert!(any.passes(&upstream(
            pb::Protocol::Socks5,
            pb::Anonymity::Elite,
            u32::MAX,
            "DE"
        )));
    }

    #[test]
    fn protocols_filter_by_any_of() {
        let wants = Wants {
            protocols: vec![pb::Protocol::Socks5, pb::Protocol::Http],
            ..Wants::default()
        };
        let a = pb::Anonymity::Elite;
        assert!(wants.passes(&upstream(pb::Protocol::Socks5, a, 1, "")));
        assert!(wants.passes(&upstream(pb::Protocol::Http, a, 1, "")));
        assert!(!wants.passes(&upstream(pb::Protocol::Https, a, 1, "")));
        assert!(!wants.passes(&upstream(pb::Protocol::Socks5h, a, 1, "")));
    }

    #[test]
    fn anonymity_is_a_floor_in_order_unknown_transparent_anonymous_elite() {
        let order = [
            pb::Anonymity::Unknown,
            pb::Anonymity::Transparent,
            pb::Anonymity::Anonymous,
            pb::Anonymity::Elite,
        ];
        for (i, floor) in order.iter().enumerate() {
            let wants = Wants {
                min_anonymity: *floor,
                ..Wants::default()
            };
            for (j, level) in order.iter().enumerate() {
                let u = upstream(pb::Protocol::Http, *level, 1, "");
                assert_eq!(
                    wants.passes(&u),
                    j >= i,
                    "{level:?} against floor {floor:?}"
                );
            }
        }
    }

    #[test]
    fn latency_is_a_ceiling_inclusive() {
        let wants = Wants {
            max_latency_ms: Some(800),
            ..Wants::default()
        };
        let a = pb::Anonymity::Elite;
        assert!(wants.passes(&upstream(pb::Protocol::Http, a, 0, "")));
        assert!(wants.passes(&upstream(pb::Protocol::Http, a, 800, "")));
        assert!(!wants.passes(&upstream(pb::Protocol::Http, a, 801, "")));
    }

    #[test]
    fn country_matches_only_a_known_country() {
        let wants = Wants {
            country: Some("DE".to_string()),
            ..Wants::default()
        };
        let a = pb::Anonymity::Elite;
        assert!(wants.passes(&upstream(pb::Protocol::Http, a, 1, "DE")));
        assert!(wants.passes(&upstream(pb::Protocol::Http, a, 1, "de")));
        assert!(!wants.passes(&upstream(pb::Protocol::Http, a, 1, "FR")));
        assert!(!wants.passes(&upstream(pb::Protocol::Http, a, 1, "")));
    }

    #[test]
    fn every_filter_must_pass() {
        let wants = Wants {
            session: Some("s".to_string()),
            protocols: vec![pb::Protocol::Socks5],
            min_anonymity: pb::Anonymity::Anonymous,
            max_latency_ms: Some(500),
            country: Some("NL".to_string()),
        };
        let good = upstream(pb::Protocol::Socks5, pb::Anonymity::Elite, 400, "NL");
        assert!(wants.passes(&good));
        let mut u = good.clone();
        u.protocol = pb::Protocol::Http;
        assert!(!wants.passes(&u));
        let mut u = good.clone();
        u.anonymity = pb::Anonymity::Transparent;
        assert!(!wants.passes(&u));
        let mut u = good.clone();
        u.latency_avg_ms = 501;
        assert!(!wants.passes(&u));
        let mut u = good;
        u.country = "BE".to_string();
        assert!(!wants.passes(&u));
    }

    #[test]
    fn a_plain_username_asks_nothing() {
        assert_eq!(parsed("alice"), ("alice".to_string(), Wants::default()));
        assert_eq!(parsed(""), (String::new(), Wants::default()));
        assert_eq!(parsed("a-b-c"), ("a-b-c".to_string(), Wants::default()));
        // A key word without the dashes around it is part of the user.
        assert_eq!(
            parsed("bob-session"),
            ("bob-session".to_string(), Wants::default())
        );
        assert_eq!(
            parsed("sessioncountry"),
            ("sessioncountry".to_string(), Wants::default())
        );
    }

    #[test]
    fn every_option_is_read() {
        let (user, wants) = parsed(
            "alice-session-Ab_9-country-de-protocol-socks5+HTTP-anonymity-Elite-maxlatency-800",
        );
        assert_eq!(user, "alice");
        assert_eq!(
            wants,
            Wants {
                session: Some("Ab_9".to_string()),
                protocols: vec![pb::Protocol::Socks5, pb::Protocol::Http],
                min_anonymity: pb::Anonymity::Elite,
                max_latency_ms: Some(800),
                country: Some("DE".to_string()),
            }
        );
    }

    #[test]
    fn options_come_in_any_order() {
        let (user, wants) = parsed("u-maxlatency-5-anonymity-anonymous-session-x-protocol-https");
        assert_eq!(user, "u");
        assert_eq!(wants.max_latency_ms, Some(5));
        assert_eq!(wants.min_anonymity, pb::Anonymity::Anonymous);
        assert_eq!(wants.session.as_deref(), Some("x"));
        assert_eq!(wants.protocols, vec![pb::Protocol::Https]);
        assert_eq!(wants.country, None);
    }

    #[test]
    fn base_users_may_hold_dashes() {
        let (user, wants) = parsed("team-blue-eu-session-42");
        assert_eq!(user, "team-blue-eu");
        assert_eq!(wants.session.as_deref(), Some("42"));
        let (user, wants) = parsed("my-sessions-country-FR");
        assert_eq!(user, "my-sessions");
        assert_eq!(wants.country.as_deref(), Some("FR"));
        // The first known key ends the user, wherever the others are.
        let (user, wants) = parsed("x-y-country-FR-session-s1");
        assert_eq!(user, "x-y");
        assert_eq!(wants.session.as_deref(), Some("s1"));
    }

    #[test]
    fn every_protocol_name_is_known_and_repeats_are_dropped() {
        let (_, wants) = parsed("u-protocol-http+https+socks4+socks4a+socks5+socks5h+http");
        assert_eq!(wants.protocols, PROTOCOLS.map(|(_, p)| p).to_vec());
        for (name, protocol) in PROTOCOLS {
            assert_eq!(protocol_name(protocol), name);
        }
    }

    #[test]
    fn repeated_keys_are_refused() {
        let e = refusal("u-session-a-session-b");
        assert!(e.contains("session") && e.contains("twice"), "{e}");
        let e = refusal("u-country-DE-protocol-http-country-FR");
        assert!(e.contains("country") && e.contains("twice"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let cases = [
            ("u-session-", "session"),
            ("u-session-a.b", "session"),
            ("u-session-é", "session"),
            (&format!("u-session-{}", "a".repeat(65)), "session"),
            ("u-country-DEU", "country"),
            ("u-country-D1", "country"),
            ("u-country-", "country"),
            ("u-protocol-ftp", "protocol"),
            ("u-protocol-http+", "protocol"),
            ("u-protocol-", "protocol"),
            ("u-anonymity-high", "anonymity"),
            ("u-anonymity-unknown", "anonymity"),
            ("u-maxlatency-0", "maxlatency"),
            ("u-maxlatency-fast", "maxlatency"),
            ("u-maxlatency-+5", "maxlatency"),
            ("u-maxlatency-99999999999", "maxlatency"),
            ("u-country-DE-maxlatency", "maxlatency"),
        ];
        for (name, key) in cases {
            let e = refusal(name);
            assert!(e.contains(key), "{name}: {e}");
        }
        // The longest session id fits.
        let longest = "a".repeat(64);
        assert_eq!(
            parsed(&format!("u-session-{longest}")).1.session,
            Some(longest)
        );
    }

    #[test]
    fn words_after_the_options_must_be_options() {
        let e = refusal("u-session-a-extra");
        assert!(e.contains("extra") && e.contains("session, country"), "{e}");
        let e = refusal("u-session-a-colour-red");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn the_client_wins_over_the_defaults_field_by_field() {
        let defaults =
            parse_defaults("country=DE,protocol=socks5+http,anonymity=elite,maxlatency=800")
                .unwrap();
        assert_eq!(Wants::default().over(&defaults), defaults);

        let (_, client) = parsed("u-country-FR-session-s");
        let merged = client.over(&defaults);
        assert_eq!(merged.country.as_deref(), Some("FR"));
        assert_eq!(merged.session.as_deref(), Some("s"));
        assert_eq!(merged.protocols, defaults.protocols);
        assert_eq!(merged.min_anonymity, pb::Anonymity::Elite);
        assert_eq!(merged.max_latency_ms, Some(800));

        let (_, client) = parsed("u-protocol-https-anonymity-transparent-maxlatency-2000");
        let merged = client.clone().over(&defaults);
        assert_eq!(merged.protocols, vec![pb::Protocol::Https]);
        assert_eq!(merged.min_anonymity, pb::Anonymity::Transparent);
        assert_eq!(merged.max_latency_ms, Some(2000));
        assert_eq!(merged.country.as_deref(), Some("DE"));

        assert_eq!(
            client.clone().over(&Wants::default()),
            client,
            "no defaults leave the client's asks"
        );
    }

    #[test]
    fn defaults_are_read_and_checked() {
        assert_eq!(parse_defaults("").unwrap(), Wants::default());
        let wants = parse_defaults(" country = nl , anonymity=anonymous ,").unwrap();
        assert_eq!(wants.country.as_deref(), Some("NL"));
        assert_eq!(wants.min_anonymity, pb::Anonymity::Anonymous);
        assert_eq!(wants.protocols, vec![]);

        for (spec, key) in [
            ("session=abc", "session"),
            ("country=DE,country=FR", "country"),
            ("maxlatency=soon", "maxlatency"),
            ("protocol=gopher", "protocol"),
            ("anonymity=none", "anonymity"),
            ("speed=fast", "speed"),
            ("country", "country"),
        ] {
            let e = parse_defaults(spec).expect_err(spec);
            assert!(e.contains(key), "{spec}: {e}");
        }
    }
}
