//! `reconcile`: one event in, decisions out. Also `advance` (time passes: scheduled
//! thresholds start and end, SLAs run out, cycles move to the next owner) and `explain`.
//!
//! A cycle's SLA runs from when its rep can see it ([`Visibility`]): in a run, from the
//! writer's report that its MQL record reached the CRM ([`Event::CycleWritten`]), so that
//! catching up on history never writes a record already overdue or reassigned.
//!
//! Every event is a versioned fact (a record as of its modification, a score change with its
//! id), so an event already applied is recognised and yields nothing: the daemon may deliver
//! at least once. The lifecycle of a cycle (Open -> Working -> Converted, or -> Rejected with
//! a reason) lives here too, as the reaction to CRM edits of MQL records.

use std::sync::Arc;

use jiff::Timestamp;

use super::model::{
    AccountFacts, Action, Attributes, Campaign, CrmRef, Cycle, CycleEdit, CycleStatus,
    CycleWritten, Decision, Event, HandRaise, MapActivity, MapLink, Opportunity, Outcome,
    PersonFacts, Reason, ScoreChange, ScorePart, Stamps, Threshold, Trigger, cycle_external_id,
};
use super::policy::{HistoricStatus, Policy, ScoreSource, SlaClock};
use super::rules::first_exclusion;
use super::score::{MaybeInstant, Scores};
use super::state::{AccountSlot, EngineState, Gate, Hold, MapLeadState, PersonState, Timer};
use super::thresholds::{self, Resolved, Resolver};

/// What a call may know besides the state and the event.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub policy: &'a Policy,
    /// The present instant, as the caller's clock has it.
    pub now: Timestamp,
    /// Cycles opened by this call are marked as rebuilt from history (and get no SLA).
    pub backfill: bool,
    /// When the rep can see a new cycle, which is when its SLA starts.
    pub visibility: Visibility,
}

/// When a rep can see a new cycle's MQL record: when its SLA, overdue flag and reassignment
/// clock start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// The instant the engine decides it: a world where decisions are seen at once
    /// (`simulate`, benches, most engine tests).
    AtDecision,
    /// When the writer reports that the CRM accepted its record ([`Event::CycleWritten`]):
    /// `run --once`. Until then the cycle has no SLA and cannot be overdue or reassigned.
    WhenWritten,
}

/// Applies one event at `ctx.now` and returns what to do. Time first advances to `ctx.now`.
pub fn reconcile(state: &mut EngineState, ctx: &Context<'_>, event: &Event) -> Vec<Decision> {
    let mut out = advance(state, ctx);
    match event {
        Event::Threshold(t) => on_threshold(state, ctx, t, &mut out),
        Event::Person(p) => on_person(state, ctx, p, &mut out),
        Event::Account(a) => on_account(state, ctx, a, &mut out),
        Event::Opportunity(o) => on_opportunity(state, ctx, o, &mut out),
        Event::Score(s) => on_score(state, ctx, s, &mut out),
        Event::CurrentScore(s) => on_current_score(state, ctx, s),
        Event::Activity(a) => on_activity(state, ctx, a, &mut out),
        Event::Link(l) => on_link(state, ctx, l, &mut out),
        Event::CycleEdit(e) => on_cycle_edit(state, ctx, e, &mut out),
        Event::GoLive { at, mqls } => go_live(state, ctx, *at, *mqls, &mut out),
        Event::CycleWritten(w) => on_cycle_written(state, ctx, w, &mut out),
    }
    out
}

/// Lets time pass up to `ctx.now`: fires every timer due, in order, each at its own instant.
pub fn advance(state: &mut EngineState, ctx: &Context<'_>) -> Vec<Decision> {
    let mut out = Vec::new();
    while let Some((at, timer)) = state.timers.pop_due(ctx.now) {
        state.meta.clock = Some(state.meta.clock.map_or(at, |c| c.max(at)));
        match timer {
            Timer::ThresholdBoundary(id) => {
                bump_generation(state, at);
                if let Some(threshold) = state.thresholds.get(&id).cloned() {
                    let trigger = Trigger::ThresholdSchedule { threshold_id: id };
                    reevaluate_segment(state, ctx, &threshold, None, at, trigger, &mut out);
                }
            }
            Timer::SlaDue(external_id) => sla_due(state, ctx, &external_id, at, &mut out),
            Timer::Reassign(external_id) => reassign(state, ctx, &external_id, at, &mut out),
        }
    }
    if state.meta.clock.is_none_or(|c| c < ctx.now) {
        state.meta.clock = Some(ctx.now);
        state.dirty.meta = true;
    }
    out
}

/// Why a person is or is not an MQL at `at`, computed afresh without changing anything.
pub fn explain(state: &EngineState, policy: &Policy, crm_id: &str, at: Timestamp) -> Reason {
    let Some(person) = state.persons.get(crm_id) else {
        return Reason::NotSeen;
    };
    // An open MQL is the answer, whatever the score does now (a hand-raiser's may be below
    // the threshold, and a score may have fallen since).
    if let Some(open) = person.open_cycle() {
        return Reason::OpenCycle {
            external_id: open.external_id.as_str().into(),
        };
    }
    let resolved = person.facts.as_ref().and_then(|facts| {
        thresholds::resolve(
            state.thresholds.values(),
            &facts.attributes,
            at,
            policy.default_threshold,
        )
    });
    verdict(state, policy, person, resolved.as_ref(), at, &|| {
        Trigger::PersonChange
    })
    .0
}

fn bump_generation(state: &mut EngineState, from: Timestamp) {
    state.threshold_generation += 1;
    state.generation_valid_from = Some(state.generation_valid_from.map_or(from, |v| v.max(from)));
}

fn record(out: &mut Vec<Decision>, at: Timestamp, subject: &str, reason: Reason) {
    out.push(Decision {
        at,
        subject: subject.to_string(),
        action: Action::Record,
        reason,
    });
}

fn on_threshold(
    state: &mut EngineState,
    ctx: &Context<'_>,
    new: &Threshold,
    out: &mut Vec<Decision>,
) {
    let previous = state.thresholds.get(&new.id).cloned();
    if previous
        .as_ref()
        .is_some_and(|p| p.modified_at >= new.modified_at)
    {
        return;
    }
    let at = new.modified_at;
    state.thresholds.insert(new.id.clone(), new.clone());
    state.dirty.thresholds.insert(new.id.clone());
    if let Some(problem) = thresholds::problem(new) {
        record(out, at, &new.id, Reason::ThresholdInvalid { problem });
    } else {
        record(
            out,
            at,
            &new.id,
            Reason::ThresholdSeen {
                version: new.modified_at,
            },
        );
    }
    // mqlsync's own feedback write (or a reason edited) moves the record's version but not
    // the knob: nobody's threshold changed, so nobody is re-evaluated.
    if previous.as_ref().is_some_and(|p| p.same_knob(new)) {
        return;
    }
    let clock = state.meta.clock.unwrap_or(at);
    bump_generation(state, at.min(clock));
    for boundary in [new.effective_from, new.effective_to].into_iter().flatten() {
        if boundary > clock {
            state
                .timers
                .insert(boundary, Timer::ThresholdBoundary(new.id.clone()));
        } else {
            bump_generation(state, boundary);
        }
    }
    let trigger = Trigger::ThresholdChange {
        threshold_id: new.id.clone(),
    };
    reevaluate_segment(state, ctx, new, previous.as_ref(), at, trigger, out);
}

/// Re-evaluates everyone in the segment of a threshold (and of its previous version).
fn reevaluate_segment(
    state: &mut EngineState,
    ctx: &Context<'_>,
    threshold: &Threshold,
    previous: Option<&Threshold>,
    at: Timestamp,
    trigger: Trigger,
    out: &mut Vec<Decision>,
) {
    let mut members: Vec<u32> = state
        .persons
        .values()
        .zip(0u32..)
        .filter(|(p, _)| p.map_lead.is_some())
        .filter(|(p, _)| {
            p.facts.as_ref().is_some_and(|f| {
                thresholds::matches(threshold, &f.attributes)
                    || previous.is_some_and(|prev| thresholds::matches(prev, &f.attributes))
            })
        })
        .map(|(_, slot)| slot)
        .collect();
    members.sort_unstable_by(|a, b| state.persons.id(*a).cmp(state.persons.id(*b)));
    for slot in members {
        evaluate_at(state, ctx, slot, at, &|| trigger.clone(), None, out);
    }
}

