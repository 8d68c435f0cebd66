//! muster-ssh against a real OpenSSH sshd on 127.0.0.1 (see `sshd/mod.rs`).

mod sshd;

use muster_exec::{Outcome, Stream, Syntax};
use muster_ssh::keys::{Fingerprint, read_private_key};
use muster_ssh::{Auth, Error, Line, RemoteScript, Session, Target, scan};
use sshd::Sshd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(10);

struct Fixture {
    sshd: Sshd,
    _keys: tempfile::TempDir,
    auth: Auth,
    pin: Fingerprint,
}

impl Fixture {
    async fn start() -> Fixture {
        let keys = tempfile::tempdir().unwrap();
        let key_file = sshd::keygen(keys.path(), "client", "");
        let sshd = Sshd::start(&[&key_file]);
        let key = read_private_key(&std::fs::read(&key_file).unwrap(), None).unwrap();
        let pin = scan("127.0.0.1", sshd.port, TIMEOUT).await.unwrap().sha256;
        Fixture {
            sshd,
            _keys: keys,
            auth: Auth::Key {
                username: sshd::login_user(),
                key: Arc::new(key),
            },
            pin,
        }
    }

    fn target(&self) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: self.sshd.port,
            pin: self.pin.clone(),
        }
    }

    async fn session(&self) -> Session {
        Session::connect(&self.target(), &self.auth, TIMEOUT)
            .await
            .unwrap()
            .0
    }
}

/// A ticket no other test (or earlier run) uses.
fn ticket(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn bash(ticket: &str, body: &str) -> RemoteScript {
    RemoteScript {
        ticket: ticket.to_string(),
        syntax: Syntax::Bash,
        body: body.to_string(),
        env: Vec::new(),
        timeout: None,
    }
}

/// Follows a script to its end and returns every line and the end.
async fn follow_all(
    session: &Session,
    ticket: &str,
    after: u64,
) -> (Vec<Line>, Result<Outcome, Error>) {
    let (sender, mut receiver) = mpsc::channel(16);
    let collect = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(batch) = receiver.recv().await {
            all.extend(batch);
        }
        all
    });
    let end = session.follow(ticket, after, sender).await;
    (collect.await.unwrap(), end)
}

fn texts(lines: &[Line]) -> Vec<String> {
    lines.iter().map(|l| l.text.clone()).collect()
}

