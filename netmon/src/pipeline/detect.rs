//! The rules stage: runs the detection rules on each enriched event and yields its
//! alerts. Pure (the rule engine's state only); `netmon run` feeds it the enriched
//! stream, `netmon replay` a recorded one, and both get the same alerts.
use crate::{
    event::{Event, RuleStats},
    rules::{Engine, ProcessResolver, RulesConfig},
};

pub struct Detector {
    engine: Engine,
}

impl Detector {
    /// `resolver` answers what an event does not say about its process (`exe`, user
    /// name): the pipeline's process cache live, [`crate::rules::NoResolver`] offline.
    pub fn new(cfg: &RulesConfig, resolver: Box<dyn ProcessResolver>) -> Detector {
        Detector {
            engine: Engine::new(cfg, resolver),
        }
    }

    /// Appends the alerts `event` raises to `alerts`.
    pub fn check(&mut self, event: &Event, alerts: &mut Vec<Event>) {
        self.engine.on_event(event, alerts);
    }

    /// `stats.rules`, when any rule is enabled.
    pub fn stats(&self) -> Option<RuleStats> {
        (!self.engine.is_empty()).then(|| self.engine.stats.clone())
    }
}
