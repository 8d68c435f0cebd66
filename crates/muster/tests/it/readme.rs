//! The README's command blocks run as written. Every ```sh block after "Two commands" runs, in
//! order, in one Bash session against a fresh server (blocks build on the ones before, as a reader
//! following the README would); ```yaml blocks whose first line is `# FILE` are written to FILE
//! first. Blocks that show syntax or need your own machines are fenced `text`, and not run.
//!
//! What a reader's machine has and a test's does not, the test changes: the server's address and
//! ports (a free port each, for tests run in parallel), the key the server printed (`API-7Q2…`),
//! and a long-running `muster-agent … run`, which goes to the background.

use crate::support::{KEY, Server, agent, free_port};
use std::path::Path;
use std::process::Command;

struct Block {
    line: usize,
    info: String,
    text: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    line: i + 2,
                    info: info.trim().to_string(),
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

#[test]
fn the_readmes_command_blocks_run_as_written() {
    let readme = include_str!("../../../../README.md");
    let blocks = blocks(readme);
    let server = Server::start();
    let work = server.dir.join("reader");
    std::fs::create_dir_all(work.join("target/release")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_muster"));
    let agent_bin = agent().get_program().to_owned();
    // The README builds release binaries; the reader's `target/release` here holds the test build.
    std::os::unix::fs::symlink(bin, work.join("target/release/muster")).unwrap();
    std::os::unix::fs::symlink(&agent_bin, work.join("target/release/muster-agent")).unwrap();
    let path = format!(
        "{}:{}",
        work.join("target/release").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let listen_port = free_port().to_string();
    let comms_port = server.comms_port.to_string();

    let mut script = String::from(
        "set -euo pipefail\nshopt -s expand_aliases\n\
         # The agents this session starts stop with it.\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n",
    );
    let mut ran = 0;
    let mut past_two_commands = false;
    for block in &blocks {
        if block.info == "yaml"
            && let Some(file) = block.text.lines().next().and_then(|l| l.strip_prefix("# "))
        {
            std::fs::write(work.join(file.trim()), &block.text).unwrap();
            continue;
        }
        if block.info != "sh" {
            continue;
        }
        if !past_two_commands {
            // `cargo run … server` and the test command itself.
            assert!(block.text.contains("./scripts/test.sh"), "{}", block.text);
            past_two_commands = true;
            continue;
        }
        let mut text = block
            .text
            .replace("API-7Q2…", KEY)
            .replace("http://127.0.0.1:8080", &server.url)
            .replace("10943", &comms_port)
            .replace("10933", &listen_port);
        // A foreground agent runs until stopped: here it runs beside the session, which waits for
        // it to connect before going on.
        text = text
            .lines()
            .map(|line| {
                if line.starts_with("muster-agent ") && line.ends_with(" run") {
                    format!("{line} > agent-$RANDOM.log 2>&1 &\nsleep 3")
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        script.push_str(&format!(
            "echo '--- README.md line {}' >&2\n{text}\n",
            block.line
        ));
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} blocks ran");
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("PATH", path)
        .env("MUSTER_SERVER", &server.url)
        .env("MUSTER_AGENT_HOME", work.join("agent-home"))
        .env_remove("MUSTER_API_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last_block = stderr
        .lines()
        .rfind(|l| l.starts_with("--- README.md line"))
        .unwrap_or("before the first block");
    assert!(
        output.status.success(),
        "the README's block at {last_block} failed ({}):\nstdout:\n{}\nstderr:\n{stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
    );
}
