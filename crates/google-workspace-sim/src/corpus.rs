//! Deterministic corpus: compact per-message metadata, message specs derived from the seed and
//! MIME rendering on demand.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::rng::{Rng, h2, h3};

/// An e-mail address with an optional display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub name: String,
    pub email: String,
}

impl Addr {
    pub fn new(name: &str, email: &str) -> Self {
        Addr {
            name: name.to_string(),
            email: email.to_string(),
        }
    }
}

/// Body layout of a generated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Plain,
    Html,
    Alternative,
    Mixed,
    Related,
    Malformed,
    Forwarded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charset {
    Utf8,
    Latin1,
    Win1252,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachmentSpec {
    pub filename: String,
    pub mime: &'static str,
    pub size: usize,
    pub seed: u64,
    pub content: Option<Arc<Vec<u8>>>,
}

/// Everything needed to render a message and to evaluate searches on it.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub from: Addr,
    pub to: Vec<Addr>,
    pub cc: Vec<Addr>,
    pub bcc: Vec<Addr>,
    pub reply_to: Option<Addr>,
    pub subject: String,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    pub delivered_to: String,
    pub list_id: Option<String>,
    /// `None`: no Date header; `Some(Err)`: an unparsable Date header.
    pub date: Option<Result<(i64, i32), String>>,
    pub kind: Kind,
    pub charset: Charset,
    pub encode_headers: bool,
    pub body: String,
    pub attachments: Vec<AttachmentSpec>,
    pub extra_noise: bool,
}

/// Where a message's content comes from.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// Thread `thread` of the owner's personal threads, message `idx`.
    Personal { thread: u32, idx: u16 },
    /// Shared conversation `j` owned by user `owner`, message `idx`.
    Shared { owner: u32, j: u32, idx: u16 },
    /// Delivered through the admin API.
    Custom(Arc<CustomMessage>),
}

/// A message delivered by a mutation.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct CustomMessage {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub html: bool,
    /// Attachments: file name and content (UTF-8 text).
    #[serde(default)]
    pub attachments: Vec<CustomAttachment>,
    #[serde(default)]
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct CustomAttachment {
    pub filename: String,
    #[serde(default)]
    pub content: String,
}

/// Compact per-message metadata kept in memory.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub id: u64,
    pub thread_id: u64,
    pub internal_ms: i64,
    pub history_id: u64,
    pub labels: u64,
    pub size: u32,
    pub origin: Origin,
}

// ---------------------------------------------------------------------------------------------
// Labels

pub(crate) const SYSTEM_LABELS: &[&str] = &[
    "INBOX",
    "SENT",
    "DRAFT",
    "SPAM",
    "TRASH",
    "UNREAD",
    "STARRED",
    "IMPORTANT",
    "CHAT",
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
];
pub(crate) const L_INBOX: u64 = 1 << 0;
pub(crate) const L_SENT: u64 = 1 << 1;
pub(crate) const L_DRAFT: u64 = 1 << 2;
pub(crate) const L_SPAM: u64 = 1 << 3;
pub(crate) const L_TRASH: u64 = 1 << 4;
pub(crate) const L_UNREAD: u64 = 1 << 5;
pub(crate) const L_STARRED: u64 = 1 << 6;
pub(crate) const L_IMPORTANT: u64 = 1 << 7;
pub(crate) const L_CHAT: u64 = 1 << 8;
pub(crate) const L_CAT_PERSONAL: u64 = 1 << 9;
/// First bit used by user labels; user label `Label_n` uses bit `USER_LABEL_BIT + n - 1`.
pub(crate) const USER_LABEL_BIT: u32 = 16;
pub(crate) const MAX_USER_LABELS: usize = 48;
pub(crate) const USER_LABEL_MASK: u64 = !((1u64 << USER_LABEL_BIT) - 1);

/// User label names created in every mailbox (ids `Label_1`…).
pub(crate) const DEFAULT_USER_LABELS: &[&str] = &[
    "Receipts",
    "Projects/Q3",
    "Travel plans",
    "Work/Team A",
    "Family",
    "Newsletters",
];

// ---------------------------------------------------------------------------------------------
// Vocabulary

const GIVEN: &[&str] = &[
    "Ann", "Amy", "Bob", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
    "Kira", "Liam", "Maya", "Noah", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara", "Umar",
    "Vera", "Wen", "Xavier", "Yara", "Zoe",
];
const FAMILY: &[&str] = &[
    "Lee", "Smith", "Garcia", "Nguyen", "Müller", "Rossi", "Kowalski", "Okafor", "Silva", "Tanaka",
    "Dubois", "Novak", "Haddad", "Berg", "Costa", "Ivanova",
];

