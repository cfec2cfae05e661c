//! The HTTP/1.1 client codec the gateway speaks to its backends.
//!
//! Request heads are written straight from the client's parsed head, so nothing is copied into
//! an intermediate request, and a retry writes the same borrowed head again. Response heads are
//! parsed with `httparse` (the parser hyper uses); their end-to-end fields are kept as the
//! lines the backend sent, to be written to the client as they are, since the proxy only adds
//! to them and a header map would be built and encoded again for nothing. Response bodies
//! follow the framing rules of RFC 9112 section 6.

use std::io;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use hyper::ext::ReasonPhrase;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Version};

/// Header fields accepted in a response head or trailer section (hyper's client default).
const MAX_HEADERS: usize = 100;

/// The largest response head accepted, interim responses included (hyper's client default).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// The longest chunk-size line accepted, extensions included.
const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// What a header field means to a hop, told from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    ContentLength,
    TransferEncoding,
    Connection,
    Te,
    Date,
    /// Another field that describes one connection rather than the message (RFC 9110 7.6.1).
    HopByHop,
    /// An end-to-end field.
    Other,
}

/// Classifies a field name in any case. The length picks at most two candidates, so the
/// common names cost one comparison or none.
pub(crate) fn field_kind(name: &[u8]) -> FieldKind {
    let is = |candidate: &[u8]| name.eq_ignore_ascii_case(candidate);
    match name.len() {
        2 if is(b"te") => FieldKind::Te,
        4 if is(b"date") => FieldKind::Date,
        7 if is(b"trailer") || is(b"upgrade") => FieldKind::HopByHop,
        10 if is(b"connection") => FieldKind::Connection,
        10 if is(b"keep-alive") => FieldKind::HopByHop,
        14 if is(b"content-length") => FieldKind::ContentLength,
        16 if is(b"proxy-connection") => FieldKind::HopByHop,
        17 if is(b"transfer-encoding") => FieldKind::TransferEncoding,
        18 if is(b"proxy-authenticate") => FieldKind::HopByHop,
        19 if is(b"proxy-authorization") => FieldKind::HopByHop,
        _ => FieldKind::Other,
    }
}

impl FieldKind {
    /// Whether the field is this hop's only and must not be passed on.
    pub(crate) fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Self::TransferEncoding | Self::Connection | Self::Te | Self::HopByHop
        )
    }
}

/// A request head as it is sent to one backend, borrowed from the client's request.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target in origin form (`/path?query`).
    pub target: &'a str,
    /// The header fields, hop-by-hop ones already removed.
    pub headers: &'a HeaderMap,
    /// A `Host` to add because the client sent none (HTTP/1.0).
    pub host: Option<&'a HeaderValue>,
}

/// What the request head gets to delimit its body, beside the fields it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiter {
    /// Nothing: no body, or the head's own `Content-Length` says.
    None,
    /// `Content-Length`, for a body held whole.
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a body of unknown length.
    Chunked,
}

