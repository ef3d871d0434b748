//! Stage 2 of the pipeline: who is asking ([`Caller`]), and what each message of the body may
//! do. Every message of a batch is screened as its own call (T22): its size, whether MCP has
//! such a method, its id, and the policies. What passes becomes a [`Permit`], the only value
//! from which an upstream request can be built, carrying only the messages that passed; the
//! rest are [`Refusal`]s answered one by one. List answers are cut down per message, matched by
//! id, to what the caller may use.
use crate::error::GatewayError;
use crate::sessions::Owner;
use crate::spec::MessageLimits;
use bytes::Bytes;
use gatehouse_core::jsonrpc::{MessageKind, PeekedMessage};
use gatehouse_core::{McpPeek, ScopeSet};
use gatehouse_policy::{Ask, Decision, Policies};
use gatehouse_tokens::Principal;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashSet};

/// Who is asking: the principal the guard validated, or nobody on an anonymous route.
#[derive(Debug, Clone)]
pub enum Caller {
    Authenticated(Box<Principal>),
    Anonymous,
}

static NO_CLAIMS: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl Caller {
    /// Takes the guard's principal from a request's extensions (nothing later reads it).
    pub fn take(ext: &mut http::Extensions) -> Self {
        match ext.remove::<Principal>() {
            Some(p) => Self::Authenticated(Box::new(p)),
            None => Self::Anonymous,
        }
    }

    pub fn owner(&self) -> Owner {
        match self {
            Self::Authenticated(p) => Owner::new(&p.issuer, &p.subject),
            Self::Anonymous => Owner::anonymous(),
        }
    }

    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Self::Authenticated(p) => Some(p),
            Self::Anonymous => None,
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        self.principal().and_then(|p| p.tenant.as_deref())
    }

    /// The caller as the policies see it.
    fn view(&self) -> View<'_> {
        match self {
            Self::Authenticated(p) => View {
                issuer: &p.issuer,
                subject: &p.subject,
                client: p.client_id.as_deref(),
                tenant: p.tenant.as_deref(),
                scopes: p.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
                claims: &p.claims,
            },
            Self::Anonymous => View {
                issuer: "",
                subject: "anonymous",
                client: None,
                tenant: None,
                scopes: BTreeSet::new(),
                claims: &NO_CLAIMS,
            },
        }
    }
}

struct View<'a> {
    issuer: &'a str,
    subject: &'a str,
    client: Option<&'a str>,
    tenant: Option<&'a str>,
    scopes: BTreeSet<String>,
    claims: &'a Map<String, Value>,
}

impl View<'_> {
    fn policy(&self) -> gatehouse_policy::Caller<'_> {
        gatehouse_policy::Caller {
            issuer: self.issuer,
            subject: self.subject,
            client: self.client,
            tenant: self.tenant,
            scopes: &self.scopes,
            claims: self.claims,
        }
    }
}

/// Client-to-server requests of every MCP revision Gatehouse speaks.
pub const REQUESTS: [&str; 19] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
    // 2026-07-28
    "server/discover",
    "subscriptions/listen",
];

/// Client-to-server notifications.
pub const NOTIFICATIONS: [&str; 5] = [
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/tasks/status",
];

/// Which list answers are filtered: the array in the result, and each entry's key.
fn list_shape(method: &str) -> Option<(&'static str, &'static str, &'static str)> {
    match method {
        "tools/list" => Some(("tools/list", "tools", "name")),
        "prompts/list" => Some(("prompts/list", "prompts", "name")),
        "resources/list" => Some(("resources/list", "resources", "uri")),
        "resources/templates/list" => Some((
            "resources/templates/list",
            "resourceTemplates",
            "uriTemplate",
        )),
        _ => None,
    }
}

/// One message that does not go upstream, and why.
#[derive(Debug)]
pub struct Refusal {
    /// Its position in the body.
    pub index: usize,
    /// The id to answer (`None` for a notification: nothing is answered).
    pub id: Option<Value>,
    pub error: GatewayError,
}