fn fingerprint_of(file: &std::path::Path, hash: &str) -> String {
    // "256 SHA256:… comment (ED25519)"
    sshd::run("ssh-keygen", &["-E", hash, "-lf", file.to_str().unwrap()])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn scan_gives_the_fingerprints_ssh_keygen_prints() {
    let f = Fixture::start().await;
    let key = scan("127.0.0.1", f.sshd.port, TIMEOUT).await.unwrap();
    assert_eq!(key.algorithm, "ssh-ed25519");
    assert_eq!(
        key.sha256.to_string(),
        fingerprint_of(&f.sshd.host_key_pub(), "sha256")
    );
    let md5 = fingerprint_of(&f.sshd.host_key_pub(), "md5");
    assert_eq!(format!("MD5:{}", key.md5), md5);
    assert_eq!(Fingerprint::parse(&md5).unwrap(), key.md5);
    // Nothing listens there: a clear error, quickly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let error = scan("127.0.0.1", port, TIMEOUT).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
}

#[tokio::test]
async fn key_password_and_encrypted_key_logins() {
    let keys = tempfile::tempdir().unwrap();
    let plain = sshd::keygen(keys.path(), "plain", "");
    let locked = sshd::keygen(keys.path(), "locked", "open sesame");
    let sshd = Sshd::start(&[&plain, &locked]);
    let pin = scan("127.0.0.1", sshd.port, TIMEOUT).await.unwrap().sha256;
    let target = Target {
        host: "127.0.0.1".into(),
        port: sshd.port,
        pin,
    };
    let login = |file: &std::path::Path, passphrase: Option<&str>| Auth::Key {
        username: sshd::login_user(),
        key: Arc::new(read_private_key(&std::fs::read(file).unwrap(), passphrase).unwrap()),
    };

    for auth in [login(&plain, None), login(&locked, Some("open sesame"))] {
        let (session, host_key) = Session::connect(&target, &auth, TIMEOUT).await.unwrap();
        assert_eq!(host_key.sha256, target.pin);
        let output = session.exec("id -un; uname -s").await.unwrap();
        assert!(output.success());
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{}\nLinux\n", sshd::login_user())
        );
        let failed = session.exec("echo oops >&2; exit 7").await.unwrap();
        assert_eq!(failed.status, Some(7));
        assert_eq!(failed.stderr, b"oops\n");
    }

    // A key the host does not know.
    let stranger = sshd::keygen(keys.path(), "stranger", "");
    let error = Session::connect(&target, &login(&stranger, None), TIMEOUT)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, Error::AuthRejected { method: "key", .. }),
        "{error}"
    );

    if sshd::password_user() {
        let auth = Auth::Password {
            username: sshd::PASSWORD_USER.into(),
            password: sshd::PASSWORD.into(),
        };
        let (session, _) = Session::connect(&target, &auth, TIMEOUT).await.unwrap();
        let output = session.exec("id -un").await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            sshd::PASSWORD_USER
        );
        let wrong = Auth::Password {
            username: sshd::PASSWORD_USER.into(),
            password: "wrong".into(),
        };
        let error = Session::connect(&target, &wrong, TIMEOUT)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                error,
                Error::AuthRejected {
                    method: "password",
                    ..
                }
            ),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_wrong_pin_is_refused_before_any_command() {
    let f = Fixture::start().await;
    let proof = f.sshd.dir.path().join("proof");
    let other = Fingerprint::parse("SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8").unwrap();
    let target = Target {
        pin: other.clone(),
        ..f.target()
    };
    match Session::connect(&target, &f.auth, TIMEOUT).await {
        Ok((session, _)) => {
            // Had the key been accepted, this would create the file.
            let _ = session.exec(&format!("touch {}", proof.display())).await;
            panic!("a changed host key was accepted");
        }
        Err(Error::HostKeyChanged {
            pinned, presented, ..
        }) => {
            assert_eq!(pinned, other);
            assert_eq!(presented.sha256, f.pin);
            assert_eq!(presented.algorithm, "ssh-ed25519");
        }
        Err(other) => panic!("{other}"),
    }
    assert!(!proof.exists());
    // sshd saw no login attempt at all.
    let log = f.sshd.log();
    assert!(
        !log.contains("Accepted") && !log.contains("Failed"),
        "{log}"
    );

    // An MD5 pin of the right key is accepted, and the SHA-256 of the same key comes back.
    let md5 = scan("127.0.0.1", f.sshd.port, TIMEOUT).await.unwrap().md5;
    let target = Target {
        pin: md5,
        ..f.target()
    };
    let (_, host_key) = Session::connect(&target, &f.auth, TIMEOUT).await.unwrap();
    assert_eq!(host_key.sha256, f.pin);
    // A wrong MD5 pin names the presented key in MD5 form.
    let target = Target {
        pin: Fingerprint::parse("16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").unwrap(),
        ..f.target()
    };
    let error = Session::connect(&target, &f.auth, TIMEOUT)
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(message.contains("pinned to 16:27:ac:a5"), "{message}");
    let Error::HostKeyChanged { presented, .. } = error else {
        panic!("{error}")
    };
    // The message compares like with like: the presented key in MD5 form too.
    assert!(
        message.contains(&format!("ssh-ed25519 {}", presented.md5)),
        "{message}"
    );
}

