//! The remote script protocol: a script outlives the server.
//!
//! [`Session::start`] makes `$HOME/.muster/work/<ticket>` (0700) on the worker, uploads the script
//! (0600), its environment and two small POSIX-sh programs, and launches the keeper (`run.sh`)
//! detached (`setsid`, stdin from /dev/null). The keeper starts the interpreter in a process group
//! of its own under `job.sh` and records the group in `pgid`; every line the script prints goes to
//! the one file `output`, prefixed `O ` or `E ` (so stdout and stderr keep their relative order as
//! far as the pipes allow), one write per line. The keeper enforces the timeout itself, so it holds
//! while no server is connected, and at the end writes `exit` (`exited N`, `canceled`, `timedout`)
//! atomically (`exit.tmp`, then `mv`). A signal's death shows as `exited 128+N`, as in a shell.
//!
//! [`Session::follow`] streams `output` from a byte offset and hands each complete line over with
//! its **end offset**: a caller that stored line N's offset re-attaches with that offset and loses
//! and duplicates nothing. The files the script reads and writes are in the same directory, which
//! [`Session::remove`] deletes.
//!
//! Only POSIX sh, coreutils, awk and `tail` are needed on the worker (GNU tail follows with inotify;
//! elsewhere the output is polled every second). The commands reach `sh` through the login user's
//! shell, so that shell must accept multi-line single-quoted words (sh, bash, zsh, fish do).

use crate::session::Chan;
use crate::{Error, Session};
use muster_exec::{MAX_LINE_BYTES, Outcome, Stream, Syntax};
use russh::ChannelMsg;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, ReadBuf};
use tokio::sync::mpsc;

const RUN_SH: &str = include_str!("../sh/run.sh");
const JOB_SH: &str = include_str!("../sh/job.sh");
const START_SH: &str = include_str!("../sh/start.sh");
const FOLLOW_SH: &str = include_str!("../sh/follow.sh");
const KILL_SH: &str = include_str!("../sh/kill.sh");
const READ_SH: &str = include_str!("../sh/read.sh");

/// Seconds between TERM and KILL when a script is canceled or times out.
pub const GRACE_SECONDS: u64 = 3;

/// How much of a follow's stderr is kept for its error message.
const STDERR_LIMIT: usize = 64 * 1024;

/// A script to run on a worker.
#[derive(Debug, Clone)]
pub struct RemoteScript {
    /// Names the script's working directory: letters, digits, `-` and `_`, at most 64.
    pub ticket: String,
    pub syntax: Syntax,
    pub body: String,
    pub env: Vec<(String, String)>,
    /// Enforced on the worker (rounded up to whole seconds).
    pub timeout: Option<Duration>,
}

/// One line of a script's output and where it ends in the `output` file: re-attach from `offset`
/// to get the lines after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
    pub offset: u64,
}

/// A file from a script's working directory, streamed over a connection of its own: its size,
/// then its bytes.
pub struct RemoteFile {
    pub size: u64,
    read: u64,
    reader: BufReader<russh::ChannelStream<russh::client::Msg>>,
    _connection: russh::client::Handle<crate::session::Client>,
}

impl AsyncRead for RemoteFile {
    /// Ends with `UnexpectedEof` when the connection drops before `size` bytes came.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.reader).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = (buf.filled().len() - before) as u64;
                this.read += got;
                if got == 0 && this.read < this.size {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "the connection ended after {} of {} bytes",
                            this.read, this.size
                        ),
                    )));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// A ticket names a directory: it must not be able to name any other.
fn check_ticket(ticket: &str) -> Result<(), Error> {
    let ok = !ticket.is_empty()
        && ticket.len() <= 64
        && ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadTicket(ticket.to_string()))
    }
}

/// A path inside the working directory: relative, without `..`, NUL or a line break.
fn check_path(path: &str) -> Result<(), Error> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains(['\0', '\n', '\r'])
        && path.split('/').all(|part| part != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::BadPath(path.to_string()))
    }
}

fn check_variable(name: &str) -> Result<(), Error> {
    let mut bytes = name.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadVariable(name.to_string()))
    }
}

