//! The rules in use ([`RoutingTable`]) and the file they come from (`ROUTING_RULES_PATH`): read
//! and checked at start, read again when its modification time changes, a bad file refused while
//! the rules in use keep serving. The only part of routing that does IO.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;

use super::{Rules, RulesError};

/// Largest rule file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The rules in use, and the file they come from (reloaded when it changes).
#[derive(Debug)]
pub struct RoutingTable {
    rules: RwLock<Arc<Rules>>,
    file: Option<PathBuf>,
    departments: Vec<String>,
    modified: parking_lot::Mutex<Option<SystemTime>>,
}

impl RoutingTable {
    /// The built-in rules for `departments`, or those of `file` (which must be valid now).
    pub fn new(
        file: Option<PathBuf>,
        departments: Vec<String>,
    ) -> Result<RoutingTable, RulesError> {
        let table = RoutingTable {
            rules: RwLock::new(Arc::new(Rules::builtin(&departments))),
            file,
            departments,
            modified: parking_lot::Mutex::new(None),
        };
        if let Some(path) = &table.file {
            let (rules, modified) = read(path, &table.departments)?;
            *table.rules.write() = Arc::new(rules);
            *table.modified.lock() = modified;
        }
        Ok(table)
    }

    /// The rules in use now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().clone()
    }

    /// Reads the file again if its modification time changed: `Ok(true)` when new rules are in
    /// use, `Ok(false)` when nothing changed, the error (old rules kept) for a bad file.
    pub fn reload(&self) -> Result<bool, RulesError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == *self.modified.lock() {
            return Ok(false);
        }
        // Remembered even when the file is bad, so it is reported once, not every poll.
        *self.modified.lock() = modified;
        let (rules, _) = read(path, &self.departments)?;
        *self.rules.write() = Arc::new(rules);
        Ok(true)
    }

    /// Polls the file every `interval` until `self` is dropped elsewhere, logging reloads.
    pub fn spawn_watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let table = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(table) = table.upgrade() else { return };
                match table.reload() {
                    Ok(true) => {
                        tracing::info!(rules = table.rules().len(), "routing rules reloaded")
                    }
                    Ok(false) => {}
                    Err(error) => tracing::error!(
                        %error,
                        "routing rules file refused; the previous rules keep serving"
                    ),
                }
            }
        })
    }
}

/// Reads and parses a rule file.
fn read(path: &Path, departments: &[String]) -> Result<(Rules, Option<SystemTime>), RulesError> {
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| RulesError {
        path: shown.clone(),
        line: 0,
        message: format!("cannot read ROUTING_RULES_PATH: {e}"),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(RulesError {
            path: shown,
            line: 0,
            message: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    Ok((
        Rules::parse(&shown, &text, departments)?,
        meta.modified().ok(),
    ))
}
