//! The sources file: which proxy lists to download or read, and as which protocols their bare
//! `host:port` entries are checked.
//!
//! ```toml
//! [http]
//! urls = ["https://example.com/http.txt", "/var/lib/lists/more.txt"]
//! [[source]]
//! url = "https://example.org/list.json"
//! protocols = ["http", "socks4"]
//! ```

use std::collections::HashSet;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::candidate::{LineStarts, Protocol};

/// One list to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// An `http://`, `https://` or `file://` URL, or a local path (relative ones are taken from
    /// the working directory), as written in the file.
    pub url: String,
    /// What the list's bare `host:port` entries are checked as; sorted, no repeats, never empty.
    pub protocols: Vec<Protocol>,
}

/// A sources file that cannot be used, with the line to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourcesError {
    #[error("sources file line {line}: not valid TOML: {message}")]
    Syntax { line: u64, message: String },
    #[error(
        "sources file line {line}: unknown protocol {name:?}; expected http, https, socks4, socks4a, socks5 or socks5h"
    )]
    UnknownProtocol { line: u64, name: String },
    /// Not a location [`crate::fetch::locate`] reads; `why` says what is wrong with it.
    #[error("sources file line {line}: {url:?} is not a list location; {why}")]
    BadUrl { line: u64, url: String, why: String },
    /// A field missing, misspelt or of the wrong type; the message names it.
    #[error("sources file line {line}: {message}")]
    BadField { line: u64, message: String },
    #[error(
        "no sources in the sources file; list them as [http] urls = [\"https://...\"] or in [[source]] tables with url and protocols"
    )]
    Empty,
}

/// Reads a sources file: one section per protocol (`[http]`, `[socks5]`, ...) with a `urls`
/// array, and `[[source]]` tables with `url` and `protocols`. Sources come out in file order;
/// a repeat of the same URL with the same protocols is dropped.
pub fn parse_sources_file(text: &str) -> Result<Vec<Source>, SourcesError> {
    let lines = LineStarts::new(text);
    let line = |span: std::ops::Range<usize>| lines.line_of(span.start);
    let root = DeTable::parse(text).map_err(|e| SourcesError::Syntax {
        line: e.span().map_or(1, line),
        message: e.message().trim().to_string(),
    })?;
    // Offsets put sources back in file order: the table itself iterates in key order.
    let mut found: Vec<(usize, Source)> = Vec::new();
    for (key, value) in root.get_ref() {
        let key_line = line(key.span());
        if key.get_ref() == "source" {
            let DeValue::Array(tables) = value.get_ref() else {
                return Err(SourcesError::BadField {
                    line: key_line,
                    message: "write [[source]], with two brackets, for each explicit source".into(),
                });
            };
            for table in tables.iter() {
                found.push((table.span().start, explicit_source(table, &line)?));
            }
            continue;
        }
        let protocol =
            key.get_ref()
                .parse::<Protocol>()
                .map_err(|_| SourcesError::UnknownProtocol {
                    line: key_line,
                    name: key.get_ref().to_string(),
                })?;
        let DeValue::Table(section) = value.get_ref() else {
            return Err(SourcesError::BadField {
                line: key_line,
                message: format!(
                    "{key} must be a section: [{key}] followed by urls = [\"...\"]",
                    key = key.get_ref()
                ),
            });
        };
        for (field, value) in section {
            if field.get_ref() != "urls" {
                return Err(SourcesError::BadField {
                    line: line(field.span()),
                    message: format!(
                        "unknown field {:?} in [{}]; expected urls = [\"...\"]",
                        field.get_ref(),
                        key.get_ref()
                    ),
                });
            }
            let DeValue::Array(urls) = value.get_ref() else {
                return Err(SourcesError::BadField {
                    line: line(value.span()),
                    message: format!("urls in [{}] must be an array of strings", key.get_ref()),
                });
            };
            for url in urls.iter() {
                let Some(text) = url.get_ref().as_str() else {
                    return Err(SourcesError::BadField {
                        line: line(url.span()),
                        message: format!("urls in [{}] must be an array of strings", key.get_ref()),
                    });
                };
                let source = Source {
                    url: checked_url(text, line(url.span()))?,
                    protocols: vec![protocol],
                };
                found.push((url.span().start, source));
            }
        }
    }
    found.sort_by_key(|(offset, _)| *offset);
    let mut seen = HashSet::new();
    let sources: Vec<Source> = found
        .into_iter()
        .map(|(_, source)| source)
        .filter(|source| seen.insert(source.clone()))
        .collect();
    if sources.is_empty() {
        return Err(SourcesError::Empty);
    }
    Ok(sources)
}

