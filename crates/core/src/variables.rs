//! Variables of runbook runs: `#{Name}` substitution, output variables set by scripts through
//! Octopus's service message, and the masking of sensitive values in every log line.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::collections::HashMap;

/// What a masked value is shown as.
pub const MASK: &str = "********";
/// The shortest line of a multi-line secret that is masked on its own.
pub const MIN_LINE: usize = 4;

/// Replaces each `#{Name}` whose name `lookup` knows; the others stay as written. Values are not
/// substituted again, so a value that contains `#{…}` is taken literally.
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("#{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = after[..end].trim();
                match lookup(name) {
                    Some(value) if !name.is_empty() => out.push_str(&value),
                    _ => out.push_str(&rest[start..start + 2 + end + 1]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Variable names compare without case, as Octopus's do.
#[derive(Debug, Default, Clone)]
pub struct VariableSet {
    values: HashMap<String, String>,
}

impl VariableSet {
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.values.insert(name.to_lowercase(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(&name.to_lowercase()).map(String::as_str)
    }

    pub fn substitute(&self, text: &str) -> String {
        substitute(text, |name| self.get(name).map(str::to_string))
    }

    /// The set as `VARIABLES_ENV` carries it to a script: a line per variable, its lower-case
    /// name and its value, each base64, separated by a space.
    pub fn to_env(&self) -> String {
        let mut names: Vec<&String> = self.values.keys().collect();
        names.sort();
        let mut out = String::new();
        for name in names {
            out.push_str(&BASE64.encode(name));
            out.push(' ');
            out.push_str(&BASE64.encode(&self.values[name]));
            out.push('\n');
        }
        out
    }
}

/// The environment variable through which a script's helpers read its variables, so a value
/// is read as data instead of being pasted into the script's text.
pub const VARIABLES_ENV: &str = "MUSTER_VARIABLES";

/// Hides sensitive values in log lines: the value itself, its base64 form, and each line of a
/// value of several lines.
#[derive(Debug, Default, Clone)]
pub struct Masker {
    /// Longest first, so a value that contains another is masked whole.
    secrets: Vec<String>,
}

impl Masker {
    pub fn add(&mut self, value: &str) {
        let bytes = value.as_bytes();
        let mut forms = vec![value.to_string()];
        // Its base64, and with a newline after it (`echo "$secret" | base64`), whole, without its
        // padding, and in the 76-character lines `base64` wraps a long value into.
        for encoded in [BASE64.encode(bytes), BASE64.encode([bytes, b"\n"].concat())] {
            forms.push(encoded.trim_end_matches('=').to_string());
            if encoded.len() > 76 {
                let chars: Vec<char> = encoded.chars().collect();
                forms.extend(
                    chars
                        .chunks(76)
                        .map(|c| c.iter().collect::<String>())
                        .filter(|c| c.trim_end_matches('=').len() >= 8),
                );
            }
            forms.push(encoded);
        }
        // The base64 of its whole 3-byte groups is the same whatever follows the value.
        if bytes.len() >= 6 {
            forms.push(BASE64.encode(&bytes[..bytes.len() - bytes.len() % 3]));
        }
        // The forms a script prints it in by accident: quoted by `set -x` or `printf %q`, in JSON,
        // by Python's `repr`, escaped with backslashes, or URL-encoded.
        forms.extend(escaped_forms(value));
        if value.contains('\n') {
            // Each line of a value of several lines, but not a line so short that masking it
            // would hide ordinary words.
            forms.extend(
                value
                    .lines()
                    .map(|l| l.trim_end_matches('\r').to_string())
                    .filter(|l| l.trim().chars().count() >= MIN_LINE),
            );
        }
        for form in forms {
            if !form.trim().is_empty() && !self.secrets.contains(&form) {
                self.secrets.push(form);
            }
        }
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    pub fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// The escaped forms of a value that differ from it: what a script prints when it quotes or
/// encodes a secret (each without its outer quotes, so a secret inside a longer quoted word is
/// masked too).
pub fn escaped_forms(value: &str) -> Vec<String> {
    let mut forms = vec![
        // `set -x`: 'it'\''s'
        value.replace('\'', r"'\''"),
        shell_backslash_quoted(value),
        ansi_c_quoted(value, false),
        ansi_c_quoted(value, true),
        json_escaped(value, false, false),
        json_escaped(value, true, false),
        json_escaped(value, false, true),
        // Python's repr, quoted either way, and a C or shell double-quoted string.
        python_repr(value, '\''),
        python_repr(value, '"'),
        escape_with_backslash(value, &['\\', '"']),
        escape_with_backslash(value, &['\\', '"', '$', '`']),
        escape_with_backslash(value, &['\\', '\'']),
    ];
    // `urllib.parse.quote` (keeps '/'), `quote_plus` and `encodeURIComponent`, in either hex case.
    for safe in ["/", "", "!'()*"] {
        for plus in [false, true] {
            for lower in [false, true] {
                forms.push(url_encoded(value, safe, plus, lower));
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    for form in forms {
        if form != value && !out.contains(&form) {
            out.push(form);
        }
    }
    out
}

/// Bash's `printf %q` of a printable value: a backslash before each character the shell would
/// read specially.
fn shell_backslash_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    let mut previous: Option<char> = None;
    for c in value.chars() {
        let special = " \t\n!\"$&'()*,;<>?[\\]^`{|}".contains(c)
            || (c == '#' && previous.is_none())
            || (c == '~' && matches!(previous, None | Some(':') | Some('=')));
        if special {
            out.push('\\');
        }
        out.push(c);
        previous = Some(c);
    }
    out
}

/// Bash's `$'…'` quoting (`printf %q` and `set -x` of a value with control characters); with
/// `bytes`, non-ASCII characters as octal bytes, as in the C locale.
fn ansi_c_quoted(value: &str, bytes: bool) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for c in value.chars() {
        match c {
            '\x1b' => out.push_str(r"\E"),
            '\x07' => out.push_str(r"\a"),
            '\x0b' => out.push_str(r"\v"),
            '\x08' => out.push_str(r"\b"),
            '\x0c' => out.push_str(r"\f"),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '\t' => out.push_str(r"\t"),
            '\\' | '\'' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() || (bytes && !c.is_ascii()) => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:03o}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A JSON string's content: as serde_json writes it, with every non-ASCII character as `\uXXXX`
/// (Python's `json.dumps`), or with `/` as `\/` (PHP's `json_encode`).
fn json_escaped(value: &str, ascii: bool, slash: bool) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '/' if slash => out.push_str("\\/"),
            c if c < ' ' || (ascii && !(' '..='~').contains(&c)) => {
                let mut buf = [0; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Python's `repr` of a string, inside its `quote`s.
fn python_repr(value: &str, quote: char) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c < ' ' || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn escape_with_backslash(value: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Percent-encoding of the UTF-8 bytes, keeping RFC 3986's unreserved characters and `safe`.
fn url_encoded(value: &str, safe: &str, plus: bool, lower: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        let c = b as char;
        if c.is_ascii_alphanumeric() || "-._~".contains(c) || (c.is_ascii() && safe.contains(c)) {
            out.push(c);
        } else if c == ' ' && plus {
            out.push('+');
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An output variable a script set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputVariable {
    pub name: String,
    pub value: String,
    pub sensitive: bool,
}

const SET_VARIABLE: &str = "##octopus[setVariable ";

/// Reads Octopus's service message `##octopus[setVariable name='…' value='…' sensitive='…']`,
/// each attribute base64 encoded, as Calamari's script helpers print it.
pub fn parse_set_variable(line: &str) -> Option<OutputVariable> {
    let body = line.trim().strip_prefix(SET_VARIABLE)?.strip_suffix(']')?;
    let mut name = None;
    let mut value = None;
    let mut sensitive = false;
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("='")?;
        let (encoded, after) = after.split_once('\'')?;
        let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
        match key.trim() {
            "name" => name = Some(decoded),
            "value" => value = Some(decoded),
            "sensitive" => sensitive = decoded.eq_ignore_ascii_case("true"),
            _ => {}
        }
        rest = after.trim();
    }
    let name = name.filter(|n| !n.trim().is_empty())?;
    Some(OutputVariable {
        name: name.trim().to_string(),
        value: value.unwrap_or_default(),
        sensitive,
    })
}

/// A file a script announced as an artifact, to be collected once it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedArtifact {
    /// As the script gave it: absolute (the helpers make it so) or relative to its working
    /// directory.
    pub path: String,
    /// The artifact's file name; the path's last part when the script gave none.
    pub name: String,
    /// The size the script saw, in bytes (0: missing); the collected file's own size counts.
    pub length: u64,
}

const CREATE_ARTIFACT: &str = "##octopus[createArtifact";

/// Reads Octopus's service message `##octopus[createArtifact path='…' name='…' length='…']`, each
/// attribute base64 encoded. None: the line is not that message; an error: it is, but unreadable.
pub fn parse_create_artifact(line: &str) -> Option<Result<AnnouncedArtifact, String>> {
    let line = line.trim();
    let rest = line.strip_prefix(CREATE_ARTIFACT)?;
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with(']')) {
        return None;
    }
    Some(read_create_artifact(rest))
}

fn read_create_artifact(rest: &str) -> Result<AnnouncedArtifact, String> {
    let body = rest
        .strip_suffix(']')
        .ok_or("the service message does not end with ']'")?;
    let (mut path, mut name, mut length) = (None, None, None);
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("='")
            .ok_or("an attribute is not written key='value'")?;
        let (encoded, after) = after
            .split_once('\'')
            .ok_or("an attribute's value is not closed by a quote")?;
        let key = key.trim();
        let decoded = BASE64
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| format!("its {key} is not base64 of UTF-8 text"))?;
        match key {
            "path" => path = Some(decoded),
            "name" => name = Some(decoded),
            "length" => length = Some(decoded),
            _ => {}
        }
        rest = after.trim();
    }
    let path = path
        .filter(|p| !p.trim().is_empty())
        .ok_or("it names no path")?;
    if path.contains('\0') {
        return Err("its path holds a NUL character".into());
    }
    let name = name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            path.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        });
    let length = match length.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(text) => text
            .parse()
            .map_err(|_| format!("its length '{text}' is not a number of bytes"))?,
    };
    Ok(AnnouncedArtifact { path, name, length })
}

/// The helpers a script gets before its own first line. To set an output variable:
/// `set_octopusvariable NAME VALUE [-sensitive]` in Bash, `set_octopusvariable(name, value,
/// sensitive=False)` in Python and `Set-OctopusVariable -name N -value V [-sensitive]` in
/// PowerShell. To read a variable from `VARIABLES_ENV`: `get_octopusvariable NAME` in Bash (empty
/// when unknown, as in Octopus), `get_octopusvariable(name)` in Python (KeyError when unknown) and
/// the hashtable `$OctopusParameters['Name']` in PowerShell. Names compare without case. To
/// announce a file as an artifact (collected once the script ends): `new_octopusartifact PATH
/// [NAME]` in Bash, `new_octopusartifact(path, name=None)` in Python and `New-OctopusArtifact
/// -path P [-name N]` in PowerShell; the path is made absolute, the name defaults to the file's, the
/// length is the file's size (0 when it is missing). The helpers take one line in Bash and
/// PowerShell and three in Python, so the script's own line numbers shift by that much only.
pub fn prelude(syntax: crate::ScriptSyntax) -> &'static str {
    match syntax {
        crate::ScriptSyntax::Bash => concat!(
            "set_octopusvariable() { local s=''; [ \"${3:-}\" = '-sensitive' ] && s=\" sensitive='VHJ1ZQ=='\"; printf \"##octopus[setVariable name='%s' value='%s'%s]\\n\" \"$(printf %s \"$1\" | base64 -w0)\" \"$(printf %s \"${2:-}\" | base64 -w0)\" \"$s\"; }; ",
            "new_octopusartifact() { local p n l; case \"$1\" in /*) p=\"$1\";; *) p=\"$PWD/$1\";; esac; n=\"${2:-${p##*/}}\"; l=$(stat -c %s -- \"$p\" 2>/dev/null || echo 0); printf \"##octopus[createArtifact path='%s' name='%s' length='%s']\\n\" \"$(printf %s \"$p\" | base64 -w0)\" \"$(printf %s \"$n\" | base64 -w0)\" \"$(printf %s \"$l\" | base64 -w0)\"; }; ",
            "get_octopusvariable() { local n k v; n=$(printf %s \"${1,,}\" | base64 -w0); while read -r k v; do if [ \"$k\" = \"$n\" ]; then printf %s \"$v\" | base64 -d; return 0; fi; done <<< \"${MUSTER_VARIABLES:-}\"; }\n",
        ),
        crate::ScriptSyntax::Python => concat!(
            "def set_octopusvariable(name, value, sensitive=False): import base64 as _b; _e = lambda t: _b.b64encode(str(t).encode()).decode(); print(\"##octopus[setVariable name='%s' value='%s'%s]\" % (_e(name), _e(value), \" sensitive='VHJ1ZQ=='\" if sensitive else \"\"), flush=True)\n",
            "def new_octopusartifact(path, name=None): import base64 as _b, os as _o; _e = lambda t: _b.b64encode(str(t).encode()).decode(); _p = _o.path.abspath(str(path)); print(\"##octopus[createArtifact path='%s' name='%s' length='%s']\" % (_e(_p), _e(name or _o.path.basename(_p)), _e(_o.path.getsize(_p) if _o.path.isfile(_p) else 0)), flush=True)\n",
            "def get_octopusvariable(name): import base64 as _b, os as _o; _d = lambda t: _b.b64decode(t).decode(); return dict((_d(k), _d(v)) for k, v in (l.split(\" \", 1) for l in _o.environ.get(\"MUSTER_VARIABLES\", \"\").splitlines() if l))[name.lower()]\n",
        ),
        crate::ScriptSyntax::PowerShell => concat!(
            "function Set-OctopusVariable([string]$name, [string]$value, [switch]$sensitive) { $e = { param($t) [Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($t)) }; $s = ''; if ($sensitive) { $s = \" sensitive='VHJ1ZQ=='\" }; Write-Host (\"##octopus[setVariable name='\" + (& $e $name) + \"' value='\" + (& $e $value) + \"'\" + $s + \"]\") }; ",
            "function New-OctopusArtifact([string]$path, [string]$name) { $e = { param($t) [Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($t)) }; if (-not [IO.Path]::IsPathRooted($path)) { $path = Join-Path (Get-Location).Path $path }; if (-not $name) { $name = [IO.Path]::GetFileName($path) }; $l = 0; if (Test-Path -LiteralPath $path -PathType Leaf) { $l = (Get-Item -LiteralPath $path).Length }; Write-Host (\"##octopus[createArtifact path='\" + (& $e $path) + \"' name='\" + (& $e $name) + \"' length='\" + (& $e \"$l\") + \"']\") }; ",
            "$OctopusParameters = @{}; foreach ($l in (\"$env:MUSTER_VARIABLES\" -split \"`n\")) { if ($l) { $p = $l -split ' ', 2; $OctopusParameters[[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($p[0]))] = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($p[1])) } }\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_replaces_known_names_only() {
        let mut vars = VariableSet::default();
        vars.set("Greeting", "hello");
        vars.set("Octopus.Action[Make].Output.Color", "blue #{Greeting}");
        assert_eq!(
            vars.substitute("#{greeting} #{ Octopus.Action[Make].Output.Color } #{Nope} #{"),
            "hello blue #{Greeting} #{Nope} #{"
        );
    }

    #[test]
    fn sensitive_values_are_masked_in_every_form() {
        let mut masker = Masker::default();
        masker.add("s3cret");
        masker.add("line one\nline two");
        assert_eq!(masker.mask("pw=s3cret!"), format!("pw={MASK}!"));
        assert_eq!(masker.mask("czNjcmV0"), MASK);
        assert_eq!(masker.mask("got line two"), format!("got {MASK}"));
        assert_eq!(masker.mask("nothing here"), "nothing here");
        // `echo "$secret" | base64`, with its newline, is masked too.
        assert_eq!(masker.mask("czNjcmV0Cg=="), MASK);
        // A long value's base64, wrapped at 76 characters as `base64` prints it.
        let long = "ThisIsAVeryLongSecretValueThatExceedsFiftySevenBytesForSureYes1234567890";
        masker.add(long);
        let wrapped = BASE64.encode(format!("{long}\n"));
        for line in wrapped.as_bytes().chunks(76) {
            let line = std::str::from_utf8(line).unwrap();
            assert_eq!(masker.mask(line), MASK, "{line}");
        }
        let mut short = Masker::default();
        short.add("long enough line\nab");
        assert_eq!(short.mask("about"), "about");
    }

    #[test]
    fn escaped_forms_are_masked_as_bash_python_and_json_print_them() {
        // Each expected text is what bash 5.2 or Python 3.11 printed for the value.
        let secret = r#"it's a "$ecret" \ path"#;
        let mut masker = Masker::default();
        masker.add(secret);
        for printed in [
            r#"+ echo 'it'\''s a "$ecret" \ path'"#,
            r#"it\'s\ a\ \"\$ecret\"\ \\\ path"#,
            r#"{"pw": "it's a \"$ecret\" \\ path"}"#,
            r#"['it\'s a "$ecret" \\ path']"#,
            "it%27s%20a%20%22%24ecret%22%20%5C%20path",
            "it%27s+a+%22%24ecret%22+%5C+path",
            "it%27s%20a%20%22%24ecret%22%20%5c%20path",
            "it's%20a%20%22%24ecret%22%20%5C%20path",
            r#"echo "it's a \"\$ecret\" \\ path""#,
        ] {
            let masked = masker.mask(printed);
            assert!(
                !masked.contains("ecret") && masked.contains(MASK),
                "{printed} -> {masked}"
            );
        }
        let mut other = Masker::default();
        let control = "tab\there\nnl \u{fc} \u{e9}";
        other.add(control);
        for printed in [
            r"$'tab\there\nnl ü é'",
            r"$'tab\there\nnl \303\274 \303\251'",
            r#""tab\there\nnl \u00fc \u00e9""#,
            r#""tab\there\nnl ü é""#,
            r"'tab\there\nnl ü é'",
            "tab%09here%0Anl%20%C3%BC%20%C3%A9",
            "tab%09here%0Anl+%C3%BC+%C3%A9",
        ] {
            assert_eq!(
                other.mask(printed).trim_matches(['$', '\'', '"']),
                MASK,
                "{printed}"
            );
        }
        // Python's repr picks double quotes when the value has a single quote and no double one.
        let mut quote = Masker::default();
        quote.add("don't\\tell");
        assert_eq!(quote.mask(r#""don't\\tell""#), format!("\"{MASK}\""));
        assert_eq!(quote.mask(r"'don\'t\\tell'"), format!("'{MASK}'"));
        assert_eq!(
            shell_backslash_quoted("#~a,b!c{d}=e:~f"),
            r"\#~a\,b\!c\{d\}=e:\~f"
        );
        assert_eq!(python_repr("a\x7fb\x01", '\''), r"a\x7fb\x01");
        assert_eq!(json_escaped("a\x7fb\x01", true, false), r"a\u007fb\u0001");
        // A plain value has no other forms, so masking costs nothing more.
        assert!(escaped_forms("s3cret-Value_1.0~").is_empty());
    }

    #[test]
    fn an_artifact_message_is_read_or_refused_with_a_reason() {
        let message = |path: &str, name: Option<&str>, length: &str| {
            let name = name
                .map(|n| format!(" name='{}'", BASE64.encode(n)))
                .unwrap_or_default();
            format!(
                "##octopus[createArtifact path='{}'{name} length='{}']",
                BASE64.encode(path),
                BASE64.encode(length)
            )
        };
        assert_eq!(
            parse_create_artifact(&message("/w/out/report.txt", None, "12")),
            Some(Ok(AnnouncedArtifact {
                path: "/w/out/report.txt".into(),
                name: "report.txt".into(),
                length: 12
            }))
        );
        let named = parse_create_artifact(&message("a.bin", Some("Nice name"), "0"));
        assert_eq!(named.unwrap().unwrap().name, "Nice name");
        assert!(parse_create_artifact("echo hello").is_none());
        assert!(parse_create_artifact("##octopus[createArtifactX path='']").is_none());
        assert!(matches!(
            parse_create_artifact("##octopus[createArtifact path='%%%']"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_create_artifact(&message("", None, "0")),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_create_artifact(&message("/x", None, "many")),
            Some(Err(_))
        ));
    }

    #[test]
    fn the_service_message_round_trips() {
        let line = format!(
            "##octopus[setVariable name='{}' value='{}' sensitive='{}']",
            BASE64.encode("Color"),
            BASE64.encode("blue sky"),
            BASE64.encode("True")
        );
        assert_eq!(
            parse_set_variable(&line),
            Some(OutputVariable {
                name: "Color".into(),
                value: "blue sky".into(),
                sensitive: true
            })
        );
        assert_eq!(parse_set_variable("##octopus[setVariable name='@@']"), None);
        assert_eq!(parse_set_variable("echo hi"), None);
    }
}
