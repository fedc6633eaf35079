//! Entra's sign-in errors, read into something people can act on: the OAuth
//! `error`, its AADSTS code, and Microsoft's trace and correlation ids (which
//! Entra's support and sign-in logs are searched by), whether the error came
//! back on the redirect or from the token endpoint; and, per code, what the
//! user can do and what the operator must fix.
//!
//! Microsoft warns that codes and texts change: the page keys on the code when
//! it knows it and falls back to the OAuth `error` otherwise.

use http::StatusCode;

use super::token_endpoint::IdpError;

/// An error answer of Entra, from either path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntraError {
    /// The OAuth `error` (`access_denied`, `invalid_client`, …).
    pub error: String,
    /// The AADSTS number, e.g. 50105.
    pub code: Option<u32>,
    /// Microsoft's text, without the ids and timestamp Entra appends.
    pub description: String,
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
}

impl EntraError {
    /// From the redirect back to the callback: `error`, `error_description`
    /// (ids appended as `Trace ID: …`, `Correlation ID: …`) and `error_uri`
    /// (whose query may carry `trace_id`, `correlation_id` and `code`).
    pub fn from_redirect(error: &str, description: &str, error_uri: Option<&str>) -> Self {
        let uri_params: Vec<(String, String)> = error_uri
            .and_then(|uri| url::Url::parse(uri).ok())
            .map(|url| url.query_pairs().into_owned().collect())
            .unwrap_or_default();
        let uri_param = |name: &str| {
            uri_params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        EntraError {
            error: error.to_string(),
            code: aadsts_code(description).or_else(|| uri_param("code").and_then(number)),
            description: without_ids(description),
            trace_id: labelled_id(description, "Trace ID:")
                .or_else(|| uri_param("trace_id").and_then(id)),
            correlation_id: labelled_id(description, "Correlation ID:")
                .or_else(|| uri_param("correlation_id").and_then(id)),
        }
    }

    /// From the token endpoint's JSON error (`error_codes`, `trace_id`,
    /// `correlation_id`, or the same inside the description).
    pub fn from_token_endpoint(answer: &IdpError) -> Self {
        let description = &answer.error_description;
        EntraError {
            error: if answer.error.is_empty() {
                "invalid_grant".into()
            } else {
                answer.error.clone()
            },
            code: answer
                .error_codes
                .first()
                .and_then(|c| u32::try_from(*c).ok())
                .or_else(|| aadsts_code(description)),
            description: without_ids(description),
            trace_id: answer
                .trace_id
                .as_deref()
                .and_then(id)
                .or_else(|| labelled_id(description, "Trace ID:")),
            correlation_id: answer
                .correlation_id
                .as_deref()
                .and_then(id)
                .or_else(|| labelled_id(description, "Correlation ID:")),
        }
    }

    /// `AADSTS50105`, when the code is known.
    pub fn aadsts(&self) -> Option<String> {
        self.code.map(|c| format!("AADSTS{c}"))
    }

    /// What the page says and which status it answers with.
    pub fn advice(&self) -> Advice {
        self.code
            .and_then(advice_for_code)
            .unwrap_or_else(|| advice_for_error(&self.error))
    }
}

/// What a sign-in error page tells each reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    pub status: StatusCode,
    pub title: &'static str,
    /// What the user can do.
    pub user: &'static str,
    /// What the operator must fix.
    pub operator: &'static str,
}

const MISCONFIGURED: &str = "Sign-in is misconfigured";
const TELL_ADMIN: &str = "This console's sign-in is set up incorrectly; there is nothing you can \
     do yourself. Tell the administrator, with the ids below.";
const CREDENTIAL_DOWN: &str = "The console cannot sign anyone in right now. Tell the \
     administrator, with the ids below.";
const SIGN_IN_AGAIN: &str = "This sign-in cannot be finished. Start again from the console; if it \
     keeps happening, tell the administrator with the ids below.";

