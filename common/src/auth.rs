//! Bearer tokens on the wire: the interceptor clients and workers send theirs with, and the check
//! the coordinator applies to each service.

use std::path::{Path, PathBuf};

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A token that cannot go in an HTTP header.
#[derive(Debug, thiserror::Error)]
#[error("the token must be printable ASCII text")]
pub struct NotHeaderText;

/// Adds `authorization: Bearer TOKEN` to every request (nothing without a token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// A token that is not valid header text is refused here, with a message.
    pub fn new(token: Option<&str>) -> Result<BearerToken, NotHeaderText> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| NotHeaderText),
        }
    }
}

impl std::fmt::Debug for BearerToken {
    /// Never prints the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(set)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Why a token file gave no token. The text says it all: no error source is chained to it.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {}: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A token file is given to set a token: one without one is a mistake, never "no token".
    #[error("{} is empty: write the token on its first line", .path.display())]
    Empty { path: PathBuf },
}

/// The token kept in a file: its first line, trimmed; a file without one is an error.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| TokenFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// A token given on the command line (`flag`, trimmed; blank is none) or in a file (see
/// [`read_token_file`]), whichever is set; the two are exclusive flags.
pub fn token_from(
    flag: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, TokenFileError> {
    match file {
        Some(path) => read_token_file(path).map(Some),
        None => Ok(flag
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)),
    }
}

/// Compares without leaking, through timing, how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who may call a service: its own token (none: anyone), and the other role's token, which is
/// recognized so that it is told it has the wrong role.
#[derive(Clone, Default)]
pub struct TokenCheck {
    pub role: &'static str,
    pub expected: Option<String>,
    pub other: Option<String>,
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or a wrong one.
    Unauthenticated(String),
    /// The other role's token.
    WrongRole(String),
}

impl TokenCheck {
    /// Checks an `authorization` header's value (HTTP or gRPC metadata).
    pub fn check_header(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let role = self.role;
        match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
            None => Err(Refusal::Unauthenticated(format!(
                "a {role} token is required: send 'authorization: Bearer TOKEN' (--token or PROXYFLEET_TOKEN)"
            ))),
            Some(token) if same(token, expected) => Ok(()),
            Some(token) if self.other.as_deref().is_some_and(|o| same(token, o)) => Err(
                Refusal::WrongRole(format!("this token is not a {role} token")),
            ),
            Some(_) => Err(Refusal::Unauthenticated(format!("wrong {role} token"))),
        }
    }

    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.check_header(given).map_err(|refusal| match refusal {
            Refusal::Unauthenticated(m) => Status::unauthenticated(m),
            Refusal::WrongRole(m) => Status::permission_denied(m),
        })
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> Request<()> {
        let mut interceptor = BearerToken::new(token).unwrap();
        interceptor.call(Request::new(())).unwrap()
    }

    #[test]
    fn tokens_are_checked_by_role() {
        let check = TokenCheck {
            role: "client",
            expected: Some("c".into()),
            other: Some("w".into()),
        };
        assert!(check.check(&request(Some("c"))).is_ok());
        assert_eq!(
            check.check(&request(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check.check(&request(Some("x"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check.check(&request(Some("w"))).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let open = TokenCheck {
            role: "client",
            expected: None,
            other: None,
        };
        assert!(open.check(&request(None)).is_ok());
    }

    #[test]
    fn a_token_is_the_first_line_of_its_file_and_an_empty_file_names_itself() {
        let dir = std::env::temp_dir().join(format!(
            "proxyfleet-token-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let good = file("good.token", "  s3cret \nsecond line\n");
        assert_eq!(read_token_file(&good).unwrap(), "s3cret");
        for text in ["", "\n", "   \nthe second line is not the token\n"] {
            let empty = file("empty.token", text);
            let e = read_token_file(&empty).unwrap_err();
            assert!(matches!(e, TokenFileError::Empty { .. }), "{text:?}: {e:?}");
            assert!(e.to_string().contains("empty.token is empty"), "{e}");
        }
        let missing = dir.join("missing.token");
        let e = read_token_file(&missing).unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
        assert!(e.to_string().contains("missing.token"), "{e}");
        // The file wins when given; a blank flag is no token.
        assert_eq!(
            token_from(Some("flag"), Some(&good)).unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            token_from(Some(" flag "), None).unwrap().as_deref(),
            Some("flag")
        );
        assert_eq!(token_from(Some("  "), None).unwrap(), None);
        assert_eq!(token_from(None, None).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_must_be_header_text() {
        assert!(BearerToken::new(Some("bad\ntoken")).is_err());
        assert!(BearerToken::new(Some("  ")).unwrap().0.is_none());
    }
}
