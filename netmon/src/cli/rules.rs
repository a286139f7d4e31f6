//! `netmon rules list` (the effective rules) and `netmon rules check FILE`.
use std::{fmt::Write as _, io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;

use super::{ConfigArgs, EXIT_ERROR};
use crate::{config, output::Format, rules};

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Print every rule with its state, severity, cooldown and settings, as configured.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// `text` for people, `json` (one object per rule per line) for tools.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Validate a configuration file. Errors name the file, line, key and what is
    /// expected; exit status 2 when the file is not valid.
    Check {
        /// The configuration file to check.
        file: PathBuf,
    },
}

pub fn rules(cmd: RulesCommand) -> Result<ExitCode> {
    match cmd {
        RulesCommand::List { config, format } => {
            let (cfg, file) = config::load(config.config.as_deref())?;
            let list = rules::describe(&cfg.rules);
            let mut out = String::new();
            match format {
                Format::Json => {
                    for r in &list {
                        out.push_str(&serde_json::to_string(r)?);
                        out.push('\n');
                    }
                }
                Format::Text => {
                    let source = file.map_or_else(
                        || "built-in defaults".to_owned(),
                        |f| f.display().to_string(),
                    );
                    let _ = writeln!(out, "# rules from {source}");
                    for r in &list {
                        let state = if r.enabled { "on" } else { "off" };
                        let _ = writeln!(
                            out,
                            "{:<22} {state:<3} {:<8} cooldown {} s",
                            r.rule, r.severity, r.cooldown_s
                        );
                        for (k, v) in &r.settings {
                            if v.is_null() || v.as_array().is_some_and(|a| a.is_empty()) {
                                continue;
                            }
                            if k == "allow"
                                && let Some(o) = v.as_object()
                            {
                                allow_text(o, &mut out);
                                continue;
                            }
                            let _ = writeln!(out, "    {k} = {v}");
                        }
                    }
                }
            }
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(out.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Check { file } => match config::load_file(&file) {
            Ok(cfg) => {
                let enabled = rules::describe(&cfg.rules)
                    .iter()
                    .filter(|r| r.enabled)
                    .count();
                let line = format!(
                    "{}: ok ({enabled} rules enabled, {} custom)\n",
                    file.display(),
                    cfg.rules.custom.len()
                );
                match std::io::stdout().lock().write_all(line.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        Err(anyhow::Error::new(e).context("cannot write to stdout"))
                    }
                    _ => Ok(ExitCode::SUCCESS),
                }
            }
            Err(e) => {
                crate::eline!("netmon: {e}");
                Ok(ExitCode::from(EXIT_ERROR))
            }
        },
    }
}

/// The non-empty lists of an allowlist, one line each; a process entry says whether it
/// is matched as a name (which anyone can give a program) or as a full path.
fn allow_text(allow: &serde_json::Map<String, serde_json::Value>, out: &mut String) {
    for (list, v) in allow {
        let Some(items) = v.as_array().filter(|a| !a.is_empty()) else {
            continue;
        };
        if list == "process" || list == "exe" {
            let _ = writeln!(out, "    allow.{list} =");
            for item in items {
                let text = item.as_str().unwrap_or_default();
                let form = if list == "exe" {
                    rules::matchers::EntryForm::Path
                } else {
                    rules::matchers::EntryForm::of(text)
                };
                let shown = crate::escape::for_terminal(text);
                let _ = writeln!(out, "        \"{shown}\" ({})", form.label());
            }
        } else {
            let _ = writeln!(out, "    allow.{list} = {v}");
        }
    }
}