fn on_person(
    state: &mut EngineState,
    ctx: &Context<'_>,
    facts: &PersonFacts,
    out: &mut Vec<Decision>,
) {
    let id = facts.crm.id.clone();
    let slot = state.persons.slot_or_insert(&id);
    let person = state.persons.at_mut(slot);
    if person
        .facts
        .as_ref()
        .is_some_and(|f| f.modified_at >= facts.modified_at)
    {
        return;
    }
    let old_account = person.facts.as_ref().and_then(|f| f.account_id.clone());
    let old_status = person.facts.as_ref().and_then(|f| f.status.clone());
    let mut facts_now = facts.clone();
    if let Some(account) = facts
        .account_id
        .as_ref()
        .and_then(|a| state.accounts.get(a))
    {
        facts_now.attributes = with_account(&facts_now.attributes, &account.attributes);
    }
    let person = state.persons.at_mut(slot);
    person.facts = Some(Box::new(facts_now));
    person.account = AccountSlot::UNKNOWN;
    person.resolved = None;
    person.cached_generation = 0;
    state.touch_person(slot);
    state.dirty.facts.push(slot);
    if old_account != facts.account_id {
        if let Some(old) = old_account {
            // The gates of the people left behind may rely on this person's open cycle.
            if let Some(left) = state.account_scores.slot(&old) {
                state.account_scores.changed(left);
            }
            if let Some(people) = state.account_people.get_mut(&old)
                && let Ok(at) = people.binary_search(&slot)
            {
                people.remove(at);
            }
        }
        if let Some(new) = &facts.account_id {
            let people = state.account_people.entry(new.clone()).or_default();
            if let Err(at) = people.binary_search(&slot) {
                people.insert(at, slot);
            }
            // Joining with an open cycle: the account may have two now.
            if state.persons.at(slot).open_cycle().is_some()
                && let Some(joined) = state.account_scores.slot(new)
            {
                state.account_scores.crowded(joined);
            }
        }
    }
    if matches!(ctx.policy.score, ScoreSource::Account { .. }) {
        // The account's score record is made with its first person, and its slot kept
        // beside each, so that a score change reaches it without hashing the account's id.
        state.person_account_or_insert(slot);
    }
    let at = facts.modified_at;
    if facts.converted {
        convert(state, &id, at, "lead conversion", out);
        return;
    }
    if ctx.backfill
        && let Some(status) = &facts.status
        && old_status.as_ref() != Some(status)
    {
        historic_status(state, ctx, &id, status, at, out);
    }
    waiting_hand_raise(state, ctx, slot, at, out);
    evaluate_at(state, ctx, slot, at, &|| Trigger::PersonChange, None, out);
}

/// A backfill replays a person's CRM status history onto the cycle it rebuilt: a status the
/// mapping says meant "accepted" makes an Open cycle Working (its SAL date, stamped on the
/// person), one that meant a rejection reason closes the cycle as Rejected with it, and the
/// reason's outcome starts its cool-down, as a rep's edit of the MQL record would have. The
/// person's status itself is not stamped: the CRM holds it already.
fn historic_status(
    state: &mut EngineState,
    ctx: &Context<'_>,
    id: &str,
    status: &str,
    at: Timestamp,
    out: &mut Vec<Decision>,
) {
    let policy = ctx.policy;
    let Some(meaning) = policy.status_history.get(status) else {
        return;
    };
    let Some(person) = state.persons.get_mut(id) else {
        return;
    };
    let Some(cycle) = person
        .cycles
        .last_mut()
        .filter(|c| c.backfilled && c.status.is_open() && c.mql_at <= at)
    else {
        return;
    };
    let from = cycle.status;
    let stamped = match meaning {
        HistoricStatus::Accepted if from == CycleStatus::Open => {
            cycle.status = CycleStatus::Working;
            cycle.sal_at = Some(at);
            person.stamps.sal_recent = Some(at);
            person.stamps.sal_original.get_or_insert(at);
            true
        }
        HistoricStatus::Accepted => return,
        HistoricStatus::Rejected { reason } => {
            let outcome = policy.outcome_of(reason);
            cycle.status = CycleStatus::Rejected;
            cycle.rejection_reason = Some(reason.clone());
            cycle.outcome = outcome;
            cycle.closed_at = Some(at);
            if let Some((o, p)) = outcome.and_then(|o| policy.outcomes.get(&o).map(|p| (o, p)))
                && p.cooldown.is_positive()
            {
                person.cooldown = Some(Box::new((at + p.cooldown, o)));
            }
            false
        }
    };
    let cycle = cycle.clone();
    let reason = Reason::HistoricStatus {
        status: status.to_string(),
        from,
        to: cycle.status,
    };
    push_update(state, out, at, id, cycle, reason.clone());
    if stamped {
        push_stamps(state, out, at, id, reason);
    }
}

/// The attributes of a person of an account: theirs, with the account's over any of the same
/// name.
fn with_account(own: &Attributes, account: &Attributes) -> Attributes {
    if account.is_empty() {
        return own.clone();
    }
    own.iter()
        .filter(|(k, _)| account.get(k).is_none())
        .chain(account.iter())
        .collect()
}

/// An account: kept (versioned by its modification), and when the attributes its people carry
/// through it changed, each of its people takes them and is evaluated again at that instant
/// (an account marked as a target may meet a lower threshold now).
fn on_account(
    state: &mut EngineState,
    ctx: &Context<'_>,
    account: &AccountFacts,
    out: &mut Vec<Decision>,
) {
    let previous = state.accounts.get(&account.id);
    if previous.is_some_and(|p| p.modified_at >= account.modified_at) {
        return;
    }
    let attributes_changed = previous.is_none_or(|p| p.attributes != account.attributes);
    state.accounts.insert(account.id.clone(), account.clone());
    state.dirty.accounts.push(account.id.clone());
    if !attributes_changed {
        return;
    }
    let slots = state
        .account_people
        .get(&account.id)
        .cloned()
        .unwrap_or_default();
    let at = account.modified_at;
    for slot in slots {
        let person = state.persons.at_mut(slot);
        let Some(facts) = person.facts.as_deref_mut() else {
            continue;
        };
        let merged = with_account(&facts.attributes, &account.attributes);
        if merged == facts.attributes {
            continue;
        }
        facts.attributes = merged;
        person.resolved = None;
        person.cached_generation = 0;
        state.touch_person(slot);
        state.dirty.facts.push(slot);
        evaluate_at(state, ctx, slot, at, &|| Trigger::PersonChange, None, out);
    }
}

fn on_opportunity(
    state: &mut EngineState,
    _ctx: &Context<'_>,
    opp: &Opportunity,
    out: &mut Vec<Decision>,
) {
    let previous = state.opportunities.get(&opp.id).cloned();
    if previous
        .as_ref()
        .is_some_and(|p| p.modified_at >= opp.modified_at)
    {
        return;
    }
    if let Some(prev) = &previous
        && prev.account_id != opp.account_id
        && let Some(ids) = state.account_opportunities.get_mut(&prev.account_id)
    {
        ids.remove(&opp.id);
    }
    state.opportunities.insert(opp.id.clone(), opp.clone());
    state
        .account_opportunities
        .entry(opp.account_id.clone())
        .or_default()
        .insert(opp.id.clone());
    state.dirty.opportunities.insert(opp.id.clone());
    if previous.is_none() {
        // A new opportunity converts the open cycles of the account's people that were
        // opened before it.
        let mut people: Vec<String> = state
            .account_people
            .get(opp.account_id.as_str())
            .into_iter()
            .flatten()
            .map(|slot| state.persons.id(*slot).to_string())
            .collect();
        // In id order, as decisions are everywhere.
        people.sort_unstable();
        for id in people {
            let opened_before = state.persons[&id]
                .open_cycle()
                .is_some_and(|c| c.mql_at <= opp.created_at);
            if opened_before {
                convert(
                    state,
                    &id,
                    opp.created_at.max(opp.modified_at),
                    &format!("opportunity {}", opp.id),
                    out,
                );
            }
        }
    }
}

/// A score field's current value, read from the MAP: applied like a change (so the history
/// holds it and a reload gets it back), nobody evaluated. With a time-decayed score, the
/// behaviour points the engine did not know arrive at `at` and start fading from there.
fn on_current_score(state: &mut EngineState, ctx: &Context<'_>, change: &ScoreChange) {
    let lead = state.map_leads.get_or_default(change.map_lead_id);
    apply_score(lead, ctx, change, &mut state.unsaved_scores);
}

/// Applies a score change to its MAP lead's scores (versioned: an older one is a replay),
/// listing the lead as unsaved; `true` when it changed them.
fn apply_score(
    lead: &mut MapLeadState,
    ctx: &Context<'_>,
    change: &ScoreChange,
    unsaved: &mut Vec<i64>,
) -> bool {
    let half_life = match ctx.policy.score {
        ScoreSource::TimeDecayed { half_life } => Some(half_life),
        _ => None,
    };
    let applied = lead.scores.apply(
        change.part,
        change.new_value,
        change.old_value,
        &change.change_id,
        change.at,
        change.campaign.as_ref(),
        half_life,
    );
    if applied {
        lead.mark_unsaved(change.map_lead_id, unsaved);
    }
    applied
}