#[tokio::test]
async fn a_pin_may_name_any_of_the_hosts_keys() {
    let keys = tempfile::tempdir().unwrap();
    let client = sshd::keygen(keys.path(), "client", "");
    let sshd = Sshd::start_with_host_keys(&[&client], &["ed25519", "ecdsa", "rsa"]);
    let auth = Auth::Key {
        username: sshd::login_user(),
        key: Arc::new(read_private_key(&std::fs::read(&client).unwrap(), None).unwrap()),
    };
    // A scan gets the key the default order prefers.
    let scanned = scan("127.0.0.1", sshd.port, TIMEOUT).await.unwrap();
    assert_eq!(scanned.algorithm, "ssh-ed25519");
    for (kind, algorithm) in [
        ("ed25519", "ssh-ed25519"),
        ("ecdsa", "ecdsa-sha2-nistp256"),
        ("rsa", "ssh-rsa"),
    ] {
        for hash in ["sha256", "md5"] {
            let printed = fingerprint_of(&sshd.host_key_pub_of(kind), hash);
            let target = Target {
                host: "127.0.0.1".into(),
                port: sshd.port,
                pin: Fingerprint::parse(&printed).unwrap(),
            };
            let (session, host_key) = Session::connect(&target, &auth, TIMEOUT).await.unwrap();
            assert_eq!(host_key.algorithm, algorithm);
            assert_eq!(
                host_key.sha256.to_string(),
                fingerprint_of(&sshd.host_key_pub_of(kind), "sha256")
            );
            assert!(session.exec("true").await.unwrap().success());
        }
    }
}

#[tokio::test]
async fn lines_stream_in_order_with_their_streams_and_the_exit_code() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("lines");
    let mut script = bash(
        &id,
        "echo \"one $GREETING\"\necho two >&2\nsleep 0.3\necho three\nprintf 'no newline'\nexit 3\n",
    );
    script.env = vec![("GREETING".into(), "it's \"quoted\" $HOME".into())];
    assert!(session.start(&script).await.unwrap());
    let (lines, end) = follow_all(&session, &id, 0).await;
    assert_eq!(end.unwrap(), Outcome::Exited(3));
    let of = |stream: Stream| -> Vec<&str> {
        lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text.as_str())
            .collect()
    };
    assert_eq!(
        of(Stream::Stdout),
        ["one it's \"quoted\" $HOME", "three", "no newline"]
    );
    assert_eq!(of(Stream::Stderr), ["two"]);
    // Across the two pipes, order holds as far as time separates the lines (the sleep).
    let position = |text: &str| lines.iter().position(|l| l.text == text).unwrap();
    assert!(position("two") < position("three"));
    // Offsets grow and the last is the file's size.
    assert!(lines.windows(2).all(|w| w[0].offset < w[1].offset));
    let size = session
        .exec(&format!("wc -c < ~/.muster/work/{id}/output"))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        lines.last().unwrap().offset.to_string()
    );
    // Following again after the end gives the same, and from an offset the rest only.
    let (again, end) = follow_all(&session, &id, 0).await;
    assert_eq!(again, lines);
    assert_eq!(end.unwrap(), Outcome::Exited(3));
    let (rest, _) = follow_all(&session, &id, lines[1].offset).await;
    assert_eq!(rest, lines[2..]);
    session.remove(&id).await.unwrap();

    // Python, and a missing interpreter's clear message.
    let id = ticket("python");
    let script = RemoteScript {
        syntax: Syntax::Python,
        body: "import sys\nprint('from python')\nsys.exit(0)\n".into(),
        ..bash(&id, "")
    };
    session.start(&script).await.unwrap();
    let (lines, end) = follow_all(&session, &id, 0).await;
    assert_eq!(texts(&lines), ["from python"]);
    assert_eq!(end.unwrap(), Outcome::Exited(0));
    session.remove(&id).await.unwrap();

    let id = ticket("pwsh");
    let script = RemoteScript {
        syntax: Syntax::PowerShell,
        body: "Write-Host hi\n".into(),
        ..bash(&id, "")
    };
    session.start(&script).await.unwrap();
    let (lines, end) = follow_all(&session, &id, 0).await;
    if end.as_ref().is_ok_and(|e| *e == Outcome::Exited(127)) {
        assert_eq!(lines[0].stream, Stream::Stderr);
        assert!(lines[0].text.contains("pwsh is not installed"), "{lines:?}");
    }
    session.remove(&id).await.unwrap();

    let error = session
        .follow("no-such-ticket", 0, mpsc::channel(1).0)
        .await;
    assert!(matches!(error, Err(Error::NoSuchScript(_))), "{error:?}");
    let error = session.start(&bash("../escape", "true")).await;
    assert!(matches!(error, Err(Error::BadTicket(_))), "{error:?}");
}

