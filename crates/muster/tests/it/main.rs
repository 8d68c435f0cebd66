//! Integration tests: each starts the real `muster` binary on 127.0.0.1 with its own temporary data
//! dir and speaks real HTTP to it. One test binary keeps link time down.

mod accounts;
mod agent;
mod architecture;
mod artifacts;
mod blog;
mod cli;
mod cluster;
mod conventions;
mod crash;
mod db_copy;
mod dynamic;
mod events;
mod failover;
mod helm;
mod inputs;
mod kubernetes;
mod logs;
mod nodes;
mod openapi;
mod permissions;
mod postgres;
mod readme;
mod registration;
mod resilience;
mod resources;
mod runbooks;
mod secrets;
mod sharing;
mod snapshots;
mod ssh_artifacts;
mod ssh_workers;
/// crates/ssh's real-sshd helper, shared rather than copied.
#[allow(dead_code)]
#[path = "../../../ssh/tests/sshd/mod.rs"]
mod sshd;
mod support;
mod task_token;
mod tasks;
mod walls;
mod workers_live;