/// Go-live: everyone linked and without any cycle is evaluated at `at`; those who qualify
/// open a cycle with reason `at_go_live`. People below their threshold record nothing (a
/// first run would write one audit row per person of the org).
/// Once per store: a second go-live is a replay and yields nothing. Without `mqls` it only
/// marks the store as live.
fn go_live(
    state: &mut EngineState,
    ctx: &Context<'_>,
    at: Timestamp,
    mqls: bool,
    out: &mut Vec<Decision>,
) {
    if state.meta.went_live.is_some() {
        return;
    }
    state.meta.went_live = Some(at);
    state.dirty.meta = true;
    if !mqls {
        return;
    }
    let mut slots: Vec<u32> = (0..state.persons.len() as u32)
        .filter(|slot| {
            let person = state.persons.at(*slot);
            person.cycles.is_empty() && person.map_lead.is_some() && person.facts.is_some()
        })
        .collect();
    // By CRM id, so that the decisions come in the same order after a reload.
    slots.sort_by(|a, b| state.persons.id(*a).cmp(state.persons.id(*b)));
    for slot in slots {
        evaluate_at(state, ctx, slot, at, &|| Trigger::GoLive, None, out);
    }
}

fn on_score(
    state: &mut EngineState,
    ctx: &Context<'_>,
    change: &ScoreChange,
    out: &mut Vec<Decision>,
) {
    let window = CacheWindow::of(state);
    // Under account scoring, the account's record is asked for before the lead's is read
    // (see `AccountScores::warm`); otherwise the lead's slot is all there is to find.
    let (lead_slot, account_hint) = if matches!(ctx.policy.score, ScoreSource::Account { .. }) {
        let (slot, hint) = state.map_leads.slot_and_account_hint(change.map_lead_id);
        if let Some(account) = hint {
            state.account_scores.warm(account);
        }
        (slot, hint)
    } else {
        (state.map_leads.slot_or_insert(change.map_lead_id), None)
    };
    let lead = state.map_leads.at_mut(lead_slot);
    let before = lead.scores.total;
    if !apply_score(lead, ctx, change, &mut state.unsaved_scores) {
        return;
    }
    let relevant = match ctx.policy.score {
        ScoreSource::Total | ScoreSource::Account { .. } => change.part == ScorePart::Total,
        _ => change.part != ScorePart::Total,
    };
    if !relevant {
        return;
    }
    if let ScoreSource::Account { window: span } = ctx.policy.score {
        let delta = change.new_value - change.old_value.or(before).unwrap_or(0.0);
        if on_account_score(
            state,
            ctx.policy,
            window,
            change,
            (lead_slot, account_hint),
            delta,
            span,
        ) {
            return;
        }
    }
    // The common cases end here: by the lead's gate alone, or with borrows of the person
    // (see `unchanged`), whose slot the lead holds, so no CRM id is hashed. Under account
    // scoring a person's own score decides nothing: no shortcut.
    let lead = state.map_leads.at_mut(lead_slot);
    let shortcuts = !state.no_shortcuts && !matches!(ctx.policy.score, ScoreSource::Account { .. });
    if shortcuts && lead.gate.quiet(window, ctx.policy, &lead.scores, change.at) {
        return;
    }
    if shortcuts && let Some(slot) = lead.person {
        let person = state.persons.at(slot);
        if person.map_lead == Some(change.map_lead_id)
            && unchanged(window, ctx.policy, person, &lead.scores, change.at)
        {
            lead.gate = Gate::of(person);
            return;
        }
    }
    match (lead.person, &lead.crm) {
        (Some(slot), _) => {
            let trigger = || Trigger::ScoreChange {
                change_id: change.change_id.clone(),
            };
            let campaign = change.campaign.as_ref();
            evaluate_at(state, ctx, slot, change.at, &trigger, campaign, out);
            // What the evaluation left is what the next change of this lead meets.
            set_gate(state, ctx.policy, slot);
        }
        (None, Some(_)) => {}
        (None, None) if !lead.unlinked_recorded => {
            lead.unlinked_recorded = true;
            lead.mark_dirty(change.map_lead_id, &mut state.dirty);
            let map_lead_id = change.map_lead_id;
            record(
                out,
                change.at,
                &format!("map:{map_lead_id}"),
                Reason::NotLinked { map_lead_id },
            );
        }
        (None, None) => {}
    }
}

fn on_link(state: &mut EngineState, ctx: &Context<'_>, link: &MapLink, out: &mut Vec<Decision>) {
    let lead = state.map_leads.get_or_default(link.map_lead_id);
    if lead.link_at.get().is_some_and(|seen| seen >= link.at) {
        return;
    }
    let old = std::mem::replace(&mut lead.crm, link.crm.clone());
    lead.link_at = MaybeInstant::of(Some(link.at));
    lead.mark_dirty(link.map_lead_id, &mut state.dirty);
    if old == link.crm {
        return;
    }
    lead.person = None;
    lead.gate = Gate::default();
    if let Some(old) = old
        && let Some(slot) = state.persons.slot(&old.id)
        && state.persons.at(slot).map_lead == Some(link.map_lead_id)
    {
        state.persons.at_mut(slot).map_lead = None;
        state.touch_person(slot);
    }
    if let Some(crm) = &link.crm {
        let slot = state.persons.slot_or_insert(&crm.id);
        if let Some(lead) = state.map_leads.get_mut(&link.map_lead_id) {
            lead.person = Some(slot);
        }
        // The person's previous MAP lead no longer speaks for it.
        state.close_gate(state.persons.at(slot).map_lead);
        state.persons.at_mut(slot).map_lead = Some(link.map_lead_id);
        state.touch_person(slot);
        waiting_hand_raise(state, ctx, slot, link.at, out);
        evaluate_at(state, ctx, slot, link.at, &|| Trigger::Link, None, out);
    }
}

/// A MAP activity: when a hand-raiser rule names it, the person raised their hand. Applied
/// once per activity (a replay yields nothing). A lead without a CRM record (or whose record
/// was not read yet) keeps it waiting for the link.
fn on_activity(
    state: &mut EngineState,
    ctx: &Context<'_>,
    activity: &MapActivity,
    out: &mut Vec<Decision>,
) {
    let Some(named) = ctx.policy.hand_raiser_naming(activity) else {
        return;
    };
    let rule = &ctx.policy.hand_raisers[named];
    // Under account scoring a hand-raise asks whether the account has an open cycle: its
    // record's lines for that are asked for now (the lead's index hints the account), so that
    // they come from memory while the lead's and the person's records do.
    let (lead_slot, account_hint) = state.map_leads.slot_and_account_hint(activity.map_lead_id);
    if let Some(account) = account_hint
        && matches!(ctx.policy.score, ScoreSource::Account { .. })
    {
        state.account_scores.warm_hold(account);
    }
    let lead = state.map_leads.at_mut(lead_slot);
    if !lead.hand_raise.get_or_insert_default().first_time(activity) {
        return;
    }
    lead.mark_dirty(activity.map_lead_id, &mut state.dirty);
    let slot = lead
        .person
        .filter(|slot| state.persons.at(*slot).facts.is_some());
    let Some(slot) = slot else {
        let lead = state
            .map_leads
            .get_mut(&activity.map_lead_id)
            .expect("got above");
        if let Some(seen) = lead.hand_raise.as_deref_mut() {
            seen.waiting = Some(Box::new(activity.clone()));
        }
        let map_lead_id = activity.map_lead_id;
        let why = Reason::NotLinked { map_lead_id };
        let reason = Reason::HandRaiseHeld {
            rule: rule.name.clone(),
            activity: activity.label(),
            why: Box::new(why),
        };
        record(out, activity.at, &format!("map:{map_lead_id}"), reason);
        return;
    };
    hand_raise(state, ctx, slot, (activity, named), activity.at, out);
}

/// The hand-raise waiting for this person's MAP lead to be linked (or for the person's CRM
/// record to be read), acted on at `at`, when that happened; too old to act on past the
/// policy's wait.
fn waiting_hand_raise(
    state: &mut EngineState,
    ctx: &Context<'_>,
    slot: u32,
    at: Timestamp,
    out: &mut Vec<Decision>,
) {
    let person = state.persons.at(slot);
    let (Some(lead_id), Some(_)) = (person.map_lead, &person.facts) else {
        return;
    };
    let Some(activity) = state
        .map_leads
        .get_mut(&lead_id)
        .and_then(|l| l.hand_raise.as_deref_mut())
        .and_then(|seen| seen.waiting.take())
    else {
        return;
    };
    if let Some(lead) = state.map_leads.get_mut(&lead_id) {
        lead.mark_dirty(lead_id, &mut state.dirty);
    }
    // The policy may have changed since it waited: a rule must still name it.
    let Some(named) = ctx.policy.hand_raiser_naming(&activity) else {
        return;
    };
    if at.duration_since(activity.at) > ctx.policy.hand_raise_wait_for_link {
        let reason = Reason::HandRaiseExpired {
            rule: ctx.policy.hand_raisers[named].name.clone(),
            activity: activity.label(),
            linked_at: at,
        };
        record(out, at, state.persons.id(slot), reason);
        return;
    }
    hand_raise(
        state,
        ctx,
        slot,
        (&activity, named),
        at.max(activity.at),
        out,
    );
}

