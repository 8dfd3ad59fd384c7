//! The body text and the attachment list of a message, from its MIME tree.
//!
//! The tree is parsed with `mailparse`, which finds the parts without decoding their bodies;
//! only the parts that become body text are decoded (transfer encoding, then charset). An
//! attachment contributes its name, type and decoded size, and the size of a base64 body is
//! computed from its length: attachments are most of the bytes of most mail, and decoding them
//! only to measure them was the largest cost of building a document. The headers of the
//! message itself are read by the caller (mail-parser), HTML is turned into text with
//! mail-parser's converter.
//!
//! Which parts are body text:
//! * in `multipart/alternative`, one child: the first that is or contains `text/plain`, else the
//!   first with text at all (the HTML version); the other versions add no text, but their
//!   attachments (images of an HTML version) are listed;
//! * elsewhere every `text/plain` or `text/html` leaf that is inline (no `attachment`
//!   disposition, no `name` on its type), in order;
//! * a `multipart/*` part whose parts cannot be found (no boundary) is read as plain text.
//!
//! Every other leaf — other media types, `message/rfc822`, `attachment` parts, parts with a
//! `name` on their type, parts in an unknown transfer encoding (RFC 2045 §6.4) — is an
//! attachment.
//!
//! mailparse refuses a whole message for one malformed header block (a lone CR, a part whose
//! header lines start with a space); such a message is read by mail-parser instead, which
//! recovers more (and is reported as recovered).
//!
//! The message's own header block is read once: mail-parser reads it for the document's
//! fields, and gives the tree its three content fields and where the body starts
//! ([`Envelope`]); mailparse then reads only those fields and the body. Most of the header
//! bytes of real mail are trace and signature fields (`Received`, `DKIM-Signature`, `ARC-*`)
//! the tree does not need, and mailparse reads a header a character at a time.

use std::{borrow::Cow, cell::RefCell, sync::LazyLock};

use mail_parser::{HeaderName, Message, MessageParser, MimeHeaders as _};
use mailparse::{DispositionType, MailHeaderMap as _, ParsedMail};

/// Nesting deeper than this is not walked (mailparse itself stops at 100 levels).
const MAX_DEPTH: usize = 64;

/// What a message's MIME tree gives the document.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Content {
    /// The text of the body parts, each trimmed, separated by a blank line.
    pub body: String,
    pub attachments: Vec<Attachment>,
    /// Body parts whose transfer encoding could not be undone (their raw text is used).
    pub undecodable_parts: usize,
    /// The MIME structure is malformed: it was read by the lenient parser.
    pub recovered: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Attachment {
    pub filename: Option<String>,
    /// Lowercase `type/subtype`.
    pub content_type: String,
    /// Bytes after the transfer encoding is undone.
    pub size: u64,
}

/// Reads the body text and attachments of `raw` (an RFC 822 message). `None` when neither
/// parser can read it.
pub fn content(raw: &[u8]) -> Option<Content> {
    parse(raw, raw)
}

/// [`content`] of `raw` whose header block mail-parser has read already: the tree is read
/// from the message's content fields and body only (the same result, without a second read
/// of every header field). Without an envelope the whole message is read.
pub fn content_with(raw: &[u8], envelope: Option<&Envelope<'_>>) -> Option<Content> {
    let Some(envelope) = envelope else {
        return parse(raw, raw);
    };
    // One buffer per thread, reused: the tree borrows from it while it is walked.
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        for field in envelope.fields.iter().flatten() {
            buf.extend_from_slice(field);
        }
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(envelope.body);
        let out = parse(buf, raw);
        if buf.capacity() > SCRATCH_KEEP {
            *buf = Vec::new();
        }
        out
    })
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A scratch buffer grown beyond this by one big message is freed after it.
const SCRATCH_KEEP: usize = 1 << 20;

/// The tree of `tree` (the message, or its content fields and body); a message mailparse
/// refuses is read whole (`raw`) by the lenient parser.
fn parse(tree: &[u8], raw: &[u8]) -> Option<Content> {
    match mailparse::parse_mail(tree) {
        Ok(mail) => {
            let mut out = Content::default();
            walk(&mail, &mut out, true, 0);
            Some(out)
        }
        // mailparse refuses a whole message for one malformed header block (a lone CR, a
        // part whose headers start with a space, …); mail-parser reads what it can of it.
        Err(_) => lenient(raw),
    }
}

