//! Shared strings for what a million people repeat: statuses, owners, titles, attribute names
//! and values, campaigns. A [`Text`] is a pointer to one copy kept in a process-wide pool, so a
//! status held by 400,000 people is stored once and cloning it is a reference count, not an
//! allocation; [`Attributes`] keeps a person's mapped attributes as a pooled sorted slice of
//! such pairs instead of a B-tree of owned strings (a B-tree leaf alone is over 500 bytes).
//! Together they are most of the difference between ~2 KB and under 1 KB a person in the
//! daemon's memory.
//!
//! The pool only grows: an org's distinct statuses, owners, titles, regions and campaigns are
//! bounded by the org, not by time. Serialised, both are what they replace (a string, a map),
//! so stores written before them load unchanged.
//!
//! Must not: hold anything unique per person (CRM ids, e-mails): the pool would then grow with
//! the people and save nothing.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::state::FxHasher;

type Pool = HashSet<Arc<str>, BuildHasherDefault<FxHasher>>;

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| Mutex::new(Pool::default()));

/// A string kept once per process (see the module doc). Compares, hashes and orders as the
/// string it holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Arc<str>);

impl Text {
    /// The pooled copy of `s`.
    pub fn new(s: &str) -> Text {
        let mut pool = POOL.lock().expect("text pool");
        if let Some(shared) = pool.get(s) {
            return Text(shared.clone());
        }
        let shared: Arc<str> = Arc::from(s);
        pool.insert(shared.clone());
        Text(shared)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::new(&s)
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::new(s)
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0.to_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Text::new(&s))
    }
}

/// A person's mapped attributes (`region`, `team`, `vertical`, ...): name and value pairs,
/// sorted by name, each name at most once. The whole set is pooled like a [`Text`]: an org has
/// a few hundred combinations of region, team and vertical for millions of people, so a person
/// holds one pointer (16 bytes) instead of 32 bytes a pair.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Attributes(Option<Arc<[(Text, Text)]>>);

type SetPool = HashSet<Arc<[(Text, Text)]>, BuildHasherDefault<FxHasher>>;

static SETS: LazyLock<Mutex<SetPool>> = LazyLock::new(|| Mutex::new(SetPool::default()));

impl Attributes {
    /// The pooled set of `pairs`, which are sorted by name, each name once.
    fn pooled(pairs: Vec<(Text, Text)>) -> Attributes {
        if pairs.is_empty() {
            return Attributes(None);
        }
        let mut pool = SETS.lock().expect("attribute set pool");
        if let Some(shared) = pool.get(pairs.as_slice()) {
            return Attributes(Some(shared.clone()));
        }
        let shared: Arc<[(Text, Text)]> = Arc::from(pairs);
        pool.insert(shared.clone());
        Attributes(Some(shared))
    }

    fn pairs(&self) -> &[(Text, Text)] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// The value of an attribute.
    pub fn get(&self, name: &str) -> Option<&str> {
        let pairs = self.pairs();
        pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| pairs[i].1.as_str())
    }

    /// Sets an attribute (replacing its value).
    pub fn insert(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        let (name, value) = (name.into(), value.into());
        let mut pairs = self.pairs().to_vec();
        match pairs.binary_search_by(|(k, _)| k.cmp(&name)) {
            Ok(i) => pairs[i].1 = value,
            Err(i) => pairs.insert(i, (name, value)),
        }
        *self = Attributes::pooled(pairs);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs().iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.pairs().iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.pairs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }
}

impl<K: Into<Text>, V: Into<Text>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut sorted: Vec<(Text, Text)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // The last value of a name wins, as a map's insert would have it.
        sorted.reverse();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.dedup_by(|later, kept| later.0 == kept.0);
        Attributes::pooled(sorted)
    }
}

impl From<BTreeMap<String, String>> for Attributes {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Attributes, D::Error> {
        let map = BTreeMap::<Text, Text>::deserialize(d)?;
        Ok(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let a = Text::new("Open - Not Contacted");
        let b = Text::from(String::from("Open - Not Contacted"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "Open - Not Contacted");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            "\"Open - Not Contacted\""
        );
        let c: Text = serde_json::from_str("\"Open - Not Contacted\"").unwrap();
        assert!(Arc::ptr_eq(&a.0, &c.0));
    }

    #[test]
    fn attributes_behave_as_the_map_they_replace() {
        let mut map = BTreeMap::new();
        map.insert("vertical".to_string(), "SaaS".to_string());
        map.insert("region".to_string(), "EMEA".to_string());
        let mut a = Attributes::from(map.clone());
        assert_eq!(a.get("region"), Some("EMEA"));
        assert_eq!(a.get("team"), None);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&map).unwrap(),
            "saved as the map was"
        );
        let back: Attributes = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
        assert_eq!(back, a);
        a.insert("region", "NA");
        a.insert("team", "SDR NA");
        assert_eq!(a.keys().collect::<Vec<_>>(), ["region", "team", "vertical"]);
        assert_eq!(a.get("region"), Some("NA"));
        let last_wins: Attributes = [("region", "EMEA"), ("region", "APAC")]
            .into_iter()
            .collect();
        assert_eq!(last_wins.get("region"), Some("APAC"));
        assert_eq!(last_wins.len(), 1);
    }

    #[test]
    fn equal_attribute_sets_share_one_copy() {
        let a: Attributes = [("region", "EMEA"), ("team", "SDR EMEA")]
            .into_iter()
            .collect();
        let mut b: Attributes = [("team", "SDR EMEA")].into_iter().collect();
        b.insert("region", "EMEA");
        let (Some(a_set), Some(b_set)) = (&a.0, &b.0) else {
            panic!("both sets are non-empty")
        };
        assert!(Arc::ptr_eq(a_set, b_set), "one pooled copy of the set");
        assert!(Attributes::default().0.is_none(), "no set while empty");
    }
}
