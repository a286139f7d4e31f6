//! Questions other threads ask of the state the event loop owns (the flow table), as
//! requests on a small queue that the loop answers between batches: no lock on the
//! loop's state, and a big table is handed over in steps of [`CHUNK`] flows so the
//! ring buffer is drained in between (`/api/v1/flows` with 100,000 flows).
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::event::Event;

/// Flows per answer.
pub const CHUNK: usize = 2048;
/// Requests waiting at most.
const QUEUE: usize = 16;

/// "The flows from slot `from` on."
pub struct FlowsRequest {
    pub from: usize,
    pub reply: oneshot::Sender<FlowsChunk>,
}

/// Up to [`CHUNK`] flows as `flow` events, and the slot to ask from next.
pub struct FlowsChunk {
    pub flows: Vec<Arc<Event>>,
    pub next: Option<usize>,
}

/// The asking end (cloneable) and the loop's end.
pub fn channel() -> (mpsc::Sender<FlowsRequest>, mpsc::Receiver<FlowsRequest>) {
    mpsc::channel(QUEUE)
}

/// Walks the whole table through `ask`; `None` when netmon is stopping.
pub async fn all_flows(ask: &mpsc::Sender<FlowsRequest>) -> Option<Vec<Arc<Event>>> {
    let mut from = 0;
    let mut all = Vec::new();
    loop {
        let (tx, rx) = oneshot::channel();
        ask.send(FlowsRequest { from, reply: tx }).await.ok()?;
        let chunk = rx.await.ok()?;
        all.extend(chunk.flows);
        match chunk.next {
            Some(n) => from = n,
            None => return Some(all),
        }
    }
}
