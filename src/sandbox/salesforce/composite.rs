//! `POST /services/data/vXX.X/composite`: a series of REST subrequests in one call, answered
//! `{"compositeResponse": [{"body", "httpHeaders", "httpStatusCode", "referenceId"}, ...]}`
//! in the order sent, counted once against the daily limit (by `gate`, as kind
//! `composite`). Its use here: a SOQL statement too long for a `GET /query?q=` URL (the
//! front end refuses URIs over 16,384 bytes, see `gate`) travels in a subrequest's `url`
//! inside the body, where only the SOQL limits of [`soql`](super::soql) apply.
//!
//! # Subrequests served
//! Each subrequest runs the same code as the plain REST call (the handlers of
//! [`query`](super::query) and [`sobjects`](super::sobjects), called directly, never
//! through `gate`): `GET` query, queryAll and query more (`/query/{locator}`); `GET`
//! limits, describe global, sObject info, describe, updated, deleted; `POST` sObject create;
//! `GET`/`PATCH`/`DELETE` sObject rows; `GET`/`PATCH` rows by external id; sObject
//! Collections (create, update, upsert, delete). Any other `/services/data/` resource
//! (Bulk API 2.0 jobs, versions, composite itself, unknown paths) answers that subrequest
//! 404 `NOT_FOUND`; a resource served with another method answers 405 `METHOD_NOT_ALLOWED`.
//! Only `Sforce-Query-Options` of a subrequest's `httpHeaders` is read (page size).
//! A 201 that created a row carries `Location` in `httpHeaders`, as the vendor's example.
//!
//! # Limits and refusals (vendor facts; the unverified ones say so)
//! - At most [`MAX_SUBREQUESTS`] subrequests, of which at most [`MAX_QUERY_OPERATIONS`] are
//!   query operations or sObject Collections. More subrequests answer the vendor's
//!   observed envelope: HTTP 200 with one result `{"body": [{"errorCode":
//!   "LIMIT_EXCEEDED", "message": "The request can’t contain more than 25 operations."}],
//!   "httpHeaders": {}, "httpStatusCode": 400, "referenceId": null}` (seen in a production
//!   log; the top-level status is not in it and 200 is our reading). Too many query
//!   operations answer the same shape with a message of ours (UNVERIFIED).
//! - A body that is not JSON: 400 `JSON_PARSER_ERROR`. A request the vendor would fail
//!   while deserializing it (no `compositeRequest` array, a subrequest without `method`
//!   among `GET POST PATCH DELETE`, without a `/services/data/` `url`, without a
//!   `referenceId` of letters, digits and underscores, a duplicate `referenceId`, or
//!   `httpHeaders` naming `Accept`, `Authorization` or `Content-Type`): 400 at the top
//!   level with `INVALID_INPUT` and a message naming the subrequest. The docs say 400; the
//!   errorCode is UNVERIFIED.
//! - `@{referenceId.field}` references (`.field` and `[n]` steps) in a `url` or in the
//!   string values of a `body` are replaced by the value in an earlier subrequest's
//!   response body. A subrequest whose reference names no earlier subrequest, points at
//!   a failed one, or finds no value is not run and answers 400 `PROCESSING_HALTED` with
//!   a message saying which (the vendor's wording for these is UNVERIFIED).
//! - `allOrNone: true`: on the first failed subrequest (a status outside 2xx) the rest are
//!   not run, and every subrequest but the failed one answers 400 `PROCESSING_HALTED`
//!   ("The transaction was rolled back since another operation in the same transaction
//!   failed."). The sandbox cannot roll writes back, so an `allOrNone: true` request with
//!   a subrequest other than `GET` is refused whole: 400 `FUNCTIONALITY_NOT_ENABLED` with
//!   a message saying so. `collateSubrequests` is accepted and ignored (subrequests always
//!   run in order).
//!
//! It must not reach `gate` for subrequests (no per-subrequest counting or logging) and
//! must not share code with `src/connectors` or `src/engine`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::oauth::percent_decode;
use super::schema::SCHEMA;
use super::{Reply, Salesforce, api_version, classify, error, json_body, not_allowed, not_found};
use super::{query, sobjects};

/// Subrequests one Composite request may hold.
pub const MAX_SUBREQUESTS: usize = 25;

/// Of those, how many may be query operations (query, queryAll, query more) or sObject
/// Collections.
pub const MAX_QUERY_OPERATIONS: usize = 5;

/// The message the vendor sends when a failed subrequest halts an `allOrNone` request.
const ROLLED_BACK: &str =
    "The transaction was rolled back since another operation in the same transaction failed.";

