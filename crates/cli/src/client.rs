//! The REST client the commands share: the API key on every request, and the contract's error body
//! turned into one readable line.

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    /// `MUSTER_TASK_TOKEN` when run by a task's script: sent as `X-Muster-Task-Token`, so a run
    /// it creates is that task's child.
    task_token: Option<String>,
}

impl Client {
    pub fn new(server: &str, api_key: Option<String>) -> anyhow::Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server must be an http:// or https:// address, got '{server}'");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // A server that stops answering is an error, not a hang; live streams send a
            // keep-alive every 15 seconds, well within this.
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .context("cannot set up the HTTP client")?;
        let task_token = std::env::var("MUSTER_TASK_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        Ok(Client {
            http,
            base,
            api_key,
            task_token,
        })
    }

    /// The same client without the task token: what it creates is not the task's child (a run
    /// the script does not wait for must not borrow its task's leases).
    pub fn without_task_token(&self) -> Client {
        Client {
            task_token: None,
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, self.url(path));
        if let Some(key) = &self.api_key {
            request = request.header("X-Octopus-ApiKey", key);
        }
        if let Some(token) = &self.task_token {
            request = request.header("X-Muster-Task-Token", token);
        }
        request
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        Ok(self.send_with_headers(method, path, body).await?.0)
    }

    /// `send`, with the answer's headers.
    pub async fn send_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(Value, reqwest::header::HeaderMap)> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(api_error(status, &text));
        }
        if text.trim().is_empty() {
            return Ok((Value::Null, headers));
        }
        let value = serde_json::from_str(&text)
            .with_context(|| format!("the server's answer to {path} is not JSON"))?;
        Ok((value, headers))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None).await
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(api_error(status, &text));
        }
        Ok(text)
    }

    /// Opens a streaming GET (server-sent events).
    pub async fn open_stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.open(path, "text/event-stream").await
    }

    /// Opens a GET whose body the caller reads as it comes (an event stream, a file's bytes).
    pub async fn open(&self, path: &str, accept: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .request(Method::GET, path)
            .header("Accept", accept)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(api_error(status, &text));
        }
        Ok(response)
    }

    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the Muster server at {}: {}",
            self.base,
            root_cause(&error)
        )
    }

    /// Every item of a paged collection, following `Page.Next`.
    pub async fn get_all_pages(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(path) = next {
            let page = self.get(&path).await?;
            items.extend(page["Items"].as_array().cloned().unwrap_or_default());
            next = page["Links"]["Page.Next"].as_str().map(str::to_string);
        }
        Ok(items)
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut source = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// `ErrorMessage` and each entry of `Errors`, on one line.
fn api_error(status: StatusCode, body: &str) -> anyhow::Error {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v["ErrorMessage"].as_str())
        .unwrap_or("")
        .to_string();
    let errors: Vec<String> = parsed
        .as_ref()
        .and_then(|v| v["Errors"].as_array())
        .map(|list| {
            list.iter()
                .filter_map(|e| e.as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let detail = match (message.is_empty(), errors.as_slice()) {
        (true, []) => body.trim().chars().take(200).collect::<String>(),
        (_, [only]) if *only == message || message.is_empty() => only.clone(),
        (true, many) => many.join("; "),
        (false, []) => message,
        (false, many) => format!("{message} {}", many.join("; ")),
    };
    match status {
        StatusCode::UNAUTHORIZED => anyhow!("{detail} (set --api-key or MUSTER_API_KEY)"),
        _ => anyhow!("{detail} (HTTP {})", status.as_u16()),
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
