#![forbid(unsafe_code)]
//! Gateway authorization: which caller may do what on which upstream MCP server.
//!
//! One engine, Cedar. Operators write Cedar policies over the caller (claims, groups, roles,
//! tenant, client, scopes), the server, the MCP method, the tool (prompt, resource) and the tool's
//! arguments; the short scope-per-tool form (`tool_scopes`) compiles to Cedar `forbid` policies
//! in the same set, so there is one decision and one explanation. Every policy set is validated
//! against [`SCHEMA`] before it is used, and a file that changes is reloaded in place — a bad
//! edit is refused and the policies in force stay.
//!
//! The entity model (see [`SCHEMA`]):
//! - principal `User::"<iss>\n<sub>"`, in `Group::"g"` for each `groups` claim entry and in
//!   `Role::"r"` for each role (`roles`, Keycloak's `realm_access.roles`); attributes `sub`,
//!   `iss`, `client`, `tenant` (empty when absent) and `scopes`; the verified delegation chain
//!   of an exchanged token (RFC 8693 `act`, nested) as `actors` (each actor's `sub`) and
//!   `delegation_depth` (0 when the caller acts for itself); every other string, number or
//!   boolean claim as a tag (`principal.getTag("department")`);
//! - action `Action::"<MCP method>"` (`tools/call`, `prompts/get`, …);
//! - resource `Tool::"<server>/<tool>"` (tags: the call's arguments, rendered as strings),
//!   `Prompt::"<server>/<prompt>"`, `McpResource::"<server>/<uri>"`, each in `Server::"<server>"`,
//!   or `Server::"<server>"` for the other methods.
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

/// The schema every policy set is validated against.
pub const SCHEMA: &str = r#"
entity Group, Role;
entity User in [Group, Role] {
  sub: String,
  iss: String,
  client: String,
  tenant: String,
  scopes: Set<String>,
  actors: Set<String>,
  delegation_depth: Long,
} tags String;
entity Server;
entity Tool in [Server] { server: String, name: String } tags String;
entity Prompt in [Server] { server: String, name: String } tags String;
entity McpResource in [Server] { server: String, uri: String };

action "tools/call" appliesTo { principal: User, resource: Tool };
action "prompts/get" appliesTo { principal: User, resource: Prompt };
action "resources/read", "resources/subscribe", "resources/unsubscribe"
  appliesTo { principal: User, resource: McpResource };
action "initialize", "ping", "tools/list", "prompts/list", "resources/list",
  "resources/templates/list", "completion/complete", "logging/setLevel", "other"
  appliesTo { principal: User, resource: Server };
"#;

/// Methods that have an action of their own; any other method is `Action::"other"`.
const SERVER_ACTIONS: [&str; 8] = [
    "initialize",
    "ping",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "completion/complete",
    "logging/setLevel",
];

/// Annotation carrying the scopes a compiled scope rule asks for.
const SCOPES_ANNOTATION: &str = "scopes";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy schema does not parse: {0}")]
    Schema(String),
    #[error("{origin}: the policies do not parse: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: the policies do not validate against the schema: {message}")]
    Invalid { origin: String, message: String },
    #[error("scope rule for {what}: {message}")]
    ScopeRule { what: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// The short form: calls of `tool` (on `server`, or on every server) need all of `scopes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRule {
    pub server: Option<String>,
    pub tool: String,
    pub scopes: BTreeSet<String>,
}

/// The caller, as the gateway authenticated it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub client: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub scopes: &'a BTreeSet<String>,
    pub claims: &'a Map<String, Value>,
}

/// What the caller asks for: one JSON-RPC request to one server.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub server: &'a str,
    pub method: &'a str,
    /// The tool or prompt name, or the resource URI, for the methods that name one.
    pub target: Option<&'a str>,
    /// The tool's (or prompt's) arguments.
    pub arguments: Option<&'a Map<String, Value>>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Only scope rules refused: a token with these scopes (in addition to the caller's)
    /// would be allowed, so the caller gets 403 `insufficient_scope`.
    NeedScopes(BTreeSet<String>),
    /// A policy refused (the named ones), or none permitted.
    Deny {
        policies: Vec<String>,
    },
}

