//! Proxy candidates: reading them out of a list (plain lines, an HTML table page or a JSON API
//! response), normalizing, deduplicating, refusing private targets.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value};

/// Longest line accepted in a candidate list; a longer one is rejected on its own.
pub(crate) const MAX_LINE_LEN: usize = 2048;

/// Most rejected entries a [`ParsedList`] keeps. Past it they are only counted, so a source
/// that is all garbage cannot make the report larger than a screenful per thousand lines.
pub(crate) const MAX_REJECTED_KEPT: usize = 1000;

/// How a worker talks to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Https,
    Socks4,
    Socks4a,
    Socks5,
    Socks5h,
}

impl Protocol {
    pub(crate) const ALL: [Protocol; 6] = [
        Protocol::Http,
        Protocol::Https,
        Protocol::Socks4,
        Protocol::Socks4a,
        Protocol::Socks5,
        Protocol::Socks5h,
    ];

    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Socks4 => "socks4",
            Protocol::Socks4a => "socks4a",
            Protocol::Socks5 => "socks5",
            Protocol::Socks5h => "socks5h",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Protocol::ALL
            .into_iter()
            .find(|p| p.scheme() == lower)
            .ok_or_else(|| {
                format!("unknown protocol {s:?}: expected http, https, socks4, socks4a, socks5 or socks5h")
            })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// One proxy to check, normalized (lowercase scheme and host, IPv6 without brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Candidate {
    pub(crate) protocol: Protocol,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Username and password; boxed, as most candidates have none and a job may hold millions.
    pub(crate) auth: Option<Box<(String, String)>>,
}

impl Candidate {
    /// `scheme://host:port`, without credentials: what users see in results.
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", self.protocol, self.host_port())
    }

    pub(crate) fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL a client uses, credentials included; also the identity for deduplication (the
    /// same proxy with other credentials is another candidate).
    pub(crate) fn full_url(&self) -> String {
        match self.auth.as_deref() {
            Some((user, pass)) => format!("{}://{user}:{pass}@{}", self.protocol, self.host_port()),
            None => self.url(),
        }
    }
}

/// An entry of the list that was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    /// Line number, from 1; 0 when the source has no lines to speak of (a JSON document).
    pub(crate) line: u64,
    pub(crate) text: String,
    pub(crate) reason: String,
}

/// What came out of a list.
#[derive(Debug, Default)]
pub(crate) struct ParsedList {
    /// Every usable candidate once, in the order the source gives them.
    pub(crate) candidates: Vec<Candidate>,
    /// The first [`MAX_REJECTED_KEPT`] entries that were not usable, in source order.
    pub(crate) rejected: Vec<Rejected>,
    pub(crate) duplicates: u64,
    /// Every entry dropped, by why: "duplicate", "private address", "malformed", "bad port",
    /// "bad address", "unknown protocol", "cidr range" or "too long". Counts rejections past
    /// [`MAX_REJECTED_KEPT`] too.
    pub(crate) dropped: BTreeMap<&'static str, u64>,
    /// How many entries were rejected: `rejected.len()` plus those past [`MAX_REJECTED_KEPT`].
    pub(crate) rejected_total: u64,
}

/// Which targets a list may name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TargetPolicy {
    /// Loopback, private, link-local, multicast and unspecified addresses are allowed.
    pub(crate) allow_private: bool,
}

/// Why an entry was not used: the bucket it is counted in and a sentence for the user.
#[derive(Debug)]
struct Fault {
    kind: FaultKind,
    reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    TooLong,
    UnknownProtocol,
    Malformed,
    /// An address with nothing after it: the port may be the next word (`1.2.3.4 8080`).
    NoPort,
    BadPort,
    BadAddress,
    PrivateAddress,
    Cidr,
}

impl FaultKind {
    /// The key in [`ParsedList::dropped`].
    fn label(self) -> &'static str {
        match self {
            FaultKind::TooLong => "too long",
            FaultKind::UnknownProtocol => "unknown protocol",
            FaultKind::Malformed | FaultKind::NoPort => "malformed",
            FaultKind::BadPort => "bad port",
            FaultKind::BadAddress => "bad address",
            FaultKind::PrivateAddress => "private address",
            FaultKind::Cidr => "cidr range",
        }
    }
}

impl Fault {
    fn new(kind: FaultKind, reason: impl Into<String>) -> Self {
        Fault {
            kind,
            reason: reason.into(),
        }
    }
}

/// Tells the candidates a list already holds from new ones, by value (the same proxy with other
/// credentials is another candidate), without building their URLs.
#[derive(Default)]
pub(crate) struct Seen {
    /// Hash of each candidate of the list, with the index of the first that had it.
    by_hash: HashMap<u64, u32>,
    /// Candidates of the list whose hash another, different candidate had first (rare).
    collided: HashSet<Candidate>,
    hasher: std::hash::RandomState,
}

impl Seen {
    /// What `list`, already free of repeats, holds.
    pub(crate) fn of(list: &[Candidate]) -> Seen {
        let mut seen = Seen::default();
        for (i, candidate) in list.iter().enumerate() {
            seen.first_time(&list[..i], candidate);
        }
        seen
    }

    /// Whether `candidate`, about to be pushed at the end of `list`, is not in it yet.
    pub(crate) fn first_time(&mut self, list: &[Candidate], candidate: &Candidate) -> bool {
        use std::collections::hash_map::Entry;
        use std::hash::BuildHasher;
        match self.by_hash.entry(self.hasher.hash_one(candidate)) {
            Entry::Vacant(slot) => {
                slot.insert(list.len() as u32);
                true
            }
            Entry::Occupied(first) => {
                list[*first.get() as usize] != *candidate && self.collided.insert(candidate.clone())
            }
        }
    }
}

/// Builds a [`ParsedList`] entry by entry, whatever the format: drops repeats and keeps only the
/// first [`MAX_REJECTED_KEPT`] rejections.
#[derive(Default)]
struct Collector {
    list: ParsedList,
    seen: Seen,
}

impl Collector {
    fn take(&mut self, line: u64, text: &str, outcome: Result<Vec<Candidate>, Fault>) {
        match outcome {
            Ok(candidates) => {
                for candidate in candidates {
                    if self.seen.first_time(&self.list.candidates, &candidate) {
                        self.list.candidates.push(candidate);
                    } else {
                        self.list.duplicates += 1;
                        self.count("duplicate");
                    }
                }
            }
            Err(fault) => {
                self.count(fault.kind.label());
                self.list.rejected_total += 1;
                if self.list.rejected.len() < MAX_REJECTED_KEPT {
                    self.list.rejected.push(Rejected {
                        line,
                        text: shorten(text.trim()),
                        reason: fault.reason,
                    });
                }
            }
        }
    }

    fn count(&mut self, label: &'static str) {
        *self.list.dropped.entry(label).or_default() += 1;
    }
}

/// Parses every line; blank lines and comments (`#`, `//`) are skipped. Numbers come with the lines.
pub(crate) fn parse_list<'a>(
    lines: impl IntoIterator<Item = (u64, &'a str)>,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> ParsedList {
    let mut found = Collector::default();
    for (line, text) in lines {
        found.take(line, text, parse_text_line(text, default_protocols, policy));
    }
    found.list
}

/// Reads the candidates out of a downloaded list, whatever its shape: a JSON document (arrays of
/// `{"ip": .., "port": ..}` objects or of `"ip:port"` strings, however nested), an HTML page
/// (ip and port cells of table rows, `ip:port` in the text), or plain lines as [`parse_list`]
/// takes them. In a page or a document only what looks like a proxy and is invalid is
/// rejected; prose and markup are not reported.
pub(crate) fn parse_source(
    text: &str,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> ParsedList {
    // A byte-order mark is not part of the first entry; it is stripped but keeps line numbers.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if (trimmed.starts_with('[') || trimmed.starts_with('{'))
        && let Ok(document) = serde_json::from_str::<Value>(trimmed)
    {
        let mut found = Collector::default();
        read_json(&document, &mut found, default_protocols, policy);
        return found.list;
    }
    // A page without a table (an error page, a `<pre>` list) is HTML too: read as lines, its
    // every line of markup would be reported.
    let page = ["<!doctype", "<html"].iter().any(|start| {
        trimmed
            .get(..start.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(start))
    });
    if page || contains_ignore_case(text, "<tr") || contains_ignore_case(text, "<td") {
        return parse_html(text, default_protocols, policy);
    }
    parse_list((1..).zip(text.lines()), default_protocols, policy)
}

/// How many candidates the sources of one job may still add. Shared by their readers, so sources
/// read at once hold together no more candidates than the job may check.
#[derive(Debug, Clone)]
pub(crate) struct CandidateBudget(Arc<AtomicUsize>);

impl CandidateBudget {
    pub(crate) fn new(candidates: usize) -> CandidateBudget {
        CandidateBudget(Arc::new(AtomicUsize::new(candidates)))
    }

    /// Takes `n`, if that many are left.
    fn take(&self, n: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.0.fetch_add(n, Ordering::AcqRel);
    }
}

/// Bytes of a source looked at before its shape is decided: a JSON document or an HTML page
/// shows itself in its first bytes.
const SHAPE_WINDOW: usize = 64 * 1024;

/// Reads a source as its bytes arrive, so a list of any length costs memory for its candidates
/// and one line, not for its text. A JSON document or an HTML page (told by its first
/// [`SHAPE_WINDOW`] bytes) is kept whole and read by [`parse_source`] at the end; the fetcher's
/// size limit bounds it.
pub(crate) struct SourceReader {
    protocols: Vec<Protocol>,
    policy: TargetPolicy,
    /// What the job's sources may still add, shared with its other sources' readers.
    budget: Option<CandidateBudget>,
    /// Candidates of this reader taken from the budget.
    taken: usize,
    /// Why reading stopped before the end, if it did.
    stopped: Option<Stop>,
    shape: Shape,
    /// The line being read, up to [`MAX_LINE_LEN`] + 1 bytes of it.
    partial: Vec<u8>,
    /// Length of the line being read, all of it.
    partial_len: usize,
    /// Number of the line being read, from 1.
    line: u64,
    found: Collector,
}

enum Shape {
    /// The first bytes, until they tell.
    Undecided(Vec<u8>),
    /// Plain lines, read one by one.
    Lines,
    /// A JSON document, read as it arrives.
    Json(Box<JsonWalk>),
    /// An HTML page, kept whole up to [`MAX_PAGE_BYTES`].
    Page(Vec<u8>),
}

impl Drop for SourceReader {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.taken);
        }
    }
}