/// One validated subrequest.
struct Subrequest {
    method: Method,
    url: String,
    reference_id: String,
    /// Only the headers a subresource reads (the others are accepted and ignored).
    headers: HeaderMap,
    body: Option<Value>,
    /// The request kind the plain REST call would have (see `classify`).
    kind: &'static str,
}

/// What one subrequest answered.
struct Outcome {
    status: u16,
    headers: Map<String, Value>,
    body: Value,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn halted(message: &str) -> Outcome {
        Outcome {
            status: 400,
            headers: Map::new(),
            body: json!([{"errorCode": "PROCESSING_HALTED", "message": message}]),
        }
    }
}

pub(crate) async fn composite(
    State(sf): State<Salesforce>,
    Path(version): Path<String>,
    body: bytes::Bytes,
) -> Reply {
    api_version(&version)?;
    let request = json_body(&body)?;
    let Some(list) = request.get("compositeRequest").and_then(Value::as_array) else {
        return Err(invalid(
            "The request body needs a compositeRequest array of subrequests",
        ));
    };
    if list.len() > MAX_SUBREQUESTS {
        return Ok(limit_exceeded(&format!(
            "The request can’t contain more than {MAX_SUBREQUESTS} operations."
        )));
    }
    let all_or_none = flag(&request, "allOrNone")?;
    flag(&request, "collateSubrequests")?;
    let subrequests = list
        .iter()
        .enumerate()
        .map(|(i, s)| subrequest(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = subrequests
        .iter()
        .find(|s| !seen.insert(s.reference_id.as_str()))
    {
        return Err(invalid(&format!(
            "Duplicate referenceId '{}': each subrequest needs its own",
            dup.reference_id
        )));
    }
    let queries = subrequests
        .iter()
        .filter(|s| is_query_operation(s.kind))
        .count();
    if queries > MAX_QUERY_OPERATIONS {
        return Ok(limit_exceeded(&format!(
            "The request can’t contain more than {MAX_QUERY_OPERATIONS} query or sObject Collections operations; it has {queries}."
        )));
    }
    if all_or_none && let Some(write) = subrequests.iter().find(|s| s.method != Method::GET) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "FUNCTIONALITY_NOT_ENABLED",
            &format!(
                "The sandbox cannot roll back writes, so an allOrNone=true composite request may hold only GET subrequests; subrequest '{}' is a {}. Send allOrNone=false or send the writes on their own.",
                write.reference_id, write.method
            ),
        ));
    }

    let mut outcomes: Vec<Outcome> = Vec::with_capacity(subrequests.len());
    let mut earlier: HashMap<&str, usize> = HashMap::new();
    let mut halted_at = None;
    for (i, sub) in subrequests.iter().enumerate() {
        let outcome = match resolve(sub, &earlier, &outcomes) {
            Ok((url, body)) => run(&sf, sub, &url, body).await,
            Err(halted) => halted,
        };
        let failed = !outcome.succeeded();
        outcomes.push(outcome);
        earlier.insert(&sub.reference_id, i);
        if all_or_none && failed {
            halted_at = Some(i);
            break;
        }
    }
    let entries: Vec<Value> = subrequests
        .iter()
        .enumerate()
        .map(|(i, sub)| {
            let halted;
            let outcome = match halted_at {
                Some(failed) if failed != i => {
                    halted = Outcome::halted(ROLLED_BACK);
                    &halted
                }
                _ => &outcomes[i],
            };
            json!({
                "body": outcome.body,
                "httpHeaders": outcome.headers,
                "httpStatusCode": outcome.status,
                "referenceId": sub.reference_id,
            })
        })
        .collect();
    Ok(axum::Json(json!({"compositeResponse": entries})).into_response())
}

/// A top-level refusal of a request the vendor could not deserialize.
fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_INPUT", message)
}

/// The vendor's answer to a request over a subrequest limit: one result, no referenceId.
fn limit_exceeded(message: &str) -> Response {
    axum::Json(json!({"compositeResponse": [{
        "body": [{"errorCode": "LIMIT_EXCEEDED", "message": message}],
        "httpHeaders": {},
        "httpStatusCode": 400,
        "referenceId": null,
    }]}))
    .into_response()
}

/// An optional boolean of the request body (false when absent).
fn flag(request: &Value, name: &str) -> Result<bool, Response> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(invalid(&format!(
            "{name} must be true or false, not {other}"
        ))),
    }
}