#[tokio::test]
async fn the_working_directory_is_private_start_is_idempotent_and_remove_deletes_it() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("dir");
    assert!(session.start(&bash(&id, "echo once\n")).await.unwrap());
    // A repeated start (after a server crash) does nothing.
    assert!(!session.start(&bash(&id, "echo twice\n")).await.unwrap());
    let (lines, end) = follow_all(&session, &id, 0).await;
    assert_eq!(texts(&lines), ["once"]);
    assert_eq!(end.unwrap(), Outcome::Exited(0));
    let modes = session
        .exec(&format!(
            "cd ~/.muster/work/{id} && stat -c '%a' . && stat -c '%a' script.sh env"
        ))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&modes.stdout), "700\n600\n600\n");
    assert!(
        session
            .tickets()
            .await
            .unwrap()
            .contains(&(id.clone(), true))
    );
    session.remove(&id).await.unwrap();
    assert!(
        !session
            .tickets()
            .await
            .unwrap()
            .iter()
            .any(|(t, _)| *t == id)
    );
    let gone = session
        .exec(&format!("test -e ~/.muster/work/{id}"))
        .await
        .unwrap();
    assert_eq!(gone.status, Some(1));
}

#[tokio::test]
async fn fifty_concurrent_scripts_through_one_session() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let runs = (0..50).map(|i| {
        let session = session.clone();
        async move {
            let id = ticket(&format!("many{i}"));
            let body = format!(
                "echo \"start {i} $(date +%s%N)\"\nsleep 3\necho \"end {i} $(date +%s%N)\" >&2\n"
            );
            session.start(&bash(&id, &body)).await.unwrap();
            let (lines, end) = follow_all(&session, &id, 0).await;
            session.remove(&id).await.unwrap();
            (i, lines, end.unwrap())
        }
    });
    let results = futures_join_all(runs).await;
    let mut spans = Vec::new();
    for (i, lines, end) in results {
        assert_eq!(end, Outcome::Exited(0));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].text.starts_with(&format!("start {i} ")));
        assert!(lines[1].text.starts_with(&format!("end {i} ")));
        assert_eq!(lines[1].stream, Stream::Stderr);
        let at = |line: &Line| -> u128 { line.text.rsplit(' ').next().unwrap().parse().unwrap() };
        spans.push((at(&lines[0]), at(&lines[1])));
    }
    // They ran at once: how many were running at the same moment (this machine's load decides
    // how fast the starts come, so the bar is low).
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    eprintln!("at most {most} of the 50 scripts ran at the same moment");
    assert!(most >= 10, "{most}");
    // OpenSSH allows 10 channels per connection: the session opened a few more connections.
    let logins = f.sshd.log().matches("Accepted publickey").count();
    eprintln!("50 concurrent scripts used {logins} connections");
    assert!((2..=16).contains(&logins), "{logins} logins");
}

/// Runs futures concurrently on this task (no extra dependency for join_all).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// How many processes on the worker have `needle` in their command line, checked over SSH.
async fn remote_processes(session: &Session, needle: &str) -> usize {
    let output = session.exec("ps -eo args").await.unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test]
