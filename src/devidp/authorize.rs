//! `/{tenant}/oauth2/v2.0/authorize`: request validation, the development
//! login form, code issuance, and the answer back to the client (query,
//! fragment or `form_post`).

use std::time::Instant;

use http::{Response, StatusCode};

use super::tokens::Login;
use super::web::{
    append_query, error_page, form_encode, html, page, random_uuid, redirect, Params,
    AUTO_SUBMIT_SCRIPT,
};
use super::{lock, random_token, CodeGrant, Shared};
use crate::pages::escape_html;
use crate::Body;

/// Parameters the login form carries through as hidden fields.
const CARRIED: [&str; 11] = [
    "client_id",
    "response_type",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "prompt",
    "login_hint",
];

/// How the answer travels back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseMode {
    Query,
    Fragment,
    FormPost,
}

/// Where (and how) the answer goes: known once client and redirect URI are valid.
struct ReturnPath {
    redirect_uri: String,
    mode: ResponseMode,
    state: Option<String>,
}

/// A validated authorization request.
struct AuthRequest {
    client_id: String,
    scope: String,
    nonce: Option<String>,
    code_challenge: String,
}

/// Handles GET (and POST) `authorize`. `login_post` is true for a POST, where
/// a `username` field is the development login form's submission.
pub(super) fn authorize(
    shared: &Shared,
    path: &str,
    params: &Params,
    login_post: bool,
) -> Response<Body> {
    let back = match return_path(shared, params) {
        Ok(back) => back,
        Err(page) => return *page,
    };
    if let Some((error, description)) = lock(&shared.knobs).authorize_error.clone() {
        return back.entra_error(&error, &description);
    }
    let request = match validate(params) {
        Ok(request) => request,
        Err((error, description)) => return back.error(error, &description),
    };
    if let Some(user) = shared.options.auto_login.clone() {
        let groups = shared.options.groups.clone();
        return issue_code(shared, &back, &request, user, groups);
    }
    if login_post {
        if let Some(user) = params.get("username") {
            let user = user.trim();
            if user.is_empty() {
                return login_form(shared, path, params, Some("Enter a user name."));
            }
            let mut groups = split_groups(params.get("groups").unwrap_or_default());
            if params.get("many_groups") == Some("1") {
                groups.extend(super::graph::generated_groups(super::OVERAGE_LIMIT + 50));
            }
            return issue_code(shared, &back, &request, user.to_string(), groups);
        }
    }
    if params.get("prompt") == Some("none") {
        return back.error(
            "login_required",
            "AADSTS50058: A silent sign-in request was sent but no user is signed in.",
        );
    }
    login_form(shared, path, params, None)
}

/// Validates client id and redirect URI; failures are HTML pages, as Entra
/// never redirects to an unverified redirect URI.
fn return_path(shared: &Shared, params: &Params) -> Result<ReturnPath, Box<Response<Body>>> {
    let Some(client_id) = params.non_empty("client_id") else {
        return Err(Box::new(error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS900144",
            "The request body must contain the following parameter: 'client_id'.",
            None,
        )));
    };
    if client_id != shared.options.client_id {
        return Err(Box::new(error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS700016",
            "Application with identifier was not found in the directory of the development IdP.",
            Some(client_id),
        )));
    }
    let redirect_uri = params.get("redirect_uri").unwrap_or_default();
    if !redirect_uri_allowed(redirect_uri) {
        return Err(Box::new(error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS50011",
            "The redirect URI specified in the request does not match the redirect URIs \
             configured for the application (the development IdP accepts https://…, \
             http://localhost… and http://127.0.0.1…).",
            Some(redirect_uri),
        )));
    }
    let mode = match params.get("response_mode") {
        None | Some("query") => Ok(ResponseMode::Query),
        Some("fragment") => Ok(ResponseMode::Fragment),
        Some("form_post") => Ok(ResponseMode::FormPost),
        Some(other) => Err(other),
    };
    let back = ReturnPath {
        redirect_uri: redirect_uri.to_string(),
        mode: mode.unwrap_or(ResponseMode::Query),
        state: params.get("state").map(str::to_string),
    };
    match mode {
        Ok(_) => Ok(back),
        Err(other) => Err(Box::new(back.error(
            "invalid_request",
            &format!("The response_mode '{other}' is not supported."),
        ))),
    }
}