/// Appends the request head to `out`, delimited by `delimiter`.
pub fn encode_request_head(out: &mut Vec<u8>, head: &RequestHead<'_>, delimiter: Delimiter) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(host) = head.host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match delimiter {
        Delimiter::None => {}
        Delimiter::Length(n) => encode_length(out, n),
        Delimiter::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a `Content-Length` field.
pub(crate) fn encode_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    encode_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, without the formatting machinery.
pub(crate) fn encode_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a chunk-size line (`1a2b\r\n`) to `out`.
pub fn encode_chunk_size(out: &mut Vec<u8>, size: usize) {
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(size >> (shift * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes, or none at all (HEAD, 204, 304).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the backend closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status code.
    pub status: StatusCode,
    /// The HTTP version the backend answered with.
    pub version: Version,
    /// The reason phrase, kept only when it differs from the standard one.
    pub reason: Option<ReasonPhrase>,
    /// The end-to-end header fields.
    pub fields: ResponseFields,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// A response's end-to-end header fields as the backend sent them.
#[derive(Debug, Clone, Default)]
pub struct ResponseFields {
    /// `name: value` lines, each ending in CRLF, in the backend's order and case; hop-by-hop
    /// fields, those `Connection` names, and `Content-Length` are left out.
    pub lines: Bytes,
    /// The backend's `Content-Length`.
    pub content_length: Option<u64>,
    /// Whether the backend sent a `Date`.
    pub dated: bool,
}

impl ResponseFields {
    /// The value of the first field called `name` (in any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.lines.split(|b| *b == b'\n').find_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| line[colon + 1..].trim_ascii())
        })
    }
}

/// Parses the response head at the front of `buf`, skipping interim (1xx) responses, and
/// removes what it consumed. `Ok(None)` means more bytes are needed.
pub fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> io::Result<Option<ResponseHead>> {
    // The bytes are frozen so header values can share them instead of being copied; a partial
    // head (rare: it means the head did not arrive in one read) is copied back.
    let data = buf.split().freeze();
    let mut offset = 0;
    loop {
        match parse_one(&data, offset, head_request)? {
            Parsed::Partial => {
                let rest = &data[offset..];
                if rest.len() >= MAX_HEAD_BYTES {
                    return Err(invalid("response head too large"));
                }
                buf.reserve(rest.len() + 4096);
                buf.extend_from_slice(rest);
                return Ok(None);
            }
            Parsed::Interim(len) => offset += len,
            Parsed::Complete(head, len) => {
                let rest = &data[offset + len..];
                if !rest.is_empty() {
                    buf.extend_from_slice(rest);
                }
                return Ok(Some(head));
            }
        }
    }
}

/// Splits off a body that arrived whole with its head, without copying it.
pub fn take_whole_body(buf: &mut BytesMut, framing: Framing) -> Option<Bytes> {
    match framing {
        Framing::Length(n) if n > 0 && buf.len() as u64 == n => Some(buf.split().freeze()),
        _ => None,
    }
}

enum Parsed {
    Partial,
    /// An interim (1xx) response of this many bytes.
    Interim(usize),
    Complete(ResponseHead, usize),
}

fn parse_one(data: &Bytes, offset: usize, head_request: bool) -> io::Result<Parsed> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        &data[offset..],
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(invalid(e)),
    };
    let code = response.code.ok_or_else(|| invalid("no status code"))?;
    let status = StatusCode::from_u16(code).map_err(invalid)?;
    if status.is_informational() {
        return Ok(Parsed::Interim(len));
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = response
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .and_then(|r| ReasonPhrase::try_from(data.slice_ref(r.as_bytes())).ok());

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut dated = false;
    // Fields a `Connection` names are hop-by-hop too (rare: the list is empty).
    let mut named: Vec<&[u8]> = Vec::new();
    let mut kinds = [FieldKind::Other; MAX_HEADERS];
    for (header, kind) in response.headers.iter().zip(&mut kinds) {
        *kind = field_kind(header.name.as_bytes());
        if *kind == FieldKind::ContentLength {
            let n = parse_content_length(header.value)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(invalid("conflicting Content-Length values"));
            }
            content_length = Some(n);
        } else if *kind == FieldKind::TransferEncoding {
            transfer_encoding = true;
            // Only the final coding decides the framing.
            chunked = last_token(header.value).eq_ignore_ascii_case(b"chunked");
        } else if *kind == FieldKind::Connection {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        } else if *kind == FieldKind::Date {
            dated = true;
        }
    }
    let mut lines = Vec::with_capacity(len);
    for (header, kind) in response.headers.iter().zip(kinds) {
        let name = header.name.as_bytes();
        if kind.is_hop_by_hop()
            || kind == FieldKind::ContentLength
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        lines.extend_from_slice(name);
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(header.value);
        lines.extend_from_slice(b"\r\n");
    }

    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let framing =
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Length(0)
        } else if transfer_encoding {
            // A length beside a transfer coding is a smuggling risk: the connection is not reused.
            keep_alive &= content_length.is_none();
            if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if let Some(n) = content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    let head = ResponseHead {
        status,
        version,
        reason,
        fields: ResponseFields {
            lines: Bytes::from(lines),
            content_length,
            dated,
        },
        framing,
        keep_alive,
    };
    Ok(Parsed::Complete(head, len))
}

