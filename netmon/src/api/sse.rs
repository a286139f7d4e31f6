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
    sync::atomic::Ordering,
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::sync::watch;

use super::{
    AppState, Shared, bad_request, error,
    feed::{self, ItemRef, Missed},
    filter::{self, Filter, Resume},
    last_event_id,
    replay::{self, History},
};

/// Events copied out of the ring per lock.
const BATCH: usize = 256;
/// Silence after which a stream gets a comment line (`:`), so that proxies keep it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most bytes rendered into one chunk of the response.
const CHUNK: usize = 256 * 1024;

enum Out {
    Lagged(u64),
    Item(ItemRef),
}

/// One client's place in the stream; counted in `streams` while it lives.
struct Client {
    shared: AppState,
    filter: Filter,
    next: u64,
    latest: watch::Receiver<u64>,
    pending: VecDeque<Out>,
    batch: Vec<ItemRef>,
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

impl Client {
    /// Everything ready to send as one chunk of the response: what [`Client::next`]
    /// gives and whatever else it already has pending, rendered back to back. One
    /// write (and one read at the client) for a whole batch instead of one each: with
    /// 50 streams that is most of the API's cost. A comment line after [`KEEP_ALIVE`]
    /// of silence; `None` when netmon stops.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        // `next` only changes the client's place after its awaits: cancelling it
        // (the timeout) loses nothing.
        let first = match tokio::time::timeout(KEEP_ALIVE, self.next()).await {
            Ok(o) => o?,
            Err(_) => return Some(Bytes::from_static(b":\n\n")),
        };
        let mut buf = Vec::with_capacity(16 * 1024);
        render(&mut buf, &first);
        while buf.len() < CHUNK
            && let Some(o) = self.pending.pop_front()
        {
            render(&mut buf, &o);
        }
        Some(Bytes::from(buf))
    }
}

/// One SSE event: `id:` and `data:` lines and a blank line, or `event: lagged`.
fn render(buf: &mut Vec<u8>, o: &Out) {
    use std::io::Write as _;
    match o {
        Out::Lagged(n) => {
            let _ = write!(buf, "event: lagged\ndata: {{\"missed\":{n}}}\n\n");
        }
        Out::Item(it) => {
            let _ = writeln!(buf, "id: {}", it.id);
            // JSON escapes every control character, so this is one line; were it
            // not, each line would be a `data:` line, as SSE wants.
            for line in it.json().split(['\n', '\r']) {
                buf.extend_from_slice(b"data: ");
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
            }
            buf.push(b'\n');
        }
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
        let chunk = c.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), c))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
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
        Some(path) => {
            // The history answers for what is older than the ring: let its writer
            // commit up to the ring's oldest first (it does within half a second), or
            // a burst that just left the ring would not be in the file yet.
            if let Some(settled) = &s.settled {
                let deadline = tokio::time::Instant::now() + replay::WAIT;
                while settled.settled().saturating_add(1) < oldest
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(replay::POLL).await;
                }
            }
            replay::first_at(path.clone(), t)
                .await
                .map_or(oldest, |id| id.min(oldest))
        }
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
    use std::sync::Arc;

    #[test]
    fn events_render_as_sse_frames_back_to_back() {
        let ev: crate::event::Event = serde_json::from_str(
            r#"{"ts":"2026-12-02T06:00:00Z","host":"h","type":"host_up","addr":"10.0.0.7","mac":null,"name":null,"reason":"icmp","last_seen":null}"#,
        )
        .unwrap();
        let item = ItemRef::one(feed::Item::new(42, Arc::new(ev.clone())));
        let mut buf = Vec::new();
        render(&mut buf, &Out::Item(item.clone()));
        render(&mut buf, &Out::Lagged(7));
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            format!(
                "id: 42\ndata: {}\n\nevent: lagged\ndata: {{\"missed\":7}}\n\n",
                item.json()
            )
        );
        assert!(!item.json().contains('\n'));
    }

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