/// A validated policy set, ready to answer.
pub struct Policies {
    set: PolicySet,
    /// The scopes each compiled scope rule asks for.
    scope_rules: HashMap<PolicyId, BTreeSet<String>>,
    authorizer: Authorizer,
    /// The principal's entities for recent callers: the same caller asks call after call, and
    /// building them (claims evaluated into tags) cost a quarter of a decision.
    principals: PrincipalCache,
    /// Where the operator's policies came from (for messages).
    origin: String,
    /// Whether a `permit` names `Action::"other"`: only then may methods the gateway does not
    /// know pass (T22).
    permits_other: bool,
}

fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(s, _)| s)
        .map_err(|e| PolicyError::Schema(e.to_string()))
}

fn cedar_string(s: &str) -> String {
    // Cedar string literals take the same escapes as JSON strings.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn uid(kind: &str, id: &str) -> Option<EntityUid> {
    Some(EntityUid::from_type_name_and_id(
        type_name(kind)?,
        EntityId::new(id),
    ))
}

/// The schema's entity types, parsed once: parsing them cost a tenth of each decision.
fn type_name(kind: &str) -> Option<EntityTypeName> {
    static PARSED: std::sync::LazyLock<HashMap<&'static str, EntityTypeName>> =
        std::sync::LazyLock::new(|| {
            [
                "User",
                "Group",
                "Role",
                "Server",
                "Action",
                "Tool",
                "Prompt",
                "McpResource",
            ]
            .into_iter()
            .filter_map(|k| Some((k, EntityTypeName::from_str(k).ok()?)))
            .collect()
        });
    match PARSED.get(kind) {
        Some(t) => Some(t.clone()),
        None => EntityTypeName::from_str(kind).ok(),
    }
}

