//! The error body every failed request answers with (contract 1.6).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    pub error_message: String,
    pub errors: Vec<String>,
    pub full_exception: Option<String>,
    pub help_text: Option<String>,
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>, errors: Vec<String>) -> Self {
        ErrorBody {
            error_message: message.into(),
            errors,
            full_exception: None,
            help_text: None,
            details: None,
        }
    }
}