/// The codes the gateway knows (Entra's reference-error-codes).
fn advice_for_code(code: u32) -> Option<Advice> {
    let advice = |status, title, user, operator| Advice {
        status,
        title,
        user,
        operator,
    };
    Some(match code {
        50011 => advice(
            StatusCode::BAD_REQUEST,
            MISCONFIGURED,
            TELL_ADMIN,
            "The redirect URI the gateway sent is not registered for the app. Register it exactly \
             (scheme, host, port, path) in Azure: App registrations → your app → Authentication → \
             Web → Redirect URIs. Behind a proxy, check server.public_url and server.trusted_proxies.",
        ),
        700016 => advice(
            StatusCode::BAD_GATEWAY,
            MISCONFIGURED,
            TELL_ADMIN,
            "Entra does not know this application in the tenant: check oidc.client_id (the \
             Application (client) ID) and the tenant in oidc.issuer; a multi-tenant app must be \
             consented in the user's tenant.",
        ),
        7000215 => advice(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is temporarily unavailable",
            CREDENTIAL_DOWN,
            "Entra refused the client secret as invalid: put the secret's Value (not its Secret \
             ID) in oidc.client_secret or oidc.client_secret_file — or better, use a certificate \
             (oidc.client_certificate + oidc.client_key).",
        ),
        7000222 => advice(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is temporarily unavailable",
            CREDENTIAL_DOWN,
            "The client secret has expired: create a new one (App registrations → your app → \
             Certificates & secrets) and update oidc.client_secret — or switch to a certificate \
             (oidc.client_certificate + oidc.client_key), whose expiry `oidc-gateway check` warns of.",
        ),
        700027 | 50012 => advice(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is temporarily unavailable",
            CREDENTIAL_DOWN,
            "Entra refused the client assertion: upload the certificate in oidc.client_certificate \
             under Certificates & secrets (compare the thumbprint `oidc-gateway check` prints), or \
             try oidc.client_assertion_alg = \"RS256\".",
        ),
        50105 => advice(
            StatusCode::FORBIDDEN,
            "You don't have access to this app",
            "Your account is not assigned to this console's application. Ask the administrator \
             for access.",
            "The enterprise application has \"Assignment required\" on: assign the user, or a \
             group they are in, under Enterprise applications → your app → Users and groups.",
        ),
        65001 | 90094 => advice(
            StatusCode::FORBIDDEN,
            "Your administrator must approve this app",
            "The application needs a consent you cannot give yourself. Ask the administrator to \
             approve it.",
            "Grant admin consent for the app's permissions (openid, profile, email, \
             offline_access, User.Read): App registrations → your app → API permissions → Grant \
             admin consent.",
        ),
        53003 | 50076 | 50079 => advice(
            StatusCode::FORBIDDEN,
            "Your organisation's policy blocked sign-in",
            "A Conditional Access policy of your organisation blocked this sign-in (device, \
             location or multi-factor requirements). Try from a compliant device or network, or \
             contact your IT help desk with the ids below.",
            "Find the correlation id in Entra's sign-in logs (Monitoring → Sign-in logs → \
             Conditional Access) to see which policy blocked it.",
        ),
        54005 | 70008 | 501481 => advice(
            StatusCode::BAD_REQUEST,
            "Please sign in again",
            "This sign-in was already used or has expired (another tab, the back button, or a \
             long pause). Start again from the console.",
            "The authorization code was redeemed twice or too late, or its PKCE verifier did not \
             match: usually a retried callback. Investigate only if it keeps happening.",
        ),
        50196 => advice(
            StatusCode::BAD_REQUEST,
            "Too many sign-in attempts",
            "Sign-in went round in a loop. Close this tab, wait a minute, then open the console \
             again.",
            "Entra detected a sign-in loop: the browser kept coming back to sign in. Check that \
             the session cookie is set and returned (HTTPS, server.public_url, no proxy dropping \
             Set-Cookie) and the gateway's log for the request id.",
        ),
        50020 | 90072 | 16000 => advice(
            StatusCode::FORBIDDEN,
            "This account is not in the organisation",
            "The account you used does not belong to the organisation that runs this console. \
             Sign in with your work account, or ask to be invited as a guest.",
            "Invite the user as a guest into the tenant, or list their tenant in \
             oidc.allowed_tenants with a multi-tenant issuer.",
        ),
        50194 => advice(
            StatusCode::BAD_GATEWAY,
            MISCONFIGURED,
            TELL_ADMIN,
            "The app is single-tenant but oidc.issuer is /common or /organizations: use \
             https://login.microsoftonline.com/<tenant-id>/v2.0.",
        ),
        50058 => advice(
            StatusCode::UNAUTHORIZED,
            "Please sign in again",
            "You are not signed in at Microsoft. Start again from the console.",
            "oidc.prompt = \"none\" needs an existing Microsoft session: leave prompt out, or \
             use select_account.",
        ),
        _ => return None,
    })
}