pub(crate) fn user_name(seed: u64, i: usize) -> (String, String) {
    if i == 0 {
        return ("Ada".into(), "Admin".into());
    }
    let mut r = Rng::new(h2(seed, i as u64 + 77));
    (r.pick(GIVEN).to_string(), r.pick(FAMILY).to_string())
}

/// External correspondents (index 0 and 1 are the two "amy" senders).
const EXTERNAL: &[(&str, &str)] = &[
    ("Amy Pond", "amy@partner.test"),
    ("", "amy.lee@acme-partners.test"),
    ("Bob", "bob@x.test"),
    ("Rory Williams", "rory.williams@partner.test"),
    ("Clara Oswald", "clara@school.test"),
    ("Zoë Müller", "zoe.mueller@beispiel.test"),
    ("François Dupont", "f.dupont@exemple.test"),
    ("GitHub", "noreply@github.test"),
    ("Shop Newsletter", "news@shop.test"),
    ("Martha Jones", "martha.jones@hospital.test"),
    ("Donna Noble", "donna@temps.test"),
    ("Ticket Desk", "support@helpdesk.test"),
    ("Amelia Watts", "awatts@consult.test"),
    ("Jack Harkness", "jack@torchwood.test"),
];

const TOPICS: &[&str] = &[
    "Q3 numbers",
    "Dinner on Friday",
    "Invoice 4411",
    "Quarterly report draft",
    "Team offsite planning",
    "Your order has shipped",
    "Weekly digest",
    "Contract renewal",
    "Holiday schedule",
    "Build failed on main",
    "Lunch?",
    "Budget review",
    "Photos from the trip",
    "Security alert",
    "Meeting notes",
    "Café opening",
    "Résumé for the open role",
    "Server migration",
];

const WORDS: &[&str] = &[
    "the",
    "and",
    "project",
    "meeting",
    "report",
    "invoice",
    "please",
    "review",
    "attached",
    "budget",
    "schedule",
    "thanks",
    "update",
    "team",
    "deadline",
    "customer",
    "numbers",
    "quarterly",
    "server",
    "release",
    "coffee",
    "travel",
    "hotel",
    "flight",
    "contract",
    "draft",
    "final",
    "approve",
    "agenda",
    "notes",
    "lunch",
    "friday",
    "monday",
    "unicorn",
    "migration",
    "database",
    "backup",
    "photos",
    "weekend",
    "family",
    "holiday",
    "office",
    "plan",
    "question",
    "answer",
    "call",
    "tomorrow",
    "today",
    "price",
    "order",
    "shipping",
    "delivery",
    "account",
];
const ACCENTED: &[&str] = &["café", "résumé", "naïve", "déjà", "über", "crème", "façade"];

// ---------------------------------------------------------------------------------------------
// Dates

/// 2019-01-01T00:00:00Z in ms.
pub(crate) const CORPUS_START_MS: i64 = 1_546_300_800_000;
/// 2024-12-31T00:00:00Z in ms.
pub(crate) const CORPUS_END_MS: i64 = 1_735_603_200_000;
/// Boundary dates (midnight Pacific) around which no generated message is placed (±26 h).
pub(crate) const BOUNDARY_DATES_MS: &[i64] = &[
    1_633_849_200_000, // 2021-10-10 00:00 PDT
    1_609_488_000_000, // 2021-01-01 00:00 PST
    1_641_024_000_000, // 2022-01-01 00:00 PST
];
const DAY_MS: i64 = 86_400_000;

fn avoid_boundaries(mut ms: i64) -> i64 {
    for b in BOUNDARY_DATES_MS {
        if (ms - b).abs() < 26 * 3_600_000 {
            ms += if ms < *b { -2 * DAY_MS } else { 2 * DAY_MS };
        }
    }
    ms
}

pub(crate) fn random_date(r: &mut Rng) -> i64 {
    // Denser around autumn 2021 so `before:2021/10/10` splits mailboxes meaningfully.
    let ms = if r.chance(0.25) {
        1_633_849_200_000 - 60 * DAY_MS + r.below((120 * DAY_MS) as u64) as i64
    } else {
        CORPUS_START_MS + r.below((CORPUS_END_MS - CORPUS_START_MS) as u64) as i64
    };
    avoid_boundaries(ms - ms % 1000 + r.below(1000) as i64)
}

// ---------------------------------------------------------------------------------------------
// Thread descriptions

pub(crate) struct World<'a> {
    pub seed: u64,
    pub domain: &'a str,
    pub users: &'a [crate::tenant::UserIdent],
}