/// A tag or attribute value: strings as they are, other scalars in their JSON form; arrays and
/// objects as JSON text (a policy can still match them with `like`).
fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Policies {
    /// Compiles the operator's Cedar policies (`cedar`, named `origin` in messages; `None` means
    /// "permit everything the scope rules allow") and the scope rules into one validated set.
    pub fn compile(
        cedar: Option<&str>,
        origin: &str,
        rules: &[ScopeRule],
    ) -> Result<Self, PolicyError> {
        let schema = schema()?;
        let mut set = match cedar {
            Some(text) => PolicySet::from_str(text).map_err(|e| PolicyError::Parse {
                origin: origin.to_owned(),
                message: format!("{e:?}"),
            })?,
            None => {
                PolicySet::from_str("@id(\"default: permit\") permit(principal, action, resource);")
                    .map_err(|e| PolicyError::Parse {
                        origin: "built-in default".into(),
                        message: e.to_string(),
                    })?
            }
        };
        let mut scope_rules = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            let what = match &r.server {
                Some(s) => format!("{s}/{}", r.tool),
                None => r.tool.clone(),
            };
            if r.scopes.is_empty() {
                return Err(PolicyError::ScopeRule {
                    what,
                    message: "no scopes".into(),
                });
            }
            let mut when = vec![format!("resource.name == {}", cedar_string(&r.tool))];
            if let Some(s) = &r.server {
                when.push(format!("resource.server == {}", cedar_string(s)));
            }
            let needed: Vec<String> = r.scopes.iter().map(|s| cedar_string(s)).collect();
            let text = format!(
                "@id({id}) @{SCOPES_ANNOTATION}({scopes})\nforbid(principal, action == Action::\"tools/call\", resource)\nwhen {{ {when} }}\nunless {{ principal.scopes.containsAll([{needed}]) }};",
                id = cedar_string(&format!("tool_scopes: {what}")),
                scopes = cedar_string(&r.scopes.iter().cloned().collect::<Vec<_>>().join(" ")),
                when = when.join(" && "),
                needed = needed.join(", "),
            );
            let id = PolicyId::new(format!("gatehouse-scope-rule-{i}"));
            let policy =
                Policy::parse(Some(id.clone()), &text).map_err(|e| PolicyError::ScopeRule {
                    what: what.clone(),
                    message: e.to_string(),
                })?;
            set.add(policy).map_err(|e| PolicyError::ScopeRule {
                what,
                message: e.to_string(),
            })?;
            scope_rules.insert(id, r.scopes.clone());
        }
        let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let message = result
                .validation_errors()
                .map(|e| {
                    let name = set
                        .policy(e.policy_id())
                        .and_then(|p| p.annotation("id"))
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.policy_id().to_string());
                    format!("{name}: {e}")
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(PolicyError::Invalid {
                origin: origin.to_owned(),
                message,
            });
        }
        let other = uid("Action", "other");
        let permits_other = set.policies().any(|p| {
            p.effect() == cedar_policy::Effect::Permit
                && match p.action_constraint() {
                    cedar_policy::ActionConstraint::Eq(a) => Some(&a) == other.as_ref(),
                    cedar_policy::ActionConstraint::In(list) => {
                        list.iter().any(|a| Some(a) == other.as_ref())
                    }
                    cedar_policy::ActionConstraint::Any => false,
                }
        });
        Ok(Self {
            permits_other,
            set,
            scope_rules,
            authorizer: Authorizer::new(),
            principals: PrincipalCache::default(),
            origin: origin.to_owned(),
        })
    }

    /// How many policies are in force (the operator's and the compiled scope rules).
    pub fn len(&self) -> usize {
        self.set.policies().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether a `permit` policy names `Action::"other"` (by `==` or `in [...]`): the operator's
    /// explicit say-so for methods outside MCP's. `permit(principal, action, resource)` is not
    /// one: it was written for the methods that exist.
    pub fn permits_other_methods(&self) -> bool {
        self.permits_other
    }

    /// The decision for one request. Decisions are kept per exact caller and exact request
    /// (server, method, target, arguments) for the life of this set: nothing else goes into
    /// one (the Cedar context is empty), and the same agent repeats the same calls, and every
    /// list answer asks once per entry.
    pub fn decide(&self, caller: &Caller<'_>, ask: &Ask<'_>) -> Decision {
        let decided = self.principals.get(caller).and_then(|kept| {
            let key = ask_fits(ask).then(|| {
                use std::hash::BuildHasher;
                self.principals
                    .hasher
                    .hash_one((ask.server, ask.method, ask.target))
            });
            if let Some(key) = key
                && let Some(d) = kept.decided(key, ask)
            {
                return Ok(d);
            }
            let d = self.evaluate(&kept, caller, ask)?;
            if let Some(key) = key {
                self.principals.keep(&kept, key, ask, &d);
            }
            Ok(d)
        });
        match decided {
            Ok(d) => d,
            Err(e) => {
                // Fail closed: a request that cannot be put to the engine is refused.
                tracing::warn!(error = %e, server = ask.server, method = ask.method, "policy request could not be built; refused");
                Decision::Deny {
                    policies: Vec::new(),
                }
            }
        }
    }

    /// Whether a list entry (a tool, prompt, resource or resource template as listed by
    /// `server`) is one the caller may use: the call it stands for, without arguments, is
    /// allowed. A template stands for reads of the URIs it expands to; it is put to the policies
    /// as a read of its own text (`file:///{path}`), so a rule over `resource.uri like …` that
    /// covers the URIs covers their template too. Each read is still decided on its real URI.
    pub fn lists(&self, caller: &Caller<'_>, server: &str, list_method: &str, name: &str) -> bool {
        let method = match list_method {
            "tools/list" => "tools/call",
            "prompts/list" => "prompts/get",
            "resources/list" | "resources/templates/list" => "resources/read",
            _ => return true,
        };
        let ask = Ask {
            server,
            method,
            target: Some(name),
            arguments: None,
        };
        matches!(self.decide(caller, &ask), Decision::Allow)
    }

    /// The decision for `ask` by `caller`, whose entities are `kept`.
    fn evaluate(
        &self,
        kept: &KeptCaller,
        caller: &Caller<'_>,
        ask: &Ask<'_>,
    ) -> Result<Decision, String> {
        let (principal, mut entities) = kept.entities.clone();
        // Servers, groups and roles are not put in the store: they have no attributes, tags or
        // parents of their own, so `in` is answered by the principal's and the resource's
        // ancestors alone, and each entity in the store costs its share of the transitive
        // closure Cedar computes per request.
        let server = uid("Server", ask.server).ok_or("server id")?;
        let action_name = if SERVER_ACTIONS.contains(&ask.method)
            || matches!(
                ask.method,
                "tools/call"
                    | "prompts/get"
                    | "resources/read"
                    | "resources/subscribe"
                    | "resources/unsubscribe"
            ) {
            ask.method
        } else {
            "other"
        };
        let action = uid("Action", action_name).ok_or("action id")?;
        let server_attr = (
            "server".to_owned(),
            RestrictedExpression::new_string(ask.server.to_owned()),
        );
        let tags = || {
            ask.arguments
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(render(v))))
                .collect::<Vec<_>>()
        };
        let target = ask.target.unwrap_or_default();
        let resource = match action_name {
            "tools/call" | "prompts/get" => {
                let kind = if action_name == "tools/call" {
                    "Tool"
                } else {
                    "Prompt"
                };
                let id = uid(kind, &format!("{}/{target}", ask.server)).ok_or("resource id")?;
                let e = Entity::new_with_tags(
                    id.clone(),
                    [
                        server_attr,
                        (
                            "name".to_owned(),
                            RestrictedExpression::new_string(target.to_owned()),
                        ),
                    ],
                    [server],
                    tags(),
                )
                .map_err(|e| e.to_string())?;
                entities.push(e);
                id
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let id =
                    uid("McpResource", &format!("{}/{target}", ask.server)).ok_or("resource id")?;
                let e = Entity::new(
                    id.clone(),
                    [
                        server_attr,
                        (
                            "uri".to_owned(),
                            RestrictedExpression::new_string(target.to_owned()),
                        ),
                    ]
                    .into_iter()
                    .collect(),
                    [server].into_iter().collect(),
                )
                .map_err(|e| e.to_string())?;
                entities.push(e);
                id
            }
            _ => server,
        };
        // The set was validated against the schema when it was compiled, and the entities and
        // request are built here to the schema's shapes: checking them again on every request
        // would cost a third of the decision.
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        // Only the caller and the ask may go into a decision: `decide` keeps decisions keyed on
        // those alone, so a context from anything else (time, address) would need its key too.
        let request = Request::new(principal, action, resource, Context::empty(), None)
            .map_err(|e| e.to_string())?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.set, &entities);
        for e in response.diagnostics().errors() {
            tracing::warn!(error = %e, "a policy failed to evaluate and was skipped");
        }
        if response.decision() == CedarDecision::Allow {
            return Ok(Decision::Allow);
        }
        let reasons: Vec<&PolicyId> = response.diagnostics().reason().collect();
        if !reasons.is_empty() && reasons.iter().all(|id| self.scope_rules.contains_key(*id)) {
            let mut needed = BTreeSet::new();
            for id in &reasons {
                if let Some(s) = self.scope_rules.get(*id) {
                    needed.extend(s.iter().cloned());
                }
            }
            // A scope would fix it only if, with those scopes, something permits the call.
            let mut more = caller.scopes.clone();
            more.extend(needed.iter().cloned());
            let with = Caller {
                scopes: &more,
                ..*caller
            };
            if let Ok(Decision::Allow) = self
                .principals
                .get(&with)
                .and_then(|kept| self.evaluate(&kept, &with, ask))
            {
                return Ok(Decision::NeedScopes(needed));
            }
        }
        Ok(Decision::Deny {
            policies: reasons
                .iter()
                .filter(|id| !self.scope_rules.contains_key(**id))
                .map(|id| {
                    self.set
                        .policy(id)
                        .and_then(|p| p.annotation("id"))
                        .map(str::to_owned)
                        .unwrap_or_else(|| id.to_string())
                })
                .collect(),
        })
    }
}

