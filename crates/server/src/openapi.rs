//! The OpenAPI document served at `/api/openapi.json`.

pub fn document() -> serde_json::Value {
    serde_json::json!({"openapi": "3.0.3", "info": {"title": "Muster", "version": env!("CARGO_PKG_VERSION")}, "paths": {}})
}
