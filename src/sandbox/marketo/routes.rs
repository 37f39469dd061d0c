//! The one table of Marketo routes the sandbox serves. The router dispatches by it and the
//! OpenAPI conformance test walks it, so a route cannot be served without being checked
//! against Adobe's description. Paths use the OpenAPI spelling (`{exportId}`).
//!
//! This module only matches paths and parses parameters; it must not answer requests.

/// What a route does; the dispatcher switches on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Identity,
    LeadsByFilter,
    LeadById,
    SyncLeads,
    Describe,
    Describe2,
    ActivityTypes,
    PagingToken,
    Activities,
    LeadChanges,
    Usage,
    ExportCreate,
    ExportEnqueue,
    ExportStatus,
    ExportCancel,
    ExportFile,
    ExportList,
}

/// One served route.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct Route {
    pub method: &'static str,
    /// The OpenAPI path; `{name}` segments (or segment prefixes before `.json`) are parameters.
    pub path: &'static str,
    /// The request kind, as the request log and fault rules name it.
    pub kind: &'static str,
    pub op: Op,
    /// Every query, path and header parameter the sandbox reads.
    pub params: &'static [&'static str],
    /// Which OpenAPI description holds the route: `mapi` or `identity`.
    pub spec: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    kind: &'static str,
    op: Op,
    params: &'static [&'static str],
) -> Route {
    Route {
        method,
        path,
        kind,
        op,
        params,
        spec: "mapi",
    }
}

/// Every Marketo route. Bulk routes exist for `leads` and `activities`.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/identity/oauth/token",
        kind: "identity",
        op: Op::Identity,
        params: &["grant_type", "client_id", "client_secret"],
        spec: "identity",
    },
    Route {
        method: "POST",
        path: "/identity/oauth/token",
        kind: "identity",
        op: Op::Identity,
        params: &["grant_type", "client_id", "client_secret"],
        spec: "identity",
    },
    r(
        "GET",
        "/rest/v1/leads.json",
        "leads_by_filter",
        Op::LeadsByFilter,
        &[
            "filterType",
            "filterValues",
            "fields",
            "batchSize",
            "nextPageToken",
        ],
    ),
    r(
        "POST",
        "/rest/v1/leads.json",
        "leads_sync",
        Op::SyncLeads,
        &[],
    ),
    r(
        "GET",
        "/rest/v1/lead/{leadId}.json",
        "lead_by_id",
        Op::LeadById,
        &["leadId", "fields"],
    ),
    r(
        "GET",
        "/rest/v1/leads/describe.json",
        "leads_describe",
        Op::Describe,
        &[],
    ),
    r(
        "GET",
        "/rest/v1/leads/describe2.json",
        "leads_describe2",
        Op::Describe2,
        &[],
    ),
    r(
        "GET",
        "/rest/v1/activities/types.json",
        "activity_types",
        Op::ActivityTypes,
        &[],
    ),
    r(
        "GET",
        "/rest/v1/activities/pagingtoken.json",
        "paging_token",
        Op::PagingToken,
        &["sinceDatetime"],
    ),
    r(
        "GET",
        "/rest/v1/activities.json",
        "activities",
        Op::Activities,
        &["nextPageToken", "activityTypeIds", "leadIds", "batchSize"],
    ),
    r(
        "GET",
        "/rest/v1/activities/leadchanges.json",
        "lead_changes",
        Op::LeadChanges,
        &["nextPageToken", "fields", "leadIds", "batchSize"],
    ),
    r("GET", "/rest/v1/stats/usage.json", "usage", Op::Usage, &[]),
    r(
        "POST",
        "/bulk/v1/leads/export/create.json",
        "bulk_leads_create",
        Op::ExportCreate,
        &[],
    ),
    r(
        "POST",
        "/bulk/v1/leads/export/{exportId}/enqueue.json",
        "bulk_leads_enqueue",
        Op::ExportEnqueue,
        &["exportId"],
    ),
    r(
        "GET",
        "/bulk/v1/leads/export/{exportId}/status.json",
        "bulk_leads_status",
        Op::ExportStatus,
        &["exportId"],
    ),
    r(
        "POST",
        "/bulk/v1/leads/export/{exportId}/cancel.json",
        "bulk_leads_cancel",
        Op::ExportCancel,
        &["exportId"],
    ),
    r(
        "GET",
        "/bulk/v1/leads/export/{exportId}/file.json",
        "bulk_leads_file",
        Op::ExportFile,
        &["exportId", "Range"],
    ),
    r(
        "GET",
        "/bulk/v1/leads/export.json",
        "bulk_leads_list",
        Op::ExportList,
        &["status", "batchSize", "nextPageToken"],
    ),
    r(
        "POST",
        "/bulk/v1/activities/export/create.json",
        "bulk_activities_create",
        Op::ExportCreate,
        &[],
    ),
    r(
        "POST",
        "/bulk/v1/activities/export/{exportId}/enqueue.json",
        "bulk_activities_enqueue",
        Op::ExportEnqueue,
        &["exportId"],
    ),
    r(
        "GET",
        "/bulk/v1/activities/export/{exportId}/status.json",
        "bulk_activities_status",
        Op::ExportStatus,
        &["exportId"],
    ),
    r(
        "POST",
        "/bulk/v1/activities/export/{exportId}/cancel.json",
        "bulk_activities_cancel",
        Op::ExportCancel,
        &["exportId"],
    ),
    r(
        "GET",
        "/bulk/v1/activities/export/{exportId}/file.json",
        "bulk_activities_file",
        Op::ExportFile,
        &["exportId", "Range"],
    ),
    r(
        "GET",
        "/bulk/v1/activities/export.json",
        "bulk_activities_list",
        Op::ExportList,
        &["status", "batchSize", "nextPageToken"],
    ),
];

