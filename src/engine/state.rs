//! What the engine remembers between events: thresholds, people, MAP leads with their
//! scores, opportunities, cycles, timers and round-robin positions. Plain data that the
//! store saves and loads; the indexes (cycle owners, people by account, timers) are rebuilt
//! on load.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::model::{
    AccountFacts, CrmId, CrmRef, Cycle, MapActivity, Opportunity, Outcome, PersonFacts, Reason,
    Stamps, Threshold,
};
use super::score::{MaybeInstant, Scores};
use super::thresholds::{Resolved, Resolver};

/// A fast, deterministic hasher for the engine's maps (rustc's Fx word mixing, with a
/// splitmix64 finish). Keys are CRM
/// and MAP ids, not attacker-chosen input, so SipHash's flood resistance buys nothing here
/// and costs a sixth of the hot path; deterministic hashing also means no run depends on a
/// random seed.
#[derive(Clone, Copy, Default)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ (rest.len() as u64) << 59);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.add(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    /// A multiply only mixes upwards, and ids differ in their last characters (the high
    /// bytes of a word), so the low bits hashbrown indexes by would barely vary: finish with
    /// the splitmix64 finaliser, which spreads every bit over all of them.
    #[inline]
    fn finish(&self) -> u64 {
        let mut z = self.hash;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A person's last hold decision as the person keeps it: the hold of an open cycle (nearly
/// every hold: a person at or above the threshold while their own cycle or their account's
/// is open) by the cycle's id alone, any other reason whole. Boxed by the person, it is 24
/// bytes where a whole reason is 104: the engine bench records about 100,000 holds, fresh
/// memory each. Saved and loaded as the reason itself, so the store's rows are the same.
#[derive(Clone, Debug, PartialEq)]
pub enum Hold {
    OpenCycle(compact_str::CompactString),
    Other(Box<Reason>),
}

impl Hold {
    /// Whether this is the hold `reason` would record.
    pub fn is(&self, reason: &Reason) -> bool {
        match (self, reason) {
            (Hold::OpenCycle(id), Reason::OpenCycle { external_id }) => id == external_id,
            (Hold::Other(own), other) => **own == *other,
            _ => false,
        }
    }

    /// The id of the open cycle this hold names, if it is one's.
    pub fn open_cycle(&self) -> Option<&compact_str::CompactString> {
        match self {
            Hold::OpenCycle(id) => Some(id),
            Hold::Other(_) => None,
        }
    }

    /// The reason as it was recorded.
    pub fn reason(&self) -> Reason {
        match self {
            Hold::OpenCycle(id) => Reason::OpenCycle {
                external_id: id.clone(),
            },
            Hold::Other(reason) => (**reason).clone(),
        }
    }
}

impl From<Reason> for Hold {
    fn from(reason: Reason) -> Hold {
        match reason {
            Reason::OpenCycle { external_id } => Hold::OpenCycle(external_id),
            other => Hold::Other(Box::new(other)),
        }
    }
}

impl Serialize for Hold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.reason().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hold, D::Error> {
        Reason::deserialize(d).map(Hold::from)
    }
}

/// A hash map with [`FxHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// A hash set with [`FxHasher`].
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// One CRM lead or contact.
///
/// Laid out for the score hot path: the first cache line holds everything the common
/// "nothing changes" check reads (the MAP lead, the cached threshold, whether a hold is
/// recorded and whether it is the open cycle's), so that check touches no other memory;
/// the rest is boxed or comes after.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[repr(C, align(64))]
pub struct PersonState {
    /// The MAP lead whose score this person carries.
    pub map_lead: Option<i64>,
    /// The threshold score of `resolved`, valid while `cached_generation` is the low 32
    /// bits of the threshold generation plus one (0: none cached). 32 bits keep this line
    /// at 64 bytes; a stale entry would need 2^32 threshold changes in one process to match.
    #[serde(skip)]
    pub(crate) cached_threshold: f64,
    #[serde(skip)]
    pub(crate) cached_generation: u32,
    /// The number of the open cycle whose "open cycle" hold is recorded in `last_hold`, or
    /// 0. Set only after checking both; cleared whenever the hold or a cycle changes.
    #[serde(skip)]
    pub(crate) open_hold: u32,
    /// Every cycle, oldest first; at most the last one is open.
    pub cycles: Vec<Cycle>,
    /// The reason of the last hold decision, so the same hold is not recorded twice.
    pub last_hold: Option<Box<Hold>>,
    pub facts: Option<Box<PersonFacts>>,
    /// Boxed, and absent while empty: most people never become MQLs.
    pub stamps: Sparse<Stamps>,
    /// No new MQL before this instant (after a rejection), and the outcome that set it.
    /// Boxed: rare, and inline it would cost every person 32 bytes.
    pub cooldown: Option<Box<(Timestamp, Outcome)>>,
    #[serde(skip)]
    pub(crate) resolved: Option<(u64, Arc<Resolved>)>,
    /// Listed in [`Dirty::persons`] since the store last saved.
    #[serde(skip)]
    pub(crate) dirty: bool,
    /// Under account scoring, the slot of the account of `facts` in
    /// [`EngineState::account_scores`], once looked up.
    #[serde(skip)]
    pub(crate) account: AccountSlot,
}

/// Where a person's account sits in [`EngineState::account_scores`], kept beside the person
/// so that account scoring reaches the account's record without hashing its id. Unknown
/// until looked up (after a load, or under another score source), and again whenever the
/// person's facts are replaced (the account may be another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AccountSlot(u32);

impl AccountSlot {
    pub(crate) const UNKNOWN: AccountSlot = AccountSlot(u32::MAX);

    pub(crate) fn get(self) -> Option<u32> {
        (self != AccountSlot::UNKNOWN).then_some(self.0)
    }
}

impl Default for AccountSlot {
    fn default() -> AccountSlot {
        AccountSlot::UNKNOWN
    }
}

/// The hot line is one cache line, and the record two: what most people never use is boxed.
const _: () = assert!(std::mem::offset_of!(PersonState, facts) == 64);
const _: () = assert!(std::mem::size_of::<PersonState>() == 128);

/// A part of a person that most people leave empty: no allocation until it is first
/// changed, and none on load while it is empty. Reads as the empty value when absent;
/// saved and compared as the value itself.
#[derive(Clone, Default)]
pub struct Sparse<T>(Option<Box<T>>);

/// The empty value a [`Sparse`] reads as.
pub trait Empty: Default + PartialEq + 'static {
    fn empty() -> &'static Self;
}

impl Empty for Stamps {
    fn empty() -> &'static Stamps {
        static EMPTY: Stamps = Stamps {
            status: None,
            mql_recent: None,
            mql_original: None,
            sal_recent: None,
            sal_original: None,
            mql_count: 0,
        };
        &EMPTY
    }
}

impl<T: Empty> Sparse<T> {
    pub fn new(value: T) -> Self {
        if value == *T::empty() {
            Sparse(None)
        } else {
            Sparse(Some(Box::new(value)))
        }
    }
}

impl<T: Empty> std::ops::Deref for Sparse<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::empty())
    }
}

impl<T: Empty> std::ops::DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: Empty> PartialEq for Sparse<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Empty + std::fmt::Debug> std::fmt::Debug for Sparse<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Empty + Serialize> Serialize for Sparse<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Sparse<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Sparse::new)
    }
}

impl PersonState {
    pub fn open_cycle(&self) -> Option<&Cycle> {
        self.cycles.last().filter(|c| c.status.is_open())
    }
}

/// The CRM people, densely: records in a vector, found by CRM id through one index, so
/// that a MAP lead can keep its person's slot and a score event reaches the person without
/// hashing a string. Slots are never reused (people are never removed). Iteration follows
/// insertion order, which is deterministic; what reaches decisions still sorts ids.
///
/// The index holds slots only and finds an id by comparing `ids[slot]`, so each id is stored
/// once (a map keyed by the id kept a second copy: about 80 bytes a person).
#[derive(Clone, Default)]
pub struct Persons {
    index: hashbrown::HashTable<u32>,
    ids: Vec<CrmId>,
    records: Vec<PersonState>,
}

impl std::fmt::Debug for Persons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

fn id_hash(id: &str) -> u64 {
    use std::hash::BuildHasher;
    BuildHasherDefault::<FxHasher>::default().hash_one(id)
}

impl Persons {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The slot of a person, if known.
    pub fn slot(&self, id: &str) -> Option<u32> {
        self.index
            .find(id_hash(id), |slot| self.ids[*slot as usize] == id)
            .copied()
    }

    pub fn get(&self, id: &str) -> Option<&PersonState> {
        self.slot(id).map(|s| &self.records[s as usize])
    }