async fn kill_ends_the_whole_remote_tree() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("kill");
    // A child in the background, a grandchild that ignores TERM (KILL gets it), and the script.
    let body = "sleep 7650001 &\n(trap '' TERM; sleep 7650002) &\necho ready\nsleep 7650003\n";
    session.start(&bash(&id, body)).await.unwrap();
    let (sender, mut receiver) = mpsc::channel(16);
    let follow = {
        let session = session.clone();
        let id = id.clone();
        tokio::spawn(async move { session.follow(&id, 0, sender).await })
    };
    assert_eq!(receiver.recv().await.unwrap()[0].text, "ready");
    // The background ones may start a moment after the line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while remote_processes(&session, "sleep 765000").await < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remote_processes(&session, "sleep 765000").await, 3);
    let started = Instant::now();
    session.kill(&id).await.unwrap();
    assert_eq!(follow.await.unwrap().unwrap(), Outcome::Canceled);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(remote_processes(&session, "sleep 765000").await, 0);
    let exit = session
        .exec(&format!("cat ~/.muster/work/{id}/exit"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&exit.stdout), "canceled\n");
    // Killing an ended script or an unknown ticket is harmless.
    session.kill(&id).await.unwrap();
    session.kill("never-started").await.unwrap();
    session.remove(&id).await.unwrap();
}

#[tokio::test]
async fn the_worker_enforces_the_timeout() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("timeout");
    let mut script = bash(&id, "echo begun\nsleep 7660001\n");
    script.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    session.start(&script).await.unwrap();
    // The server is gone meanwhile: the worker alone ends the script.
    drop(session);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let session = f.session().await;
    let (lines, end) = follow_all(&session, &id, 0).await;
    assert_eq!(texts(&lines), ["begun"]);
    assert_eq!(end.unwrap(), Outcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(remote_processes(&session, "sleep 7660001").await, 0);
    session.remove(&id).await.unwrap();
}

#[tokio::test]
async fn a_new_session_re_attaches_from_the_last_offset_and_gets_exactly_the_rest() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("reattach");
    let body =
        "for i in $(seq 1 60); do echo \"line $i\"; echo \"warn $i\" >&2; sleep 0.02; done\n";
    session.start(&bash(&id, body)).await.unwrap();
    let (sender, mut receiver) = mpsc::channel(1);
    let follow = {
        let session = session.clone();
        let id = id.clone();
        tokio::spawn(async move { session.follow(&id, 0, sender).await })
    };
    let mut first: Vec<Line> = Vec::new();
    while first.len() < 20 {
        first.extend(receiver.recv().await.unwrap());
    }
    // The server dies: its follow and its connection go; the script goes on.
    follow.abort();
    drop(receiver);
    drop(session);
    let session = f.session().await;
    let (rest, end) = follow_all(&session, &id, first.last().unwrap().offset).await;
    assert_eq!(end.unwrap(), Outcome::Exited(0));
    let all: Vec<String> = texts(&first).into_iter().chain(texts(&rest)).collect();
    let expected: Vec<String> = (1..=60)
        .flat_map(|i| [format!("line {i}"), format!("warn {i}")])
        .collect();
    // Each stream keeps its order; nothing is lost or repeated.
    let mut sorted = all.clone();
    sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted);
    let stdout: Vec<&String> = all.iter().filter(|t| t.starts_with("line")).collect();
    let want: Vec<&String> = expected.iter().filter(|t| t.starts_with("line")).collect();
    assert_eq!(stdout, want);
    session.remove(&id).await.unwrap();
}

