//! Runs one script on this machine, the same way for the built-in worker and for agents: a private
//! working directory (0700, its script file 0600, removed afterwards), the interpreter in its own
//! process group, each output line delivered as it is printed, and the whole process group killed on
//! cancel, on timeout, when the script's own process exits, and when the runner itself dies.
//!
//! A script dies with its runner: the group's leader is a watchdog (`/bin/sh`) whose stdin is a pipe
//! that only the runner holds (close-on-exec). When the runner's process ends in any way, even by
//! SIGKILL, the pipe closes and the watchdog kills the whole group. No root and no cgroup is needed;
//! a process that leaves the group on purpose (`setsid`) escapes it, as it would escape a kill of the
//! group. Each running script also leaves a record beside its directory (`<dir>.group`, 0600: the
//! group's id), and its processes carry `MUSTER_SCRIPT_MARK=<dir>` in their environment, so that
//! [`clean_work_root`] can kill what a crash left and remove the directories (they hold script files
//! with secrets substituted in) at the next start.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Lines longer than this are delivered in pieces, so one endless line cannot exhaust memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The environment variable that marks every process of a script with its working directory.
pub const MARK_VARIABLE: &str = "MUSTER_SCRIPT_MARK";

/// The name prefix of the per-script working directories under a work root.
const DIR_PREFIX: &str = "muster-task-";

/// The watchdog: it ignores the signals a script's `kill 0` sends, waits for its stdin to close (its
/// runner ended) and then kills its process group, the script's.
const WATCHDOG: &str = "trap '' HUP INT TERM QUIT PIPE; read -r _; kill -9 0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Bash,
    Python,
    PowerShell,
}

impl Syntax {
    /// The interpreter, its arguments before the script file, and the script file's name (SSH
    /// workers run the same command line remotely).
    pub fn interpreter(self) -> (&'static str, &'static [&'static str], &'static str) {
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
/// the script down rather than losing lines). `cancel` resolving kills the process tree. The
/// working directory is removed when the script ends.
pub async fn run(
    script: Script,
    lines: mpsc::Sender<Vec<Line>>,
    cancel: impl Future<Output = ()>,
) -> Result<Outcome, ExecError> {
    run_keeping(script, lines, cancel)
        .await
        .map(|(outcome, _dir)| outcome)
}

/// A finished script's working directory, kept so that the files it announced can be collected;
/// removed when dropped (or, after a crash, by [`clean_work_root`] at the next start).
pub struct WorkDir {
    dir: tempfile::TempDir,
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Opens a file the script left, for reading: `path` relative to the directory, or absolute
    /// and inside it. A path that leads out of it (`..`, a symbolic link, another absolute path)
    /// is refused, and so is anything but a regular file.
    pub fn open(&self, path: &str) -> Result<(std::fs::File, u64), FileError> {
        open_inside(self.path(), path)
    }
}

/// Why a file of a script's working directory cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no such file")]
    Missing,
    #[error("the path leads outside the script's working directory")]
    Outside,
    #[error("it is not a regular file")]
    NotAFile,
    #[error("cannot read it: {0}")]
    Io(std::io::Error),
}

/// Opens `path` (relative to `dir`, or absolute and inside it) for reading, once every symbolic
/// link in it is resolved, only if it stays inside `dir` and is a regular file.
pub fn open_inside(dir: &Path, path: &str) -> Result<(std::fs::File, u64), FileError> {
    let dir = std::fs::canonicalize(dir).map_err(FileError::Io)?;
    let given = Path::new(path);
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        dir.join(given)
    };
    let real = match std::fs::canonicalize(&joined) {
        Ok(real) => real,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // Missing or a dangling link: say which only when the path would be inside.
            let lexical_inside = joined.starts_with(&dir)
                && !given
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            return Err(if lexical_inside {
                FileError::Missing
            } else {
                FileError::Outside
            });
        }
        Err(error) => return Err(FileError::Io(error)),
    };
    if !real.starts_with(&dir) || real == dir {
        return Err(FileError::Outside);
    }
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW on the resolved path: nothing swaps the last part for a link meanwhile.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
        .map_err(FileError::Io)?;
    // A process that escaped the script's group could swap a directory of the path for a link
    // between the check and the open: what was opened is checked again.
    use std::os::fd::AsRawFd;
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        && !opened.starts_with(&dir)
    {
        return Err(FileError::Outside);
    }
    let meta = file.metadata().map_err(FileError::Io)?;
    if !meta.is_file() {
        return Err(FileError::NotAFile);
    }
    Ok((file, meta.len()))
}

