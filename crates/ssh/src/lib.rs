//! SSH workers: the pinned host key's fingerprint, the accounts' private keys, and (later) the
//! connection that runs scripts. It knows nothing of tasks, stores or servers.

pub mod keys;
