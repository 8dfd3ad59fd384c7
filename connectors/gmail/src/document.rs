//! One Elasticsearch document per (mailbox, message), built from `messages.get?format=raw`.
//!
//! Fields (see `docs/gmail.md`): `mailbox`, `message_id`, `thread_id`, `rfc822_message_id`,
//! `history_id`, `labels`, `title` + `subject`, `from`, `to`, `cc`, `bcc`, `reply_to`,
//! `participants`, `date`, `internal_date`, `snippet`, `body`, `attachments`,
//! `attachment_names`, `has_attachments`, `size`, `url`; `_allow_access_control` with DLS;
//! `_attachment` (standard base64 of the raw RFC 822 message) with `include_full_raw_message`.

use std::{borrow::Cow, sync::LazyLock};

use chrono::{DateTime, TimeZone as _, Utc};
use connector_framework::{
    connector::{DocumentEncoder, EncodedDocument, SourceWriter},
    model::timestamp,
};
use mail_parser::{Address, HeaderName, Message, MessageParser};
use serde_json::{Value, json};

use crate::{
    api::{RawBody, RawMessage},
    mime::Envelope,
};

/// How a document is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct DocOptions {
    pub dls: bool,
    pub include_raw: bool,
}

/// Problems met while building a document (the document is still produced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocWarning {
    MissingRaw,
    InvalidBase64,
    UnparsableMime,
    /// A body part whose base64 or quoted-printable is broken (its raw text is indexed).
    UndecodableBody,
    /// The MIME structure is malformed; body and attachments are what the lenient parser read.
    MimeRecovered,
    ParserPanicked,
}

/// The `_id` of a message document: unique across mailboxes (Gmail ids are unique per mailbox
/// only). At most 254 + 1 + ~16 bytes, well below Elasticsearch's 512-byte limit.
pub fn doc_id(mailbox: &str, message_id: &str) -> String {
    let mut id = String::with_capacity(mailbox.len() + 1 + message_id.len());
    id.push_str(mailbox);
    id.make_ascii_lowercase();
    id.push(':');
    id.push_str(message_id);
    id
}

/// Decodes Gmail's base64url `raw` leniently: padding optional, standard alphabet and
/// whitespace tolerated. Gmail's own encoding decodes directly (SIMD); only other input is
/// cleaned (byte-wise) first.
pub fn decode_raw(bytes: &[u8]) -> Option<Vec<u8>> {
    let unpadded = bytes
        .strip_suffix(b"==")
        .or_else(|| bytes.strip_suffix(b"="))
        .unwrap_or(bytes);
    if let Ok(decoded) = base64_simd::URL_SAFE_NO_PAD.decode_to_vec(unpadded) {
        return Some(decoded);
    }
    let cleaned: Vec<u8> = bytes
        .iter()
        .filter(|b| !b.is_ascii_whitespace() && **b != b'=')
        .map(|b| match b {
            b'+' => b'-',
            b'/' => b'_',
            b => *b,
        })
        .collect();
    base64_simd::URL_SAFE_NO_PAD.decode_to_vec(&cleaned).ok()
}

/// The `_timestamp` of a message: its date (`internalDate`, millisecond precision) in ISO-8601,
/// with the sub-millisecond digits carrying the message's `historyId` (mod 10^6).
///
/// `_timestamp` is the framework's change marker (equal = unchanged, skipped when
/// `skip_unchanged` is on). `internalDate` never changes, but labels do (read, trash, user
/// labels), and every change gives the message a new `historyId`; folding it into the digits
/// below the millisecond keeps `_timestamp` equal to the message date to the millisecond while
/// making any change visible. Without a history id the plain date is used.
pub fn change_marker(date: DateTime<Utc>, history_id: Option<u64>) -> String {
    let plain = timestamp(date);
    match history_id {
        // `…SS.mmmuuu+00:00` → `…SS.mmm` + six digits of the history id + `+00:00`.
        Some(h) => match plain.get(..plain.len().saturating_sub(9)) {
            Some(millis) => {
                use std::fmt::Write as _;
                let mut marker = String::with_capacity(plain.len());
                marker.push_str(millis);
                // Writing into a String cannot fail.
                let _ = write!(marker, "{:06}+00:00", h % 1_000_000);
                marker
            }
            None => plain,
        },
        None => plain,
    }
}