/// The fields of a message's own header block that shape its MIME tree, and its body, as
/// mail-parser found them.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The first `Content-Type`, `Content-Transfer-Encoding` and `Content-Disposition` fields,
    /// each as written (name, value, folded lines and line end).
    fields: [Option<&'a [u8]>; 3],
    body: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// The envelope of `raw` from `headers`, its header block as mail-parser read it (every
    /// field, ignored ones included, with their offsets). `None` when the block does not end
    /// where a body can start: a blank line right after the last field (a line the parser
    /// skipped, or no body at all, leave the message to be read whole).
    pub fn of(headers: &Message<'a>, raw: &'a [u8]) -> Option<Envelope<'a>> {
        let fields = &headers.parts.first()?.headers;
        let end = fields.last()?.offset_end as usize;
        if end == 0 || raw.get(end - 1) != Some(&b'\n') {
            return None;
        }
        // The blank line: whitespace, then its line end.
        let blank = raw
            .get(end..)?
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r'))?;
        if raw.get(end + blank) != Some(&b'\n') {
            return None;
        }
        let field = |name: HeaderName<'static>| -> Result<Option<&'a [u8]>, ()> {
            match fields.iter().find(|h| h.name == name) {
                None => Ok(None),
                Some(h) => {
                    let bytes = raw
                        .get(h.offset_field as usize..h.offset_end as usize)
                        .ok_or(())?;
                    if bytes.ends_with(b"\n") {
                        Ok(Some(bytes))
                    } else {
                        Err(())
                    }
                }
            }
        };
        Some(Envelope {
            fields: [
                field(HeaderName::ContentType).ok()?,
                field(HeaderName::ContentTransferEncoding).ok()?,
                field(HeaderName::ContentDisposition).ok()?,
            ],
            body: raw.get(end + blank + 1..)?,
        })
    }
}

/// mail-parser reading only the MIME headers of the parts.
static LENIENT: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .default_header_ignore()
});

/// The body and attachments as mail-parser reads them (it decodes every part, attachments
/// included: slower, but it recovers from more damage).
fn lenient(raw: &[u8]) -> Option<Content> {
    let m = LENIENT.parse(raw)?;
    let mut out = Content {
        recovered: true,
        ..Content::default()
    };
    for i in 0..m.text_body_count() {
        if let Some(text) = m.body_text(i) {
            push_text(&mut out.body, &text);
        }
    }
    for part in m.attachments() {
        let content_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_owned(),
            })
            .unwrap_or_else(|| "application/octet-stream".into())
            .to_ascii_lowercase();
        out.attachments.push(Attachment {
            filename: part.attachment_name().map(str::to_owned),
            content_type,
            size: part.len() as u64,
        });
    }
    Some(out)
}

/// Visits `part`; `text_wanted` is false inside the versions of an alternative that were not
/// chosen (their attachments are still listed).
fn walk(part: &ParsedMail<'_>, out: &mut Content, text_wanted: bool, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let mime = part.ctype.mimetype.as_str();
    if mime.starts_with("multipart/") && !part.subparts.is_empty() {
        if mime == "multipart/alternative" {
            let chosen = if text_wanted {
                choose(&part.subparts)
            } else {
                None
            };
            for (i, sub) in part.subparts.iter().enumerate() {
                walk(sub, out, chosen == Some(i), depth + 1);
            }
        } else {
            for sub in &part.subparts {
                walk(sub, out, text_wanted, depth + 1);
            }
        }
        return;
    }
    let disposition = part.get_content_disposition();
    let filename = disposition
        .params
        .get("filename")
        .or_else(|| part.ctype.params.get("name"))
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    let is_text = matches!(mime, "text/plain" | "text/html") || mime.starts_with("multipart/");
    let cte = transfer_encoding(part);
    // A text part is body unless it is marked as an attachment: an `attachment` disposition or
    // a `name` on its type (a file name in an `inline` disposition is only a name to save it
    // under), or content in an unknown transfer encoding.
    let inline = disposition.disposition != DispositionType::Attachment
        && !part.ctype.params.contains_key("name")
        && is_known(cte.as_deref());
    if is_text && inline {
        if text_wanted {
            add_text(body_of(part, &cte), &part.ctype, mime == "text/html", out);
        }
    } else {
        out.attachments.push(Attachment {
            filename,
            content_type: mime.to_ascii_lowercase(),
            size: decoded_size(body_of(part, &cte)),
        });
    }
}

/// The part's `Content-Transfer-Encoding`, lowercase, read leniently: case, whitespace and line
/// folding around the token, and anything after a `;`, are ignored. `None`: not declared (7bit).
fn transfer_encoding(part: &ParsedMail<'_>) -> Option<String> {
    let header = part.headers.get_first_header("Content-Transfer-Encoding")?;
    let value = header.get_value_raw();
    let token = value.split(|b| *b == b';').next().unwrap_or(value);
    Some(String::from_utf8_lossy(token.trim_ascii()).to_ascii_lowercase())
}

