//! Runs one script on this machine, the same way for the built-in worker and (later) for agents:
//! a private working directory (0700, removed afterwards), the interpreter in its own process group,
//! each output line delivered as it is printed, and the whole process tree killed on cancel, on
//! timeout, and when the script's own process exits.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Lines longer than this are delivered in pieces, so one endless line cannot exhaust memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Bash,
    Python,
    PowerShell,
}

impl Syntax {
    fn interpreter(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            Syntax::Bash => ("bash", &["--noprofile", "--norc"], "script.sh"),
            Syntax::Python => ("python3", &["-u"], "script.py"),
            Syntax::PowerShell => (
                "pwsh",
                &["-NoLogo", "-NonInteractive", "-NoProfile", "-File"],
                "script.ps1",
            ),
        }
    }
}

pub struct Script {
    pub syntax: Syntax,
    pub body: String,
    /// Extra environment variables. Variables named `MUSTER_*` of the parent never reach a script.
    pub env: Vec<(String, String)>,
    /// Start from [`CLEAN_ENV`] alone instead of the parent's environment: the built-in worker's
    /// scripts must not see the server's own settings and secrets.
    pub clean_env: bool,
    pub timeout: Option<Duration>,
    /// Where the per-script working directory is created.
    pub work_root: PathBuf,
    /// Another OS user to run the script as (the process must be allowed to switch to it).
    pub run_as: Option<RunAs>,
}

/// An OS user a script runs as, instead of the runner's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl RunAs {
    /// Looks a user up by name or number in `/etc/passwd` (users known only to NSS services such
    /// as LDAP are not found).
    pub fn lookup(user: &str) -> Option<RunAs> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [name, _, uid, gid, _, home, ..] = fields.as_slice() else {
                return None;
            };
            if *name != user && *uid != user {
                return None;
            }
            Some(RunAs {
                name: name.to_string(),
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home: home.to_string(),
            })
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The interpreter exited with this code.
    Exited(i32),
    /// The interpreter was ended by this signal (not by us).
    Signaled(i32),
    Canceled,
    TimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "{0} is not installed on this worker (it is not on PATH), so this script cannot run here"
    )]
    InterpreterMissing(&'static str),
    #[error("cannot prepare or start the script: {0}")]
    Io(#[from] std::io::Error),
}

/// The parent's variables a script on a clean environment keeps; `PATH` gets a default when unset.
pub const CLEAN_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ",
    "TMPDIR",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds a program on PATH, as the shell would.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs the script to its end. Output lines go to `lines` as they are printed (a full channel slows
/// the script down rather than losing lines). `cancel` resolving kills the process tree.
pub async fn run(
    script: Script,
    lines: mpsc::Sender<Vec<Line>>,
    cancel: impl Future<Output = ()>,
) -> Result<Outcome, ExecError> {
    let (program, args, file_name) = script.syntax.interpreter();
    let program_path = find_program(program).ok_or(ExecError::InterpreterMissing(program))?;

    std::fs::create_dir_all(&script.work_root)?;
    let dir = tempfile::Builder::new()
        .prefix("muster-task-")
        .tempdir_in(&script.work_root)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    }
    {
        // The script file may hold substituted secrets: its owner alone reads it.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join(file_name))?;
        file.write_all(script.body.as_bytes())?;
    }
    if let Some(user) = &script.run_as {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))?;
        std::os::unix::fs::chown(dir.path().join(file_name), Some(user.uid), Some(user.gid))?;
    }

    let mut command = Command::new(program_path);
    command
        .args(args)
        .arg(file_name)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if script.clean_env {
        command.env_clear();
        for name in CLEAN_ENV {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        if std::env::var_os("PATH").is_none() {
            command.env("PATH", DEFAULT_PATH);
        }
    } else {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MUSTER_") {
                command.env_remove(&key);
            }
        }
    }
    if let Some(user) = &script.run_as {
        // std also drops the supplementary groups when it switches the user.
        command.uid(user.uid).gid(user.gid);
        command.env("HOME", &user.home);
        command.env("USER", &user.name);
        command.env("LOGNAME", &user.name);
    }
    command.envs(script.env.iter().map(|(k, v)| (k, v)));
    let mut child = command.spawn()?;
    let group = child.id().map(|pid| pid as i32);

    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = tokio::spawn(forward_lines(stdout, Stream::Stdout, lines.clone()));
    let err_reader = tokio::spawn(forward_lines(stderr, Stream::Stderr, lines));

    let timeout = async {
        match script.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        status = child.wait() => {
            let status = status?;
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => Outcome::Exited(code),
                (None, Some(signal)) => Outcome::Signaled(signal),
                (None, None) => Outcome::Exited(-1),
            }
        }
        _ = cancel => Outcome::Canceled,
        _ = timeout => Outcome::TimedOut,
    };
    // Whatever ended the script, nothing it started may outlive it.
    if let Some(group) = group {
        kill_group(group);
    }
    let _ = child.wait().await;
    // Readers end when every holder of the pipes is gone; a process that left the group could keep
    // them open, so their wait is bounded.
    for reader in [out_reader, err_reader] {
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    drop(dir);
    Ok(outcome)
}