/// A `[[source]]` table: `url` and `protocols` (one name or an array of names).
fn explicit_source(
    table: &Spanned<DeValue<'_>>,
    line: &impl Fn(std::ops::Range<usize>) -> u64,
) -> Result<Source, SourcesError> {
    let table_line = line(table.span());
    let DeValue::Table(fields) = table.get_ref() else {
        return Err(SourcesError::BadField {
            line: table_line,
            message: "each [[source]] must be a table with url and protocols".into(),
        });
    };
    let mut url = None;
    let mut protocols = Vec::new();
    for (field, value) in fields {
        match field.get_ref().as_ref() {
            "url" => {
                let text = value
                    .get_ref()
                    .as_str()
                    .ok_or_else(|| SourcesError::BadField {
                        line: line(value.span()),
                        message: "url in [[source]] must be a string".into(),
                    })?;
                url = Some(checked_url(text, line(value.span()))?);
            }
            "protocols" => {
                let names: Vec<&Spanned<DeValue<'_>>> = match value.get_ref() {
                    DeValue::Array(names) => names.iter().collect(),
                    _ => vec![value],
                };
                for name in names {
                    let text = name.get_ref().as_str().ok_or_else(|| SourcesError::BadField {
                        line: line(name.span()),
                        message: "protocols in [[source]] must be protocol names, e.g. [\"http\", \"socks5\"]".into(),
                    })?;
                    protocols.push(text.parse::<Protocol>().map_err(|_| {
                        SourcesError::UnknownProtocol {
                            line: line(name.span()),
                            name: text.to_string(),
                        }
                    })?);
                }
            }
            other => {
                return Err(SourcesError::BadField {
                    line: line(field.span()),
                    message: format!(
                        "unknown field {other:?} in [[source]]; expected url and protocols"
                    ),
                });
            }
        }
    }
    let url = url.ok_or_else(|| SourcesError::BadField {
        line: table_line,
        message: "[[source]] has no url".into(),
    })?;
    if protocols.is_empty() {
        return Err(SourcesError::BadField {
            line: table_line,
            message: format!("[[source]] for {url} has no protocols; add protocols = [\"http\"]"),
        });
    }
    protocols.sort();
    protocols.dedup();
    Ok(Source { url, protocols })
}