    /// A person, to change. Forgets the person's `open_hold` summary: whatever the caller
    /// changes, the next evaluation checks afresh.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut PersonState> {
        let slot = self.slot(id)?;
        let person = &mut self.records[slot as usize];
        person.open_hold = 0;
        Some(person)
    }

    /// The person in a slot [`Persons::slot`] handed out.
    pub fn at(&self, slot: u32) -> &PersonState {
        &self.records[slot as usize]
    }

    pub(crate) fn at_mut(&mut self, slot: u32) -> &mut PersonState {
        &mut self.records[slot as usize]
    }

    /// The CRM id of the person in a slot.
    pub fn id(&self, slot: u32) -> &str {
        &self.ids[slot as usize]
    }

    /// Asks for the CRM id of the person in a slot without waiting for it: an evaluation
    /// names the person in its decision after it has read their record (the ids are a vector
    /// of their own, one miss more at the end of most evaluations).
    pub(crate) fn warm_id(&self, slot: u32) {
        if let Some(id) = self.ids.get(slot as usize) {
            prefetch((id as *const CrmId).cast());
        }
    }

    /// Lists the person in a slot for the store, once per batch: a flag test, not a set
    /// insert of a copied id.
    #[inline]
    pub(crate) fn touch(&mut self, slot: u32, dirty: &mut Dirty) {
        let person = &mut self.records[slot as usize];
        if !person.dirty {
            person.dirty = true;
            dirty.persons.push(slot);
        }
    }

    /// The slot of a person, adding an empty record when the id is new.
    pub fn slot_or_insert(&mut self, id: &str) -> u32 {
        if let Some(slot) = self.slot(id) {
            return slot;
        }
        let slot = u32::try_from(self.records.len()).expect("fewer than 2^32 people");
        self.ids.push(id.into());
        self.records.push(PersonState::default());
        let ids = &self.ids;
        self.index
            .insert_unique(id_hash(id), slot, |s| id_hash(&ids[*s as usize]));
        slot
    }

    /// Gives back the capacity growth left unused, after a load: up to half of the records
    /// vector, and most of each cycle list (a vector's first push makes room for four, and a
    /// cycle is about 500 bytes; the engine itself adds cycles with `reserve_exact`).
    pub fn shrink_to_fit(&mut self) {
        for person in &mut self.records {
            person.cycles.shrink_to_fit();
        }
        self.records.shrink_to_fit();
        self.ids.shrink_to_fit();
        let ids = &self.ids;
        self.index.shrink_to_fit(|s| id_hash(&ids[*s as usize]));
    }

    /// The person with this id, added empty when new.
    pub fn get_or_default(&mut self, id: &str) -> &mut PersonState {
        let slot = self.slot_or_insert(id);
        let person = &mut self.records[slot as usize];
        person.open_hold = 0;
        person
    }

    /// Sets a person's record, adding it when new.
    pub fn insert(&mut self, id: &str, person: PersonState) {
        *self.get_or_default(id) = person;
    }

    /// `(id, person)` in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&CrmId, &PersonState)> {
        self.ids.iter().zip(&self.records)
    }

    pub fn values(&self) -> impl Iterator<Item = &PersonState> {
        self.records.iter()
    }
}

impl std::ops::Index<&str> for Persons {
    type Output = PersonState;

    fn index(&self, id: &str) -> &PersonState {
        self.get(id)
            .unwrap_or_else(|| panic!("no person {id} in the engine state"))
    }
}

impl std::ops::Index<&String> for Persons {
    type Output = PersonState;

    fn index(&self, id: &String) -> &PersonState {
        &self[id.as_str()]
    }
}

impl std::ops::Index<&CrmId> for Persons {
    type Output = PersonState;

    fn index(&self, id: &CrmId) -> &PersonState {
        &self[id.as_str()]
    }
}

impl<'a> IntoIterator for &'a Persons {
    type Item = (&'a CrmId, &'a PersonState);
    type IntoIter = std::iter::Zip<std::slice::Iter<'a, CrmId>, std::slice::Iter<'a, PersonState>>;

    fn into_iter(self) -> Self::IntoIter {
        self.ids.iter().zip(&self.records)
    }
}

/// What a MAP lead's score change can be decided by without reading its person: a copy
/// of the person's cached threshold and of whether the person is quiet below it (no hold to
/// clear) or above it (its open cycle's hold recorded). Set after the person was read;
/// cleared whenever the person changes ([`EngineState::touch_person`]) or is relinked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gate {
    /// The person's `cached_generation`; 0: no gate.
    pub(crate) generation: u32,
    pub(crate) quiet_below: bool,
    pub(crate) quiet_above: bool,
    /// Under account scoring: the slot of the person's account in
    /// [`EngineState::account_scores`] ([`Gate::NO_ACCOUNT`]: none; [`Gate::NOT_ACCOUNTED`]:
    /// the gate was not set under account scoring) and the account's epoch when the gate was
    /// set. The quiet flags then speak of the account's score.
    pub(crate) account: u32,
    pub(crate) account_epoch: u32,
    pub(crate) threshold: f64,
}

impl Gate {
    /// The person has no account: their own score decides.
    pub(crate) const NO_ACCOUNT: u32 = u32::MAX - 1;
    /// Not set under account scoring: says nothing of an account.
    pub(crate) const NOT_ACCOUNTED: u32 = u32::MAX;
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            generation: 0,
            quiet_below: false,
            quiet_above: false,
            account: Gate::NOT_ACCOUNTED,
            account_epoch: 0,
            threshold: 0.0,
        }
    }
}

/// One MAP lead.
///
/// `repr(C)` with the fields a Total score change touches first (slot, flags, the score,
/// its version, the last campaign) in the record's first cache line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[repr(C)]
pub struct MapLeadState {
    /// The [`Persons`] slot of `crm`, resolved when the link is applied (and on load).
    #[serde(skip)]
    pub(crate) person: Option<u32>,
    #[serde(skip)]
    pub(crate) gate: Gate,
    /// Listed in [`Dirty::map_leads`] since the store last saved: the link changed.
    #[serde(skip)]
    pub(crate) dirty: bool,
    /// Listed in [`EngineState::unsaved_scores`]: the scores changed since the store's last
    /// score snapshot (the score history holds the changes until then).
    #[serde(skip)]
    pub(crate) unsaved: bool,
    /// Whether the "not linked" hold was recorded already.
    pub unlinked_recorded: bool,
    pub scores: Scores,
    pub crm: Option<CrmRef>,
    pub link_at: MaybeInstant,
    /// The lead's hand-raises seen so far; `None` for the many leads that never raised a
    /// hand a rule names (a pointer each, no allocation).
    pub hand_raise: Option<Box<HandRaiseSeen>>,
}

/// An account's score under account scoring: the total-score changes of its people, as far
/// back as a window may still reach. The score at `t` is the sum of those in `(t - window, t]`.
///
/// Kept in time order with running totals, so a score is a subtraction (the window's start
/// found by a cursor that follows it forward, or a binary search), not a walk over the window
/// (about 50 changes an account in the engine bench, read on every change). Integral points
/// (Marketo's) add up exactly in an `f64`, so the difference of two running totals is the
/// sum itself; fractional points may differ from a direct sum in the last bits. Saved as the
/// changes and their points, in time order.
///
/// Four cache lines, the newest eight changes and the open cycle's id among them: everything
/// a score change in time order reads and writes, and what a hold of the account's people
/// reads, is in the record, so that one early request for its lines
/// ([`AccountScores::warm`]) has it all on the way, with no pointer to follow after it. What
/// every such change reads (the cursor, the flags, the epoch, where the changes end) is the
/// first line; the newest block the next two, of which a change writes one; the open cycle
/// the last. The newest change's instant and total are read from its place in the newest
/// block, not kept twice: with a copy of them, the first line had no room for the rest.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub struct AccountScore {
    /// The instant of the oldest change kept (`i64::MAX`: none), so that a change with
    /// nothing to forget does not read the oldest.
    oldest: i64,
    /// Where the window of the last score taken by [`AccountScore::add_and_score`] starts:
    /// the changes before `cursor` are at or before `cursor_from` (the next score walks
    /// forward from there). Scores are taken at ever later instants, so the start moves
    /// forward a change or two at a time instead of being searched for.
    cursor_from: i64,
    /// While `cursor_known`: the instant of the change at `cursor` (`i64::MAX`: none) and
    /// the running total before it, so that a score reads neither while the window start
    /// has not reached that change.
    cursor_next: i64,
    cursor_before: f64,
    cursor: u32,
    /// Bumped whenever a person of the account with a cycle changes
    /// ([`EngineState::touch_person`]): a MAP lead's gate that copied another number is
    /// stale.
    pub(crate) epoch: u32,
    cursor_known: bool,
    /// Listed in [`Dirty::account_scores`] since the store last saved.
    pub(crate) dirty: bool,
    changes: ChangeBlocks,
    /// The running total before the first change kept (those forgotten, added up).
    base: f64,
    /// Changes forgotten since the running totals were last brought back near zero.
    forgotten: u32,
    /// The [`Persons`] slot of the person of the account whose cycle opened last: where the
    /// account's open cycle, which is at most one, is found without a scan of its people. A
    /// hint, not a record: whoever reads it checks that the cycle is still open and the
    /// person still of the account. [`AccountScore::NO_HINT`]: none, or the account may have
    /// more than one open cycle (a person joined it with theirs, or a load found several):
    /// its people are scanned until its next cycle opens. [`AccountScore::NONE_OPEN`]: a
    /// fact, not a hint: none of the account's people has an open cycle (counted when the
    /// record was made or loaded, and left by every way a person of the account gets one: a
    /// cycle opening, a person joining with theirs), so the first cycle of an account opens
    /// without a scan of its people.
    pub(crate) opened_last: u32,
    /// The id of the account's open cycle as last found, and the account's epoch then
    /// ([`AccountScores::open_cycle_id`]). In the record, not beside it, so that a hold of
    /// one of the account's people reads the lines a score change has just read (or a
    /// hand-raise asked for, [`AccountScores::warm_hold`]), not one more place in memory.
    open_id: Option<(u32, compact_str::CompactString)>,
}