fn is_query_operation(kind: &str) -> bool {
    matches!(
        kind,
        "query"
            | "query_all"
            | "query_more"
            | "composite_create"
            | "composite_update"
            | "composite_upsert"
            | "composite_delete"
    )
}

/// Validates subrequest `i` of `compositeRequest`.
fn subrequest(i: usize, value: &Value) -> Result<Subrequest, Response> {
    let text = |key: &str| value.get(key).and_then(Value::as_str);
    let reference_id = match text("referenceId") {
        Some(r) if !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            r.to_string()
        }
        Some(r) => {
            return Err(invalid(&format!(
                "Subrequest {i}: referenceId '{r}' may hold only letters, digits and underscores"
            )));
        }
        None => {
            return Err(invalid(&format!("Subrequest {i}: referenceId is required")));
        }
    };
    let method = match text("method") {
        Some(m @ ("GET" | "POST" | "PATCH" | "DELETE")) => {
            Method::from_bytes(m.as_bytes()).expect("an HTTP method name")
        }
        other => {
            return Err(invalid(&format!(
                "Subrequest '{reference_id}': method must be one of GET, POST, PATCH, DELETE (case-sensitive), not {}",
                other.map_or("nothing".to_string(), |m| format!("'{m}'"))
            )));
        }
    };
    let Some(url) = text("url").filter(|u| u.starts_with("/services/data/")) else {
        return Err(invalid(&format!(
            "Subrequest '{reference_id}': url must be a path starting with /services/data/"
        )));
    };
    let mut headers = HeaderMap::new();
    match value.get("httpHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, v) in map {
                if ["accept", "authorization", "content-type"]
                    .contains(&name.to_ascii_lowercase().as_str())
                {
                    return Err(invalid(&format!(
                        "Subrequest '{reference_id}': httpHeaders may not set {name}; subrequests take it from the composite request"
                    )));
                }
                let header = v
                    .as_str()
                    .and_then(|v| HeaderValue::from_str(v).ok())
                    .zip(HeaderName::from_bytes(name.as_bytes()).ok());
                let Some((v, name)) = header else {
                    return Err(invalid(&format!(
                        "Subrequest '{reference_id}': httpHeaders {name} must be a valid header with a string value"
                    )));
                };
                headers.insert(name, v);
            }
        }
        Some(_) => {
            return Err(invalid(&format!(
                "Subrequest '{reference_id}': httpHeaders must be an object of header names to string values"
            )));
        }
    }
    let path = url.split('?').next().unwrap_or(url);
    Ok(Subrequest {
        kind: classify(&method, path),
        method,
        url: url.to_string(),
        reference_id,
        headers,
        body: value.get("body").cloned(),
    })
}

/// The subrequest's `url` and `body` with every `@{referenceId.path}` replaced, or the
/// outcome of a subrequest that cannot run.
fn resolve(
    sub: &Subrequest,
    earlier: &HashMap<&str, usize>,
    outcomes: &[Outcome],
) -> Result<(String, Option<Value>), Outcome> {
    let lookup = |expression: &str| -> Result<String, Outcome> {
        let (reference, path) = split_reference(expression);
        let Some(&index) = earlier.get(reference) else {
            return Err(Outcome::halted(&format!(
                "Invalid reference specified. @{{{expression}}}: '{reference}' is not the referenceId of an earlier subrequest."
            )));
        };
        let outcome = &outcomes[index];
        if !outcome.succeeded() {
            return Err(Outcome::halted(&format!(
                "Not run: it references subrequest '{reference}', which failed with {}.",
                outcome.status
            )));
        }
        match follow(&outcome.body, path) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
            _ => Err(Outcome::halted(&format!(
                "Invalid reference specified. No value for {expression} found in {reference}."
            ))),
        }
    };
    let url = substitute(&sub.url, &lookup)?;
    let body = match &sub.body {
        Some(b) => Some(substitute_json(b, &lookup)?),
        None => None,
    };
    Ok((url, body))
}

/// Replaces each `@{...}` in `text` by what `lookup` gives for its expression.
fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Result<String, Outcome>,
) -> Result<String, Outcome> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&lookup(&rest[start + 2..start + 2 + len])?);
        rest = &rest[start + 2 + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn substitute_json(
    value: &Value,
    lookup: &dyn Fn(&str) -> Result<String, Outcome>,
) -> Result<Value, Outcome> {
    Ok(match value {
        Value::String(s) if s.contains("@{") => Value::String(substitute(s, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute_json(v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute_json(v, lookup)?)))
                .collect::<Result<_, Outcome>>()?,
        ),
        other => other.clone(),
    })
}