/// Quotes a word for POSIX sh.
pub(crate) fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `sh -c PROGRAM muster ARGS…`, as one command line for the login shell.
pub(crate) fn sh_command(program: &str, args: &[&str]) -> String {
    let mut command = format!("sh -c {} muster", quote(program));
    for arg in args {
        command.push(' ');
        command.push_str(&quote(arg));
    }
    command
}

/// The environment file the interpreter's shell sources (with `set -a`, so each is exported).
/// A NUL cannot be in an environment variable; it is dropped.
fn env_file(env: &[(String, String)]) -> Result<String, Error> {
    let mut file = String::new();
    for (name, value) in env {
        check_variable(name)?;
        file.push_str(name);
        file.push('=');
        file.push_str(&quote(&value.replace('\0', "")));
        file.push('\n');
    }
    Ok(file)
}

fn stderr_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

impl Session {
    /// Starts a script detached on the worker. Returns `false`, doing nothing, when the ticket
    /// already has a working directory (a start repeated after a crash); an upload cut short leaves
    /// no directory behind, so it can be repeated.
    pub async fn start(&self, script: &RemoteScript) -> Result<bool, Error> {
        check_ticket(&script.ticket)?;
        let env = env_file(&script.env)?;
        let (program, args, file_name) = script.syntax.interpreter();
        let mut bundle = Vec::with_capacity(RUN_SH.len() + JOB_SH.len() + env.len());
        for part in [RUN_SH, JOB_SH, env.as_str(), script.body.as_str()] {
            bundle.extend_from_slice(part.as_bytes());
        }
        let timeout = script
            .timeout
            .map(|t| t.as_secs() + u64::from(t.subsec_nanos() > 0))
            .map(|s| s.max(1))
            .unwrap_or(0);
        let lengths = [
            bundle.len().to_string(),
            RUN_SH.len().to_string(),
            JOB_SH.len().to_string(),
            env.len().to_string(),
        ];
        let script_len = script.body.len().to_string();
        let (timeout, grace) = (timeout.to_string(), GRACE_SECONDS.to_string());
        let mut words: Vec<&str> = vec![&script.ticket];
        words.extend(lengths.iter().map(String::as_str));
        words.extend([file_name, &script_len, &timeout, &grace, program]);
        words.extend(args.iter().copied());
        words.push(file_name);
        let output = self.run_program("start", START_SH, &words, &bundle).await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match stdout.trim() {
            "started" if output.success() => Ok(true),
            "exists" if output.success() => Ok(false),
            _ => Err(Error::Remote {
                what: "start the script",
                detail: stderr_text(&output.stderr),
            }),
        }
    }