/// [`run`], keeping the working directory for the caller: the files the script announced are
/// read from it, and it is removed when the returned [`WorkDir`] is dropped.
pub async fn run_keeping(
    script: Script,
    lines: mpsc::Sender<Vec<Line>>,
    cancel: impl Future<Output = ()>,
) -> Result<(Outcome, WorkDir), ExecError> {
    let (program, args, file_name) = script.syntax.interpreter();
    let program_path = find_program(program).ok_or(ExecError::InterpreterMissing(program))?;

    std::fs::create_dir_all(&script.work_root)?;
    let work_root = std::fs::canonicalize(&script.work_root)?;
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir_in(&work_root)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    }
    write_private(&dir.path().join(file_name), script.body.as_bytes())?;
    if let Some(user) = &script.run_as {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))?;
        std::os::unix::fs::chown(dir.path().join(file_name), Some(user.uid), Some(user.gid))?;
    }
    let mark = dir.path().to_string_lossy().into_owned();

    // The watchdog leads the script's process group; its stdin is the runner's lifeline.
    let mut watchdog = Command::new("/bin/sh")
        .args(["-c", WATCHDOG])
        .current_dir(dir.path())
        .env_clear()
        .env(MARK_VARIABLE, &mark)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        // Not killed on drop: a dropped run closes the lifeline, and the watchdog must live to act.
        .spawn()?;
    let lifeline = watchdog.stdin.take();
    let group = watchdog.id().map(|pid| pid as i32).unwrap_or(0);
    let record = Record::write(&work_root, dir.path(), group)?;

    let mut command = Command::new(program_path);
    command
        .args(args)
        .arg(file_name)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(group)
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
    command.env(MARK_VARIABLE, &mark);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            kill_group(group);
            let _ = watchdog.wait().await;
            return Err(error.into());
        }
    };

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
    // Whatever ended the script, nothing it started may outlive it (the watchdog goes with it).
    kill_group(group);
    let _ = child.wait().await;
    let _ = watchdog.wait().await;
    drop(lifeline);
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
    drop(record);
    Ok((outcome, WorkDir { dir }))
}

/// Writes a file only its owner may read (it may hold secrets).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// A running script's record beside its directory: `<dir>.group` holds its process group's id.
/// Removed when the script ends; one left behind was left by a crash.
struct Record(PathBuf);

impl Record {
    fn write(work_root: &Path, dir: &Path, group: i32) -> std::io::Result<Record> {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let path = work_root.join(format!("{name}.group"));
        write_private(&path, format!("{group}\n").as_bytes())?;
        Ok(Record(path))
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What [`clean_work_root`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// Processes of earlier scripts that were still running, now killed.
    pub processes_killed: usize,
    /// Working directories (and records) removed.
    pub entries_removed: usize,
}

/// Cleans a work root at start-up, before any script runs there: kills the processes of scripts a
/// crashed runner left behind and removes their working directories. A process counts as a script's
/// only if its environment carries the mark of a directory under this root or its working directory
/// is one, so a process id reused by another program is never touched; a recorded group is killed
/// whole only when such a process is still in it. One work root must serve one runner.
pub fn clean_work_root(work_root: &Path) -> std::io::Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    let work_root = match std::fs::canonicalize(work_root) {
        Ok(root) => root,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(cleaned),
        Err(error) => return Err(error),
    };
    let prefix = work_root.join(DIR_PREFIX).to_string_lossy().into_owned();
    let mut recorded: Vec<i32> = Vec::new();
    let mut stale: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(&work_root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(DIR_PREFIX) {
            continue;
        }
        if let Some(group) = name
            .strip_suffix(".group")
            .and_then(|_| std::fs::read_to_string(entry.path()).ok())
            .and_then(|text| text.trim().parse::<i32>().ok())
        {
            recorded.push(group);
        }
        stale.push(entry.path());
    }
    let own_group = own_process_group();
    let ours: Vec<(i32, i32)> = processes()
        .into_iter()
        .filter(|&(pid, _)| is_marked(pid, &prefix))
        .collect();
    let mut groups: Vec<i32> = Vec::new();
    for &(pid, group) in &ours {
        // A script's process may have left its group; its new group is its own.
        if group > 1 && group != own_group && (recorded.contains(&group) || group == pid) {
            groups.push(group);
        }
        kill_process(pid);
        cleaned.processes_killed += 1;
    }
    groups.sort_unstable();
    groups.dedup();
    for group in groups {
        kill_group(group);
    }
    for path in stale {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if removed.is_ok() {
            cleaned.entries_removed += 1;
        }
    }
    Ok(cleaned)
}

/// The processes whose environment sets `variable` to a value under `prefix`, as
/// (pid, process group, value): how a dynamic pool's `process` provider finds the agents it
/// started, across its own restarts, without trusting a process id that may have been reused.
pub fn marked_processes(variable: &str, prefix: &str) -> Vec<(i32, i32, String)> {
    let own = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|&(pid, _)| pid != own)
        .filter_map(|(pid, group)| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            environ.split(|b| *b == 0).find_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let value = entry.strip_prefix(variable)?.strip_prefix('=')?;
                value
                    .starts_with(prefix)
                    .then(|| (pid, group, value.to_string()))
            })
        })
        .collect()
}