impl Default for AccountScore {
    fn default() -> AccountScore {
        AccountScore {
            oldest: i64::MAX,
            cursor_from: i64::MIN,
            cursor_next: i64::MAX,
            cursor_before: 0.0,
            cursor: 0,
            epoch: 0,
            cursor_known: false,
            dirty: false,
            changes: ChangeBlocks::default(),
            base: 0.0,
            forgotten: 0,
            opened_last: AccountScore::NO_HINT,
            open_id: None,
        }
    }
}

/// One score change of an account: its instant (nanoseconds since the epoch, which covers
/// the years 1678 to 2262) and the running total up to and including it. 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct AccountChange {
    at: i64,
    total: f64,
}

/// Changes per block of [`ChangeBlocks`]: 128 bytes, two cache lines.
const BLOCK: usize = 8;

/// An account's changes, oldest first, in blocks of [`BLOCK`] that never move: a change
/// added takes the next place of the newest block, or a new block, and a block goes when the
/// last of its changes is forgotten. A ring that doubles (a `VecDeque`) copies every change
/// at each doubling and leaves the old buffer behind, fresh memory the next ring of that size
/// may never reuse; in the engine bench's account run that was about a seventh of its samples.
/// The newest block is held in place, not boxed: see [`ChangeBlocks::newest`]. Indexed as a
/// `VecDeque` is (0: the oldest).
///
/// The newest change is always in the newest block (a full one is copied out only when the
/// next change arrives), so where the changes end, and how many full blocks there are, follow
/// from `head` and `len` alone: a change in time order reads neither the list of full blocks
/// nor its length, which is behind a pointer.
#[derive(Clone, Debug, Default)]
#[repr(C)]
struct ChangeBlocks {
    /// The place of the oldest change in the first block (of `full`, or the newest).
    head: u32,
    len: u32,
    /// The full blocks before the newest, oldest first; `None` until the first is full.
    #[allow(
        clippy::box_collection,
        reason = "8 bytes in the record's first line, not a VecDeque's 32: read only off the common path"
    )]
    full: Option<Box<VecDeque<Box<[AccountChange; BLOCK]>>>>,
    /// The newest block, the one the next change goes into, held in place: a change added in
    /// time order writes into the account's own record, whose lines a score change asks for
    /// before it needs them ([`AccountScores::warm`]), not into a block that only the record
    /// can point to (two misses one after the other). When it is full, a copy goes to `full`
    /// and it starts over with the next change. Its places past the newest change hold
    /// nothing kept.
    newest: [AccountChange; BLOCK],
}

impl ChangeBlocks {
    fn len(&self) -> usize {
        self.len as usize
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many full blocks there are: those before the newest change's.
    #[inline]
    fn full_blocks(&self) -> usize {
        match self.len() {
            0 => 0,
            len => (self.head as usize + len - 1) / BLOCK,
        }
    }

    /// The newest change, from its place in the newest block.
    #[inline]
    fn newest_change(&self) -> Option<&AccountChange> {
        match self.len() {
            0 => None,
            len => Some(&self.newest[(self.head as usize + len - 1) % BLOCK]),
        }
    }

    /// Where the change `i` is: the index of its full block (`None`: the newest block) and
    /// its place in that block.
    fn locate(&self, i: usize) -> (Option<usize>, usize) {
        let j = self.head as usize + i;
        let full = self.full_blocks() * BLOCK;
        if j < full {
            (Some(j / BLOCK), j % BLOCK)
        } else {
            (None, j - full)
        }
    }

    /// The full block at `block` (there is one: `locate` said so).
    fn full_block(&self, block: usize) -> &[AccountChange; BLOCK] {
        &self.full.as_ref().expect("a full block located")[block]
    }

    fn full_block_mut(&mut self, block: usize) -> &mut [AccountChange; BLOCK] {
        &mut self.full.as_mut().expect("a full block located")[block]
    }

    fn get(&self, i: usize) -> Option<&AccountChange> {
        if i >= self.len() {
            return None;
        }
        match self.locate(i) {
            (Some(block), place) => Some(&self.full_block(block)[place]),
            (None, place) => Some(&self.newest[place]),
        }
    }

    fn front(&self) -> Option<&AccountChange> {
        self.get(0)
    }

    fn back(&self) -> Option<&AccountChange> {
        self.newest_change()
    }

    #[inline]
    fn push_back(&mut self, change: AccountChange) {
        // The place after the newest change; none left in its block when that is a block's
        // end (with no change, `head` is 0: the first place).
        let end = self.head as usize + self.len();
        if self.len == 0 || !end.is_multiple_of(BLOCK) {
            self.newest[end % BLOCK] = change;
            self.len += 1;
        } else {
            self.spill(change);
        }
    }

    /// [`ChangeBlocks::push_back`] into a full newest block: a copy of it joins the full
    /// ones and `change` starts it over. Once every [`BLOCK`] changes, kept out of the
    /// common path.
    #[inline(never)]
    fn spill(&mut self, change: AccountChange) {
        self.full
            .get_or_insert_default()
            .push_back(Box::new(self.newest));
        self.newest[0] = change;
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<AccountChange> {
        let first = *self.front()?;
        self.len -= 1;
        self.head += 1;
        if self.len == 0 {
            // Nothing kept: no block either.
            *self = ChangeBlocks::default();
        } else if self.head as usize == BLOCK {
            // The first block's last change went, and the block with it (a full one: the
            // newest still holds a change).
            if let Some(full) = self.full.as_mut() {
                full.pop_front();
            }
            self.head = 0;
        }
        Some(first)
    }

    /// Puts `change` at `place` (at most the length), the later changes one place on.
    fn insert(&mut self, place: usize, change: AccountChange) {
        let len = self.len();
        assert!(place <= len, "a change inserted past the newest");
        match self.back().copied() {
            Some(last) if place < len => {
                self.push_back(last);
                for i in (place..len - 1).rev() {
                    self[i + 1] = self[i];
                }
                self[place] = change;
            }
            _ => self.push_back(change),
        }
    }

    /// The first place whose change `pred` rejects, `pred` holding for a prefix (as
    /// `slice::partition_point`).
    fn partition_point(&self, pred: impl Fn(&AccountChange) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if pred(&self[mid]) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    fn iter(&self) -> impl Iterator<Item = &AccountChange> {
        self.full
            .iter()
            .flat_map(|full| full.iter())
            .map(|block| &**block)
            .chain(std::iter::once(&self.newest))
            .flat_map(|block| block.iter())
            .skip(self.head as usize)
            .take(self.len())
    }
}

impl std::ops::Index<usize> for ChangeBlocks {
    type Output = AccountChange;

    fn index(&self, i: usize) -> &AccountChange {
        self.get(i).expect("a change kept")
    }
}

impl std::ops::IndexMut<usize> for ChangeBlocks {
    fn index_mut(&mut self, i: usize) -> &mut AccountChange {
        assert!(i < self.len(), "a change kept");
        match self.locate(i) {
            (Some(block), place) => &mut self.full_block_mut(block)[place],
            (None, place) => &mut self.newest[place],
        }
    }
}

/// Asks the CPU to bring the cache line at `address` closer, without waiting for it.
#[inline(always)]
fn prefetch(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and cannot fault, at
    // any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// An instant in nanoseconds since the epoch, held inside `(i64::MIN, i64::MAX]`.
///
/// In `i64` arithmetic (the seconds and their fraction share a sign), not through jiff's
/// `i128` nanoseconds: it runs on every score change under account scoring.
#[inline]
fn nanos(t: Timestamp) -> i64 {
    t.as_second()
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.subsec_nanosecond()))
        .max(i64::MIN + 1)
}

/// A window in nanoseconds (saturated as [`nanos`] is).
#[inline]
fn window_nanos(window: jiff::SignedDuration) -> i64 {
    window
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(window.subsec_nanos()))
}

/// Equal as saved.
impl PartialEq for AccountScore {
    fn eq(&self, other: &Self) -> bool {
        self.saved() == other.saved()
    }
}

/// The saved form: the changes with their points, oldest first.
#[derive(Serialize, Deserialize)]
struct SavedAccountScore {
    changes: Vec<(Timestamp, f64)>,
}

impl Serialize for AccountScore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SavedAccountScore {
            changes: self.saved(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AccountScore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut saved = SavedAccountScore::deserialize(deserializer)?;
        // Stores written before the changes were kept in time order list them as applied.
        saved.changes.sort_by_key(|(at, _)| *at);
        let mut score = AccountScore::default();
        let mut total = 0.0;
        for (at, points) in saved.changes {
            total += points;
            score.changes.push_back(AccountChange {
                at: nanos(at),
                total,
            });
        }
        score.oldest = score.changes.front().map_or(i64::MAX, |c| c.at);
        Ok(score)
    }
}

impl AccountScore {
    /// See [`AccountScore::opened_last`].
    const NO_HINT: u32 = u32::MAX;
    /// See [`AccountScore::opened_last`].
    const NONE_OPEN: u32 = u32::MAX - 1;