    /// Streams a script's output from byte offset `after` (0 for the start) until the script has
    /// ended and its output is read to the end, and returns how it ended. Each complete line goes to
    /// `lines` (in batches, as they arrive) with its end offset; a final unterminated line is handed
    /// over at the end. A full `lines` slows the reading down rather than losing lines.
    pub async fn follow(
        &self,
        ticket: &str,
        after: u64,
        lines: mpsc::Sender<Vec<Line>>,
    ) -> Result<Outcome, Error> {
        check_ticket(ticket)?;
        let after_text = after.to_string();
        let Chan {
            mut channel,
            permit: _permit,
            ..
        } = self
            .program_channel("follow", FOLLOW_SH, &[ticket, &after_text])
            .await?;
        let mut splitter = Splitter::new(after);
        let mut stderr = Vec::new();
        let (mut status, mut refused) = (None, false);
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    let batch = splitter.push(&data);
                    if !batch.is_empty() && lines.send(batch).await.is_err() {
                        return Err(Error::Remote {
                            what: "follow the script",
                            detail: "nobody reads its lines any more".into(),
                        });
                    }
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    let room = STDERR_LIMIT.saturating_sub(stderr.len());
                    stderr.extend_from_slice(&data[..data.len().min(room)]);
                }
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Failure => refused = true,
                _ => {}
            }
        }
        let Some(status) = status else {
            return Err(self.no_end(refused));
        };
        if let Some(last) = splitter.finish() {
            let _ = lines.send(vec![last]).await;
        }
        if status == 3 {
            return Err(Error::NoSuchScript(ticket.to_string()));
        }
        let stderr = String::from_utf8_lossy(&stderr);
        let end = stderr
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("end "))
            .map(str::trim);
        match end {
            Some("canceled") => Ok(Outcome::Canceled),
            Some("timedout") => Ok(Outcome::TimedOut),
            Some("lost") => Err(Error::Lost(ticket.to_string())),
            Some(other) => match other.strip_prefix("exited ").map(|c| c.trim().parse()) {
                Some(Ok(code)) => Ok(Outcome::Exited(code)),
                _ => Err(Error::Remote {
                    what: "follow the script",
                    detail: format!("unexpected end record '{other}'"),
                }),
            },
            None => Err(Error::Remote {
                what: "follow the script",
                detail: stderr.trim().to_string(),
            }),
        }
    }

    /// Cancels a script: marks it canceled, sends TERM to its process group and KILL after
    /// [`GRACE_SECONDS`], and waits (a few seconds at most) until its end is recorded. A script
    /// that has ended, or an unknown ticket, is left alone.
    pub async fn kill(&self, ticket: &str) -> Result<(), Error> {
        check_ticket(ticket)?;
        let grace = GRACE_SECONDS.to_string();
        let output = self
            .run(&sh_command(KILL_SH, &[ticket, &grace]), &[])
            .await?;
        if output.success() {
            Ok(())
        } else {
            Err(Error::Remote {
                what: "cancel the script",
                detail: stderr_text(&output.stderr),
            })
        }
    }

    /// Deletes a script's working directory (its output, its files); a script still running
    /// there is killed first, without grace.
    pub async fn remove(&self, ticket: &str) -> Result<(), Error> {
        check_ticket(ticket)?;
        let program = r#"d="$HOME/.muster/work/$1"
if [ -f "$d/pgid" ] && [ ! -f "$d/exit" ]; then : > "$d/cancel"; kill -KILL -"$(cat "$d/pgid")" 2>/dev/null; fi
rm -rf "$d""#;
        let output = self.run(&sh_command(program, &[ticket]), &[]).await?;
        if output.success() {
            Ok(())
        } else {
            Err(Error::Remote {
                what: "remove the script's working directory",
                detail: stderr_text(&output.stderr),
            })
        }
    }

    /// The scripts that have a working directory on the worker, and whether each has ended: for a
    /// server to remove what it no longer knows (a task deleted while its worker was away).
    pub async fn tickets(&self) -> Result<Vec<(String, bool)>, Error> {
        let program = r#"cd "$HOME/.muster/work" 2>/dev/null || exit 0
for d in *; do [ -d "$d" ] || continue; if [ -f "$d/exit" ]; then echo "ended $d"; else echo "running $d"; fi; done"#;
        let output = self.run(&sh_command(program, &[]), &[]).await?;
        if !output.success() {
            return Err(Error::Remote {
                what: "list its scripts",
                detail: stderr_text(&output.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (state, ticket) = line.split_once(' ')?;
                check_ticket(ticket).ok()?;
                Some((ticket.to_string(), state == "ended"))
            })
            .collect())
    }

    /// Streams a file from a script's working directory (`path` relative to it, without `..`):
    /// `None` when there is no such file; [`Error::BadPath`] when it is a symbolic link that leads
    /// out of the directory. The bytes are never held whole in memory.
    pub async fn read_file(&self, ticket: &str, path: &str) -> Result<Option<RemoteFile>, Error> {
        check_ticket(ticket)?;
        check_path(path)?;
        let (connection, channel) = self.bulk_channel().await?;
        channel
            .exec(true, sh_command(READ_SH, &[ticket, path]))
            .await?;
        let mut reader = BufReader::new(channel.into_stream());
        let mut header = String::new();
        let read = (&mut reader)
            .take(64)
            .read_line(&mut header)
            .await
            .map_err(|_| self.disconnected())?;
        if read == 0 {
            return Err(self.disconnected());
        }
        match header.trim() {
            "missing" => return Ok(None),
            "outside" => return Err(Error::BadPath(path.to_string())),
            _ => {}
        }
        let size = header
            .trim()
            .strip_prefix("size ")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Remote {
                what: "read the file",
                detail: format!("unexpected answer '{}'", header.trim()),
            })?;
        Ok(Some(RemoteFile {
            size,
            read: 0,
            reader,
            _connection: connection,
        }))
    }
}

