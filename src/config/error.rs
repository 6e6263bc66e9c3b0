//! Configuration errors: one line per variable, all of them at once.

use std::fmt;

/// A variable that could not be accepted, and why; displays as one line naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}: {message}")]
pub struct VarError {
    /// The variable (or `.env` for the file itself).
    pub(crate) var: &'static str,
    /// Why its value was refused.
    pub(crate) message: String,
}

impl VarError {
    pub(crate) fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// Every problem found in the configuration, in the order the variables are read: each bad or
/// conflicting variable once. Displays as one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    errors: Vec<VarError>,
}

impl ConfigError {
    /// At least one problem (an empty list is not an error).
    pub(crate) fn new(errors: Vec<VarError>) -> Option<Self> {
        (!errors.is_empty()).then_some(Self { errors })
    }

    /// The problems, one per bad or conflicting variable.
    pub fn errors(&self) -> &[VarError] {
        &self.errors
    }
}

impl From<VarError> for ConfigError {
    fn from(e: VarError) -> Self {
        Self { errors: vec![e] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