/// Strings from a claim that is a string, or a list of strings.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The principal and its group and role entities.
type PrincipalEntities = (EntityUid, Vec<Entity>);

/// What is kept for one caller: its entities and its recent decisions.
struct KeptCaller {
    entities: PrincipalEntities,
    /// By a hash of server, method and target: the requests with that hash and their decisions.
    decisions: std::sync::Mutex<HashMap<u64, Vec<(OwnedAsk, Decision)>>>,
}

impl KeptCaller {
    /// The decision kept for `ask` (whose server, method and target hash to `key`).
    fn decided(&self, key: u64, ask: &Ask<'_>) -> Option<Decision> {
        self.decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)?
            .iter()
            .find(|(a, _)| a.is(ask))
            .map(|(_, d)| d.clone())
    }
}

/// A request as kept with its decision, compared field by field.
struct OwnedAsk {
    server: String,
    method: String,
    target: Option<String>,
    arguments: Option<Map<String, Value>>,
}

impl OwnedAsk {
    fn of(a: &Ask<'_>) -> Self {
        let Ask {
            server,
            method,
            target,
            arguments,
        } = *a;
        Self {
            server: server.to_owned(),
            method: method.to_owned(),
            target: target.map(str::to_owned),
            arguments: arguments.cloned(),
        }
    }