/// Entra's redirect URI rule: `https://` anywhere, plain `http://` only to
/// localhost / 127.0.0.1 / [::1]. No fragment, no whitespace or control characters.
pub(super) fn redirect_uri_allowed(uri: &str) -> bool {
    if uri.contains('#') || uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    let host_ok = |rest: &str| !rest.is_empty() && !rest.starts_with(['/', '?', ':', '@']);
    if let Some(rest) = uri.strip_prefix("https://") {
        return host_ok(rest);
    }
    if let Some(rest) = uri.strip_prefix("http://") {
        return ["localhost", "127.0.0.1", "[::1]"].iter().any(|host| {
            rest.strip_prefix(host)
                .is_some_and(|after| after.is_empty() || after.starts_with([':', '/', '?']))
        });
    }
    false
}

/// Checks the rest of the request. Stricter than Entra: only
/// `response_type=code`, and PKCE with S256 is required.
fn validate(params: &Params) -> Result<AuthRequest, (&'static str, String)> {
    let missing = |name: &str| {
        (
            "invalid_request",
            format!(
                "AADSTS900144: The request body must contain the following parameter: '{name}'."
            ),
        )
    };
    let response_type = params
        .non_empty("response_type")
        .ok_or_else(|| missing("response_type"))?;
    if response_type != "code" {
        return Err((
            "unsupported_response_type",
            format!(
                "AADSTS700054: response_type '{response_type}' is not enabled for the application \
                 (the development IdP supports the authorization code flow only)."
            ),
        ));
    }
    let scope = params.non_empty("scope").ok_or_else(|| missing("scope"))?;
    let code_challenge = params.non_empty("code_challenge").ok_or_else(|| {
        (
            "invalid_request",
            "AADSTS9002325: Proof Key for Code Exchange is required (the development IdP \
             requires PKCE with S256 for every client)."
                .to_string(),
        )
    })?;
    if params.get("code_challenge_method") != Some("S256") {
        return Err((
            "invalid_request",
            "code_challenge_method must be S256 (the development IdP refuses \
             'plain' and a missing method)."
                .to_string(),
        ));
    }
    let well_formed = code_challenge.len() == 43
        && code_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err((
            "invalid_request",
            "AADSTS501491: Invalid size of Code_Challenge parameter (an S256 challenge is 43 \
             base64url characters)."
                .to_string(),
        ));
    }
    Ok(AuthRequest {
        client_id: params.get("client_id").unwrap_or_default().to_string(),
        scope: scope.to_string(),
        nonce: params.non_empty("nonce").map(str::to_string),
        code_challenge: code_challenge.to_string(),
    })
}

/// Group ids typed into the login form: separated by commas or whitespace.
fn split_groups(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect()
}

/// Stores a single-use code for `user` and sends it back to the client.
fn issue_code(
    shared: &Shared,
    back: &ReturnPath,
    request: &AuthRequest,
    user: String,
    groups: Vec<String>,
) -> Response<Body> {
    let code = super::web::b64url(random_token::<32>());
    let session_state = random_uuid();
    lock(&shared.sids).insert(user.clone(), session_state.clone());
    let grant = CodeGrant {
        client_id: request.client_id.clone(),
        redirect_uri: back.redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
        nonce: request.nonce.clone(),
        login: Login {
            user,
            groups,
            scope: request.scope.clone(),
            sid: session_state.clone(),
            auth_time: super::tokens::now_secs(),
        },
        issued_at: Instant::now(),
        used: false,
    };
    lock(&shared.grants).insert_code(code.clone(), grant);
    back.deliver(&[("code", &code), ("session_state", &session_state)])
}

