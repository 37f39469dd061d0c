//! The Marketo response envelope (`requestId`, `success`, `result`, `errors`, `warnings`,
//! `nextPageToken`, `moreResult`) and the vendor's error codes, as quoted strings.
//!
//! Almost every Marketo error is HTTP 200 with `success: false`; this module must not invent
//! HTTP statuses for vendor codes. Only identity (401), bulk file downloads (404 plain text)
//! and transport limits (413) use other statuses, and those are built where they happen.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// A vendor error: a Marketo code (`"601"`, `"1003"`, ...) and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The message Marketo sends for a code when nobody gave a better one.
    pub fn standard(code: &str) -> Self {
        let message = match code {
            "601" => "Access token invalid",
            "602" => "Access token expired",
            "603" => "Access denied",
            "604" => "Request time-out",
            "605" => "HTTP Method not supported",
            "606" => "Max rate limit '100' exceeded with in '20' secs",
            "607" => "Daily quota reached",
            "608" => "API Temporarily Unavailable",
            "609" => "Invalid JSON",
            "610" => "Requested resource not found",
            "611" => "System error",
            "612" => "Invalid Content Type",
            "615" => "Concurrent access limit '10' reached",
            "701" => "Field cannot be blank",
            "1003" => "Invalid data",
            "1004" => "Lead not found",
            "1005" => "Lead already exists",
            "1006" => "Field not found",
            "1029" => "Too many jobs (10) in queue",
            "1035" => "Unsupported filter type for target subscription",
            _ => "Error",
        };
        Self::new(code, message)
    }
}

/// What a route handler answers: envelope fields besides `requestId`, `success`, `errors`
/// and `warnings` (which the pipeline adds), or a raw response (bulk files).
pub enum Reply {
    Envelope(Map<String, Value>),
    Raw(Response),
}

impl Reply {
    /// An envelope with `result` only.
    pub fn result(result: Vec<Value>) -> Self {
        let mut body = Map::new();
        body.insert("result".into(), Value::Array(result));
        Reply::Envelope(body)
    }
}

/// Makes Marketo-shaped request ids (`<hex>#<hex>`).
#[derive(Debug, Default)]
pub struct RequestIds {
    next: AtomicU64,
}

impl RequestIds {
    pub fn next(&self, now_ms: i64) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 0x1_0000;
        format!("{n:x}#{now_ms:x}")
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

/// A successful envelope.
pub fn success(request_id: String, mut fields: Map<String, Value>) -> Response {
    fields.insert("requestId".into(), Value::String(request_id));
    fields.insert("success".into(), Value::Bool(true));
    fields.entry("errors").or_insert_with(|| json!([]));
    fields.entry("warnings").or_insert_with(|| json!([]));
    json_response(StatusCode::OK, &Value::Object(fields))
}

/// A failed envelope: HTTP 200, `success: false`, one error.
pub fn failure(request_id: String, error: &ApiError) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "requestId": request_id,
            "success": false,
            "errors": [{"code": error.code, "message": error.message}],
            "warnings": [],
        }),
    )
}

/// Any JSON body with a status (identity answers, fault bodies).
pub fn plain_json(status: StatusCode, body: &Value) -> Response {
    json_response(status, body)
}