/// The messages of one request, screened: those cleared so far and those refused.
#[derive(Debug)]
pub struct Screened {
    cleared: Vec<usize>,
    refused: Vec<Refusal>,
    needs: BTreeSet<String>,
    batch: bool,
    owner: Owner,
}

/// Screens every message of `peek` (T22): each is checked as if it came alone.
pub fn screen(
    policies: &Policies,
    caller: &Caller,
    server: &str,
    peek: &McpPeek,
    limits: &MessageLimits,
) -> Screened {
    let view = caller.view();
    let who = view.policy();
    let mut s = Screened {
        cleared: Vec::new(),
        refused: Vec::new(),
        needs: BTreeSet::new(),
        batch: peek.batch,
        owner: caller.owner(),
    };
    let mut ids: HashSet<String> = HashSet::new();
    for (index, m) in peek.messages.iter().enumerate() {
        // Serialised once: for its length, and as the key of the duplicate check.
        let id_text = m.id.as_ref().map(Value::to_string);
        let id =
            m.id.as_ref()
                .filter(|_| id_text.as_ref().is_some_and(|t| t.len() <= limits.max_id));
        let refuse = |error| Refusal {
            index,
            id: match m.kind {
                MessageKind::Request => Some(id.cloned().unwrap_or(Value::Null)),
                _ => None,
            },
            error,
        };
        if index >= limits.max_batch {
            s.refused.push(refuse(GatewayError::Invalid(format!(
                "a batch carries at most {} messages",
                limits.max_batch
            ))));
            continue;
        }
        if let Err(e) = check_message(m, id_text, limits, peek.batch, &mut ids, policies) {
            s.refused.push(refuse(e));
            continue;
        }
        // Responses (to the server's own requests) and notifications carry no new intent:
        // they are checked for shape above, not put to the policies.
        let (MessageKind::Request, Some(method)) = (m.kind, m.method.as_deref()) else {
            s.cleared.push(index);
            continue;
        };
        let params = m.params.as_ref();
        let target = match method {
            "resources/subscribe" | "resources/unsubscribe" => {
                params.and_then(|p| p.get("uri")).and_then(Value::as_str)
            }
            _ => m.name.as_deref(),
        };
        let ask = Ask {
            server,
            method,
            target,
            arguments: params
                .and_then(|p| p.get("arguments"))
                .and_then(Value::as_object),
        };
        match policies.decide(&who, &ask) {
            Decision::Allow => s.cleared.push(index),
            Decision::NeedScopes(needed) => {
                s.needs.extend(needed);
                s.cleared.push(index);
            }
            Decision::Deny { policies } => {
                s.refused.push(refuse(GatewayError::Forbidden { policies }));
            }
        }
    }
    s
}

/// The checks of one message's form: lengths, a known method, a unique id.
fn check_message(
    m: &PeekedMessage,
    id_text: Option<String>,
    limits: &MessageLimits,
    batch: bool,
    ids: &mut HashSet<String>,
    policies: &Policies,
) -> Result<(), GatewayError> {
    if let Some(text) = id_text {
        if text.len() > limits.max_id {
            return Err(GatewayError::Invalid(format!(
                "an id is at most {} bytes",
                limits.max_id
            )));
        }
        // Answers are matched to requests by id: two requests with one id could get each
        // other's answer, and filtering that follows ids must not be fooled.
        if m.kind == MessageKind::Request && !ids.insert(text) {
            return Err(GatewayError::Invalid("a request id used twice".into()));
        }
    }
    let Some(method) = m.method.as_deref() else {
        return Ok(());
    };
    if method.len() > limits.max_method {
        return Err(GatewayError::Invalid(format!(
            "a method name is at most {} bytes",
            limits.max_method
        )));
    }
    let known = match m.kind {
        MessageKind::Request => REQUESTS.contains(&method),
        _ => NOTIFICATIONS.contains(&method),
    };
    if !known && !policies.permits_other_methods() {
        return Err(GatewayError::UnknownMethod(crate::error::clip(method)));
    }
    if batch && method == "initialize" {
        return Err(GatewayError::Invalid(
            "initialize is never part of a batch".into(),
        ));
    }
    if let Some(name) = m.name.as_deref() {
        let max = if method == "resources/read" {
            limits.max_uri
        } else {
            limits.max_name
        };
        if name.is_empty() || name.len() > max {
            return Err(GatewayError::Invalid(format!(
                "params.name / params.uri must be 1 to {max} bytes"
            )));
        }
    }
    Ok(())
}

