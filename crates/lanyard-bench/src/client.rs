//! One simulated user agent: a keep-alive connection, its own cookie jar, no redirects followed.

use std::collections::HashMap;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{RequestBuilder, Response};

pub struct Agent {
    pub http: reqwest::Client,
    cookies: HashMap<String, String>,
}

impl Agent {
    pub fn new() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1)
            .build()?;
        Ok(Self {
            http,
            cookies: HashMap::new(),
        })
    }

    pub fn forget_cookies(&mut self) {
        self.cookies.clear();
    }

    /// Sends `req` with the jar's cookies and keeps what the response sets.
    pub async fn send(&mut self, req: RequestBuilder) -> anyhow::Result<Response> {
        let req = if self.cookies.is_empty() {
            req
        } else {
            let header = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req.header(COOKIE, header)
        };
        let r = req.send().await?;
        for c in r.headers().get_all(SET_COOKIE) {
            let Ok(c) = c.to_str() else { continue };
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let gone = attrs.to_ascii_lowercase().contains("max-age=0") || v.is_empty();
            if gone {
                self.cookies.remove(k.trim());
            } else {
                self.cookies.insert(k.trim().to_owned(), v.to_owned());
            }
        }
        Ok(r)
    }
}

/// Where a redirect points, resolved against `base`.
pub fn location(r: &Response, base: &url::Url) -> anyhow::Result<url::Url> {
    let loc = r
        .headers()
        .get(LOCATION)
        .ok_or_else(|| anyhow::anyhow!("{} {} without a Location", r.status(), r.url()))?
        .to_str()?;
    Ok(base.join(loc)?)
}

/// The `value` of the first `<input name="{name}" value="…">` in a page.
pub fn form_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let rest = &html[at..];
    let v = rest.find("value=\"")? + 7;
    let end = rest[v..].find('"')?;
    Some(rest[v..v + end].replace("&amp;", "&"))
}
