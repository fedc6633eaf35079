//! Who gets in, and what passes without a browser login.
//!
//! - [`Rules`]: the `[access]` lists (tenants, email domains, users, groups,
//!   app roles), and the stricter `allow` of a route. Every non-empty list must
//!   be satisfied; within a list any entry will do.
//! - [`AccessPolicy`]: the ordered routes — the RustDesk preset first, then
//!   `[[routes]]` — matched on the normalized path, deciding per request whether
//!   it is public, needs sign-in (with which rules), or is denied.

use std::sync::Arc;

use http::{Method, StatusCode};

use crate::config::{
    AccessConfig, RouteAction, Settings, UpstreamId, RUSTDESK_ID_UPSTREAM, RUSTDESK_RELAY_UPSTREAM,
};
use crate::identity::Identity;
use crate::pages::escape_html;
use crate::routes::{Methods, PathPattern, Route, RouteTable};

/// Why a signed-in user was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Tenant,
    EmailDomain,
    User,
    Groups,
    /// Groups are required but Entra sent an overage marker instead of the list.
    GroupOverage,
    Roles,
    Route,
    /// Only an address Entra does not vouch for (an `email` without
    /// `xms_edov: true`, a guest's address) would have matched.
    UnverifiedAddress,
}

impl Denial {
    /// What the user is told (and the log says).
    pub fn explain(&self) -> &'static str {
        match self {
            Denial::Tenant => "Your organisation (tenant) is not allowed to use this console.",
            Denial::EmailDomain => "Your account's domain is not allowed to use this console.",
            Denial::User => "Your account is not on the list of users allowed to use this console.",
            Denial::Groups => "You are not a member of a group that is allowed to use this console.",
            Denial::GroupOverage => "You are a member of too many groups for Microsoft to list them in the token, and they could not be read from Microsoft Graph, so group membership cannot be checked. Ask the administrator to grant the app Microsoft Graph's User.Read permission with admin consent, or to use app roles instead of groups.",
            Denial::Roles => "You do not have an app role that is allowed to use this console.",
            Denial::Route => "This part of the console is not available through the gateway.",
            Denial::UnverifiedAddress => "Your account's email address is not one Microsoft vouches for (its domain's owner has not verified it, or it belongs to another organisation), so it cannot let you in. Ask the administrator to allow your account by its object ID instead.",
        }
    }

    /// A stable name of the reason (JSON answers, logs).
    pub fn code(&self) -> &'static str {
        match self {
            Denial::Tenant => "tenant",
            Denial::EmailDomain => "email_domain",
            Denial::User => "user",
            Denial::Groups => "groups",
            Denial::GroupOverage => "group_overage",
            Denial::Roles => "roles",
            Denial::Route => "route",
            Denial::UnverifiedAddress => "unverified_address",
        }
    }
}

/// A set of access requirements.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    tenants: Vec<String>,
    email_domains: Vec<String>,
    users: Vec<String>,
    groups: Vec<String>,
    roles: Vec<String>,
}