    /// The person whose cycle opened last, when [`AccountScore::opened_last`] names one.
    fn holder_hint(&self) -> Option<u32> {
        Some(self.opened_last).filter(|p| *p < AccountScore::NONE_OPEN)
    }

    /// The instant and running total of the newest change (`i64::MIN` and `base`: none).
    #[inline]
    fn newest(&self) -> (i64, f64) {
        self.changes
            .newest_change()
            .map_or((i64::MIN, self.base), |c| (c.at, c.total))
    }

    /// Adds a change of `delta` points at `at`, and forgets changes no evaluation can reach
    /// any more: those older than two windows before the latest.
    pub fn add(&mut self, at: Timestamp, delta: f64, window: jiff::SignedDuration) {
        let _ = self.add_nanos(nanos(at), delta, window_nanos(window));
    }

    /// [`AccountScore::add`] in nanoseconds. The common case (a change in time order, nothing
    /// to forget) is a few comparisons and a write into the record; a late change, forgetting
    /// and the cursor's moves are out of line, so that the common case is inlined into the
    /// score change without their weight. Gives the running total of the change added when
    /// it is the newest (`None`: a late change), which is the total up to its instant.
    #[inline]
    fn add_nanos(&mut self, t: i64, delta: f64, window: i64) -> Option<f64> {
        let (newest, newest_total) = self.newest();
        let added = if t < newest {
            self.insert_late(t, delta);
            None
        } else {
            if self.cursor as usize == self.changes.len() {
                self.cursor_next = t;
            }
            let total = newest_total + delta;
            self.changes.push_back(AccountChange { at: t, total });
            Some(total)
        };
        if t < self.oldest {
            self.oldest = t;
        }
        let horizon = newest.max(t).saturating_sub(window).saturating_sub(window);
        if self.oldest < horizon {
            self.forget_before(horizon);
            // Forgetting may have brought the running totals back near zero.
            return None;
        }
        added
    }

    /// A change before the newest: in its place, and every later running total moves by its
    /// points.
    #[inline(never)]
    fn insert_late(&mut self, t: i64, delta: f64) {
        let place = self.changes.partition_point(|c| c.at <= t);
        let before = self.total_before(place);
        self.changes.insert(
            place,
            AccountChange {
                at: t,
                total: before + delta,
            },
        );
        for later in place + 1..self.changes.len() {
            self.changes[later].total += delta;
        }
        let cursor = self.cursor as usize;
        if place < cursor {
            self.cursor_known = false;
        } else if place == cursor {
            self.cursor_next = t;
        }
    }

    /// Forgets the changes before `horizon`, which no evaluation can reach any more. The
    /// newest is never forgotten: the horizon is two windows before it.
    #[inline(never)]
    fn forget_before(&mut self, horizon: i64) {
        while let Some(first) = self.changes.front()
            && first.at < horizon
        {
            self.base = first.total;
            self.changes.pop_front();
            self.forgotten += 1;
            match self.cursor.checked_sub(1) {
                Some(cursor) => self.cursor = cursor,
                // The cursor's own change went: the next one is the cursor's, and the
                // total before it is what was forgotten.
                None => {
                    self.cursor_next = self.changes.front().map_or(i64::MAX, |c| c.at);
                    self.cursor_before = self.base;
                }
            }
        }
        self.oldest = self.changes.front().map_or(i64::MAX, |c| c.at);
        // Running totals that only grow would lose the fractions of fractional points:
        // bring them back near zero once as many were forgotten as are kept (amortised).
        if self.forgotten as usize > self.changes.len() && self.base != 0.0 {
            let base = self.base;
            for i in 0..self.changes.len() {
                self.changes[i].total -= base;
            }
            self.cursor_before -= base;
            self.base = 0.0;
            self.forgotten = 0;
        }
    }

    /// [`AccountScore::add`], then the score at `at`: the common case of a score change,
    /// whose window start follows the changes forward. It reads no change of the ring
    /// unless the window start passed one.
    #[inline]
    pub(crate) fn add_and_score(
        &mut self,
        at: Timestamp,
        delta: f64,
        window: jiff::SignedDuration,
    ) -> f64 {
        let (t, window) = (nanos(at), window_nanos(window));
        let added = self.add_nanos(t, delta, window);
        let from = t.saturating_sub(window);
        if from < self.cursor_from || !self.cursor_known || self.cursor_next <= from {
            self.move_cursor(from);
        }
        self.cursor_from = from;
        added.unwrap_or_else(|| self.total_upto(t)) - self.cursor_before
    }

    /// Moves the cursor to the first change after `from`: back by a search when the window
    /// start went back (a late change's score), else forward from where it is, a change or
    /// two (the window start passed them since the last score).
    #[inline(never)]
    fn move_cursor(&mut self, from: i64) {
        if from < self.cursor_from {
            self.cursor = u32::try_from(self.changes.partition_point(|c| c.at <= from))
                .expect("fewer than 2^32 changes");
        }
        let mut cursor = self.cursor as usize;
        while self.changes.get(cursor).is_some_and(|c| c.at <= from) {
            cursor += 1;
        }
        self.cursor = u32::try_from(cursor).expect("fewer than 2^32 changes");
        self.cursor_next = self.changes.get(cursor).map_or(i64::MAX, |c| c.at);
        self.cursor_before = self.total_before(cursor);
        self.cursor_known = true;
    }

    /// The account's score at `t`: the changes in `(t - window, t]`, added up.
    #[inline]
    pub fn at(&self, t: Timestamp, window: jiff::SignedDuration) -> f64 {
        let t = nanos(t);
        let from = t.saturating_sub(window_nanos(window));
        // The window start of the last score taken, when it is this one's and no change
        // joined those before it since.
        let before = if self.cursor_known && from == self.cursor_from && self.cursor_next > from {
            self.cursor_before
        } else {
            self.total_upto(from)
        };
        self.total_upto(t) - before
    }

    /// The running total of the changes at or before `t`: the newest's, unless `t` is
    /// before it (a search, out of line).
    #[inline]
    fn total_upto(&self, t: i64) -> f64 {
        let (newest, newest_total) = self.newest();
        if t >= newest {
            return newest_total;
        }
        self.total_before_search(t)
    }

    /// [`AccountScore::total_upto`] for an instant before the newest change: a binary search
    /// of the changes, kept out of line (a late change's score, an evaluation's window start).
    #[inline(never)]
    fn total_before_search(&self, t: i64) -> f64 {
        self.total_before(self.changes.partition_point(|c| c.at <= t))
    }

    /// The running total before the change at `place`.
    fn total_before(&self, place: usize) -> f64 {
        match place.checked_sub(1) {
            Some(i) => self.changes[i].total,
            None => self.base,
        }
    }