impl ReturnPath {
    /// Sends `error` + `error_description` (+ `state`) back to the client.
    fn error(&self, error: &str, description: &str) -> Response<Body> {
        self.deliver(&[("error", error), ("error_description", description)])
    }

    /// Like [`ReturnPath::error`], shaped as Entra sends it: trace and
    /// correlation ids and a timestamp appended to the description, and an
    /// `error_uri` naming the AADSTS code.
    fn entra_error(&self, error: &str, description: &str) -> Response<Body> {
        let code: String = description
            .strip_prefix("AADSTS")
            .unwrap_or_default()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let timestamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace('T', " ");
        let description = format!(
            "{description}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {timestamp}",
            random_uuid(),
            random_uuid()
        );
        let error_uri = format!("https://login.microsoftonline.com/error?code={code}");
        self.deliver(&[
            ("error", error),
            ("error_description", &description),
            ("error_uri", &error_uri),
        ])
    }

    /// Sends `pairs` (+ `state`) back per the response mode.
    fn deliver(&self, pairs: &[(&str, &str)]) -> Response<Body> {
        let mut pairs = pairs.to_vec();
        if let Some(state) = &self.state {
            pairs.push(("state", state));
        }
        match self.mode {
            ResponseMode::Query => {
                redirect(&append_query(&self.redirect_uri, &form_encode(&pairs)))
            }
            ResponseMode::Fragment => {
                redirect(&format!("{}#{}", self.redirect_uri, form_encode(&pairs)))
            }
            ResponseMode::FormPost => html(StatusCode::OK, self.form_post_page(&pairs)),
        }
    }

    /// Entra's `form_post` answer: an auto-submitting form to the redirect URI.
    fn form_post_page(&self, pairs: &[(&str, &str)]) -> String {
        let fields = hidden_fields(pairs.iter().copied());
        let content = format!(
            "<form method=\"post\" name=\"hiddenform\" action=\"{action}\">{fields}\
             <noscript><p>Script is disabled. Click Submit to continue.</p>\
             <button type=\"submit\">Submit</button></noscript></form>\
             <script>{AUTO_SUBMIT_SCRIPT}</script>",
            action = escape_html(&self.redirect_uri),
        );
        page("Working…", &content)
    }
}

fn hidden_fields<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape_html(name),
                escape_html(value)
            )
        })
        .collect()
}

/// The development login form: any user name, groups prefilled from the options.
fn login_form(shared: &Shared, path: &str, params: &Params, error: Option<&str>) -> Response<Body> {
    let carried = params.iter().filter(|(name, _)| CARRIED.contains(name));
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape_html(e)))
        .unwrap_or_default();
    let content = format!(
        r#"{error}<form method="post" action="{action}">{fields}
<label for="username">User name (anything; no password)</label>
<input type="text" id="username" name="username" value="{hint}" autocomplete="username" autofocus required>
<label for="groups">Groups (comma-separated group object ids)</label>
<input type="text" id="groups" name="groups" value="{groups}">
<label><input type="checkbox" name="many_groups" value="1"> Also a member of 250 more groups (over Entra's limit of 200: the token carries no groups claim, the gateway reads them from Microsoft Graph)</label>
<button type="submit">Sign in</button>
</form>
<p>Application <code>{client_id}</code> · tenant <code>{tenant}</code><br>
Returns to <code>{redirect_uri}</code></p>"#,
        action = escape_html(path),
        fields = hidden_fields(carried),
        hint = escape_html(params.get("login_hint").unwrap_or_default()),
        groups = escape_html(&shared.options.groups.join(", ")),
        client_id = escape_html(params.get("client_id").unwrap_or_default()),
        tenant = escape_html(&shared.options.tenant_id),
        redirect_uri = escape_html(params.get("redirect_uri").unwrap_or_default()),
    );
    html(
        StatusCode::OK,
        page("oidc-gateway development sign-in — NOT Microsoft", &content),
    )
}