pub(crate) struct PersonalThread {
    pub len: u16,
    pub start_ms: i64,
    pub counterpart: Addr,
    pub topic: String,
    pub kind_seed: u64,
}

pub(crate) fn personal_thread(w: &World<'_>, owner: usize, t: u32) -> PersonalThread {
    let key = h3(w.seed, owner as u64, 0x7000_0000 + u64::from(t));
    let mut r = Rng::new(key);
    let len = if r.chance(0.7) {
        1
    } else {
        r.range(2, 5) as u16
    };
    let start_ms = random_date(&mut r);
    let counterpart = if r.chance(0.25) && w.users.len() > 1 {
        let u = &w.users[r.below(w.users.len() as u64) as usize];
        Addr::new(&u.full_name(), &u.email)
    } else {
        let (n, e) = *r.pick(EXTERNAL);
        Addr::new(n, e)
    };
    let topic = r.pick(TOPICS).to_string();
    PersonalThread {
        len,
        start_ms,
        counterpart,
        topic,
        kind_seed: key,
    }
}

pub(crate) struct SharedConv {
    pub participants: Vec<usize>,
    pub len: u16,
    pub start_ms: i64,
    pub topic: String,
    pub key: u64,
}

/// Offsets of the participants of a conversation owned by user `o`: `o`, `o+1`, `o+3` (mod n).
pub(crate) const SHARED_OFFSETS: &[usize] = &[0, 1, 3];

pub(crate) fn shared_conv(w: &World<'_>, owner: usize, j: u32) -> SharedConv {
    let n = w.users.len();
    let key = h3(w.seed, owner as u64, 0x5000_0000 + u64::from(j));
    let mut r = Rng::new(key);
    let mut participants = Vec::new();
    for off in SHARED_OFFSETS {
        let p = (owner + off) % n;
        if !participants.contains(&p) {
            participants.push(p);
        }
    }
    let len = if r.chance(0.2) {
        r.range(12, 30)
    } else {
        r.range(3, 8)
    } as u16;
    SharedConv {
        participants,
        len,
        start_ms: random_date(&mut r),
        topic: r.pick(TOPICS).to_string(),
        key,
    }
}

pub(crate) fn shared_msg_time(conv: &SharedConv, idx: u16) -> (i64, usize) {
    let mut r = Rng::new(conv.key ^ 0xdead);
    let mut t = conv.start_ms;
    let mut sender = conv.participants[0];
    for i in 0..=idx {
        if i > 0 {
            t += 600_000 + r.below(36 * 3_600_000) as i64;
        }
        sender = conv.participants[r.below(conv.participants.len() as u64) as usize];
        if i == 0 {
            sender = conv.participants[0];
        }
    }
    (avoid_boundaries(t), sender)
}

pub(crate) fn personal_msg_time(th: &PersonalThread, idx: u16) -> i64 {
    let mut r = Rng::new(th.kind_seed ^ 0xbeef);
    let mut t = th.start_ms;
    for _ in 0..idx {
        t += 300_000 + r.below(3 * DAY_MS as u64) as i64;
    }
    avoid_boundaries(t)
}

/// Whether message `idx` of a personal thread was received (else sent by the owner).
pub(crate) fn personal_incoming(idx: u16) -> bool {
    idx.is_multiple_of(2)
}

fn body_words(r: &mut Rng, n: usize, accented: bool) -> String {
    let mut s = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            s.push(if i % 14 == 0 { '\n' } else { ' ' });
        }
        if accented && r.chance(0.15) {
            let w: &&str = r.pick(ACCENTED);
            s.push_str(w);
        } else {
            let w: &&str = r.pick(WORDS);
            s.push_str(w);
        }
    }
    s
}