    fn is(&self, a: &Ask<'_>) -> bool {
        let Ask {
            server,
            method,
            target,
            arguments,
        } = *a;
        self.server == server
            && self.method == method
            && self.target.as_deref() == target
            && self.arguments.as_ref() == arguments
    }
}

/// Requests larger than this (target and arguments, roughly as JSON) are decided every time:
/// keeping them would let a caller fill memory with one-off arguments.
const KEPT_ASK_MAX_BYTES: usize = 1024;
/// Decisions kept over all callers; past it, everything kept is let go.
const KEPT_DECISIONS_MAX: usize = 16 * 1024;

fn ask_fits(ask: &Ask<'_>) -> bool {
    /// The size of `v` as JSON, about, if it is at most `budget`.
    fn size(v: &Value, budget: usize) -> Option<usize> {
        let n = match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => 8,
            Value::String(s) => s.len() + 2,
            Value::Array(a) => a.iter().try_fold(2usize, |n, v| {
                size(v, budget.checked_sub(n)?).map(|m| n + m)
            })?,
            Value::Object(o) => object_size(o, budget)?,
        };
        (n <= budget).then_some(n)
    }
    fn object_size(o: &Map<String, Value>, budget: usize) -> Option<usize> {
        o.iter().try_fold(2usize, |n, (k, v)| {
            let n = n + k.len() + 3;
            size(v, budget.checked_sub(n)?).map(|m| n + m)
        })
    }
    let head = ask.server.len() + ask.method.len() + ask.target.map_or(0, str::len);
    KEPT_ASK_MAX_BYTES.checked_sub(head).is_some_and(|budget| {
        ask.arguments
            .is_none_or(|a| object_size(a, budget).is_some_and(|n| n <= budget))
    })
}

/// Entities built for a caller and the caller's decisions, found again only for a caller equal
/// in every field (issuer, subject, client, tenant, scopes and every claim), so a cached entry
/// never stands for another caller or another token's claims; a decision is found again only
/// for a request equal in every field.
#[derive(Default)]
struct PrincipalCache {
    /// By a hash of issuer and subject: the callers with that hash and what is kept for them.
    map: std::sync::Mutex<HashMap<u64, Vec<Kept>>>,
    /// Decisions kept over all callers (bounded by [`KEPT_DECISIONS_MAX`]).
    decisions: std::sync::atomic::AtomicUsize,
    /// Keys drawn at random per process, so nobody can line up subjects in one bucket.
    hasher: std::collections::hash_map::RandomState,
}

type Kept = (OwnedCaller, Arc<KeptCaller>);

/// Callers remembered at most; the cache starts afresh when full.
const PRINCIPAL_CACHE_MAX: usize = 1024;

struct OwnedCaller {
    issuer: String,
    subject: String,
    client: Option<String>,
    tenant: Option<String>,
    scopes: BTreeSet<String>,
    claims: Map<String, Value>,
}