/// A hand-raise of the person in `slot`, decided at `at`: a cycle opens whatever the score,
/// unless no rule that names the activity covers the person's segment (nothing happens) or
/// something holds them (recorded, with what). `named`: the first of the policy's rules that
/// names the activity, as the caller found it ([`Policy::hand_raiser_naming`]).
fn hand_raise(
    state: &mut EngineState,
    ctx: &Context<'_>,
    slot: u32,
    (activity, named): (&MapActivity, usize),
    at: Timestamp,
    out: &mut Vec<Decision>,
) {
    let policy = ctx.policy;
    state.persons.warm_id(slot);
    let Some(facts) = state.persons.at(slot).facts.as_deref() else {
        return;
    };
    let Some(rule) = policy.hand_raiser_for((activity, named), &facts.attributes) else {
        return;
    };
    let resolution = resolve_at(state, policy, slot, at);
    let person = state.persons.at(slot);
    let facts = person.facts.as_deref().expect("checked above");
    let resolved = resolution.of(person).cloned();
    let why = match &resolved {
        None => Some(Reason::NoThreshold),
        Some(_) => held(state, policy, person, facts, at),
    };
    let described = activity.label();
    if let Some(why) = why {
        remember_account_hold(state, policy, slot, &why);
        let reason = Reason::HandRaiseHeld {
            rule: rule.name.clone(),
            activity: described,
            why: Box::new(why),
        };
        record(out, at, state.persons.id(slot), reason);
        return;
    }
    let resolved = resolved.expect("checked above");
    let score = score_of(state, policy, person, at);
    let reason = Reason::HandRaised {
        rule: rule.name.clone(),
        activity: described,
        score,
        threshold: resolved.score,
        threshold_id: resolved.threshold_id.clone(),
    };
    let raised = HandRaise {
        rule: rule.name.clone(),
        activity_id: activity.activity_id.to_string(),
        type_id: activity.type_id,
        asset: activity
            .asset_name
            .as_deref()
            .or(activity.asset_id.as_deref())
            .map(String::from),
        status: activity.status.as_deref().map(String::from),
        at: activity.at,
    };
    let campaign = activity.campaign.clone();
    open_cycle(
        state,
        ctx,
        slot,
        at,
        resolved,
        campaign.as_ref(),
        Some(raised),
        reason,
        out,
    );
    // What the next score change of this lead meets: a cycle is open now.
    set_gate(state, ctx.policy, slot);
}

/// A person's threshold as [`resolve_at`] found it: in the person's cache (read it from
/// there), or computed for an instant the cache cannot hold.
enum Resolution {
    Cached,
    Fresh(Option<Arc<Resolved>>),
}

impl Resolution {
    fn of<'a>(&'a self, person: &'a PersonState) -> Option<&'a Arc<Resolved>> {
        match self {
            Resolution::Cached => person.resolved.as_ref().map(|(_, r)| r),
            Resolution::Fresh(r) => r.as_ref(),
        }
    }
}

/// The threshold for the person in `slot` at `at`, filling the cache when it can.
fn resolve_at(state: &mut EngineState, policy: &Policy, slot: u32, at: Timestamp) -> Resolution {
    let generation = state.threshold_generation;
    let cacheable = state.generation_valid_from.is_none_or(|from| from <= at)
        && state.meta.clock.is_some_and(|clock| at <= clock);
    let person = state.persons.at(slot);
    if cacheable
        && person
            .resolved
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
    {
        return Resolution::Cached;
    }
    if person.facts.is_none() {
        return Resolution::Fresh(None);
    }
    if state
        .resolver
        .as_ref()
        .is_none_or(|(g, r)| *g != generation || !r.has_default(policy.default_threshold))
    {
        let resolver = Resolver::new(state.thresholds.values(), policy.default_threshold);
        state.resolver = Some((generation, resolver));
    }
    let (_, resolver) = state.resolver.as_ref().expect("compiled above");
    let facts = state
        .persons
        .at(slot)
        .facts
        .as_ref()
        .expect("checked above");
    match resolver.resolve(&facts.attributes, at) {
        Some(resolved) if cacheable => {
            let person = state.persons.at_mut(slot);
            person.cached_threshold = resolved.score;
            person.cached_generation = (generation as u32).wrapping_add(1);
            person.resolved = Some((generation, resolved));
            Resolution::Cached
        }
        resolved => Resolution::Fresh(resolved),
    }
}

/// The verdict for a person: the reason, and whether it qualifies. `trigger` is asked only
/// for a qualifying verdict (it copies the change id).
fn verdict(
    state: &EngineState,
    policy: &Policy,
    person: &PersonState,
    resolved: Option<&Resolved>,
    at: Timestamp,
    trigger: &dyn Fn() -> Trigger,
) -> (Reason, bool) {
    let Some(lead_id) = person.map_lead else {
        return (Reason::NoScore, false);
    };
    let Some(facts) = &person.facts else {
        return (
            Reason::NotLinked {
                map_lead_id: lead_id,
            },
            false,
        );
    };
    let Some(score) = score_of(state, policy, person, at) else {
        return (Reason::NoScore, false);
    };
    let Some(resolved) = resolved else {
        return (Reason::NoThreshold, false);
    };
    if score < resolved.score {
        let reason = Reason::BelowThreshold {
            score,
            threshold: resolved.score,
            threshold_id: resolved.threshold_id.clone(),
        };
        return (reason, false);
    }
    if let Some(held) = held(state, policy, person, facts, at) {
        return (held, false);
    }
    let reason = Reason::Qualified {
        score,
        threshold: resolved.score,
        threshold_id: resolved.threshold_id.clone(),
        trigger: trigger(),
    };
    (reason, true)
}

/// Under account scoring, a score change of `delta` points of a MAP lead counts for the
/// account of the person it is linked to, if that person has one. Returns whether evaluating
/// the person would change nothing (decided by the lead's gate, or with borrows: the
/// account's score below a cached threshold with no hold to clear, or at or above it with the
/// hold of an open cycle already recorded), so the change is done with.
///
/// The common case touches the MAP lead and its account's record only: the gate holds the
/// account's slot, and the account's epoch says whether any of its people changed since.
fn on_account_score(
    state: &mut EngineState,
    policy: &Policy,
    window: CacheWindow,
    change: &ScoreChange,
    (lead_slot, account_hint): (u32, Option<u32>),
    delta: f64,
    span: jiff::SignedDuration,
) -> bool {
    let gate = state.map_leads.at(lead_slot).gate;
    // A gate set under account scoring speaks for the lead's person and their account as
    // they stand (it is closed when either changes).
    let accounted = gate.generation != 0 && gate.account != Gate::NOT_ACCOUNTED;
    let account = if accounted {
        (gate.account != Gate::NO_ACCOUNT).then_some(gate.account)
    } else {
        lead_account(state, lead_slot, change.map_lead_id)
    };
    if account != account_hint {
        state.map_leads.hint_account(change.map_lead_id, account);
    }
    let score = account.map(|slot| {
        state
            .account_scores
            .add_and_score(slot, change.at, delta, span, &mut state.dirty)
    });
    if state.no_shortcuts {
        return false;
    }
    if accounted
        && window.holds(gate.generation, change.at)
        && account.is_none_or(|slot| state.account_scores.at(slot).epoch == gate.account_epoch)
    {
        let lead = state.map_leads.at(lead_slot);
        let score = score.or_else(|| lead.scores.value(&policy.score, change.at));
        if let Some(score) = score
            && (if score < gate.threshold {
                gate.quiet_below
            } else {
                gate.quiet_above
            })
        {
            return true;
        }
    }
    // No gate, or a stale one: decide with borrows, from the score just taken (no hashing of
    // the account's id), and leave the gate that the next change meets.
    let lead = state.map_leads.at(lead_slot);
    let Some(slot) = lead.person else {
        return false;
    };
    let person = state.persons.at(slot);
    if person.map_lead != Some(change.map_lead_id) {
        return false;
    }
    // Without an account the person's own score decides (as `score_of` says).
    let (Some(threshold), Some(score)) = (
        window.threshold_score(person, change.at),
        score.or_else(|| lead.scores.value(&policy.score, change.at)),
    ) else {
        return false;
    };
    let gate = account_gate(state, person, account);
    if !(if score < threshold {
        gate.quiet_below
    } else {
        gate.quiet_above
    }) {
        return false;
    }
    state.map_leads.at_mut(lead_slot).gate = gate;
    true
}

