//! Where a user lands after login: a same-origin path only.
//!
//! oauth2-proxy's open-redirect advisories are the test list: `//evil`,
//! `/\evil`, `/%5Cevil`, `/%2F%2Fevil`, encoded whitespace/control characters
//! (`/%09/evil`), and absolute URLs. Anything doubtful becomes "/".

/// The safe return target for `candidate` (a path with optional query).
pub fn sanitize(candidate: &str) -> String {
    if is_safe(candidate) {
        candidate.to_string()
    } else {
        "/".to_string()
    }
}

pub fn is_safe(candidate: &str) -> bool {
    if candidate.len() > 4096 || !candidate.starts_with('/') {
        return false;
    }
    // Browsers treat '\' like '/', and skip tabs/newlines inside URLs.
    if candidate
        .chars()
        .any(|c| c == '\\' || c.is_control() || c.is_whitespace())
    {
        return false;
    }
    // Judge the path as a browser would after percent-decoding, repeatedly
    // (double-encoding tricks), without the query.
    let path = candidate.split(['?', '#']).next().unwrap_or("/");
    let mut decoded = path.to_string();
    for _ in 0..3 {
        let next = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let second = decoded.chars().nth(1);
    !(matches!(second, Some('/') | Some('\\'))
        || decoded.chars().any(|c| c == '\\' || c.is_control())
        || decoded.contains("/\t")
        || decoded.to_ascii_lowercase().contains("://"))
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_paths_pass() {
        for ok in [
            "/",
            "/console/page?x=1&y=%20",
            "/a/b#frag",
            "/api/x?next=//not-a-redirect",
        ] {
            assert!(is_safe(ok), "{ok}");
        }
    }

    #[test]
    fn open_redirect_variants_are_refused() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%5Cevil.example",
            "/%2F%2Fevil.example",
            "/%2f/evil.example",
            "/%252F%252Fevil.example",
            "/%09/evil.example",
            "/\t/evil.example",
            "https://evil.example/",
            "http:evil.example",
            "evil.example",
            "/%0D%0ALocation:%20x",
            "",
            "/https://evil.example",
        ] {
            assert!(!is_safe(bad), "{bad:?} must be refused");
            assert_eq!(sanitize(bad), "/");
        }
    }
}
