//! Shared strings for what a million people repeat: statuses, owners, titles, attribute names
//! and values, campaigns. A [`Text`] is a pointer to one copy kept in a process-wide pool, so a
//! status held by 400,000 people is stored once and cloning it is a reference count, not an
//! allocation; [`Attributes`] keeps a person's mapped attributes as a short sorted slice of
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
/// sorted by name, each name at most once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Attributes(Box<[(Text, Text)]>);

impl Attributes {
    /// The value of an attribute.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Sets an attribute (replacing its value).
    pub fn insert(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        let (name, value) = (name.into(), value.into());
        let mut pairs = std::mem::take(&mut self.0).into_vec();
        match pairs.binary_search_by(|(k, _)| k.cmp(&name)) {
            Ok(i) => pairs[i].1 = value,
            Err(i) => pairs.insert(i, (name, value)),
        }
        self.0 = pairs.into_boxed_slice();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
        Attributes(sorted.into_boxed_slice())
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
}
