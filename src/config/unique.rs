//! Maps whose keys must be unique: a repeated key is an error (serde_yaml would silently
//! keep the last one).

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// `#[serde(deserialize_with = "unique::map")]` on a `BTreeMap<String, V>` field.
pub fn map<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct V2<V>(PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<String>()? {
                let v = m.next_value()?;
                if out.insert(k.clone(), v).is_some() {
                    return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_any(V2(PhantomData))
}