fn attachment_for(r: &mut Rng, i: usize) -> AttachmentSpec {
    const KINDS: &[(&str, &str)] = &[
        ("pdf", "application/pdf"),
        (
            "docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        ("txt", "text/plain"),
        ("png", "image/png"),
        ("csv", "text/csv"),
    ];
    const STEMS: &[&str] = &[
        "q3",
        "invoice_4411",
        "notes",
        "photo",
        "report final",
        "budget",
    ];
    let (ext, mime) = *r.pick(KINDS);
    let stem = r.pick(STEMS);
    let filename = if i == 0 {
        format!("{stem}.{ext}")
    } else {
        format!("{stem}-{i}.{ext}")
    };
    AttachmentSpec {
        filename,
        mime,
        size: r.range(200, 16_000) as usize,
        seed: r.next_u64(),
        content: None,
    }
}

fn pick_kind(r: &mut Rng) -> Kind {
    match r.below(100) {
        0..=29 => Kind::Plain,
        30..=39 => Kind::Html,
        40..=64 => Kind::Alternative,
        65..=81 => Kind::Mixed,
        82..=89 => Kind::Related,
        90..=93 => Kind::Malformed,
        _ => Kind::Forwarded,
    }
}

fn content_variation(r: &mut Rng, spec: &mut Spec) {
    spec.kind = pick_kind(r);
    spec.charset = match r.below(10) {
        0 => Charset::Latin1,
        1 => Charset::Win1252,
        _ => Charset::Utf8,
    };
    spec.encode_headers = r.chance(0.15);
    spec.extra_noise = r.chance(0.3);
    let n = r.range(8, 160) as usize;
    let accented = spec.charset != Charset::Utf8 || r.chance(0.1);
    spec.body = body_words(r, n, accented);
    if spec.kind == Kind::Mixed {
        let k = r.range(1, 3) as usize;
        spec.attachments = (0..k).map(|i| attachment_for(r, i)).collect();
    }
    if spec.kind == Kind::Related {
        spec.attachments = vec![AttachmentSpec {
            filename: "logo.png".into(),
            mime: "image/png",
            size: r.range(200, 4000) as usize,
            seed: r.next_u64(),
            content: None,
        }];
    }
    if r.chance(0.03) {
        spec.date = None;
    } else if r.chance(0.03) {
        spec.date = Some(Err("sometime last week".into()));
    }
    if r.chance(0.1) {
        spec.list_id = Some("<dev.lists.acme.test>".into());
    }
}

fn user_addr(w: &World<'_>, i: usize) -> Addr {
    let u = &w.users[i];
    Addr::new(&u.full_name(), &u.email)
}

/// Builds the spec of a message of mailbox `owner`.
pub(crate) fn spec_of(w: &World<'_>, owner: usize, msg: &Msg) -> Spec {
    let owner_addr = user_addr(w, owner);
    let mut spec = Spec {
        from: owner_addr.clone(),
        to: Vec::new(),
        cc: Vec::new(),
        bcc: Vec::new(),
        reply_to: None,
        subject: String::new(),
        message_id: String::new(),
        in_reply_to: None,
        delivered_to: owner_addr.email.clone(),
        list_id: None,
        date: Some(Ok((msg.internal_ms - 2000, 0))),
        kind: Kind::Plain,
        charset: Charset::Utf8,
        encode_headers: false,
        body: String::new(),
        attachments: Vec::new(),
        extra_noise: false,
    };
    match &msg.origin {
        Origin::Personal { thread, idx } => {
            let th = personal_thread(w, owner, *thread);
            let mut r = Rng::new(h2(th.kind_seed, u64::from(*idx)));
            let incoming = personal_incoming(*idx);
            if incoming {
                spec.from = th.counterpart.clone();
                spec.to.push(owner_addr.clone());
            } else {
                spec.to.push(th.counterpart.clone());
            }
            if r.chance(0.2) {
                let (n, e) = *r.pick(EXTERNAL);
                spec.cc.push(Addr::new(n, e));
            }
            if !incoming && r.chance(0.1) {
                let (n, e) = *r.pick(EXTERNAL);
                spec.bcc.push(Addr::new(n, e));
            }
            if r.chance(0.05) {
                spec.reply_to = Some(Addr::new("", "replies@partner.test"));
            }
            spec.subject = if *idx == 0 {
                th.topic.clone()
            } else {
                format!("Re: {}", th.topic)
            };
            spec.message_id = format!("<p{:016x}.{}@{}>", th.kind_seed, idx, w.domain);
            if *idx > 0 {
                spec.in_reply_to =
                    Some(format!("<p{:016x}.{}@{}>", th.kind_seed, idx - 1, w.domain));
            }
            content_variation(&mut r, &mut spec);
            if let Some(Ok((ms, tz))) = spec.date.as_mut() {
                *ms = msg.internal_ms - r.range(0, 30_000) as i64;
                *tz = *r.pick(&[0, 60, 120, -300, -420, 330, 540]);
            }
        }
        Origin::Shared { owner: o, j, idx } => {
            let conv = shared_conv(w, *o as usize, *j);
            let (_, sender) = shared_msg_time(&conv, *idx);
            let mut r = Rng::new(h2(conv.key, u64::from(*idx)));
            spec.from = user_addr(w, sender);
            spec.to = conv
                .participants
                .iter()
                .filter(|p| **p != sender)
                .map(|p| user_addr(w, *p))
                .collect();
            spec.subject = if *idx == 0 {
                conv.topic.clone()
            } else {
                format!("Re: {}", conv.topic)
            };
            spec.message_id = format!("<c{:016x}.{}@{}>", conv.key, idx, w.domain);
            if *idx > 0 {
                spec.in_reply_to = Some(format!("<c{:016x}.{}@{}>", conv.key, idx - 1, w.domain));
            }
            content_variation(&mut r, &mut spec);
            if let Some(Ok((ms, tz))) = spec.date.as_mut() {
                *ms = msg.internal_ms - 1500;
                *tz = 60;
            }
        }
        Origin::Custom(c) => {
            if let Some(f) = &c.from {
                spec.from = parse_addr(f);
            }
            spec.to = if c.to.is_empty() {
                vec![owner_addr.clone()]
            } else {
                c.to.iter().map(|s| parse_addr(s)).collect()
            };
            spec.cc = c.cc.iter().map(|s| parse_addr(s)).collect();
            spec.subject = c.subject.clone().unwrap_or_default();
            spec.body = c.body.clone().unwrap_or_default();
            spec.message_id = c
                .message_id
                .clone()
                .unwrap_or_else(|| format!("<m{:016x}@{}>", msg.id, w.domain));
            spec.kind = if !c.attachments.is_empty() {
                Kind::Mixed
            } else if c.html {
                Kind::Html
            } else {
                Kind::Plain
            };
            spec.attachments = c
                .attachments
                .iter()
                .map(|a| AttachmentSpec {
                    filename: a.filename.clone(),
                    mime: mime_for(&a.filename),
                    size: a.content.len(),
                    seed: 0,
                    content: Some(Arc::new(a.content.as_bytes().to_vec())),
                })
                .collect();
        }
    }
    spec
}

fn mime_for(name: &str) -> &'static str {
    match name
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("txt") => "text/plain",
        Some("csv") => "text/csv",
        Some("html") => "text/html",
        _ => "application/octet-stream",
    }
}

