//! Enums of the contract (section 3), serialized as the strings Octopus uses. Never add a value that
//! Octopus does not have: older generated clients raise on unknown values. New facts go in new fields.

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const NAMES: &'static [&'static str] = &[$(stringify!($variant)),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }

            /// Parses the name in any case, as query filters are written by hand.
            pub fn parse(text: &str) -> Option<Self> {
                let text = text.trim();
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(text))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(WorkerPoolType {
    StaticWorkerPool,
    DynamicWorkerPool
});
string_enum!(CommunicationStyle {
    None,
    TentaclePassive,
    TentacleActive,
    Ssh,
    OfflineDrop,
    AzureWebApp,
    Ftp,
    AzureCloudService,
    AzureServiceFabricCluster,
    Kubernetes,
    StepPackage,
    KubernetesTentacle,
    AwsEcsCluster,
});
string_enum!(HealthStatus {
    Healthy,
    Unavailable,
    Unknown,
    HasWarnings,
    Unhealthy
});
string_enum!(
    /// The legacy machine status that older clients still read.
    MachineStatus { Online, Offline, Unknown, NeedsUpgrade, CalamariNeedsUpgrade, Disabled }
);
string_enum!(TaskState {
    Queued,
    Executing,
    Failed,
    Canceled,
    TimedOut,
    Success,
    Cancelling
});
string_enum!(ActivityStatus {
    Pending,
    Running,
    Success,
    Failed,
    Skipped,
    SuccessWithWarning,
    Canceled
});
string_enum!(LogCategory {
    Trace,
    Verbose,
    Info,
    Highlight,
    Wait,
    Gap,
    Alert,
    Warning,
    Error,
    Fatal,
    Planned,
    Updated,
    Finished,
    Abandoned,
});

impl TaskState {
    /// A task in one of these states never changes again.
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failed | TaskState::Canceled | TaskState::TimedOut
        )
    }

    /// Parses a `states=` filter value; `New` is Octopus's older name for Queued.
    pub fn parse_filter(text: &str) -> Option<Self> {
        if text.trim().eq_ignore_ascii_case("new") {
            Some(TaskState::Queued)
        } else {
            Self::parse(text)
        }
    }

    pub fn activity_status(self) -> ActivityStatus {
        match self {
            TaskState::Queued => ActivityStatus::Pending,
            TaskState::Executing | TaskState::Cancelling => ActivityStatus::Running,
            TaskState::Success => ActivityStatus::Success,
            TaskState::Failed | TaskState::TimedOut => ActivityStatus::Failed,
            TaskState::Canceled => ActivityStatus::Canceled,
        }
    }
}

/// How a script is written. Octopus spells these `Bash`, `Python`, `PowerShell`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptSyntax {
    Bash,
    Python,
    PowerShell,
}

impl ScriptSyntax {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "bash" | "sh" => Some(ScriptSyntax::Bash),
            "python" | "python3" => Some(ScriptSyntax::Python),
            "powershell" | "pwsh" => Some(ScriptSyntax::PowerShell),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScriptSyntax::Bash => "Bash",
            ScriptSyntax::Python => "Python",
            ScriptSyntax::PowerShell => "PowerShell",
        }
    }
}

/// Where an AdHocScript task runs (`Arguments.TargetType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptTarget {
    OctopusServer,
    WorkerPools,
    Workers,
}

impl ScriptTarget {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "octopusserver" => Some(ScriptTarget::OctopusServer),
            "workerpools" => Some(ScriptTarget::WorkerPools),
            "workers" => Some(ScriptTarget::Workers),
            _ => None,
        }
    }
}
