//! Accounts (SshKeyPair, UsernamePassword) and the SSH endpoint of workers: secrets sealed at rest
//! and never read back, bad input answered 400 naming the field, usages, and the CLI.

use crate::support::{SSH_FINGERPRINT, Server, cli, free_port};
use base64::Engine as _;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A real key pair made by `ssh-keygen` (ed25519), with a passphrase or none; (key file, its text).
fn keygen(dir: &Path, name: &str, passphrase: &str) -> (PathBuf, String) {
    let path = crate::sshd::keygen(dir, name, passphrase);
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

/// The SHA-256 fingerprint of a public key file, as `ssh-keygen -E sha256 -lf` prints it.
fn fingerprint_of(public: &Path) -> String {
    crate::sshd::run(
        "ssh-keygen",
        &["-E", "sha256", "-lf", public.to_str().unwrap()],
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn key_account(name: &str, key: &str, passphrase: Option<&str>) -> Value {
    let mut body = json!({"Name": name, "AccountType": "SshKeyPair", "Username": "deploy",
        "PrivateKeyFile": {"HasValue": true, "NewValue": b64(key.as_bytes())}});
    if let Some(p) = passphrase {
        body["PrivateKeyPassphrase"] = json!({"HasValue": true, "NewValue": p});
    }
    body
}

/// Every file of the data directory but the sealing key, as bytes (the database, its WAL).
fn data_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file() && e.file_name() != "secrets.key")
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The first error line of a 400.
fn error_of(reply: &crate::support::Reply) -> String {
    reply.assert_error(400);
    reply.body["Errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn both_account_types_round_trip_without_ever_showing_or_storing_a_secret_in_the_clear() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(data.path(), &[]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (_, plain_key) = keygen(keys.path(), "plain", "");
    let (_, locked_key) = keygen(keys.path(), "locked", "correct horse");
    let password = "pw-Zq8!not-in-any-log";

    let plain = server
        .post(
            "/api/Spaces-1/accounts",
            &key_account("plain key", &plain_key, None),
        )
        .assert_status(201)
        .clone();
    assert_eq!(plain["AccountType"], "SshKeyPair");
    assert_eq!(plain["Slug"], "plain-key");
    assert_eq!(plain["SpaceId"], "Spaces-1");
    assert_eq!(
        plain["PrivateKeyFile"],
        json!({"HasValue": true, "NewValue": null})
    );
    assert_eq!(
        plain["PrivateKeyPassphrase"],
        json!({"HasValue": false, "NewValue": null})
    );
    let id = plain["Id"].as_str().unwrap().to_string();
    assert!(id.starts_with("Accounts-"));
    assert_eq!(
        plain["Links"]["Usages"],
        format!("/api/Spaces-1/accounts/{id}/usages")
    );
    let locked = server
        .post(
            "/api/Spaces-1/accounts",
            &key_account("locked key", &locked_key, Some("correct horse")),
        )
        .assert_status(201)
        .clone();
    assert_eq!(locked["PrivateKeyPassphrase"]["HasValue"], true);
    // Property names and the type's value in any case, as for every resource.
    let login = server
        .post(
            "/api/Spaces-1/accounts",
            &json!({"name": "login", "accounttype": "usernamepassword", "USERNAME": "ops",
                "password": {"newValue": password}}),
        )
        .assert_status(201)
        .clone();
    assert_eq!(login["AccountType"], "UsernamePassword");
    assert_eq!(
        login["Password"],
        json!({"HasValue": true, "NewValue": null})
    );
    assert!(login.get("PrivateKeyFile").is_none_or(Value::is_null));

    // Reads: one, a page, all, filtered by type and name; never a secret.
    let one = server.ok(&format!("/api/Spaces-1/accounts/{id}"));
    assert_eq!(one["PrivateKeyFile"]["NewValue"], Value::Null);
    let page = server.ok("/api/Spaces-1/accounts?take=2");
    assert_eq!(page["ItemType"], "Account");
    assert_eq!(page["TotalResults"], 3);
    assert_eq!(page["Items"].as_array().unwrap().len(), 2);
    let keyed = server.ok("/api/Spaces-1/accounts/all?accountType=SshKeyPair");
    assert_eq!(keyed.as_array().unwrap().len(), 2);
    let named = server.ok("/api/Spaces-1/accounts?partialName=LOCK");
    assert_eq!(named["Items"][0]["Name"], "locked key");
    assert_eq!(server.ok("/api/accounts/all").as_array().unwrap().len(), 3);
    let every_read = format!(
        "{} {} {} {}",
        server.get("/api/Spaces-1/accounts?take=100").text,
        server.get("/api/Spaces-1/accounts/all").text,
        server.get(&format!("/api/Spaces-1/accounts/{id}")).text,
        server
            .get(&format!(
                "/api/Spaces-1/accounts/{}",
                login["Id"].as_str().unwrap()
            ))
            .text,
    );
    let key_line = plain_key.lines().nth(1).unwrap();
    for secret in [
        key_line,
        &b64(plain_key.as_bytes())[..40],
        password,
        "correct horse",
    ] {
        assert!(!every_read.contains(secret), "a read shows {secret}");
    }

    // PUT: NewValue null keeps the secret; a new one replaces it and is checked again.
    let kept = server
        .put(
            &format!("/api/Spaces-1/accounts/{id}"),
            &json!({"Name": "plain key", "AccountType": "SshKeyPair", "Username": "deploy2", "Description": "d",
                "PrivateKeyFile": {"HasValue": true, "NewValue": null}}),
        )
        .assert_status(200)
        .clone();
    assert_eq!(kept["Username"], "deploy2");
    assert_eq!(kept["PrivateKeyFile"]["HasValue"], true);
    server
        .put(
            &format!("/api/Spaces-1/accounts/{id}"),
            &json!({"PrivateKeyFile": {"NewValue": b64(locked_key.as_bytes())}}),
        )
        .assert_error(400);
    server
        .put(
            &format!("/api/Spaces-1/accounts/{id}"),
            &json!({"PrivateKeyFile": {"NewValue": b64(locked_key.as_bytes())},
                "PrivateKeyPassphrase": {"NewValue": "correct horse"}}),
        )
        .assert_status(200);
    // The stored key is now the locked one: a wrong passphrase alone is refused.
    let wrong = server.put(
        &format!("/api/Spaces-1/accounts/{id}"),
        &json!({"PrivateKeyPassphrase": {"NewValue": "wrong"}}),
    );
    assert!(error_of(&wrong).contains("PrivateKeyPassphrase"));
    let login_id = login["Id"].as_str().unwrap();
    server
        .put(
            &format!("/api/Spaces-1/accounts/{login_id}"),
            &json!({"Password": {"HasValue": true, "NewValue": "a-new-password-Zq9"}}),
        )
        .assert_status(200);

    // At rest: neither the database nor its WAL holds a secret in the clear.
    for (name, bytes) in data_files(&server.dir) {
        for secret in [
            key_line,
            locked_key.lines().nth(1).unwrap(),
            &b64(plain_key.as_bytes())[..40],
            &b64(locked_key.as_bytes())[..40],
            password,
            "a-new-password-Zq9",
            "correct horse",
        ] {
            assert!(!contains(&bytes, secret), "{name} holds {secret}");
        }
    }

    // Nor does the server's log.
    let log = server.stderr.lock().unwrap().clone();
    for secret in [key_line, password, "a-new-password-Zq9", "correct horse"] {
        assert!(!log.contains(secret), "the log holds {secret}");
    }

    // And after a restart the sealed values still open: the key checks against its passphrase.
    server.stop();
    let server = Server::start_in(data.path(), &[]).unwrap();
    server
        .put(
            &format!("/api/Spaces-1/accounts/{id}"),
            &json!({"Description": "after restart"}),
        )
        .assert_status(200);
    server
        .delete(&format!("/api/Spaces-1/accounts/{id}"))
        .assert_status(200);
    server
        .get(&format!("/api/Spaces-1/accounts/{id}"))
        .assert_error(404);
}

#[test]
fn bad_accounts_get_a_400_that_names_the_field() {
    let server = Server::start();
    let keys = tempfile::tempdir().unwrap();
    let (path, plain_key) = keygen(keys.path(), "k", "");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let (_, locked_key) = keygen(keys.path(), "locked", "s3cret");
    let cases = [
        (json!({"Name": "a", "Username": "u"}), "AccountType"),
        (
            json!({"Name": "a", "AccountType": "Token", "Username": "u"}),
            "AccountType",
        ),
        (
            json!({"Name": "a", "AccountType": "SshKeyPair", "Username": "u", "PrivateKeyFile": {"NewValue": "%%% not base64"}}),
            "base64",
        ),
        (key_account("a", &public, None), "PrivateKeyFile"),
        (
            json!({"Name": "a", "AccountType": "SshKeyPair", "Username": "u", "PrivateKeyFile": {"NewValue": plain_key}}),
            "the key file's text",
        ),
        (
            json!({"Name": "a", "AccountType": "SshKeyPair", "Username": "u", "PrivateKeyFile": {"NewValue": b64(b"hello")}}),
            "PrivateKeyFile",
        ),
        (
            json!({"Name": "a", "AccountType": "SshKeyPair", "Username": "u"}),
            "PrivateKeyFile",
        ),
        (key_account("a", &locked_key, None), "PrivateKeyPassphrase"),
        (
            key_account("a", &locked_key, Some("wrong")),
            "PrivateKeyPassphrase",
        ),
        (
            json!({"Name": "a", "AccountType": "UsernamePassword", "Username": "u"}),
            "Password",
        ),
        (
            json!({"Name": "a", "AccountType": "UsernamePassword", "Password": {"NewValue": "p"}}),
            "Username",
        ),
        (
            json!({"Name": "", "AccountType": "UsernamePassword", "Username": "u", "Password": {"NewValue": "p"}}),
            "Name",
        ),
        (
            json!({"Name": "a", "AccountType": "UsernamePassword", "Username": "u", "Password": {"NewValue": "p"}, "SpaceId": "Spaces-9"}),
            "SpaceId",
        ),
    ];
    for (body, field) in cases {
        let reply = server.post("/api/Spaces-1/accounts", &body);
        reply.assert_error(400);
        assert!(
            reply.text.contains(field),
            "{body} should name {field}: {}",
            reply.text
        );
        assert!(!reply.text.contains("s3cret"));
    }
    let missing = server.post(
        "/api/Spaces-1/accounts",
        &key_account("a", &locked_key, None),
    );
    assert!(error_of(&missing).contains("encrypted"), "{}", missing.text);
    let wrong = server.post(
        "/api/Spaces-1/accounts",
        &key_account("a", &locked_key, Some("wrong")),
    );
    assert!(error_of(&wrong).contains("does not open"), "{}", wrong.text);
    server
        .post("/api/Spaces-1/accounts", &json!("not an object"))
        .assert_error(400);

    let account = server
        .post(
            "/api/Spaces-1/accounts",
            &key_account("k", &plain_key, None),
        )
        .assert_status(201)
        .clone();
    let twin = server.post(
        "/api/Spaces-1/accounts",
        &key_account("K", &plain_key, None),
    );
    assert!(error_of(&twin).contains("already exists"), "{}", twin.text);
    let retype = server.put(
        &format!("/api/Spaces-1/accounts/{}", account["Id"].as_str().unwrap()),
        &json!({"AccountType": "UsernamePassword", "Password": {"NewValue": "p"}}),
    );
    assert!(error_of(&retype).contains("AccountType"), "{}", retype.text);
    server
        .get("/api/Spaces-1/accounts/Accounts-999")
        .assert_error(404);
    server
        .get("/api/Spaces-1/accounts/nonsense")
        .assert_error(404);
}

#[test]
fn ssh_workers_pin_a_host_key_and_sign_in_with_an_account_of_their_space() {
    let server = Server::start();
    let pool = server.default_pool();
    let account = crate::support::ssh_account(&server, "Spaces-1", "login");
    let other_space = server
        .post("/api/spaces", &json!({"Name": "Other"}))
        .assert_status(201)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign = crate::support::ssh_account(&server, &other_space, "foreign");
    let worker = |name: &str, endpoint: Value| json!({"Name": name, "Endpoint": endpoint, "WorkerPoolIds": [pool]});
    let ssh = |extra: Value| {
        let mut endpoint = json!({"CommunicationStyle": "Ssh", "Host": "127.0.0.1", "Port": 2222,
            "Fingerprint": SSH_FINGERPRINT, "AccountId": account});
        for (k, v) in extra.as_object().unwrap() {
            endpoint[k] = v.clone();
        }
        endpoint
    };
    let cases = [
        (ssh(json!({"Fingerprint": null})), "discover"),
        (ssh(json!({"ProxyId": "Proxies-1"})), "ProxyId"),
        (
            ssh(json!({"Fingerprint": "SHA256:tooshort"})),
            "Fingerprint",
        ),
        (ssh(json!({"Fingerprint": "aa:bb"})), "Fingerprint"),
        (ssh(json!({"AccountId": null})), "AccountId"),
        (ssh(json!({"AccountId": foreign})), "AccountId"),
        (ssh(json!({"AccountId": "Accounts-999"})), "AccountId"),
        (ssh(json!({"AccountId": "Users-1"})), "AccountId"),
    ];
    for (endpoint, field) in cases {
        let reply = server.post("/api/Spaces-1/workers", &worker("bad", endpoint.clone()));
        assert!(
            error_of(&reply).contains(field),
            "{endpoint} should name {field}: {}",
            reply.text
        );
    }

    let sha = server
        .post("/api/Spaces-1/workers", &worker("sha", ssh(json!({}))))
        .assert_status(201)
        .clone();
    assert_eq!(sha["Thumbprint"], Value::Null);
    assert_eq!(sha["Uri"], "ssh://127.0.0.1:2222/");
    assert_eq!(sha["Endpoint"]["Fingerprint"], SSH_FINGERPRINT);
    assert_eq!(sha["Endpoint"]["AccountId"], account.as_str());
    assert_eq!(sha["HealthStatus"], "Unknown");
    // The MD5 form is kept as given (first contact upgrades it); ids in any case.
    let md5 = "16:27:AC:A5:76:28:2D:36:63:1B:56:4D:EB:DF:A6:48";
    let old = server
        .post(
            "/api/Spaces-1/workers",
            &worker("md5", ssh(json!({"Fingerprint": md5, "Host": "localhost", "Port": 22, "AccountId": account.to_lowercase()}))),
        )
        .assert_status(201)
        .clone();
    assert_eq!(old["Endpoint"]["Fingerprint"], md5.to_lowercase());
    assert_eq!(old["Endpoint"]["AccountId"], account.as_str());
    assert_eq!(old["Uri"], "ssh://localhost:22/");
    let twin = server.post(
        "/api/Spaces-1/workers",
        &worker("twin", ssh(json!({"Port": 2223}))),
    );
    assert!(error_of(&twin).contains("already worker"), "{}", twin.text);

    // Listed and filtered as any worker.
    let listed = server.ok("/api/Spaces-1/workers?commStyles=Ssh");
    assert_eq!(listed["TotalResults"], 2);
    assert_eq!(
        server.ok("/api/Spaces-1/workers?commStyles=TentaclePassive")["TotalResults"],
        0
    );
    // A PUT that drops the pin is refused as a POST would be.
    let sha_id = sha["Id"].as_str().unwrap();
    let mut unpinned = sha.clone();
    unpinned["Endpoint"]["Fingerprint"] = json!("");
    server
        .put(&format!("/api/Spaces-1/workers/{sha_id}"), &unpinned)
        .assert_error(400);

    // Usages name the workers; the account cannot go while they use it.
    let usages = server.ok(&format!("/api/Spaces-1/accounts/{account}/usages"));
    let targets: Vec<&str> = usages["Targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["TargetName"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["sha", "md5"]);
    assert_eq!(usages["Targets"][0]["TargetId"], sha["Id"]);
    let refused = server.delete(&format!("/api/Spaces-1/accounts/{account}"));
    let message = error_of(&refused);
    assert!(
        message.contains("sha") && message.contains("md5"),
        "{message}"
    );
    for w in [&sha, &old] {
        server
            .delete(&format!(
                "/api/Spaces-1/workers/{}",
                w["Id"].as_str().unwrap()
            ))
            .assert_status(200);
    }
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/accounts/{account}/usages"))["Targets"],
        json!([])
    );
    server
        .delete(&format!("/api/Spaces-1/accounts/{account}"))
        .assert_status(200);
    // Another space's account is not seen here.
    server
        .get(&format!("/api/Spaces-1/accounts/{foreign}"))
        .assert_error(404);
}

#[test]
fn ssh_discovery_of_a_closed_port_or_a_server_that_is_not_ssh_is_a_quick_400() {
    let server = Server::start();
    let http_port = server.url.rsplit(':').next().unwrap().to_string();
    // A host that accepts the connection and never says a word: given up on after 5 s.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let closed = free_port().to_string();
    for (query, needle) in [
        (
            format!("host=127.0.0.1&port={closed}&type=Ssh"),
            "127.0.0.1",
        ),
        (format!("host=127.0.0.1&port={http_port}&type=ssh"), "SSH"),
        ("host=&type=Ssh".to_string(), "host"),
        ("host=127.0.0.1&port=0&type=Ssh".to_string(), "port"),
        ("host=127.0.0.1&port=99999&type=Ssh".to_string(), "port"),
        ("host=a b&type=Ssh".to_string(), "host"),
        ("host=127.0.0.1&type=Carrier".to_string(), "Carrier"),
        (
            format!("host=127.0.0.1&port={silent_port}&type=Ssh"),
            "did not answer",
        ),
        // Port 22 by default (nothing listens there in the tests).
        ("host=127.0.0.1&type=Ssh".to_string(), "127.0.0.1:22"),
    ] {
        let started = Instant::now();
        let reply = server.get(&format!("/api/Spaces-1/workers/discover?{query}"));
        reply.assert_error(400);
        assert!(
            reply.text.to_lowercase().contains(&needle.to_lowercase()),
            "{query}: {}",
            reply.text
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{query} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn the_cli_creates_and_lists_accounts_and_adds_an_ssh_worker() {
    let server = Server::start();
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = keygen(keys.path(), "id", "");
    let (locked, _) = keygen(keys.path(), "locked", "open sesame");
    let passphrase = keys.path().join("passphrase");
    std::fs::write(&passphrase, "open sesame\n").unwrap();
    let password = keys.path().join("password");
    std::fs::write(&password, "hunter2-Zq\n").unwrap();
    let ok = |args: &[&str]| {
        let out = cli(&server, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let out = ok(&[
        "account",
        "create",
        "ssh-key",
        "deploy key",
        "--username",
        "deploy",
        "--key-file",
        &path(&key),
    ]);
    assert!(out.contains("Created account deploy key"), "{out}");
    ok(&[
        "account",
        "create",
        "ssh-key",
        "locked",
        "--username",
        "deploy",
        "--key-file",
        &path(&locked),
        "--passphrase-file",
        &path(&passphrase),
    ]);
    ok(&[
        "account",
        "create",
        "password",
        "ops login",
        "--username",
        "ops",
        "--password-file",
        &path(&password),
    ]);
    // A wrong passphrase is the server's clear 400, as a one-line error.
    std::fs::write(&passphrase, "wrong\n").unwrap();
    let out = cli(
        &server,
        &[
            "account",
            "create",
            "ssh-key",
            "again",
            "--username",
            "d",
            "--key-file",
            &path(&locked),
            "--passphrase-file",
            &path(&passphrase),
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase"));

    let list = ok(&["account", "list"]);
    for expected in [
        "deploy key",
        "locked",
        "ops login",
        "SshKeyPair",
        "UsernamePassword",
    ] {
        assert!(list.contains(expected), "{list}");
    }
    assert!(!list.contains("hunter2") && !list.contains("sesame"));
    let listed: Value = serde_json::from_str(&ok(&["account", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);

    ok(&["pool", "create", "SSH pool"]);
    let out = ok(&[
        "worker",
        "add-ssh",
        "web-1",
        "--host",
        "127.0.0.1",
        "--port",
        "2222",
        "--account",
        "deploy key",
        "--pool",
        "SSH pool",
        "--fingerprint",
        SSH_FINGERPRINT,
    ]);
    assert!(out.contains(SSH_FINGERPRINT), "{out}");
    let workers = server.ok("/api/Spaces-1/workers/all?commStyles=Ssh");
    assert_eq!(workers[0]["Name"], "web-1");
    assert_eq!(workers[0]["Endpoint"]["Port"], 2222);
    // Discovery of a closed port: no worker is added, and the error says why.
    let out = cli(
        &server,
        &[
            "worker",
            "add-ssh",
            "web-2",
            "--host",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
            "--account",
            "ops login",
            "--pool",
            "SSH pool",
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(
        server
            .ok("/api/Spaces-1/workers/all?commStyles=Ssh")
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn ssh_discovery_reads_a_real_sshds_host_key_and_the_cli_pins_it_or_changes_it_only_with_yes() {
    let sshd = crate::sshd::Sshd::start(&[]);
    let expected = fingerprint_of(&sshd.host_key_pub());
    let server = Server::start();
    let found = server.ok(&format!(
        "/api/Spaces-1/workers/discover?host=127.0.0.1&port={}&type=Ssh",
        sshd.port
    ));
    assert_eq!(found["Id"], Value::Null);
    assert_eq!(found["Endpoint"]["CommunicationStyle"], "Ssh");
    assert_eq!(found["Endpoint"]["Fingerprint"], expected.as_str());
    assert_eq!(found["Endpoint"]["HostKeyAlgorithm"], "ssh-ed25519");
    assert_eq!(found["Endpoint"]["Port"], sshd.port);
    assert_eq!(found["Uri"], format!("ssh://127.0.0.1:{}/", sshd.port));

    let password = server.dir.join("password");
    std::fs::write(&password, "pw\n").unwrap();
    let run = |args: &[&str]| {
        let out = cli(&server, args);
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = run(&[
        "account",
        "create",
        "password",
        "login",
        "--username",
        "u",
        "--password-file",
        password.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    let port = sshd.port.to_string();
    let (code, out) = run(&[
        "worker",
        "add-ssh",
        "box",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--account",
        "login",
        "--pool",
        "Default Worker Pool",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&expected) && out.contains("ssh-ed25519"),
        "{out}"
    );
    let worker = server.ok("/api/Spaces-1/workers/all?commStyles=Ssh")[0].clone();
    assert_eq!(worker["Endpoint"]["Fingerprint"], expected.as_str());
    assert_eq!(worker["Endpoint"]["HostKeyAlgorithm"], "ssh-ed25519");

    let (code, out) = run(&["worker", "update-fingerprint", "box"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing to change"), "{out}");
    // Pinned to another key (as after the host was rebuilt): shown, changed only with --yes.
    let mut moved = worker.clone();
    moved["Endpoint"]["Fingerprint"] = json!(SSH_FINGERPRINT);
    let id = worker["Id"].as_str().unwrap();
    server
        .put(&format!("/api/Spaces-1/workers/{id}"), &moved)
        .assert_status(200);
    let (code, out) = run(&["worker", "update-fingerprint", "box"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(SSH_FINGERPRINT) && out.contains(&expected) && out.contains("--yes"),
        "{out}"
    );
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/workers/{id}"))["Endpoint"]["Fingerprint"],
        SSH_FINGERPRINT
    );
    let (code, out) = run(&["worker", "update-fingerprint", "box", "--yes"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/workers/{id}"))["Endpoint"]["Fingerprint"],
        expected.as_str()
    );
}
