//! The Gmail search language subset (`q`): tokenizer, parser and evaluator.

use std::cell::OnceCell;

use chrono::{Datelike, NaiveDate, Weekday};

use crate::corpus::{
    L_CHAT, L_DRAFT, L_IMPORTANT, L_INBOX, L_SENT, L_SPAM, L_STARRED, L_TRASH, L_UNREAD, Msg,
    SYSTEM_LABELS, Spec, USER_LABEL_MASK,
};
use crate::mailbox::LabelInfo;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    /// A bare word or quoted phrase.
    Text(String),
    /// `operator:value`.
    Op(String, String),
}

const OPS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "deliveredto",
    "subject",
    "label",
    "in",
    "is",
    "has",
    "filename",
    "category",
    "rfc822msgid",
    "list",
    "before",
    "after",
    "older",
    "newer",
    "older_than",
    "newer_than",
    "size",
    "larger",
    "smaller",
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBrace,
    RBrace,
    Or,
    Neg,
    Word(String),
    Phrase(String),
    /// `op:` immediately followed by `(`, `{` or `"`.
    OpOpen(String),
}

fn tokenize(q: &str) -> Vec<Tok> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut at_term_start = true;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            at_term_start = true;
            continue;
        }
        match c {
            '(' => {
                out.push(Tok::LParen);
                i += 1;
                at_term_start = true;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            '{' => {
                out.push(Tok::LBrace);
                i += 1;
                at_term_start = true;
            }
            '}' => {
                out.push(Tok::RBrace);
                i += 1;
            }
            '"' => {
                let mut j = i + 1;
                let mut s = String::new();
                while j < chars.len() && chars[j] != '"' {
                    s.push(chars[j]);
                    j += 1;
                }
                out.push(Tok::Phrase(s));
                i = (j + 1).min(chars.len());
            }
            '-' if at_term_start && i + 1 < chars.len() && !chars[i + 1].is_whitespace() => {
                out.push(Tok::Neg);
                i += 1;
            }
            _ => {
                let mut j = i;
                let mut s = String::new();
                while j < chars.len() && !chars[j].is_whitespace() && !"(){}\"".contains(chars[j]) {
                    s.push(chars[j]);
                    j += 1;
                }
                at_term_start = false;
                if s.ends_with(':')
                    && j < chars.len()
                    && "({\"".contains(chars[j])
                    && OPS.contains(&s[..s.len() - 1].to_ascii_lowercase().as_str())
                {
                    out.push(Tok::OpOpen(s[..s.len() - 1].to_ascii_lowercase()));
                } else if s == "OR" || s == "|" {
                    out.push(Tok::Or);
                } else if s == "AND" {
                    // explicit AND is the default combination
                } else {
                    out.push(Tok::Word(s));
                }
                i = j;
            }
        }
    }
    out
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    /// Sequence of OR-expressions up to a closing token or the end.
    fn and_expr(&mut self, op: Option<&str>, close: Option<Tok>) -> Node {
        let mut items = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some(t) if Some(t) == close.as_ref() => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::RParen) | Some(Tok::RBrace) => {
                    // unbalanced closer: ignore it (Gmail is lenient)
                    self.pos += 1;
                    continue;
                }
                Some(Tok::Or) => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            if let Some(n) = self.or_expr(op) {
                items.push(n);
            }
        }
        if items.len() == 1 {
            items.pop().unwrap_or(Node::And(Vec::new()))
        } else {
            Node::And(items)
        }
    }

    fn or_expr(&mut self, op: Option<&str>) -> Option<Node> {
        let first = self.unary(op)?;
        let mut alts = vec![first];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            match self.unary(op) {
                Some(n) => alts.push(n),
                None => break,
            }
        }
        Some(if alts.len() == 1 {
            alts.pop()?
        } else {
            Node::Or(alts)
        })
    }

    fn unary(&mut self, op: Option<&str>) -> Option<Node> {
        match self.peek()? {
            Tok::Neg => {
                self.pos += 1;
                let inner = self.unary(op)?;
                Some(Node::Not(Box::new(inner)))
            }
            Tok::RParen | Tok::RBrace | Tok::Or => None,
            _ => self.primary(op),
        }
    }

    fn primary(&mut self, op: Option<&str>) -> Option<Node> {
        match self.next()? {
            Tok::LParen => Some(self.and_expr(op, Some(Tok::RParen))),
            Tok::LBrace => Some(self.brace(op)),
            Tok::OpOpen(o) => match self.next()? {
                Tok::Phrase(p) => Some(Node::Op(o, p)),
                Tok::LParen => Some(self.and_expr(Some(&o), Some(Tok::RParen))),
                Tok::LBrace => Some(self.brace(Some(&o))),
                _ => None,
            },
            Tok::Phrase(p) => Some(match op {
                Some(o) => Node::Op(o.to_string(), p),
                None => Node::Text(p),
            }),
            Tok::Word(w) => Some(word_node(&w, op)),
            _ => None,
        }
    }

    fn brace(&mut self, op: Option<&str>) -> Node {
        let mut alts = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some(Tok::RBrace) => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::Or) | Some(Tok::RParen) => {
                    self.pos += 1;
                }
                _ => match self.unary(op) {
                    Some(n) => alts.push(n),
                    None => self.pos += 1,
                },
            }
        }
        Node::Or(alts)
    }
}