    /// The changes with their points, oldest first.
    fn saved(&self) -> Vec<(Timestamp, f64)> {
        let mut before = self.base;
        self.changes
            .iter()
            .map(|c| {
                let points = c.total - before;
                before = c.total;
                (
                    Timestamp::from_nanosecond(i128::from(c.at)).unwrap_or_default(),
                    points,
                )
            })
            .collect()
    }
}

/// The accounts' scores under account scoring, densely: records in a vector, found by
/// account id through an index, so that a MAP lead's gate can hold an account's slot and a
/// score change reach its account without hashing the id. Accounts are never removed. Equal
/// as a map is.
#[derive(Clone, Debug, Default)]
pub struct AccountScores {
    index: FastMap<CrmId, u32>,
    ids: Vec<CrmId>,
    records: Vec<AccountScore>,
}

impl AccountScores {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn slot(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The slot of this account, added empty when new.
    pub fn slot_or_insert(&mut self, id: &CrmId) -> u32 {
        if let Some(slot) = self.slot(id) {
            return slot;
        }
        let slot = u32::try_from(self.records.len()).expect("fewer than 2^32 accounts");
        self.index.insert(id.clone(), slot);
        self.ids.push(id.clone());
        self.records.push(AccountScore::default());
        slot
    }

    pub fn get(&self, id: &str) -> Option<&AccountScore> {
        self.slot(id).map(|slot| &self.records[slot as usize])
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut AccountScore> {
        self.slot(id).map(|slot| &mut self.records[slot as usize])
    }

    pub fn at(&self, slot: u32) -> &AccountScore {
        &self.records[slot as usize]
    }

    /// Sets an account's score, adding it when new. Its epoch starts over with it: the open
    /// cycle remembered for the old record is forgotten.
    pub fn insert(&mut self, id: CrmId, score: AccountScore) {
        let slot = self.slot_or_insert(&id);
        self.records[slot as usize] = AccountScore {
            open_id: None,
            ..score
        };
    }

    /// Adds `delta` points at `at` to the account in `slot`, listing it for the store once,
    /// and gives its score at `at`. Inlined into the score change, as
    /// [`AccountScore::add_and_score`] is: a call saved and restored the registers of the
    /// score change's own work around about a hundred instructions.
    #[inline]
    pub(crate) fn add_and_score(
        &mut self,
        slot: u32,
        at: Timestamp,
        delta: f64,
        window: jiff::SignedDuration,
        dirty: &mut Dirty,
    ) -> f64 {
        if !self.records[slot as usize].dirty {
            self.list_dirty(slot, dirty);
        }
        self.records[slot as usize].add_and_score(at, delta, window)
    }

    /// Lists the account in `slot` for the store: once between two saves, out of line.
    #[inline(never)]
    fn list_dirty(&mut self, slot: u32, dirty: &mut Dirty) {
        self.records[slot as usize].dirty = true;
        dirty.account_scores.push(self.ids[slot as usize].clone());
    }

    /// A cycle of the person in `person` opened while no other of the account in `slot`
    /// was: the account's open cycle is that person's.
    pub(crate) fn opened(&mut self, slot: u32, person: u32) {
        self.records[slot as usize].opened_last = person;
    }

    /// The account in `slot` may have more than one open cycle now: no hint.
    pub(crate) fn crowded(&mut self, slot: u32) {
        self.records[slot as usize].opened_last = AccountScore::NO_HINT;
    }

    /// What is known of the open cycles of the account in `slot` once they are counted (a
    /// record made, a store loaded): `open` of its people have one, the last counted in
    /// `holder`.
    pub(crate) fn counted(&mut self, slot: u32, open: usize, holder: u32) {
        self.records[slot as usize].opened_last = match open {
            0 => AccountScore::NONE_OPEN,
            1 => holder,
            _ => AccountScore::NO_HINT,
        };
    }

    /// Whether none of the people of the account in `slot` has an open cycle, as a fact
    /// (see [`AccountScore::opened_last`]).
    pub(crate) fn none_open(&self, slot: u32) -> bool {
        self.records[slot as usize].opened_last == AccountScore::NONE_OPEN
    }

    /// Remembers that the account in `slot` has the open cycle `external_id` as it stands:
    /// until its epoch moves (a person of the account with a cycle changed, or one left),
    /// [`AccountScores::open_cycle_id`] answers without reading the holder. Remembered only
    /// while the record names the holder: not for an account that may have two (no hint),
    /// nor for one whose people have none open.
    pub(crate) fn remember_open_cycle(&mut self, slot: u32, external_id: &str) {
        let record = &mut self.records[slot as usize];
        record.open_id = record
            .holder_hint()
            .map(|_| (record.epoch, external_id.into()));
    }

    /// The id of the account's open cycle, if remembered since the account's epoch last
    /// moved: what a hold names without reading the holder's record, its cycles and the id.
    pub(crate) fn open_cycle_id(&self, slot: u32) -> Option<&compact_str::CompactString> {
        let record = &self.records[slot as usize];
        match &record.open_id {
            Some((epoch, id)) if *epoch == record.epoch && record.holder_hint().is_some() => {
                Some(id)
            }
            _ => None,
        }
    }

    /// The person of the account in `slot` whose cycle opened last, when that says where
    /// the account's open cycle is (see [`AccountScore::opened_last`]).
    pub(crate) fn opened_last(&self, slot: u32) -> Option<u32> {
        self.records[slot as usize].holder_hint()
    }

    /// Asks for the record of the account in `slot` (its four cache lines, the newest
    /// changes among them) without waiting for it, so that it comes from memory while the
    /// caller reads other things: a score change of a MAP lead whose index hints this account
    /// reads it after the lead's record, and would otherwise wait for one and then the other.
    /// In the engine bench's account run this cut the CPU time of the timed loop by about a
    /// fifth (README, Benchmarks).
    pub(crate) fn warm(&self, slot: u32) {
        if let Some(record) = self.records.get(slot as usize) {
            let lines = std::mem::size_of::<AccountScore>() / 64;
            let start = (record as *const AccountScore).cast::<u8>();
            for line in 0..lines {
                prefetch(start.wrapping_add(line * 64));
            }
        }
    }

    /// Asks for the lines of the record of the account in `slot` that say whether it has an
    /// open cycle and which ([`AccountScores::open_cycle_id`]), without waiting for them: a
    /// hand-raise reads them after the lead's and the person's records.
    pub(crate) fn warm_hold(&self, slot: u32) {
        if let Some(record) = self.records.get(slot as usize) {
            // Every line the id spans, and the epoch's: whatever the field order, nothing the
            // check reads is left to wait for.
            let id = std::ptr::addr_of!(record.open_id).cast::<u8>();
            prefetch(std::ptr::addr_of!(record.epoch).cast());
            prefetch(id);
            prefetch(id.wrapping_add(std::mem::size_of_val(&record.open_id) - 1));
        }
    }

    /// Makes the gates of the account's people stale: one of them changed, and with it maybe
    /// the account's open cycle that their gates rely on.
    pub(crate) fn changed(&mut self, slot: u32) {
        let score = &mut self.records[slot as usize];
        score.epoch = score.epoch.wrapping_add(1);
    }

    /// `(id, score)` in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&CrmId, &AccountScore)> {
        self.ids.iter().zip(&self.records)
    }
}

/// Equal as saved: an account with no change kept (its record made when its first person
/// arrived) is not saved, so it equals one that is absent.
impl PartialEq for AccountScores {
    fn eq(&self, other: &Self) -> bool {
        let within = |a: &AccountScores, b: &AccountScores| {
            a.iter()
                .all(|(id, s)| s.changes.is_empty() || b.get(id) == Some(s))
        };
        within(self, other) && within(other, self)
    }
}

impl std::ops::Index<&str> for AccountScores {
    type Output = AccountScore;
    fn index(&self, id: &str) -> &AccountScore {
        self.get(id)
            .unwrap_or_else(|| panic!("no score of account {id} in the engine state"))
    }
}

/// What the engine remembers of a MAP lead's hand-raises: which activities are applied (an
/// activity delivered again is a replay), and the one waiting for the lead's CRM record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HandRaiseSeen {
    /// The instant of the latest activity applied, and the ids of those applied at it (the
    /// MAP's instants have whole seconds: several may share one).
    pub last_at: Option<Timestamp>,
    /// Inline when one (nearly always): a lead's first hand-raise allocates its record only.
    #[serde(default, skip_serializing_if = "SmallVec::is_empty")]
    pub ids_at_last: SmallVec<[compact_str::CompactString; 1]>,
    /// A hand-raise of the lead while it had no CRM record (or its record was not read
    /// yet): it acts when the link arrives, within the policy's wait. Boxed: rare, and
    /// inline it would make every hand-raiser's record four times the size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Box<MapActivity>>,
}

impl HandRaiseSeen {
    /// Records `activity` as applied; `false` when it was already (a replay) or is older
    /// than the latest applied (the MAP delivers in time order, so it was applied then).
    pub fn first_time(&mut self, activity: &MapActivity) -> bool {
        match self.last_at {
            Some(last) if activity.at < last => false,
            Some(last) if activity.at == last => {
                if self.ids_at_last.contains(&activity.activity_id) {
                    return false;
                }
                self.ids_at_last.push(activity.activity_id.clone());
                true
            }
            _ => {
                // One id is kept inline (a list that grew keeps its room for the next instant).
                self.last_at = Some(activity.at);
                self.ids_at_last.clear();
                self.ids_at_last.push(activity.activity_id.clone());
                true
            }
        }
    }
}

/// The MAP leads, densely: records in a vector, found by lead id through an index of
/// 16-byte entries. A hash map of the records themselves (over 300 bytes each) kept an eighth
/// to a half of its slots empty, at a record's size each: about 130 bytes a lead. Leads are
/// never removed. Equal as a map is: the same leads with equal records, in any order.
#[derive(Clone, Debug, Default)]
pub struct MapLeads {
    index: FastMap<i64, IndexEntry>,
    ids: Vec<i64>,
    records: Vec<MapLeadState>,
}

/// A MAP lead's entry in [`MapLeads`]' index: its slot, and beside it (in what the entry's
/// padding would take) the account slot its gate last named under account scoring.
#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    slot: u32,
    /// A hint, never a fact: where a score change of this lead will most likely add its
    /// points, read before the lead's record is, so that the two come from memory together
    /// instead of one after the other ([`MapLeads::slot_and_account_hint`]).
    /// [`IndexEntry::NO_ACCOUNT`]: none known.
    account: u32,
}