impl Screened {
    /// Scopes that would let the messages through: non-empty means a 403 `insufficient_scope`
    /// challenge for the whole request (nothing is forwarded, no budget spent).
    pub fn needs_scopes(&self) -> Option<&BTreeSet<String>> {
        (!self.needs.is_empty()).then_some(&self.needs)
    }

    /// The messages cleared so far (positions in the body).
    pub fn cleared(&self) -> &[usize] {
        &self.cleared
    }

    /// Refuses a cleared message after all (a limit).
    pub fn refuse(&mut self, index: usize, id: Option<Value>, error: GatewayError) {
        self.cleared.retain(|i| *i != index);
        self.refused.push(Refusal { index, id, error });
    }

    pub fn refusals(&self) -> &[Refusal] {
        &self.refused
    }

    /// The permit for what is left, with the body that carries exactly those messages: the
    /// original bytes when nothing was refused, else the cleared messages re-serialised.
    /// `None` when nothing is left to send.
    pub fn into_permit(self, peek: &McpPeek, body: &Bytes) -> (Option<Permit>, Vec<Refusal>) {
        let Self {
            cleared,
            refused,
            batch,
            owner,
            ..
        } = self;
        if cleared.is_empty() {
            return (None, refused);
        }
        let forwarded = if refused.is_empty() {
            Some(body.clone())
        } else {
            subset(body, &cleared)
        };
        let Some(forwarded) = forwarded else {
            // The guard parsed this body already; failing now is an internal fault.
            tracing::warn!("a screened body did not parse again; nothing forwarded");
            return (None, refused);
        };
        let mut lists = Vec::new();
        let mut others = Vec::new();
        let mut initialize = false;
        let mut first_id = None;
        for i in &cleared {
            let Some(m) = peek.messages.get(*i) else {
                continue;
            };
            if m.kind == MessageKind::Request && first_id.is_none() {
                first_id = m.id.clone();
            }
            initialize |= m.method.as_deref() == Some("initialize");
            match (&m.id, m.method.as_deref().and_then(list_shape)) {
                (Some(id), Some((method, _, _))) => lists.push((id.clone(), method)),
                (Some(id), None) if m.kind == MessageKind::Request => others.push(id.clone()),
                _ => {}
            }
        }
        (
            Some(Permit {
                owner,
                body: forwarded,
                lists,
                others,
                initialize: initialize && !batch,
                first_id: first_id.unwrap_or(Value::Null),
            }),
            refused,
        )
    }
}

/// The cleared messages of a batch, as a batch.
fn subset(body: &Bytes, cleared: &[usize]) -> Option<Bytes> {
    let all: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).ok()?;
    let kept: Vec<&serde_json::value::RawValue> = cleared
        .iter()
        .filter_map(|i| all.get(*i).copied())
        .collect();
    serde_json::to_vec(&kept).ok().map(Bytes::from)
}

