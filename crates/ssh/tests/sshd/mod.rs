//! A real OpenSSH `sshd -D` on 127.0.0.1 for one test: its own host key, port, authorized keys
//! and pid file, killed (with its connection processes) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

/// The local account the password tests log in as.
pub const PASSWORD_USER: &str = "muster-ssh-test";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// Runs a program, panicking with its stderr when it fails; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Makes a key pair with ssh-keygen (`passphrase` empty: unencrypted); returns the private key
/// file's path (the public key is beside it, `.pub`).
pub fn keygen(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    keygen_of("ed25519", dir, name, passphrase)
}

/// [`keygen`] of a key type (`ed25519`, `ecdsa`, `rsa`).
pub fn keygen_of(kind: &str, dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            kind,
            "-N",
            passphrase,
            "-C",
            name,
            "-f",
            path.to_str().unwrap(),
        ],
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Starts sshd with a fresh ed25519 host key; `authorized` public keys may log in as any user
    /// (root included: the tests run as root).
    pub fn start(authorized: &[&Path]) -> Sshd {
        Sshd::start_with_host_keys(authorized, &["ed25519"])
    }

    /// [`Sshd::start`] with a host key of each of these types (`host_<type>`).
    pub fn start_with_host_keys(authorized: &[&Path], kinds: &[&str]) -> Sshd {
        Sshd::start_with(authorized, kinds, "")
    }

    /// [`Sshd::start_with_host_keys`] with more lines of sshd_config.
    pub fn start_with(authorized: &[&Path], kinds: &[&str], extra_config: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (scripts/test.sh does)"
        );
        // sshd's privilege separation needs this directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let host_keys: String = kinds
            .iter()
            .map(|kind| {
                let key = keygen_of(kind, dir.path(), &format!("host_{kind}"), "");
                format!("HostKey {}\n", key.display())
            })
            .collect();
        let keys: String = authorized
            .iter()
            .map(|p| std::fs::read_to_string(p.with_extension("pub")).unwrap())
            .collect();
        std::fs::write(dir.path().join("authorized_keys"), keys).unwrap();
        let mut last_error = String::new();
        // A port found free may be taken before sshd binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\n{host_keys}PidFile {pid}\n\
                     AuthorizedKeysFile {keys}\nStrictModes no\nUsePAM no\nPermitRootLogin yes\n\
                     PasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nLogLevel VERBOSE\n{extra_config}",
                    pid = dir.path().join("sshd.pid").display(),
                    keys = dir.path().join("authorized_keys").display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f", config.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { port, dir, child };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_error = std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default();
        }
        panic!("sshd did not start: {last_error}");
    }

    pub fn host_key_pub(&self) -> PathBuf {
        self.host_key_pub_of("ed25519")
    }

    pub fn host_key_pub_of(&self, kind: &str) -> PathBuf {
        self.dir.path().join(format!("host_{kind}.pub"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// sshd and the processes it forked for connections (not the detached scripts: they left).
    fn processes(&self) -> Vec<i32> {
        let mut family = vec![self.child.id() as i32];
        let mut grew = true;
        while grew {
            grew = false;
            for (pid, parent) in parents() {
                if family.contains(&parent) && !family.contains(&pid) {
                    family.push(pid);
                    grew = true;
                }
            }
        }
        family
    }

    fn signal_all(&self, signal: &str) {
        for pid in self.processes() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Kills sshd and its connection processes, as a crash of the worker's sshd would.
    pub fn kill(&mut self) {
        self.signal_all("-KILL");
        let _ = self.child.wait();
    }

    /// Kills sshd (and its connections) and starts it again on the same port and configuration;
    /// with `new_host_keys`, the host gets new keys of the same types first (a rebuilt host).
    #[allow(dead_code)] // the server's tests use it
    pub fn restart(&mut self, new_host_keys: bool) {
        self.kill();
        if new_host_keys {
            let keys: Vec<String> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("host_") && !n.ends_with(".pub"))
                .collect();
            for name in keys {
                let _ = std::fs::remove_file(self.dir.path().join(&name));
                let _ = std::fs::remove_file(self.dir.path().join(format!("{name}.pub")));
                keygen_of(&name["host_".len()..], self.dir.path(), &name, "");
            }
        }
        let config = self.dir.path().join("sshd_config");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::File::create(self.dir.path().join("sshd.log")).unwrap();
            self.child = Command::new(SSHD)
                .args(["-D", "-e", "-f", config.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(
                Instant::now() < deadline,
                "sshd did not start again on port {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops sshd and its connections without closing them: a host that went silent.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.signal_all("-CONT");
        self.kill();
    }
}

/// (pid, parent pid) of every process, from /proc.
fn parents() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: the fields follow the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let parent = rest.split(' ').nth(1)?.parse().ok()?;
            Some((pid, parent))
        })
        .collect()
}

/// Makes the local account the password tests use, with a known password. It changes this
/// machine's accounts, so it is done only when the tests run as root (in CI's container); the
/// password tests are skipped otherwise.
pub fn password_user() -> bool {
    if run("id", &["-u"]).trim() != "0" {
        return false;
    }
    let exists = Command::new("id")
        .arg(PASSWORD_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        // Racing tests may both try: a failure is fine when the user now exists.
        let _ = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/bash", PASSWORD_USER])
            .stderr(Stdio::null())
            .status();
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    chpasswd
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD_USER}:{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(chpasswd.wait().unwrap().success());
    true
}

/// The user the tests sign in as: when they run as root, the password tests' local account (its
/// shell start-up is Debian's default, where root's may run slow tools such as `pyenv init` on
/// every login, and leave its lock behind when a login is killed); else the current user.
#[allow(dead_code)]
pub fn login_user() -> String {
    if password_user() {
        PASSWORD_USER.to_string()
    } else {
        run("id", &["-un"]).trim().to_string()
    }
}

/// Where `login_user`'s scripts keep their working directories on this machine.
#[allow(dead_code)]
pub fn work_root() -> PathBuf {
    let user = login_user();
    let home = run(
        "sh",
        &["-c", &format!("getent passwd {user} | cut -d: -f6")],
    );
    Path::new(home.trim()).join(".muster/work")
}