#[tokio::test]
async fn a_killed_sshd_gives_a_clear_error_quickly() {
    let mut f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("sshdkill");
    session
        .start(&bash(&id, "echo up\nsleep 7670001\n"))
        .await
        .unwrap();
    let (sender, mut receiver) = mpsc::channel(16);
    let follow = {
        let session = session.clone();
        let id = id.clone();
        tokio::spawn(async move { session.follow(&id, 0, sender).await })
    };
    receiver.recv().await.unwrap();
    let killed = Instant::now();
    f.sshd.kill();
    let error = tokio::time::timeout(Duration::from_secs(10), follow)
        .await
        .expect("the follow noticed")
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::Disconnected { .. }), "{error}");
    assert!(error.to_string().contains("connection"), "{error}");
    eprintln!("noticed in {:?}", killed.elapsed());
    assert!(session.is_closed());
    // The script still runs on the machine; clean it up locally (the tests run on that machine).
    let dir = sshd::work_root().join(&id);
    let pgid = std::fs::read_to_string(dir.join("pgid")).unwrap();
    std::fs::write(dir.join("cancel"), "").unwrap();
    sshd::run("kill", &["-KILL", "--", &format!("-{}", pgid.trim())]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_silent_host_is_noticed_by_keep_alives() {
    let f = Fixture::start().await;
    let (session, _) = Session::connect(&f.target(), &f.auth, Duration::from_secs(1))
        .await
        .unwrap();
    let id = ticket("frozen");
    session
        .start(&bash(&id, "echo up\nsleep 3\n"))
        .await
        .unwrap();
    let (sender, mut receiver) = mpsc::channel(16);
    let follow = {
        let session = session.clone();
        let id = id.clone();
        tokio::spawn(async move { session.follow(&id, 0, sender).await })
    };
    receiver.recv().await.unwrap();
    let frozen = Instant::now();
    f.sshd.freeze();
    let error = tokio::time::timeout(Duration::from_secs(15), follow)
        .await
        .expect("keep-alives noticed the silence")
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::Disconnected { .. }), "{error}");
    eprintln!("a frozen sshd noticed in {:?}", frozen.elapsed());
    let _ = std::fs::remove_dir_all(sshd::work_root().join(&id));
}

