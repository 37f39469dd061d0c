//! Knob-turn benchmark (issue 13, "Performance"): a sales manager lowers a threshold in the
//! CRM; how long until every newly qualifying person of a 10,000-person segment has their MQL
//! record, and how many calls did it take against the fewest that work allows?
//!
//! It runs `mqlsync demo`'s own path (`mqlsync::demo::run`) on a bigger world: the sandbox
//! with its vendor limits on and the daemon's clients paced as against a real org, the CRM's
//! outbound message pointed at the daemon. 47,000 people spread over four regions give an
//! EMEA segment of about 10,000; the demo turns the EMEA knob down 25 points. The elapsed time
//! runs from the edit in the CRM to the last MQL record written (the outbound message, the
//! threshold poll, the decisions, the writes and their window).
//!
//! Prints the figures; asserts nothing about time. `cargo bench --bench daemon_knob`
//! (`MQLSYNC_BENCH_PEOPLE=N` for another world; a few minutes, most of it the first pass).

use std::time::Instant;

use mqlsync::sandbox::world::World;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PEOPLE: usize = 47_000;
/// The demo's world seed.
const SEED: u64 = 7;

fn main() {
    let people = std::env::var("MQLSYNC_BENCH_PEOPLE")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(PEOPLE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = dir.path().join("knob.sqlite");
    let started = Instant::now();
    let report = runtime
        .block_on(mqlsync::demo::run(people, SEED, &store))
        .expect("the demo's path runs");
    let wall = started.elapsed().as_secs_f64();
    let segment = segment_size(people, &report.knob.segment);
    let k = &report.knob;
    println!(
        "knob turn: {people} people, segment {} of {segment} people, threshold {} -> {} ({:.0} s in all, first pass included)",
        k.segment, k.from, k.to, wall
    );
    println!(
        "  between the thresholds: {} people, {} became MQLs ({} new cycles); held: {:?}",
        report.between.people,
        report.between.became_mqls,
        report.new_mqls.len(),
        report.between.held
    );
    let calls = |s: &str| report.second.calls.get(s).copied().unwrap_or(0);
    let minimum = |s: &str| report.second.minimum_calls.get(s).copied().unwrap_or(0);
    let latency = report.latency.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "  | knob turn -> {} MQL records written, {segment}-person segment | {latency:.2} s | calls / minimum: Salesforce {} / {}, Marketo {} / {} |",
        report.new_mqls.len(),
        calls("salesforce"),
        minimum("salesforce"),
        calls("marketo"),
        minimum("marketo"),
    );
}

/// How many people of the world sit in the turned segment (`region=EMEA`): the world is
/// generated again from its seed (the regions do not depend on the instant).
fn segment_size(people: usize, segment: &str) -> usize {
    let region = segment.trim_start_matches("region=");
    World::generate(SEED, people, jiff::Timestamp::now())
        .people
        .iter()
        .filter(|p| p.region == region)
        .count()
}