impl Rules {
    pub fn from_config(config: &AccessConfig) -> Self {
        let lower = |list: &[String]| list.iter().map(|s| s.trim().to_ascii_lowercase()).collect();
        Rules {
            tenants: lower(&config.tenants),
            email_domains: lower(&config.email_domains),
            users: lower(&config.users),
            groups: config.groups.iter().map(|g| g.trim().to_string()).collect(),
            roles: config.roles.iter().map(|r| r.trim().to_string()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.email_domains.is_empty()
            && self.users.is_empty()
            && self.groups.is_empty()
            && self.roles.is_empty()
    }

    pub fn check(&self, identity: &Identity) -> Result<(), Denial> {
        if !self.tenants.is_empty() {
            let tid = identity.tid.as_deref().map(str::to_ascii_lowercase);
            if !tid.is_some_and(|t| self.tenants.contains(&t)) {
                return Err(Denial::Tenant);
            }
        }
        if !self.email_domains.is_empty() {
            let allowed = |address: &str| {
                email_domain(address)
                    .is_some_and(|d| self.email_domains.contains(&d.to_ascii_lowercase()))
            };
            if !vouched_addresses(identity).any(allowed) {
                return Err(if unvouched_addresses(identity).any(allowed) {
                    Denial::UnverifiedAddress
                } else {
                    Denial::EmailDomain
                });
            }
        }
        if !self.users.is_empty() {
            // An entry with an `@` is an address, read only where Entra vouches
            // for it; any other entry is an object id, compared whole with `oid`.
            let listed = |name: &str| {
                let name = name.to_ascii_lowercase();
                self.users.iter().any(|u| u.contains('@') && *u == name)
            };
            let by_oid = identity.oid.as_deref().is_some_and(|oid| {
                self.users
                    .iter()
                    .any(|u| !u.contains('@') && u.eq_ignore_ascii_case(oid))
            });
            if !by_oid && !vouched_addresses(identity).any(listed) {
                return Err(if unvouched_addresses(identity).any(listed) {
                    Denial::UnverifiedAddress
                } else {
                    Denial::User
                });
            }
        }
        if !self.groups.is_empty() && !identity.groups.iter().any(|g| self.groups.contains(g)) {
            // Fail closed on overage: the list we would need is not in the token.
            return Err(if identity.groups_overage {
                Denial::GroupOverage
            } else {
                Denial::Groups
            });
        }
        if !self.roles.is_empty() && !identity.roles.iter().any(|r| self.roles.contains(r)) {
            return Err(Denial::Roles);
        }
        Ok(())
    }
}

/// The addresses Entra vouches for, which address rules read: the UPN (`upn`,
/// else `preferred_username`) of a member of the token's own tenant — a UPN's
/// domain is one that tenant verified — and `email` only with `xms_edov: true`.
/// `email` without it can be set to anything by an admin of the user's tenant
/// (the "nOAuth" class); a guest's `preferred_username` is their address at home.
pub fn vouched_addresses(identity: &Identity) -> impl Iterator<Item = &str> {
    let upn = identity
        .upn
        .as_deref()
        .or(identity.preferred_username.as_deref())
        .filter(|_| is_member_of_token_tenant(identity));
    let email = identity
        .email
        .as_deref()
        .filter(|_| identity.email_domain_verified);
    upn.into_iter().chain(email)
}

/// The addresses in the token that [`vouched_addresses`] leaves out.
fn unvouched_addresses(identity: &Identity) -> impl Iterator<Item = &str> {
    let vouched: Vec<&str> = vouched_addresses(identity).collect();
    [
        identity.upn.as_deref(),
        identity.preferred_username.as_deref(),
        identity.email.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(move |address| !vouched.contains(address))
}

/// Entra names another identity provider in `idp` when the user is not a member
/// of the token's tenant (a guest from another tenant or a Microsoft account);
/// for members it is absent or the tenant itself.
fn is_member_of_token_tenant(identity: &Identity) -> bool {
    let Some(idp) = identity.idp.as_deref() else {
        return true;
    };
    let idp = idp.trim_end_matches('/');
    idp == identity.issuer.trim_end_matches('/')
        || identity
            .tid
            .as_deref()
            .is_some_and(|tid| idp == format!("https://sts.windows.net/{tid}"))
}

/// The domain of a well-formed address with exactly one `@`, a non-empty local
/// part and a plausible domain. `a@evil.com@corp.com` has none.
pub fn email_domain(address: &str) -> Option<&str> {
    let (local, domain) = address.split_once('@')?;
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    plausible.then_some(domain)
}

/// What a request needs, decided from its method and normalized path.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// Forward without sign-in and without identity. `api_client`: answers the
    /// gateway makes itself are JSON and never 5xx (RustDesk desktop clients).
    Public {
        api_client: bool,
        upstream: UpstreamId,
    },
    /// Sign-in, the [access] rules and, when set, the route's own.
    SignIn {
        extra: Option<Arc<Rules>>,
        upstream: UpstreamId,
    },
    Deny,
}

#[derive(Debug, Clone)]
enum RouteKind {
    Public { api_client: bool },
    SignIn(Option<Arc<Rules>>),
    Deny,
}

/// What a route does and where it forwards to.
#[derive(Debug, Clone)]
struct RouteTarget {
    kind: RouteKind,
    upstream: UpstreamId,
}

/// One line of the route table as `check` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLine {
    pub methods: String,
    pub path: String,
    pub action: &'static str,
    pub upstream: String,
}

pub struct AccessPolicy {
    global: Rules,
    routes: RouteTable<RouteTarget>,
    /// Upstream names by id, for the route table.
    upstream_names: Vec<String>,
}

impl AccessPolicy {
    /// Routes were validated with the configuration; an entry that still fails to
    /// parse here is skipped with an error log rather than widening access.
    pub fn new(settings: &Settings) -> Self {
        let config = &settings.config;
        let mut routes = Vec::new();
        let public_api = |upstream| RouteTarget {
            kind: RouteKind::Public { api_client: true },
            upstream,
        };
        if config.rustdesk.enabled {
            // hbbs and hbbr's WebSockets first: the console does not serve them.
            for (path, name) in [
                ("/ws/id", RUSTDESK_ID_UPSTREAM),
                ("/ws/relay", RUSTDESK_RELAY_UPSTREAM),
            ] {
                if let (Some(upstream), Ok(pattern)) =
                    (settings.upstream_id(name), PathPattern::parse(path))
                {
                    routes.push(Route {
                        methods: Methods::Any,
                        pattern,
                        action: public_api(upstream),
                        case_insensitive: false,
                    });
                }
            }
            let preset = config
                .rustdesk
                .api_paths
                .iter()
                .chain(config.rustdesk.websocket_paths.iter());
            for path in preset {
                if let Ok(pattern) = PathPattern::parse(path) {
                    routes.push(Route {
                        methods: Methods::Any,
                        pattern,
                        action: public_api(0),
                        case_insensitive: false,
                    });
                }
            }
        }
        for route in &config.routes {
            let (Ok(pattern), Ok(methods)) = (
                PathPattern::parse(&route.path),
                Methods::parse(&route.methods),
            ) else {
                tracing::error!(path = %route.path, "route skipped: invalid pattern or methods");
                continue;
            };
            let action = match route.action {
                RouteAction::Public => RouteKind::Public { api_client: false },
                RouteAction::Deny => RouteKind::Deny,
                RouteAction::Authenticated => {
                    let rules = Rules::from_config(&route.allow);
                    RouteKind::SignIn((!rules.is_empty()).then(|| Arc::new(rules)))
                }
            };
            let case_insensitive = route
                .case_insensitive
                .unwrap_or(route.action != RouteAction::Public);
            // Validated with the configuration: a name that does not resolve
            // here cannot happen; the route is skipped rather than misrouted.
            let upstream = match &route.upstream {
                None => 0,
                Some(name) => match settings.upstream_id(name) {
                    Some(id) => id,
                    None => {
                        tracing::error!(path = %route.path, upstream = %name, "route skipped: unknown upstream");
                        continue;
                    }
                },
            };
            routes.push(Route {
                methods,
                pattern,
                action: RouteTarget {
                    kind: action,
                    upstream,
                },
                case_insensitive,
            });
        }
        AccessPolicy {
            global: Rules::from_config(&config.access),
            routes: RouteTable::new(routes),
            upstream_names: settings.upstreams.iter().map(|u| u.name.clone()).collect(),
        }
    }

