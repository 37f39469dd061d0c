//! Shared by the sync and daemon tests (`#[path]`): the default mapping with the knob's
//! feedback fields (`crm.threshold.projected_weekly_mqls`, `actual_weekly_mqls`,
//! `feedback_date`) uncommented, as a user turns them on.

use mqlsync::mapping;

/// The default mapping with the knob's feedback fields on.
pub fn feedback_mapping() -> mapping::LoadedMapping {
    let text = [
        "projected_weekly_mqls",
        "actual_weekly_mqls",
        "feedback_date",
    ]
    .iter()
    .fold(mapping::DEFAULT_MAPPING.to_string(), |text, key| {
        let commented = format!("# {key} = ");
        assert!(text.contains(&commented), "{key}");
        text.replacen(&commented, &format!("{key} = "), 1)
    });
    mapping::parse(&text, "feedback.toml").unwrap()
}