// Both take `Caller` apart field by field (no `..`): a field added to `Caller` does not
// compile until it is kept and compared here, so an entry never outlives what it was built from.
impl OwnedCaller {
    fn of(c: &Caller<'_>) -> Self {
        let Caller {
            issuer,
            subject,
            client,
            tenant,
            scopes,
            claims,
        } = *c;
        Self {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            client: client.map(str::to_owned),
            tenant: tenant.map(str::to_owned),
            scopes: scopes.clone(),
            claims: claims.clone(),
        }
    }

    fn is(&self, c: &Caller<'_>) -> bool {
        let Caller {
            issuer,
            subject,
            client,
            tenant,
            scopes,
            claims,
        } = *c;
        self.issuer == issuer
            && self.subject == subject
            && self.client.as_deref() == client
            && self.tenant.as_deref() == tenant
            && &self.scopes == scopes
            && &self.claims == claims
    }
}

impl PrincipalCache {
    fn get(&self, caller: &Caller<'_>) -> Result<Arc<KeptCaller>, String> {
        use std::hash::BuildHasher;
        let key = self.hasher.hash_one((caller.issuer, caller.subject));
        let lock = || self.map.lock().unwrap_or_else(|p| p.into_inner());
        let hit = lock()
            .get(&key)
            .and_then(|v| v.iter().find(|(c, _)| c.is(caller)))
            .map(|(_, k)| k.clone());
        if let Some(k) = hit {
            return Ok(k);
        }
        let kept = Arc::new(KeptCaller {
            entities: principal_entities(caller)?,
            decisions: Default::default(),
        });
        let mut map = lock();
        if map.values().map(Vec::len).sum::<usize>() >= PRINCIPAL_CACHE_MAX {
            map.clear();
            self.decisions
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
        map.entry(key)
            .or_default()
            .push((OwnedCaller::of(caller), kept.clone()));
        Ok(kept)
    }

    /// Keeps `decision` for `ask` with `kept`'s caller.
    fn keep(&self, kept: &KeptCaller, key: u64, ask: &Ask<'_>, decision: &Decision) {
        use std::sync::atomic::Ordering;
        if self.decisions.fetch_add(1, Ordering::Relaxed) >= KEPT_DECISIONS_MAX {
            // Let go of every caller (and so every decision): in-flight requests may still add
            // to a caller let go, which is dropped with them.
            self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.decisions.store(0, Ordering::Relaxed);
            return;
        }
        let mut decisions = kept.decisions.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = decisions.entry(key).or_default();
        if !bucket.iter().any(|(a, _)| a.is(ask)) {
            bucket.push((OwnedAsk::of(ask), decision.clone()));
        }
    }

    /// How many decisions are kept (for tests).
    #[cfg(test)]
    fn kept_decisions(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .map(|(_, k)| {
                k.decisions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }
}

fn principal_entities(caller: &Caller<'_>) -> Result<PrincipalEntities, String> {
    let principal =
        uid("User", &format!("{}\n{}", caller.issuer, caller.subject)).ok_or("principal id")?;
    let groups = strings(caller.claims.get("groups"));
    let mut roles = strings(caller.claims.get("roles"));
    roles.extend(strings(
        caller
            .claims
            .get("realm_access")
            .and_then(|r| r.get("roles")),
    ));
    let actors = actor_chain(caller.claims)?;
    let mut parents = Vec::new();
    let mut entities = Vec::new();
    for (kind, names) in [("Group", &groups), ("Role", &roles)] {
        for n in names {
            let id = uid(kind, n).ok_or("group id")?;
            if !parents.contains(&id) {
                parents.push(id);
            }
        }
    }
    let attrs = [
        ("sub", caller.subject),
        ("iss", caller.issuer),
        ("client", caller.client.unwrap_or_default()),
        ("tenant", caller.tenant.unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), RestrictedExpression::new_string(v.to_owned())))
    .chain([
        (
            "scopes".to_owned(),
            RestrictedExpression::new_set(
                caller
                    .scopes
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            ),
        ),
        (
            "actors".to_owned(),
            RestrictedExpression::new_set(
                actors
                    .iter()
                    .map(|a| RestrictedExpression::new_string(a.clone())),
            ),
        ),
        (
            "delegation_depth".to_owned(),
            RestrictedExpression::new_long(i64::try_from(actors.len()).unwrap_or(i64::MAX)),
        ),
    ]);
    let tags = caller
        .claims
        .iter()
        .filter(|(_, v)| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)))
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(render(v))));
    entities.push(
        Entity::new_with_tags(principal.clone(), attrs, parents, tags)
            .map_err(|e| e.to_string())?,
    );
    Ok((principal, entities))
}

