//! Cursor pagination: full pages, no duplicates, no gaps, for both sorts, while new messages
//! keep arriving between pages; cursors from elsewhere are refused.

use std::collections::HashSet;

use schema::{MessageId, RoomId};
use search::{Error, Sort};

use crate::harness::Harness;

/// Pages through `q` with `limit`, sending a new matching message before each next page.
/// Returns every page.
async fn page_through(
    h: &Harness,
    rooms: &[RoomId],
    q: &str,
    sort: Sort,
    limit: usize,
) -> Vec<Vec<search::Hit>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = h.search_with(q, rooms, |r| {
            r.sort = sort;
            r.limit = limit;
            r.cursor = cursor.clone();
        });
        pages.push(page.hits);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
        // Meanwhile, more messages are indexed (and change the index statistics).
        h.send(rooms[0], &format!("{q} {q} arriving late")).await;
        h.caught_up().await;
    }
}

#[tokio::test]
async fn pages_are_full_without_duplicates_or_gaps_while_messages_arrive() {
    let h = Harness::new().await;
    let rooms = [RoomId::new(), RoomId::new(), RoomId::new()];
    let mut original: HashSet<MessageId> = HashSet::new();
    for i in 0..130 {
        // Varying lengths and repetitions give varied scores, with many ties too.
        let body = match i % 4 {
            0 => "page".to_owned(),
            1 => format!("page {}", "filler ".repeat(i % 7)),
            2 => format!("페이지 page page {i}"),
            _ => format!("page number {i}"),
        };
        original.insert(h.send(rooms[i % 3], &body).await.0);
    }
    h.caught_up().await;
    for sort in [Sort::Recent, Sort::Relevance] {
        let pages = page_through(&h, &rooms, "page", sort, 25).await;
        let (last, full) = pages.split_last().unwrap();
        assert!(
            full.iter().all(|p| p.len() == 25),
            "{sort:?}: every page but the last is full"
        );
        assert!(!last.is_empty() || pages.len() == 1);
        let hits: Vec<&search::Hit> = pages.iter().flatten().collect();
        let ids: Vec<MessageId> = hits.iter().map(|hit| hit.message_id).collect();
        let unique: HashSet<MessageId> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{sort:?}: no message twice");
        assert!(
            original.is_subset(&unique),
            "{sort:?}: {} of the messages present at the first page are missing",
            original.difference(&unique).count()
        );
        // The order holds across page boundaries.
        for pair in hits.windows(2) {
            match sort {
                Sort::Recent => assert!(pair[0].sent_at >= pair[1].sent_at),
                Sort::Relevance => assert!(pair[0].score >= pair[1].score, "{sort:?}"),
            }
        }
        if sort == Sort::Recent {
            // Messages sent after the first page are newer than every cursor.
            assert_eq!(unique.len(), original.len());
        }
    }
    h.close().await;
}

#[tokio::test]
async fn foreign_or_damaged_cursors_are_refused() {
    let h = Harness::new().await;
    let room = RoomId::new();
    for i in 0..5 {
        h.send(room, &format!("cursor test {i}")).await;
    }
    h.caught_up().await;
    let page = h.search_with("cursor", &[room], |r| r.limit = 2);
    let cursor = page.next_cursor.unwrap();
    let try_with = |q: &str, sort: Sort, cursor: &str| {
        h.index.search(&search::SearchRequest {
            query: search::UserQuery::parse(q).unwrap(),
            rooms: vec![room],
            sender: None,
            from: None,
            to: None,
            sort,
            limit: 2,
            cursor: Some(cursor.to_owned()),
        })
    };
    assert!(try_with("cursor", Sort::Recent, &cursor).is_ok());
    for (q, sort, c) in [
        ("other", Sort::Recent, cursor.as_str()),
        ("cursor", Sort::Relevance, cursor.as_str()),
        ("cursor", Sort::Recent, "not a cursor!"),
        ("cursor", Sort::Recent, "e30"),
        ("cursor", Sort::Recent, ""),
        ("cursor", Sort::Recent, &cursor[..cursor.len() - 3]),
    ] {
        match try_with(q, sort, c) {
            Err(Error::InvalidCursor(_)) => {}
            other => panic!("{q} {sort:?} {c:?}: {other:?}"),
        }
    }
    h.close().await;
}

#[tokio::test]
async fn terms_that_grow_past_the_frozen_statistics_between_pages_are_harmless() {
    let h = Harness::new().await;
    let room = RoomId::new();
    for i in 0..3 {
        h.send(room, &format!("alpha {i}")).await;
    }
    h.caught_up().await;
    let first = h.search_with("alpha -beta", &[room], |r| {
        r.sort = Sort::Relevance;
        r.limit = 1;
    });
    // Far more messages with the excluded word than the whole index held at the first page.
    for i in 0..10 {
        h.send(room, &format!("beta {i}")).await;
    }
    h.caught_up().await;
    let mut cursor = first.next_cursor;
    let mut seen = vec![first.hits[0].message_id];
    while let Some(c) = cursor {
        let page = h.search_with("alpha -beta", &[room], |r| {
            r.sort = Sort::Relevance;
            r.limit = 1;
            r.cursor = Some(c);
        });
        seen.extend(page.hits.iter().map(|hit| hit.message_id));
        cursor = page.next_cursor;
    }
    assert_eq!(seen.len(), 3);
    h.close().await;
}
