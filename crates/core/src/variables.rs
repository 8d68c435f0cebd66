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
}

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

/// The helpers a script gets before its own first line: `set_octopusvariable NAME VALUE
/// [-sensitive]` in Bash, `set_octopusvariable(name, value, sensitive=False)` in Python and
/// `Set-OctopusVariable -name N -value V [-sensitive]` in PowerShell. Each is one line, so the
/// script's own line numbers shift by one only.
pub fn prelude(syntax: crate::ScriptSyntax) -> &'static str {
    match syntax {
        crate::ScriptSyntax::Bash => {
            "set_octopusvariable() { local s=''; [ \"${3:-}\" = '-sensitive' ] && s=\" sensitive='VHJ1ZQ=='\"; printf \"##octopus[setVariable name='%s' value='%s'%s]\\n\" \"$(printf %s \"$1\" | base64 -w0)\" \"$(printf %s \"${2:-}\" | base64 -w0)\" \"$s\"; }\n"
        }
        crate::ScriptSyntax::Python => {
            "def set_octopusvariable(name, value, sensitive=False):\n    import base64 as _b; _e = lambda t: _b.b64encode(str(t).encode()).decode(); print(\"##octopus[setVariable name='%s' value='%s'%s]\" % (_e(name), _e(value), \" sensitive='VHJ1ZQ=='\" if sensitive else \"\"), flush=True)\n"
        }
        crate::ScriptSyntax::PowerShell => {
            "function Set-OctopusVariable([string]$name, [string]$value, [switch]$sensitive) { $e = { param($t) [Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($t)) }; $s = ''; if ($sensitive) { $s = \" sensitive='VHJ1ZQ=='\" }; Write-Host (\"##octopus[setVariable name='\" + (& $e $name) + \"' value='\" + (& $e $value) + \"'\" + $s + \"]\") }\n"
        }
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
