//! Ids look like `Spaces-1`: a kind prefix and a number from one counter per kind for the whole server.

/// Every kind of resource that carries a numbered id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Space,
    WorkerPool,
    Worker,
    MachinePolicy,
    ServerTask,
    User,
    ApiKey,
    Team,
    UserRole,
    ScopedUserRole,
    Runbook,
    RunbookRun,
    Account,
    Artifact,
    Event,
    RegistrationToken,
}

impl IdKind {
    pub const ALL: [IdKind; 16] = [
        IdKind::Space,
        IdKind::WorkerPool,
        IdKind::Worker,
        IdKind::MachinePolicy,
        IdKind::ServerTask,
        IdKind::User,
        IdKind::ApiKey,
        IdKind::Team,
        IdKind::UserRole,
        IdKind::ScopedUserRole,
        IdKind::Runbook,
        IdKind::RunbookRun,
        IdKind::Account,
        IdKind::Artifact,
        IdKind::Event,
        IdKind::RegistrationToken,
    ];

    /// The prefix before the dash, spelled as Octopus spells it.
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Space => "Spaces",
            IdKind::WorkerPool => "WorkerPools",
            IdKind::Worker => "Workers",
            IdKind::MachinePolicy => "MachinePolicies",
            IdKind::ServerTask => "ServerTasks",
            IdKind::User => "Users",
            IdKind::ApiKey => "APIKeys",
            IdKind::Team => "Teams",
            IdKind::UserRole => "UserRoles",
            IdKind::ScopedUserRole => "ScopedUserRoles",
            IdKind::Runbook => "Runbooks",
            IdKind::RunbookRun => "RunbookRuns",
            IdKind::Account => "Accounts",
            IdKind::Artifact => "Artifacts",
            IdKind::Event => "Events",
            IdKind::RegistrationToken => "RegistrationTokens",
        }
    }

    pub fn format(self, n: i64) -> String {
        format!("{}-{}", self.prefix(), n)
    }
}

/// Parses an id of the given kind, whatever its case (routes are case-insensitive), into its number.
pub fn parse_id(kind: IdKind, text: &str) -> Option<i64> {
    let (prefix, number) = text.trim().rsplit_once('-')?;
    if !prefix.eq_ignore_ascii_case(kind.prefix()) {
        return None;
    }
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || number.len() > 15 {
        return None;
    }
    number.parse().ok().filter(|n| *n > 0)
}

/// The canonical spelling of an id given in any case, or None when it is not of that kind.
pub fn canonical_id(kind: IdKind, text: &str) -> Option<String> {
    parse_id(kind, text).map(|n| kind.format(n))
}

/// Problems with a resource's name: required, at most 200 characters, no control characters (they
/// would reach terminals and logs as escape sequences).
pub fn check_name(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        Some("Name is required.".into())
    } else if !name.chars().any(|c| !c.is_whitespace() && !is_invisible(c)) {
        Some("Name must contain a visible character, not only spaces or invisible ones.".into())
    } else if name.chars().count() > 200 {
        Some("Name must be at most 200 characters.".into())
    } else if name
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
    {
        Some("Name must not contain control characters.".into())
    } else {
        None
    }
}

/// Characters that print as nothing: zero-width spaces and joiners, the byte order mark, the soft
/// hyphen, fillers and blanks that are not whitespace to Unicode.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}' | '\u{FFA0}' | '\u{E0000}'..='\u{E007F}')
}

/// A slug: lower case, runs of anything but letters and digits folded to one dash.
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in name.trim().chars() {
        if c.is_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.extend(c.to_lowercase());
        } else {
            dash = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_in_any_case_and_reject_other_kinds() {
        assert_eq!(parse_id(IdKind::Space, "spaces-12"), Some(12));
        assert_eq!(parse_id(IdKind::Space, "Spaces-1"), Some(1));
        assert_eq!(parse_id(IdKind::Space, "WorkerPools-1"), None);
        assert_eq!(parse_id(IdKind::Space, "Spaces-"), None);
        assert_eq!(parse_id(IdKind::Space, "Spaces-0"), None);
        assert_eq!(parse_id(IdKind::Space, "Spaces--1"), None);
        assert_eq!(parse_id(IdKind::Space, "Spaces-99999999999999999999"), None);
        assert_eq!(
            canonical_id(IdKind::ApiKey, "apikeys-3").as_deref(),
            Some("APIKeys-3")
        );
    }

    #[test]
    fn slugs_fold_punctuation() {
        assert_eq!(slugify("Linux Worker Pool TF"), "linux-worker-pool-tf");
        assert_eq!(slugify("  Team: A/B  "), "team-a-b");
    }
}
