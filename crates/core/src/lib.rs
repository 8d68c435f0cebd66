//! Muster's vocabulary, shared by every other crate: ids, enums, the resources as clients see them,
//! paging, the error body and the time formats of the Octopus REST contract. No IO, no async.

pub mod casing;
pub mod enums;
pub mod error;
pub mod ids;
pub mod paging;
pub mod permissions;
pub mod resources;
pub mod runbooks;
pub mod tasks;
pub mod time;
pub mod variables;

pub use enums::*;
pub use error::ErrorBody;
pub use ids::{IdKind, parse_id};