impl IndexEntry {
    const NO_ACCOUNT: u32 = u32::MAX;
}

impl MapLeads {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn get(&self, id: &i64) -> Option<&MapLeadState> {
        self.index.get(id).map(|e| &self.records[e.slot as usize])
    }

    pub fn get_mut(&mut self, id: &i64) -> Option<&mut MapLeadState> {
        self.index
            .get(id)
            .map(|e| &mut self.records[e.slot as usize])
    }

    /// The lead, added empty when new.
    pub fn get_or_default(&mut self, id: i64) -> &mut MapLeadState {
        let slot = self.slot_or_insert(id);
        &mut self.records[slot as usize]
    }

    /// The slot of the lead, added empty when new: what the hot path holds instead of
    /// looking the id up again (leads are never removed, so a slot stays the lead's).
    pub(crate) fn slot_or_insert(&mut self, id: i64) -> u32 {
        match self.index.get(&id) {
            Some(e) => e.slot,
            None => self.insert_new(id),
        }
    }

    /// [`MapLeads::slot_or_insert`], and the account slot last hinted for the lead
    /// ([`MapLeads::hint_account`]), if any.
    pub(crate) fn slot_and_account_hint(&mut self, id: i64) -> (u32, Option<u32>) {
        match self.index.get(&id) {
            Some(e) => (
                e.slot,
                Some(e.account).filter(|a| *a != IndexEntry::NO_ACCOUNT),
            ),
            None => (self.insert_new(id), None),
        }
    }

    /// Adds the lead `id`, which is not in the index, empty.
    fn insert_new(&mut self, id: i64) -> u32 {
        let slot = u32::try_from(self.records.len()).expect("fewer than 2^32 MAP leads");
        let entry = IndexEntry {
            slot,
            account: IndexEntry::NO_ACCOUNT,
        };
        self.index.insert(id, entry);
        self.ids.push(id);
        self.records.push(MapLeadState::default());
        slot
    }

    /// Notes that score changes of the lead `id` add their points to the account in
    /// `account` (`None`: to none), for [`MapLeads::slot_and_account_hint`] to say.
    pub(crate) fn hint_account(&mut self, id: i64, account: Option<u32>) {
        if let Some(e) = self.index.get_mut(&id) {
            e.account = account.unwrap_or(IndexEntry::NO_ACCOUNT);
        }
    }

    pub(crate) fn at(&self, slot: u32) -> &MapLeadState {
        &self.records[slot as usize]
    }

    pub(crate) fn at_mut(&mut self, slot: u32) -> &mut MapLeadState {
        &mut self.records[slot as usize]
    }

    /// Sets a lead's record (the store's load).
    pub fn insert(&mut self, id: i64, lead: MapLeadState) {
        *self.get_or_default(id) = lead;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&i64, &MapLeadState)> {
        self.ids.iter().zip(&self.records)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut MapLeadState> {
        self.records.iter_mut()
    }

    /// Gives back the capacity growth left unused, after a load.
    pub fn shrink_to_fit(&mut self) {
        self.index.shrink_to_fit();
        self.ids.shrink_to_fit();
        self.records.shrink_to_fit();
    }
}

impl PartialEq for MapLeads {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(id, lead)| other.get(id) == Some(lead))
    }
}

impl std::ops::Index<&i64> for MapLeads {
    type Output = MapLeadState;
    fn index(&self, id: &i64) -> &MapLeadState {
        self.get(id).expect("a MAP lead the state holds")
    }
}

/// Equal as saved: the person slot and the dirty flag are bookkeeping of one process.
impl PartialEq for MapLeadState {
    fn eq(&self, other: &Self) -> bool {
        self.crm == other.crm
            && self.link_at == other.link_at
            && self.scores == other.scores
            && self.unlinked_recorded == other.unlinked_recorded
            && self.hand_raise == other.hand_raise
    }
}

impl MapLeadState {
    /// Lists the lead's row for the store once per batch: a flag test, not a set insert.
    #[inline]
    pub(crate) fn mark_dirty(&mut self, id: i64, dirty: &mut Dirty) {
        if !self.dirty {
            self.dirty = true;
            dirty.map_leads.push(id);
        }
    }

    /// Lists the lead's scores for the next score snapshot, once.
    #[inline]
    pub(crate) fn mark_unsaved(&mut self, id: i64, unsaved: &mut Vec<i64>) {
        if !self.unsaved {
            self.unsaved = true;
            unsaved.push(id);
        }
    }
}

/// A pending timer. Timers are an index: each is checked against the state when it fires,
/// so a stale one does nothing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A threshold starts or ends.
    ThresholdBoundary(String),
    /// An Open cycle's SLA runs out.
    SlaDue(String),
    /// An Open cycle moves to the next owner.
    Reassign(String),
}

/// The pending timers in firing order, with the earliest instant kept aside: every event
/// first asks whether a timer is due, and the answer is one comparison instead of a walk
/// to the set's first leaf.
#[derive(Clone, Debug, Default)]
pub struct Agenda {
    timers: BTreeSet<(Timestamp, Timer)>,
    /// The instant of the first timer (`None`: no timers).
    earliest: Option<Timestamp>,
}

impl Agenda {
    pub fn insert(&mut self, at: Timestamp, timer: Timer) {
        self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
        self.timers.insert((at, timer));
    }

    /// Takes the first timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, Timer)> {
        if self.earliest.is_none_or(|e| e > now) {
            return None;
        }
        let first = self.timers.pop_first();
        self.earliest = self.timers.first().map(|(at, _)| *at);
        first
    }

    /// The instant the next timer fires.
    pub fn next_at(&self) -> Option<Timestamp> {
        self.earliest
    }

    pub fn clear(&mut self) {
        self.timers.clear();
        self.earliest = None;
    }
}

/// What changed since the store last saved: the keys to write.
#[derive(Clone, Debug, Default)]
pub struct Dirty {
    /// [`Persons`] slots, each changed person once (listed by `Persons::touch`).
    pub persons: Vec<u32>,
    /// The slots among `persons` whose CRM facts changed (may repeat): the store rewrites
    /// a person's facts only then, not on every stamp or hold.
    pub facts: Vec<u32>,
    /// Each lead whose link changed once (listed by `MapLeadState::mark_dirty`), in the order
    /// changed. Score changes are not listed: the store keeps them in its score history and
    /// saves scores as a periodic snapshot (`EngineState::unsaved_scores`).
    pub map_leads: Vec<i64>,
    pub thresholds: FastSet<String>,
    pub opportunities: FastSet<String>,
    pub accounts: Vec<CrmId>,
    /// Accounts whose score changes changed, each once (listed by their `dirty` flag).
    pub account_scores: Vec<CrmId>,
    /// External ids of changed cycles; may repeat (the store writes each once).
    pub cycles: Vec<String>,
    pub meta: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.persons.is_empty()
            && self.map_leads.is_empty()
            && self.thresholds.is_empty()
            && self.opportunities.is_empty()
            && self.accounts.is_empty()
            && self.account_scores.is_empty()
            && self.cycles.is_empty()
            && !self.meta
    }
}

/// Small values saved as one row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineMeta {
    /// The latest instant the engine was advanced to.
    pub clock: Option<Timestamp>,
    /// Next pool position per team.
    pub round_robin: BTreeMap<String, usize>,
    /// Edits of MQL records that have no cycle here (by external id, the versions read,
    /// ascending), so that each is recorded once however often it is read again. Few in
    /// practice: every record mqlsync writes has its cycle. A cycle opened later under one
    /// of these ids takes its versions over.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown_cycle_edits: BTreeMap<String, Vec<Timestamp>>,
    /// When mqlsync went live on this store ([`crate::engine::model::Event::GoLive`]): once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub went_live: Option<Timestamp>,
}

