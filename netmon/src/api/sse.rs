//! `GET /api/v1/events`: the live stream as Server-Sent Events. Each event is
//! `id: <n>` and `data: <the JSON Lines object>`; a client that fell more than the
//! ring behind (or asked to resume from an id neither the ring nor the history holds)
//! first gets `event: lagged` with `data: {"missed": N}`, N the events it will never get.
//!
//! Resume with `Last-Event-ID` or `since=<id>`: the stream starts after that id, from
//! the ring, or from the history when the ring no longer holds it (`api/replay.rs`).
//! `since=10m` or `since=2026-12-01T10:00Z` starts with the first event at or after
//! that time that the ring or the history holds (nothing older is announced as
//! `lagged`: a time does not say how many events came before the oldest kept).
//! Without either, it starts with the next event. The number of streams is capped.
use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use tokio::sync::watch;

use super::{
    AppState, Shared, bad_request, error,
    feed::{self, Item, Missed},
    filter::{self, Filter, Resume},
    last_event_id,
    replay::{self, History},
};

/// Events copied out of the ring per lock.
const BATCH: usize = 256;

enum Out {
    Lagged(u64),
    Item(Arc<Item>),
}

/// One client's place in the stream; counted in `streams` while it lives.
struct Client {
    shared: AppState,
    filter: Filter,
    next: u64,
    latest: watch::Receiver<u64>,
    pending: VecDeque<Out>,
    batch: Vec<Arc<Item>>,
    /// Where ids older than the ring are read from, when the agent keeps a history.
    history: Option<History>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.counters.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Client {
    /// The next thing to send; `None` when netmon stops.
    async fn next(&mut self) -> Option<Out> {
        loop {
            if let Some(o) = self.pending.pop_front() {
                return Some(o);
            }
            let _ = self.latest.borrow_and_update();
            let read = {
                let ring = feed::lock(&self.shared.feed.events);
                match ring.first_id() {
                    Some(first) if self.history.is_some() && self.next < first => Err(first),
                    _ => Ok(ring.read_from(self.next, BATCH, &mut self.batch)),
                }
            };
            match read {
                Ok(Missed(missed)) if missed > 0 => {
                    self.pending.push_back(Out::Lagged(missed));
                    self.next += missed;
                }
                Ok(_) => {}
                Err(first) => {
                    self.replay_history(first).await;
                    continue;
                }
            }
            for it in self.batch.drain(..) {
                if it.id > self.next {
                    // The hub dropped these for the API (its queue was full).
                    self.pending.push_back(Out::Lagged(it.id - self.next));
                }
                self.next = it.id + 1;
                if self.filter.matches(&it) {
                    self.pending.push_back(Out::Item(it));
                }
            }
            if self.pending.is_empty() && *self.latest.borrow() < self.next {
                // Nothing new: wait for the pump (an error: it stopped).
                self.latest.changed().await.ok()?;
            }
        }
    }
}

impl Client {
    /// One stretch from the history, before `first` (the ring's oldest id).
    async fn replay_history(&mut self, first: u64) {
        let Some(h) = &mut self.history else {
            return;
        };
        match h.step(&self.shared.feed, self.next, first, BATCH).await {
            replay::Step::Wait => {}
            replay::Step::Missed(n, go_on) => {
                self.pending.push_back(Out::Lagged(n));
                self.next = go_on;
            }
            replay::Step::Events(items, go_on) => {
                for it in items {
                    if self.filter.matches(&it) {
                        self.pending.push_back(Out::Item(it));
                    }
                }
                self.next = go_on;
            }
        }
    }
}

fn render(o: Out) -> SseEvent {
    match o {
        Out::Lagged(n) => SseEvent::default()
            .event("lagged")
            .data(format!(r#"{{"missed":{n}}}"#)),
        Out::Item(it) => SseEvent::default().id(it.id.to_string()).data(&*it.json),
    }
}

/// Where a new stream starts: after `resume` when given, else with the next event.
/// An id beyond the newest (a netmon without a history restarted and numbers from 1
/// again) replays the whole ring, from `oldest`.
fn start_at(resume: Option<u64>, latest: u64, oldest: u64) -> u64 {
    match resume {
        None => latest + 1,
        Some(id) if id > latest => oldest,
        Some(id) => id + 1,
    }
}

pub(super) async fn events(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let filter = match Filter::parse(&q, &["since"]) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let resume = match filter::resume_from(&q, last_event_id(&headers), chrono::Utc::now()) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    if !take_slot(&s) {
        s.counters.streams_refused.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many event streams ({} at most); try again later",
                s.max_streams
            ),
        );
    }
    let latest = s.feed.latest.clone();
    let latest_id = *latest.borrow();
    let from = match resume {
        Some(Resume::At(t)) => start_at_time(&s, t, latest_id).await,
        Some(Resume::After(id)) => {
            let oldest = feed::lock(&s.feed.events).first_id().unwrap_or(1);
            start_at(Some(id), latest_id, oldest)
        }
        None => latest_id + 1,
    };
    let history = s
        .history
        .clone()
        .zip(s.settled.clone())
        .map(|(path, settled)| History::new(path, settled));
    let client = Client {
        shared: s.clone(),
        filter,
        next: from,
        latest,
        pending: VecDeque::new(),
        batch: Vec::with_capacity(BATCH),
        history,
    };
    let stream = futures_util::stream::unfold(client, |mut c| async move {
        let o = c.next().await?;
        Some((Ok::<_, Infallible>(render(o)), c))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Where a stream that starts at time `t` begins: in the ring when it reaches back to
/// `t`, else at the history's first event at or after `t`, else at the ring's oldest
/// (or the next event, the ring being empty).
async fn start_at_time(s: &Shared, t: chrono::DateTime<chrono::Utc>, latest: u64) -> u64 {
    let (in_ring, oldest) = {
        let ring = feed::lock(&s.feed.events);
        (ring.first_at(t), ring.first_id().unwrap_or(latest + 1))
    };
    if let Some(id) = in_ring {
        return id;
    }
    match &s.history {
        Some(path) => replay::first_at(path.clone(), t)
            .await
            .map_or(oldest, |id| id.min(oldest)),
        None => oldest,
    }
}

/// Counts a new stream unless the cap is reached.
fn take_slot(s: &Shared) -> bool {
    let c = &s.counters.streams;
    let mut n = c.load(Ordering::Relaxed);
    loop {
        if n >= s.max_streams {
            return false;
        }
        match c.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => n = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_start_live_or_after_the_resume_id() {
        assert_eq!(start_at(None, 10, 1), 11);
        assert_eq!(start_at(Some(4), 10, 1), 5);
        assert_eq!(start_at(Some(10), 10, 1), 11);
        // A restarted netmon numbers from 1: an id from before replays the ring.
        assert_eq!(start_at(Some(500), 10, 1), 1);
        assert_eq!(start_at(Some(500), 10, 3), 3);
    }
}
