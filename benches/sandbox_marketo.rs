//! Throughput of the Marketo emulator with limits off: small requests (lead by filter,
//! a 10-record activities page) from a reqwest client with 64 requests in flight, over
//! loopback. Prints requests per second; the target is >= 20,000/s on 2 cores.
//! Run: `cargo bench --bench sandbox_marketo`. It measures; it asserts nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::Faults;
use mqlsync::sandbox::log::RequestLog;
use mqlsync::sandbox::marketo::{Marketo, MarketoConfig};
use mqlsync::sandbox::world::World;

const IN_FLIGHT: usize = 64;
const RUN: Duration = Duration::from_secs(4);

async fn measure(http: &reqwest::Client, token: &str, urls: &[String]) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    futures::stream::iter(0..usize::MAX)
        .take_while(|_| futures::future::ready(started.elapsed() < RUN))
        .for_each_concurrent(IN_FLIGHT, |i| {
            let done = done.clone();
            let url = &urls[i % urls.len()];
            async move {
                let response = http
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request");
                let body = response.bytes().await.expect("body");
                assert!(body.starts_with(b"{"), "unexpected answer");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let clock = SandboxClock::running();
        let world = World::generate(7, 10_000, clock.now());
        let mut config = MarketoConfig::sandbox_default();
        config.limits = false;
        let marketo = Marketo::new(&world, config.clone(), clock, Arc::new(Faults::default()), Arc::new(RequestLog::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let router = marketo.router();
        tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
        let http = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).build().expect("client");
        let token: serde_json::Value = http
            .get(format!("{base}/identity/oauth/token?grant_type=client_credentials&client_id={}&client_secret={}", config.client_id, config.client_secret))
            .send().await.expect("token").json().await.expect("json");
        let token = token["access_token"].as_str().expect("access_token").to_string();

        let leads: Vec<String> = world.people.iter().take(1000)
            .map(|p| format!("{base}/rest/v1/leads.json?filterType=id&filterValues={}&fields=email,leadScore", p.map_id))
            .collect();
        let rate = measure(&http, &token, &leads).await;
        println!("sandbox_marketo leads_by_filter (1 id): {rate:.0} requests/s ({IN_FLIGHT} in flight)");

        let paging: serde_json::Value = http.get(format!("{base}/rest/v1/activities/pagingtoken.json?sinceDatetime=2020-01-01T00:00:00Z"))
            .bearer_auth(&token).send().await.expect("paging").json().await.expect("json");
        let first = paging["nextPageToken"].as_str().expect("token").to_string();
        let mut pages = vec![format!("{base}/rest/v1/activities.json?activityTypeIds=22&batchSize=10&nextPageToken={first}")];
        for _ in 0..50 {
            let page: serde_json::Value = http.get(pages.last().expect("page")).bearer_auth(&token).send().await.expect("page").json().await.expect("json");
            let next = page["nextPageToken"].as_str().expect("next");
            pages.push(format!("{base}/rest/v1/activities.json?activityTypeIds=22&batchSize=10&nextPageToken={next}"));
        }
        let rate = measure(&http, &token, &pages).await;
        println!("sandbox_marketo activities page (10 records): {rate:.0} requests/s ({IN_FLIGHT} in flight)");
    });
}
