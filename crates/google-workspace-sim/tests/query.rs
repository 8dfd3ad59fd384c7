//! `q` search: Gmail examples and a brute-force oracle over the ground truth (proptest).

mod common;

use std::sync::OnceLock;

use common::{Env, enc, small, start};
use google_workspace_sim::MessageTruth;
use proptest::prelude::*;

/// 2021-10-10 00:00 America/Los_Angeles (PDT) in epoch ms.
const OCT_10_2021_PT: i64 = 1_633_849_200_000;

#[tokio::test]
async fn before_date_and_from_amy_behave_as_documented() {
    let env = start(small()).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let truth = env.sim.messages(&user).expect("truth");
    let visible: Vec<&MessageTruth> = truth
        .iter()
        .filter(|m| !m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH"))
        .collect();

    let before = env
        .list_all(
            &tok,
            &user,
            &format!("&q={}", enc("before:2021/10/10")),
            100,
        )
        .await;
    let expected: Vec<String> = visible
        .iter()
        .filter(|m| m.internal_date.parse::<i64>().expect("ms") < OCT_10_2021_PT)
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(before, expected);
    assert!(
        !before.is_empty() && before.len() < visible.len(),
        "the date splits the mailbox"
    );
    // other date spellings and the negation give the same split
    let us = env
        .list_all(
            &tok,
            &user,
            &format!("&q={}", enc("before:10/10/2021")),
            500,
        )
        .await;
    assert_eq!(us, before);
    let after = env
        .list_all(&tok, &user, &format!("&q={}", enc("after:2021-10-10")), 500)
        .await;
    assert_eq!(after.len() + before.len(), visible.len());
    let epoch = env
        .list_all(
            &tok,
            &user,
            &format!("&q={}", enc(&format!("before:{}", OCT_10_2021_PT / 1000))),
            500,
        )
        .await;
    assert_eq!(epoch, before);

    // from:amy matches "Amy Pond <amy@partner.test>", amy.lee@…, users named Amy; not "Amelia"
    let mut amy_total = 0;
    for u in env
        .sim
        .users()
        .iter()
        .filter(|u| !u.suspended && u.is_mailbox_setup)
    {
        let t = env.gmail_token(&u.primary_email).await;
        let ids = env
            .list_all(
                &t,
                &u.primary_email,
                &format!("&q={}", enc("from:amy")),
                500,
            )
            .await;
        let truth = env.sim.messages(&u.primary_email).expect("truth");
        for m in &truth {
            let hit = ids.contains(&m.id);
            let from = m.from.to_lowercase();
            let words: Vec<&str> = from.split(|c: char| !c.is_alphanumeric()).collect();
            let spam = m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH");
            assert_eq!(
                hit,
                words.contains(&"amy") && !spam,
                "from={} hit={hit}",
                m.from
            );
        }
        amy_total += ids.len();
    }
    assert!(amy_total > 5, "from:amy has positives: {amy_total}");
    // from:am is not a prefix match
    let ids = env
        .list_all(&tok, &user, &format!("&q={}", enc("from:am")), 500)
        .await;
    assert!(ids.is_empty());
}

#[tokio::test]
async fn spam_and_trash_rules() {
    let env = start(small()).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let truth = env.sim.messages(&user).expect("truth");
    let n_trash = truth
        .iter()
        .filter(|m| m.label_ids.contains(&"TRASH".to_string()))
        .count();
    assert!(n_trash > 0);
    // in:trash overrides includeSpamTrash=false
    let ids = env.list_all(&tok, &user, "&q=in%3Atrash", 500).await;
    assert_eq!(ids.len(), n_trash);
    let ids = env.list_all(&tok, &user, "&labelIds=TRASH", 500).await;
    assert_eq!(ids.len(), n_trash);
    let any = env.list_all(&tok, &user, "&q=in%3Aanywhere", 500).await;
    assert_eq!(any.len(), truth.len());
}

// ---------------------------------------------------------------------------------------------
// Brute-force oracle

#[derive(Debug, Clone)]
enum Q {
    From(&'static str),
    To(&'static str),
    Label(&'static str),
    Is(&'static str),
    HasAttachment,
    Subject(&'static str),
    Word(&'static str),
    Before(i64),
    After(i64),
    Larger(u64),
    Smaller(u64),
    Not(Box<Q>),
    Or(Box<Q>, Box<Q>),
    And(Vec<Q>),
    Brace(Vec<Q>),
}

fn render(q: &Q) -> String {
    match q {
        Q::From(v) => format!("from:{v}"),
        Q::To(v) => format!("to:{v}"),
        Q::Label(v) => format!("label:{v}"),
        Q::Is(v) => format!("is:{v}"),
        Q::HasAttachment => "has:attachment".into(),
        Q::Subject(v) => format!("subject:{v}"),
        Q::Word(v) => v.to_string(),
        Q::Before(s) => format!("before:{s}"),
        Q::After(s) => format!("after:{s}"),
        Q::Larger(k) => format!("larger:{k}K"),
        Q::Smaller(k) => format!("smaller:{k}K"),
        Q::Not(x) => format!("-{}", render_atomish(x)),
        Q::Or(a, b) => format!("{} OR {}", render_atomish(a), render_atomish(b)),
        Q::And(v) => format!("({})", v.iter().map(render).collect::<Vec<_>>().join(" ")),
        Q::Brace(v) => format!(
            "{{{}}}",
            v.iter().map(render_atomish).collect::<Vec<_>>().join(" ")
        ),
    }
}

fn render_atomish(q: &Q) -> String {
    match q {
        Q::Or(..) => format!("({})", render(q)),
        _ => render(q),
    }
}

fn toks(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn has_seq(hay: &str, needle: &str) -> bool {
    let h = toks(hay);
    let n = toks(needle);
    !n.is_empty() && h.windows(n.len()).any(|w| w == n.as_slice())
}

fn eval(q: &Q, m: &MessageTruth) -> bool {
    let label = |l: &str| m.label_ids.iter().any(|x| x == l);
    match q {
        Q::From(v) => has_seq(&m.from, v),
        Q::To(v) => m.to.iter().any(|t| has_seq(t, v)),
        Q::Label(v) => match *v {
            "inbox" => label("INBOX"),
            "starred" => label("STARRED"),
            "receipts" => label("Label_1"),
            "projects-q3" => label("Label_2"),
            _ => false,
        },
        Q::Is(v) => match *v {
            "unread" => label("UNREAD"),
            "read" => !label("UNREAD"),
            "important" => label("IMPORTANT"),
            _ => false,
        },
        Q::HasAttachment => !m.attachments.is_empty(),
        Q::Subject(v) => has_seq(&m.subject, v),
        // bare words are only drawn from subject/name vocabulary absent from bodies
        Q::Word(v) => {
            has_seq(&m.subject, v)
                || has_seq(&m.from, v)
                || m.to
                    .iter()
                    .chain(m.cc.iter())
                    .chain(m.bcc.iter())
                    .any(|t| has_seq(t, v))
        }
        Q::Before(s) => m.internal_date.parse::<i64>().expect("ms") < s * 1000,
        Q::After(s) => m.internal_date.parse::<i64>().expect("ms") >= s * 1000,
        Q::Larger(k) => m.size_estimate > k * 1024,
        Q::Smaller(k) => m.size_estimate < k * 1024,
        Q::Not(x) => !eval(x, m),
        Q::Or(a, b) => eval(a, m) || eval(b, m),
        Q::And(v) => v.iter().all(|x| eval(x, m)),
        Q::Brace(v) => v.iter().any(|x| eval(x, m)),
    }
}

fn atom() -> impl Strategy<Value = Q> {
    prop_oneof![
        prop::sample::select(vec![
            "amy",
            "bob",
            "partner.test",
            "clara",
            "zoe",
            "amy.lee",
            "github"
        ])
        .prop_map(Q::From),
        prop::sample::select(vec!["amy", "rory", "acme.test", "martha"]).prop_map(Q::To),
        prop::sample::select(vec!["inbox", "starred", "receipts", "projects-q3"])
            .prop_map(Q::Label),
        prop::sample::select(vec!["unread", "read", "important"]).prop_map(Q::Is),
        Just(Q::HasAttachment),
        prop::sample::select(vec!["dinner", "invoice", "q3", "report", "re"]).prop_map(Q::Subject),
        prop::sample::select(vec!["Dinner", "Pond", "\"Q3 numbers\"", "Williams"])
            .prop_map(Q::Word),
        (1_546_300_800i64..1_735_603_200).prop_map(Q::Before),
        (1_546_300_800i64..1_735_603_200).prop_map(Q::After),
        (1u64..40).prop_map(Q::Larger),
        (1u64..40).prop_map(Q::Smaller),
    ]
}

fn query() -> impl Strategy<Value = Q> {
    atom().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|q| Q::Not(Box::new(q))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Q::Or(Box::new(a), Box::new(b))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Q::And),
            prop::collection::vec(inner, 2..4).prop_map(Q::Brace),
        ]
    })
}

struct Shared {
    rt: tokio::runtime::Runtime,
    env: Env,
    token: String,
    user: String,
    truth: Vec<MessageTruth>,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (env, token, user) = rt.block_on(async {
            let env = start(small()).await;
            let user = env.regular_user();
            let token = env.gmail_token(&user).await;
            (env, token, user)
        });
        let truth = env.sim.messages(&user).expect("truth");
        Shared {
            rt,
            env,
            token,
            user,
            truth,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn messages_list_equals_brute_force(q in query()) {
        let s = shared();
        let text = render(&q);
        let got = s.rt.block_on(s.env.list_all(&s.token, &s.user, &format!("&includeSpamTrash=true&q={}", enc(&text)), 500));
        let want: Vec<String> = s.truth.iter().filter(|m| eval(&q, m)).map(|m| m.id.clone()).collect();
        prop_assert_eq!(got, want, "query {}", text);
    }
}