/// Proof that a request was authorized, and what of it may go upstream. Built only by this
/// module ([`Screened::into_permit`], [`Permit::stream`]); an upstream request takes one.
#[derive(Debug)]
pub struct Permit {
    owner: Owner,
    body: Bytes,
    /// Ids of list requests whose answers are filtered, with their method.
    lists: Vec<(Value, &'static str)>,
    /// Ids of the other requests forwarded (their answers are left alone).
    others: Vec<Value>,
    /// The body is one `initialize` (never part of a batch).
    initialize: bool,
    /// The first request's id (what an error for the whole request answers).
    first_id: Value,
}

impl Permit {
    /// A GET (the session's stream) or DELETE (its end): no message, nothing to screen; the
    /// guard authenticated the caller and the session is checked to be theirs.
    pub fn stream(caller: &Caller) -> Self {
        Self {
            owner: caller.owner(),
            body: Bytes::new(),
            lists: Vec::new(),
            others: Vec::new(),
            initialize: false,
            first_id: Value::Null,
        }
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The body to send upstream: the cleared messages only.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn is_initialize(&self) -> bool {
        self.initialize
    }

    /// The id of the first request forwarded (`null` without one).
    pub fn first_id(&self) -> &Value {
        &self.first_id
    }

    pub fn filters_lists(&self) -> bool {
        !self.lists.is_empty()
    }

    /// Cuts every list answer in `msg` (one message) down to what the caller may use; the
    /// answer is matched to its request by id.
    pub fn filter_message(
        &self,
        policies: &Policies,
        caller: &Caller,
        server: &str,
        msg: &mut Value,
    ) {
        let id = msg.get("id");
        let listed = id.and_then(|id| self.lists.iter().find(|(l, _)| l == id));
        // An answer to another request of this body is left alone; an answer matching no
        // request (an upstream that changed the id) has every list in it filtered: fail closed.
        if listed.is_none() && id.is_some_and(|id| self.others.contains(id)) {
            return;
        }
        let view = caller.view();
        let who = view.policy();
        let shapes: Vec<(&str, &str, &str)> = match listed {
            Some((_, m)) => list_shape(m).into_iter().collect(),
            None => [
                "tools/list",
                "prompts/list",
                "resources/list",
                "resources/templates/list",
            ]
            .into_iter()
            .filter_map(list_shape)
            .collect(),
        };
        let Some(result) = msg.get_mut("result") else {
            return;
        };
        let mut filtered = false;
        for (method, array, key) in shapes {
            if let Some(items) = result.get_mut(array).and_then(Value::as_array_mut) {
                // An entry that cannot be put to the policies (no name) is left out.
                items.retain(|t| {
                    t[key]
                        .as_str()
                        .is_some_and(|n| policies.lists(&who, server, method, n))
                });
                filtered = true;
            }
        }
        // MCP 2026-07-28 caching (GW-C1): a list cut down for this caller is theirs alone,
        // whatever the upstream said; no shared cache may serve it to another token.
        if filtered && let Some(r) = result.as_object_mut() {
            r.insert("cacheScope".into(), Value::String("private".into()));
        }
    }

    /// [`Self::filter_message`] over a whole answer: one JSON message, a JSON batch, or an
    /// event stream (where an event that does not parse is dropped: fail closed).
    pub fn filter_body(
        &self,
        policies: &Policies,
        caller: &Caller,
        server: &str,
        sse: bool,
        body: &[u8],
    ) -> Vec<u8> {
        let text = String::from_utf8_lossy(body);
        if sse {
            return crate::sse::map_events(&text, true, |mut v| {
                self.filter_all(policies, caller, server, &mut v);
                Some(v)
            })
            .into_bytes();
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(mut v) => {
                self.filter_all(policies, caller, server, &mut v);
                v.to_string().into_bytes()
            }
            // A list answer that cannot be read cannot be filtered: nothing of it is shown.
            Err(_) => Vec::new(),
        }
    }

    fn filter_all(&self, policies: &Policies, caller: &Caller, server: &str, v: &mut Value) {
        match v {
            Value::Array(items) => {
                for m in items {
                    self.filter_message(policies, caller, server, m);
                }
            }
            m => self.filter_message(policies, caller, server, m),
        }
    }
}

/// The 403 `insufficient_scope` challenge (RS-08): the baseline plus what the calls need.
pub fn scope_response(
    prm_url: &str,
    required: &ScopeSet,
    needed: &BTreeSet<String>,
) -> axum::response::Response {
    let extra = ScopeSet::from_iter_strs(needed.iter().map(String::as_str)).unwrap_or_default();
    gatehouse_guard::GuardError::InsufficientScope {
        needed: required.union(&extra),
        description: format!("this call needs the scope {extra}"),
    }
    .into_response(prm_url, required)
}

#[cfg(test)]
mod tests;
