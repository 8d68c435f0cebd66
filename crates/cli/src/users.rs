//! `muster user`: users, their API keys, and the roles they hold in spaces. A role is given through a
//! team named after it and its space ("Task runner in Team B"), so granting is idempotent and the
//! teams stay readable in the API.

use crate::client::Client;
use crate::names::Names;
use crate::{SpaceOption, array, id_of, matches, output, resolve_space};
use anyhow::{anyhow, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Lists the users.
    List,
    /// Creates a user and prints a new API key for them (shown once).
    Create {
        username: String,
        #[arg(long)]
        display_name: Option<String>,
        /// A service account, for automation.
        #[arg(long)]
        service: bool,
    },
    /// Gives a user a role in a space: Space manager, Worker manager, Task runner, Space viewer, or
    /// a role of your own.
    Grant {
        username: String,
        #[arg(long)]
        role: String,
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Takes a role in a space away from a user.
    Revoke {
        username: String,
        #[arg(long)]
        role: String,
        #[command(flatten)]
        space: SpaceOption,
    },
    /// What a user may do, per space.
    Permissions { username: String },
}

async fn find_user(client: &Client, username: &str) -> anyhow::Result<Value> {
    client
        .get_all_pages("/api/users?take=2147483647")
        .await?
        .into_iter()
        .find(|u| {
            u["Username"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(username.trim()))
                || id_of(u).eq_ignore_ascii_case(username.trim())
        })
        .ok_or_else(|| anyhow!("there is no user '{username}'"))
}

async fn find_role(client: &Client, role: &str) -> anyhow::Result<Value> {
    array(&client.get("/api/userroles/all").await?)
        .into_iter()
        .find(|r| matches(r, role))
        .ok_or_else(|| anyhow!("there is no user role '{role}' (see /api/userroles/all)"))
}

fn team_name(role: &Value, space: &Value) -> String {
    format!(
        "{} in {}",
        output::text(&role["Name"]),
        output::text(&space["Name"])
    )
}

pub async fn user(client: &Client, json: bool, command: UserCommand) -> anyhow::Result<i32> {
    match command {
        UserCommand::List => {
            let users = client.get_all_pages("/api/users?take=2147483647").await?;
            if json {
                output::json(&Value::Array(users));
            } else {
                let rows = users
                    .iter()
                    .map(|u| {
                        vec![
                            output::text(&u["Id"]),
                            output::text(&u["Username"]),
                            output::text(&u["DisplayName"]),
                            output::text(&u["IsActive"]),
                        ]
                    })
                    .collect();
                output::table(&["ID", "USERNAME", "DISPLAY NAME", "ACTIVE"], rows);
            }
        }
        UserCommand::Create {
            username,
            display_name,
            service,
        } => {
            let body =
                json!({"Username": username, "DisplayName": display_name, "IsService": service});
            let user = client.send(Method::POST, "/api/users", Some(&body)).await?;
            let key = client
                .send(
                    Method::POST,
                    &format!("/api/users/{}/apikeys", id_of(&user)),
                    Some(&json!({"Purpose": "Created by muster user create"})),
                )
                .await?;
            if json {
                output::json(&json!({"User": user, "ApiKey": key}));
            } else {
                println!(
                    "Created user {} ({}). Their API key (shown once): {}",
                    output::text(&user["Username"]),
                    id_of(&user),
                    output::text(&key["ApiKey"])
                );
            }
        }
        UserCommand::Grant {
            username,
            role,
            space,
        } => {
            let user = find_user(client, &username).await?;
            let role = find_role(client, &role).await?;
            let space = resolve_space(client, &space).await?;
            let name = team_name(&role, &space);
            let teams = array(&client.get("/api/teams/all").await?);
            let (mut team, is_new) = match teams.into_iter().find(|t| matches(t, &name)) {
                Some(team) => (team, false),
                None => {
                    let team = client
                        .send(
                            Method::POST,
                            "/api/teams",
                            Some(&json!({"Name": name, "MemberUserIds": []})),
                        )
                        .await?;
                    (team, true)
                }
            };
            // The team must hold the role in the space: a team left from a deleted space may not.
            let scoped = client
                .get_all_pages(&format!(
                    "/api/teams/{}/scopeduserroles?take=2147483647",
                    id_of(&team)
                ))
                .await?;
            let holds = scoped
                .iter()
                .any(|s| s["UserRoleId"] == role["Id"] && s["SpaceId"] == space["Id"]);
            if !holds {
                let given = client
                    .send(
                        Method::POST,
                        "/api/scopeduserroles",
                        Some(&json!({"TeamId": id_of(&team), "UserRoleId": id_of(&role), "SpaceId": id_of(&space)})),
                    )
                    .await;
                if let Err(error) = given {
                    if is_new {
                        let _ = client
                            .send(
                                Method::DELETE,
                                &format!("/api/teams/{}", id_of(&team)),
                                None,
                            )
                            .await;
                    }
                    return Err(error);
                }
            }
            let members = team["MemberUserIds"]
                .as_array_mut()
                .ok_or_else(|| anyhow!("the team has no member list"))?;
            if !members.contains(&user["Id"]) {
                members.push(user["Id"].clone());
                team = client
                    .send(
                        Method::PUT,
                        &format!("/api/teams/{}", id_of(&team)),
                        Some(&team),
                    )
                    .await?;
            }
            if json {
                output::json(&team);
            } else {
                println!(
                    "{} is a {} in {} (team '{}').",
                    output::text(&user["Username"]),
                    output::text(&role["Name"]),
                    output::text(&space["Name"]),
                    name
                );
            }
        }
        UserCommand::Revoke {
            username,
            role,
            space,
        } => {
            let user = find_user(client, &username).await?;
            let role = find_role(client, &role).await?;
            let space = resolve_space(client, &space).await?;
            let name = team_name(&role, &space);
            let teams = array(&client.get("/api/teams/all").await?);
            let Some(mut team) = teams.into_iter().find(|t| matches(t, &name)) else {
                bail!(
                    "{} holds no role '{}' in {}",
                    username,
                    output::text(&role["Name"]),
                    output::text(&space["Name"])
                );
            };
            if let Some(members) = team["MemberUserIds"].as_array_mut() {
                members.retain(|m| *m != user["Id"]);
            }
            let saved = client
                .send(
                    Method::PUT,
                    &format!("/api/teams/{}", id_of(&team)),
                    Some(&team),
                )
                .await?;
            if json {
                output::json(&saved);
            }
        }
        UserCommand::Permissions { username } => {
            let user = find_user(client, &username).await?;
            let permissions = client
                .get(&format!("/api/users/{}/permissions", id_of(&user)))
                .await?;
            if json {
                output::json(&permissions);
                return Ok(0);
            }
            if permissions["IsAdministrator"] == json!(true) {
                println!(
                    "{} administers the server.",
                    output::text(&user["Username"])
                );
            }
            let mut rows = Vec::new();
            let names = Names::spaces(client).await;
            if let Some(map) = permissions["SpacePermissions"].as_object() {
                for (permission, holders) in map {
                    let spaces: Vec<String> = array(holders)
                        .iter()
                        .map(|h| names.name(&h["SpaceId"]))
                        .collect();
                    rows.push(vec![permission.clone(), spaces.join(", ")]);
                }
            }
            output::table(&["PERMISSION", "SPACES"], rows);
        }
    }
    Ok(0)
}