/// Largest HTML page read: proxy list pages are far smaller, and a page is read whole.
pub(crate) const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Why a source was not read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stop {
    /// The sources of a job hold more candidates than it may check (`--max-candidates`).
    #[error("the job's sources hold more candidates than it may check (--max-candidates)")]
    OverBudget,
    #[error("an HTML page larger than {MAX_PAGE_BYTES} bytes is not read")]
    PageTooLarge,
}

impl SourceReader {
    pub(crate) fn new(default_protocols: &[Protocol], policy: TargetPolicy) -> SourceReader {
        SourceReader {
            protocols: default_protocols.to_vec(),
            policy,
            budget: None,
            taken: 0,
            stopped: None,
            shape: Shape::Undecided(Vec::new()),
            partial: Vec::new(),
            partial_len: 0,
            line: 1,
            found: Collector::default(),
        }
    }

    /// Counts what this reader finds against `budget`.
    pub(crate) fn within(mut self, budget: CandidateBudget) -> SourceReader {
        self.budget = Some(budget);
        self
    }

    /// Forgets what was read: the source is read again from its start.
    pub(crate) fn restart(&mut self) {
        let budget = self.budget.take();
        if let Some(budget) = &budget {
            budget.give_back(std::mem::take(&mut self.taken));
        }
        *self = SourceReader::new(&self.protocols, self.policy);
        self.budget = budget;
    }

    /// Why reading more is pointless, once it is.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        self.stopped
    }

    /// Takes what was found since the last call from the budget.
    fn account(&mut self) {
        let Some(budget) = &self.budget else {
            return;
        };
        let found = self.found.list.candidates.len();
        if self.stopped.is_some() || found == self.taken {
            return;
        }
        if budget.take(found - self.taken) {
            self.taken = found;
        } else {
            self.stopped = Some(Stop::OverBudget);
        }
    }

    /// Takes the next bytes of the source.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        match &mut self.shape {
            Shape::Lines => self.lines(bytes),
            Shape::Json(walk) => walk.feed(bytes, &mut self.found, &self.protocols, self.policy),
            Shape::Page(page) => {
                page.extend_from_slice(bytes);
                if page.len() > MAX_PAGE_BYTES {
                    self.stopped = Some(Stop::PageTooLarge);
                    *page = Vec::new();
                }
            }
            Shape::Undecided(head) => {
                head.extend_from_slice(bytes);
                if head.len() >= SHAPE_WINDOW {
                    self.decide();
                }
            }
        }
        self.account();
    }

    /// The candidates of the whole source, or why it was not read to its end. Only a source read
    /// to its end keeps its share of the budget; a reader dropped otherwise gives it back.
    pub(crate) fn finish(mut self) -> Result<ParsedList, Stop> {
        if let Some(stop) = self.stopped {
            return Err(stop);
        }
        match std::mem::replace(&mut self.shape, Shape::Lines) {
            // Small enough to have stayed whole: read as a whole text is.
            Shape::Undecided(head) => {
                let text = String::from_utf8_lossy(&head);
                self.found.list = parse_source(&text, &self.protocols, self.policy);
            }
            Shape::Page(page) => {
                let text = String::from_utf8_lossy(&page);
                self.found.list = parse_source(&text, &self.protocols, self.policy);
            }
            Shape::Json(mut walk) => walk.finish(&mut self.found, &self.protocols, self.policy),
            Shape::Lines => {
                if self.partial_len > 0 {
                    self.end_line();
                }
            }
        }
        self.account();
        match self.stopped {
            Some(stop) => Err(stop),
            None => {
                self.taken = 0;
                Ok(std::mem::take(&mut self.found.list))
            }
        }
    }

    /// The first [`SHAPE_WINDOW`] bytes are in: a JSON document that parses so far is read as one,
    /// a page is kept whole, and anything else is lines.
    fn decide(&mut self) {
        let Shape::Undecided(head) = std::mem::replace(&mut self.shape, Shape::Lines) else {
            return;
        };
        let body = head.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&head);
        let text = String::from_utf8_lossy(body);
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') || trimmed.starts_with('{') {
            let mut walk = Box::new(JsonWalk::new());
            let mut found = Collector::default();
            walk.feed(body, &mut found, &self.protocols, self.policy);
            if !walk.failed {
                self.found = found;
                self.shape = Shape::Json(walk);
                return;
            }
        }
        // Markup first (a doctype, a comment, <head>, a table) is a page; no list starts so.
        let page = trimmed.starts_with('<')
            || contains_ignore_case(&text, "<tr")
            || contains_ignore_case(&text, "<td");
        if page {
            self.shape = Shape::Page(head);
        } else {
            let body = body.to_vec();
            self.lines(&body);
        }
    }

    fn lines(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.keep(&bytes[..end]);
            self.end_line();
            bytes = &bytes[end + 1..];
        }
        self.keep(bytes);
    }

    /// Adds to the line being read what fits of it.
    fn keep(&mut self, bytes: &[u8]) {
        let room = (MAX_LINE_LEN + 1).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.partial_len += bytes.len();
    }

    fn end_line(&mut self) {
        let raw = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
        let text = String::from_utf8_lossy(raw);
        let outcome = if self.partial_len > MAX_LINE_LEN + 1 {
            Err(Fault::new(
                FaultKind::TooLong,
                format!(
                    "line is {} bytes long; at most {MAX_LINE_LEN} are accepted",
                    self.partial_len
                ),
            ))
        } else {
            parse_text_line(&text, &self.protocols, self.policy)
        };
        self.found.take(self.line, &text, outcome);
        self.line += 1;
        self.partial.clear();
        self.partial_len = 0;
    }
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn shorten(text: &str) -> String {
    proxyfleet_common::text::shorten(text, 120)
}

/// Parses one line: `host:port` (one candidate per default protocol),
/// `scheme://[user:pass@]host:port`, or `host port`. What follows the entry after whitespace
/// (country, anonymity, a comment) is ignored. Blank lines and comments give no candidate.
pub(crate) fn parse_line(
    text: &str,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> Result<Vec<Candidate>, String> {
    parse_text_line(text, default_protocols, policy).map_err(|fault| fault.reason)
}

fn parse_text_line(
    text: &str,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> Result<Vec<Candidate>, Fault> {
    if text.len() > MAX_LINE_LEN {
        return Err(Fault::new(
            FaultKind::TooLong,
            format!(
                "line is {} bytes long; at most {MAX_LINE_LEN} are accepted",
                text.len()
            ),
        ));
    }
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') || text.starts_with("//") {
        return Ok(Vec::new());
    }
    let mut words = text.split_whitespace();
    let entry = words.next().unwrap_or_default();
    match (
        parse_entry(entry, None, default_protocols, policy),
        words.next(),
    ) {
        (Ok(candidates), _) => Ok(candidates),
        // `ip port`, as tables pasted into text files have it.
        (Err(fault), Some(port)) if fault.kind == FaultKind::NoPort && looks_like_port(port) => {
            parse_entry(entry, Some(port), default_protocols, policy)
        }
        (Err(fault), _) => Err(fault),
    }
}

/// Parses one entry, `[scheme://][user:pass@]host:port[/]`; with `port` given apart (the next
/// cell or word), `[scheme://][user:pass@]host` where an IPv6 host may go without brackets.
fn parse_entry(
    text: &str,
    port: Option<&str>,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> Result<Vec<Candidate>, Fault> {
    if text.len() > MAX_LINE_LEN {
        return Err(Fault::new(
            FaultKind::TooLong,
            format!(
                "entry is {} bytes long; at most {MAX_LINE_LEN} are accepted",
                text.len()
            ),
        ));
    }
    let (protocols, rest): (Vec<Protocol>, &str) = match text.split_once("://") {
        Some((scheme, rest)) => (
            vec![
                scheme
                    .parse::<Protocol>()
                    .map_err(|e| Fault::new(FaultKind::UnknownProtocol, e))?,
            ],
            rest,
        ),
        // An entry must be checked as something; plain HTTP is what a bare address most often is.
        None if default_protocols.is_empty() => (vec![Protocol::Http], text),
        None => (default_protocols.to_vec(), text),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (auth, host_port) = split_auth(rest)?;
    if is_cidr(host_port) {
        return Err(Fault::new(
            FaultKind::Cidr,
            "CIDR ranges are not supported; list addresses one per line",
        ));
    }
    let (host, port) = match port {
        Some(port) => (normalize_bare_host(host_port)?, parse_port(port)?),
        None => split_host_port(host_port)?,
    };
    check_target(&host, policy)?;
    Ok(protocols
        .into_iter()
        .map(|protocol| Candidate {
            protocol,
            host: host.clone(),
            port,
            auth: auth.clone().map(Box::new),
        })
        .collect())
}

/// A user name and password, as [`Candidate::auth`] holds them.
type Credentials = (String, String);

/// Splits `user:pass@` off; the password may hold ':' and '@', the user name neither.
fn split_auth(text: &str) -> Result<(Option<Credentials>, &str), Fault> {
    let Some((userinfo, host_port)) = text.rsplit_once('@') else {
        return Ok((None, text));
    };
    let (user, pass) = userinfo.split_once(':').ok_or_else(|| {
        Fault::new(
            FaultKind::Malformed,
            "credentials must be written user:password@",
        )
    })?;
    if user.is_empty() {
        return Err(Fault::new(
            FaultKind::Malformed,
            "empty user name before '@'",
        ));
    }
    Ok((Some((user.to_string(), pass.to_string())), host_port))
}

/// `10.0.0.0/24`, `[2001:db8::]/32`: a range where one address was expected.
fn is_cidr(text: &str) -> bool {
    let Some((address, bits)) = text.split_once('/') else {
        return false;
    };
    let address = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    !bits.is_empty() && bits.len() <= 3 && all_digits(bits) && IpAddr::from_str(address).is_ok()
}

fn split_host_port(text: &str) -> Result<(String, u16), Fault> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| {
            Fault::new(
                FaultKind::Malformed,
                "IPv6 address is missing its closing ']'",
            )
        })?;
        let port = after.strip_prefix(':').ok_or_else(|| {
            Fault::new(FaultKind::NoPort, "expected ':port' after the IPv6 address")
        })?;
        return Ok((normalize_ipv6(host)?, parse_port(port)?));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(Fault::new(
            FaultKind::NoPort,
            "expected host:port (no port given)",
        ));
    };
    if host.contains(':') {
        // Without brackets the last group of an IPv6 address cannot be told from a port; a
        // whole address is still usable when the port is the next word.
        let kind = if Ipv6Addr::from_str(text).is_ok() {
            FaultKind::NoPort
        } else {
            FaultKind::Malformed
        };
        return Err(Fault::new(
            kind,
            "IPv6 addresses must be written in brackets: [addr]:port",
        ));
    }
    Ok((normalize_host(host)?, parse_port(port)?))
}

