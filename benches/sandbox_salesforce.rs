//! Throughput of the Salesforce emulator with limits off: small requests per second under
//! concurrency (a single-record GET and `/limits`), and the time to page through a large
//! table 2,000 records at a time. Client and server share the machine, so the figures are a
//! lower bound of what the server alone does. Run: `cargo bench --bench sandbox_salesforce`.

use std::time::{Duration, Instant};

use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use serde_json::Value;

const V: &str = "/services/data/v62.0";

async fn token(http: &reqwest::Client, sandbox: &Sandbox) -> String {
    let config = sandbox.salesforce_config();
    let body: Value = http
        .post(format!(
            "{}/services/oauth2/token",
            sandbox.salesforce_url()
        ))
        .basic_auth(&config.client_id, Some(&config.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

async fn small_requests(
    http: &reqwest::Client,
    urls: Vec<String>,
    token: &str,
    concurrency: usize,
    total: usize,
) -> f64 {
    let started = Instant::now();
    let per_worker = total / concurrency;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let http = http.clone();
        let token = token.to_string();
        let urls = urls.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..per_worker {
                let url = &urls[(w * per_worker + i) % urls.len()];
                let r = http
                    .get(url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("send");
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await.expect("body");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    (per_worker * concurrency) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sandbox = Sandbox::start(SandboxOptions {
            leads: 30_000,
            limits: false,
            ..SandboxOptions::default()
        })
        .await
        .expect("sandbox");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        let token = token(&http, &sandbox).await;
        let base = sandbox.salesforce_url().to_string();

        let lead_ids: Vec<String> = sandbox
            .world()
            .people
            .iter()
            .filter(|p| p.crm_kind == mqlsync::sandbox::world::CrmKind::Lead)
            .filter_map(|p| p.crm_id.clone())
            .take(1000)
            .collect();
        let record_urls: Vec<String> = lead_ids
            .iter()
            .map(|id| format!("{base}{V}/sobjects/Lead/{id}?fields=Id,LastName,Status"))
            .collect();
        let limits_url = vec![format!("{base}{V}/limits")];

        // Warm up connections.
        small_requests(&http, limits_url.clone(), &token, 64, 6_400).await;
        for concurrency in [32, 64] {
            let rps = small_requests(&http, limits_url.clone(), &token, concurrency, 60_000).await;
            println!("GET /limits               concurrency {concurrency:>3}: {rps:>8.0} requests/s");
            let rps = small_requests(&http, record_urls.clone(), &token, concurrency, 60_000).await;
            println!("GET /sobjects/Lead/{{id}}  concurrency {concurrency:>3}: {rps:>8.0} requests/s");
        }

        // Paging a whole table, 2,000 records a page.
        for (label, soql) in [
            ("ORDER BY Id (index walk)", "SELECT Id, FirstName, LastName, Email, Status, Region__c, SystemModstamp FROM Lead"),
            ("ORDER BY SystemModstamp, Id (index walk)", "SELECT Id, FirstName, LastName, Email, Status, Region__c, SystemModstamp FROM Lead ORDER BY SystemModstamp, Id"),
            ("ORDER BY LastName (listed ids)", "SELECT Id, FirstName, LastName, Email, Status, Region__c, SystemModstamp FROM Lead ORDER BY LastName"),
        ] {
            let started = Instant::now();
            let mut page: Value = http
                .get(format!("{base}{V}/query"))
                .query(&[("q", soql)])
                .bearer_auth(&token)
                .send()
                .await
                .expect("query")
                .json()
                .await
                .expect("json");
            let first = started.elapsed();
            let total = page["totalSize"].as_u64().unwrap_or(0);
            let mut records = page["records"].as_array().map_or(0, Vec::len);
            let mut pages = 1;
            let mut slowest_more = Duration::ZERO;
            while let Some(next) = page["nextRecordsUrl"].as_str().map(str::to_string) {
                let t = Instant::now();
                page = http
                    .get(format!("{base}{next}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("query more")
                    .json()
                    .await
                    .expect("json");
                slowest_more = slowest_more.max(t.elapsed());
                records += page["records"].as_array().map_or(0, Vec::len);
                pages += 1;
            }
            assert_eq!(records as u64, total);
            let all = started.elapsed();
            println!(
                "query {label}: {total} records in {pages} pages, {:.1} ms total, first page {:.1} ms, slowest next page {:.1} ms",
                all.as_secs_f64() * 1e3,
                first.as_secs_f64() * 1e3,
                slowest_more.as_secs_f64() * 1e3
            );
        }
        sandbox.shutdown().await;
    });
}