/// The longest delegation chain a token may carry; a longer one is refused (never truncated,
/// which would hide an actor from the policies).
pub const MAX_DELEGATION_DEPTH: usize = 8;

/// The actors of a token's `act` claim (RFC 8693 §4.1), the current actor first: each one's
/// `sub` (or `client_id`). A chain that is malformed or too deep cannot be put to the policies.
pub fn actor_chain(claims: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut next = claims.get("act");
    while let Some(act) = next {
        let obj = act.as_object().ok_or("act claim is not an object")?;
        let who = obj
            .get("sub")
            .or_else(|| obj.get("client_id"))
            .and_then(Value::as_str)
            .ok_or("an actor without sub")?;
        out.push(who.to_owned());
        if out.len() > MAX_DELEGATION_DEPTH {
            return Err(format!(
                "delegation chain longer than {MAX_DELEGATION_DEPTH}"
            ));
        }
        next = obj.get("act");
    }
    Ok(out)
}

/// Where the policies come from, and the policies in force: reloaded when the file changes,
/// replaced only by a set that compiles and validates.
pub struct Engine {
    current: RwLock<Arc<Policies>>,
    file: Option<PathBuf>,
    rules: Vec<ScopeRule>,
    /// The content last tried (loaded or refused), so a refused edit is reported once.
    last_seen: std::sync::Mutex<Option<Vec<u8>>>,
}

impl Engine {
    /// Loads `file` (if any) with the scope rules; fails when they do not compile.
    pub fn load(file: Option<&Path>, rules: Vec<ScopeRule>) -> Result<Self, PolicyError> {
        let (policies, content) = match file {
            Some(path) => {
                let content = std::fs::read(path).map_err(|e| PolicyError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                (Self::compile_file(path, &content, &rules)?, Some(content))
            }
            None => (Policies::compile(None, "built-in default", &rules)?, None),
        };
        Ok(Self {
            current: RwLock::new(Arc::new(policies)),
            file: file.map(Path::to_path_buf),
            rules,
            last_seen: std::sync::Mutex::new(content),
        })
    }

    fn compile_file(
        path: &Path,
        content: &[u8],
        rules: &[ScopeRule],
    ) -> Result<Policies, PolicyError> {
        let origin = path.display().to_string();
        let text = std::str::from_utf8(content).map_err(|_| PolicyError::Parse {
            origin: origin.clone(),
            message: "not UTF-8".into(),
        })?;
        Policies::compile(Some(text), &origin, rules)
    }

    /// The policies in force.
    pub fn current(&self) -> Arc<Policies> {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the file; replaces the policies when it changed and the new ones validate.
    /// `Ok(true)` when replaced, `Ok(false)` when unchanged, `Err` when the edit was refused
    /// (the old policies stay in force).
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let content = std::fs::read(path).map_err(|e| PolicyError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        {
            let mut seen = self
                .last_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.as_deref() == Some(content.as_slice()) {
                return Ok(false);
            }
            *seen = Some(content.clone());
        }
        let policies = Self::compile_file(path, &content, &self.rules)?;
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cur = Arc::new(policies);
        Ok(true)
    }

    /// Checks the file every `every` and reloads it when it changed, logging the outcome.
    pub fn watch(
        self: &Arc<Self>,
        every: std::time::Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.file.as_ref()?;
        let engine = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                match engine.reload() {
                    Ok(true) => {
                        let p = engine.current();
                        tracing::info!(file = p.origin(), policies = p.len(), "policies reloaded");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "policy change refused; the previous policies stay in force");
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests;
