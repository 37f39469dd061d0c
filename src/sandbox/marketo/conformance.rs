//! Conformance with Adobe's own description of the API: every route in the served table
//! exists in `swagger-mapi.json` (or `swagger-identity.json`) with the same method and
//! parameter names, and a real answer of the sandbox on each carries the fields the
//! description marks required (the envelope and the records in `result`). The descriptions
//! are kept in `tests/reference/marketo/` (its README says where they come from).

use serde_json::{Value, json};

use super::routes::{Op, ROUTES};
use super::tests::{Harness, spawn};

fn spec(name: &str) -> Value {
    let path = format!(
        "{}/tests/reference/marketo/swagger-{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read Adobe's OpenAPI description at {path}: {e}; restore it from git (see tests/reference/marketo/README.md for its source)")
    });
    serde_json::from_str(&text).expect("the OpenAPI description is JSON")
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => &spec["definitions"][r.trim_start_matches("#/definitions/")],
        None => schema,
    }
}

/// Checks `value` has every field `schema` requires, and so on into `result` items.
fn check_required(
    spec: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    problems: &mut Vec<String>,
) {
    let schema = resolve(spec, schema);
    let Some(object) = value.as_object() else {
        return;
    };
    for field in schema["required"].as_array().into_iter().flatten() {
        let field = field.as_str().unwrap();
        if !object.contains_key(field) {
            problems.push(format!("{at}: missing required field '{field}'"));
        }
    }
    if let (Some(items), Some(values)) = (
        schema["properties"]["result"]["items"].as_object(),
        object.get("result").and_then(Value::as_array),
    ) {
        for (i, v) in values.iter().enumerate() {
            check_required(
                spec,
                &Value::Object(items.clone()),
                v,
                &format!("{at}.result[{i}]"),
                problems,
            );
        }
    }
}

#[test]
fn every_served_route_is_in_the_vendor_description_with_its_parameters() {
    let specs = [("mapi", spec("mapi")), ("identity", spec("identity"))];
    let mut problems = Vec::new();
    for route in ROUTES {
        let spec = &specs.iter().find(|(n, _)| *n == route.spec).unwrap().1;
        let Some(op) = spec["paths"][route.path][route.method.to_lowercase()].as_object() else {
            problems.push(format!(
                "{} {} is not in swagger-{}.json",
                route.method, route.path, route.spec
            ));
            continue;
        };
        let declared: Vec<(&str, bool, &str)> = op
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["required"].as_bool().unwrap_or(false),
                    p["in"].as_str().unwrap(),
                )
            })
            .collect();
        for name in route.params {
            if !declared.iter().any(|(n, _, _)| n == name) {
                problems.push(format!(
                    "{} {}: parameter '{name}' is not in the description",
                    route.method, route.path
                ));
            }
        }
        for (name, required, place) in &declared {
            if *required && *place != "body" && *place != "formData" && !route.params.contains(name)
            {
                problems.push(format!(
                    "{} {}: required parameter '{name}' is not read",
                    route.method, route.path
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A valid request for each route, answered by the sandbox.
async fn sample(
    h: &Harness,
    token: &str,
    route: &super::routes::Route,
    export: &mut Option<String>,
) -> Option<Value> {
    let target = if route.kind.starts_with("bulk_leads") {
        "leads"
    } else {
        "activities"
    };
    let body = if target == "leads" {
        json!({"format": "CSV", "fields": ["id", "email", "leadScore"],
               "filter": {"createdAt": {"startAt": "2026-10-05T00:00:00Z", "endAt": "2026-11-02T12:00:00Z"}}})
    } else {
        json!({"format": "CSV", "filter": {"createdAt": {"startAt": "2026-10-05T00:00:00Z", "endAt": "2026-11-02T12:00:00Z"}}})
    };
    let p = &h.world.people[0];
    let zero = "GIYDAOBNGEYS2MBWKQYDAORQGA5DAMBOGAYDAKZQGAYDALBQ";
    Some(match route.op {
        Op::Identity => {
            let url = format!(
                "{}{}?grant_type=client_credentials&client_id=sandbox-marketo-client&client_secret=sandbox-marketo-secret",
                h.base, route.path
            );
            let request = if route.method == "GET" {
                h.http.get(url)
            } else {
                h.http.post(url)
            };
            request.send().await.unwrap().json().await.unwrap()
        }
        Op::LeadsByFilter => {
            h.get(
                token,
                &format!(
                    "{}?filterType=email&filterValues={}&fields=leadScore",
                    route.path, p.email
                ),
            )
            .await
        }
        Op::LeadById => {
            h.get(
                token,
                &format!("/rest/v1/lead/{}.json?fields=email", p.map_id),
            )
            .await
        }
        Op::SyncLeads => {
            h.post(
                token,
                route.path,
                json!({"input": [{"email": p.email, "title": "CTO"}]}),
            )
            .await
        }
        Op::Describe | Op::Describe2 | Op::ActivityTypes | Op::Usage => {
            h.get(token, route.path).await
        }
        Op::PagingToken => {
            h.get(
                token,
                &format!("{}?sinceDatetime=2020-01-01T00:00:00Z", route.path),
            )
            .await
        }
        Op::Activities => {
            h.get(
                token,
                &format!(
                    "{}?nextPageToken={zero}&activityTypeIds=22,12&batchSize=5",
                    route.path
                ),
            )
            .await
        }
        Op::LeadChanges => {
            h.get(
                token,
                &format!(
                    "{}?nextPageToken={zero}&fields=email&batchSize=5",
                    route.path
                ),
            )
            .await
        }
        Op::ExportCreate => {
            let v = h.post(token, route.path, body).await;
            *export = v["result"][0]["exportId"].as_str().map(str::to_string);
            v
        }
        Op::ExportList => {
            h.get(token, &format!("{}?status=Created,Queued", route.path))
                .await
        }
        Op::ExportEnqueue | Op::ExportStatus | Op::ExportCancel => {
            let path = route
                .path
                .replace("{exportId}", export.as_deref().expect("created first"));
            if route.method == "GET" {
                h.get(token, &path).await
            } else {
                h.post(token, &path, json!({})).await
            }
        }
        Op::ExportFile => return None,
    })
}

#[tokio::test]
async fn answers_carry_the_fields_the_vendor_description_requires() {
    let specs = [("mapi", spec("mapi")), ("identity", spec("identity"))];
    let h = spawn(30).await;
    let token = h.token().await;
    let mut problems = Vec::new();
    let mut export = None;
    let mut checked = 0;
    for route in ROUTES {
        let spec = &specs.iter().find(|(n, _)| *n == route.spec).unwrap().1;
        let Some(answer) = sample(&h, &token, route, &mut export).await else {
            continue;
        };
        let at = format!("{} {}", route.method, route.path);
        if answer["success"] == json!(false) {
            problems.push(format!("{at}: sample request failed: {answer}"));
            continue;
        }
        let schema =
            &spec["paths"][route.path][route.method.to_lowercase()]["responses"]["200"]["schema"];
        check_required(spec, schema, &answer, &at, &mut problems);
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} routes checked");
    assert!(problems.is_empty(), "{problems:#?}");
}