/// Parses `Name <a@b>` or `a@b`.
pub(crate) fn parse_addr(s: &str) -> Addr {
    let s = s.trim();
    if let (Some(lt), Some(gt)) = (s.find('<'), s.rfind('>'))
        && lt < gt
    {
        let name = s[..lt].trim().trim_matches('"').trim();
        return Addr::new(name, s[lt + 1..gt].trim());
    }
    Addr::new("", s)
}

// ---------------------------------------------------------------------------------------------
// MIME tree and rendering

/// A MIME part as Gmail would parse it.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    /// (name, raw value as written, decoded value)
    pub headers: Vec<(String, String, String)>,
    pub mime: String,
    pub filename: String,
    /// Decoded content (leaves).
    pub body: Vec<u8>,
    /// Transfer-encoded content as written in the raw message (leaves).
    pub encoded: Vec<u8>,
    pub children: Vec<Part>,
    pub boundary: String,
    pub broken: bool,
}

impl Part {
    fn leaf(
        mime: &str,
        headers: Vec<(String, String, String)>,
        body: Vec<u8>,
        encoded: Vec<u8>,
    ) -> Part {
        Part {
            headers,
            mime: mime.to_string(),
            filename: String::new(),
            body,
            encoded,
            children: Vec::new(),
            boundary: String::new(),
            broken: false,
        }
    }
}

fn hdr(name: &str, raw: String) -> (String, String, String) {
    (name.to_string(), raw.clone(), raw)
}

fn hdr2(name: &str, raw: String, decoded: String) -> (String, String, String) {
    (name.to_string(), raw, decoded)
}

/// RFC 2047 B-encoding of a UTF-8 string.
pub(crate) fn encode_word(s: &str) -> String {
    format!("=?UTF-8?B?{}?=", STANDARD.encode(s.as_bytes()))
}

fn needs_encoding(s: &str) -> bool {
    !s.is_ascii()
}

fn fmt_addr(a: &Addr, force_encode: bool) -> (String, String) {
    let decoded = if a.name.is_empty() {
        a.email.clone()
    } else {
        format!("{} <{}>", a.name, a.email)
    };
    let raw = if a.name.is_empty() {
        a.email.clone()
    } else if force_encode || needs_encoding(&a.name) {
        format!("{} <{}>", encode_word(&a.name), a.email)
    } else {
        format!("\"{}\" <{}>", a.name, a.email)
    };
    (raw, decoded)
}

fn fmt_addrs(list: &[Addr], force: bool) -> (String, String) {
    let mut raw = Vec::new();
    let mut dec = Vec::new();
    for a in list {
        let (r, d) = fmt_addr(a, force);
        raw.push(r);
        dec.push(d);
    }
    (raw.join(", "), dec.join(", "))
}