/// The whole engine state.
#[derive(Clone, Debug, Default)]
pub struct EngineState {
    pub thresholds: BTreeMap<String, Threshold>,
    /// By CRM id. Whatever iterates it in a way that reaches decisions sorts the ids first.
    pub persons: Persons,
    pub map_leads: MapLeads,
    pub opportunities: BTreeMap<String, Opportunity>,
    /// Accounts read from the CRM (only when the mapping reads any), by id.
    pub accounts: FastMap<CrmId, AccountFacts>,
    /// Under account scoring: each account's score changes inside the window, by id.
    pub account_scores: AccountScores,
    pub meta: EngineMeta,
    pub dirty: Dirty,
    /// MAP leads whose scores changed since the store's last score snapshot, each once.
    pub(crate) unsaved_scores: Vec<i64>,
    /// Tests only: decide every score change the long way (no gate, no `unchanged`), to
    /// check that the shortcuts decide the same.
    pub(crate) no_shortcuts: bool,
    // Indexes, rebuilt by `rebuild_indexes`.
    /// The [`Persons`] slot of each cycle's person, by external id.
    pub(crate) cycle_owner: FastMap<String, u32>,
    /// The [`Persons`] slots of each account's people, ascending (slots, not ids: an id
    /// here would be another copy of every contact's).
    pub(crate) account_people: FastMap<CrmId, Vec<u32>>,
    pub(crate) account_opportunities: FastMap<String, BTreeSet<String>>,
    pub(crate) timers: Agenda,
    /// Threshold cache generation: bumped whenever the set of records in force may change.
    pub(crate) threshold_generation: u64,
    /// Cached resolutions are valid from this instant up to the clock.
    pub(crate) generation_valid_from: Option<Timestamp>,
    /// The threshold records compiled under the generation it is paired with.
    pub(crate) resolver: Option<(u64, Resolver)>,
}

impl EngineState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the indexes from the saved parts (after loading from the store).
    pub fn rebuild_indexes(&mut self) {
        self.cycle_owner.clear();
        self.account_people.clear();
        self.account_opportunities.clear();
        self.timers.clear();
        for (slot, (_, person)) in self.persons.iter().enumerate() {
            let slot = u32::try_from(slot).expect("fewer than 2^32 people");
            if let Some(account) = person.facts.as_ref().and_then(|f| f.account_id.clone()) {
                // Slots come in ascending order: the list stays sorted.
                self.account_people.entry(account).or_default().push(slot);
            }
            for cycle in &person.cycles {
                self.cycle_owner.insert(cycle.external_id.clone(), slot);
                if cycle.status == super::model::CycleStatus::Open {
                    if let Some(due) = cycle.sla_due_at.filter(|_| !cycle.overdue) {
                        self.timers
                            .insert(due, Timer::SlaDue(cycle.external_id.clone()));
                    }
                    if let Some(at) = cycle.reassign_at {
                        self.timers
                            .insert(at, Timer::Reassign(cycle.external_id.clone()));
                    }
                }
            }
        }
        // Account scoring's slots beside the people, and where each account's open cycle is
        // (no hint for an account with two: the store may come from another score source).
        let mut open_in: FastMap<u32, (u32, u32)> = FastMap::default();
        for slot in 0..u32::try_from(self.persons.len()).expect("fewer than 2^32 people") {
            let person = self.persons.at(slot);
            let account = person
                .facts
                .as_ref()
                .and_then(|f| f.account_id.as_deref())
                .and_then(|id| self.account_scores.slot(id));
            if let Some(account) = account.filter(|_| person.open_cycle().is_some()) {
                let (open, holder) = open_in.entry(account).or_default();
                (*open, *holder) = (*open + 1, slot);
            }
            self.persons.at_mut(slot).account = account.map_or(AccountSlot::UNKNOWN, AccountSlot);
        }
        for account in 0..u32::try_from(self.account_scores.len()).expect("fewer than 2^32") {
            let (open, holder) = open_in.get(&account).copied().unwrap_or_default();
            self.account_scores.counted(account, open as usize, holder);
        }
        for lead in self.map_leads.values_mut() {
            lead.person = lead.crm.as_ref().and_then(|c| self.persons.slot(&c.id));
        }
        for (id, opp) in &self.opportunities {
            self.account_opportunities
                .entry(opp.account_id.clone())
                .or_default()
                .insert(id.clone());
        }
        let clock = self.meta.clock;
        for threshold in self.thresholds.values() {
            for at in [threshold.effective_from, threshold.effective_to]
                .into_iter()
                .flatten()
            {
                if clock.is_none_or(|c| at > c) {
                    self.timers
                        .insert(at, Timer::ThresholdBoundary(threshold.id.clone()));
                }
            }
        }
        self.threshold_generation += 1;
        self.generation_valid_from = clock;
        self.persons.shrink_to_fit();
        self.map_leads.shrink_to_fit();
    }

    /// Lists a changed person for the store and forgets the gate of its MAP lead: every
    /// change of a person that the store saves passes here, so a gate never outlives what
    /// it copied.
    pub(crate) fn touch_person(&mut self, slot: u32) {
        let person = self.persons.at(slot);
        // Only a person with a cycle can hold the account's open cycle, which other people's
        // gates rely on; cycles are never removed, so one just opened counts.
        if !self.account_scores.is_empty()
            && !person.cycles.is_empty()
            && let Some(account) = self.person_account(person)
        {
            self.account_scores.changed(account);
        }
        self.touch_hold(slot);
    }

    /// [`EngineState::touch_person`] for a person whose recorded hold alone changed: the
    /// account's epoch stays. A hold names what holds the person back; recording it neither
    /// opens nor closes a cycle, so the gates of the account's other people, which rely on
    /// its open cycle, still speak true. The holder's own hold is recorded at its first
    /// change after its cycle opened; with the epoch moved there, the engine bench's account
    /// run found about 50,000 more gates stale, each a read of two people's records.
    pub(crate) fn touch_hold(&mut self, slot: u32) {
        self.persons.touch(slot, &mut self.dirty);
        let map_lead = self.persons.at(slot).map_lead;
        self.close_gate(map_lead);
    }

    /// The slot in [`EngineState::account_scores`] of the account of `person`, if it has
    /// one there.
    pub(crate) fn person_account(&self, person: &PersonState) -> Option<u32> {
        match person.account.get().filter(|_| !self.no_shortcuts) {
            Some(account) => Some(account),
            None => person
                .facts
                .as_ref()?
                .account_id
                .as_deref()
                .and_then(|id| self.account_scores.slot(id)),
        }
    }

    /// [`EngineState::person_account`] of the person in `slot`, adding the account's
    /// record when new and keeping the slot beside the person.
    pub(crate) fn person_account_or_insert(&mut self, slot: u32) -> Option<u32> {
        let person = self.persons.at(slot);
        if let Some(account) = person.account.get() {
            return Some(account);
        }
        let id = person.facts.as_ref()?.account_id.as_ref()?;
        let known = self.account_scores.len();
        let account = self.account_scores.slot_or_insert(id);
        if self.account_scores.len() > known {
            // A new record: what its people's open cycles are, counted once (at the first
            // person's arrival, the list is short and was just read).
            let (open, holder) = self
                .account_people
                .get(id)
                .into_iter()
                .flatten()
                .filter(|p| self.persons.at(**p).open_cycle().is_some())
                .fold((0, 0), |(open, _), p| (open + 1, *p));
            self.account_scores.counted(account, open, holder);
        }
        self.persons.at_mut(slot).account = AccountSlot(account);
        Some(account)
    }

    /// [`EngineState::touch_person`] by CRM id; an unknown id is ignored.
    pub(crate) fn touch_person_id(&mut self, id: &str) {
        if let Some(slot) = self.persons.slot(id) {
            self.touch_person(slot);
        }
    }

    /// Forgets a MAP lead's gate.
    pub(crate) fn close_gate(&mut self, map_lead: Option<i64>) {
        if let Some(lead) = map_lead.and_then(|id| self.map_leads.get_mut(&id)) {
            lead.gate = Gate::default();
        }
    }

    /// The next instant a timer fires, for the clock worker.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.timers.next_at()
    }

    /// The cycle with this external id.
    pub fn cycle(&self, external_id: &str) -> Option<&Cycle> {
        let owner = *self.cycle_owner.get(external_id)?;
        self.persons
            .at(owner)
            .cycles
            .iter()
            .find(|c| c.external_id == external_id)
    }

    /// Opportunities of an account.
    pub fn account_opportunities(&self, account: &str) -> impl Iterator<Item = &Opportunity> {
        self.account_opportunities
            .get(account)
            .into_iter()
            .flatten()
            .filter_map(|id| self.opportunities.get(id))
    }

    /// Takes the dirty keys, leaving an empty set.
    pub fn take_dirty(&mut self) -> Dirty {
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty.map_leads {
            if let Some(lead) = self.map_leads.get_mut(id) {
                lead.dirty = false;
            }
        }
        for &slot in &dirty.persons {
            self.persons.at_mut(slot).dirty = false;
        }
        for id in &dirty.account_scores {
            if let Some(score) = self.account_scores.get_mut(id) {
                score.dirty = false;
            }
        }
        dirty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agenda_gives_due_timers_in_order_and_keeps_its_earliest_instant() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let mut agenda = Agenda::default();
        agenda.insert(at("2026-01-03T00:00:00Z"), Timer::SlaDue("b".into()));
        agenda.insert(at("2026-01-01T00:00:00Z"), Timer::SlaDue("a".into()));
        agenda.insert(at("2026-01-05T00:00:00Z"), Timer::Reassign("c".into()));
        assert_eq!(agenda.next_at(), Some(at("2026-01-01T00:00:00Z")));
        let now = at("2026-01-04T00:00:00Z");
        let fired: Vec<Timer> = std::iter::from_fn(|| agenda.pop_due(now))
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            fired,
            [Timer::SlaDue("a".into()), Timer::SlaDue("b".into())]
        );
        assert_eq!(agenda.next_at(), Some(at("2026-01-05T00:00:00Z")));
        agenda.clear();
        assert_eq!(agenda.pop_due(at("2027-01-01T00:00:00Z")), None);
        assert_eq!(agenda.next_at(), None);
    }

    /// A lead's first hand-raise keeps its one id inline; a second at the same instant is
    /// remembered too, and a replay of either is not applied again.
    #[test]
    fn a_first_hand_raise_keeps_its_id_inline() {
        let at = "2026-03-02T10:00:00Z".parse::<Timestamp>().unwrap();
        let activity = |id: &str| MapActivity {
            map_lead_id: 7,
            activity_id: id.into(),
            type_id: 2,
            asset_id: Some("1001".into()),
            asset_name: Some("Demo Request".into()),
            status: None,
            campaign: None,
            at,
        };
        let mut seen = HandRaiseSeen::default();
        assert!(seen.first_time(&activity("4711")));
        assert!(!seen.ids_at_last.spilled(), "one id is kept inline");
        assert!(seen.first_time(&activity("4712")));
        assert!(!seen.first_time(&activity("4711")));
        assert!(!seen.first_time(&activity("4712")));
        assert_eq!(seen.ids_at_last.as_slice(), ["4711", "4712"]);
    }
}