#[allow(unsafe_code)]
fn kill_group(group: i32) {
    // SAFETY: killpg only sends a signal; a group that no longer exists answers ESRCH, which is fine.
    unsafe {
        libc::killpg(group, libc::SIGKILL);
    }
}

/// Reads a pipe and sends its lines in batches: every complete line of one read goes in one
/// message, so a chatty script costs a hand-off per read, not per line.
async fn forward_lines(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    lines: mpsc::Sender<Vec<Line>>,
) {
    let mut reader = BufReader::with_capacity(MAX_LINE_BYTES, reader);
    let mut partial: Vec<u8> = Vec::new();
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            break;
        }
        let mut batch = Vec::new();
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            partial.extend_from_slice(&rest[..end]);
            batch.push(take_line(stream, &mut partial));
            rest = &rest[end + 1..];
        }
        partial.extend_from_slice(rest);
        if partial.len() >= MAX_LINE_BYTES {
            batch.push(take_line(stream, &mut partial));
        }
        let read = buf.len();
        reader.consume(read);
        if !batch.is_empty() && lines.send(batch).await.is_err() {
            return;
        }
    }
    if !partial.is_empty() {
        let _ = lines.send(vec![take_line(stream, &mut partial)]).await;
    }
}

fn take_line(stream: Stream, line: &mut Vec<u8>) -> Line {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    Line { stream, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_bash(body: &str, timeout: Option<Duration>) -> (Outcome, Vec<Line>) {
        run_bash_in(body, timeout, false).await
    }

    async fn run_bash_in(
        body: &str,
        timeout: Option<Duration>,
        clean_env: bool,
    ) -> (Outcome, Vec<Line>) {
        let root = std::env::temp_dir().join("muster-exec-tests");
        let (tx, mut rx) = mpsc::channel(16);
        let script = Script {
            syntax: Syntax::Bash,
            body: body.into(),
            env: vec![("GIVEN".into(), "given".into())],
            clean_env,
            timeout,
            work_root: root,
            run_as: None,
        };
        let collector = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(batch) = rx.recv().await {
                all.extend(batch);
            }
            all
        });
        let outcome = run(script, tx, std::future::pending()).await.unwrap();
        (outcome, collector.await.unwrap())
    }

    #[tokio::test]
    async fn output_lines_arrive_with_their_stream_and_the_exit_code_counts() {
        let (outcome, lines) =
            run_bash("echo one\necho two >&2\nprintf 'no newline'\nexit 3", None).await;
        assert_eq!(outcome, Outcome::Exited(3));
        assert!(lines.contains(&Line {
            stream: Stream::Stdout,
            text: "one".into()
        }));
        assert!(lines.contains(&Line {
            stream: Stream::Stderr,
            text: "two".into()
        }));
        assert!(lines.contains(&Line {
            stream: Stream::Stdout,
            text: "no newline".into()
        }));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_tree() {
        let marker =
            std::env::temp_dir().join(format!("muster-exec-orphan-{}", std::process::id()));
        let body = format!("(sleep 2; touch {}) &\nsleep 30", marker.display());
        let (outcome, _) = run_bash(&body, Some(Duration::from_millis(300))).await;
        assert_eq!(outcome, Outcome::TimedOut);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a child of the script outlived it");
    }

    #[tokio::test]
    async fn the_working_directory_is_private_and_removed() {
        let (outcome, lines) = run_bash("pwd; stat -c %a .", None).await;
        assert_eq!(outcome, Outcome::Exited(0));
        assert_eq!(lines[1].text, "700");
        assert!(!Path::new(&lines[0].text).exists());
    }

    #[tokio::test]
    async fn muster_variables_never_reach_a_script() {
        // SAFETY of the test: no other test in this binary reads this variable.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("MUSTER_TEST_SECRET", "hidden");
        }
        let (_, lines) = run_bash("echo \"[${MUSTER_TEST_SECRET:-}]\"", None).await;
        assert_eq!(lines[0].text, "[]");
    }

    #[tokio::test]
    async fn a_clean_environment_keeps_only_the_allow_list_and_what_was_given() {
        // SAFETY of the test: no other test in this binary reads this variable.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("SERVER_ONLY_SETTING", "hidden");
        }
        let body = "echo \"[${SERVER_ONLY_SETTING:-}]\"; echo \"$GIVEN\"; command -v true";
        let (_, lines) = run_bash_in(body, None, true).await;
        assert_eq!(lines[0].text, "[]", "the server's environment leaked");
        assert_eq!(lines[1].text, "given");
        assert!(lines[2].text.ends_with("true"), "PATH still finds programs");
        let (_, lines) = run_bash_in(body, None, false).await;
        assert_eq!(
            lines[0].text, "[hidden]",
            "an agent's scripts inherit its environment"
        );
    }

    #[test]
    fn a_user_is_found_by_name_or_number() {
        let root = RunAs::lookup("root").expect("root is in /etc/passwd");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(RunAs::lookup("0"), Some(root));
        assert_eq!(RunAs::lookup("no-such-user-here"), None);
    }
}
