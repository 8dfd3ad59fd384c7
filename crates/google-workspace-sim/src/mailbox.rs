//! One user's mailbox: compact message metadata, labels and the history log.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::Serialize;

use crate::corpus::{
    self, DEFAULT_USER_LABELS, L_CAT_PERSONAL, L_DRAFT, L_IMPORTANT, L_INBOX, L_SENT, L_SPAM,
    L_STARRED, L_TRASH, L_UNREAD, MAX_USER_LABELS, Msg, Origin, SYSTEM_LABELS, USER_LABEL_BIT,
    World,
};
use crate::rng::{Rng, h2, h3};

#[derive(Debug, Clone, Serialize)]
pub struct LabelInfo {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub label_type: String,
    #[serde(skip)]
    pub(crate) bit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistKind {
    Added,
    Deleted,
    LabelsAdded(u64),
    LabelsRemoved(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct HistRec {
    pub id: u64,
    pub at_ms: i64,
    pub kind: HistKind,
    pub msg_id: u64,
    pub thread_id: u64,
    pub labels_after: u64,
}

pub(crate) struct Mailbox {
    pub msgs: HashMap<u64, Msg>,
    pub order: BTreeSet<(i64, u64)>,
    pub user_labels: Vec<LabelInfo>,
    pub history: VecDeque<HistRec>,
    pub history_id: u64,
    pub floor: u64,
    /// Rendered messages (RFC 822 bytes and snippet) kept by `Simulator::prerender`: a
    /// message's content never changes, only its labels.
    pub rendered: HashMap<u64, Rendered>,
    rng: Rng,
}

/// A message as `messages.get?format=raw` serves it, apart from labels and ids.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    pub raw: std::sync::Arc<[u8]>,
    pub snippet: std::sync::Arc<str>,
}

/// Shape parameters of a generated mailbox.
pub(crate) struct Shape {
    pub messages: usize,
    pub shared_ratio: f64,
    pub n_users: usize,
}

pub(crate) fn shared_per_owner(shape: &Shape) -> u32 {
    if shape.n_users < 2 || shape.shared_ratio <= 0.0 {
        return 0;
    }
    // average conversation length is about 8 and each user takes part in ~3 owners' conversations
    ((shape.messages as f64 * shape.shared_ratio) / 24.0).round() as u32
}

fn received_labels(r: &mut Rng, n_user_labels: usize) -> u64 {
    let mut l = L_INBOX;
    if r.chance(0.3) {
        l |= L_UNREAD;
    }
    if r.chance(0.05) {
        l |= L_STARRED;
    }
    if r.chance(0.15) {
        l |= L_IMPORTANT;
    }
    // categories: personal most of the time
    let c = r.below(10);
    l |= if c < 6 {
        L_CAT_PERSONAL
    } else {
        L_CAT_PERSONAL << (c - 5).min(4)
    };
    let x = r.below(100);
    if x < 5 {
        l = (l & !L_INBOX) | L_SPAM;
    } else if x < 10 {
        l |= L_TRASH;
        l &= !L_INBOX;
    }
    if n_user_labels > 0 && r.chance(0.2) {
        l |= 1 << (USER_LABEL_BIT + r.below(n_user_labels as u64) as u32);
        if r.chance(0.3) {
            l |= 1 << (USER_LABEL_BIT + r.below(n_user_labels as u64) as u32);
        }
    }
    l
}

fn sent_labels(r: &mut Rng, n_user_labels: usize) -> u64 {
    let mut l = L_SENT;
    if r.chance(0.02) {
        l = L_DRAFT;
    } else if r.chance(0.03) {
        l |= L_TRASH;
    }
    if n_user_labels > 0 && r.chance(0.1) {
        l |= 1 << (USER_LABEL_BIT + r.below(n_user_labels as u64) as u32);
    }
    l
}

impl Mailbox {
    pub(crate) fn empty(seed: u64, owner: usize) -> Mailbox {
        let user_labels = DEFAULT_USER_LABELS
            .iter()
            .enumerate()
            .map(|(i, n)| LabelInfo {
                id: format!("Label_{}", i + 1),
                name: n.to_string(),
                label_type: "user".into(),
                bit: USER_LABEL_BIT + i as u32,
            })
            .collect();
        let mut rng = Rng::new(h2(seed, 0x4157 + owner as u64));
        let base = 4_000_000 + rng.below(5_000_000);
        Mailbox {
            msgs: HashMap::new(),
            order: BTreeSet::new(),
            user_labels,
            history: VecDeque::new(),
            history_id: base,
            floor: base,
            rendered: HashMap::new(),
            rng,
        }
    }

    /// Generates the initial mailbox of `owner`.
    pub(crate) fn generate(w: &World<'_>, owner: usize, shape: &Shape) -> Mailbox {
        let mut mb = Mailbox::empty(w.seed, owner);
        let n_ul = mb.user_labels.len();
        let mut pending: Vec<(i64, Origin, u64, u64)> = Vec::new(); // (ms, origin, labels, thread key)
        let shared = shared_per_owner(shape);
        if shared > 0 {
            let mut owners = Vec::new();
            for off in corpus::SHARED_OFFSETS {
                let o = (owner + shape.n_users - off % shape.n_users) % shape.n_users;
                if !owners.contains(&o) {
                    owners.push(o);
                }
            }
            for o in owners {
                for j in 0..shared {
                    let conv = corpus::shared_conv(w, o, j);
                    if !conv.participants.contains(&owner) {
                        continue;
                    }
                    for idx in 0..conv.len {
                        let (ms, sender) = corpus::shared_msg_time(&conv, idx);
                        let mut r = Rng::new(h3(conv.key, owner as u64, u64::from(idx)));
                        let labels = if sender == owner {
                            sent_labels(&mut r, 0) & !L_DRAFT | L_SENT
                        } else {
                            received_labels(&mut r, n_ul)
                        };
                        pending.push((
                            ms,
                            Origin::Shared {
                                owner: o as u32,
                                j,
                                idx,
                            },
                            labels,
                            conv.key,
                        ));
                    }
                }
            }
        }
        let shared_count = pending.len();
        let personal = shape.messages.saturating_sub(if shape.shared_ratio > 0.0 {
            shared_count.min(shape.messages)
        } else {
            0
        });
        let mut t = 0u32;
        let mut made = 0usize;
        while made < personal {
            let th = corpus::personal_thread(w, owner, t);
            for idx in 0..th.len {
                if made >= personal {
                    break;
                }
                let ms = corpus::personal_msg_time(&th, idx);
                let mut r = Rng::new(h2(th.kind_seed, 0x1abe1 + u64::from(idx)));
                let labels = if corpus::personal_incoming(idx) {
                    received_labels(&mut r, n_ul)
                } else {
                    sent_labels(&mut r, n_ul)
                };
                pending.push((
                    ms,
                    Origin::Personal { thread: t, idx },
                    labels,
                    th.kind_seed,
                ));
                made += 1;
            }
            t += 1;
        }
        // Assign ids in thread order so a thread id is its first message's id.
        let mut thread_ids: HashMap<u64, u64> = HashMap::new();
        let mut msgs: Vec<Msg> = Vec::with_capacity(pending.len());
        for (ms, origin, labels, tkey) in pending {
            let mut id = ((ms as u64) << 20)
                | (h3(w.seed, owner as u64, tkey ^ origin_key(&origin)) & 0xf_ffff);
            while mb.msgs.contains_key(&id) {
                id += 1;
            }
            let thread_id = *thread_ids.entry(tkey).or_insert(id);
            let mut m = Msg {
                id,
                thread_id,
                internal_ms: ms,
                history_id: 0,
                labels,
                size: 0,
                origin,
            };
            let spec = corpus::spec_of(w, owner, &m);
            m.size = corpus::render(&corpus::build_tree(&spec, m.id)).len() as u32;
            mb.msgs.insert(id, m.clone());
            msgs.push(m);
        }
        msgs.sort_by_key(|m| (m.internal_ms, m.id));
        let mut hid = mb.history_id;
        for m in &msgs {
            hid += 1 + mb.rng.below(3);
            if let Some(x) = mb.msgs.get_mut(&m.id) {
                x.history_id = hid;
            }
            mb.order.insert((m.internal_ms, m.id));
        }
        mb.history_id = hid + 1 + mb.rng.below(5);
        mb.floor = mb.history_id;
        mb
    }

    fn bump(&mut self) -> u64 {
        self.history_id += 1 + self.rng.below(5);
        self.history_id
    }

    fn record(&mut self, now_ms: i64, kind: HistKind, msg_id: u64) -> u64 {
        let id = self.bump();
        let (thread_id, labels_after) = match self.msgs.get_mut(&msg_id) {
            Some(m) => {
                m.history_id = id;
                (m.thread_id, m.labels)
            }
            None => (msg_id, 0),
        };
        self.history.push_back(HistRec {
            id,
            at_ms: now_ms,
            kind,
            msg_id,
            thread_id,
            labels_after,
        });
        id
    }

    /// Adds a message (its id and size must be set), records `messagesAdded`.
    pub(crate) fn add(&mut self, now_ms: i64, mut m: Msg) -> (u64, u64) {
        while self.msgs.contains_key(&m.id) {
            m.id += 1;
        }
        if m.thread_id == 0 {
            m.thread_id = m.id;
        }
        let id = m.id;
        self.order.insert((m.internal_ms, m.id));
        self.msgs.insert(id, m);
        let h = self.record(now_ms, HistKind::Added, id);
        (id, h)
    }

    /// Permanently deletes a message; records `messagesDeleted`.
    pub(crate) fn delete(&mut self, now_ms: i64, id: u64) -> Option<u64> {
        let m = self.msgs.get(&id)?.clone();
        let h = self.record(now_ms, HistKind::Deleted, id);
        self.msgs.remove(&id);
        self.order.remove(&(m.internal_ms, id));
        if let Some(last) = self.history.back_mut() {
            last.thread_id = m.thread_id;
            last.labels_after = m.labels;
        }
        Some(h)
    }

    /// Adds and removes labels; one history record per non-empty change.
    pub(crate) fn modify(&mut self, now_ms: i64, id: u64, add: u64, remove: u64) -> Option<u64> {
        let cur = self.msgs.get(&id)?.labels;
        let added = add & !cur;
        let removed = remove & cur & !add;
        let mut h = self.msgs.get(&id)?.history_id;
        if added != 0 {
            if let Some(m) = self.msgs.get_mut(&id) {
                m.labels |= added;
            }
            h = self.record(now_ms, HistKind::LabelsAdded(added), id);
        }
        if removed != 0 {
            if let Some(m) = self.msgs.get_mut(&id) {
                m.labels &= !removed;
            }
            h = self.record(now_ms, HistKind::LabelsRemoved(removed), id);
        }
        Some(h)
    }

    /// Drops history records with id ≤ `floor`; start ids below the floor then get 404.
    pub(crate) fn expire_through(&mut self, floor: u64) {
        let floor = floor.min(self.history_id);
        while self.history.front().is_some_and(|r| r.id <= floor) {
            self.history.pop_front();
        }
        self.floor = self.floor.max(floor);
    }

    /// Drops records older than `cutoff_ms`.
    pub(crate) fn expire_before(&mut self, cutoff_ms: i64) {
        let mut last = None;
        while self.history.front().is_some_and(|r| r.at_ms < cutoff_ms) {
            last = self.history.pop_front().map(|r| r.id);
        }
        if let Some(l) = last {
            self.floor = self.floor.max(l);
        }
    }

    pub(crate) fn create_label(&mut self, name: &str) -> Option<LabelInfo> {
        if let Some(l) = self.user_labels.iter().find(|l| l.name == name) {
            return Some(l.clone());
        }
        if self.user_labels.len() >= MAX_USER_LABELS {
            return None;
        }
        let n = self.user_labels.len();
        let l = LabelInfo {
            id: format!("Label_{}", n + 1),
            name: name.to_string(),
            label_type: "user".into(),
            bit: USER_LABEL_BIT + n as u32,
        };
        self.user_labels.push(l.clone());
        Some(l)
    }

    /// Label id → bit.
    pub(crate) fn label_bit(&self, id: &str) -> Option<u64> {
        if let Some(i) = SYSTEM_LABELS
            .iter()
            .position(|s| s.eq_ignore_ascii_case(id))
        {
            return Some(1 << i);
        }
        self.user_labels
            .iter()
            .find(|l| l.id == id)
            .map(|l| 1 << l.bit)
    }

    pub(crate) fn label_ids(&self, bits: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (i, s) in SYSTEM_LABELS.iter().enumerate() {
            if bits & (1 << i) != 0 {
                out.push(s.to_string());
            }
        }
        for l in &self.user_labels {
            if bits & (1 << l.bit) != 0 {
                out.push(l.id.clone());
            }
        }
        out
    }

    pub(crate) fn thread_count(&self) -> usize {
        let mut set = std::collections::HashSet::with_capacity(self.msgs.len());
        for m in self.msgs.values() {
            set.insert(m.thread_id);
        }
        set.len()
    }
}

fn origin_key(o: &Origin) -> u64 {
    match o {
        Origin::Personal { thread, idx } => h2(u64::from(*thread), u64::from(*idx)),
        Origin::Shared { owner, j, idx } => h3(u64::from(*owner), u64::from(*j), u64::from(*idx)),
        Origin::Custom(_) => 0,
    }
}

pub(crate) fn spam_or_trash(labels: u64) -> bool {
    labels & (L_SPAM | L_TRASH) != 0
}