#[cfg(test)]
mod account_score_tests {
    use super::*;
    use jiff::SignedDuration;
    use proptest::prelude::*;

    /// Four cache lines, the newest block and the open cycle's id among them: what a score
    /// change in time order reads and writes, and what a hold reads, is the record alone,
    /// asked for at once. What every change reads is the first line.
    #[test]
    fn an_account_score_is_four_cache_lines() {
        assert_eq!(std::mem::size_of::<AccountScore>(), 256);
        let score = AccountScore::default();
        let start = std::ptr::addr_of!(score) as usize;
        let line = |field: usize| (field - start) / 64;
        for field in [
            std::ptr::addr_of!(score.oldest) as usize,
            std::ptr::addr_of!(score.cursor_from) as usize,
            std::ptr::addr_of!(score.cursor_next) as usize,
            std::ptr::addr_of!(score.cursor_before) as usize,
            std::ptr::addr_of!(score.cursor) as usize,
            std::ptr::addr_of!(score.epoch) as usize,
            std::ptr::addr_of!(score.cursor_known) as usize,
            std::ptr::addr_of!(score.dirty) as usize,
            std::ptr::addr_of!(score.changes.head) as usize,
            std::ptr::addr_of!(score.changes.len) as usize,
        ] {
            assert_eq!(line(field), 0);
        }
        assert_eq!(line(std::ptr::addr_of!(score.changes.newest) as usize), 1);
    }

    proptest! {
        /// Instants and windows in `i64` arithmetic are jiff's own nanoseconds, saturated at
        /// the ends of the range (years before 1678 and after 2262), whatever the sign of
        /// the fraction given.
        #[test]
        fn instants_in_nanoseconds_are_jiffs(
            second in -400_000_000_000i64..260_000_000_000,
            fraction in -999_999_999i32..1_000_000_000,
            window in 0i64..i64::MAX,
            window_fraction in 0i32..1_000_000_000,
        ) {
            let inside = (Timestamp::MIN.as_second() + 1)..=(Timestamp::MAX.as_second() - 1);
            let t = Timestamp::new(second.clamp(*inside.start(), *inside.end()), fraction).unwrap();
            let wide = i64::try_from(t.as_nanosecond())
                .unwrap_or(if t > Timestamp::UNIX_EPOCH { i64::MAX } else { i64::MIN })
                .max(i64::MIN + 1);
            prop_assert_eq!(nanos(t), wide);
            let span = SignedDuration::new(window, window_fraction);
            prop_assert_eq!(
                window_nanos(span),
                i64::try_from(span.as_nanos()).unwrap_or(i64::MAX)
            );
        }

        /// The blocks hold what a `VecDeque` holds, in the same places, whatever mix of
        /// changes added, inserted and forgotten: across block edges, and down to none.
        #[test]
        fn change_blocks_hold_what_a_ring_holds(
            ops in prop::collection::vec((0u8..4, any::<u16>()), 0..200),
        ) {
            let mut blocks = ChangeBlocks::default();
            let mut ring: VecDeque<AccountChange> = VecDeque::new();
            for (n, (op, pick)) in ops.into_iter().enumerate() {
                let change = AccountChange { at: n as i64, total: f64::from(pick) };
                match op {
                    0 | 1 => {
                        blocks.push_back(change);
                        ring.push_back(change);
                    }
                    2 => {
                        let place = usize::from(pick) % (ring.len() + 1);
                        blocks.insert(place, change);
                        ring.insert(place, change);
                    }
                    _ => prop_assert_eq!(blocks.pop_front(), ring.pop_front()),
                }
                prop_assert_eq!(blocks.len(), ring.len());
                // No block is kept but those the changes fill: the newest (in place) while
                // there is any change, and as many full ones as the rest take.
                let full = blocks.full.as_ref().map_or(0, |full| full.len());
                prop_assert_eq!(full, blocks.full_blocks());
                let blocks_kept = full + usize::from(!blocks.is_empty());
                prop_assert_eq!(blocks_kept, (blocks.head as usize + blocks.len()).div_ceil(BLOCK));
                prop_assert!(blocks.iter().eq(ring.iter()));
                prop_assert_eq!(blocks.front(), ring.front());
                prop_assert_eq!(blocks.back(), ring.back());
                // A predicate that holds for the first `k` changes (each `at` is unique).
                let k = usize::from(pick) % (ring.len() + 1);
                let first: HashSet<i64> = ring.iter().take(k).map(|c| c.at).collect();
                prop_assert_eq!(blocks.partition_point(|c| first.contains(&c.at)), k);
            }
        }

        /// The running totals, the cursor and the forgetting give what adding up the changes
        /// inside the window gives, with changes late or out of order, added with or without
        /// taking the score, and scores taken at any instant, before and after a save and
        /// load.
        #[test]
        fn an_account_score_is_the_changes_inside_its_window_added_up(
            steps in prop::collection::vec(
                (0i64..4_000, -30i32..60, any::<bool>(), -500i64..500, any::<bool>()),
                1..120,
            ),
        ) {
            let window = SignedDuration::from_secs(600);
            let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(24 * 365 * 50);
            let at = |s: i64| t0 + SignedDuration::from_secs(s);
            let mut score = AccountScore::default();
            let mut applied: Vec<(i64, f64)> = Vec::new();
            let mut latest = i64::MIN;
            let mut clock = 0;
            for (step, points, late, query, scored) in steps {
                // Mostly forward in time; now and then a change up to two windows before
                // the latest (what the forgetting keeps).
                clock += step % 40;
                let t = if late { clock - step % 1_200 } else { clock };
                let points = f64::from(points);
                let now = if scored {
                    score.add_and_score(at(t), points, window)
                } else {
                    score.add(at(t), points, window);
                    score.at(at(t), window)
                };
                applied.push((t, points));
                latest = latest.max(t);
                let sum = |upto: i64| -> f64 {
                    applied
                        .iter()
                        .filter(|(a, _)| *a > upto - 600 && *a <= upto)
                        .map(|(_, p)| p)
                        .sum()
                };
                // A change over a window late has a window that reaches what is forgotten.
                if t >= latest - 600 {
                    prop_assert_eq!(now, sum(t), "at the change's instant {}", t);
                }
                // Anywhere the forgetting has not reached: two windows before the latest.
                let q = (latest + query).max(latest - 600);
                prop_assert_eq!(score.at(at(q), window), sum(q), "at {}", q);
                let loaded: AccountScore =
                    serde_json::from_str(&serde_json::to_string(&score).unwrap()).unwrap();
                prop_assert_eq!(loaded.at(at(q), window), sum(q), "loaded, at {}", q);
            }
        }
    }
}