/// RFC 2045 §6.4: content in an unknown transfer encoding is opaque. `None`: not declared.
fn is_known(cte: Option<&str>) -> bool {
    cte.is_none_or(|cte| ["7bit", "8bit", "binary", "base64", "quoted-printable"].contains(&cte))
}

/// The part's body with `cte`, its transfer encoding as [`transfer_encoding`] read it
/// (mailparse's own reading takes the header's value exactly, so ` BASE64 ` or a folded value
/// would leave the body encoded).
fn body_of<'a>(part: &'a ParsedMail<'a>, cte: &Option<String>) -> mailparse::body::Body<'a> {
    mailparse::body::Body::new(body_bytes(part), &part.ctype, cte)
}

/// The bytes of a part's body as written. mailparse gives them only through its own reading of
/// the transfer encoding (which decodes the header's value first); but a part's `raw_bytes`
/// start with its header block (blank line included) and, unless the part is a multipart with
/// a boundary (whose body ends at the closing delimiter), continue with exactly its body.
fn body_bytes<'a>(part: &'a ParsedMail<'a>) -> &'a [u8] {
    if part.ctype.mimetype.starts_with("multipart") && part.ctype.params.contains_key("boundary") {
        return raw_bytes(&part.get_body_encoded());
    }
    let header_len = part.get_headers().get_raw_bytes().len();
    part.raw_bytes.get(header_len..).unwrap_or_default()
}

/// The version of an alternative whose text is used.
fn choose(versions: &[ParsedMail<'_>]) -> Option<usize> {
    versions
        .iter()
        .position(|v| has_type(v, "text/plain", 0))
        .or_else(|| versions.iter().position(|v| has_type(v, "text/html", 0)))
}

fn has_type(part: &ParsedMail<'_>, mime: &str, depth: usize) -> bool {
    depth <= MAX_DEPTH
        && (part.ctype.mimetype == mime
            || part.subparts.iter().any(|p| has_type(p, mime, depth + 1)))
}

fn add_text(
    body: mailparse::body::Body<'_>,
    ctype: &mailparse::ParsedContentType,
    html: bool,
    out: &mut Content,
) {
    use mailparse::body::Body;
    let bytes = match &body {
        Body::QuotedPrintable(b) => Cow::Owned(quoted_printable(b.get_raw())),
        Body::Base64(b) => match b.get_decoded() {
            Ok(bytes) => Cow::Owned(bytes),
            Err(_) => {
                // A body whose base64 is broken: its raw text is still worth indexing.
                out.undecodable_parts += 1;
                Cow::Borrowed(b.get_raw())
            }
        },
        other => Cow::Borrowed(raw_bytes(other)),
    };
    let text = decode_text(&bytes, ctype.params.get("charset").map(String::as_str));
    let text = if html {
        Cow::Owned(mail_parser::decoders::html::html_to_text(&text))
    } else {
        text
    };
    push_text(&mut out.body, &text);
}

/// A text part's characters. A known charset is decoded as declared (UTF-7 included). Without
/// one — none declared, `us-ascii` declared, or a label no one knows — the bytes are read as
/// UTF-8 when they are UTF-8 (much mail is, whatever it declares), else as windows-1252.
/// Borrowed when the bytes already are the text (UTF-8, or ASCII in an ASCII-compatible
/// charset): it is copied once, into the document's body.
fn decode_text<'a>(bytes: &'a [u8], declared: Option<&str>) -> Cow<'a, str> {
    let known = declared
        .map(str::trim)
        .filter(|label| !is_ascii_label(label))
        .and_then(|label| charset::Charset::for_label(label.as_bytes()));
    match known {
        Some(cs) => cs.decode(bytes).0,
        None => match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => encoding_rs::WINDOWS_1252.decode(bytes).0,
        },
    }
}

/// Undoes quoted-printable (RFC 2045 §6.7) leniently, byte for byte as the `quoted_printable`
/// crate does in its robust mode (which mailparse uses): bytes other than tab, CR, LF and
/// printable ASCII are dropped, whitespace at the end of a line is dropped, a `=` ending a line
/// joins it to the next, `=XY` with two hex digits (either case) is that byte, any other `=` is
/// kept as written, and lines end in CRLF. That crate collects its input into a `String` a
/// character at a time and decodes a byte at a time; this copies the runs between escapes and
/// line ends (about a tenth of the instructions; text parts are mostly quoted-printable).
/// Property test `quoted_printable_matches_the_crate`.
pub(crate) fn quoted_printable(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    undo_quoted_printable(input, &mut out);
    out
}

