//! Typed, line-numbered access to the keys of one TOML section (for the experiment config):
//! unknown keys are rejected up front, and a wrong type names the line and the key.

use crate::adapter::toml::{Entry, Section, Value};
use crate::bail;
use crate::error::Result;
use std::path::PathBuf;

/// Typed access to one section's keys; unknown keys are rejected up front.
pub struct Keys<'a> {
    section: &'a Section,
}

impl<'a> Keys<'a> {
    pub fn new(section: &'a Section, allowed: &[&str]) -> Result<Keys<'a>> {
        for e in &section.entries {
            if !allowed.contains(&e.key.as_str()) {
                let table = section
                    .name
                    .as_deref()
                    .map_or("the top level".to_string(), |n| format!("[{n}]"));
                bail!(
                    "line {}: unknown key {:?} in {table} (known: {})",
                    e.line,
                    e.key,
                    allowed.join(", ")
                );
            }
        }
        Ok(Keys { section })
    }

    pub fn get(&self, key: &str) -> Option<&'a Entry> {
        self.section.entries.iter().rev().find(|e| e.key == key)
    }

    pub fn line(&self, key: &str) -> usize {
        self.get(key).map_or(self.section.line, |e| e.line)
    }

    pub fn wrong(e: &Entry, want: &str) -> crate::Error {
        crate::Error(format!(
            "line {}: {} must be {want}, not {}",
            e.line,
            e.key,
            e.value.type_name()
        ))
    }

    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Str(s),
                ..
            }) => Ok(Some(s.clone())),
            Some(e) => Err(Self::wrong(e, "a string")),
        }
    }

    pub fn path(&self, key: &str) -> Result<Option<PathBuf>> {
        Ok(self.string(key)?.map(PathBuf::from))
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Bool(b),
                ..
            }) => Ok(Some(*b)),
            Some(e) => Err(Self::wrong(e, "true or false")),
        }
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Int(i),
                ..
            }) if *i >= 0 => Ok(Some(*i)),
            Some(e) => Err(Self::wrong(e, "a non-negative integer")),
        }
    }

    pub fn count(&self, key: &str) -> Result<Option<usize>> {
        Ok(self.int(key)?.map(|i| i as usize))
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Float(f),
                ..
            }) => Ok(Some(*f)),
            Some(Entry {
                value: Value::Int(i),
                ..
            }) => Ok(Some(*i as f64)),
            Some(e) => Err(Self::wrong(e, "a number")),
        }
    }

    /// A one-line array whose every item `item` accepts; `want` names the type for errors.
    fn array<T>(
        &self,
        key: &str,
        want: &str,
        item: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        match self.get(key) {
            None => Ok(None),
            Some(e) => match &e.value {
                Value::Array(items) => items
                    .iter()
                    .map(|v| item(v).ok_or_else(|| Self::wrong(e, want)))
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                _ => Err(Self::wrong(e, want)),
            },
        }
    }

    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.array(key, "an array of non-negative integers", |v| match v {
            Value::Int(i) if *i >= 0 => Some(*i),
            _ => None,
        })
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.array(key, "an array of strings", |v| match v {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        })
    }
}