/// Cuts the `output` file's bytes into lines and tells each one's stream and end offset.
struct Splitter {
    pending: Vec<u8>,
    /// The offset of `pending`'s first byte.
    offset: u64,
}

impl Splitter {
    fn new(offset: u64) -> Self {
        Splitter {
            pending: Vec::new(),
            offset,
        }
    }

    fn push(&mut self, data: &[u8]) -> Vec<Line> {
        self.pending.extend_from_slice(data);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(newline) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + newline + 1;
            lines.push(self.line(start, end - 1, end));
            start = end;
        }
        // The keeper cuts long lines; this only bounds memory against an output file gone wrong.
        if self.pending.len() - start > 2 * MAX_LINE_BYTES {
            let end = self.pending.len();
            lines.push(self.line(start, end, end));
            start = end;
        }
        self.offset += start as u64;
        self.pending.drain(..start);
        lines
    }

    fn line(&self, start: usize, text_end: usize, end: usize) -> Line {
        let raw = &self.pending[start..text_end];
        let (stream, text) = match raw {
            [b'E', b' ', rest @ ..] => (Stream::Stderr, rest),
            [b'O', b' ', rest @ ..] => (Stream::Stdout, rest),
            other => (Stream::Stdout, other),
        };
        Line {
            stream,
            text: String::from_utf8_lossy(text).into_owned(),
            offset: self.offset + end as u64,
        }
    }

    fn finish(mut self) -> Option<Line> {
        if self.pending.is_empty() {
            return None;
        }
        let end = self.pending.len();
        let line = self.line(0, end, end);
        self.pending.clear();
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_their_end_offsets() {
        let mut splitter = Splitter::new(100);
        assert!(splitter.push(b"O hel").is_empty());
        let lines = splitter.push(b"lo\nE oops\nO par");
        assert_eq!(
            lines,
            vec![
                Line {
                    stream: Stream::Stdout,
                    text: "hello".into(),
                    offset: 108
                },
                Line {
                    stream: Stream::Stderr,
                    text: "oops".into(),
                    offset: 115
                },
            ]
        );
        assert_eq!(
            splitter.finish(),
            Some(Line {
                stream: Stream::Stdout,
                text: "par".into(),
                offset: 120
            })
        );
    }

    /// start.sh run by a local sh (as the worker's would): an upload cut short leaves nothing, so
    /// that the start can be repeated; a ticket with a directory is left alone.
    #[test]
    fn a_cut_upload_leaves_nothing_and_a_repeated_start_does_nothing() {
        let home = tempfile::tempdir().unwrap();
        let start = |total: &str, stdin: &[u8]| {
            use std::io::Write;
            let mut child = std::process::Command::new("sh")
                .args([
                    "-c", START_SH, "muster", "T-1", total, "1", "1", "1", "s.sh", "1",
                ])
                .args(["0", "3", "true"])
                .env("HOME", home.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin).unwrap();
            child.wait_with_output().unwrap()
        };
        let dir = home.path().join(".muster/work/T-1");
        let cut = start("4", b"abc");
        assert!(!cut.status.success());
        assert!(String::from_utf8_lossy(&cut.stderr).contains("cut short"));
        assert!(!dir.exists());
        std::fs::create_dir_all(&dir).unwrap();
        let again = start("4", b"abcd");
        assert!(again.status.success());
        assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "exists");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_ticket("Tasks-1_a").is_ok());
        for bad in ["", "a/b", "..", "a b", "ü", &"x".repeat(65)] {
            assert!(check_ticket(bad).is_err(), "{bad}");
        }
        assert!(check_path("out/report.txt").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a\nb"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert!(check_variable("Octopus_1").is_ok());
        for bad in ["", "1A", "A-B", "A B"] {
            assert!(check_variable(bad).is_err(), "{bad}");
        }
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