/// A location as the fetcher reads it (see [`crate::fetch::locate`]), trimmed.
fn checked_url(text: &str, line: u64) -> Result<String, SourcesError> {
    let url = text.trim();
    match crate::fetch::locate(url) {
        Ok(_) => Ok(url.to_string()),
        Err(e) => Err(SourcesError::BadUrl {
            line,
            url: text.to_string(),
            why: e.why(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(url: &str, protocols: &[Protocol]) -> Source {
        Source {
            url: url.into(),
            protocols: protocols.to_vec(),
        }
    }

    #[test]
    fn sections_and_explicit_sources_in_file_order() {
        let text = r#"# proxyfleet sources
[socks5]
urls = ["https://example.com/socks5.txt"]

[http]
urls = [
    "https://example.com/http.txt",
    "file:///var/lib/lists/http.txt",
    "/var/lib/lists/more.txt",
    "lists/relative.txt",
    "https://example.com/http.txt",
]

[[source]]              # alternative explicit form
url = "https://example.org/list.json"
protocols = ["socks4", "http", "socks4"]

[[source]]
url = "C:\\lists\\mixed.txt"
protocols = "SOCKS5H"

[[source]]
url = "https://example.org/list.json"
protocols = ["http", "socks4"]
"#;
        let sources = parse_sources_file(text).unwrap();
        assert_eq!(
            sources,
            [
                source("https://example.com/socks5.txt", &[Protocol::Socks5]),
                source("https://example.com/http.txt", &[Protocol::Http]),
                source("file:///var/lib/lists/http.txt", &[Protocol::Http]),
                source("/var/lib/lists/more.txt", &[Protocol::Http]),
                source("lists/relative.txt", &[Protocol::Http]),
                source(
                    "https://example.org/list.json",
                    &[Protocol::Http, Protocol::Socks4]
                ),
                source("C:\\lists\\mixed.txt", &[Protocol::Socks5h]),
            ]
        );
    }

    #[test]
    fn the_same_url_under_two_protocols_is_two_sources() {
        let text =
            "[http]\nurls = [\"https://a.example/x\"]\n[https]\nurls = [\"https://a.example/x\"]\n";
        assert_eq!(parse_sources_file(text).unwrap().len(), 2);
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            (
                "[http]\nurls = [\"https://a.example/x\"]\n\n[ftp]\nurls = [\"https://b.example/y\"]\n",
                "sources file line 4: unknown protocol \"ftp\"",
            ),
            (
                "[[source]]\nurl = \"https://a.example/x\"\nprotocols = [\"http\", \"ftp\"]\n",
                "sources file line 3: unknown protocol \"ftp\"",
            ),
            (
                "[http]\nurls = [\n  \"https://a.example/x\",\n  \"ftp://b.example/y\",\n]\n",
                "sources file line 4: \"ftp://b.example/y\" is not a list location",
            ),
            (
                "[http]\nurls = [\"http:/a.example/x\"]\n",
                "sources file line 2: \"http:/a.example/x\" is not a list location",
            ),
            (
                "[http]\nurls = [\"https://\"]\n",
                "line 2: \"https://\" is not a list location",
            ),
            (
                "[http]\nurls = [\"file://server/share/x\"]\n",
                "line 2: \"file://server/share/x\"",
            ),
            (
                "[http]\nurl = \"https://a.example/x\"\n",
                "sources file line 2: unknown field \"url\" in [http]; expected urls",
            ),
            (
                "[http]\nurls = \"https://a.example/x\"\n",
                "sources file line 2: urls in [http] must be an array of strings",
            ),
            (
                "[http]\nurls = [1]\n",
                "line 2: urls in [http] must be an array",
            ),
            ("http = 5\n", "line 1: http must be a section"),
            (
                "\n[source]\nurl = \"https://a.example/x\"\n",
                "sources file line 2: write [[source]], with two brackets",
            ),
            (
                "\n[[source]]\nprotocols = [\"http\"]\n",
                "sources file line 2: [[source]] has no url",
            ),
            (
                "[[source]]\nurl = \"https://a.example/x\"\n",
                "line 1: [[source]] for https://a.example/x has no protocols",
            ),
            (
                "[[source]]\nurl = \"https://a.example/x\"\nprotocols = []\n",
                "has no protocols",
            ),
            (
                "[[source]]\nurl = \"https://a.example/x\"\nprotocol = \"http\"\n",
                "sources file line 3: unknown field \"protocol\" in [[source]]",
            ),
            (
                "[http]\nurls = [\"https://a.example/x\"\n",
                "sources file line 2: not valid TOML",
            ),
            (
                "[http]\nurls = [\"https://a.example/x\"]\n[http]\n",
                "line 3: not valid TOML",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_sources_file(text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{text:?}\n  gave: {err}\n  want: {expected}"
            );
        }
    }

    #[test]
    fn a_file_without_sources_is_refused() {
        for text in ["", "# nothing yet\n", "[http]\nurls = []\n"] {
            assert_eq!(
                parse_sources_file(text),
                Err(SourcesError::Empty),
                "{text:?}"
            );
        }
        assert!(SourcesError::Empty.to_string().starts_with("no sources in"));
    }
}