/// The header parser, told which headers the document uses: the others (`Received`, `List-*`,
/// `X-*`, `DKIM-Signature`, …) are skipped instead of parsed; real mail carries many of them.
/// The body and the attachments are read from the MIME tree by [`crate::mime`].
pub(crate) static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .header_text(HeaderName::Subject)
        .header_date(HeaderName::Date)
        .header_address(HeaderName::From)
        .header_address(HeaderName::To)
        .header_address(HeaderName::Cc)
        .header_address(HeaderName::Bcc)
        .header_address(HeaderName::ReplyTo)
        .header_id(HeaderName::MessageId)
        .default_header_ignore()
});

fn internal_date(ms: Option<&str>) -> Option<DateTime<Utc>> {
    let ms: i64 = ms?.trim().parse().ok()?;
    Utc.timestamp_millis_opt(ms).single()
}

/// Builds the document of message `meta` in `mailbox`, written straight into its `_source`
/// by the job's `encoder` (`None`: not indexed — excluded by the basic sync rules or over the
/// size limit, as the encoder decides and counts).
pub fn build_document(
    encoder: &DocumentEncoder,
    mailbox: &str,
    message_id: &str,
    meta: &RawMessage,
    options: DocOptions,
) -> (Option<EncodedDocument>, Vec<DocWarning>) {
    let mut warnings = Vec::new();
    let raw = match &meta.raw {
        None => {
            warnings.push(DocWarning::MissingRaw);
            None
        }
        Some(RawBody::Decoded(bytes)) => Some(bytes.as_slice()),
        Some(RawBody::Invalid) => {
            warnings.push(DocWarning::InvalidBase64);
            None
        }
    };

    let (headers, content) = raw.map_or((None, None), |bytes| parse(bytes, &mut warnings));

    let owner = mailbox.to_ascii_lowercase();
    let body = content.as_ref().map_or("", |c| c.body.as_str());
    // The body and a kilobyte of metadata, plus the raw message in base64 when it is sent.
    let mut hint = body.len() + body.len() / 16 + 1024;
    if options.include_raw {
        hint += raw.map_or(0, <[u8]>::len) / 3 * 4 + 8;
    }
    let mut source = encoder.source(hint);
    source.string("mailbox", &owner);
    source.string("message_id", message_id);
    if let Some(t) = &meta.thread_id {
        source.string("thread_id", t);
    }
    if let Some(h) = &meta.history_id {
        source.string("history_id", h);
    }
    source.strings("labels", &meta.label_ids);
    if let Some(s) = &meta.snippet {
        source.string("snippet", &unescape_entities(s));
    }
    let internal = internal_date(meta.internal_date.as_deref());
    if let Some(d) = internal {
        source.string("internal_date", &timestamp(d));
    }
    if let Some(size) = meta.size_estimate.or(raw.map(|r| r.len() as u64)) {
        source.u64("size", size);
    }
    const URL_PREFIX: &str = "https://mail.google.com/mail/u/";
    let mut url = String::with_capacity(URL_PREFIX.len() + owner.len() + 6 + message_id.len());
    url.push_str(URL_PREFIX);
    url.push_str(&owner);
    url.push_str("/#all/");
    url.push_str(message_id);
    source.string("url", &url);
    if let Some(h) = &headers {
        h.write(&mut source);
    }
    source.string("body", body);
    let attachments = content
        .as_ref()
        .map_or(&[][..], |c| c.attachments.as_slice());
    source.bool("has_attachments", !attachments.is_empty());
    source.value(
        "attachments",
        &Value::Array(
            attachments
                .iter()
                .map(|a| {
                    json!({
                        "filename": a.filename,
                        "content_type": a.content_type,
                        "size": a.size,
                    })
                })
                .collect(),
        ),
    );
    source.strings(
        "attachment_names",
        attachments.iter().filter_map(|a| a.filename.as_deref()),
    );
    if options.dls {
        source.strings("_allow_access_control", [&owner]);
    }
    if options.include_raw
        && let Some(bytes) = raw
    {
        source.base64("_attachment", bytes);
    }

    let when = internal.or(headers.and_then(|h| h.date));
    let version = meta
        .history_id
        .as_deref()
        .and_then(|h| h.trim().parse::<u64>().ok());
    (
        source.finish(
            doc_id(mailbox, message_id),
            when.map(|d| change_marker(d, version)),
        ),
        warnings,
    )
}

