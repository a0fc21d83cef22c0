//! Spotting a connection's first request in the bytes it sends, so that a connection which sends
//! none can be closed at a deadline: pure state machines fed with what each read returned.

/// Watches a connection's first bytes for the start of its first request.
pub(crate) trait FirstRequest: Default + Send + Unpin + 'static {
    /// Takes the bytes of one read, in order; true once the first request has arrived (and from
    /// then on, whatever follows).
    fn feed(&mut self, bytes: &[u8]) -> bool;
}

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A frame header: 24-bit payload length, type, flags, 31-bit stream id.
const FRAME_HEADER_LEN: usize = 9;

/// The HEADERS frame type: a request starts with one.
const HEADERS: u8 = 0x1;

/// Where an HTTP/2 connection is, from its first byte to its first HEADERS frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum H2Scan {
    /// Inside the connection preface; `matched` bytes of it seen.
    Preface { matched: usize },
    /// Inside a frame header; `have` of its 9 bytes seen.
    FrameHeader {
        header: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Inside a frame's payload (SETTINGS, WINDOW_UPDATE, PING...); `left` bytes to skip.
    Payload { left: u32 },
    /// A HEADERS frame has begun: the first request is here.
    Request,
    /// Not an HTTP/2 preface: no request will ever be recognized (the server refuses the bytes
    /// itself, and the deadline closes whatever lingers).
    NotHttp2,
}

impl Default for H2Scan {
    fn default() -> Self {
        H2Scan::Preface { matched: 0 }
    }
}

impl FirstRequest for H2Scan {
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self {
                H2Scan::Request => return true,
                H2Scan::NotHttp2 => return false,
                H2Scan::Preface { matched } => {
                    let take = bytes.len().min(PREFACE.len() - *matched);
                    if bytes[..take] != PREFACE[*matched..*matched + take] {
                        *self = H2Scan::NotHttp2;
                        return false;
                    }
                    *matched += take;
                    bytes = &bytes[take..];
                    if *matched == PREFACE.len() {
                        *self = H2Scan::FrameHeader {
                            header: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                H2Scan::FrameHeader { header, have } => {
                    let take = bytes.len().min(FRAME_HEADER_LEN - *have);
                    header[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    bytes = &bytes[take..];
                    if *have == FRAME_HEADER_LEN {
                        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        *self = if header[3] == HEADERS {
                            H2Scan::Request
                        } else if length == 0 {
                            H2Scan::FrameHeader {
                                header: [0; FRAME_HEADER_LEN],
                                have: 0,
                            }
                        } else {
                            H2Scan::Payload { left: length }
                        };
                    }
                }
                H2Scan::Payload { left } => {
                    let take = bytes.len().min(*left as usize);
                    *left -= take as u32;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        *self = H2Scan::FrameHeader {
                            header: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
            }
        }
        *self == H2Scan::Request
    }
}

/// Where an HTTP/1.x connection is in its first request's head, which ends with an empty line
/// (CRLF CRLF, or bare LFs, which the server accepts too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Http1Scan {
    /// Nothing but line ends so far: the server skips empty lines before a request line, so
    /// they begin no request.
    #[default]
    Start,
    /// Not just after a line end.
    InLine,
    /// Just after a line's LF.
    LineEnd,
    /// Just after a line's LF and a CR.
    LineEndCr,
    /// The head is complete: the first request is here.
    Request,
}

impl FirstRequest for Http1Scan {
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            *self = match (*self, byte) {
                (Http1Scan::Request, _) => return true,
                (Http1Scan::Start, b'\r' | b'\n') => Http1Scan::Start,
                (Http1Scan::LineEnd | Http1Scan::LineEndCr, b'\n') => Http1Scan::Request,
                (_, b'\n') => Http1Scan::LineEnd,
                (Http1Scan::LineEnd, b'\r') => Http1Scan::LineEndCr,
                _ => Http1Scan::InLine,
            };
        }
        *self == Http1Scan::Request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header of `length`, `kind`, flags 0, stream `stream`.
    fn frame(length: u32, kind: u8, stream: u32) -> Vec<u8> {
        let mut f = length.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(0);
        f.extend_from_slice(&stream.to_be_bytes());
        f
    }

    /// What a gRPC client sends: preface, SETTINGS (with 2 settings), WINDOW_UPDATE, HEADERS.
    fn client_start() -> (Vec<u8>, usize) {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(12, 0x4, 0));
        bytes.extend([0, 2, 0, 0, 0, 0, 0, 4, 0, 0x10, 0, 0]);
        bytes.extend(frame(4, 0x8, 0));
        bytes.extend([0, 0x0f, 0, 1]);
        let headers_at = bytes.len();
        bytes.extend(frame(3, HEADERS, 1));
        bytes.extend([0x82, 0x86, 0x84]);
        (bytes, headers_at)
    }

    fn h2_after(bytes: &[u8]) -> (H2Scan, bool) {
        let mut scan = H2Scan::default();
        let seen = scan.feed(bytes);
        (scan, seen)
    }

    #[test]
    fn h2_request_is_seen_at_the_first_headers_frame_header() {
        let (bytes, headers_at) = client_start();
        for end in 0..bytes.len() {
            let (_, seen) = h2_after(&bytes[..end]);
            assert_eq!(
                seen,
                end >= headers_at + FRAME_HEADER_LEN,
                "after {end} bytes"
            );
        }
        assert_eq!(h2_after(&bytes).0, H2Scan::Request);
    }

    #[test]
    fn h2_scan_does_not_depend_on_how_reads_cut_the_bytes() {
        let (bytes, headers_at) = client_start();
        for size in 1..=bytes.len() {
            let mut scan = H2Scan::default();
            let mut fed = 0;
            for piece in bytes.chunks(size) {
                let seen = scan.feed(piece);
                fed += piece.len();
                assert_eq!(
                    seen,
                    fed >= headers_at + FRAME_HEADER_LEN,
                    "pieces of {size}"
                );
            }
        }
    }

    #[test]
    fn h2_settings_alone_or_a_partial_headers_header_is_no_request() {
        let (bytes, headers_at) = client_start();
        let (scan, seen) = h2_after(&bytes[..headers_at]);
        assert!(!seen);
        assert!(matches!(scan, H2Scan::FrameHeader { have: 0, .. }));
        let (scan, seen) = h2_after(&bytes[..headers_at + 8]);
        assert!(!seen);
        assert!(matches!(scan, H2Scan::FrameHeader { have: 8, .. }));
        assert!(!h2_after(PREFACE).1);
        assert_eq!(h2_after(b"").0, H2Scan::Preface { matched: 0 });
    }

    #[test]
    fn h2_frame_type_bytes_inside_payloads_are_skipped() {
        // A SETTINGS payload full of 0x01 bytes, then an empty PING-like frame, then HEADERS.
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(18, 0x4, 0));
        bytes.extend([1u8; 18]);
        bytes.extend(frame(0, 0x4, 0));
        assert!(!h2_after(&bytes).1);
        bytes.extend(frame(0, HEADERS, 1));
        assert!(h2_after(&bytes).1);
        // A payload length over 16 bits is read whole.
        let mut big = PREFACE.to_vec();
        big.extend(frame(0x01_00_01, 0x0, 1));
        let (scan, _) = h2_after(&big);
        assert_eq!(scan, H2Scan::Payload { left: 0x01_00_01 });
    }