fn parse_port(port: &str) -> Result<u16, Fault> {
    if !all_digits(port) || port.is_empty() {
        return Err(Fault::new(
            FaultKind::BadPort,
            format!("port {:?} is not a number", shorten(port)),
        ));
    }
    // Only overflow fails here, and an overflowing number is out of range all the same.
    let value: u64 = port.parse().unwrap_or(u64::MAX);
    if value == 0 || value > 65535 {
        return Err(Fault::new(
            FaultKind::BadPort,
            format!("port {} is out of range 1-65535", shorten(port)),
        ));
    }
    Ok(value as u16)
}

/// A host given apart from its port, where IPv6 needs no brackets.
fn normalize_bare_host(host: &str) -> Result<String, Fault> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return normalize_ipv6(inner);
    }
    if host.contains(':') {
        return normalize_ipv6(host);
    }
    normalize_host(host)
}

fn normalize_ipv6(host: &str) -> Result<String, Fault> {
    Ipv6Addr::from_str(host)
        .map(|ip| ip.to_string())
        .map_err(|_| {
            Fault::new(
                FaultKind::BadAddress,
                format!("{:?} is not an IPv6 address", shorten(host)),
            )
        })
}

fn normalize_host(host: &str) -> Result<String, Fault> {
    let bad = |reason: String| Fault::new(FaultKind::BadAddress, reason);
    if host.is_empty() {
        return Err(bad("empty host".into()));
    }
    if let Ok(ip) = Ipv4Addr::from_str(host) {
        return Ok(ip.to_string());
    }
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.len() > 253 {
        return Err(bad("host name longer than 253 characters".into()));
    }
    // `0x7f000001`, `0177.0.0.1` or `127.1` is an address to some readers and a name to others:
    // only the dotted quad is taken.
    if proxyfleet_common::url::ends_in_a_number(host) {
        return Err(bad(format!(
            "{host:?} is not a valid IPv4 address (write it as a plain dotted quad a.b.c.d)"
        )));
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(bad(format!("{:?} is not a valid host name", shorten(host))));
        }
    }
    Ok(host.to_string())
}

fn check_target(host: &str, policy: TargetPolicy) -> Result<(), Fault> {
    if policy.allow_private {
        return Ok(());
    }
    let private = match IpAddr::from_str(host) {
        Ok(ip) => is_private(ip),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    };
    if private {
        return Err(Fault::new(
            FaultKind::PrivateAddress,
            format!(
                "{host} is a loopback, private, link-local or multicast address; start the coordinator with --allow-private-targets to check such proxies"
            ),
        ));
    }
    Ok(())
}

pub(crate) use proxyfleet_common::addr::is_private;

fn all_digits(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

// Telling proxies from prose. In a page or a document a word is reported as a bad entry only
// when it is shaped like one; "Updated 12:30" or "v1.2" are not proxies and are not reported.

/// A cell or word that can only be a port: up to six digits, so 99999 is reported as out of
/// range while a timestamp is left alone.
fn looks_like_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 6 && all_digits(text)
}

/// Four dot-separated groups of up to three digits: an IPv4 address, valid or not.
fn looks_like_ipv4(text: &str) -> bool {
    let mut groups = 0;
    for group in text.split('.') {
        groups += 1;
        if group.is_empty() || group.len() > 3 || !all_digits(group) {
            return false;
        }
    }
    groups == 4
}

/// Dot-separated labels of letters, digits and dashes, the last with a letter in it.
fn looks_like_host_name(text: &str) -> bool {
    text.len() <= 253
        && text.contains('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && text
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// A host standing alone, its port in the next cell or word. Host names are only taken from
/// table cells: in prose, "example.com 2024" is not a proxy.
fn looks_like_host(text: &str, names: bool) -> bool {
    let host = text.split_once("://").map_or(text, |(_, rest)| rest);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    looks_like_ipv4(host)
        || (host.contains(':') && Ipv6Addr::from_str(host).is_ok())
        || (names && looks_like_host_name(host))
}

/// A word meant as one proxy: `host:port` with an address-like host, maybe with a scheme and
/// credentials, or a CIDR range.
fn looks_like_entry(word: &str) -> bool {
    if word.len() > MAX_LINE_LEN {
        return false;
    }
    let rest = word.split_once("://").map_or(word, |(_, rest)| rest);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let rest = rest
        .rsplit_once('@')
        .map_or(rest, |(_, host_port)| host_port);
    if is_cidr(rest) {
        return true;
    }
    if let Some(v6) = rest.strip_prefix('[') {
        return v6
            .split_once("]:")
            .is_some_and(|(_, port)| looks_like_port(port));
    }
    rest.rsplit_once(':').is_some_and(|(host, port)| {
        looks_like_port(port) && (looks_like_ipv4(host) || looks_like_host_name(host))
    })
}

/// Where an entry was found in a page or document: its text and, when the port stood apart
/// (the next cell or word), that port.
struct Spot<'a> {
    entry: &'a str,
    port: Option<&'a str>,
}

impl Spot<'_> {
    fn parse(
        &self,
        default_protocols: &[Protocol],
        policy: TargetPolicy,
    ) -> Result<Vec<Candidate>, Fault> {
        parse_entry(self.entry, self.port, default_protocols, policy)
    }

    fn text(&self) -> Cow<'_, str> {
        match self.port {
            Some(port) => Cow::Owned(format!("{} {port}", self.entry)),
            None => Cow::Borrowed(self.entry),
        }
    }
}

/// The entries in a row of cells (or a line of words): a host cell followed by a port cell, or
/// an entry-shaped word in a cell.
fn find_spots<'a>(cells: &[&'a str], names: bool) -> Vec<Spot<'a>> {
    let mut spots = Vec::new();
    let mut i = 0;
    while i < cells.len() {
        let cell = cells[i];
        if let Some(port) = cells.get(i + 1).copied()
            && looks_like_port(port)
            && looks_like_host(cell, names)
        {
            spots.push(Spot {
                entry: cell,
                port: Some(port),
            });
            i += 2;
            continue;
        }
        spots.extend(
            cell.split_whitespace()
                .map(trim_punctuation)
                .filter(|word| looks_like_entry(word))
                .map(|entry| Spot { entry, port: None }),
        );
        i += 1;
    }
    spots
}

/// Prose glues punctuation to words: "(1.2.3.4:8080)," is the proxy 1.2.3.4:8080.
fn trim_punctuation(word: &str) -> &str {
    word.trim_matches(|c: char| {
        matches!(
            c,
            ',' | ';' | '"' | '\'' | '(' | ')' | '<' | '>' | '`' | '|' | '{' | '}'
        )
    })
    .trim_end_matches('.')
}

/// Line numbers of byte offsets, for formats read as a whole rather than line by line.
pub(crate) struct LineStarts(Vec<usize>);

impl LineStarts {
    pub(crate) fn new(text: &str) -> Self {
        LineStarts(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// The line, from 1, that holds byte `offset`.
    pub(crate) fn line_of(&self, offset: usize) -> u64 {
        self.0.partition_point(|&newline| newline < offset) as u64 + 1
    }
}

// JSON: proxy APIs answer with arrays of objects or of strings, often under `data`,
// `proxies` or `list`; the walk takes any nesting.

const HOST_KEYS: [&str; 9] = [
    "ip",
    "host",
    "address",
    "addr",
    "ip_address",
    "ipaddress",
    "hostname",
    "server",
    "proxy",
];
/// Keys whose values must be protocols: an unknown one rejects the entry.
const PROTOCOL_KEYS: [&str; 2] = ["protocols", "protocol"];
/// Keys that name the protocol in some APIs and the anonymity level in others: a value that is
/// not a protocol is ignored.
const TYPE_KEYS: [&str; 3] = ["type", "types", "scheme"];
const USER_KEYS: [&str; 3] = ["username", "user", "login"];
const PASSWORD_KEYS: [&str; 3] = ["password", "pass", "passwd"];

fn read_json(
    value: &Value,
    found: &mut Collector,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) {
    match value {
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(text) => {
                        json_string_entries(text, found, default_protocols, policy)
                    }
                    other => read_json(other, found, default_protocols, policy),
                }
            }
        }
        Value::Object(fields) => match json_entry(fields, default_protocols, policy) {
            Some(outcome) => {
                let text = serde_json::to_string(fields).unwrap_or_default();
                found.take(0, &text, outcome);
            }
            None => {
                for child in fields.values() {
                    read_json(child, found, default_protocols, policy);
                }
            }
        },
        _ => {}
    }
}