/// By the OAuth `error` alone (unknown or missing AADSTS code).
fn advice_for_error(error: &str) -> Advice {
    match error {
        "access_denied" => Advice {
            status: StatusCode::FORBIDDEN,
            title: "Sign-in was cancelled or denied",
            user: "The sign-in was cancelled or consent was declined. Try again.",
            operator: "Nothing, unless users cannot consent: then grant admin consent for the \
                       app's permissions.",
        },
        "temporarily_unavailable" | "server_error" => Advice {
            status: StatusCode::BAD_GATEWAY,
            title: "The identity provider had a problem",
            user: "Microsoft's sign-in had a problem. Try again in a moment.",
            operator: "A problem at Microsoft: check https://status.cloud.microsoft and retry.",
        },
        "invalid_client" | "unauthorized_client" => Advice {
            status: StatusCode::SERVICE_UNAVAILABLE,
            title: "Sign-in is temporarily unavailable",
            user: CREDENTIAL_DOWN,
            operator: "Entra refused the gateway's client credential: check oidc.client_id and \
                       the secret, certificate or federated credential configured.",
        },
        "login_required" | "interaction_required" | "consent_required" => Advice {
            status: StatusCode::UNAUTHORIZED,
            title: "Please sign in again",
            user: SIGN_IN_AGAIN,
            operator: "Microsoft needs the user to interact (oidc.prompt = \"none\" cannot \
                       show a page): leave prompt out or use select_account.",
        },
        "invalid_grant" => Advice {
            status: StatusCode::BAD_REQUEST,
            title: "Please sign in again",
            user: SIGN_IN_AGAIN,
            operator: "The authorization code was refused (used, expired or for another \
                       redirect URI). Investigate only if it keeps happening.",
        },
        _ => Advice {
            status: StatusCode::BAD_REQUEST,
            title: "Sign-in failed",
            user: SIGN_IN_AGAIN,
            operator: "Look up the AADSTS code and the correlation id in Entra's sign-in logs.",
        },
    }
}

/// The number after a leading `AADSTS` (Entra starts every description so).
fn aadsts_code(description: &str) -> Option<u32> {
    let rest = &description[description.find("AADSTS")? + "AADSTS".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    number(&digits)
}

fn number(text: &str) -> Option<u32> {
    (!text.is_empty() && text.len() <= 9)
        .then(|| text.parse().ok())
        .flatten()
}

/// The id after `label` in the description (`Trace ID: 0b…`).
fn labelled_id(description: &str, label: &str) -> Option<String> {
    let rest = description[description.find(label)? + label.len()..].trim_start();
    id(rest.split(|c: char| c.is_whitespace()).next()?)
}

/// A GUID-like id (hex and dashes), else nothing: ids are shown and logged.
fn id(text: &str) -> Option<String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then(|| text.to_string())
}

/// The description up to the ids Entra appends (`Trace ID: …`).
fn without_ids(description: &str) -> String {
    let end = ["Trace ID:", "Correlation ID:", "Timestamp:"]
        .iter()
        .filter_map(|label| description.find(label))
        .min()
        .unwrap_or(description.len());
    description[..end].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "0b0c7a2e-5d7c-4a43-9a1e-0c3f6b7d2a00";
    const CORRELATION: &str = "9f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";

    #[test]
    fn redirect_errors_yield_code_text_and_both_ids() {
        let description = format!(
            "AADSTS50105: Your administrator has configured the application to block users.\r\nTrace ID: {TRACE}\r\nCorrelation ID: {CORRELATION}\r\nTimestamp: 2026-11-28 04:00:00Z"
        );
        let error = EntraError::from_redirect(
            "access_denied",
            &description,
            Some("https://login.microsoftonline.com/error?code=50105"),
        );
        assert_eq!(error.code, Some(50105));
        assert_eq!(
            error.description,
            "AADSTS50105: Your administrator has configured the application to block users."
        );
        assert_eq!(error.trace_id.as_deref(), Some(TRACE));
        assert_eq!(error.correlation_id.as_deref(), Some(CORRELATION));
        assert_eq!(error.advice().status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn ids_may_come_from_the_error_uri() {
        let uri = format!(
            "https://login.microsoftonline.com/error?code=53003&trace_id={TRACE}&correlation_id={CORRELATION}"
        );
        let error = EntraError::from_redirect("access_denied", "Blocked.", Some(&uri));
        assert_eq!(error.code, Some(53003));
        assert_eq!(error.trace_id.as_deref(), Some(TRACE));
        assert_eq!(error.correlation_id.as_deref(), Some(CORRELATION));
    }

    #[test]
    fn an_id_that_is_not_an_id_is_dropped() {
        let error = EntraError::from_redirect(
            "access_denied",
            "AADSTS50105: x Trace ID: <script>alert(1)</script>",
            None,
        );
        assert_eq!(error.trace_id, None);
    }

    #[test]
    fn token_endpoint_errors_use_error_codes_and_their_ids() {
        let answer = IdpError {
            error: "invalid_client".into(),
            error_description: "AADSTS7000222: The provided client secret keys for app 'x' are expired. Trace ID: t".into(),
            error_codes: vec![7000222],
            trace_id: Some(TRACE.into()),
            correlation_id: Some(CORRELATION.into()),
        };
        let error = EntraError::from_token_endpoint(&answer);
        assert_eq!(error.aadsts().as_deref(), Some("AADSTS7000222"));
        assert_eq!(error.trace_id.as_deref(), Some(TRACE));
        assert!(error.advice().operator.contains("expired"));
    }

    #[test]
    fn unknown_codes_fall_back_to_the_oauth_error() {
        let error = EntraError::from_redirect("temporarily_unavailable", "AADSTS90999: x", None);
        assert_eq!(error.advice().status, StatusCode::BAD_GATEWAY);
    }
}