pub(crate) fn rfc2822_date(ms: i64, tz_min: i32) -> String {
    use chrono::{FixedOffset, Offset, TimeZone, Utc};
    let off = FixedOffset::east_opt(tz_min * 60).unwrap_or_else(|| Utc.fix());
    match off.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%a, %d %b %Y %H:%M:%S %z").to_string(),
        None => "Thu, 01 Jan 1970 00:00:00 +0000".into(),
    }
}

fn qp_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 8);
    let mut col = 0;
    for &b in bytes {
        if b == b'\n' {
            out.extend_from_slice(b"\r\n");
            col = 0;
            continue;
        }
        let enc = !(b == b' ' || (33..=126).contains(&b)) || b == b'=';
        let w = if enc { 3 } else { 1 };
        if col + w > 75 {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        if enc {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
        col += w;
    }
    out
}

/// Base64 in 76-character lines, each ended by CRLF (57 input bytes per line), encoded in place.
fn b64_lines(bytes: &[u8]) -> Vec<u8> {
    let lines = bytes.len().div_ceil(57);
    let mut out = vec![0u8; lines * 78];
    let mut len = 0;
    for chunk in bytes.chunks(57) {
        len += STANDARD
            .encode_slice(chunk, &mut out[len..])
            .unwrap_or_default();
        out[len..len + 2].copy_from_slice(b"\r\n");
        len += 2;
    }
    out.truncate(len);
    out
}

fn crlf(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 40);
    for b in text.bytes() {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn to_charset(text: &str, cs: Charset) -> Vec<u8> {
    match cs {
        Charset::Utf8 => text.as_bytes().to_vec(),
        Charset::Latin1 | Charset::Win1252 => text
            .chars()
            .map(|c| {
                let v = c as u32;
                if v < 256 { v as u8 } else { b'?' }
            })
            .collect(),
    }
}

fn charset_name(cs: Charset) -> &'static str {
    match cs {
        Charset::Utf8 => "UTF-8",
        Charset::Latin1 => "ISO-8859-1",
        Charset::Win1252 => "windows-1252",
    }
}

pub(crate) fn html_of(text: &str, inline_cid: Option<&str>) -> String {
    let mut s = String::with_capacity(text.len() + 120);
    s.push_str("<html><body><div dir=\"ltr\">");
    for (i, para) in text.split('\n').enumerate() {
        if i > 0 {
            s.push_str("<br>\n");
        }
        s.push_str(&html_escape(para));
    }
    if let Some(cid) = inline_cid {
        s.push_str(&format!("<img src=\"cid:{cid}\" alt=\"logo\">"));
    }
    s.push_str("</div></body></html>\n");
    s
}

pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn text_part(text: &str, cs: Charset, variant: u64) -> Part {
    let bytes = to_charset(text, cs);
    let (cte, encoded) = match (cs, variant % 3) {
        (Charset::Win1252, _) => ("8bit", crlf_bytes(&bytes)),
        (Charset::Latin1, _) | (_, 1) => ("quoted-printable", qp_encode(&bytes)),
        (_, 2) => ("base64", b64_lines(&bytes)),
        _ => ("7bit", crlf_bytes(&bytes)),
    };
    let cte = if cte == "7bit" && !bytes.is_ascii() {
        "8bit"
    } else {
        cte
    };
    Part::leaf(
        "text/plain",
        vec![
            hdr(
                "Content-Type",
                format!("text/plain; charset=\"{}\"", charset_name(cs)),
            ),
            hdr("Content-Transfer-Encoding", cte.to_string()),
        ],
        bytes,
        encoded,
    )
}

fn crlf_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 40 + 2);
    for &x in b {
        if x == b'\n' {
            out.push(b'\r');
        }
        out.push(x);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn html_part(html: &str) -> Part {
    let bytes = html.as_bytes().to_vec();
    let encoded = qp_encode(&bytes);
    Part::leaf(
        "text/html",
        vec![
            hdr("Content-Type", "text/html; charset=\"UTF-8\"".into()),
            hdr("Content-Transfer-Encoding", "quoted-printable".into()),
        ],
        bytes,
        encoded,
    )
}

/// Synthetic attachment bytes with a plausible magic number.
pub(crate) fn attachment_bytes(a: &AttachmentSpec) -> Vec<u8> {
    if let Some(c) = &a.content {
        return c.as_ref().clone();
    }
    let mut out = Vec::with_capacity(a.size);
    let magic: &[u8] = match a.mime {
        "application/pdf" => b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        "image/png" => b"\x89PNG\r\n\x1a\n",
        m if m.contains("openxml") => b"PK\x03\x04",
        _ => b"",
    };
    out.extend_from_slice(magic);
    let text = a.mime.starts_with("text/");
    let mut r = Rng::new(a.seed);
    while out.len() < a.size {
        if text {
            out.extend_from_slice(r.pick(WORDS).as_bytes());
            out.push(if out.len() % 60 < 6 { b'\n' } else { b',' });
        } else {
            out.extend_from_slice(&r.next_u64().to_le_bytes());
        }
    }
    out.truncate(a.size.max(magic.len()));
    out
}

fn attachment_part(a: &AttachmentSpec, inline_cid: Option<&str>) -> Part {
    let bytes = attachment_bytes(a);
    let encoded = b64_lines(&bytes);
    let mut headers = vec![
        hdr(
            "Content-Type",
            format!("{}; name=\"{}\"", a.mime, a.filename),
        ),
        hdr(
            "Content-Disposition",
            format!(
                "{}; filename=\"{}\"",
                if inline_cid.is_some() {
                    "inline"
                } else {
                    "attachment"
                },
                a.filename
            ),
        ),
        hdr("Content-Transfer-Encoding", "base64".into()),
    ];
    if let Some(cid) = inline_cid {
        headers.push(hdr("Content-ID", format!("<{cid}>")));
        headers.push(hdr("X-Attachment-Id", cid.to_string()));
    }
    let mut p = Part::leaf(a.mime, headers, bytes, encoded);
    p.filename = a.filename.clone();
    p
}

fn multipart(sub: &str, boundary: String, children: Vec<Part>) -> Part {
    Part {
        headers: vec![hdr(
            "Content-Type",
            format!("multipart/{sub}; boundary=\"{boundary}\""),
        )],
        mime: format!("multipart/{sub}"),
        filename: String::new(),
        body: Vec::new(),
        encoded: Vec::new(),
        children,
        boundary,
        broken: false,
    }
}

/// Builds the MIME tree of a message (top-level headers included).
pub(crate) fn build_tree(spec: &Spec, id: u64) -> Part {
    let b = |n: u32| {
        format!(
            "{:012x}{:04x}{n}",
            h2(id, u64::from(n)) & 0xffff_ffff_ffff,
            n
        )
    };
    let variant = h2(id, 9);
    let text = &spec.body;
    let mut top = match spec.kind {
        Kind::Plain => text_part(text, spec.charset, variant),
        Kind::Html => html_part(&html_of(text, None)),
        Kind::Alternative => multipart(
            "alternative",
            b(1),
            vec![
                text_part(text, spec.charset, variant),
                html_part(&html_of(text, None)),
            ],
        ),
        Kind::Mixed => {
            let mut children = vec![if variant.is_multiple_of(2) {
                multipart(
                    "alternative",
                    b(2),
                    vec![
                        text_part(text, spec.charset, variant),
                        html_part(&html_of(text, None)),
                    ],
                )
            } else {
                text_part(text, spec.charset, variant)
            }];
            children.extend(spec.attachments.iter().map(|a| attachment_part(a, None)));
            multipart("mixed", b(1), children)
        }
        Kind::Related => {
            let cid = format!("ii_{:x}", h2(id, 3) & 0xffff_ffff);
            let mut related = vec![html_part(&html_of(text, Some(&cid)))];
            related.extend(
                spec.attachments
                    .iter()
                    .map(|a| attachment_part(a, Some(&cid))),
            );
            multipart(
                "alternative",
                b(1),
                vec![
                    text_part(text, spec.charset, variant),
                    multipart("related", b(2), related),
                ],
            )
        }
        Kind::Malformed => {
            // A multipart whose closing boundary is missing and whose second part declares
            // an unknown transfer encoding.
            let mut odd = text_part("odd part\n", Charset::Utf8, 0);
            odd.headers[1] = hdr("Content-Transfer-Encoding", "x-unknown".into());
            let mut m = multipart(
                "mixed",
                b(1),
                vec![text_part(text, spec.charset, variant), odd],
            );
            m.broken = true;
            m
        }
        Kind::Forwarded => {
            let inner_text = format!("---------- Forwarded message ---------\n{text}\n");
            let inner_bytes = crlf(&format!(
                "From: \"Bob\" <bob@x.test>\nSubject: Fwd original\nDate: Mon, 4 Mar 2019 10:00:00 +0000\nContent-Type: text/plain; charset=\"UTF-8\"\n\n{inner_text}"
            ));
            let fwd = Part::leaf(
                "message/rfc822",
                vec![hdr("Content-Type", "message/rfc822".into())],
                inner_bytes.clone(),
                inner_bytes,
            );
            multipart(
                "mixed",
                b(1),
                vec![text_part("See below.\n", Charset::Utf8, 0), fwd],
            )
        }
    };
    // Top-level headers go before the content headers of the top part.
    let mut headers = Vec::with_capacity(16);
    if spec.extra_noise {
        headers.push(hdr(
            "Received",
            format!(
                "by 2002:a05:6a10:{:x} with SMTP id x{:x}; Tue, 1 Jan 2019 00:00:00 -0800",
                id & 0xffff,
                id
            ),
        ));
        headers.push(hdr(
            "DKIM-Signature",
            "v=1; a=rsa-sha256; c=relaxed/relaxed; d=partner.test; s=s1; h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=abc".into(),
        ));
    }
    headers.push(hdr("Delivered-To", spec.delivered_to.clone()));
    headers.push(hdr("MIME-Version", "1.0".into()));
    match &spec.date {
        Some(Ok((ms, tz))) => headers.push(hdr("Date", rfc2822_date(*ms, *tz))),
        Some(Err(s)) => headers.push(hdr("Date", s.clone())),
        None => {}
    }
    headers.push(hdr("Message-ID", spec.message_id.clone()));
    if let Some(irt) = &spec.in_reply_to {
        headers.push(hdr("In-Reply-To", irt.clone()));
        headers.push(hdr("References", irt.clone()));
    }
    let subj_raw = if spec.encode_headers || needs_encoding(&spec.subject) {
        encode_word(&spec.subject)
    } else {
        spec.subject.clone()
    };
    headers.push(hdr2("Subject", subj_raw, spec.subject.clone()));
    let (fr, fd) = fmt_addr(&spec.from, spec.encode_headers);
    headers.push(hdr2("From", fr, fd));
    if !spec.to.is_empty() {
        let (r, d) = fmt_addrs(&spec.to, false);
        headers.push(hdr2("To", r, d));
    }
    if !spec.cc.is_empty() {
        let (r, d) = fmt_addrs(&spec.cc, false);
        headers.push(hdr2("Cc", r, d));
    }
    if !spec.bcc.is_empty() {
        let (r, d) = fmt_addrs(&spec.bcc, false);
        headers.push(hdr2("Bcc", r, d));
    }
    if let Some(rt) = &spec.reply_to {
        let (r, d) = fmt_addr(rt, false);
        headers.push(hdr2("Reply-To", r, d));
    }
    if let Some(l) = &spec.list_id {
        headers.push(hdr("List-Id", l.clone()));
    }
    headers.append(&mut top.headers);
    top.headers = headers;
    top
}

fn write_part(p: &Part, out: &mut Vec<u8>) {
    for (name, raw, _) in &p.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(raw.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if p.children.is_empty() && p.boundary.is_empty() {
        out.extend_from_slice(&p.encoded);
        return;
    }
    for c in &p.children {
        out.extend_from_slice(b"--");
        out.extend_from_slice(p.boundary.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_part(c, out);
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    if !p.broken {
        out.extend_from_slice(b"--");
        out.extend_from_slice(p.boundary.as_bytes());
        out.extend_from_slice(b"--\r\n");
    }
}

/// Renders the RFC 822 bytes of a tree.
pub(crate) fn render(tree: &Part) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    write_part(tree, &mut out);
    out
}

/// Plain text used for the snippet and searches.
pub(crate) fn snippet(spec: &Spec) -> String {
    let mut s = String::with_capacity(210);
    let mut count = 0;
    let mut last_space = true;
    for c in spec.body.chars() {
        if count >= 200 {
            break;
        }
        if c.is_whitespace() {
            if !last_space {
                s.push(' ');
                count += 1;
            }
            last_space = true;
        } else {
            s.push(c);
            count += 1;
            last_space = false;
        }
    }
    html_escape(s.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_round_trip_shape() {
        let e = qp_encode("café = ok\n".as_bytes());
        assert_eq!(String::from_utf8_lossy(&e), "caf=C3=A9 =3D ok\r\n");
    }

    #[test]
    fn base64_lines_are_76_chars_and_decode() {
        for len in [0usize, 1, 56, 57, 58, 114, 1000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let out = b64_lines(&bytes);
            let text = String::from_utf8(out).expect("ascii");
            assert!(text.is_empty() || text.ends_with("\r\n"), "len {len}");
            let lines: Vec<&str> = text.split_terminator("\r\n").collect();
            assert!(lines.iter().all(|l| l.len() <= 76), "len {len}");
            assert_eq!(STANDARD.decode(lines.concat()).expect("base64"), bytes);
        }
    }

    #[test]
    fn addr_parsing() {
        assert_eq!(
            parse_addr("Amy Pond <amy@p.test>"),
            Addr::new("Amy Pond", "amy@p.test")
        );
        assert_eq!(parse_addr("a@b.test"), Addr::new("", "a@b.test"));
    }
}