    pub fn requirement(&self, method: &Method, normalized_path: &str) -> Requirement {
        let Some(target) = self
            .routes
            .first_match(method, normalized_path)
            .map(|r| &r.action)
        else {
            return Requirement::SignIn {
                extra: None,
                upstream: 0,
            };
        };
        let upstream = target.upstream;
        match &target.kind {
            RouteKind::Public { api_client } => Requirement::Public {
                api_client: *api_client,
                upstream,
            },
            RouteKind::SignIn(extra) => Requirement::SignIn {
                extra: extra.clone(),
                upstream,
            },
            RouteKind::Deny => Requirement::Deny,
        }
    }

    /// Whether a route with a method list applies to this path: then method
    /// override headers must not reach the upstream.
    pub fn has_method_rules_for(&self, normalized_path: &str) -> bool {
        self.routes.has_method_rules_for(normalized_path)
    }

    /// The routes in matching order, then the fallback, as `check` prints them.
    pub fn route_table(&self) -> Vec<RouteLine> {
        let name = |id: UpstreamId| self.upstream_names.get(id).cloned().unwrap_or_default();
        let mut lines: Vec<RouteLine> = self
            .routes
            .routes()
            .iter()
            .map(|route| {
                let (action, upstream) = match &route.action.kind {
                    RouteKind::Public { api_client: true } => {
                        ("public (API client)", name(route.action.upstream))
                    }
                    RouteKind::Public { api_client: false } => {
                        ("public", name(route.action.upstream))
                    }
                    RouteKind::SignIn(None) => ("sign-in", name(route.action.upstream)),
                    RouteKind::SignIn(Some(_)) => ("sign-in + allow", name(route.action.upstream)),
                    RouteKind::Deny => ("deny", "-".to_string()),
                };
                RouteLine {
                    methods: route.methods.to_string(),
                    path: route.pattern.to_string(),
                    action,
                    upstream,
                }
            })
            .collect();
        lines.push(RouteLine {
            methods: "*".into(),
            path: "(anything else)".into(),
            action: "sign-in",
            upstream: name(0),
        });
        lines
    }