/// The header fields and the MIME content of `raw`, with the problems met on the way.
fn parse(
    raw: &[u8],
    warnings: &mut Vec<DocWarning>,
) -> (Option<Headers>, Option<crate::mime::Content>) {
    // Neither parser is expected to panic; a panic on one hostile message must not end the
    // sync, so it is contained and reported like any malformed message. Nothing is written
    // before both are done.
    let parsed = std::panic::catch_unwind(|| {
        let parsed = PARSER.parse_headers(raw);
        let envelope = parsed.as_ref().and_then(|m| Envelope::of(m, raw));
        let headers = parsed.as_ref().map(Headers::read);
        (headers, crate::mime::content_with(raw, envelope.as_ref()))
    });
    let Ok((headers, content)) = parsed else {
        warnings.push(DocWarning::ParserPanicked);
        return (None, None);
    };
    match &content {
        Some(content) => {
            if content.undecodable_parts > 0 {
                warnings.push(DocWarning::UndecodableBody);
            }
            if content.recovered {
                warnings.push(DocWarning::MimeRecovered);
            }
        }
        None => warnings.push(DocWarning::UnparsableMime),
    }
    (headers, content)
}

/// The header fields of a message.
struct Headers {
    subject: String,
    /// `from`, `to`, `cc`, `bcc`, `reply_to`: `Name <address>` or what there is of it.
    addresses: [Vec<String>; 5],
    /// Every address in them, lowercase, sorted, once.
    participants: Vec<String>,
    rfc822_message_id: Option<String>,
    /// The `Date` header as UTC.
    date: Option<DateTime<Utc>>,
}

const ADDRESS_FIELDS: [&str; 5] = ["from", "to", "cc", "bcc", "reply_to"];

impl Headers {
    fn read(m: &Message<'_>) -> Headers {
        let mut participants = Vec::new();
        let addresses = [m.from(), m.to(), m.cc(), m.bcc(), m.reply_to()]
            .map(|addr| addresses(addr, &mut participants));
        participants.sort_unstable();
        participants.dedup();
        Headers {
            subject: m.subject().unwrap_or_default().to_owned(),
            addresses,
            participants,
            rfc822_message_id: m.message_id().map(str::to_owned),
            date: m
                .date()
                .filter(|d| d.is_valid())
                .and_then(|d| Utc.timestamp_opt(d.to_timestamp(), 0).single()),
        }
    }

    fn write(&self, source: &mut SourceWriter<'_>) {
        source.string("subject", &self.subject);
        source.string("title", &self.subject);
        for (name, list) in ADDRESS_FIELDS.iter().zip(&self.addresses) {
            source.strings(name, list);
        }
        source.strings("participants", &self.participants);
        if let Some(id) = &self.rfc822_message_id {
            source.string("rfc822_message_id", id);
        }
        if let Some(d) = self.date {
            source.string("date", &timestamp(d));
        }
    }
}

fn addresses(addr: Option<&Address<'_>>, participants: &mut Vec<String>) -> Vec<String> {
    let Some(addr) = addr else { return Vec::new() };
    addr.iter()
        .filter_map(|a| {
            let email = a.address().map(str::trim).filter(|s| !s.is_empty());
            let name = a.name().map(str::trim).filter(|s| !s.is_empty());
            if let Some(e) = email {
                participants.push(e.to_lowercase());
            }
            match (name, email) {
                (Some(n), Some(e)) => Some(format!("{n} <{e}>")),
                (None, Some(e)) => Some(e.to_owned()),
                (Some(n), None) => Some(n.to_owned()),
                (None, None) => None,
            }
        })
        .collect()
}