/// The account slot of the person a MAP lead speaks for, added when new; `None` when the
/// lead has no person, is not the person's MAP lead, or the person has no account.
fn lead_account(state: &mut EngineState, lead_slot: u32, map_lead_id: i64) -> Option<u32> {
    let slot = state.map_leads.at(lead_slot).person?;
    if state.persons.at(slot).map_lead != Some(map_lead_id) {
        return None;
    }
    state.person_account_or_insert(slot)
}

/// The gate of a person under account scoring, whose account is in `account` (`None`: no
/// account, their own score decides).
fn account_gate(state: &EngineState, person: &PersonState, account: Option<u32>) -> Gate {
    Gate {
        quiet_above: account_quiet_above(state, person, account),
        account: account.unwrap_or(Gate::NO_ACCOUNT),
        account_epoch: account.map_or(0, |slot| state.account_scores.at(slot).epoch),
        ..Gate::of(person)
    }
}

/// Sets the gate of the person in `slot`'s MAP lead to what the person's state now decides:
/// the next score change of that lead meets it.
fn set_gate(state: &mut EngineState, policy: &Policy, slot: u32) {
    let Some(lead_id) = state.persons.at(slot).map_lead else {
        return;
    };
    let gate = if matches!(policy.score, ScoreSource::Account { .. }) {
        let account = state.person_account_or_insert(slot);
        account_gate(state, state.persons.at(slot), account)
    } else {
        Gate::of(state.persons.at(slot))
    };
    if let Some(lead) = state.map_leads.get_mut(&lead_id) {
        lead.gate = gate;
    }
}

/// Under account scoring, whether a person at or above their threshold has the hold of the
/// open cycle that holds them back recorded: the person's own open cycle, or (with none) the
/// account's, which is at most one (looked for where the account's last cycle opened, then
/// by its id; never by a scan of the account's people). `account`: the person's account slot.
fn account_quiet_above(state: &EngineState, person: &PersonState, account: Option<u32>) -> bool {
    let Some(facts) = person.facts.as_deref() else {
        return false;
    };
    let Some(external_id) = person.last_hold.as_deref().and_then(Hold::open_cycle) else {
        return false;
    };
    if let Some(own) = person.open_cycle() {
        return own.external_id == *external_id;
    }
    let held_by = |other: &PersonState| {
        other
            .open_cycle()
            .is_some_and(|open| open.external_id == *external_id)
    };
    // The account's open cycle as remembered since its epoch last moved.
    if let Some(remembered) = account
        .filter(|_| !state.no_shortcuts)
        .and_then(|a| state.account_scores.open_cycle_id(a))
    {
        return remembered == external_id;
    }
    if let Some(holder) = account
        .filter(|_| !state.no_shortcuts)
        .and_then(|a| state.account_scores.opened_last(a))
    {
        let other = state.persons.at(holder);
        if other.account.get() == account && held_by(other) {
            return true;
        }
    }
    state
        .cycle_owner
        .get(external_id.as_str())
        .is_some_and(|&owner| {
            let other = state.persons.at(owner);
            other.facts.as_ref().and_then(|f| f.account_id.as_ref()) == facts.account_id.as_ref()
                && held_by(other)
        })
}

/// The score a person's threshold is compared with at `at`: their MAP lead's, or under account
/// scoring their account's ([`account_of`]).
fn score_of(
    state: &EngineState,
    policy: &Policy,
    person: &PersonState,
    at: Timestamp,
) -> Option<f64> {
    if let ScoreSource::Account { window } = policy.score {
        // The account's slot beside the person says they have one without reading their CRM
        // facts, a record of its own: most evaluations end below the threshold and read
        // nothing else of them. `person_account` reads the slot the same way.
        let known = person.account.get().is_some() && !state.no_shortcuts;
        if known
            || person
                .facts
                .as_ref()
                .is_some_and(|f| f.account_id.is_some())
        {
            let score = state
                .person_account(person)
                .map_or(0.0, |slot| state.account_scores.at(slot).at(at, window));
            return Some(score);
        }
    }
    person
        .map_lead
        .and_then(|l| state.map_leads.get(&l))
        .and_then(|l| l.scores.value(&policy.score, at))
}

/// Under account scoring, the account whose score [`score_of`] gives for the person: a cycle
/// it opens is the account's. `None`: not an account cycle.
fn account_of(policy: &Policy, person: &PersonState) -> Option<super::model::CrmId> {
    if !matches!(policy.score, ScoreSource::Account { .. }) {
        return None;
    }
    person.facts.as_ref()?.account_id.clone()
}

/// Under account scoring, the open cycle of another person of the person's account: while
/// it is open, nobody else of the account opens one, so there is at most one. It is looked
/// for first where the account's last cycle opened, then among the account's people.
fn account_open_cycle<'a>(
    state: &'a EngineState,
    policy: &Policy,
    person: &PersonState,
    facts: &PersonFacts,
) -> Option<&'a Cycle> {
    if !matches!(policy.score, ScoreSource::Account { .. }) {
        return None;
    }
    let account = facts.account_id.as_ref()?;
    let slot = state.person_account(person).filter(|_| !state.no_shortcuts);
    if slot.is_some_and(|slot| state.account_scores.none_open(slot)) {
        return None;
    }
    if let Some(slot) = slot
        && let Some(holder) = state.account_scores.opened_last(slot)
    {
        let other = state.persons.at(holder);
        if !std::ptr::eq(other, person)
            && other.account.get() == Some(slot)
            && let Some(open) = other.open_cycle()
        {
            return Some(open);
        }
    }
    state
        .account_people
        .get(account)?
        .iter()
        .map(|slot| state.persons.at(*slot))
        .filter(|other| !std::ptr::eq(*other, person))
        .find_map(|other| other.open_cycle())
}

/// The id of [`account_open_cycle`]: remembered beside the account's record while its epoch
/// holds (see [`remember_account_hold`]), else found.
fn account_open_cycle_id(
    state: &EngineState,
    policy: &Policy,
    person: &PersonState,
    facts: &PersonFacts,
) -> Option<compact_str::CompactString> {
    if !matches!(policy.score, ScoreSource::Account { .. }) {
        return None;
    }
    if !state.no_shortcuts
        && let Some(slot) = state.person_account(person)
        && let Some(id) = state.account_scores.open_cycle_id(slot)
    {
        return Some(id.clone());
    }
    account_open_cycle(state, policy, person, facts).map(|open| open.external_id.as_str().into())
}

/// After the person in `slot` was found held by `why`: when that is the open cycle of
/// another person of their account, the account remembers its id, so that the next hold
/// of its people reads neither the holder nor the cycle.
fn remember_account_hold(state: &mut EngineState, policy: &Policy, slot: u32, why: &Reason) {
    let Reason::OpenCycle { external_id } = why else {
        return;
    };
    if state.no_shortcuts || !matches!(policy.score, ScoreSource::Account { .. }) {
        return;
    }
    let person = state.persons.at(slot);
    if person.open_cycle().is_some() {
        return;
    }
    if let Some(account) = state.person_account(person) {
        state
            .account_scores
            .remember_open_cycle(account, external_id);
    }
}

/// What holds back a person who meets the threshold (or raised their hand) at `at`: rules 3
/// and 4 of the contract (an open cycle, an exclusion) and a cool-down after a rejection.
fn held(
    state: &EngineState,
    policy: &Policy,
    person: &PersonState,
    facts: &PersonFacts,
    at: Timestamp,
) -> Option<Reason> {
    if let Some(open) = person.open_cycle() {
        return Some(Reason::OpenCycle {
            external_id: open.external_id.as_str().into(),
        });
    }
    if let Some(external_id) = account_open_cycle_id(state, policy, person, facts) {
        return Some(Reason::OpenCycle { external_id });
    }
    if let Some((until, outcome)) = person.cooldown.as_deref().copied()
        && at < until
    {
        return Some(Reason::CoolingDown { until, outcome });
    }
    let account_opps: Vec<&Opportunity> = facts
        .account_id
        .as_deref()
        .map(|a| state.account_opportunities(a).collect())
        .unwrap_or_default();
    first_exclusion(&policy.rules, facts, account_opps, &person.cycles, at).map(|hit| {
        Reason::Excluded {
            rule: hit.rule,
            detail: hit.detail,
        }
    })
}

/// What decides whether a person's cached threshold is valid at an instant, copied out of
/// the state so that the hot path can hold a MAP lead mutably at the same time.
#[derive(Clone, Copy)]
struct CacheWindow {
    generation: u64,
    valid_from: Option<Timestamp>,
    clock: Option<Timestamp>,
}