/// Matches one path against a template; returns the path parameters.
pub fn match_path(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let mut args = Vec::new();
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(args),
            (Some(ts), Some(ps)) => {
                if let Some(open) = ts.find('{') {
                    let close = ts.find('}')?;
                    let (prefix, suffix) = (&ts[..open], &ts[close + 1..]);
                    let value = ps.strip_prefix(prefix)?.strip_suffix(suffix)?;
                    if value.is_empty() {
                        return None;
                    }
                    args.push((ts[open + 1..close].to_string(), value.to_string()));
                } else if ts != ps {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// A matched route and its path arguments, or whether the path exists with another method.
pub type Found = Result<(&'static Route, Vec<(String, String)>), bool>;

/// Finds the route for a method and path: `Ok(route, path args)`, or `Err(true)` when the
/// path exists with another method (605), `Err(false)` when it does not exist (610).
pub fn find(method: &str, path: &str) -> Found {
    let mut other_method = false;
    for route in ROUTES {
        if let Some(args) = match_path(route.path, path) {
            if route.method == method {
                return Ok((route, args));
            }
            other_method = true;
        }
    }
    Err(other_method)
}

/// Decodes `application/x-www-form-urlencoded` text (query strings and form bodies).
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Request parameters (query, or a tunnelled form body), with Marketo's list conventions:
/// comma-separated values and repeated keys both make lists.
#[derive(Clone, Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All values of a list parameter, split on commas, blanks dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name || k.strip_suffix("[]") == Some(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_parameters_inside_a_segment() {
        let args = match_path("/rest/v1/lead/{leadId}.json", "/rest/v1/lead/42.json").unwrap();
        assert_eq!(args, [("leadId".to_string(), "42".to_string())]);
        assert!(match_path("/rest/v1/lead/{leadId}.json", "/rest/v1/lead/.json").is_none());
        assert!(find("GET", "/rest/v1/nothing.json").is_err_and(|m| !m));
        assert!(find("DELETE", "/rest/v1/leads.json").is_err_and(|m| m));
    }

    #[test]
    fn forms_decode_and_lists_split() {
        let p = Params(parse_form(
            "filterValues=a%40b.com,c%2Bd&fields=id&fields=email&x=1+2&bad=%zz&end=%4",
        ));
        assert_eq!(p.list("filterValues"), ["a@b.com", "c+d"]);
        assert_eq!(p.list("fields"), ["id", "email"]);
        assert_eq!(p.get("x"), Some("1 2"));
        assert_eq!(p.get("bad"), Some("%zz"));
        assert_eq!(p.get("end"), Some("%4"));
    }
}
