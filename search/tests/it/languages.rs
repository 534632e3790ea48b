//! Korean, Japanese, Chinese, English and mixed fixtures: for each query, exactly which
//! messages it must find (every other fixture is an expected miss).

use std::collections::BTreeSet;

use schema::RoomId;

use crate::harness::Harness;

const FIXTURES: &[&str] = &[
    /* 0 */ "채팅방에서 만나요",
    /* 1 */ "서울에서 만나요. 내일은 집 에서",
    /* 2 */ "거기에서울었어",
    /* 3 */ "Rust로 채팅 서버를 만들었다",
    /* 4 */ "東京で会いましょう",
    /* 5 */ "京都の天気はどうですか",
    /* 6 */ "我们在聊天室见面",
    /* 7 */ "今天天气很好",
    /* 8 */ "The quick brown fox jumps over the lazy dog",
    /* 9 */ "Let's meet in the chat room at 10",
    /* 10 */ "ＦＵＬＬＷＩＤＴＨ ｶﾀｶﾅ text",
    /* 11 */ "파티 🎉 하자",
    /* 12 */ "채팅",
    /* 13 */ "Café crème",
    /* 14 */ "<b>bold</b> & \"quoted\" chat",
    /* 15 */ "저녁밥 먹었어?",
];

/// (query, the fixtures it finds).
const CASES: &[(&str, &[usize])] = &[
    // Korean: words inside longer runs, and phrases of bigrams that must be adjacent.
    ("채팅", &[0, 3, 12]),
    ("채팅방", &[0]),
    ("에서울", &[2]),
    ("서울", &[1, 2]),
    ("에서", &[0, 1, 2]),
    ("만나요", &[0, 1]),
    ("방에서 만나요", &[0]),
    ("\"채팅 서버\"", &[3]),
    ("\"서버 채팅\"", &[]),
    ("채팅 -서버", &[0, 12]),
    ("밥", &[15]),
    ("채", &[0, 3, 12]),
    ("팅방", &[0]),
    ("방채", &[]),
    // Japanese.
    ("東京", &[4]),
    ("京都", &[5]),
    ("京", &[4, 5]),
    ("会いましょう", &[4]),
    ("都京", &[]),
    ("カタカナ", &[10]),
    ("ｶﾀｶﾅ", &[10]),
    // Chinese.
    ("天气", &[7]),
    ("天気", &[5]),
    ("聊天室", &[6]),
    ("天", &[5, 6, 7]),
    ("天室见", &[6]),
    ("室天", &[]),
    // English.
    ("quick fox", &[8]),
    ("\"quick fox\"", &[]),
    ("\"brown fox\"", &[8]),
    ("QUICK", &[8]),
    ("chat", &[9, 14]),
    ("fox -lazy", &[]),
    ("dog -cat", &[8]),
    ("meet room", &[9]),
    ("10", &[9]),
    ("let's", &[9]),
    ("fullwidth", &[10]),
    ("café", &[13]),
    ("CAFÉ", &[13]),
    ("bold", &[14]),
    // Accents are not folded: `cafe` is another word.
    ("cafe", &[]),
    // Mixed scripts, emoji.
    ("Rust로", &[3]),
    ("rust 채팅", &[3]),
    ("🎉", &[11]),
    ("파티🎉", &[11]),
];

#[tokio::test]
async fn every_fixture_query_finds_exactly_its_messages() {
    let h = Harness::new().await;
    let room = RoomId::new();
    let mut ids = Vec::new();
    for text in FIXTURES {
        ids.push(h.send(room, text).await.0);
    }
    h.caught_up().await;
    let mut failures = Vec::new();
    for (q, want) in CASES {
        let want: BTreeSet<_> = want.iter().map(|i| ids[*i]).collect();
        let got: BTreeSet<_> = h.ids(q, &[room]).into_iter().collect();
        if got != want {
            let name = |set: &BTreeSet<_>| -> Vec<usize> {
                set.iter()
                    .map(|id| ids.iter().position(|x| x == id).unwrap())
                    .collect()
            };
            failures.push(format!(
                "{q:?}: got {:?}, want {:?}",
                name(&got),
                name(&want)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    h.close().await;
}

#[tokio::test]
async fn snippets_highlight_matches_and_escape_html() {
    let h = Harness::new().await;
    let room = RoomId::new();
    for text in FIXTURES {
        h.send(room, text).await;
    }
    let long = format!(
        "{} 약속은 채팅방에서 {}",
        "가".repeat(200),
        "나".repeat(200)
    );
    h.send(room, &long).await;
    h.caught_up().await;
    let snippet = |q: &str| -> Vec<String> {
        let mut s: Vec<String> = h
            .search(q, &[room])
            .hits
            .into_iter()
            .map(|h| h.snippet)
            .collect();
        s.sort();
        s
    };
    let found = snippet("채팅방");
    assert_eq!(found[0], "<mark>채팅방</mark>에서 만나요");
    // A long message is cut around the match, and says so.
    let cut = &found[1];
    assert!(
        cut.contains(" 약속은 <mark>채팅방</mark>에서 나나"),
        "{cut}"
    );
    assert!(cut.starts_with('…') && cut.ends_with('…'), "{cut}");
    assert!(cut.chars().count() < 100, "{cut}");
    // Overlapping bigrams are merged into one highlight.
    assert_eq!(snippet("에서울"), ["거기<mark>에서울</mark>었어"]);
    // A one-character query highlights the character inside a longer run.
    assert_eq!(snippet("밥"), ["저녁<mark>밥</mark> 먹었어?"]);
    assert_eq!(
        snippet("bold"),
        ["&lt;b&gt;<mark>bold</mark>&lt;/b&gt; &amp; &quot;quoted&quot; chat"]
    );
    assert_eq!(snippet("🎉"), ["파티 <mark>🎉</mark> 하자"]);
    assert_eq!(
        snippet("ｶﾀｶﾅ"),
        ["ＦＵＬＬＷＩＤＴＨ <mark>ｶﾀｶﾅ</mark> text"]
    );
    h.close().await;
}
