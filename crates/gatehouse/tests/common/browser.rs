//! A scripted browser for the login and consent pages: cookies, forms, no redirects followed.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixture"
)]

use std::collections::HashMap;

pub struct Browser {
    pub http: reqwest::Client,
    pub cookies: HashMap<String, String>,
    /// With [`Browser::per_origin`]: a cookie jar per origin (several servers on one host,
    /// whose cookie names would collide in one jar).
    jars: Option<HashMap<String, HashMap<String, String>>>,
}

fn origin(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> Option<String> {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
    }
    /// The value of a hidden form field.
    pub fn field(&self, name: &str) -> Option<String> {
        let needle = format!("name=\"{name}\" value=\"");
        let i = self.body.find(&needle)? + needle.len();
        let j = self.body[i..].find('"')?;
        Some(self.body[i..i + j].to_owned())
    }
    /// Query parameters of the redirect.
    pub fn redirect_params(&self) -> HashMap<String, String> {
        let loc = self.location().expect("a redirect");
        let u = url::Url::parse(&loc).expect("absolute redirect");
        u.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            jars: None,
        }
    }

    pub fn per_origin() -> Self {
        Self {
            jars: Some(HashMap::new()),
            ..Self::new()
        }
    }

    fn cookie_header(&self, url: &str) -> String {
        let jar = match &self.jars {
            Some(j) => j.get(&origin(url)),
            None => Some(&self.cookies),
        };
        jar.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn take(&mut self, r: reqwest::Response) -> Page {
        let from = origin(r.url().as_str());
        for c in r.headers().get_all("set-cookie") {
            let s = c.to_str().unwrap();
            let pair = s.split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                let jar = match &mut self.jars {
                    Some(j) => j.entry(from.clone()).or_default(),
                    None => &mut self.cookies,
                };
                jar.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
        Page {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        let r = self
            .http
            .get(url)
            .header("cookie", self.cookie_header(url))
            .send()
            .await
            .unwrap();
        self.take(r).await
    }

    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let r = self
            .http
            .post(url)
            .header("cookie", self.cookie_header(url))
            .form(form)
            .send()
            .await
            .unwrap();
        self.take(r).await
    }

    /// Opens an authorization URL, signs in if asked and approves the consent page; returns the
    /// answer to the consent post (or the direct redirect when consent was remembered).
    pub async fn sign_in_and_approve(
        &mut self,
        authorize_url: &str,
        issuer: &str,
        user: &str,
        password: &str,
    ) -> Page {
        let first = self.get(authorize_url).await;
        if first.status == 307 {
            return first;
        }
        assert_eq!(first.status, 200, "{}", first.body);
        let (p, c) = (
            first.field("pending").expect("pending"),
            first.field("csrf").expect("csrf"),
        );
        let consent = if first.body.contains("type=\"password\"") {
            self.post_form(
                &format!("{issuer}/login"),
                &[
                    ("pending", &p),
                    ("csrf", &c),
                    ("username", user),
                    ("password", password),
                ],
            )
            .await
        } else {
            first
        };
        if consent.status == 303 {
            return consent;
        }
        assert_eq!(consent.status, 200, "{}", consent.body);
        assert!(consent.body.contains("value=\"approve\""));
        self.post_form(
            &format!("{issuer}/consent"),
            &[("pending", &p), ("csrf", &c), ("decision", "approve")],
        )
        .await
    }
}
