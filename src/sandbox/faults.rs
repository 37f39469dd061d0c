//! Fault rules: the deterministic failures the sandbox injects so that tests can show each
//! reaction of the connectors (retry, renew token, back off, fail the record, stop).
//!
//! A rule matches a request by system, method, path fragment and request kind (the same
//! kind names the request log counts); it lets the first `skip` matches pass and then fires
//! `times` times (forever when absent). Matching is counted, never random, so a test that
//! says "the third activities call gets a 606" gets exactly that.
//!
//! A faults file (`mqlsync sandbox --faults FILE`) is a JSON array of rules, e.g.
//! `[{"system": "marketo", "kind": "activities", "skip": 2, "times": 1,
//!    "action": {"type": "vendor_error", "code": "606"}}]`.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Which emulator a rule or a logged request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    Salesforce,
    Marketo,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Salesforce => "salesforce",
            System::Marketo => "marketo",
        }
    }
}

/// One fault rule. See the module docs for the matching order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub system: System,
    /// HTTP method, upper case; any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// A fragment the request path must contain; any when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// The request kind as the request log names it (`query`, `activities`, ...); any when absent.
    #[serde(default)]
    pub kind: Option<String>,
    /// How many matching requests pass untouched before the rule fires.
    #[serde(default)]
    pub skip: u32,
    /// How many times the rule fires; for ever when absent.
    #[serde(default)]
    pub times: Option<u32>,
    pub action: FaultAction,
}

/// What happens to a request a rule fires on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// Answer with this HTTP status and body (a plain vendor-shaped error when absent).
    Status {
        status: u16,
        #[serde(default)]
        body: Option<serde_json::Value>,
    },
    /// Answer with the vendor's own error for this code: a Marketo code such as `606`, or a
    /// Salesforce errorCode such as `REQUEST_LIMIT_EXCEEDED`, in that vendor's envelope.
    VendorError {
        code: String,
        #[serde(default)]
        message: Option<String>,
    },
    /// Answer normally, after this delay.
    Delay { millis: u64 },
    /// Close the connection without an answer.
    Drop,
    /// Serve the request, then close the connection instead of answering: the write is done
    /// and the client cannot know it (a timeout after the commit, the classic source of
    /// duplicate creates).
    LoseResponse,
    /// Invalidate every access token issued so far, then serve the request (so it fails
    /// with the vendor's expired-session error).
    ExpireTokens,
    /// In a collection or batch write, fail the record at this index with this error code.
    FailRecord {
        index: usize,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    /// Answer 200 with a body that is not valid JSON.
    MalformedJson,
}

/// A request as the fault rules see it.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub system: System,
    pub method: &'a str,
    pub path: &'a str,
    pub kind: &'a str,
}

#[derive(Debug)]
struct ArmedRule {
    rule: FaultRule,
    matched: u32,
    fired: u32,
}

/// The set of armed rules, shared by both servers.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<ArmedRule>>,
}

/// A faults file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FaultsFileError {
    #[error("cannot read faults file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "faults file {path} is not a JSON array of fault rules: {source} (see `src/sandbox/faults.rs` for the format)"
    )]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl Faults {
    pub fn new(rules: Vec<FaultRule>) -> Self {
        let faults = Self::default();
        faults.replace(rules);
        faults
    }

    /// Reads a JSON array of rules.
    pub fn load(path: &Path) -> Result<Vec<FaultRule>, FaultsFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FaultsFileError::Read {
            path: shown.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| FaultsFileError::Parse {
            path: shown,
            source,
        })
    }

    /// Replaces every rule (and forgets their counts).
    pub fn replace(&self, rules: Vec<FaultRule>) {
        *self.rules.lock().expect("faults lock") = rules
            .into_iter()
            .map(|rule| ArmedRule {
                rule,
                matched: 0,
                fired: 0,
            })
            .collect();
    }

    /// Arms one more rule after the existing ones.
    pub fn add(&self, rule: FaultRule) {
        self.rules.lock().expect("faults lock").push(ArmedRule {
            rule,
            matched: 0,
            fired: 0,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().expect("faults lock").clear();
    }

    /// The rules as they stand, for the admin API.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.rules
            .lock()
            .expect("faults lock")
            .iter()
            .map(|armed| armed.rule.clone())
            .collect()
    }

    /// How many times each rule has fired so far, in the order of [`Faults::rules`]: a test
    /// knows a delayed request has arrived before its answer is logged.
    pub fn fired(&self) -> Vec<u32> {
        self.rules
            .lock()
            .expect("faults lock")
            .iter()
            .map(|armed| armed.fired)
            .collect()
    }

    /// Counts this request against every matching rule and returns the action of the first
    /// rule that fires, if any. Call it once per request.
    pub fn check(&self, request: RequestFacts<'_>) -> Option<FaultAction> {
        let mut rules = self.rules.lock().expect("faults lock");
        let mut action = None;
        for armed in rules.iter_mut() {
            if !armed.rule.matches(&request) {
                continue;
            }
            armed.matched += 1;
            let exhausted = armed.rule.times.is_some_and(|times| armed.fired >= times);
            if action.is_none() && armed.matched > armed.rule.skip && !exhausted {
                armed.fired += 1;
                action = Some(armed.rule.action.clone());
            }
        }
        action
    }
}

impl FaultRule {
    fn matches(&self, request: &RequestFacts<'_>) -> bool {
        self.system == request.system
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(request.method))
            && self
                .path
                .as_deref()
                .is_none_or(|p| request.path.contains(p))
            && self.kind.as_deref().is_none_or(|k| k == request.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: &str) -> RequestFacts<'_> {
        RequestFacts {
            system: System::Marketo,
            method: "GET",
            path: "/rest/v1/activities.json",
            kind,
        }
    }

    #[test]
    fn a_rule_skips_then_fires_its_count_then_rests() {
        let rules: Vec<FaultRule> = serde_json::from_str(
            r#"[{"system": "marketo", "kind": "activities", "skip": 2, "times": 1,
                 "action": {"type": "vendor_error", "code": "606"}}]"#,
        )
        .unwrap();
        let faults = Faults::new(rules);
        let fired: Vec<bool> = (0..5)
            .map(|_| faults.check(facts("activities")).is_some())
            .collect();
        assert_eq!(fired, [false, false, true, false, false]);
        assert_eq!(faults.check(facts("leads")), None);
    }

    #[test]
    fn unknown_keys_in_a_faults_file_are_refused() {
        let err = serde_json::from_str::<Vec<FaultRule>>(
            r#"[{"system": "marketo", "tiems": 1, "action": {"type": "drop"}}]"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tiems"), "{err}");
    }
}