impl CacheWindow {
    fn of(state: &EngineState) -> CacheWindow {
        CacheWindow {
            generation: state.threshold_generation,
            valid_from: state.generation_valid_from,
            clock: state.meta.clock,
        }
    }

    /// The threshold score for a person at `at` when the cache can answer without cloning:
    /// the common "still below the threshold" case takes no allocation.
    fn threshold_score(self, person: &PersonState, at: Timestamp) -> Option<f64> {
        self.holds(person.cached_generation, at)
            .then_some(person.cached_threshold)
    }

    /// Whether a threshold cached under `cached_generation` (a person's, or a gate's copy of
    /// it) is valid at `at`.
    fn holds(self, cached_generation: u32, at: Timestamp) -> bool {
        let cacheable = self.valid_from.is_none_or(|from| from <= at)
            && self.clock.is_some_and(|clock| at <= clock);
        cacheable && cached_generation == (self.generation as u32).wrapping_add(1)
    }
}

impl Gate {
    /// The gate of a person as it stands (closed when no threshold is cached).
    fn of(person: &PersonState) -> Gate {
        Gate {
            generation: person.cached_generation,
            quiet_below: person.last_hold.is_none(),
            quiet_above: person.open_hold != 0,
            threshold: person.cached_threshold,
            ..Gate::default()
        }
    }

    /// What [`unchanged`] would answer for the person this gate copied: the same test on
    /// the copy.
    fn quiet(self, window: CacheWindow, policy: &Policy, scores: &Scores, at: Timestamp) -> bool {
        if !window.holds(self.generation, at) || matches!(policy.score, ScoreSource::Account { .. })
        {
            return false;
        }
        match scores.value(&policy.score, at) {
            Some(score) if score < self.threshold => self.quiet_below,
            Some(_) => self.quiet_above,
            None => false,
        }
    }
}

/// Whether evaluating a person (whose MAP lead has `scores`) at `at` would change nothing,
/// decided with borrows only for the two common cases: still below a cached threshold with
/// no hold to clear, or at or above it with an open cycle whose hold is already recorded.
fn unchanged(
    window: CacheWindow,
    policy: &Policy,
    person: &PersonState,
    scores: &Scores,
    at: Timestamp,
) -> bool {
    // Under account scoring the account's score decides, which the person does not hold.
    if matches!(policy.score, ScoreSource::Account { .. }) {
        return false;
    }
    // A cached threshold implies the person's facts arrived (it is resolved from them).
    let Some(threshold) = window.threshold_score(person, at) else {
        return false;
    };
    let Some(score) = scores.value(&policy.score, at) else {
        return false;
    };
    if score < threshold {
        return person.last_hold.is_none();
    }
    person.open_hold != 0
}

/// Evaluates the person in `slot` at `at` and opens a cycle when everything holds.
fn evaluate_at(
    state: &mut EngineState,
    ctx: &Context<'_>,
    slot: u32,
    at: Timestamp,
    trigger: &dyn Fn() -> Trigger,
    crossing_campaign: Option<&Campaign>,
    out: &mut Vec<Decision>,
) {
    let policy = ctx.policy;
    state.persons.warm_id(slot);
    let person = state.persons.at(slot);
    if !state.no_shortcuts
        && let Some(lead) = person.map_lead.and_then(|l| state.map_leads.get(&l))
        && unchanged(CacheWindow::of(state), policy, person, &lead.scores, at)
    {
        return;
    }
    let resolution = resolve_at(state, policy, slot, at);
    let person = state.persons.at(slot);
    let resolved = resolution.of(person);
    let (reason, qualifies) = verdict(state, policy, person, resolved.map(|r| &**r), at, trigger);
    // Qualified at go-live is a reason of its own: the crossing may be long before. So is
    // an account's score.
    let account = if qualifies {
        account_of(policy, person)
    } else {
        None
    };
    let reason = match (reason, account) {
        (
            Reason::Qualified {
                score,
                threshold,
                threshold_id,
                trigger: Trigger::GoLive,
            },
            _,
        ) => Reason::AtGoLive {
            score,
            threshold,
            threshold_id,
        },
        (
            Reason::Qualified {
                score,
                threshold,
                threshold_id,
                trigger,
            },
            Some(account),
        ) => Reason::AccountQualified {
            account_id: account.to_string(),
            score,
            threshold,
            threshold_id,
            trigger,
        },
        (other, _) => other,
    };
    if qualifies {
        let resolved = resolved.cloned().expect("qualified with a threshold");
        open_cycle(
            state,
            ctx,
            slot,
            at,
            resolved,
            crossing_campaign,
            None,
            reason,
            out,
        );
        return;
    }
    let hold = !matches!(reason, Reason::BelowThreshold { .. } | Reason::NoScore);
    let person = state.persons.at_mut(slot);
    if !hold {
        person.open_hold = 0;
        if person.last_hold.take().is_some() {
            state.touch_hold(slot);
        }
        return;
    }
    // The open cycle's hold, recorded: what `unchanged` may skip from now on.
    person.open_hold = match (&reason, person.open_cycle()) {
        (Reason::OpenCycle { external_id }, Some(open)) if *external_id == open.external_id => {
            open.number
        }
        _ => 0,
    };
    let changed = person.last_hold.as_deref().is_none_or(|h| !h.is(&reason));
    if changed {
        person.last_hold = Some(Box::new(Hold::from(reason.clone())));
        state.touch_hold(slot);
    }
    remember_account_hold(state, policy, slot, &reason);
    if changed {
        record(out, at, state.persons.id(slot), reason);
    }
}

#[allow(clippy::too_many_arguments)]
fn open_cycle(
    state: &mut EngineState,
    ctx: &Context<'_>,
    slot: u32,
    at: Timestamp,
    resolved: Arc<Resolved>,
    crossing_campaign: Option<&Campaign>,
    hand_raise: Option<HandRaise>,
    reason: Reason,
    out: &mut Vec<Decision>,
) {
    let policy = ctx.policy;
    let id = state.persons.id(slot).to_string();
    let number = state.persons.at(slot).cycles.len() as u32 + 1;
    let external_id = cycle_external_id(&id, number);
    // Edits of this record read before the cycle existed stay versions seen.
    let crm_versions = match state.meta.unknown_cycle_edits.remove(&external_id) {
        Some(versions) => {
            state.dirty.meta = true;
            versions
        }
        None => Vec::new(),
    };
    let person = state.persons.at(slot);
    let facts = person.facts.as_deref().expect("facts");
    // A score crossing comes from the person's MAP lead. A hand-raise may come from a MAP
    // lead linked to the record that does not carry its score (a duplicate), or before any
    // score: the record then says 0.
    let lead_id = person.map_lead;
    let scores = lead_id
        .and_then(|l| state.map_leads.get(&l))
        .map(|l| &l.scores);
    let score = score_of(state, policy, person, at).unwrap_or(0.0);
    let account_id = account_of(policy, person);
    let campaign = crossing_campaign
        .or(scores.and_then(|s| s.last_campaign.as_ref()))
        .cloned();
    let team = policy.team_for(&facts.attributes);
    // Seen at once: the SLA starts now. Otherwise it waits for the record to be written;
    // a cycle rebuilt from history never gets one.
    let sla = team
        .filter(|_| ctx.visibility == Visibility::AtDecision && !ctx.backfill)
        .map(|t| t.sla_from(at));
    let crm = facts.crm.clone();
    // An account's MQL is its owner's.
    let owner_id: Option<String> = account_id
        .as_ref()
        .and_then(|a| state.accounts.get(a))
        .and_then(|a| a.owner_id.as_deref())
        .or(facts.owner_id.as_deref())
        .map(String::from);
    let prior_mql_at = facts.prior_mql_at;
    let cycle = Cycle {
        external_id: external_id.clone(),
        crm: crm.clone(),
        map_lead_id: lead_id,
        number,
        status: CycleStatus::Open,
        score,
        threshold: resolved.score,
        threshold_id: resolved.threshold_id.clone(),
        segment: resolved.segment.clone(),
        campaign,
        owner_at_mql: owner_id.clone(),
        owner_id: owner_id.clone(),
        team: team.map(|t| t.name.clone()),
        mql_at: at,
        sal_at: None,
        closed_at: None,
        rejection_reason: None,
        outcome: None,
        sla_due_at: sla.map(|s| s.due),
        reassign_at: sla.and_then(|s| s.reassign_at),
        overdue: false,
        reassignments: 0,
        backfilled: ctx.backfill,
        written_at: None,
        hand_raise: hand_raise.map(Box::new),
        account_id,
        note: None,
        crm_modified_at: None,
        crm_versions: crm_versions.into_boxed_slice(),
    };
    if let Some(clock) = sla {
        schedule_sla(state, &external_id, clock);
    }
    let alert = team.map(|t| t.alert).unwrap_or_default();
    let person = state.persons.at_mut(slot);
    person.last_hold = None;
    person.open_hold = 0;
    // Most people have one or two cycles: grow by one, not by Vec's minimum of four (four
    // cycles are 2 KiB, most of a person's memory, and fresh pages for every new MQL).
    person.cycles.reserve_exact(1);
    person.cycles.push(cycle.clone());
    let stamps: &mut Stamps = &mut person.stamps;
    // A cycle rebuilt from history leaves the person's status as the CRM holds it today.
    if !ctx.backfill {
        stamps.status = Some(policy.mql_status.as_str().into());
    }
    stamps.mql_recent = Some(at);
    // The org's own earlier MQL date, when the CRM kept one before mqlsync, stays original.
    let first = *stamps.mql_original.get_or_insert(at);
    if let Some(prior) = prior_mql_at.filter(|p| *p < first) {
        stamps.mql_original = Some(prior);
    }
    stamps.mql_count += 1;
    let stamps = stamps.clone();
    // Where the account's open cycle is now (it passed `held`: no other is open). Whatever
    // the cycle's kind: an account whose people have none open knows it as a fact.
    if let Some(account) = state.person_account(state.persons.at(slot)) {
        state.account_scores.opened(account, slot);
    }
    state.touch_person(slot);
    // Its id, remembered once the opening moved the account's epoch: the account's other
    // people's holds name it without reading this person.
    if cycle.account_id.is_some()
        && !state.no_shortcuts
        && let Some(account) = state.person_account(state.persons.at(slot))
    {
        state
            .account_scores
            .remember_open_cycle(account, &external_id);
    }
    state.cycle_owner.insert(external_id.clone(), slot);
    state.dirty.cycles.push(external_id.clone());
    out.push(Decision {
        at,
        subject: id.clone(),
        action: Action::OpenCycle {
            cycle: Box::new(cycle),
        },
        reason: reason.clone(),
    });
    // A cycle rebuilt from history asks nothing of its rep: no alert.
    let notify = (alert != super::model::AlertChannel::None && !ctx.backfill)
        .then_some(owner_id)
        .flatten();
    out.push(Decision {
        at,
        subject: match notify {
            Some(_) => id.clone(),
            None => id,
        },
        action: Action::StampPerson {
            crm: crm.clone(),
            stamps: Box::new(stamps),
        },
        reason: reason.clone(),
    });
    if let Some(owner_id) = notify {
        out.push(Decision {
            at,
            subject: state.persons.id(slot).to_string(),
            action: Action::Notify {
                owner_id,
                external_id,
                crm,
                channel: alert,
            },
            reason,
        });
    }
}

