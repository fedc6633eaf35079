//! Microsoft's clouds. An app registration lives in exactly one of them, and
//! each has its own sign-in (login) hosts and Microsoft Graph hosts: a token
//! from one cloud is never valid in another, and Graph must be called in the
//! cloud that issued the sign-in. `oidc.cloud` names the cloud; the issuer's
//! host and the Graph URL are checked against it.
//!
//! Hosts: Microsoft's national-cloud list (learn.microsoft.com/graph/deployments,
//! entra-docs authentication-national-cloud.md) and MSAL's trusted-authority
//! list; see `research/entra-production.md` §2 and §6.

use serde::Deserialize;

/// `oidc.cloud`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Microsoft's global cloud (and Entra External ID on `*.ciamlogin.com`).
    #[default]
    Global,
    /// US Government (GCC High and DoD).
    Usgov,
    /// Microsoft Azure operated by 21Vianet (China).
    China,
}

/// The domain of Entra External ID issuers: `https://<tenant-id>.ciamlogin.com/<tenant-id>/v2.0`.
const EXTERNAL_ID_DOMAIN: &str = "ciamlogin.com";

impl Cloud {
    pub const ALL: [Cloud; 3] = [Cloud::Global, Cloud::Usgov, Cloud::China];

    /// The value of `oidc.cloud` naming this cloud.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::Usgov => "usgov",
            Cloud::China => "china",
        }
    }

    /// The hosts that sign users in (issue tokens) in this cloud; the first is
    /// the one Microsoft documents for new registrations.
    pub fn login_hosts(self) -> &'static [&'static str] {
        match self {
            Cloud::Global => &[
                "login.microsoftonline.com",
                "login.microsoft.com",
                "login.windows.net",
                "sts.windows.net",
            ],
            Cloud::Usgov => &[
                "login.microsoftonline.us",
                "login.usgovcloudapi.net",
                "login-us.microsoftonline.com",
            ],
            // 21Vianet moved to login.partner.microsoftonline.cn; Graph's
            // documentation still names login.chinacloudapi.cn.
            Cloud::China => &["login.partner.microsoftonline.cn", "login.chinacloudapi.cn"],
        }
    }

    /// The Microsoft Graph hosts of this cloud; the first is the default.
    /// US Government has two: GCC High (`graph.microsoft.us`) and DoD.
    pub fn graph_hosts(self) -> &'static [&'static str] {
        match self {
            Cloud::Global => &["graph.microsoft.com"],
            Cloud::Usgov => &["graph.microsoft.us", "dod-graph.microsoft.us"],
            Cloud::China => &["microsoftgraph.chinacloudapi.cn"],
        }
    }

    /// `https://<default Graph host>`: what `oidc.graph_url` defaults to.
    pub fn default_graph_url(self) -> String {
        format!("https://{}", self.graph_hosts()[0])
    }

    /// The cloud a sign-in host belongs to; None for hosts that are not
    /// Microsoft's (a development IdP, a B2C custom domain).
    pub fn of_login_host(host: &str) -> Option<Cloud> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if is_external_id_host(&host) {
            return Some(Cloud::Global);
        }
        Cloud::ALL
            .into_iter()
            .find(|cloud| cloud.login_hosts().contains(&host.as_str()))
    }

    /// Whether `url` may be called as Microsoft Graph in this cloud: https:// on
    /// one of [`Cloud::graph_hosts`], or a loopback host (a development IdP's
    /// Graph). Err says why not, naming the hosts that are allowed.
    pub fn check_graph_url(self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        let loopback = match parsed.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if loopback && matches!(parsed.scheme(), "http" | "https") {
            return Ok(());
        }
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        if parsed.scheme() != "https" {
            return Err(format!("{url:?} is not an https:// URL"));
        }
        if self.graph_hosts().contains(&host.as_str()) {
            return Ok(());
        }
        Err(format!(
            "{host:?} is not a Microsoft Graph host of the {} cloud (oidc.cloud); its Graph hosts are {}",
            self.name(),
            self.graph_hosts().join(", ")
        ))
    }
}

/// `<label>.ciamlogin.com`: an Entra External ID tenant's sign-in host.
fn is_external_id_host(host: &str) -> bool {
    host.strip_suffix(EXTERNAL_ID_DOMAIN)
        .and_then(|rest| rest.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_hosts_name_their_cloud() {
        assert_eq!(
            Cloud::of_login_host("login.microsoftonline.com"),
            Some(Cloud::Global)
        );
        assert_eq!(
            Cloud::of_login_host("LOGIN.microsoftonline.us."),
            Some(Cloud::Usgov)
        );
        assert_eq!(
            Cloud::of_login_host("login.chinacloudapi.cn"),
            Some(Cloud::China)
        );
        assert_eq!(
            Cloud::of_login_host("login.partner.microsoftonline.cn"),
            Some(Cloud::China)
        );
        assert_eq!(
            Cloud::of_login_host("contoso.ciamlogin.com"),
            Some(Cloud::Global)
        );
        for other in [
            "127.0.0.1",
            "ciamlogin.com",
            "a.b.ciamlogin.com",
            "evilciamlogin.com",
            "login.microsoftonline.com.evil.example",
            "contoso.b2clogin.com",
        ] {
            assert_eq!(Cloud::of_login_host(other), None, "{other}");
        }
    }

    #[test]
    fn graph_urls_must_be_the_clouds_own() {
        assert_eq!(
            Cloud::Global.default_graph_url(),
            "https://graph.microsoft.com"
        );
        assert_eq!(
            Cloud::Usgov.default_graph_url(),
            "https://graph.microsoft.us"
        );
        assert_eq!(
            Cloud::China.default_graph_url(),
            "https://microsoftgraph.chinacloudapi.cn"
        );
        assert!(Cloud::Usgov
            .check_graph_url("https://dod-graph.microsoft.us")
            .is_ok());
        assert!(Cloud::Global
            .check_graph_url("http://127.0.0.1:8080/graph")
            .is_ok());
        let e = Cloud::China
            .check_graph_url("https://graph.microsoft.com")
            .unwrap_err();
        assert!(
            e.contains("graph.microsoft.com")
                && e.contains("china")
                && e.contains("microsoftgraph.chinacloudapi.cn"),
            "{e}"
        );
        let e = Cloud::Global
            .check_graph_url("http://graph.microsoft.com")
            .unwrap_err();
        assert!(e.contains("https://"), "{e}");
        let e = Cloud::Global
            .check_graph_url("https://graph.windows.net")
            .unwrap_err();
        assert!(e.contains("graph.windows.net"), "{e}");
    }
}