fn word_node(w: &str, ctx: Option<&str>) -> Node {
    if let Some(p) = w.find(':') {
        let (o, v) = (w[..p].to_ascii_lowercase(), &w[p + 1..]);
        if OPS.contains(&o.as_str()) && !v.is_empty() {
            return Node::Op(o, v.to_string());
        }
    }
    match ctx {
        Some(o) => Node::Op(o.to_string(), w.to_string()),
        None => Node::Text(w.to_string()),
    }
}

/// Parses a query. Never fails: malformed input degrades like Gmail's lenient parser.
pub fn parse(q: &str) -> Node {
    let mut p = Parser {
        toks: tokenize(q),
        pos: 0,
    };
    p.and_expr(None, None)
}

/// Whether a query explicitly asks for spam or trash (then `includeSpamTrash=false` does not hide them).
pub fn mentions_spam_trash(n: &Node) -> bool {
    match n {
        Node::And(v) | Node::Or(v) => v.iter().any(mentions_spam_trash),
        Node::Not(_) => false,
        Node::Text(_) => false,
        Node::Op(o, v) => {
            let v = v.to_ascii_lowercase();
            (o == "in" && (v == "spam" || v == "trash" || v == "anywhere"))
                || (o == "label" && (v == "spam" || v == "trash"))
        }
    }
}

/// Lower-cased alphanumeric tokens.
pub(crate) fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        if c.is_alphanumeric() {
            for l in c.to_lowercase() {
                cur.push(l);
            }
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn contains_seq(hay: &[String], needle: &[String]) -> bool {
    if needle.is_empty() {
        return false;
    }
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The message being matched.
pub(crate) struct Ctx<'a> {
    pub msg: &'a Msg,
    pub user_labels: &'a [LabelInfo],
    pub owner_email: &'a str,
    pub now_ms: i64,
    pub spec: OnceCell<Spec>,
    pub make_spec: &'a dyn Fn(&Msg) -> Spec,
}

impl Ctx<'_> {
    fn spec(&self) -> &Spec {
        self.spec.get_or_init(|| (self.make_spec)(self.msg))
    }
}

/// Evaluates a query node against one message.
pub(crate) fn eval(n: &Node, c: &Ctx<'_>) -> bool {
    match n {
        Node::And(v) => v.iter().all(|x| eval(x, c)),
        Node::Or(v) => v.iter().any(|x| eval(x, c)),
        Node::Not(x) => !eval(x, c),
        Node::Text(t) => text_match(t, c),
        Node::Op(o, v) => op_match(o, v, c),
    }
}

fn addr_match(list: &[&crate::corpus::Addr], value: &str, owner: &str) -> bool {
    let v = if value.eq_ignore_ascii_case("me") {
        owner
    } else {
        value
    };
    let needle = tokens(v);
    list.iter().any(|a| {
        a.email.eq_ignore_ascii_case(v)
            || contains_seq(&tokens(&a.name), &needle)
            || contains_seq(&tokens(&a.email), &needle)
    })
}

fn text_match(t: &str, c: &Ctx<'_>) -> bool {
    let needle = tokens(t);
    if needle.is_empty() {
        return true;
    }
    let s = c.spec();
    if contains_seq(&tokens(&s.subject), &needle) || contains_seq(&tokens(&s.body), &needle) {
        return true;
    }
    let addrs = std::iter::once(&s.from)
        .chain(s.to.iter())
        .chain(s.cc.iter())
        .chain(s.bcc.iter());
    for a in addrs {
        if contains_seq(&tokens(&a.name), &needle) || contains_seq(&tokens(&a.email), &needle) {
            return true;
        }
    }
    s.attachments
        .iter()
        .any(|a| contains_seq(&tokens(&a.filename), &needle))
}

fn norm_label(s: &str) -> String {
    s.to_lowercase().replace([' ', '/'], "-")
}