/// `ref.a.b[0]` -> (`ref`, `.a.b[0]`).
fn split_reference(expression: &str) -> (&str, &str) {
    let end = expression.find(['.', '[']).unwrap_or(expression.len());
    expression.split_at(end)
}

/// Follows `.field` and `[n]` steps into a response body.
fn follow<'a>(mut value: &'a Value, mut path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return None;
    }
    while !path.is_empty() {
        if let Some(after) = path.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            value = value.get(&after[..end])?;
            path = &after[end..];
        } else if let Some(after) = path.strip_prefix('[') {
            let end = after.find(']')?;
            value = value.get(after[..end].parse::<usize>().ok()?)?;
            path = &after[end + 1..];
        } else {
            return None;
        }
    }
    Some(value)
}

/// Runs one subrequest with its references resolved.
async fn run(sf: &Salesforce, sub: &Subrequest, url: &str, body: Option<Value>) -> Outcome {
    let (path, query_string) = url.split_once('?').unwrap_or((url, ""));
    // services / data / vXX.X / rest...
    let segments: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(decode_segment)
        .collect();
    let version = segments.get(2).cloned().unwrap_or_default();
    let rest = segments.get(3..).unwrap_or_default();
    let at = |i: usize| rest.get(i).cloned().unwrap_or_default();
    let body = bytes::Bytes::from(body.map_or_else(Vec::new, |b| {
        serde_json::to_vec(&b).expect("a JSON value serializes")
    }));
    let state = || State(sf.clone());
    let get_only = matches!(
        sub.kind,
        "limits"
            | "query"
            | "query_all"
            | "query_more"
            | "describe_global"
            | "sobject_info"
            | "describe"
            | "updated"
            | "deleted"
    );
    let reply: Reply = if get_only && sub.method != Method::GET {
        Err(not_allowed(&sub.method))
    } else {
        match sub.kind {
            "query" | "query_all" => query::run(
                sf,
                &version,
                query_param(query_string, "q"),
                &sub.headers,
                sub.kind == "query_all",
            ),
            "query_more" => query::more(sf, &version, &at(1)),
            "limits" => sobjects::limits(state(), Path(version.clone())).await,
            "describe_global" => sobjects::describe_global(Path(version.clone())).await,
            "sobject_info" => sobjects::sobject_info(Path((version.clone(), at(1)))).await,
            "describe" => sobjects::describe(Path((version.clone(), at(1)))).await,
            "sobject_create" => {
                sobjects::create(state(), Path((version.clone(), at(1))), body).await
            }
            "updated" => match params(query_string) {
                Ok(p) => sobjects::updated(state(), Path((version.clone(), at(1))), p).await,
                Err(e) => Err(e),
            },
            "deleted" => match params(query_string) {
                Ok(p) => sobjects::deleted(state(), Path((version.clone(), at(1))), p).await,
                Err(e) => Err(e),
            },
            "sobject_get" => match params(query_string) {
                Ok(p) => {
                    sobjects::get_record(state(), Path((version.clone(), at(1), at(2))), p).await
                }
                Err(e) => Err(e),
            },
            "sobject_update" => {
                sobjects::update(state(), Path((version.clone(), at(1), at(2))), body).await
            }
            "sobject_delete" => {
                sobjects::delete(state(), Path((version.clone(), at(1), at(2)))).await
            }
            "sobject_get_by_external" => {
                sobjects::get_by_external(state(), Path((version.clone(), at(1), at(2), at(3))))
                    .await
            }
            "sobject_upsert" => {
                sobjects::upsert(state(), Path((version.clone(), at(1), at(2), at(3))), body).await
            }
            "composite_create" => {
                sobjects::collection_create(state(), Path(version.clone()), None, body).await
            }
            "composite_update" => {
                sobjects::collection_update(state(), Path(version.clone()), None, body).await
            }
            "composite_upsert" => {
                sobjects::collection_upsert(
                    state(),
                    Path((version.clone(), at(2), at(3))),
                    None,
                    body,
                )
                .await
            }
            "composite_delete" => match params(query_string) {
                Ok(p) => sobjects::collection_delete(state(), Path(version.clone()), p).await,
                Err(e) => Err(e),
            },
            _ => Err(not_found()),
        }
    };
    let response = reply.unwrap_or_else(|refused| refused);
    outcome(response, sub.kind, &version, &at(1)).await
}

