//! Webhook calls on score changes, form fills and program status changes, as a trigger
//! campaign's "Call Webhook" step makes them: the configured template and headers with
//! `{{lead.<Display Name>}}` (or REST name), `{{campaign.id}}`, `{{campaign.name}}`,
//! `{{system.dateTime}}` and `{{system.munchkinId}}` tokens replaced; string tokens are JSON-quoted automatically, as Marketo's JSON token
//! encoding does; header values take tokens too, unquoted. One POST per change, 30 s
//! timeout, no retries, at most 20 outstanding; outcomes are kept for the admin state. It must not block the request that caused the change.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::MarketoWebhook;
use super::leads::{FIELDS, Lead};

/// One webhook call as the sandbox made it.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookCall {
    pub lead_id: i64,
    pub body: String,
    /// HTTP status, or `None` when the call failed (timeout, refused).
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// Tokens a template may use, for one lead and campaign.
pub struct TokenContext<'a> {
    pub lead: &'a Lead,
    pub campaign: Option<(i64, String)>,
    pub now: Timestamp,
    pub munchkin_id: &'a str,
}

fn quoted(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Replaces every `{{...}}` token; unknown tokens become `null`, as empty tokens do.
/// With `quote` (the body's JSON token encoding) string values are JSON-quoted; without it
/// (headers) they are inserted as they are.
pub fn render(template: &str, ctx: &TokenContext<'_>, quote: bool) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let token = rest[open + 2..open + close].trim();
        let value = value_of(token, ctx);
        match serde_json::from_str::<Value>(&value) {
            Ok(Value::String(text)) if !quote => out.push_str(&text),
            _ => out.push_str(&value),
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

fn value_of(token: &str, ctx: &TokenContext<'_>) -> String {
    let (scope, name) = token.split_once('.').unwrap_or(("", token));
    match scope.to_ascii_lowercase().as_str() {
        "lead" => {
            let field = FIELDS.iter().find(|f| {
                f.display.eq_ignore_ascii_case(name) || f.name.eq_ignore_ascii_case(name)
            });
            match field {
                Some(f) if f.name == "id" => ctx.lead.id.to_string(),
                Some(f) => quoted(ctx.lead.get(f.name)),
                None => "null".into(),
            }
        }
        "campaign" => match (&ctx.campaign, name.to_ascii_lowercase().as_str()) {
            (Some((id, _)), "id") => id.to_string(),
            (Some((_, n)), "name") => quoted(&Value::String(n.clone())),
            _ => "null".into(),
        },
        "system" => match name.to_ascii_lowercase().as_str() {
            "datetime" => quoted(&Value::String(
                ctx.now.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            )),
            "munchkinid" => quoted(&Value::String(ctx.munchkin_id.into())),
            _ => "null".into(),
        },
        _ => "null".into(),
    }
}

/// At most this many webhook calls are outstanding at once; more wait, as Marketo's do.
pub const MAX_OUTSTANDING: usize = 20;

/// Sends one call in the background (when a tokio runtime is running) and records it.
pub fn fire(
    hook: &MarketoWebhook,
    lead_id: i64,
    body: String,
    headers: Vec<(String, String)>,
    outstanding: Arc<tokio::sync::Semaphore>,
    calls: Arc<Mutex<Vec<WebhookCall>>>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        calls.lock().expect("webhook calls lock").push(WebhookCall {
            lead_id,
            body,
            status: None,
            error: Some("no async runtime to send from".into()),
        });
        return;
    };
    let url = hook.url.clone();
    runtime.spawn(async move {
        let _permit = outstanding.acquire_owned().await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build();
        let result = match client {
            Ok(client) => {
                let mut request = client.post(&url).body(body.clone());
                for (k, v) in &headers {
                    request = request.header(k, v);
                }
                request.send().await.map(|r| r.status().as_u16())
            }
            Err(e) => Err(e),
        };
        let (status, error) = match result {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        tracing::debug!(lead_id, ?status, "sandbox marketo webhook call");
        calls.lock().expect("webhook calls lock").push(WebhookCall {
            lead_id,
            body,
            status,
            error,
        });
    });
}