/// Resolves a `label:` value to a bit.
pub(crate) fn label_bit(v: &str, user_labels: &[LabelInfo]) -> Option<u64> {
    let nv = norm_label(v);
    for (i, s) in SYSTEM_LABELS.iter().enumerate() {
        if s.eq_ignore_ascii_case(v) {
            return Some(1 << i);
        }
    }
    user_labels
        .iter()
        .find(|l| norm_label(&l.name) == nv || l.id.eq_ignore_ascii_case(v))
        .map(|l| 1 << l.bit)
}

fn op_match(o: &str, v: &str, c: &Ctx<'_>) -> bool {
    let labels = c.msg.labels;
    let lv = v.to_lowercase();
    match o {
        "from" => addr_match(&[&c.spec().from], v, c.owner_email),
        "to" => addr_match(&c.spec().to.iter().collect::<Vec<_>>(), v, c.owner_email),
        "cc" => addr_match(&c.spec().cc.iter().collect::<Vec<_>>(), v, c.owner_email),
        "bcc" => addr_match(&c.spec().bcc.iter().collect::<Vec<_>>(), v, c.owner_email),
        "deliveredto" => {
            let s = c.spec();
            let v = if lv == "me" {
                c.owner_email.to_lowercase()
            } else {
                lv
            };
            s.delivered_to.to_lowercase() == v
                || contains_seq(&tokens(&s.delivered_to), &tokens(&v))
        }
        "subject" => contains_seq(&tokens(&c.spec().subject), &tokens(v)),
        "label" => label_bit(v, c.user_labels).is_some_and(|b| labels & b != 0),
        "in" => match lv.as_str() {
            "inbox" => labels & L_INBOX != 0,
            "sent" => labels & L_SENT != 0,
            "draft" | "drafts" => labels & L_DRAFT != 0,
            "spam" => labels & L_SPAM != 0,
            "trash" => labels & L_TRASH != 0,
            "starred" => labels & L_STARRED != 0,
            "important" => labels & L_IMPORTANT != 0,
            "chat" | "chats" => labels & L_CHAT != 0,
            "anywhere" => true,
            _ => false,
        },
        "is" => match lv.as_str() {
            "unread" => labels & L_UNREAD != 0,
            "read" => labels & L_UNREAD == 0,
            "starred" => labels & L_STARRED != 0,
            "important" => labels & L_IMPORTANT != 0,
            _ => false,
        },
        "has" => match lv.as_str() {
            "attachment" => !c.spec().attachments.is_empty(),
            "userlabels" => labels & USER_LABEL_MASK != 0,
            "nouserlabels" => labels & USER_LABEL_MASK == 0,
            "yellow-star" | "star" => labels & L_STARRED != 0,
            _ => false,
        },
        "filename" => c.spec().attachments.iter().any(|a| {
            let f = a.filename.to_lowercase();
            f == lv
                || f.rsplit('.').next() == Some(lv.as_str())
                || contains_seq(&tokens(&f), &tokens(&lv))
        }),
        "category" => {
            let cat = match lv.as_str() {
                "primary" | "personal" => "CATEGORY_PERSONAL",
                "social" => "CATEGORY_SOCIAL",
                "promotions" => "CATEGORY_PROMOTIONS",
                "updates" => "CATEGORY_UPDATES",
                "forums" => "CATEGORY_FORUMS",
                _ => return false,
            };
            label_bit(cat, c.user_labels).is_some_and(|b| labels & b != 0)
        }
        "rfc822msgid" => {
            let id = c.spec().message_id.trim_matches(['<', '>']).to_lowercase();
            id == lv.trim_matches(['<', '>'])
        }
        "list" => c
            .spec()
            .list_id
            .as_deref()
            .is_some_and(|l| l.to_lowercase().contains(lv.trim_matches(['<', '>']))),
        "before" | "older" => parse_date_ms(v).is_some_and(|d| c.msg.internal_ms < d),
        "after" | "newer" => parse_date_ms(v).is_some_and(|d| c.msg.internal_ms >= d),
        "older_than" => parse_age_ms(v).is_some_and(|a| c.msg.internal_ms < c.now_ms - a),
        "newer_than" => parse_age_ms(v).is_some_and(|a| c.msg.internal_ms > c.now_ms - a),
        "size" | "larger" => parse_size(v).is_some_and(|s| u64::from(c.msg.size) > s),
        "smaller" => parse_size(v).is_some_and(|s| u64::from(c.msg.size) < s),
        _ => text_match(&format!("{o} {v}"), c),
    }
}

/// Sizes: bytes, or with a `K`/`M` suffix (binary multiples).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1024),
        'm' | 'M' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// Relative ages: `Nd`, `Nm` (30 days), `Ny` (365 days).