/// The entries of a string in a JSON array: `"1.2.3.4:80"`, or several in one string.
fn json_string_entries(
    text: &str,
    found: &mut Collector,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) {
    let words: Vec<&str> = text.split_whitespace().collect();
    for spot in find_spots(&words, false) {
        found.take(0, &spot.text(), spot.parse(default_protocols, policy));
    }
}

/// Longest single JSON string or number read from a streamed document: longer is no entry, and
/// the parser would hold all of it.
const MAX_JSON_TOKEN: usize = 64 * 1024;
/// Values of one JSON field kept to tell whether its object is an entry (`"protocols": [..]`).
const MAX_JSON_FIELD_VALUES: usize = 16;
/// Longest field value kept: hosts, ports, protocol names and credentials are short.
const MAX_JSON_FIELD_TEXT: usize = 1024;

/// Whether a field of an object is one [`json_entry`] reads; the others are not kept.
fn entry_field(name: &str) -> bool {
    [
        &HOST_KEYS[..],
        &["port"],
        &PROTOCOL_KEYS,
        &TYPE_KEYS,
        &USER_KEYS,
        &PASSWORD_KEYS,
    ]
    .iter()
    .flat_map(|keys| keys.iter())
    .any(|key| key.eq_ignore_ascii_case(name))
}

/// A scalar short enough to keep for [`json_entry`].
fn short(value: &Value) -> bool {
    match value {
        Value::String(text) => text.len() <= MAX_JSON_FIELD_TEXT,
        Value::Array(_) | Value::Object(_) => false,
        _ => true,
    }
}

/// Reads a JSON document as its bytes arrive, as [`read_json`] reads a whole one: entries are
/// taken when their object ends, strings of arrays as they come. What it holds is the path from
/// the root to the value being read, with the scalar fields of the objects on it.
struct JsonWalk {
    parser: actson::JsonParser<actson::feeder::PushJsonFeeder>,
    /// The arrays and objects open, outermost first.
    frames: Vec<JsonFrame>,
    /// Bytes fed since the parser last finished a token.
    pending: usize,
    /// The document turned out malformed; the rest is not read.
    failed: bool,
    /// The input ended and every value in it is read.
    done: bool,
}

enum JsonFrame {
    /// An array; `copy` keeps its scalars when it is a field's value (`"protocols": [..]`).
    Array { copy: Option<Vec<Value>> },
    /// An object's scalar and array fields so far, and the name of the field being read.
    Object {
        fields: Map<String, Value>,
        key: Option<String>,
    },
}

impl JsonWalk {
    fn new() -> JsonWalk {
        let options = actson::options::JsonParserOptionsBuilder::default()
            .with_max_depth(256)
            // Values one after another (NDJSON) are read too.
            .with_streaming(true)
            .build();
        JsonWalk {
            parser: actson::JsonParser::new_with_options(
                actson::feeder::PushJsonFeeder::new(),
                options,
            ),
            frames: Vec::new(),
            pending: 0,
            failed: false,
            done: false,
        }
    }

    fn feed(
        &mut self,
        mut bytes: &[u8],
        found: &mut Collector,
        default_protocols: &[Protocol],
        policy: TargetPolicy,
    ) {
        while !bytes.is_empty() && !self.failed && !self.done {
            let n = self.parser.feeder.push_bytes(bytes);
            bytes = &bytes[n..];
            self.pending += n;
            self.drain(found, default_protocols, policy);
        }
    }

    /// The end of the source: whatever is still open is a document cut short.
    fn finish(
        &mut self,
        found: &mut Collector,
        default_protocols: &[Protocol],
        policy: TargetPolicy,
    ) {
        if self.done || self.failed {
            return;
        }
        self.parser.feeder.done();
        self.drain(found, default_protocols, policy);
        if !self.failed && !self.frames.is_empty() {
            self.fail(found, "the JSON document ends before it is complete".into());
        }
    }

    fn fail(&mut self, found: &mut Collector, reason: String) {
        self.failed = true;
        found.take(0, "", Err(Fault::new(FaultKind::Malformed, reason)));
    }

    fn drain(
        &mut self,
        found: &mut Collector,
        default_protocols: &[Protocol],
        policy: TargetPolicy,
    ) {
        use actson::JsonEvent;
        loop {
            let event = match self.parser.next_event() {
                Ok(Some(JsonEvent::NeedMoreInput)) => {
                    if self.pending > MAX_JSON_TOKEN {
                        self.fail(
                            found,
                            format!("a JSON value is longer than {MAX_JSON_TOKEN} bytes"),
                        );
                    }
                    return;
                }
                Ok(Some(event)) => event,
                Ok(None) => {
                    self.done = true;
                    return;
                }
                Err(e) => {
                    let at = self.parser.parsed_bytes();
                    self.fail(
                        found,
                        format!("the JSON document is malformed near byte {at}: {e}"),
                    );
                    return;
                }
            };
            self.pending = 0;
            let text = || self.parser.current_str().unwrap_or_default().to_string();
            match event {
                JsonEvent::StartObject => self.frames.push(JsonFrame::Object {
                    fields: Map::new(),
                    key: None,
                }),
                JsonEvent::EndObject => {
                    if let Some(JsonFrame::Object { fields, .. }) = self.frames.pop()
                        && let Some(outcome) = json_entry(&fields, default_protocols, policy)
                    {
                        let text = serde_json::to_string(&fields).unwrap_or_default();
                        found.take(0, &text, outcome);
                    }
                    self.value(None);
                }
                JsonEvent::StartArray => {
                    let field = matches!(
                        self.frames.last(),
                        Some(JsonFrame::Object { key: Some(name), .. }) if entry_field(name)
                    );
                    self.frames.push(JsonFrame::Array {
                        copy: field.then(Vec::new),
                    });
                }
                JsonEvent::EndArray => {
                    if let Some(JsonFrame::Array { copy }) = self.frames.pop() {
                        self.value(copy.map(Value::Array));
                    }
                }
                JsonEvent::FieldName => {
                    let name = text();
                    if let Some(JsonFrame::Object { key, .. }) = self.frames.last_mut() {
                        *key = Some(name);
                    }
                }
                JsonEvent::ValueString => {
                    let value = text();
                    if let Some(JsonFrame::Array { .. }) = self.frames.last() {
                        json_string_entries(&value, found, default_protocols, policy);
                    }
                    self.value(Some(Value::String(value)));
                }
                JsonEvent::ValueInt | JsonEvent::ValueFloat => {
                    let number = text().parse::<serde_json::Number>().ok();
                    self.value(number.map(Value::Number));
                }
                JsonEvent::ValueTrue => self.value(Some(Value::Bool(true))),
                JsonEvent::ValueFalse => self.value(Some(Value::Bool(false))),
                JsonEvent::ValueNull => self.value(Some(Value::Null)),
                JsonEvent::NeedMoreInput => {}
            }
        }
    }

    /// A value ended inside the innermost open array or object: kept where an entry may need it,
    /// and only there, so an object holds a few short fields whatever the document holds.
    fn value(&mut self, value: Option<Value>) {
        match self.frames.last_mut() {
            Some(JsonFrame::Object { fields, key }) => {
                if let (Some(name), Some(value)) = (key.take(), value)
                    && entry_field(&name)
                    && (short(&value) || value.is_array())
                {
                    fields.insert(name, value);
                }
            }
            Some(JsonFrame::Array { copy: Some(copy) }) => {
                if let Some(value) = value.filter(short)
                    && copy.len() < MAX_JSON_FIELD_VALUES
                {
                    copy.push(value);
                }
            }
            _ => {}
        }
    }
}

/// Looks a field up by any of its usual names, ignoring case.
fn field<'a>(fields: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|name| {
        fields
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// Strings of a field that holds one string or an array of them.
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The candidates of an object that describes one proxy, or `None` when it describes none
/// (a wrapper such as `{"data": [..]}`, metadata) and its fields are to be walked instead.
fn json_entry(
    fields: &Map<String, Value>,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> Option<Result<Vec<Candidate>, Fault>> {
    let host = field(fields, &HOST_KEYS)?.as_str()?.trim();
    let port = match field(fields, &["port"]) {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.trim().to_string()),
        _ => None,
    };
    // `{"host": "api.example.com"}` without a port is metadata, not a proxy; a host that
    // carries its own port (`"proxy": "1.2.3.4:8080"`) needs no port field.
    let port = if looks_like_entry(host) {
        None
    } else {
        Some(port?)
    };
    Some(json_candidates(
        fields,
        host,
        port.as_deref(),
        default_protocols,
        policy,
    ))
}