/// Sends `SIGTERM` (or with `kill`, `SIGKILL`) to a process group other than this process's own.
#[allow(unsafe_code)]
pub fn signal_group(group: i32, kill: bool) {
    if group <= 1 || group == own_process_group() {
        return;
    }
    let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
    // SAFETY: killpg only sends a signal; a group that no longer exists answers ESRCH, which is fine.
    unsafe {
        libc::killpg(group, signal);
    }
}

/// Every process on this machine as (pid, process group), from /proc.
fn processes() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: the fields follow the last ')'.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            Some((pid, fields.get(2)?.parse().ok()?))
        })
        .collect()
}

/// Whether a process is a script's under the work root whose directory prefix is `prefix`.
fn is_marked(pid: i32, prefix: &str) -> bool {
    if pid == std::process::id() as i32 {
        return false;
    }
    let marked = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ.split(|b| *b == 0).any(|entry| {
            let entry = String::from_utf8_lossy(entry);
            entry
                .strip_prefix(MARK_VARIABLE)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|value| value.starts_with(prefix))
        })
    });
    marked
        || std::fs::read_link(format!("/proc/{pid}/cwd"))
            .is_ok_and(|cwd| cwd.to_string_lossy().starts_with(prefix))
}

#[allow(unsafe_code)]
fn own_process_group() -> i32 {
    // SAFETY: getpgrp has no arguments and cannot fail.
    unsafe { libc::getpgrp() }
}