    /// The [access] rules, then the route's.
    pub fn check(&self, identity: &Identity, extra: Option<&Rules>) -> Result<(), Denial> {
        self.global.check(identity)?;
        match extra {
            Some(rules) => rules.check(identity),
            None => Ok(()),
        }
    }
}

/// The 403 page: who you are signed in as, why, and a way out (sign out) —
/// never a redirect back into a login loop.
pub fn forbidden_page(
    identity: Option<&Identity>,
    denial: &Denial,
    sign_out_url: &str,
    request_id: &str,
) -> String {
    let who = identity
        .map(|i| {
            format!(
                "<p>You are signed in as <strong>{}</strong>.</p>",
                escape_html(&i.user)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>403 Access denied</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem}}p.meta{{color:#777;font-size:.85rem}}a{{color:#0067b8}}</style></head>
<body><h1>Access denied</h1>{who}<p>{why}</p>
<p><a href="{sign_out}">Sign out</a> and sign in with another account, or ask the administrator for access.</p>
<p class="meta">Error {status} &middot; request id {request_id}</p></body></html>
"#,
        why = escape_html(denial.explain()),
        sign_out = escape_html(sign_out_url),
        status = StatusCode::FORBIDDEN.as_u16(),
        request_id = escape_html(request_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        let mut i = Identity::for_tests("alice@corp.example");
        i.tid = Some("TENANT-A".into());
        i.oid = Some("oid-1".into());
        i.groups = vec!["g-users".into()];
        i.roles = vec!["Console.Read".into()];
        i
    }

    fn rules(f: impl FnOnce(&mut AccessConfig)) -> Rules {
        let mut c = AccessConfig::default();
        f(&mut c);
        Rules::from_config(&c)
    }

    #[test]
    fn empty_rules_let_any_signed_in_user_pass() {
        assert_eq!(Rules::default().check(&alice()), Ok(()));
    }

    #[test]
    fn each_list_is_required_and_any_entry_satisfies_it() {
        assert_eq!(
            rules(|c| c.tenants = vec!["tenant-a".into()]).check(&alice()),
            Ok(())
        );
        assert_eq!(
            rules(|c| c.tenants = vec!["other".into()]).check(&alice()),
            Err(Denial::Tenant)
        );
        assert_eq!(
            rules(|c| c.groups = vec!["x".into(), "g-users".into()]).check(&alice()),
            Ok(())
        );
        assert_eq!(
            rules(|c| c.groups = vec!["g-admins".into()]).check(&alice()),
            Err(Denial::Groups)
        );
        assert_eq!(
            rules(|c| c.roles = vec!["Console.Admin".into()]).check(&alice()),
            Err(Denial::Roles)
        );
        assert_eq!(
            rules(|c| c.users = vec!["OID-1".into()]).check(&alice()),
            Ok(())
        );
        assert_eq!(
            rules(|c| c.users = vec!["bob@corp.example".into()]).check(&alice()),
            Err(Denial::User)
        );
        let both = rules(|c| {
            c.groups = vec!["g-users".into()];
            c.roles = vec!["Console.Admin".into()];
        });
        assert_eq!(
            both.check(&alice()),
            Err(Denial::Roles),
            "lists combine with AND"
        );
    }

    #[test]
    fn email_domains_match_exactly_on_a_single_at_address() {
        let allow = rules(|c| c.email_domains = vec!["corp.example".into()]);
        assert_eq!(allow.check(&alice()), Ok(()));
        for address in [
            "a@evil.com@corp.example",
            "a@sub.corp.example",
            "a@corp.example.evil.com",
            "a@evilcorp.example",
            "@corp.example",
            "corp.example",
        ] {
            let mut who = alice();
            who.preferred_username = Some(address.into());
            who.email = None;
            assert_eq!(allow.check(&who), Err(Denial::EmailDomain), "{address}");
        }
        assert_eq!(email_domain("a@evil.com@corp.example"), None);
    }

    #[test]
    fn an_email_without_xms_edov_does_not_satisfy_address_rules() {
        let domain = rules(|c| c.email_domains = vec!["corp.example".into()]);
        let user = rules(|c| c.users = vec!["boss@corp.example".into()]);
        let mut forged = alice();
        forged.preferred_username = Some("mallory@evil.example".into());
        forged.email = Some("boss@corp.example".into());
        assert_eq!(domain.check(&forged), Err(Denial::UnverifiedAddress));
        assert_eq!(user.check(&forged), Err(Denial::UnverifiedAddress));
        forged.email_domain_verified = true;
        assert_eq!(domain.check(&forged), Ok(()));
        assert_eq!(user.check(&forged), Ok(()));
    }

    #[test]
    fn a_guests_address_does_not_satisfy_address_rules() {
        let domain = rules(|c| c.email_domains = vec!["corp.example".into()]);
        let mut guest = alice();
        guest.issuer = "https://login.microsoftonline.com/tenant-a/v2.0".into();
        guest.idp = Some("https://sts.windows.net/home-tenant/".into());
        assert_eq!(domain.check(&guest), Err(Denial::UnverifiedAddress));
        guest.idp = Some("https://sts.windows.net/TENANT-A/".into());
        assert_eq!(
            domain.check(&guest),
            Ok(()),
            "idp naming the token's tenant"
        );
        guest.idp = Some(guest.issuer.clone());
        assert_eq!(domain.check(&guest), Ok(()));
        guest.idp = Some("live.com".into());
        guest.upn = Some("alice@corp.example".into());
        assert_eq!(domain.check(&guest), Err(Denial::UnverifiedAddress));
    }

    #[test]
    fn users_match_object_ids_whole() {
        let listed = rules(|c| c.users = vec!["oid-1".into()]);
        let mut other = alice();
        other.oid = Some("oid-10".into());
        assert_eq!(listed.check(&other), Err(Denial::User));
        other.oid = None;
        other.preferred_username = Some("oid-1".into());
        assert_eq!(
            listed.check(&other),
            Err(Denial::User),
            "a UPN spelled like a listed object id is not that object"
        );
    }

    #[test]
    fn group_overage_fails_closed_with_its_own_reason() {
        let mut who = alice();
        who.groups.clear();
        who.groups_overage = true;
        assert_eq!(
            rules(|c| c.groups = vec!["g-users".into()]).check(&who),
            Err(Denial::GroupOverage)
        );
        assert_eq!(
            Rules::default().check(&who),
            Ok(()),
            "no group rule: overage does not matter"
        );
    }
}