/// Mutable access to a cycle by external id, with its person's id.
fn cycle_mut<'a>(state: &'a mut EngineState, external_id: &str) -> Option<(String, &'a mut Cycle)> {
    let slot = *state.cycle_owner.get(external_id)?;
    let owner = state.persons.id(slot).to_string();
    let person = state.persons.at_mut(slot);
    person.open_hold = 0;
    let cycle = person
        .cycles
        .iter_mut()
        .find(|c| c.external_id == external_id)?;
    Some((owner, cycle))
}

fn push_update(
    state: &mut EngineState,
    out: &mut Vec<Decision>,
    at: Timestamp,
    subject: &str,
    cycle: Cycle,
    reason: Reason,
) {
    state.dirty.cycles.push(cycle.external_id.clone());
    state.touch_person_id(subject);
    out.push(Decision {
        at,
        subject: subject.to_string(),
        action: Action::UpdateCycle {
            cycle: Box::new(cycle),
        },
        reason,
    });
}

fn push_stamps(
    state: &mut EngineState,
    out: &mut Vec<Decision>,
    at: Timestamp,
    id: &str,
    reason: Reason,
) {
    let person = &state.persons[id];
    let Some(crm) = person
        .facts
        .as_ref()
        .map(|f| f.crm.clone())
        .or_else(|| person.cycles.last().map(|c| c.crm.clone()))
    else {
        return;
    };
    out.push(Decision {
        at,
        subject: id.to_string(),
        action: Action::StampPerson {
            crm,
            stamps: Box::new(Stamps::clone(&person.stamps)),
        },
        reason,
    });
}

/// Closes a person's open cycle as Converted.
fn convert(state: &mut EngineState, id: &str, at: Timestamp, by: &str, out: &mut Vec<Decision>) {
    let Some(person) = state.persons.get_mut(id) else {
        return;
    };
    let Some(cycle) = person.cycles.last_mut().filter(|c| c.status.is_open()) else {
        return;
    };
    cycle.status = CycleStatus::Converted;
    cycle.outcome = Some(Outcome::Success);
    cycle.closed_at = Some(at);
    let cycle = cycle.clone();
    push_update(
        state,
        out,
        at,
        id,
        cycle,
        Reason::Converted { by: by.to_string() },
    );
}

fn on_cycle_edit(
    state: &mut EngineState,
    ctx: &Context<'_>,
    edit: &CycleEdit,
    out: &mut Vec<Decision>,
) {
    let policy = ctx.policy;
    let at = edit.modified_at;
    let Some((owner, cycle)) = cycle_mut(state, &edit.external_id) else {
        unknown_cycle_edit(state, edit, out);
        return;
    };
    // A version read before (a replay, or a poll's look-back) changes nothing.
    if cycle.crm_modified_at == Some(at) {
        return;
    }
    let mut versions = std::mem::take(&mut cycle.crm_versions).into_vec();
    let new = remember_version(&mut versions, at);
    cycle.crm_versions = versions.into_boxed_slice();
    if !new {
        return;
    }
    // Out of order: older than a version already applied, or than the MQL itself (it
    // cannot be about this cycle). Not applied, but recorded, once.
    let applied_at = cycle.crm_modified_at.filter(|applied| *applied > at);
    if applied_at.is_some() || at < cycle.mql_at {
        let reason = Reason::EditStale {
            external_id: edit.external_id.clone(),
            edited_at: at,
            applied_at,
            mql_at: cycle.mql_at,
        };
        state.dirty.cycles.push(edit.external_id.clone());
        state.touch_person_id(&owner);
        record(out, at, &owner, reason);
        return;
    }
    cycle.crm_modified_at = Some(at);
    state.dirty.cycles.push(edit.external_id.clone());
    let (owner, cycle) = cycle_mut(state, &edit.external_id)
        .map(|(o, c)| (o, c.clone()))
        .expect("the cycle just found");
    let from = cycle.status;
    let to = edit.status;
    let by = edit.modified_by.clone();
    let mut next = cycle.clone();
    if edit.owner_id.is_some() && edit.owner_id != cycle.owner_id {
        next.owner_id = edit.owner_id.clone();
        record(
            out,
            at,
            &owner,
            Reason::OwnerChanged {
                to: edit.owner_id.clone(),
            },
        );
    }
    let refuse = |problem: String, mut next: Cycle| -> (Cycle, Reason) {
        next.note = Some(problem.clone());
        (next, Reason::EditRefused { problem })
    };
    let (next, reason, stamped) = match (from, to) {
        (a, b) if a == b => {
            if to == CycleStatus::Rejected
                && edit.rejection_reason.is_some()
                && edit.rejection_reason != cycle.rejection_reason
            {
                next.rejection_reason = edit.rejection_reason.clone();
                next.outcome = edit
                    .rejection_reason
                    .as_deref()
                    .and_then(|r| policy.outcome_of(r));
            }
            store_cycle(state, &owner, next);
            return;
        }
        (CycleStatus::Open, CycleStatus::Working) => {
            next.status = CycleStatus::Working;
            next.sal_at = Some(at);
            next.note = None;
            let person = state.persons.get_mut(&owner).expect("person");
            person.stamps.sal_recent = Some(at);
            person.stamps.sal_original.get_or_insert(at);
            if let Some(status) = &policy.sal_status {
                person.stamps.status = Some(status.as_str().into());
            }
            (next, Reason::StatusChanged { from, to, by }, true)
        }
        (CycleStatus::Open | CycleStatus::Working, CycleStatus::Rejected) => {
            let reason_text = edit
                .rejection_reason
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty());
            match reason_text {
                None => {
                    let (n, r) = refuse(
                        "Rejected without a rejection reason: set Rejection Reason and reject again".to_string(),
                        next,
                    );
                    (n, r, false)
                }
                Some(text) => {
                    let outcome = policy.outcome_of(text);
                    if outcome.is_none() {
                        record(
                            out,
                            at,
                            &owner,
                            Reason::RejectionReasonUnmapped {
                                reason: text.to_string(),
                            },
                        );
                    }
                    next.status = CycleStatus::Rejected;
                    next.rejection_reason = Some(text.to_string());
                    next.outcome = outcome;
                    next.closed_at = Some(at);
                    next.note = None;
                    let person = state.persons.get_mut(&owner).expect("person");
                    if let Some(rule) =
                        outcome.and_then(|o| policy.outcomes.get(&o).map(|p| (o, p)))
                    {
                        let (o, p) = rule;
                        if p.cooldown.is_positive() {
                            person.cooldown = Some(Box::new((at + p.cooldown, o)));
                        }
                        if let Some(status) = &p.person_status {
                            person.stamps.status = Some(status.as_str().into());
                        }
                    }
                    (next, Reason::StatusChanged { from, to, by }, true)
                }
            }
        }
        (CycleStatus::Open | CycleStatus::Working, CycleStatus::Converted) => {
            next.status = CycleStatus::Converted;
            next.outcome = Some(Outcome::Success);
            next.closed_at = Some(at);
            next.note = None;
            (next, Reason::StatusChanged { from, to, by }, false)
        }
        (CycleStatus::Working, CycleStatus::Open) => {
            let (n, r) = refuse(
                "An accepted MQL cannot go back to Open; reject it with a reason instead"
                    .to_string(),
                next,
            );
            (n, r, false)
        }
        _ => {
            let (n, r) = refuse(
                format!(
                    "This MQL is closed ({}); a new MQL opens a new cycle",
                    from.as_str()
                ),
                next,
            );
            (n, r, false)
        }
    };
    store_cycle(state, &owner, next.clone());
    push_update(state, out, at, &owner, next, reason.clone());
    if stamped {
        push_stamps(state, out, at, &owner, reason);
    }
}