#[tokio::test]
async fn read_file_streams_a_large_file() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("read");
    const SIZE: u64 = 50 * 1024 * 1024;
    let body =
        format!("mkdir -p out\nyes 0123456789abcdef | head -c {SIZE} > out/big.bin\necho made\n");
    session.start(&bash(&id, &body)).await.unwrap();
    let (_, end) = follow_all(&session, &id, 0).await;
    assert_eq!(end.unwrap(), Outcome::Exited(0));

    let rss_before = rss_kib();
    let mut file = session
        .read_file(&id, "out/big.bin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(file.size, SIZE);
    // A transfer nobody reads for now holds up no other script's lines.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = ticket("meanwhile");
    session
        .start(&bash(&other, "echo meanwhile\n"))
        .await
        .unwrap();
    let (lines, end) =
        tokio::time::timeout(Duration::from_secs(20), follow_all(&session, &other, 0))
            .await
            .expect("a stalled transfer held up another script");
    assert_eq!(texts(&lines), ["meanwhile"]);
    assert_eq!(end.unwrap(), Outcome::Exited(0));
    session.remove(&other).await.unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    let (mut total, mut peak) = (0u64, 0u64);
    let pattern = b"0123456789abcdef\n";
    loop {
        let n = file.read(&mut buffer).await.unwrap();
        if n == 0 {
            break;
        }
        for (i, byte) in buffer[..n].iter().enumerate() {
            let at = (total + i as u64) as usize % pattern.len();
            assert_eq!(*byte, pattern[at]);
        }
        total += n as u64;
        peak = peak.max(rss_kib().saturating_sub(rss_before));
    }
    assert_eq!(total, SIZE);
    eprintln!("50 MB read; RSS grew by at most {peak} KiB");
    assert!(peak < 30 * 1024, "RSS grew by {peak} KiB");

    assert!(session.read_file(&id, "out/none").await.unwrap().is_none());
    for bad in ["../escape", "/etc/passwd"] {
        assert!(matches!(
            session.read_file(&id, bad).await,
            Err(Error::BadPath(_))
        ));
    }
    session.remove(&id).await.unwrap();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_script_whose_keeper_vanished_is_lost_and_remove_kills_a_running_one() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("lost");
    session
        .start(&bash(&id, "echo up\nsleep 7680001\n"))
        .await
        .unwrap();
    // The keeper dies without recording an end (as in a reboot); its script with it.
    let killed = session
        .exec(&format!(
            "cd ~/.muster/work/{id} && sleep 0.5 && kill -KILL $(cat wpid) && kill -KILL -$(cat pgid)"
        ))
        .await
        .unwrap();
    assert!(
        killed.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let (lines, end) = follow_all(&session, &id, 0).await;
    assert_eq!(texts(&lines), ["up"]);
    assert!(matches!(end, Err(Error::Lost(_))), "{end:?}");
    session.remove(&id).await.unwrap();

    let id = ticket("remove");
    session.start(&bash(&id, "sleep 7680002\n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(remote_processes(&session, "sleep 7680002").await, 1);
    session.remove(&id).await.unwrap();
    assert_eq!(remote_processes(&session, "sleep 7680002").await, 0);
}

#[tokio::test]
async fn a_large_output_streams_whole_and_long_lines_come_in_pieces() {
    let f = Fixture::start().await;
    let session = f.session().await;
    let id = ticket("bulk");
    // 200,000 lines, then one line of 150,000 characters (cut at 64 KiB by the keeper).
    let body = "seq 1 200000\nhead -c 150000 /dev/zero | tr '\\0' x; echo\n";
    session.start(&bash(&id, body)).await.unwrap();
    let (sender, mut receiver) = mpsc::channel(4);
    let follow = {
        let session = session.clone();
        let id = id.clone();
        tokio::spawn(async move { session.follow(&id, 0, sender).await })
    };
    let (mut count, mut next, mut last_offset) = (0usize, 1u64, 0u64);
    let mut long = Vec::new();
    while let Some(batch) = receiver.recv().await {
        for line in batch {
            assert!(line.offset > last_offset);
            last_offset = line.offset;
            count += 1;
            if next <= 200_000 {
                assert_eq!(line.text, next.to_string());
                next += 1;
            } else {
                long.push(line.text.len());
            }
        }
    }
    assert_eq!(follow.await.unwrap().unwrap(), Outcome::Exited(0));
    assert_eq!(count, 200_000 + long.len());
    assert_eq!(long, [65536, 65536, 150_000 - 2 * 65536]);
    session.remove(&id).await.unwrap();
}

#[tokio::test]
async fn a_worker_allowing_fewer_channels_gets_more_connections() {
    let keys = tempfile::tempdir().unwrap();
    let client = sshd::keygen(keys.path(), "client", "");
    let sshd = Sshd::start_with(&[&client], &["ed25519"], "MaxSessions 2\n");
    let pin = scan("127.0.0.1", sshd.port, TIMEOUT).await.unwrap().sha256;
    let target = Target {
        host: "127.0.0.1".into(),
        port: sshd.port,
        pin,
    };
    let auth = Auth::Key {
        username: sshd::login_user(),
        key: Arc::new(read_private_key(&std::fs::read(&client).unwrap(), None).unwrap()),
    };
    let (session, _) = Session::connect(&target, &auth, TIMEOUT).await.unwrap();
    let runs = (0..6).map(|i| {
        let session = session.clone();
        async move {
            let id = ticket(&format!("few{i}"));
            session
                .start(&bash(&id, &format!("sleep 1\necho {i}\n")))
                .await
                .unwrap();
            let (lines, end) = follow_all(&session, &id, 0).await;
            session.remove(&id).await.unwrap();
            (i, texts(&lines), end.unwrap())
        }
    });
    for (i, lines, end) in futures_join_all(runs).await {
        assert_eq!(end, Outcome::Exited(0));
        assert_eq!(lines, [i.to_string()]);
    }
    let logins = sshd.log().matches("Accepted publickey").count();
    eprintln!("6 scripts on MaxSessions 2 used {logins} connections");
    assert!(logins >= 3, "{logins}");
}