    #[test]
    fn h2_scan_gives_up_on_anything_but_the_preface() {
        for junk in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PRI * HTTP/1.1",
            b"\x16\x03\x01",
        ] {
            let (scan, seen) = h2_after(junk);
            assert_eq!(scan, H2Scan::NotHttp2, "{junk:?}");
            assert!(!seen);
            let mut scan = scan;
            assert!(!scan.feed(&frame(0, HEADERS, 1)));
        }
        let mut scan = H2Scan::default();
        assert!(!scan.feed(b"PRI * HTTP/2.0\r\n"));
        assert!(!scan.feed(b"\r\nXX"));
        assert_eq!(scan, H2Scan::NotHttp2);
    }

    #[test]
    fn h2_request_stays_seen() {
        let (bytes, _) = client_start();
        let mut scan = H2Scan::default();
        assert!(scan.feed(&bytes));
        assert!(scan.feed(b"anything at all"));
        assert!(scan.feed(b""));
    }

    fn http1_after(pieces: &[&[u8]]) -> bool {
        let mut scan = Http1Scan::default();
        pieces.iter().fold(false, |_, p| scan.feed(p))
    }

    #[test]
    fn http1_request_is_seen_at_the_end_of_its_head() {
        let head = b"GET /judge?token=1 HTTP/1.1\r\nHost: j\r\nVia: x\r\n\r\n";
        for end in 0..=head.len() {
            assert_eq!(
                http1_after(&[&head[..end]]),
                end == head.len(),
                "after {end} bytes"
            );
        }
        for size in 1..head.len() {
            let pieces: Vec<&[u8]> = head.chunks(size).collect();
            assert!(http1_after(&pieces), "pieces of {size}");
        }
        assert!(http1_after(&[b"GET / HTTP/1.0\n\n"]));
        assert!(http1_after(&[b"GET / HTTP/1.1\r\nHost: j\n", b"\r\n"]));
    }

    #[test]
    fn http1_lines_without_the_empty_one_are_no_request() {
        assert!(!http1_after(&[b"GET / HTTP/1.1\r\n"]));
        assert!(!http1_after(&[b"GET / HTTP/1.1\r\nHost: j\r\n", b"\r"]));
        assert!(!http1_after(&[b"GET / HTTP/1.1\r\n\r\r\n"]));
        assert!(!http1_after(&[b"\r\r\r\r"]));
        assert!(!http1_after(&[b"\r\n\r\n", b"\n\n"]));
        assert!(http1_after(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]));
        assert!(!http1_after(&[b""]));
        let mut scan = Http1Scan::default();
        assert!(scan.feed(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(scan.feed(b"more"));
    }
}
