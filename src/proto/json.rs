//! Go `encoding/json` field matching: exact name first, then case-insensitive.

use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A JSON object whose values stay raw until asked for, looked up the way Go matches fields.
pub struct GoObject<'a> {
    fields: BTreeMap<String, &'a RawValue>,
}

impl<'a> GoObject<'a> {
    /// Parses `text` as a JSON object.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        let fields: BTreeMap<String, &'a RawValue> = serde_json::from_str(text)?;
        Ok(Self { fields })
    }

    /// The raw value of field `name`, matched as Go does (exact, else ASCII case-insensitive).
    pub fn raw(&self, name: &str) -> Option<&'a RawValue> {
        if let Some(v) = self.fields.get(name) {
            return Some(v);
        }
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// Field `name` decoded as `T`; a JSON `null` or an absent field is `None`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, String> {
        match self.raw(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|e| format!("field {name}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_case_insensitive() {
        let o = GoObject::parse(r#"{"network":"a","Network":"b","subnetlen":24}"#).unwrap();
        assert_eq!(o.get::<String>("Network").unwrap().as_deref(), Some("b"));
        assert_eq!(o.get::<u8>("SubnetLen").unwrap(), Some(24));
        assert_eq!(o.get::<u8>("SubnetMin").unwrap(), None);
        assert_eq!(o.get::<String>("network").unwrap().as_deref(), Some("a"));
        assert!(o.get::<u8>("Network").is_err());
        assert!(GoObject::parse("[1]").is_err());
    }
}