/// Adds a CRM version to a record's ascending list; false if it is there already.
fn remember_version(versions: &mut Vec<Timestamp>, at: Timestamp) -> bool {
    match versions.binary_search(&at) {
        Ok(_) => false,
        Err(i) => {
            versions.insert(i, at);
            true
        }
    }
}

/// An edit of an MQL record no cycle here has: recorded once per version, under the CRM id
/// the external id names (`{crm id}-{number}`), where `explain` of that id finds it.
fn unknown_cycle_edit(state: &mut EngineState, edit: &CycleEdit, out: &mut Vec<Decision>) {
    let versions = state
        .meta
        .unknown_cycle_edits
        .entry(edit.external_id.clone())
        .or_default();
    if !remember_version(versions, edit.modified_at) {
        return;
    }
    state.dirty.meta = true;
    let subject = edit
        .external_id
        .rsplit_once('-')
        .filter(|(id, number)| !id.is_empty() && number.parse::<u32>().is_ok())
        .map_or(edit.external_id.as_str(), |(id, _)| id);
    record(
        out,
        edit.modified_at,
        subject,
        Reason::EditUnknownCycle {
            external_id: edit.external_id.clone(),
            edited_at: edit.modified_at,
        },
    );
}

fn store_cycle(state: &mut EngineState, owner: &str, cycle: Cycle) {
    state.dirty.cycles.push(cycle.external_id.clone());
    state.touch_person_id(owner);
    if let Some(slot) = state.persons.get_mut(owner).and_then(|p| {
        p.cycles
            .iter_mut()
            .find(|c| c.external_id == cycle.external_id)
    }) {
        *slot = cycle;
    }
}

fn sla_due(
    state: &mut EngineState,
    _ctx: &Context<'_>,
    external_id: &str,
    at: Timestamp,
    out: &mut Vec<Decision>,
) {
    let Some((owner, cycle)) = cycle_mut(state, external_id) else {
        return;
    };
    if cycle.status != CycleStatus::Open || cycle.overdue || cycle.sla_due_at != Some(at) {
        return;
    }
    cycle.overdue = true;
    let cycle = cycle.clone();
    push_update(
        state,
        out,
        at,
        &owner,
        cycle,
        Reason::SlaOverdue { due: at },
    );
}

fn reassign(
    state: &mut EngineState,
    ctx: &Context<'_>,
    external_id: &str,
    at: Timestamp,
    out: &mut Vec<Decision>,
) {
    let Some((_, cycle)) = cycle_mut(state, external_id) else {
        return;
    };
    if cycle.status != CycleStatus::Open || cycle.reassign_at != Some(at) {
        return;
    }
    let Some(team) = cycle
        .team
        .as_deref()
        .and_then(|name| ctx.policy.team_named(name))
    else {
        return;
    };
    let current = cycle.owner_id.clone();
    let candidates: Vec<&String> = team
        .pool
        .iter()
        .filter(|o| Some(*o) != current.as_ref())
        .collect();
    if candidates.is_empty() {
        return;
    }
    let position = state.meta.round_robin.entry(team.name.clone()).or_insert(0);
    let next_owner = candidates[*position % candidates.len()].clone();
    *position = (*position + 1) % team.pool.len().max(1);
    state.dirty.meta = true;
    let (owner, cycle) = cycle_mut(state, external_id).expect("cycle");
    cycle.owner_id = Some(next_owner.clone());
    cycle.reassignments += 1;
    cycle.overdue = false;
    let clock = team.sla_from(at);
    cycle.sla_due_at = Some(clock.due);
    cycle.reassign_at = clock.reassign_at;
    let cycle = cycle.clone();
    schedule_sla(state, external_id, clock);
    let reason = Reason::Reassigned {
        from: current,
        to: next_owner.clone(),
        count: cycle.reassignments,
    };
    let crm: CrmRef = cycle.crm.clone();
    push_update(state, out, at, &owner, cycle, reason.clone());
    if team.alert != super::model::AlertChannel::None {
        out.push(Decision {
            at,
            subject: owner.clone(),
            action: Action::Notify {
                owner_id: next_owner,
                external_id: external_id.to_string(),
                crm,
                channel: team.alert,
            },
            reason,
        });
    }
}

/// Arms the timers of a cycle's SLA clock.
fn schedule_sla(state: &mut EngineState, external_id: &str, clock: SlaClock) {
    state
        .timers
        .insert(clock.due, Timer::SlaDue(external_id.to_string()));
    if let Some(when) = clock.reassign_at {
        state
            .timers
            .insert(when, Timer::Reassign(external_id.to_string()));
    }
}

/// The SLA a cycle gets when its record is written at `at`: only an Open cycle whose SLA
/// waits for its record (first write, not backfilled, no SLA started at its decision) and
/// whose team the policy knows. The writer asks this to put `SLA_Due__c` on that first write.
pub fn sla_when_written(policy: &Policy, cycle: &Cycle, at: Timestamp) -> Option<SlaClock> {
    let waits = cycle.written_at.is_none()
        && cycle.status == CycleStatus::Open
        && !cycle.backfilled
        && cycle.sla_due_at.is_none()
        && cycle.reassign_at.is_none();
    let team = cycle
        .team
        .as_deref()
        .and_then(|name| policy.team_named(name))?;
    waits.then(|| team.sla_from(at))
}

/// What a report of a cycle's record written changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// It was known written already: a replay.
    Replay,
    /// `written_at` is set; the cycle's SLA was not waiting for it (closed, backfilled,
    /// without a team, or started at its decision).
    Recorded,
    /// `written_at` is set and the SLA runs from it.
    SlaStarted(SlaClock),
}

/// Marks a cycle's record as written at `at`, once, starting its SLA there when it waits for
/// it ([`sla_when_written`]). The engine applies it to its cycle on [`Event::CycleWritten`];
/// the writer to the copy it sends, so that the record carries the due the engine keeps.
pub fn mark_written(policy: &Policy, cycle: &mut Cycle, at: Timestamp) -> Written {
    if cycle.written_at.is_some() {
        return Written::Replay;
    }
    let sla = sla_when_written(policy, cycle, at);
    cycle.written_at = Some(at);
    match sla {
        Some(clock) => {
            cycle.sla_due_at = Some(clock.due);
            cycle.reassign_at = clock.reassign_at;
            Written::SlaStarted(clock)
        }
        None => Written::Recorded,
    }
}

/// The writer's report that a cycle's record reached the CRM. Nothing is written back: the
/// record already carries the SLA due the writer computed with [`mark_written`]. A report of
/// a cycle this store does not have changes nothing (the writer only writes its own).
fn on_cycle_written(
    state: &mut EngineState,
    ctx: &Context<'_>,
    written: &CycleWritten,
    out: &mut Vec<Decision>,
) {
    let Some((owner, cycle)) = cycle_mut(state, &written.external_id) else {
        return;
    };
    let outcome = mark_written(ctx.policy, cycle, written.at);
    if outcome == Written::Replay {
        return;
    }
    state.dirty.cycles.push(written.external_id.clone());
    state.touch_person_id(&owner);
    if let Written::SlaStarted(clock) = outcome {
        schedule_sla(state, &written.external_id, clock);
        record(
            out,
            written.at,
            &owner,
            Reason::SlaStarted {
                written_at: written.at,
                due: clock.due,
            },
        );
    }
}