fn json_candidates(
    fields: &Map<String, Value>,
    host: &str,
    port: Option<&str>,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> Result<Vec<Candidate>, Fault> {
    let named = strings(field(fields, &PROTOCOL_KEYS));
    let mut protocols = named
        .iter()
        .map(|name| name.trim().parse::<Protocol>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Fault::new(FaultKind::UnknownProtocol, e))?;
    if protocols.is_empty() {
        protocols = strings(field(fields, &TYPE_KEYS))
            .iter()
            .filter_map(|name| name.trim().parse().ok())
            .collect();
    }
    let protocols = if protocols.is_empty() {
        default_protocols
    } else {
        &protocols
    };
    let mut candidates = parse_entry(host, port, protocols, policy)?;
    let user = field(fields, &USER_KEYS)
        .and_then(Value::as_str)
        .unwrap_or("");
    if !user.is_empty() {
        if user.contains(':') {
            return Err(Fault::new(
                FaultKind::Malformed,
                "user name contains ':'; it cannot be told from the password in a proxy URL",
            ));
        }
        let password = field(fields, &PASSWORD_KEYS)
            .and_then(Value::as_str)
            .unwrap_or("");
        for candidate in &mut candidates {
            candidate.auth = Some(Box::new((user.to_string(), password.to_string())));
        }
    }
    Ok(candidates)
}

// HTML: proxy sites publish tables, one proxy per row, address and port in neighbouring
// cells. No parser crate: tags are skipped, rows and cells are all that matters.

/// A step through an HTML document.
enum Markup<'a> {
    /// Text between tags, at a byte offset.
    Text(usize, &'a str),
    /// A tag that shapes a table, at a byte offset.
    Tag(usize, TagKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagKind {
    RowStart,
    /// `</tr>`, or a table starting or ending: the row is over either way.
    RowEnd,
    CellStart,
    CellEnd,
    /// `<br>`, `<p>`, `<div>`: words on both sides stay apart.
    Break,
    Other,
}

/// Splits a document into text and tags; skips comments, scripts and styles, whose text is not
/// shown (sites hide ports in scripts; they are not readable without running them).
struct MarkupSteps<'a> {
    doc: &'a str,
    /// `doc` in ASCII lowercase, same byte offsets: case-insensitive searches.
    lower: String,
    pos: usize,
}

impl<'a> MarkupSteps<'a> {
    fn new(doc: &'a str) -> Self {
        MarkupSteps {
            doc,
            lower: doc.to_ascii_lowercase(),
            pos: 0,
        }
    }

    /// Moves past the next `needle` (searched case-insensitively), or to the end.
    fn skip_past(&mut self, needle: &str) {
        self.pos = match self.lower[self.pos..].find(needle) {
            Some(i) => self.pos + i + needle.len(),
            None => self.doc.len(),
        };
    }
}

impl<'a> Iterator for MarkupSteps<'a> {
    type Item = Markup<'a>;

    fn next(&mut self) -> Option<Markup<'a>> {
        loop {
            let start = self.pos;
            let rest = &self.doc[start..];
            if rest.is_empty() {
                return None;
            }
            let bytes = rest.as_bytes();
            let is_tag = bytes[0] == b'<'
                && bytes
                    .get(1)
                    .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'/' || b == b'!');
            if !is_tag {
                // A '<' that opens no tag ("a < b") is text.
                let end = bytes[1..]
                    .iter()
                    .position(|&b| b == b'<')
                    .map_or(rest.len(), |i| i + 1);
                self.pos += end;
                return Some(Markup::Text(start, &rest[..end]));
            }
            if rest.starts_with("<!--") {
                self.pos += 4;
                self.skip_past("-->");
                continue;
            }
            let closing = bytes[1] == b'/';
            let name_start = start + 1 + usize::from(closing);
            let name_len = self.lower.as_bytes()[name_start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            let name = &self.lower[name_start..name_start + name_len];
            let kind = match (name, closing) {
                ("tr", false) => TagKind::RowStart,
                ("tr", true) | ("table", _) | ("tbody", _) | ("thead", _) => TagKind::RowEnd,
                ("td" | "th", false) => TagKind::CellStart,
                ("td" | "th", true) => TagKind::CellEnd,
                ("br" | "p" | "div" | "li", _) => TagKind::Break,
                _ => TagKind::Other,
            };
            let raw_text = !closing && matches!(name, "script" | "style");
            let name = name.to_string();
            self.skip_past(">");
            if raw_text {
                self.skip_past(&format!("</{name}"));
                self.skip_past(">");
                continue;
            }
            return Some(Markup::Tag(start, kind));
        }
    }
}

/// The cells of the table row being read.
struct Row {
    line: u64,
    cells: Vec<String>,
    in_cell: bool,
}

impl Row {
    fn push_text(&mut self, text: &str) {
        if !self.in_cell {
            return;
        }
        if let Some(cell) = self.cells.last_mut() {
            // A cell longer than a line cannot hold a proxy; it stops growing there, so a
            // broken page cannot take memory without bound.
            if cell.len() + text.len() <= MAX_LINE_LEN {
                cell.push_str(text);
            }
        }
    }
}

fn parse_html(doc: &str, default_protocols: &[Protocol], policy: TargetPolicy) -> ParsedList {
    let lines = LineStarts::new(doc);
    let mut found = Collector::default();
    let mut row: Option<Row> = None;
    for step in MarkupSteps::new(doc) {
        match step {
            Markup::Tag(at, TagKind::RowStart) => {
                if let Some(done) = row.take() {
                    read_row(&done, &mut found, default_protocols, policy);
                }
                row = Some(Row {
                    line: lines.line_of(at),
                    cells: Vec::new(),
                    in_cell: false,
                });
            }
            Markup::Tag(_, TagKind::RowEnd) => {
                if let Some(done) = row.take() {
                    read_row(&done, &mut found, default_protocols, policy);
                }
            }
            Markup::Tag(at, TagKind::CellStart) => {
                // A cell outside any `<tr>` (sloppy markup) starts a row of its own.
                let current = row.get_or_insert_with(|| Row {
                    line: lines.line_of(at),
                    cells: Vec::new(),
                    in_cell: false,
                });
                current.cells.push(String::new());
                current.in_cell = true;
            }
            Markup::Tag(_, TagKind::CellEnd) => {
                if let Some(current) = &mut row {
                    current.in_cell = false;
                }
            }
            Markup::Tag(_, TagKind::Break) => {
                if let Some(current) = &mut row {
                    current.push_text(" ");
                }
            }
            Markup::Tag(_, TagKind::Other) => {}
            Markup::Text(at, text) => match &mut row {
                Some(current) => current.push_text(&decode_entities(text)),
                None => read_text(at, text, &lines, &mut found, default_protocols, policy),
            },
        }
    }
    if let Some(done) = row.take() {
        read_row(&done, &mut found, default_protocols, policy);
    }
    found.list
}

fn read_row(
    row: &Row,
    found: &mut Collector,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) {
    let cells: Vec<&str> = row.cells.iter().map(|c| c.trim()).collect();
    // A cell that is just protocol names ("HTTPS", "SOCKS5") says how this row's proxy speaks.
    let named: Vec<Protocol> = cells
        .iter()
        .filter_map(|cell| cell.parse::<Protocol>().ok())
        .collect();
    let protocols = if named.is_empty() {
        default_protocols
    } else {
        &named
    };
    for spot in find_spots(&cells, true) {
        found.take(row.line, &spot.text(), spot.parse(protocols, policy));
    }
}

/// Text outside table rows: `ip:port` words, or `ip port` on one line (a `<pre>` block).
fn read_text(
    at: usize,
    text: &str,
    lines: &LineStarts,
    found: &mut Collector,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) {
    let first_line = lines.line_of(at);
    let text = decode_entities(text);
    for (line, words) in (first_line..).zip(text.split('\n')) {
        let words: Vec<&str> = words.split_whitespace().map(trim_punctuation).collect();
        for spot in find_spots(&words, false) {
            found.take(line, &spot.text(), spot.parse(default_protocols, policy));
        }
    }
}

/// Decodes the entities that show up around addresses (`&nbsp;`, `&#58;`); others stay as written.
fn decode_entities(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let window = &rest.as_bytes()[..rest.len().min(12)];
        let decoded = window
            .iter()
            .position(|&b| b == b';')
            .and_then(|end| Some((end, entity(&rest[1..end])?)));
        match decoded {
            Some((end, c)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn entity(name: &str) -> Option<char> {
    let code = if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
        u32::from_str_radix(hex, 16).ok()?
    } else if let Some(decimal) = name.strip_prefix('#') {
        decimal.parse().ok()?
    } else {
        return match name {
            "nbsp" => Some(' '),
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "colon" => Some(':'),
            _ => None,
        };
    };
    char::from_u32(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: TargetPolicy = TargetPolicy {
        allow_private: false,
    };
    const LAB: TargetPolicy = TargetPolicy {
        allow_private: true,
    };

    fn one(line: &str) -> Candidate {
        let mut all = parse_line(line, &[Protocol::Http], PUBLIC).expect(line);
        assert_eq!(all.len(), 1, "{line}");
        all.remove(0)
    }

    /// What a reader fed `text` in pieces of `piece` bytes finds.
    fn streamed(text: &str, piece: usize) -> ParsedList {
        let mut reader = SourceReader::new(&[Protocol::Http], PUBLIC);
        for part in text.as_bytes().chunks(piece) {
            reader.push(part);
        }
        reader.finish().unwrap()
    }

    #[test]
    fn numeric_spellings_of_addresses_are_not_names() {
        for line in [
            "0x7f000001:80",
            "0x7f.1:80",
            "0177.0.0.1:80",
            "127.1:80",
            "1.0x10:80",
        ] {
            let err = parse_line(line, &[Protocol::Http], LAB).unwrap_err();
            assert!(err.contains("dotted quad"), "{line}: {err}");
        }
        assert!(parse_line("0x.example:80", &[Protocol::Http], PUBLIC).is_ok());
    }

    #[test]
    fn a_source_read_in_pieces_finds_what_the_whole_text_holds() {
        let long = format!("8.8.8.8:{}", "9".repeat(MAX_LINE_LEN * 3));
        let lines = format!(
            "\u{feff}8.8.8.8:80\r\n# comment\n\nsocks5://9.9.9.9:1080 DE\n10.0.0.1:80\n{long}\n8.8.8.8:80\nnot a proxy\n1.1.1.1 8080"
        );
        let json = r#"{"data": [{"ip": "8.8.8.8", "port": 80}, "9.9.9.9:3128", {"ip": "10.0.0.1", "port": 1}]}"#;
        let html = "<html><table><tr><td>8.8.8.8</td><td>8080</td></tr>\n<tr><td>9.9.9.9</td><td>x</td></tr></table></html>";
        for text in [lines.as_str(), json, html] {
            let whole = parse_source(text, &[Protocol::Http], PUBLIC);
            for piece in [1, 7, 4096] {
                let parts = streamed(text, piece);
                assert_eq!(parts.candidates, whole.candidates, "{text:?} in {piece}s");
                assert_eq!(parts.rejected, whole.rejected, "{text:?} in {piece}s");
                assert_eq!(parts.dropped, whole.dropped, "{text:?} in {piece}s");
            }
        }
        let found = streamed(&lines, 5);
        assert_eq!(found.candidates.len(), 3);
        assert_eq!(found.rejected[1].line, 6, "{:?}", found.rejected);
        assert!(found.rejected[1].reason.contains(&long.len().to_string()));
    }

    #[test]
    fn a_large_json_document_is_read_as_it_streams() {
        let mut items = Vec::new();
        for i in 0..3000u32 {
            let (a, b) = (i / 250 + 1, i % 250 + 1);
            items.push(match i % 4 {
                0 => format!(r#"{{"ip": "8.8.{a}.{b}", "port": 8080, "protocols": ["http", "socks5"]}}"#),
                1 => format!(r#""9.9.{a}.{b}:3128""#),
                2 => format!(r#"{{"proxy": "7.7.{a}.{b}:80", "type": "socks4", "country": {{"code": "DE"}}}}"#),
                _ => format!(r#"{{"host": "6.6.{a}.{b}", "port": "x{i}"}}"#),
            });
        }
        let text = format!(
            r#"{{"meta": {{"host": "api.example.net", "count": 3000}}, "data": [{}]}}"#,
            items.join(", ")
        );
        assert!(text.len() > 2 * SHAPE_WINDOW);
        let whole = parse_source(&text, &[Protocol::Http], PUBLIC);
        assert_eq!(whole.candidates.len(), 750 * 2 + 750 + 750);
        for piece in [1000, 4096, 100_000] {
            let parts = streamed(&text, piece);
            assert_eq!(parts.candidates, whole.candidates, "in {piece}s");
            assert_eq!(parts.dropped, whole.dropped, "in {piece}s");
            assert_eq!(parts.rejected_total, whole.rejected_total, "in {piece}s");
        }
    }

    #[test]
    fn a_streamed_json_document_that_breaks_keeps_what_came_before() {
        let good = format!("[{}", r#""8.8.8.8:80", "#.repeat(SHAPE_WINDOW / 10));
        let mut reader = SourceReader::new(&[Protocol::Http], PUBLIC);
        reader.push(good.as_bytes());
        reader.push(b"\"9.9.9.9:80\", }");
        let found = reader.finish().unwrap();
        assert_eq!(found.candidates.len(), 2);
        assert!(
            found.rejected[0].reason.contains("malformed"),
            "{:?}",
            found.rejected
        );
        assert_eq!(found.rejected_total, 1);
        // Values that follow one another (NDJSON) are all read; words after them are not JSON.
        let mut reader = SourceReader::new(&[Protocol::Http], PUBLIC);
        reader.push(good.as_bytes());
        reader.push(b"\"9.9.9.9:80\"]\n{\"ip\": \"5.5.5.5\", \"port\": 80, \"note\": {}}\n");
        reader.push(b"{\"ip\": \"5.5.5.6\", \"port\": 81}\n");
        let found = reader.finish().unwrap();
        assert_eq!((found.candidates.len(), found.rejected_total), (4, 0));
        let mut reader = SourceReader::new(&[Protocol::Http], PUBLIC);
        reader.push(good.as_bytes());
        reader.push(b"\"9.9.9.9:80\"]\ntrailing words 5.5.5.5:80\n");
        let found = reader.finish().unwrap();
        assert_eq!((found.candidates.len(), found.rejected_total), (2, 1));
        // Fields no entry reads are not kept, however many and however deep.
        let mut reader = SourceReader::new(&[Protocol::Http], PUBLIC);
        reader.push(good.as_bytes());
        let filler = "y".repeat(60_000);
        for depth in 0..100 {
            reader.push(format!(r#"{{"a{depth}": "{filler}", "b": [1, 2], "n": "#).as_bytes());
        }
        let Shape::Json(walk) = &reader.shape else {
            panic!("not read as JSON")
        };
        let kept: usize = walk
            .frames
            .iter()
            .map(|frame| match frame {
                JsonFrame::Object { fields, .. } => fields.len(),
                JsonFrame::Array { copy } => copy.as_ref().map_or(0, Vec::len),
            })
            .sum();
        assert_eq!(kept, 0);
        // An endless string is not held: the walk stops past a token's limit.
        let mut reader = SourceReader::new(&[Protocol::Http], PUBLIC);
        reader.push(good.as_bytes());
        reader.push(b"\"");
        for _ in 0..1000 {
            reader.push(&[b'x'; 1024]);
        }
        let found = reader.finish().unwrap();
        assert!(
            found.rejected[0].reason.contains("longer than"),
            "{:?}",
            found.rejected
        );
        // An endless page is refused past its limit.
        let mut reader = SourceReader::new(&[Protocol::Http], PUBLIC);
        reader.push(b"<html><table>");
        for _ in 0..(MAX_PAGE_BYTES / SHAPE_WINDOW + 2) {
            reader.push(&vec![b' '; SHAPE_WINDOW]);
        }
        assert_eq!(reader.stopped(), Some(Stop::PageTooLarge));
        assert_eq!(reader.finish().unwrap_err(), Stop::PageTooLarge);
    }

    #[test]
    fn an_endless_line_costs_one_line_of_memory() {
        let mut reader = SourceReader::new(&[Protocol::Http], PUBLIC);
        reader.push(b"8.8.8.8:80\n");
        for _ in 0..10_000 {
            reader.push(&[b'x'; 1024]);
            assert!(reader.partial.len() <= MAX_LINE_LEN + 1);
        }
        let found = reader.finish().unwrap();
        assert_eq!(found.candidates.len(), 1);
        assert_eq!(found.dropped.get("too long"), Some(&1));
    }

    #[test]
    fn sources_of_a_job_share_its_candidate_budget() {
        // Comments first, so the readers know their shape and count as they read.
        let comments = "#\n".repeat(SHAPE_WINDOW);
        let budget = CandidateBudget::new(5);
        let mut first = SourceReader::new(&[Protocol::Http], PUBLIC).within(budget.clone());
        first.push(comments.as_bytes());
        first.push(b"8.8.8.1:80\n8.8.8.2:80\n8.8.8.3:80\n8.8.8.3:80\n");
        assert_eq!(first.stopped(), None);
        // A retry gives back what the first attempt took.
        first.restart();
        first.push(comments.as_bytes());
        first.push(b"8.8.8.1:80\n8.8.8.2:80\n8.8.8.3:80\n");
        let mut second = SourceReader::new(&[Protocol::Http], PUBLIC).within(budget.clone());
        second.push(comments.as_bytes());
        second.push(b"9.9.9.1:80\n9.9.9.2:80\n");
        assert_eq!(second.stopped(), None);
        second.push(b"9.9.9.3:80\n");
        assert_eq!(second.stopped(), Some(Stop::OverBudget));
        assert_eq!(second.finish().unwrap_err(), Stop::OverBudget);
        assert_eq!(first.finish().unwrap().candidates.len(), 3);
        // A document is counted when it is read, at the end.
        let mut doc = SourceReader::new(&[Protocol::Http], PUBLIC).within(budget);
        doc.push(br#"["7.7.7.1:80", "7.7.7.2:80", "7.7.7.3:80"]"#);
        assert_eq!(doc.finish().unwrap_err(), Stop::OverBudget);
    }

    #[test]
    fn bare_host_port_takes_the_default_protocols() {
        let all = parse_line("8.8.4.4:3128", &[Protocol::Http, Protocol::Socks5], PUBLIC).unwrap();
        let urls: Vec<_> = all.iter().map(Candidate::url).collect();
        assert_eq!(urls, ["http://8.8.4.4:3128", "socks5://8.8.4.4:3128"]);
    }

    #[test]
    fn scheme_auth_and_case_are_normalized() {
        let c = one("SOCKS5://User:Pa:ss@Proxy-7.Example.COM:1080/");
        assert_eq!(c.protocol, Protocol::Socks5);
        assert_eq!(c.host, "proxy-7.example.com");
        assert_eq!(c.port, 1080);
        assert_eq!(c.auth.as_deref(), Some(&("User".into(), "Pa:ss".into())));
        assert_eq!(c.url(), "socks5://proxy-7.example.com:1080");
    }

    #[test]
    fn hostnames_with_digits_and_ipv6_in_brackets() {
        assert_eq!(one("1proxy2.net:80").host, "1proxy2.net");
        let v6 = one("http://[2001:DB8::1]:8080");
        assert_eq!(v6.host, "2001:db8::1");
        assert_eq!(v6.url(), "http://[2001:db8::1]:8080");
    }

    #[test]
    fn blank_lines_and_comments_give_nothing() {
        assert!(
            parse_line("   ", &[Protocol::Http], PUBLIC)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_line("# list", &[Protocol::Http], PUBLIC)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let cases = [
            ("8.8.8.8", "no port"),
            ("8.8.8.8:0", "out of range"),
            ("8.8.8.8:65536", "out of range"),
            ("8.8.8.8:http", "not a number"),
            ("ftp://8.8.8.8:21", "unknown protocol"),
            ("999.1.1.1:80", "not a valid IPv4"),
            ("bad_host!:80", "not a valid host name"),
            ("2001:db8::1:80", "brackets"),
            ("[2001:db8::1:80", "closing"),
            ("http://:secret@8.8.8.8:80", "empty user"),
            ("http://user@8.8.8.8:80", "user:password"),
            (":80", "empty host"),
        ];
        for (line, expected) in cases {
            let err = parse_line(line, &[Protocol::Http], PUBLIC).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
        let long = format!("{}:80", "a".repeat(MAX_LINE_LEN));
        assert!(
            parse_line(&long, &[Protocol::Http], PUBLIC)
                .unwrap_err()
                .contains("bytes long")
        );
    }

    #[test]
    fn private_targets_need_the_lab_policy() {
        for line in [
            "127.0.0.1:80",
            "10.1.2.3:80",
            "192.168.0.1:80",
            "172.16.0.1:80",
            "169.254.1.1:80",
            "224.0.0.1:80",
            "0.0.0.0:80",
            "localhost:80",
            "[::1]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            let err = parse_line(line, &[Protocol::Http], PUBLIC).unwrap_err();
            assert!(err.contains("--allow-private-targets"), "{line}: {err}");
            assert_eq!(parse_line(line, &[Protocol::Http], LAB).unwrap().len(), 1);
        }
    }

    #[test]
    fn a_list_dedups_and_numbers_its_rejections() {
        let text =
            "8.8.8.8:80\n\nhttp://8.8.8.8:80\nnonsense\nsocks5://8.8.8.8:80\n# c\n1.1.1.1:1\n";
        let parsed = parse_list(
            text.lines().enumerate().map(|(i, l)| (i as u64 + 1, l)),
            &[Protocol::Http],
            PUBLIC,
        );
        let urls: Vec<_> = parsed.candidates.iter().map(Candidate::url).collect();
        assert_eq!(
            urls,
            [
                "http://8.8.8.8:80",
                "socks5://8.8.8.8:80",
                "http://1.1.1.1:1"
            ]
        );
        assert_eq!(parsed.duplicates, 1);
        assert_eq!(parsed.rejected.len(), 1);
        assert_eq!(parsed.rejected[0].line, 4);
        assert_eq!(parsed.rejected[0].text, "nonsense");
    }

    fn source(text: &str) -> ParsedList {
        parse_source(text, &[Protocol::Http], PUBLIC)
    }

    fn urls(parsed: &ParsedList) -> Vec<String> {
        parsed.candidates.iter().map(Candidate::full_url).collect()
    }

    /// The 1-based line of `sample` that holds `needle`.
    fn line_with(sample: &str, needle: &str) -> u64 {
        (1..)
            .zip(sample.lines())
            .find(|(_, l)| l.contains(needle))
            .map(|(n, _)| n)
            .expect(needle)
    }

    fn dropped(parsed: &ParsedList) -> Vec<(&'static str, u64)> {
        parsed.dropped.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn a_text_list_with_comments_junk_columns_and_bad_entries() {
        let sample = "\
# free proxy list, updated 2024-05-01 12:30
// export from the old checker

1.2.3.4:8080 US elite
5.6.7.8\t3128\tDE\tanonymous
socks5://user:p@ss@9.9.9.9:1080
1proxy-2.example.net:8080
[2001:DB8::1]:3128
2001:db8::2 8081
10.0.0.0/24
8.8.8.8:0
8.8.8.8:65536
999.1.1.1:80
IP:PORT
1.2.3.4:8080
192.168.1.1:8080
";
        let parsed = source(sample);
        assert_eq!(
            urls(&parsed),
            [
                "http://1.2.3.4:8080",
                "http://5.6.7.8:3128",
                "socks5://user:p@ss@9.9.9.9:1080",
                "http://1proxy-2.example.net:8080",
                "http://[2001:db8::1]:3128",
                "http://[2001:db8::2]:8081",
            ]
        );
        let lines: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| (r.line, r.text.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (10, "10.0.0.0/24"),
                (11, "8.8.8.8:0"),
                (12, "8.8.8.8:65536"),
                (13, "999.1.1.1:80"),
                (14, "IP:PORT"),
                (16, "192.168.1.1:8080"),
            ]
        );
        assert_eq!(
            parsed.rejected[0].reason,
            "CIDR ranges are not supported; list addresses one per line"
        );
        assert!(parsed.rejected[1].reason.contains("out of range 1-65535"));
        assert!(parsed.rejected[3].reason.contains("not a valid IPv4"));
        assert_eq!(parsed.duplicates, 1);
        assert_eq!(parsed.rejected_total, 6);
        assert_eq!(
            dropped(&parsed),
            [
                ("bad address", 1),
                ("bad port", 3),
                ("cidr range", 1),
                ("duplicate", 1),
                ("private address", 1),
            ]
        );
    }

    #[test]
    fn cidr_ranges_are_refused_in_every_spelling() {
        for line in [
            "10.0.0.0/24",
            "203.0.113.0/28",
            "2001:db8::/32",
            "http://8.8.8.0/24",
        ] {
            let err = parse_line(line, &[Protocol::Http], PUBLIC).unwrap_err();
            assert!(
                err.contains("CIDR ranges are not supported"),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn an_address_and_its_port_may_be_two_words() {
        for (line, url) in [
            ("8.8.8.8 3128", "http://8.8.8.8:3128"),
            ("8.8.8.8\t3128\tUS", "http://8.8.8.8:3128"),
            ("2001:db8::9 80", "http://[2001:db8::9]:80"),
            ("[2001:db8::9] 80", "http://[2001:db8::9]:80"),
            ("socks5://u:p@8.8.8.8 1080", "socks5://u:p@8.8.8.8:1080"),
            ("8.8.8.8:3128 # fast one", "http://8.8.8.8:3128"),
        ] {
            assert_eq!(one(line).full_url(), url, "{line}");
        }
        // A port of its own wins over a number after it; a bad second word is not a port.
        assert_eq!(one("8.8.8.8:3128 120").port, 3128);
        let err = parse_line("8.8.8.8 0", &[Protocol::Http], PUBLIC).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        let err = parse_line("8.8.8.8 US", &[Protocol::Http], PUBLIC).unwrap_err();
        assert!(err.contains("no port"), "{err}");
    }

    const HTML_PAGE: &str = r#"<!DOCTYPE html>
<html><head><title>Free Proxy List - 300 proxies</title>
<script>var hidden = {"6.6.6.6:9999": 1}; document.write("<tr><td>6.6.6.7</td><td>81</td></tr>");</script>
<style>td { color: red } /* 7.7.7.7:80 */</style></head>
<body>
<p>Updated 2024-05-01 12:30:00 UTC. Contact: admin@example.com, version 1.2.3</p>
<!-- <tr><td>5.5.5.5</td><td>80</td></tr> -->
<table class="table table-striped">
<thead><tr><th>IP Address</th><th>Port</th><th>Code</th><th>Country</th><th>Anonymity</th><th>Https</th><th>Last Checked</th></tr></thead>
<tbody>
<tr><td>203.0.113.5</td><td>8080</td><td>US</td><td class='hm'>United States</td><td>elite proxy</td><td class='hx'>no</td><td>1 min ago</td></tr>
<TR><TD>198.51.100.7</TD><TD>3128</TD><TD>DE</TD><TD>Germany</TD></TR>
<tr>
  <td><a href="/host/proxy-1.example.org">Proxy-1.Example.org</a></td>
  <td>1080</td>
  <td>SOCKS5</td>
</tr>
<tr><td>999.1.1.1</td><td>8080</td><td>XX</td></tr>
<tr><td>203.0.113.9</td><td>0</td><td>US</td></tr>
<tr><td>203.0.113.10</td><td>99999</td><td>US</td></tr>
<tr><td>Total</td><td>5</td></tr>
<tr><td>[2001:db8::5]</td><td>8000</td></tr>
<tr><td>203.0.113.11<span>:</span>8081</td><td>fast</td></tr>
<tr><td colspan="7">Showing 1 to 9 of 300&nbsp;entries <a href="?page=2">next &raquo;</a></td></tr>
</tbody></table>
<h2>Raw list</h2>
<pre>
203.0.113.20:8000
203.0.113.21&#58;8001 (new)
203.0.113.22 8002
</pre>
</body></html>
"#;

    #[test]
    fn an_html_table_page_gives_its_rows_and_its_text() {
        let parsed = source(HTML_PAGE);
        assert_eq!(
            urls(&parsed),
            [
                "http://203.0.113.5:8080",
                "http://198.51.100.7:3128",
                "socks5://proxy-1.example.org:1080",
                "http://[2001:db8::5]:8000",
                "http://203.0.113.11:8081",
                "http://203.0.113.20:8000",
                "http://203.0.113.21:8001",
                "http://203.0.113.22:8002",
            ]
        );
        let rejected: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| (r.line, r.text.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (line_with(HTML_PAGE, "999.1.1.1"), "999.1.1.1 8080"),
                (line_with(HTML_PAGE, "203.0.113.9<"), "203.0.113.9 0"),
                (line_with(HTML_PAGE, "99999"), "203.0.113.10 99999"),
            ]
        );
        assert_eq!(dropped(&parsed), [("bad address", 1), ("bad port", 2)]);
    }

    #[test]
    fn an_html_row_is_numbered_by_the_line_it_starts_on() {
        let page = "<table>\n<tr>\n<td>\n203.0.113.1\n</td>\n<td>0</td>\n</tr>\n</table>\n";
        let parsed = source(page);
        assert_eq!(parsed.rejected.len(), 1);
        assert_eq!(parsed.rejected[0].line, 2);
    }

    const JSON_RESPONSE: &str = r#"{
  "status": "ok",
  "host": "api.example.com",
  "data": {
    "proxies": [
      {"ip": "203.0.113.5", "port": 8080, "protocols": ["http", "HTTPS"], "country": "US"},
      {"host": "203.0.113.6", "port": "1080", "type": "SOCKS5", "username": "alice", "password": "s3:cr@t"},
      {"address": "Proxy-2.example.net", "port": 3128, "type": "elite", "uptime": 99.5},
      {"addr": "2001:db8::7", "port": 8080},
      {"proxy": "socks4://203.0.113.14:4145", "alive": true},
      {"ip": "203.0.113.8", "port": 0},
      {"ip": "203.0.113.9", "port": 70000},
      {"ip": "999.1.1.1", "port": 80},
      {"ip": "203.0.113.10", "port": 80, "protocol": "ftp"},
      {"ip": "203.0.113.5", "port": 8080, "protocol": "http"}
    ],
    "list": ["203.0.113.11:8000", "socks4://203.0.113.12:4145", "US", "203.0.113.13:99999", "203.0.113.15 8015"]
  },
  "meta": {"page": 1, "total": 12, "countries": ["US", "DE"], "updated": "2024-05-01 12:30:00"}
}"#;

    #[test]
    fn a_json_response_with_nested_data() {
        let parsed = source(JSON_RESPONSE);
        // Objects are walked in key order, not file order: compare as sets.
        let mut got = urls(&parsed);
        got.sort();
        assert_eq!(
            got,
            [
                "http://203.0.113.11:8000",
                "http://203.0.113.15:8015",
                "http://203.0.113.5:8080",
                "http://[2001:db8::7]:8080",
                "http://proxy-2.example.net:3128",
                "https://203.0.113.5:8080",
                "socks4://203.0.113.12:4145",
                "socks4://203.0.113.14:4145",
                "socks5://alice:s3:cr@t@203.0.113.6:1080",
            ]
        );
        let reasons: Vec<_> = parsed.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        for expected in [
            "port 0 is out of range",
            "port 70000 is out of range",
            "\"999.1.1.1\" is not a valid IPv4",
            "unknown protocol \"ftp\"",
            "port 99999 is out of range",
        ] {
            assert!(
                reasons.iter().any(|r| r.contains(expected)),
                "{expected}: {reasons:?}"
            );
        }
        assert!(parsed.rejected.iter().all(|r| r.line == 0));
        assert!(
            parsed
                .rejected
                .iter()
                .any(|r| r.text.contains("\"203.0.113.8\"") && r.text.contains("\"port\":0"))
        );
        assert_eq!(parsed.duplicates, 1);
        assert_eq!(
            dropped(&parsed),
            [
                ("bad address", 1),
                ("bad port", 3),
                ("duplicate", 1),
                ("unknown protocol", 1),
            ]
        );
    }

    #[test]
    fn a_json_array_of_strings() {
        let parsed = parse_source(
            r#"["8.8.8.8:80", "socks5://9.9.9.9:1080", "1.1.1.1 3128"]"#,
            &[Protocol::Http, Protocol::Socks4],
            PUBLIC,
        );
        assert_eq!(
            urls(&parsed),
            [
                "http://8.8.8.8:80",
                "socks4://8.8.8.8:80",
                "socks5://9.9.9.9:1080",
                "http://1.1.1.1:3128",
                "socks4://1.1.1.1:3128",
            ]
        );
        assert!(parsed.rejected.is_empty());
    }

    #[test]
    fn the_format_is_told_from_the_text() {
        // Starts like JSON but is a list of IPv6 proxies.
        let parsed = source("[2001:db8::1]:3128\n[2001:db8::2]:3128\n");
        assert_eq!(parsed.candidates.len(), 2);
        // Not JSON after all: read as lines, each junk line reported.
        let parsed = source("{ not json\n8.8.8.8:80\n");
        assert_eq!(urls(&parsed), ["http://8.8.8.8:80"]);
        assert_eq!(parsed.rejected[0].line, 1);
        // A byte-order mark does not spoil the first entry.
        let parsed = source("\u{feff}8.8.8.8:80\nnope\n");
        assert_eq!(urls(&parsed), ["http://8.8.8.8:80"]);
        assert_eq!(parsed.rejected[0].line, 2);
        // A document without proxies gives nothing and reports nothing.
        for empty in [
            "",
            "[]",
            "{}",
            "<table><tr><th>IP</th><th>Port</th></tr></table>",
            "<!DOCTYPE html>\n<html><body>\n<h1>404 Not Found</h1>\n</body></html>\n",
        ] {
            let parsed = source(empty);
            assert!(
                parsed.candidates.is_empty() && parsed.rejected.is_empty(),
                "{empty}"
            );
        }
    }

    #[test]
    fn rejections_are_kept_up_to_a_bound_and_counted_past_it() {
        let text = "x:y\n".repeat(MAX_REJECTED_KEPT + 500);
        let parsed = source(&text);
        assert_eq!(parsed.rejected.len(), MAX_REJECTED_KEPT);
        assert_eq!(parsed.rejected_total, MAX_REJECTED_KEPT as u64 + 500);
        assert_eq!(parsed.dropped["bad port"], MAX_REJECTED_KEPT as u64 + 500);
        assert_eq!(
            parsed.rejected.last().unwrap().line,
            MAX_REJECTED_KEPT as u64
        );
    }

    #[test]
    fn overlong_lines_and_cells_are_refused() {
        let text = format!("8.8.8.8:80\n{}:80\n", "a".repeat(MAX_LINE_LEN));
        let parsed = source(&text);
        assert_eq!(parsed.candidates.len(), 1);
        assert_eq!(parsed.rejected[0].line, 2);
        assert_eq!(parsed.dropped["too long"], 1);
        let page = format!(
            "<tr><td>8.8.8.8{}</td><td>80</td></tr>",
            " ".repeat(3 * MAX_LINE_LEN)
        );
        assert!(source(&page).candidates.is_empty());
    }

    mod properties {
        use std::collections::HashSet;

        use proptest::prelude::*;

        use super::*;

        fn protocol() -> impl Strategy<Value = Protocol> {
            proptest::sample::select(Protocol::ALL.to_vec())
        }

        /// A normalized host: IPv4, IPv6 or a dotted name with digits and dashes.
        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<u32>().prop_map(|n| Ipv4Addr::from(n).to_string()),
                any::<u128>().prop_map(|n| Ipv6Addr::from(n).to_string()),
                (
                    proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4),
                    "[a-z][a-z0-9]{1,6}",
                )
                    .prop_map(|(mut labels, tld)| {
                        labels.push(tld);
                        labels.join(".")
                    }),
            ]
        }

        fn candidate() -> impl Strategy<Value = Candidate> {
            (
                protocol(),
                host(),
                1..=65535u16,
                proptest::option::of(("[A-Za-z0-9._~!$-]{1,12}", "[A-Za-z0-9._~!$:@/#-]{0,12}")),
            )
                .prop_map(|(protocol, host, port, auth)| Candidate {
                    protocol,
                    host,
                    port,
                    auth: auth.map(Box::new),
                })
        }

        /// Pieces of every format, so random text reaches deep into each reader.
        fn fragments() -> impl Strategy<Value = String> {
            let piece = proptest::sample::select(vec![
                "<tr>",
                "<td>",
                "</td>",
                "</tr>",
                "<th>",
                "<script>",
                "</script",
                "<!--",
                "-->",
                "<",
                ">",
                "&#58;",
                "&#x",
                "&nbsp;",
                "&",
                ";",
                "[",
                "]",
                "{",
                "}",
                "\"ip\":",
                "\"port\":",
                "\"",
                ",",
                ":",
                "::",
                "@",
                "/",
                "//",
                "://",
                "socks5",
                "http",
                "1.2.3.4",
                "999.1.1.1",
                "2001:db8::1",
                "example.com",
                "8080",
                "0",
                "99999",
                "/24",
                " ",
                "\t",
                "\n",
                "\r\n",
                "#",
                "é",
                "\u{feff}",
                "\u{a0}",
            ]);
            proptest::collection::vec(piece, 0..200).prop_map(|pieces| pieces.concat())
        }

        fn assert_sound(parsed: &ParsedList) {
            let mut seen = HashSet::new();
            for candidate in &parsed.candidates {
                assert!(seen.insert(candidate.full_url()), "twice: {candidate:?}");
                assert_ne!(candidate.port, 0);
            }
            assert!(parsed.rejected.len() <= MAX_REJECTED_KEPT);
            assert!(parsed.rejected_total >= parsed.rejected.len() as u64);
        }

        proptest! {
            #[test]
            fn parse_source_never_panics_on_any_text(text in any::<String>()) {
                assert_sound(&parse_source(&text, &Protocol::ALL, PUBLIC));
            }

            #[test]
            fn parse_source_never_panics_on_long_text(chars in proptest::collection::vec(any::<char>(), 0..5000)) {
                let text: String = chars.into_iter().collect();
                assert_sound(&parse_source(&text, &[Protocol::Http], LAB));
            }

            #[test]
            fn parse_source_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let text = String::from_utf8_lossy(&bytes);
                assert_sound(&parse_source(&text, &[Protocol::Http], PUBLIC));
            }

            #[test]
            fn parse_source_never_panics_on_format_fragments(text in fragments()) {
                assert_sound(&parse_source(&text, &[Protocol::Http, Protocol::Socks5], LAB));
                assert_sound(&parse_source(&format!("<tr>{text}"), &[], PUBLIC));
                assert_sound(&parse_source(&format!("[{text}]"), &[], PUBLIC));
            }

            #[test]
            fn a_candidate_survives_being_written_and_read(c in candidate(), junk in "[ \t][A-Za-z ]{0,10}") {
                let written = c.full_url();
                prop_assert_eq!(parse_line(&written, &[], LAB), Ok(vec![c.clone()]));
                prop_assert_eq!(parse_line(&format!("{written}{junk}"), &[], LAB), Ok(vec![c.clone()]));
                prop_assert_eq!(&parse_source(&written, &[], LAB).candidates, &vec![c.clone()]);
                let auth = c.auth.as_deref().map(|(u, p)| format!("{u}:{p}@")).unwrap_or_default();
                let apart = format!("{}://{auth}{} {}", c.protocol, c.host, c.port);
                prop_assert_eq!(parse_line(&apart, &[], LAB), Ok(vec![c.clone()]));
                if c.auth.is_none() {
                    prop_assert_eq!(parse_line(&c.host_port(), &[c.protocol], LAB), Ok(vec![c.clone()]));
                }
            }

            #[test]
            fn no_candidate_comes_out_twice(
                pool in proptest::collection::vec(candidate(), 1..8),
                picks in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
            ) {
                let lines: Vec<String> = picks.iter().map(|i| i.get(&pool).full_url()).collect();
                let expected: HashSet<String> = lines.iter().cloned().collect();
                let plain = lines.join("\n");
                let json = serde_json::to_string(&lines).unwrap();
                let html: String = lines.iter().map(|l| format!("<tr><td>{l}</td><td>x</td></tr>\n")).collect();
                let numbered = parse_list((1..).zip(plain.lines()), &[], LAB);
                for parsed in [numbered, parse_source(&plain, &[], LAB), parse_source(&json, &[], LAB), parse_source(&html, &[], LAB)] {
                    assert_sound(&parsed);
                    let got: HashSet<String> = parsed.candidates.iter().map(Candidate::full_url).collect();
                    prop_assert_eq!(&got, &expected);
                    prop_assert_eq!(parsed.duplicates as usize, lines.len() - expected.len());
                    prop_assert!(parsed.rejected.is_empty());
                }
            }
        }
    }
}