pub(crate) fn parse_content_length(value: &[u8]) -> io::Result<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid("invalid Content-Length"));
    }
    Ok(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

pub(crate) fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF that ends a chunk.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    /// The body has ended.
    Done,
}

/// What the chunked decoder could take from the buffer.
#[derive(Debug)]
pub enum Decoded {
    /// Some body bytes.
    Data(Bytes),
    /// The trailer fields; the body has ended.
    Trailers(HeaderMap),
    /// The body has ended without trailers.
    End,
    /// More bytes are needed.
    NeedMore,
}

impl Chunked {
    /// Decodes from the front of `buf`, removing what it consumed. A trailer section over
    /// `max_trailer_bytes` is an error; until it is whole it is parsed again from its start on
    /// each call, which that bound keeps cheap.
    pub fn decode(&mut self, buf: &mut BytesMut, max_trailer_bytes: usize) -> io::Result<Decoded> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_CHUNK_LINE_BYTES {
                            return Err(invalid("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    *self = if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    *self = if n == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - n)
                    };
                    return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Chunked::Done;
                        return Ok(Decoded::End);
                    }
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut slots).map_err(invalid)? {
                        httparse::Status::Partial => {
                            if buf.len() >= max_trailer_bytes {
                                return Err(invalid("trailer section too large"));
                            }
                            return Ok(Decoded::NeedMore);
                        }
                        httparse::Status::Complete((len, _)) if len > max_trailer_bytes => {
                            return Err(invalid("trailer section too large"));
                        }
                        httparse::Status::Complete((len, fields)) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for field in fields.iter() {
                                trailers.append(
                                    HeaderName::from_bytes(field.name.as_bytes())
                                        .map_err(invalid)?,
                                    HeaderValue::from_bytes(field.value).map_err(invalid)?,
                                );
                            }
                            buf.advance(len);
                            *self = Chunked::Done;
                            return Ok(Decoded::Trailers(trailers));
                        }
                    }
                }
                Chunked::Done => return Ok(Decoded::End),
            }
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    // Chunk extensions (`;name=value`) are allowed and ignored.
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("invalid chunk size"));
    }
    digits.iter().try_fold(0u64, |n, d| {
        let digit = char::from(*d)
            .to_digit(16)
            .ok_or_else(|| invalid("invalid chunk size"))?;
        Ok(n << 4 | u64::from(digit))
    })
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head_request: bool) -> (Option<ResponseHead>, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let head = parse_response_head(&mut buf, head_request).unwrap();
        (head, buf)
    }

    #[test]
    fn a_request_head_is_written_with_the_missing_host_and_chunked_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        let host = HeaderValue::from_static("10.0.0.1:80");
        let head = RequestHead {
            method: &Method::POST,
            target: "/p?q=1",
            headers: &headers,
            host: Some(&host),
        };
        let mut out = Vec::new();
        encode_request_head(&mut out, &head, Delimiter::Chunked);
        assert_eq!(
            out,
            b"POST /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: 10.0.0.1:80\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_body_held_whole_is_given_its_length() {
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &Method::GET,
            target: "/",
            headers: &headers,
            host: None,
        };
        let mut out = Vec::new();
        encode_request_head(&mut out, &head, Delimiter::Length(41));
        assert_eq!(out, b"GET / HTTP/1.1\r\ncontent-length: 41\r\n\r\n");
    }

    #[test]
    fn decimals_are_written_without_formatting() {
        for n in [0, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            encode_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (size, text) in [(1, "1"), (15, "f"), (16, "10"), (0x1a2b, "1a2b")] {
            let mut out = Vec::new();
            encode_chunk_size(&mut out, size);
            assert_eq!(out, format!("{text}\r\n").as_bytes());
        }
    }

    #[test]
    fn a_head_and_its_whole_body_arrive_together() {
        let (head, mut rest) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Y: z\r\n\r\nok\n",
            false,
        );
        let head = head.unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.keep_alive);
        assert!(head.reason.is_none());
        assert_eq!(head.fields.get("x-y"), Some(&b"z"[..]));
        assert_eq!(head.fields.content_length, Some(3));
        assert_eq!(take_whole_body(&mut rest, head.framing).unwrap(), "ok\n");
    }

    #[test]
    fn a_partial_head_waits_and_keeps_its_bytes() {
        let (head, buf) = parse(b"HTTP/1.1 200 OK\r\nContent-Le", false);
        assert!(head.is_none());
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\nContent-Le");
    }

    #[test]
    fn interim_responses_are_skipped() {
        let (head, _) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert_eq!(head.unwrap().status, StatusCode::CREATED);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &[u8], head_request| parse(raw, head_request).0.unwrap().framing;
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true),
            Framing::Length(0)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            ),
            Framing::Length(0)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
        let close = parse(b"HTTP/1.1 200 OK\r\n\r\nabc", false).0.unwrap();
        assert_eq!(
            (close.framing, close.keep_alive),
            (Framing::UntilClose, false)
        );
        let old = parse(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false)
            .0
            .unwrap();
        assert!(!old.keep_alive);
        let closing = parse(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert!(!closing.0.unwrap().keep_alive);
    }

    #[test]
    fn field_names_are_classified_in_any_case() {
        assert_eq!(field_kind(b"Content-Length"), FieldKind::ContentLength);
        assert_eq!(field_kind(b"TE"), FieldKind::Te);
        assert_eq!(field_kind(b"Keep-Alive"), FieldKind::HopByHop);
        assert_eq!(field_kind(b"Connection"), FieldKind::Connection);
        assert_eq!(field_kind(b"User-Agent"), FieldKind::Other);
        assert_eq!(field_kind(b"Proxy-Authorization"), FieldKind::HopByHop);
        assert!(!FieldKind::Date.is_hop_by_hop());
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_left_out() {
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
              Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Kept: A b\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .0
        .unwrap();
        assert_eq!(
            &head.fields.lines[..],
            b"Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Kept: A b\r\n"
        );
        assert!(head.fields.dated);
    }

    #[test]
    fn a_custom_reason_phrase_is_kept() {
        let head = parse(b"HTTP/1.1 200 Fine\r\ncontent-length: 0\r\n\r\n", false)
            .0
            .unwrap();
        assert_eq!(head.reason.unwrap().as_bytes(), b"Fine");
    }

    #[test]
    fn bad_lengths_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            assert!(parse_response_head(&mut BytesMut::from(raw), false).is_err());
        }
    }

    #[test]
    fn a_chunked_body_decodes_across_reads_with_trailers() {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::from(&b"3;ext=1\r\nabc\r\n2\r"[..]);
        let mut body = Vec::new();
        loop {
            match state.decode(&mut buf, MAX_HEAD_BYTES).unwrap() {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::NeedMore => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        buf.extend_from_slice(b"\nde\r\n0\r\nx-sum: 5\r\n\r\n");
        let trailers = loop {
            match state.decode(&mut buf, MAX_HEAD_BYTES).unwrap() {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => break t,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(body, b"abcde");
        assert_eq!(trailers["x-sum"], "5");
        assert!(buf.is_empty());
        assert!(matches!(
            state.decode(&mut buf, MAX_HEAD_BYTES).unwrap(),
            Decoded::End
        ));
    }

    #[test]
    fn a_chunked_body_without_trailers_ends() {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert!(matches!(
            state.decode(&mut buf, MAX_HEAD_BYTES).unwrap(),
            Decoded::End
        ));
        assert!(buf.is_empty());
    }
}