/// Gmail snippets are HTML-escaped.
fn unescape_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&nbsp;", " ")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use connector_framework::connector::Document;

    use super::*;

    /// The document as the sink would send it, read back (fields include the framework's).
    fn build_doc(
        mailbox: &str,
        message_id: &str,
        meta: &RawMessage,
        options: DocOptions,
    ) -> (Document, Vec<DocWarning>) {
        let (encoded, warnings) = build_document(
            &DocumentEncoder::default(),
            mailbox,
            message_id,
            meta,
            options,
        );
        let encoded = encoded.expect("indexed");
        let fields = serde_json::from_slice(encoded.source()).expect("json source");
        (
            Document {
                id: encoded.id().to_owned(),
                timestamp: encoded.timestamp().map(str::to_owned),
                fields,
            },
            warnings,
        )
    }

    fn meta(raw: &[u8]) -> RawMessage {
        RawMessage {
            id: Some("18c2a0f3b4d5e6f7".into()),
            thread_id: Some("18c2a0f3b4d5e6f0".into()),
            label_ids: vec!["INBOX".into(), "UNREAD".into()],
            snippet: Some("Hi &amp; bye".into()),
            history_id: Some("4411987".into()),
            internal_date: Some("1696939200000".into()),
            size_estimate: Some(raw.len() as u64),
            raw: Some(RawBody::from_base64(
                base64::engine::general_purpose::URL_SAFE
                    .encode(raw)
                    .as_bytes(),
            )),
        }
    }

    fn build(raw: &[u8], options: DocOptions) -> (Document, Vec<DocWarning>) {
        build_doc("Ann@acme.test", "18c2a0f3b4d5e6f7", &meta(raw), options)
    }

    fn s<'a>(d: &'a Document, k: &str) -> &'a str {
        d.fields
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("<missing>")
    }

    const PLAIN: &str = "From: Amy Pond <amy@partner.test>\r\nTo: ann@acme.test, \"Bob B\" <bob@x.test>\r\nCc: carol@acme.test\r\nBcc: dave@acme.test\r\nReply-To: list@partner.test\r\nSubject: Q3 numbers\r\nDate: Tue, 10 Oct 2023 12:00:00 +0200\r\nMessage-ID: <abc@partner.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHi Ann,\r\nthe numbers are attached.\r\n";

    #[test]
    fn plain_message_fields() {
        let (d, w) = build(
            PLAIN.as_bytes(),
            DocOptions {
                dls: true,
                include_raw: false,
            },
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(d.id, "ann@acme.test:18c2a0f3b4d5e6f7");
        // internalDate 1696939200000 ms, historyId 4411987.
        assert_eq!(
            d.timestamp.as_deref(),
            Some("2023-10-10T12:00:00.000411987+00:00")
        );
        assert_eq!(s(&d, "subject"), "Q3 numbers");
        assert_eq!(s(&d, "title"), "Q3 numbers");
        assert_eq!(s(&d, "mailbox"), "ann@acme.test");
        assert_eq!(s(&d, "thread_id"), "18c2a0f3b4d5e6f0");
        assert_eq!(s(&d, "rfc822_message_id"), "abc@partner.test");
        assert_eq!(s(&d, "snippet"), "Hi & bye");
        assert_eq!(s(&d, "date"), "2023-10-10T10:00:00.000000+00:00");
        assert_eq!(d.fields["from"], json!(["Amy Pond <amy@partner.test>"]));
        assert_eq!(
            d.fields["to"],
            json!(["ann@acme.test", "Bob B <bob@x.test>"])
        );
        assert_eq!(d.fields["cc"], json!(["carol@acme.test"]));
        assert_eq!(d.fields["bcc"], json!(["dave@acme.test"]));
        assert_eq!(d.fields["reply_to"], json!(["list@partner.test"]));
        assert_eq!(d.fields["labels"], json!(["INBOX", "UNREAD"]));
        assert_eq!(
            d.fields["participants"],
            json!([
                "amy@partner.test",
                "ann@acme.test",
                "bob@x.test",
                "carol@acme.test",
                "dave@acme.test",
                "list@partner.test"
            ])
        );
        assert_eq!(s(&d, "body"), "Hi Ann,\r\nthe numbers are attached.");
        assert_eq!(d.fields["_allow_access_control"], json!(["ann@acme.test"]));
        assert!(!d.fields.contains_key("_attachment"));
        assert_eq!(d.fields["has_attachments"], json!(false));
    }

    #[test]
    fn basic_rules_decide_on_the_written_fields() {
        use connector_framework::filtering::BasicRuleEngine;
        let rule = |field: &str, kind: &str, value: &str| json!({"id": "r", "order": 0, "policy": "exclude", "field": field, "rule": kind, "value": value});
        let build_with = |rules: &[Value]| {
            let encoder = DocumentEncoder::new(
                Some(BasicRuleEngine::new(rules).expect("rules")),
                Vec::new(),
                1,
                0,
            );
            let (doc, _) = build_document(
                &encoder,
                "ann@acme.test",
                "1",
                &meta(PLAIN.as_bytes()),
                DocOptions::default(),
            );
            (doc.is_some(), encoder.filtered())
        };
        // A header field, an element of a list, a field from the answer, a nested attachment
        // field, the body, the id: each is seen by the rules.
        assert_eq!(build_with(&[rule("subject", "contains", "Q3")]), (false, 1));
        assert_eq!(
            build_with(&[rule("to", "equals", "Bob B <bob@x.test>")]),
            (false, 1)
        );
        assert_eq!(
            build_with(&[rule("labels", "equals", "UNREAD")]),
            (false, 1)
        );
        assert_eq!(build_with(&[rule("size", ">", "10")]), (false, 1));
        assert_eq!(
            build_with(&[rule("body", "regex", "(?s).*numbers are.*")]),
            (false, 1)
        );
        assert_eq!(build_with(&[rule("id", "ends_with", ":1")]), (false, 1));
        assert_eq!(
            build_with(&[rule(
                "attachments.content_type",
                "equals",
                "application/pdf"
            )]),
            (true, 0)
        );
        assert_eq!(build_with(&[rule("subject", "contains", "Q4")]), (true, 0));
    }

    #[test]
    fn raw_attachment_only_when_asked_and_no_dls_field_without_dls() {
        let (d, _) = build(
            PLAIN.as_bytes(),
            DocOptions {
                dls: false,
                include_raw: true,
            },
        );
        assert!(!d.fields.contains_key("_allow_access_control"));
        let b64 = d.fields["_attachment"].as_str().expect("attachment");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("standard base64");
        assert_eq!(decoded, PLAIN.as_bytes());
    }

    #[test]
    fn rfc2047_subject_and_iso_8859_1_body() {
        let raw = b"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <jorg@x.test>\r\nSubject: =?UTF-8?B?w4Rwb3RoZWtlIMOcYmVyc2ljaHQ=?=\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe aus K=F6ln\r\n";
        let (d, w) = build(raw, DocOptions::default());
        assert!(w.is_empty());
        assert_eq!(s(&d, "subject"), "Äpotheke Übersicht");
        assert_eq!(d.fields["from"], json!(["Jörg Müller <jorg@x.test>"]));
        assert_eq!(s(&d, "body"), "Grüße aus Köln");
    }

    #[test]
    fn html_only_message_gets_text_body() {
        let raw = b"From: a@x.test\r\nSubject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><head><style>p{color:red}</style></head><body><p>Hello <b>World</b> &amp; friends</p><script>evil()</script></body></html>\r\n";
        let (d, _) = build(raw, DocOptions::default());
        let body = s(&d, "body");
        assert!(body.contains("Hello World & friends"), "{body:?}");
        assert!(!body.contains('<') && !body.contains("color") && !body.contains("evil"));
    }

    #[test]
    fn alternative_prefers_plain_and_lists_attachments() {
        let raw = "From: a@x.test\r\nSubject: mixed\r\nContent-Type: multipart/mixed; boundary=\"m\"\r\n\r\n--m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nplain text\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>html text</p>\r\n--a--\r\n--m\r\nContent-Type: application/pdf; name=\"q3.pdf\"\r\nContent-Disposition: attachment; filename=\"q3.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--m\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"=?UTF-8?Q?f=C3=BCr.png?=\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--m--\r\n";
        let (d, w) = build(raw.as_bytes(), DocOptions::default());
        assert!(w.is_empty());
        assert_eq!(s(&d, "body"), "plain text");
        assert_eq!(d.fields["has_attachments"], json!(true));
        assert_eq!(d.fields["attachment_names"], json!(["q3.pdf", "für.png"]));
        assert_eq!(
            d.fields["attachments"][0],
            json!({"filename": "q3.pdf", "content_type": "application/pdf", "size": 9})
        );
        assert_eq!(d.fields["attachments"][1]["content_type"], "image/png");
    }

    #[test]
    fn malformed_messages_still_yield_documents() {
        // Broken base64.
        let mut m = meta(b"x");
        m.raw = Some(RawBody::from_base64(b"!!!not base64!!!"));
        let (d, w) = build_doc("ann@acme.test", "1", &m, DocOptions::default());
        assert_eq!(w, vec![DocWarning::InvalidBase64]);
        assert_eq!(d.id, "ann@acme.test:1");
        assert_eq!(s(&d, "body"), "");
        // No raw at all.
        m.raw = None;
        let (_, w) = build_doc("ann@acme.test", "1", &m, DocOptions::default());
        assert_eq!(w, vec![DocWarning::MissingRaw]);
        // A part mailparse refuses: the lenient parser reads the rest, with a warning.
        let (d, w) = build(
            b"Subject: s\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\n\r\nkept\r\n--m\r\n Content-Type: text/plain\r\n\r\nx\r\n--m--\r\n",
            DocOptions::default(),
        );
        assert_eq!(w, vec![DocWarning::MimeRecovered]);
        assert!(s(&d, "body").starts_with("kept"), "{:?}", d.fields["body"]);
        assert_eq!(s(&d, "subject"), "s");
        // Garbage headers, unterminated multipart, bad dates.
        for raw in [
            &b"\xff\xfe\x00garbage"[..],
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nunterminated",
            b"Date: yesterday-ish\r\nSubject: \r\n\r\n",
            b"",
        ] {
            let (d, _) = build(raw, DocOptions::default());
            assert!(d.fields.contains_key("body"));
            assert_eq!(d.id, "ann@acme.test:18c2a0f3b4d5e6f7");
        }
    }

    #[test]
    fn windows_1252_forwarded_message_and_dsn() {
        let cp1252 = b"From: a@x.test\r\nSubject: =?windows-1252?Q?=93quoted=94?=\r\nContent-Type: text/plain; charset=windows-1252\r\n\r\nCaf\xe9 \x80 5\r\n";
        let (d, w) = build(cp1252, DocOptions::default());
        assert!(w.is_empty());
        assert_eq!(s(&d, "subject"), "\u{201c}quoted\u{201d}");
        assert_eq!(s(&d, "body"), "Caf\u{e9} \u{20ac} 5");

        let forwarded = "From: a@x.test\r\nSubject: Fwd: hello\r\nContent-Type: multipart/mixed; boundary=f\r\n\r\n--f\r\nContent-Type: text/plain\r\n\r\nsee below\r\n--f\r\nContent-Type: message/rfc822\r\n\r\nFrom: b@y.test\r\nSubject: hello\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--f--\r\n";
        let (d, w) = build(forwarded.as_bytes(), DocOptions::default());
        assert!(w.is_empty());
        assert_eq!(s(&d, "subject"), "Fwd: hello");
        assert!(s(&d, "body").starts_with("see below"));
        assert_eq!(d.fields["attachments"][0]["content_type"], "message/rfc822");

        let dsn = "From: MAILER-DAEMON@x.test\r\nSubject: Undelivered Mail\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x.test\r\nAction: failed\r\n--r--\r\n";
        let (d, w) = build(dsn.as_bytes(), DocOptions::default());
        assert!(w.is_empty());
        assert!(s(&d, "body").starts_with("The mail could not be delivered."));
    }

    #[test]
    fn lenient_base64() {
        let plain = b"hello world!?";
        let padded = base64::engine::general_purpose::URL_SAFE.encode(plain);
        let standard = base64::engine::general_purpose::STANDARD.encode(plain);
        assert_eq!(decode_raw(padded.as_bytes()).as_deref(), Some(&plain[..]));
        assert_eq!(decode_raw(standard.as_bytes()).as_deref(), Some(&plain[..]));
        let unpadded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plain);
        assert_eq!(decode_raw(unpadded.as_bytes()).as_deref(), Some(&plain[..]));
        assert_eq!(decode_raw(b"!!"), None);
        assert_eq!(
            decode_raw(format!("{padded}\n").as_bytes()).as_deref(),
            Some(&plain[..])
        );
    }

    #[test]
    fn raw_is_decoded_while_the_answer_is_read() {
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(PLAIN);
        let answer = format!(r#"{{"id":"1","raw":"{encoded}"}}"#);
        let m: RawMessage = serde_json::from_str(&answer).expect("answer");
        assert_eq!(m.raw, Some(RawBody::Decoded(PLAIN.as_bytes().to_vec())));
        // An escaped character (legal JSON, never sent by Gmail) is unescaped first.
        let escaped = answer.replacen(
            &encoded[..1],
            &format!("\\u{:04x}", encoded.as_bytes()[0]),
            1,
        );
        assert_ne!(escaped, answer);
        let m: RawMessage = serde_json::from_str(&escaped).expect("answer");
        assert_eq!(m.raw, Some(RawBody::Decoded(PLAIN.as_bytes().to_vec())));
        // Not base64: the answer still reads, the message's other fields are kept.
        let m: RawMessage =
            serde_json::from_str(r#"{"id":"2","snippet":"s","raw":"%%%"}"#).expect("answer");
        assert_eq!(m.raw, Some(RawBody::Invalid));
        assert_eq!(m.snippet.as_deref(), Some("s"));
        // Not a string at all: the answer is malformed.
        assert!(serde_json::from_str::<RawMessage>(r#"{"raw":5}"#).is_err());
    }

    #[test]
    fn timestamp_falls_back_to_date_header() {
        let mut m = meta(PLAIN.as_bytes());
        m.internal_date = None;
        m.history_id = None;
        let (d, _) = build_doc("ann@acme.test", "1", &m, DocOptions::default());
        assert_eq!(
            d.timestamp.as_deref(),
            Some("2023-10-10T10:00:00.000000+00:00")
        );
    }

    #[test]
    fn a_label_change_changes_the_timestamp_but_not_the_date() {
        let m = meta(PLAIN.as_bytes());
        let (before, _) = build_doc("ann@acme.test", "1", &m, DocOptions::default());
        let mut changed = m.clone();
        changed.history_id = Some("4412003".into());
        changed.label_ids.push("TRASH".into());
        let (after, _) = build_doc("ann@acme.test", "1", &changed, DocOptions::default());
        let (b, a) = (before.timestamp.expect("ts"), after.timestamp.expect("ts"));
        assert_ne!(a, b);
        // Both still parse as the same instant to the millisecond.
        let parse = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .expect("rfc3339")
                .timestamp_millis()
        };
        assert_eq!(parse(&a), parse(&b));
        assert_eq!(parse(&a), 1_696_939_200_000);
    }

    proptest::proptest! {
        #[test]
        fn every_base64_flavour_decodes_to_the_same_bytes(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            wrap in 1usize..80,
        ) {
            use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
            for encoded in [URL_SAFE.encode(&bytes), URL_SAFE_NO_PAD.encode(&bytes), STANDARD.encode(&bytes)] {
                let decoded = decode_raw(encoded.as_bytes());
                proptest::prop_assert_eq!(decoded.as_deref(), Some(&bytes[..]));
                // Line-wrapped (as MIME tools write base64) still decodes.
                let wrapped: String = encoded
                    .as_bytes()
                    .chunks(wrap)
                    .map(|c| std::str::from_utf8(c).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\r\n");
                let decoded = decode_raw(wrapped.as_bytes());
                proptest::prop_assert_eq!(decoded.as_deref(), Some(&bytes[..]));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let (d, _) = build(&bytes, DocOptions { dls: true, include_raw: true });
            proptest::prop_assert!(d.fields.contains_key("mailbox"));
        }

        #[test]
        fn mime_like_input_never_panics(
            headers in "(Subject|From|To|Content-Type|Date|Content-Transfer-Encoding): [ -~]{0,40}",
            body in "[ -~\r\n]{0,300}",
        ) {
            let raw = format!("{headers}\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n{body}\r\n--b--");
            let _ = build(raw.as_bytes(), DocOptions::default());
        }
    }
}
