//! Where values come from ([`Env`]: the process environment over `.env`, or a map in tests),
//! and the [`Reader`] that looks each variable up by its row of the table, falls back to the
//! row's default and collects every error instead of stopping at the first.

use std::collections::HashMap;

use super::error::{ConfigError, VarError};
use super::vars::{self, DefaultValue, Var};

/// Where configuration values come from.
pub trait Env {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| v.to_string())
    }
}

/// The process environment, over the values of an optional `.env` file (the process wins).
pub struct ProcessEnv {
    dotenv: HashMap<String, String>,
}

impl ProcessEnv {
    /// Reads `.env` from the working directory when present. A malformed `.env` is an error.
    pub fn load() -> Result<Self, ConfigError> {
        let mut dotenv = HashMap::new();
        match dotenvy::from_path_iter(".env") {
            Ok(iter) => {
                for item in iter {
                    let (k, v) = item.map_err(|e| VarError::new(".env", e.to_string()))?;
                    dotenv.insert(k, v);
                }
            }
            Err(e) if e.not_found() => {}
            Err(e) => return Err(VarError::new(".env", e.to_string()).into()),
        }
        Ok(Self { dotenv })
    }
}

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key)
            .ok()
            .or_else(|| self.dotenv.get(key).cloned())
    }
}

/// Reads variables through their rows of the table and keeps every error.
///
/// A blank value counts as unset. Values are handed over as set, surrounding whitespace
/// included: the parsers trim where whitespace cannot belong to the value, and a value such
/// as a key prefix keeps it. A reader method that returns `None` has recorded why.
pub(crate) struct Reader<'a> {
    env: &'a dyn Env,
    errors: Vec<VarError>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            errors: Vec::new(),
        }
    }

    /// The value as set, unless unset or blank.
    fn given(&self, var: &Var) -> Option<String> {
        self.env.get(var.name).filter(|v| !v.trim().is_empty())
    }

    /// The value without surrounding whitespace, unless unset or blank.
    pub(crate) fn trimmed(&self, var: &Var) -> Option<String> {
        self.given(var).map(|v| v.trim().to_string())
    }

    /// The value exactly as set (whitespace is a value), unless unset or empty: for passwords.
    pub(crate) fn verbatim(&self, var: &Var) -> Option<String> {
        self.env.get(var.name).filter(|v| !v.is_empty())
    }

    /// The value, or the row's default when unset, through `parse`; `None` after an error.
    pub(crate) fn value<T>(
        &mut self,
        var: &'static Var,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = match (self.given(var), var.default) {
            (Some(v), _) => v,
            (None, DefaultValue::Value(v)) => v.to_string(),
            (None, DefaultValue::Unset | DefaultValue::Computed(_)) => {
                self.fail(var, "has no default value (a bug: the table lists none)");
                return None;
            }
        };
        self.check(var, parse(&value))
    }

    /// The value through `parse` when set, `Some(None)` when unset; `None` after an error.
    pub(crate) fn optional<T>(
        &mut self,
        var: &'static Var,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match self.given(var) {
            None => Some(None),
            Some(v) => self.check(var, parse(&v)).map(Some),
        }
    }

    /// Records `result`'s error against `var`.
    pub(crate) fn check<T>(&mut self, var: &'static Var, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.fail(var, m)).ok()
    }

    /// Records that `var` is bad or conflicts with another variable.
    pub(crate) fn fail(&mut self, var: &'static Var, message: impl Into<String>) {
        self.errors.push(VarError::new(var.name, message));
    }

    /// `value`, or every error recorded, in the order of the table.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        let mut errors = self.errors;
        errors.sort_by_key(|e| vars::position(e.var));
        match (ConfigError::new(errors), value) {
            (Some(e), _) => Err(e),
            (None, Some(value)) => Ok(value),
            // Every reader method that gives `None` records why, so this is a bug.
            (None, None) => Err(VarError::new("configuration", "refused without a reason").into()),
        }
    }
}