#[allow(unsafe_code)]
fn kill_process(pid: i32) {
    // SAFETY: kill only sends a signal; a process that no longer exists answers ESRCH, which is fine.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[allow(unsafe_code)]
fn kill_group(group: i32) {
    if group <= 1 {
        return;
    }
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

    use std::os::unix::process::ExitStatusExt;

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'))
            .unwrap_or(true)
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
        let (outcome, lines) = run_bash("pwd; stat -c %a . script.sh", None).await;
        assert_eq!(outcome, Outcome::Exited(0));
        assert_eq!(lines[1].text, "700");
        assert_eq!(lines[2].text, "600", "the script file may hold secrets");
        assert!(!Path::new(&lines[0].text).exists());
        assert!(!Path::new(&format!("{}.group", lines[0].text)).exists());
    }

    #[tokio::test]
    async fn a_runner_that_goes_away_takes_the_whole_group_with_it() {
        // Dropping the run is what the runner's death looks like to the watchdog: its pipe closes.
        let marker =
            std::env::temp_dir().join(format!("muster-exec-dropped-{}", std::process::id()));
        let body = format!(
            "(sleep 1; touch {}) &\necho started\nsleep 30",
            marker.display()
        );
        let root = std::env::temp_dir().join("muster-exec-tests");
        let (tx, mut rx) = mpsc::channel(16);
        let script = Script {
            syntax: Syntax::Bash,
            body,
            env: vec![],
            clean_env: false,
            timeout: None,
            work_root: root,
            run_as: None,
        };
        let mut run = Box::pin(run(script, tx, std::future::pending()));
        tokio::select! {
            _ = &mut run => panic!("the script ended early"),
            batch = rx.recv() => assert_eq!(batch.unwrap()[0].text, "started"),
        }
        drop(run);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "a child of the script outlived its runner"
        );
    }

    #[test]
    fn cleaning_a_work_root_kills_marked_processes_only_and_removes_stale_directories() {
        use std::os::unix::process::CommandExt;
        let root = tempfile::tempdir().unwrap();
        let stale = root.path().join("muster-task-stale");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("script.sh"), "secret").unwrap();
        let canonical = std::fs::canonicalize(&stale).unwrap();
        // A leftover script: its group leader carries the mark, its child does not.
        let mut ours = std::process::Command::new("/bin/sh")
            .args(["-c", "env -i sleep 30 & wait"])
            .env(MARK_VARIABLE, &canonical)
            .process_group(0)
            .spawn()
            .unwrap();
        // A stranger whose group id a stale record names, as after a reused pid.
        let mut stranger = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        std::fs::write(
            root.path().join("muster-task-stale.group"),
            format!("{}\n", ours.id()),
        )
        .unwrap();
        std::fs::write(
            root.path().join("muster-task-other.group"),
            format!("{}\n", stranger.id()),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let cleaned = clean_work_root(root.path()).unwrap();
        assert_eq!(cleaned.processes_killed, 1);
        assert_eq!(cleaned.entries_removed, 3);
        assert!(ours.wait().unwrap().signal().is_some());
        let group = ours.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while processes()
            .iter()
            .any(|&(pid, g)| g == group && !is_zombie(pid))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the leftover group is gone"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "a stranger is spared"
        );
        stranger.kill().unwrap();
        let _ = stranger.wait();
        assert!(!stale.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
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

    #[tokio::test]
    async fn a_kept_directory_opens_its_own_files_only_and_goes_when_dropped() {
        let root = std::env::temp_dir().join("muster-exec-tests");
        let outside = std::env::temp_dir().join(format!("muster-exec-out-{}", std::process::id()));
        std::fs::write(&outside, "secret").unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let script = Script {
            syntax: Syntax::Bash,
            body: format!(
                "mkdir sub; printf hello > sub/a.txt; ln -s {} out; ln -s sub/a.txt in; mkfifo pipe",
                outside.display()
            ),
            env: vec![],
            clean_env: false,
            timeout: None,
            work_root: root,
            run_as: None,
        };
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let (outcome, dir) = run_keeping(script, tx, std::future::pending())
            .await
            .unwrap();
        drain.await.unwrap();
        assert_eq!(outcome, Outcome::Exited(0));
        let (_, length) = dir.open("sub/a.txt").unwrap();
        assert_eq!(length, 5);
        let absolute = dir.path().join("sub/a.txt");
        assert!(dir.open(absolute.to_str().unwrap()).is_ok());
        assert!(dir.open("in").is_ok(), "a link that stays inside is fine");
        assert!(matches!(dir.open("out"), Err(FileError::Outside)));
        assert!(matches!(dir.open("../x"), Err(FileError::Outside)));
        assert!(matches!(dir.open("sub/../../x"), Err(FileError::Outside)));
        assert!(matches!(
            dir.open(outside.to_str().unwrap()),
            Err(FileError::Outside)
        ));
        assert!(matches!(dir.open("nope"), Err(FileError::Missing)));
        assert!(matches!(dir.open("sub"), Err(FileError::NotAFile)));
        assert!(matches!(dir.open("pipe"), Err(FileError::NotAFile)));
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        std::fs::remove_file(outside).unwrap();
    }

    #[test]
    fn a_user_is_found_by_name_or_number() {
        let root = RunAs::lookup("root").expect("root is in /etc/passwd");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(RunAs::lookup("0"), Some(root));
        assert_eq!(RunAs::lookup("no-such-user-here"), None);
    }
}
