//! The stages of `netmon run`, one file each, in the order an event goes through them:
//! `reader` (ring-buffer drain) → `enrich` (flows, process context, DNS names) →
//! `detect` (rules) → `hub` (one `emit` that counts and fans out) → consumers
//! (`sink`, the scanner's peer feed, the history writer, …).
pub mod hub;