/// A subrequest's answer as a composite result: status, headers (`Location` for a created
/// row) and the JSON body (`null` when empty).
async fn outcome(response: Response, kind: &str, version: &str, object: &str) -> Outcome {
    let status = response.status().as_u16();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        if name != "content-type"
            && name != "content-length"
            && let Ok(v) = value.to_str()
        {
            headers.insert(name.to_string(), json!(v));
        }
    }
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status == 201
        && matches!(kind, "sobject_create" | "sobject_upsert")
        && let Some(id) = body.get("id").and_then(Value::as_str)
    {
        let object = SCHEMA.object(object).map_or(object, |o| o.name);
        headers.insert(
            "Location".into(),
            json!(format!("/services/data/{version}/sobjects/{object}/{id}")),
        );
    }
    Outcome {
        status,
        headers,
        body,
    }
}

/// A path segment with its percent-escapes decoded (`+` stays a plus in a path).
fn decode_segment(segment: &str) -> String {
    percent_decode(&segment.replace('+', "%2B"))
}

/// The decoded value of one parameter of a form-encoded query string.
fn query_param(query_string: &str, name: &str) -> Option<String> {
    query_string.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// A handler's query parameters, decoded as axum would decode them for the plain call.
fn params<T: DeserializeOwned>(query_string: &str) -> Result<Query<T>, Response> {
    let uri: Uri = format!("/?{query_string}").parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "The subrequest's query string is not a valid URI query",
        )
    })?;
    Query::try_from_uri(&uri).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            &format!("The subrequest's query string does not fit this resource: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup_in(
        bodies: Vec<(&'static str, u16, Value)>,
    ) -> impl Fn(&str) -> Result<String, Outcome> {
        move |expression| {
            let (reference, path) = split_reference(expression);
            let (_, status, body) = bodies
                .iter()
                .find(|(r, _, _)| *r == reference)
                .ok_or_else(|| Outcome::halted("unknown"))?;
            if !(200..300).contains(status) {
                return Err(Outcome::halted("failed"));
            }
            match follow(body, path) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Ok(v.to_string()),
                None => Err(Outcome::halted("no value")),
            }
        }
    }

    #[test]
    fn references_follow_fields_and_indexes() {
        let body = json!({"id": "001x", "records": [{"Id": "00Qa", "Owner": {"Name": "Ann"}}], "totalSize": 1});
        let lookup = lookup_in(vec![("refA", 200, body)]);
        assert_eq!(
            substitute(
                "/sobjects/Lead/@{refA.records[0].Id}?x=@{refA.totalSize}",
                &lookup
            )
            .ok()
            .unwrap(),
            "/sobjects/Lead/00Qa?x=1"
        );
        assert_eq!(
            substitute_json(
                &json!({"WhoId": "@{refA.id}", "n": [ "@{refA.records[0].Owner.Name}!" ]}),
                &lookup
            )
            .ok()
            .unwrap(),
            json!({"WhoId": "001x", "n": ["Ann!"]})
        );
        assert!(substitute("@{refA.nothing}", &lookup).is_err());
        assert!(substitute("@{refA}", &lookup).is_err());
        assert!(substitute("@{other.id}", &lookup).is_err());
        // An unclosed reference is left as text.
        assert_eq!(substitute("a@{b", &lookup).ok().unwrap(), "a@{b");
    }

    #[test]
    fn query_parameters_and_path_segments_decode() {
        assert_eq!(
            query_param("x=1&q=SELECT+Id+FROM+Lead+WHERE+Name+%3D+%27a%2Bb%27", "q").as_deref(),
            Some("SELECT Id FROM Lead WHERE Name = 'a+b'")
        );
        assert_eq!(query_param("x=1", "q"), None);
        assert_eq!(decode_segment("a+b%20c"), "a+b c");
    }

    #[test]
    fn query_operations_are_the_ones_the_vendor_caps() {
        let v = "/services/data/v62.0";
        let kind = |m: Method, p: String| classify(&m, &p);
        assert!(is_query_operation(kind(Method::GET, format!("{v}/query/"))));
        assert!(is_query_operation(kind(
            Method::GET,
            format!("{v}/queryAll")
        )));
        assert!(is_query_operation(kind(
            Method::GET,
            format!("{v}/query/01gx-2000")
        )));
        assert!(is_query_operation(kind(
            Method::POST,
            format!("{v}/composite/sobjects")
        )));
        assert!(!is_query_operation(kind(
            Method::GET,
            format!("{v}/sobjects/Lead/00Qx")
        )));
        assert!(!is_query_operation(kind(
            Method::POST,
            format!("{v}/sobjects/Task")
        )));
    }
}