/// The length of [`quoted_printable`]'s output, without building it: an attachment is
/// measured, not decoded.
fn quoted_printable_len(input: &[u8]) -> u64 {
    let mut len = 0u64;
    undo_quoted_printable(input, &mut len);
    len
}

/// Where [`undo_quoted_printable`] writes: the bytes, or only their count.
trait QpOut {
    fn put(&mut self, bytes: &[u8]);
}

impl QpOut for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl QpOut for u64 {
    fn put(&mut self, bytes: &[u8]) {
        *self += bytes.len() as u64;
    }
}

fn undo_quoted_printable(input: &[u8], out: &mut impl QpOut) {
    let kept = |b: &u8| matches!(b, b'\t' | b'\r' | b'\n' | b' '..=b'~');
    let filtered: Cow<'_, [u8]> = if input.iter().all(kept) {
        Cow::Borrowed(input)
    } else {
        Cow::Owned(input.iter().copied().filter(kept).collect())
    };
    // `None` before the first line, then whether the next line starts after a line break.
    let mut line_break: Option<bool> = None;
    let mut rest: &[u8] = &filtered;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        rest = next;
        let end = line
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r'))
            .map_or(0, |i| i + 1);
        let mut line = &line[..end];
        if line_break == Some(true) {
            out.put(b"\r\n");
            line_break = Some(false);
        }
        loop {
            let Some(at) = memchr::memchr(b'=', line) else {
                out.put(line);
                line_break = Some(true);
                break;
            };
            out.put(&line[..at]);
            match line[at + 1..] {
                // A soft line break.
                [] => break,
                [only] => {
                    out.put(&[b'=', only]);
                    line_break = Some(true);
                    break;
                }
                [hi, lo, ..] => {
                    match (hex_digit(hi), hex_digit(lo)) {
                        (Some(hi), Some(lo)) => out.put(&[hi << 4 | lo]),
                        _ => out.put(&[b'=', hi, lo]),
                    }
                    line = &line[at + 3..];
                }
            }
        }
    }
    if filtered.ends_with(b"\n") && line_break == Some(true) {
        out.put(b"\r\n");
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    // A digit is under 16: the cast loses nothing.
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Labels of US-ASCII (RFC 2046's default): they say nothing about bytes above 127.
fn is_ascii_label(label: &str) -> bool {
    [
        "us-ascii",
        "ascii",
        "us",
        "ansi_x3.4-1968",
        "iso646-us",
        "iso-ir-6",
        "csascii",
    ]
    .iter()
    .any(|l| label.eq_ignore_ascii_case(l))
}

/// Appends a body part's text, trimmed, after a blank line.
fn push_text(body: &mut String, text: &str) {
    let text = text.trim();
    if !text.is_empty() {
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        body.push_str(text);
    }
}

/// The size of a part's content once its transfer encoding is undone. Base64 is measured, not
/// decoded: every 4 characters of its alphabet are 3 bytes.
fn decoded_size(body: mailparse::body::Body<'_>) -> u64 {
    use mailparse::body::Body;
    match body {
        Body::Base64(b) => base64_decoded_len(b.get_raw()),
        Body::QuotedPrintable(b) => quoted_printable_len(b.get_raw()),
        other => raw_bytes(&other).len() as u64,
    }
}

/// Bytes encoded by base64 text `encoded`: line breaks, other whitespace and padding do not
/// count.
pub fn base64_decoded_len(encoded: &[u8]) -> u64 {
    // Branch-free over blocks of 255 bytes (a `u8` count cannot overflow), so the compiler
    // vectorizes it: attachments are most of the bytes of a message.
    let mut chars = 0u64;
    for block in encoded.chunks(255) {
        let mut n = 0u8;
        for &b in block {
            let letter = (b | 0x20).wrapping_sub(b'a') < 26;
            let digit = b.wrapping_sub(b'0') < 10;
            n += u8::from(letter | digit | (b == b'+') | (b == b'/'));
        }
        chars += u64::from(n);
    }
    chars / 4 * 3
        + match chars % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        }
}

/// The bytes of a body as written in the message, whatever its transfer encoding.
fn raw_bytes<'a>(body: &mailparse::body::Body<'a>) -> &'a [u8] {
    use mailparse::body::Body;
    match body {
        Body::Base64(b) | Body::QuotedPrintable(b) => b.get_raw(),
        Body::SevenBit(b) | Body::EightBit(b) => b.get_raw(),
        Body::Binary(b) => b.get_raw(),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    /// `bytes` in base64, lines of `width` characters ending in CRLF, as MIME writes it.
    fn wrapped_base64(bytes: &[u8], width: usize) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .as_bytes()
            .chunks(width)
            .map(|l| format!("{}\r\n", String::from_utf8_lossy(l)))
            .collect()
    }

    #[test]
    fn base64_length_matches_decoding() {
        for len in 0..40usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            // MIME wraps lines; the line breaks do not count.
            let wrapped = wrapped_base64(&bytes, 8);
            assert_eq!(base64_decoded_len(wrapped.as_bytes()), len as u64, "{len}");
        }
    }

    #[test]
    fn alternative_with_related_html_lists_the_inline_image() {
        let raw = "Content-Type: multipart/alternative; boundary=a\r\n\r\n\
--a\r\nContent-Type: text/plain\r\n\r\nplain version\r\n\
--a\r\nContent-Type: multipart/related; boundary=r\r\n\r\n\
--r\r\nContent-Type: text/html\r\n\r\n<p>html version</p>\r\n\
--r\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <i1>\r\n\r\niVBORw0KGgo=\r\n\
--r--\r\n--a--\r\n";
        let c = content(raw.as_bytes()).expect("parsed");
        assert_eq!(c.body, "plain version");
        assert_eq!(
            c.attachments,
            vec![Attachment {
                filename: None,
                content_type: "image/png".into(),
                size: 8,
            }]
        );
    }

    #[test]
    fn html_is_chosen_when_no_version_is_plain() {
        let raw = "Content-Type: multipart/alternative; boundary=a\r\n\r\n\
--a\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<b>Gr=C3=BC=C3=9Fe</b>\r\n\
--a\r\nContent-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\n--a--\r\n";
        let c = content(raw.as_bytes()).expect("parsed");
        assert_eq!(c.body, "Grüße");
        assert_eq!(c.attachments.len(), 1);
        assert_eq!(c.attachments[0].content_type, "text/calendar");
    }

    #[test]
    fn text_parts_are_body_unless_marked_as_attachments() {
        let raw = "Content-Type: multipart/mixed; boundary=m\r\n\r\n\
--m\r\nContent-Type: text/plain\r\n\r\nbody one\r\n\
--m\r\nContent-Type: text/plain; name=notes.txt\r\n\r\nnot body\r\n\
--m\r\nContent-Type: text/html\r\nContent-Disposition: attachment\r\n\r\n<p>not body</p>\r\n\
--m\r\nContent-Type: text/plain\r\nContent-Disposition: inline; filename=\"shown.txt\"\r\n\r\nbody two\r\n\
--m\r\nContent-Type: text/html\r\n\r\n<p>body three</p>\r\n--m--\r\n";
        let c = content(raw.as_bytes()).expect("parsed");
        assert_eq!(c.body, "body one\n\nbody two\n\nbody three");
        let names: Vec<_> = c.attachments.iter().map(|a| a.filename.clone()).collect();
        assert_eq!(names, vec![Some("notes.txt".to_owned()), None]);
        assert_eq!(c.attachments[0].size, "not body".len() as u64);
    }

    #[test]
    fn broken_base64_body_keeps_its_raw_text_and_is_counted() {
        let raw = "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nthis is not base64 at all!\r\n";
        let c = content(raw.as_bytes()).expect("parsed");
        assert_eq!(c.undecodable_parts, 1);
        assert_eq!(c.body, "this is not base64 at all!");
    }

    #[test]
    fn a_part_in_an_unknown_transfer_encoding_is_an_attachment() {
        let raw = "Content-Type: multipart/mixed; boundary=m\r\n\r\n\
--m\r\nContent-Type: text/plain\r\n\r\nbody\r\n\
--m\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-unknown\r\n\r\nodd part\r\n--m--\r\n";
        let c = content(raw.as_bytes()).expect("parsed");
        assert_eq!(c.body, "body");
        assert_eq!(
            c.attachments,
            vec![Attachment {
                filename: None,
                content_type: "text/plain".into(),
                size: 8,
            }]
        );
    }

    #[test]
    fn the_envelope_agrees_on_odd_header_blocks() {
        let envelope = |raw: &'static str| {
            crate::document::PARSER
                .parse_headers(raw.as_bytes())
                .and_then(|m| Envelope::of(&m, raw.as_bytes()).map(|e| e.body.len()))
        };
        for raw in [
            // A line without a colon, a field without a name, a repeated content type, mixed
            // line ends: read the same way from the envelope as from the whole message.
            "Subject: a\r\ngarbage line\r\nContent-Type: text/plain\r\n\r\nbody\r\n",
            "Subject: a\r\n: empty name\r\nContent-Type: text/plain\r\n\r\nbody\r\n",
            "Subject: a\r\nContent-Type: text/html\r\nContent-Type: text/plain\r\n\r\n<b>body</b>\r\n",
            "Subject: a\nContent-Type: text/plain\r\n\r\nbody\r\n",
            "Subject: a\r\nContent-Type: text/plain\r\n \t\r\n\r\nbody\r\n",
        ] {
            assert!(envelope(raw).is_some(), "{raw:?}");
            let parsed = crate::document::PARSER.parse_headers(raw.as_bytes());
            let e = parsed
                .as_ref()
                .and_then(|m| Envelope::of(m, raw.as_bytes()));
            assert_eq!(
                content_with(raw.as_bytes(), e.as_ref()),
                content(raw.as_bytes()),
                "{raw:?}"
            );
        }
        // No blank line after the last field (a lone CR, no body at all): read whole.
        assert_eq!(
            envelope("Subject: x\r\nContent-Type: text/plain\r\n\rthe body\r\n"),
            None
        );
        assert_eq!(envelope("Subject: x\r\nContent-Type: text/plain\r\n"), None);
    }

    #[test]
    fn a_structure_mailparse_refuses_is_read_by_the_lenient_parser() {
        // A part whose header block starts with a space: the other parts are still read.
        let raw = "Content-Type: multipart/mixed; boundary=m\r\n\r\n\
--m\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n\
--m\r\n Content-Type: text/plain\r\n\r\nsecond part\r\n--m--\r\n";
        assert!(mailparse::parse_mail(raw.as_bytes()).is_err());
        let c = content(raw.as_bytes()).expect("read");
        assert!(c.recovered);
        assert!(c.body.starts_with("first part"), "{:?}", c.body);
        // A header block ended by a lone CR (old Mac line ends): read as far as it goes.
        let raw = "Subject: x\r\nContent-Type: text/plain\r\n\rthe body\r\n";
        assert!(mailparse::parse_mail(raw.as_bytes()).is_err());
        assert!(content(raw.as_bytes()).expect("read").recovered);
        // Well-formed mail never takes that path.
        let c = content(b"Content-Type: text/plain\r\n\r\nfine\r\n").expect("read");
        assert!(!c.recovered);
        assert_eq!(c.body, "fine");
    }

    #[test]
    fn charsets_declared_missing_wrong_or_unknown() {
        let read = |ctype: &str, body: &[u8]| {
            let mut raw = format!("Content-Type: {ctype}\r\n\r\n").into_bytes();
            raw.extend_from_slice(body);
            content(&raw).expect("parsed").body
        };
        let utf8 = "caf\u{e9} \u{20ac}".as_bytes();
        // Declared and known.
        assert_eq!(
            read("text/plain; charset=utf-8", utf8),
            "caf\u{e9} \u{20ac}"
        );
        assert_eq!(
            read("text/plain; charset=iso-8859-1", b"caf\xe9"),
            "caf\u{e9}"
        );
        assert_eq!(read("text/plain; charset=utf-7", b"caf+AOk-"), "caf\u{e9}");
        // Missing, US-ASCII or unknown: UTF-8 when it is, else windows-1252.
        for ctype in [
            "text/plain",
            "text/plain; charset=us-ascii",
            "text/plain; charset=unknown-8bit",
        ] {
            assert_eq!(read(ctype, utf8), "caf\u{e9} \u{20ac}", "{ctype}");
            assert_eq!(
                read(ctype, b"caf\xe9 \x80"),
                "caf\u{e9} \u{20ac}",
                "{ctype}"
            );
        }
    }

    #[test]
    fn transfer_encodings_are_read_leniently() {
        for cte in [" BASE64  ", "\r\n base64", "base64; x=y", "Base64"] {
            let raw = format!(
                "Content-Type: multipart/mixed; boundary=m\r\n\r\n\
--m\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding:{cte}\r\n\r\naGVsbG8=\r\n\
--m\r\nContent-Type: image/png\r\nContent-Transfer-Encoding:{cte}\r\n\r\niVBORw0KGgo=\r\n--m--\r\n"
            );
            let c = content(raw.as_bytes()).expect("parsed");
            assert_eq!(c.body, "hello", "{cte:?}");
            assert_eq!(c.attachments.len(), 1, "{cte:?}");
            assert_eq!(c.attachments[0].size, 8, "{cte:?}");
        }
    }

    #[test]
    fn multipart_without_boundary_is_read_as_text() {
        let raw = "Content-Type: multipart/mixed\r\n\r\njust text\r\n";
        let c = content(raw.as_bytes()).expect("parsed");
        assert_eq!(c.body, "just text");
        assert!(c.attachments.is_empty());
    }

    #[test]
    fn only_the_base64_alphabet_counts() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
            assert_eq!(base64_decoded_len(&[b; 4]) == 3, expected, "{b:#x}");
        }
    }

    /// A generated MIME tree and what `content` must read from it.
    #[derive(Debug, Clone)]
    enum Node {
        Plain(String, bool),
        Html(String, bool),
        File(Option<String>, &'static str, Vec<u8>),
        Mixed(Vec<Node>),
        Alternative(Vec<Node>),
    }

    fn node() -> impl proptest::strategy::Strategy<Value = Node> {
        use proptest::prelude::*;
        let words = "[a-z]{1,8}( [a-z]{1,8}){0,5}";
        let leaf = prop_oneof![
            (words, any::<bool>()).prop_map(|(t, b64)| Node::Plain(t, b64)),
            (words, any::<bool>()).prop_map(|(t, b64)| Node::Html(t, b64)),
            (
                proptest::option::of("[a-z]{1,8}\\.(pdf|png|zip)"),
                prop_oneof![
                    Just("application/pdf"),
                    Just("image/png"),
                    Just("message/rfc822")
                ],
                proptest::collection::vec(any::<u8>(), 0..300),
            )
                .prop_map(|(name, ctype, bytes)| Node::File(name, ctype, bytes)),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 1..4).prop_map(Node::Mixed),
                proptest::collection::vec(inner, 1..4).prop_map(Node::Alternative),
            ]
        })
    }

    fn render(node: &Node, out: &mut String, next_boundary: &mut usize) {
        let b64 = |bytes: &[u8]| wrapped_base64(bytes, 76);
        let text = |out: &mut String, ctype: &str, body: &str, base64: bool| {
            if base64 {
                out.push_str(&format!(
                    "Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
                    b64(body.as_bytes())
                ));
            } else {
                out.push_str(&format!("Content-Type: {ctype}\r\n\r\n{body}\r\n"));
            }
        };
        match node {
            Node::Plain(t, base64) => text(out, "text/plain", t, *base64),
            Node::Html(t, base64) => text(out, "text/html", &format!("<b>{t}</b>"), *base64),
            Node::File(name, ctype, bytes) => {
                out.push_str(&format!("Content-Type: {ctype}\r\n"));
                if let Some(n) = name {
                    out.push_str(&format!(
                        "Content-Disposition: attachment; filename=\"{n}\"\r\n"
                    ));
                }
                out.push_str(&format!(
                    "Content-Transfer-Encoding: base64\r\n\r\n{}",
                    b64(bytes)
                ));
            }
            Node::Mixed(children) | Node::Alternative(children) => {
                let sub = if matches!(node, Node::Mixed(_)) {
                    "mixed"
                } else {
                    "alternative"
                };
                *next_boundary += 1;
                let boundary = format!("b{next_boundary}");
                out.push_str(&format!(
                    "Content-Type: multipart/{sub}; boundary=\"{boundary}\"\r\n\r\n"
                ));
                for child in children {
                    out.push_str(&format!("--{boundary}\r\n"));
                    render(child, out, next_boundary);
                }
                out.push_str(&format!("--{boundary}--\r\n"));
            }
        }
    }

    fn contains(node: &Node, html: bool) -> bool {
        match node {
            Node::Plain(..) => !html,
            Node::Html(..) => html,
            Node::File(..) => false,
            Node::Mixed(c) | Node::Alternative(c) => c.iter().any(|n| contains(n, html)),
        }
    }

    /// The rules of the module, written over the generated tree.
    fn expected(node: &Node, wanted: bool, body: &mut Vec<String>, files: &mut Vec<Attachment>) {
        match node {
            Node::Plain(t, _) | Node::Html(t, _) => {
                if wanted {
                    body.push(t.clone());
                }
            }
            Node::File(name, ctype, bytes) => files.push(Attachment {
                filename: name.clone(),
                content_type: (*ctype).to_owned(),
                size: bytes.len() as u64,
            }),
            Node::Mixed(children) => {
                for c in children {
                    expected(c, wanted, body, files);
                }
            }
            Node::Alternative(children) => {
                let chosen = children
                    .iter()
                    .position(|c| contains(c, false))
                    .or_else(|| children.iter().position(|c| contains(c, true)));
                for (i, c) in children.iter().enumerate() {
                    expected(c, wanted && chosen == Some(i), body, files);
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn generated_trees_give_their_body_and_attachments(tree in node()) {
            let mut raw = String::from("From: a@x.test\r\nSubject: t\r\n");
            render(&tree, &mut raw, &mut 0);
            let (mut body, mut files) = (Vec::new(), Vec::new());
            expected(&tree, true, &mut body, &mut files);
            let c = content(raw.as_bytes()).expect("parsed");
            proptest::prop_assert_eq!(c.body, body.join("\n\n"), "{}", raw);
            proptest::prop_assert_eq!(c.attachments, files, "{}", raw);
            proptest::prop_assert_eq!(c.undecodable_parts, 0);
            proptest::prop_assert!(!c.recovered);
        }

        /// Byte for byte what mailparse's decoder (the `quoted_printable` crate, robust mode)
        /// gives, for input made of what quoted-printable bodies contain (escapes in both cases,
        /// broken escapes, soft breaks, trailing whitespace, CR, LF, bytes above 127, controls).
        #[test]
        fn quoted_printable_matches_the_crate(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-zA-Z0-9 .,]{1,12}",
                    "=[0-9A-Fa-f]{2}",
                    "=[0-9A-Za-z=\t \r\n]{0,2}",
                    "[ \t]{1,3}(\r\n|\n|\r)",
                    proptest::strategy::Just("\r\n".to_owned()),
                    proptest::strategy::Just("\n".to_owned()),
                    proptest::strategy::Just("\r".to_owned()),
                    proptest::strategy::Just("=".to_owned()),
                    "[\\x00-\\x1f\\x7f]",
                    "[é→€]",
                ],
                0..40,
            )
        ) {
            let input = pieces.concat();
            let expected = quoted_printable_crate::decode(
                input.as_bytes(),
                quoted_printable_crate::ParseMode::Robust,
            ).expect("robust mode");
            proptest::prop_assert_eq!(quoted_printable_len(input.as_bytes()), expected.len() as u64);
            proptest::prop_assert_eq!(quoted_printable(input.as_bytes()), expected, "{:?}", input);
        }

        #[test]
        fn body_bytes_are_mailparses_own(tree in node(), extra in "(Content-Transfer-Encoding: (base64|Quoted-Printable|7bit)\r\n)?") {
            let mut raw = format!("From: a@x.test\r\n{extra}");
            render(&tree, &mut raw, &mut 0);
            let mail = mailparse::parse_mail(raw.as_bytes()).expect("parsed");
            fn check(part: &ParsedMail<'_>) -> Result<(), proptest::test_runner::TestCaseError> {
                proptest::prop_assert_eq!(body_bytes(part), raw_bytes(&part.get_body_encoded()));
                part.subparts.iter().try_for_each(check)
            }
            check(&mail)?;
        }

        /// The tree read from the envelope is the tree read from the whole message, whatever
        /// header fields come before the content fields (folded, encoded, in any case, with
        /// CRLF or LF line ends).
        #[test]
        fn the_envelope_reads_the_same_tree(
            tree in node(),
            fields in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just("Received: from mx.x.test\r\n\tby mx.y.test with ESMTPS id 1;\r\n\tTue, 1 Jan 2019 00:00:00 -0800\r\n".to_owned()),
                proptest::strategy::Just("DKIM-Signature: v=1; a=rsa-sha256;\r\n d=x.test; s=s1; b=abc\r\n".to_owned()),
                proptest::strategy::Just("Subject: =?UTF-8?Q?caf=C3=A9?= and\r\n more\r\n".to_owned()),
                proptest::strategy::Just("From: \"Amy, P\" <amy@x.test>\r\n".to_owned()),
                proptest::strategy::Just("To: a@x.test,\r\n  b@x.test\r\n".to_owned()),
                proptest::strategy::Just("Date: Tue, 10 Oct 2023 12:00:00 +0200\r\n".to_owned()),
                proptest::strategy::Just("Message-ID: <id@x.test>\r\n".to_owned()),
                proptest::strategy::Just("content-disposition: inline\r\n".to_owned()),
                proptest::strategy::Just("X-Empty:\r\n".to_owned()),
                "X-[A-Za-z]{1,10}: [ -~]{0,60}\r\n",
            ], 0..8),
            lf in proptest::bool::ANY,
        ) {
            let mut raw = fields.concat();
            render(&tree, &mut raw, &mut 0);
            if lf {
                raw = raw.replace("\r\n", "\n");
            }
            let parsed = crate::document::PARSER.parse_headers(raw.as_bytes());
            let envelope = parsed.as_ref().and_then(|m| Envelope::of(m, raw.as_bytes()));
            proptest::prop_assert!(envelope.is_some(), "{}", raw);
            let whole = content(raw.as_bytes());
            proptest::prop_assert_eq!(content_with(raw.as_bytes(), envelope.as_ref()), whole, "{}", raw);
        }

        #[test]
        fn base64_length_is_the_decoded_length(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), width in 1usize..100) {
            let wrapped = wrapped_base64(&bytes, width);
            proptest::prop_assert_eq!(base64_decoded_len(wrapped.as_bytes()), bytes.len() as u64);
        }
    }
}
