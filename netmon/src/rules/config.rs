//! `[rules]` of the configuration file, and the registry of built-in rules.
//!
//! Each built-in rule's table (`[rules.suspicious_port]` …) is defined in the rule's own
//! file beside the rule, with the [`RuleSpec`](super::rule::RuleSpec) that describes it;
//! this file only lists them ([`builtin_rules!`] below, one line per rule) and adds what is
//! common to all: the master switch, the default cooldown, custom rules. Arrows point one
//! way: this file imports the rule files, they never import it.
//!
//! Every table rejects unknown keys (a misspelt rule or key is an error naming the file
//! and line); defaults are the documented ones (`docs/config.md`).
use serde::{Deserialize, Serialize};

use super::{
    connections::{ExternalConnectionsConfig, HighConnectionCountConfig},
    custom::CustomRuleConfig,
    dns_tunnel::DnsTunnelingConfig,
    listeners::UnusualListenersConfig,
    ports::{PortRiskConfig, SuspiciousPortConfig},
    rule::{RuleSection, RuleSpec, check_cooldown},
};

/// Declares [`RulesConfig`] with one field per built-in rule, its `Default`, and the
/// registry ([`RulesConfig::builtin`]) in the order given, which is the order the
/// engine runs them and `netmon rules list` shows them.
macro_rules! builtin_rules {
    ($($(#[$doc:meta])* $section:ident: $table:ty,)*) => {
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct RulesConfig {
            /// Master switch: no rule runs when false.
            pub enabled: bool,
            /// Seconds during which the same condition does not alert again (per-rule
            /// override: `cooldown_s` in the rule's table).
            pub cooldown_s: u64,
            $($(#[$doc])* pub $section: $table,)*
            /// `[[rules.custom]]`.
            pub custom: Vec<CustomRuleConfig>,
        }

        impl Default for RulesConfig {
            fn default() -> Self {
                RulesConfig {
                    enabled: true,
                    cooldown_s: 300,
                    $($section: Default::default(),)*
                    custom: Vec::new(),
                }
            }
        }

        impl RulesConfig {
            /// The registry: every built-in rule's table, in order.
            pub fn builtin(&self) -> impl Iterator<Item = &dyn RuleSection> {
                [$(&self.$section as &dyn RuleSection,)*].into_iter()
            }

            /// As [`RulesConfig::builtin`], to change the tables.
            fn builtin_mut(&mut self) -> impl Iterator<Item = &mut dyn RuleSection> {
                [$(&mut self.$section as &mut dyn RuleSection,)*].into_iter()
            }
        }
    };
}

builtin_rules! {
    /// `[rules.suspicious_port]`: `SUSPICIOUS_PORT`, in `ports.rs`.
    suspicious_port: SuspiciousPortConfig,
    /// `[rules.high_connection_count]`: `HIGH_CONNECTION_COUNT`, in `connections.rs`.
    high_connection_count: HighConnectionCountConfig,
    /// `[rules.external_connections]`: `EXTERNAL_CONNECTIONS`, in `connections.rs`.
    external_connections: ExternalConnectionsConfig,
    /// `[rules.unusual_listeners]`: `UNUSUAL_LISTENERS`, in `listeners.rs`.
    unusual_listeners: UnusualListenersConfig,
    /// `[rules.dns_tunneling]`: `DNS_TUNNELING`, in `dns_tunnel.rs`.
    dns_tunneling: DnsTunnelingConfig,
    /// `[rules.port_risk]`: `PORT_RISK`, in `ports.rs`.
    port_risk: PortRiskConfig,
}

/// The built-in rules' descriptions, in registry order.
pub fn builtin_specs() -> Vec<&'static RuleSpec> {
    RulesConfig::default().builtin().map(|s| s.spec()).collect()
}

/// The built-in rule named `name`.
pub fn spec_of(name: &str) -> Option<&'static RuleSpec> {
    builtin_specs().into_iter().find(|s| s.name == name)
}

impl RulesConfig {
    /// Checks what serde cannot: returns the dotted key and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut seen: Vec<&str> = Vec::new();
        for (i, c) in self.custom.iter().enumerate() {
            let key = format!("rules.custom[{i}].name");
            if c.name.is_empty() || c.name.len() > 64 {
                return Err((key, "expected a name of 1 to 64 characters".into()));
            }
            if spec_of(&c.name).is_some() {
                return Err((
                    key,
                    format!("`{}` is a built-in rule: expected another name", c.name),
                ));
            }
            if seen.contains(&c.name.as_str()) {
                return Err((
                    key,
                    format!("a custom rule named `{}` already exists", c.name),
                ));
            }
            seen.push(&c.name);
        }
        check_cooldown("rules.cooldown_s", Some(self.cooldown_s))?;
        for (i, c) in self.custom.iter().enumerate() {
            check_cooldown(&format!("rules.custom[{i}].cooldown_s"), c.cooldown_s)?;
        }
        for s in self.builtin() {
            let section = s.spec().section;
            check_cooldown(&format!("rules.{section}.cooldown_s"), s.cooldown_s())?;
            s.validate()
                .map_err(|(key, why)| (format!("rules.{section}.{key}"), why))?;
        }
        Ok(())
    }

    /// Moves deprecated keys to their current form (`window_s = 60` becomes
    /// `window = "60s"`); returns, for each, the dotted key and a warning saying what to
    /// write instead.
    pub fn upgrade(&mut self) -> Vec<(String, String)> {
        let mut warnings = Vec::new();
        for s in self.builtin_mut() {
            let section = s.spec().section;
            for (key, why) in s.upgrade() {
                warnings.push((format!("rules.{section}.{key}"), why));
            }
        }
        warnings
    }
}