pub fn parse_age_ms(v: &str) -> Option<i64> {
    let v = v.trim();
    let unit = match v.chars().last()? {
        'd' | 'D' => 86_400_000,
        'm' | 'M' => 30 * 86_400_000,
        'y' | 'Y' => 365 * 86_400_000,
        _ => return None,
    };
    v[..v.len() - 1].parse::<i64>().ok().map(|n| n * unit)
}

fn nth_sunday(year: i32, month: u32, n: u32) -> Option<NaiveDate> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let offset = (7 - first.weekday().num_days_from_sunday()) % 7;
    first.checked_add_days(chrono::Days::new(u64::from(offset + 7 * (n - 1))))
}

/// Offset of America/Los_Angeles at local midnight of `d`, in hours (−7 in DST, −8 otherwise).
fn la_offset_hours(d: NaiveDate) -> i64 {
    let y = d.year();
    match (nth_sunday(y, 3, 2), nth_sunday(y, 11, 1)) {
        (Some(start), Some(end)) if d > start && d <= end => -7,
        _ => -8,
    }
}

/// Calendar dates mean midnight Pacific time; an all-digit value is epoch seconds.
pub fn parse_date_ms(v: &str) -> Option<i64> {
    let v = v.trim();
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) && v.len() > 8 {
        return v.parse::<i64>().ok().map(|s| s * 1000);
    }
    let parts: Vec<&str> = v.split(['/', '-']).collect();
    if parts.len() != 3 {
        return None;
    }
    let nums: Vec<i64> = parts
        .iter()
        .map(|p| p.parse::<i64>().ok())
        .collect::<Option<_>>()?;
    let (y, m, d) = if parts[0].len() == 4 {
        (nums[0], nums[1], nums[2])
    } else {
        (nums[2], nums[0], nums[1])
    };
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(y).ok()?,
        u32::try_from(m).ok()?,
        u32::try_from(d).ok()?,
    )?;
    let _ = Weekday::Sun;
    let midnight_utc = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    Some(midnight_utc - la_offset_hours(date) * 3_600_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Node {
        Node::Text(s.into())
    }
    fn op(o: &str, v: &str) -> Node {
        Node::Op(o.into(), v.into())
    }

    #[test]
    fn parses_precedence_and_groups() {
        assert_eq!(
            parse("a b OR c"),
            Node::And(vec![t("a"), Node::Or(vec![t("b"), t("c")])])
        );
        assert_eq!(parse("from:amy"), op("from", "amy"));
        assert_eq!(
            parse("-label:x {from:a from:b}"),
            Node::And(vec![
                Node::Not(Box::new(op("label", "x"))),
                Node::Or(vec![op("from", "a"), op("from", "b")])
            ])
        );
        assert_eq!(
            parse("subject:(dinner movie)"),
            Node::And(vec![op("subject", "dinner"), op("subject", "movie")])
        );
        assert_eq!(parse("subject:\"Q3 numbers\""), op("subject", "Q3 numbers"));
        assert_eq!(parse("\"quarterly report\""), t("quarterly report"));
        assert_eq!(parse("a or b"), Node::And(vec![t("a"), t("or"), t("b")]));
        // lenient: unbalanced parentheses do not fail
        let _ = parse("((from:a");
        let _ = parse(")) OR");
    }

    #[test]
    fn dates_are_pacific_midnight() {
        // 2021-10-10 is in DST: midnight PDT = 07:00 UTC
        assert_eq!(parse_date_ms("2021/10/10"), Some(1_633_849_200_000));
        assert_eq!(parse_date_ms("10/10/2021"), Some(1_633_849_200_000));
        assert_eq!(parse_date_ms("2021-10-10"), Some(1_633_849_200_000));
        // January: PST = 08:00 UTC
        assert_eq!(parse_date_ms("2022/01/01"), Some(1_641_024_000_000));
        assert_eq!(parse_date_ms("1388552400"), Some(1_388_552_400_000));
        assert_eq!(parse_date_ms("2021/13/10"), None);
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!(parse_size("10M"), Some(10 * 1024 * 1024));
        assert_eq!(parse_size("2k"), Some(2048));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_age_ms("2d"), Some(2 * 86_400_000));
        assert_eq!(parse_age_ms("x"), None);
    }

    #[test]
    fn token_sequences() {
        assert!(contains_seq(
            &tokens("Amy Pond <amy@partner.test>"),
            &tokens("amy")
        ));
        assert!(contains_seq(
            &tokens("amy.pond@partner.test"),
            &tokens("partner.test")
        ));
        assert!(!contains_seq(&tokens("amy@partner.test"), &tokens("am")));
    }
}
