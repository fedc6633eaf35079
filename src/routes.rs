//! Path normalization and route matching for access decisions.
//!
//! Which rule applies to a request is decided on the *path only* — the caller
//! passes `uri.path()`, never the query or the fragment (the fragment is never
//! sent by browsers; the query is never a path). The path is first normalized by
//! [`normalize`], which refuses every form an upstream could read differently
//! from the gateway (encoded separators, dot segments, control characters,
//! malformed or double encodings), then matched against an ordered
//! [`RouteTable`] of anchored, segment-wise [`PathPattern`]s.
//!
//! This closes the classes of oauth2-proxy advisories around skip-auth routes:
//! regexes matched against the query string (`/admin?x=/public/a`), widened by
//! `#`/`%23`, and path confusion with `..`, `//`, `%2F`, `;` and case.

use http::Method;

/// Why a request path is refused before any matching (the gateway answers 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F`, `%5C`, `%3B` (encoded `/`, `\`, `;`) or a raw backslash.
    #[error("the request path contains an encoded separator (%2F, %5C, %3B) or a backslash")]
    EncodedSlash,
    /// A `.` or `..` segment, raw or percent-encoded, with or without `;params`.
    #[error("the request path contains a '.' or '..' segment")]
    DotSegment,
    /// A control character, raw or percent-encoded (`%00`, `%0A`, `%09`, `%7F`, U+0080–U+009F).
    #[error("the request path contains a control character")]
    ControlCharacter,
    /// A `%` not followed by two hex digits, a double encoding (`%252F`), invalid
    /// UTF-8 after decoding, or a raw `?`/`#` (a query or fragment passed as path).
    #[error("the request path is not validly encoded")]
    InvalidEncoding,
    /// The path does not start with `/` (`*`, an absolute URI, a relative path).
    #[error("the request path does not start with '/'")]
    NotAbsolute,
}

/// The path used for matching.
///
/// The caller passes `uri.path()` — never the query or fragment. A raw `?` or
/// `#` in the input is refused ([`PathError::InvalidEncoding`]) so that passing
/// `path_and_query()` by mistake fails loudly; encoded ones (`%3F`, `%23`) are
/// ordinary characters of a segment.
///
/// The result is percent-decoded once, `//`-runs are collapsed, `;params` are
/// removed from every segment (`/admin;jsessionid=1/x` → `/admin/x`, as servlet
/// containers do), and a trailing slash is kept as is (`/a/` stays `/a/`).
///
/// Refused:
/// - an encoded `/`, `\` or `;` (`%2F`, `%2f`, `%5C`, `%5c`, `%3B`, `%3b`) anywhere
///   in the path, including inside `;params`, and a raw backslash;
/// - any `.` or `..` segment, raw or after decoding (`%2e%2e`), also when it
///   carries parameters (`/..;/admin`);
/// - control characters, raw or after decoding (`%00`, `%0a`, `%09`, `%7f`, C1);
/// - a malformed escape (`%zz`, `%4`), a double encoding (a decoded `%` followed by
///   two hex digits, e.g. from `%252e`), invalid UTF-8 after decoding (`%C3%28`);
/// - a path not starting with `/`.
///
/// Browsers never send these, so refusing them costs legitimate users nothing,
/// and the upstream cannot interpret the path differently from the gateway.
///
/// Cost: one allocation of at most `raw_path.len()` bytes, linear time.
pub fn normalize(raw_path: &str) -> Result<String, PathError> {
    let Some(rest) = raw_path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    // Decoding and dropping only ever shrink the path.
    let mut out: Vec<u8> = Vec::with_capacity(raw_path.len());
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        let (name, params) = match segment.find(';') {
            Some(i) => (&segment[..i], Some(&segment[i + 1..])),
            None => (segment, None),
        };
        // The parameters are dropped, but an upstream that keeps them must not
        // be able to read a separator, a control character or a different
        // encoding into them either: validate, then discard.
        if let Some(params) = params {
            let mark = out.len();
            decode_into(params.as_bytes(), &mut out)?;
            check_decoded(&out[mark..])?;
            out.truncate(mark);
        }
        if name.is_empty() {
            // `//` runs collapse; an empty last segment is the trailing slash
            // (or the root itself).
            if is_last {
                out.push(b'/');
            }
            continue;
        }
        out.push(b'/');
        let start = out.len();
        decode_into(name.as_bytes(), &mut out)?;
        let decoded = &out[start..];
        if decoded == b"." || decoded == b".." {
            return Err(PathError::DotSegment);
        }
        check_decoded(decoded)?;
    }
    String::from_utf8(out).map_err(|_| PathError::InvalidEncoding)
}

/// Percent-decodes `raw` (one segment, or its parameters) onto `out`.
fn decode_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < raw.len() {
        let byte = match raw[i] {
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex_value);
                let lo = raw.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::InvalidEncoding);
                };
                i += 3;
                match (hi << 4) | lo {
                    b'/' | b'\\' | b';' => return Err(PathError::EncodedSlash),
                    decoded => decoded,
                }
            }
            b'\\' => return Err(PathError::EncodedSlash),
            b'?' | b'#' => return Err(PathError::InvalidEncoding),
            raw_byte => {
                i += 1;
                raw_byte
            }
        };
        if byte < 0x20 || byte == 0x7f {
            return Err(PathError::ControlCharacter);
        }
        out.push(byte);
    }
    Ok(())
}

/// Checks one decoded segment: valid UTF-8, no (C1) control character, no
/// escape left that a second decoding would turn into something else.
fn check_decoded(decoded: &[u8]) -> Result<(), PathError> {
    let text = std::str::from_utf8(decoded).map_err(|_| PathError::InvalidEncoding)?;
    if text.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    let double_encoded = decoded
        .windows(3)
        .any(|w| w[0] == b'%' && hex_value(w[1]).is_some() && hex_value(w[2]).is_some());
    if double_encoded {
        return Err(PathError::InvalidEncoding);
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One segment of a [`PathPattern`] (`**` is kept apart, as the pattern's tail).
#[derive(Debug, Clone)]
enum Segment {
    /// Matches exactly this text (empty: the trailing slash of `/a/`, or the root `/`).
    Literal(Box<str>),
    /// `*` inside a segment: any characters (none included) except `/`.
    Glob(Box<str>),
    /// `*` as a whole segment: exactly one non-empty segment.
    Any,
}

impl Segment {
    fn matches(&self, segment: &str, case_insensitive: bool) -> bool {
        match self {
            Segment::Literal(text) if case_insensitive => text.eq_ignore_ascii_case(segment),
            Segment::Literal(text) => **text == *segment,
            Segment::Glob(glob) => {
                glob_match(glob.as_bytes(), segment.as_bytes(), case_insensitive)
            }
            Segment::Any => !segment.is_empty(),
        }
    }
}

/// Byte-wise glob where `*` matches any run of bytes (the text is one segment,
/// so never a `/`). Iterative with single backtracking point: O(pattern × text)
/// worst case, no allocation.
fn glob_match(pattern: &[u8], text: &[u8], case_insensitive: bool) -> bool {
    let same = |a: u8, b: u8| {
        if case_insensitive {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0, 0);
    // Position after the last `*` seen, and where in the text it started matching.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                backtrack = Some((p, t));
            }
            Some(&c) if same(c, text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((after_star, start)) => {
                    // Let the last `*` swallow one more byte.
                    p = after_star;
                    t = start + 1;
                    backtrack = Some((after_star, start + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A path pattern, anchored at both ends, matched segment by segment against a
/// path from [`normalize`]:
///
/// - `/exact/path` — that path only (a trailing slash is significant: `/a/` is
///   not `/a`; write `/a/**` to cover both);
/// - `/api/audit/*` — `*` as a whole segment: exactly one non-empty segment;
/// - `/api/ab*`, `/assets/*.css` — `*` inside a segment: any characters except
///   `/` (so `/api/ab`, `/api/abc`, not `/api/ab/x`);
/// - `/admin/**` — `**` as the LAST segment: zero or more further segments
///   (`/admin`, `/admin/`, `/admin/a/b`, not `/administrator`); `/**` is everything.
///
/// Rejected at parse time: empty patterns, patterns not starting with `/`, `**`
/// anywhere but as the whole last segment, and anything a normalized path can
/// never contain — `?`, `#`, `%`, `;`, `\`, whitespace, control characters,
/// empty segments (`//`) and `.`/`..` segments — since such a rule would
/// silently never match.
#[derive(Debug, Clone)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
    /// The pattern ended in `/**`.
    any_tail: bool,
}

impl PathPattern {
    /// Parses a pattern; the error is a message for the configuration error
    /// (it does not repeat the pattern).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("the path pattern is empty".into());
        }
        let Some(body) = pattern.strip_prefix('/') else {
            return Err("a path pattern must start with '/'".into());
        };
        if let Some(c) = pattern.chars().find(|c| {
            matches!(c, '?' | '#' | '%' | ';' | '\\') || c.is_whitespace() || c.is_control()
        }) {
            let why = match c {
                '?' | '#' => "patterns match the path only, never a query or fragment",
                '%' => "patterns match the decoded path: write the character itself",
                ';' => "';parameters' are removed from paths before matching",
                '\\' => "paths with a backslash are refused before matching",
                _ => "whitespace and control characters are not allowed",
            };
            return Err(format!("{c:?} is not allowed in a path pattern ({why})"));
        }
        let parts: Vec<&str> = body.split('/').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        let mut any_tail = false;
        for (i, part) in parts.into_iter().enumerate() {
            match part {
                "**" if i == last => any_tail = true,
                "**" => {
                    return Err("'**' is only allowed as the last segment (\"/prefix/**\")".into())
                }
                _ if part.contains("**") => {
                    return Err("'**' must be a whole segment; use '*' inside a segment".into())
                }
                "" if i != last => {
                    return Err(
                        "empty segment ('//'): paths are matched with '//' collapsed".into(),
                    )
                }
                "." | ".." => {
                    return Err("'.' and '..' segments never match: such paths are refused".into())
                }
                "*" => segments.push(Segment::Any),
                _ if part.contains('*') => segments.push(Segment::Glob(part.into())),
                _ => segments.push(Segment::Literal(part.into())),
            }
        }
        Ok(PathPattern {
            source: pattern.to_owned(),
            segments,
            any_tail,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// `path` is a normalized path (from [`normalize`]). Case-sensitive unless
    /// `case_insensitive` (ASCII case folding only). Never allocates.
    pub fn matches(&self, path: &str, case_insensitive: bool) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match parts.next() {
                Some(part) if segment.matches(part, case_insensitive) => {}
                _ => return false,
            }
        }
        self.any_tail || parts.next().is_none()
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// Which methods a route applies to: any, or a set.
///
/// Matching is exact: a route listing `GET` does not apply to `HEAD`; list both
/// when both are meant.
#[derive(Debug, Clone)]
pub enum Methods {
    Any,
    Only(Vec<Method>),
}

impl Methods {
    /// An empty list or `["*"]` is [`Methods::Any`]. Names are case-insensitive
    /// (`get` is `GET`), trimmed, must be HTTP tokens, and are deduplicated.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        if list.is_empty() {
            return Ok(Methods::Any);
        }
        if list.iter().any(|m| m.trim() == "*") {
            return if list.len() == 1 {
                Ok(Methods::Any)
            } else {
                Err("'*' (every method) cannot be combined with other methods".into())
            };
        }
        let mut methods: Vec<Method> = Vec::with_capacity(list.len());
        for name in list {
            let name = name.trim();
            if name.is_empty() {
                return Err("empty method name".into());
            }
            if !name.bytes().all(is_token_byte) {
                return Err(format!("{name:?} is not an HTTP method name"));
            }
            let method = Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("{name:?} is not an HTTP method name"))?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        Ok(Methods::Only(methods))
    }

    pub fn contains(&self, method: &Method) -> bool {
        match self {
            Methods::Any => true,
            Methods::Only(methods) => methods.contains(method),
        }
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One route: methods + pattern + what it means. The meaning type is generic so
/// the access module can attach its own action type without this module knowing it.
#[derive(Debug, Clone)]
pub struct Route<A> {
    pub methods: Methods,
    pub pattern: PathPattern,
    pub action: A,
    pub case_insensitive: bool,
}

impl<A> Route<A> {
    /// Whether this route applies to `method` on `normalized_path`.
    pub fn matches(&self, method: &Method, normalized_path: &str) -> bool {
        self.methods.contains(method)
            && self.pattern.matches(normalized_path, self.case_insensitive)
    }
}

/// Ordered routes; the first whose methods and pattern match wins.
#[derive(Debug, Clone)]
pub struct RouteTable<A> {
    routes: Vec<Route<A>>,
}

impl<A> RouteTable<A> {
    pub fn new(routes: Vec<Route<A>>) -> Self {
        RouteTable { routes }
    }

    /// The first route matching `method` and `normalized_path` (from [`normalize`]).
    pub fn first_match(&self, method: &Method, normalized_path: &str) -> Option<&Route<A>> {
        self.routes
            .iter()
            .find(|r| r.matches(method, normalized_path))
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The routes in matching order.
    pub fn routes(&self) -> &[Route<A>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> String {
        normalize(raw).unwrap_or_else(|e| panic!("{raw:?} refused: {e}"))
    }

    fn pat(p: &str) -> PathPattern {
        PathPattern::parse(p).unwrap_or_else(|e| panic!("{p:?} rejected: {e}"))
    }

    /// Does `raw` (as received) match `pattern`? A refused path matches nothing.
    fn request_matches(pattern: &str, raw: &str) -> bool {
        normalize(raw).is_ok_and(|p| pat(pattern).matches(&p, false))
    }

    fn methods(list: &[&str]) -> Result<Methods, String> {
        Methods::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    // ---- normalize: accepted forms ----

    #[test]
    fn normalize_leaves_plain_paths_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/b/c",
            "/a/",
            "/api/login-options",
            "/x.css",
            "/a...b",
            "/...",
            "/.well-known/x",
        ] {
            assert_eq!(norm(p), p);
        }
    }

    #[test]
    fn normalize_collapses_slash_runs() {
        assert_eq!(norm("//a///b"), "/a/b");
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("///"), "/");
        assert_eq!(norm("/a//"), "/a/");
    }

    #[test]
    fn normalize_keeps_a_trailing_slash() {
        assert_eq!(norm("/admin/"), "/admin/");
        assert_eq!(norm("/admin"), "/admin");
    }

    #[test]
    fn normalize_removes_params_from_every_segment() {
        assert_eq!(norm("/a;x=1/b;y"), "/a/b");
        assert_eq!(norm("/admin;jsessionid=1/x"), "/admin/x");
        assert_eq!(norm("/a/b;"), "/a/b");
        assert_eq!(norm("/a;x;y=2/b"), "/a/b");
    }

    #[test]
    fn normalize_param_only_segments_collapse_like_empty_ones() {
        assert_eq!(norm("/;x/admin"), "/admin");
        assert_eq!(norm("/a/;x"), "/a/");
        assert_eq!(norm("/;jsessionid=1"), "/");
    }

    #[test]
    fn normalize_percent_decodes_once() {
        assert_eq!(norm("/caf%C3%A9"), "/café");
        assert_eq!(norm("/a%20b"), "/a b");
        assert_eq!(norm("/%41%62c"), "/Abc");
        assert_eq!(norm("/a%2ejs"), "/a.js");
        // `%25` is a literal `%`, not decoded again.
        assert_eq!(norm("/100%25"), "/100%");
        assert_eq!(norm("/50%25off"), "/50%off");
    }

    #[test]
    fn normalize_keeps_encoded_query_and_fragment_characters_as_segment_text() {
        assert_eq!(norm("/admin%23x"), "/admin#x");
        assert_eq!(norm("/a%3Fb"), "/a?b");
    }

    // ---- normalize: refused forms ----

    #[test]
    fn normalize_refuses_encoded_slash_and_backslash_in_any_case() {
        for p in [
            "/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/a\\b", "/\\", "/%2F",
        ] {
            assert_eq!(normalize(p), Err(PathError::EncodedSlash), "{p}");
        }
    }

    #[test]
    fn normalize_refuses_encoded_semicolon() {
        assert_eq!(normalize("/admin%3Bx/y"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/admin%3b"), Err(PathError::EncodedSlash));
    }

    #[test]
    fn normalize_refuses_dot_segments_raw_encoded_or_with_params() {
        for p in [
            "/a/../b",
            "/./a",
            "/..",
            "/.",
            "/a/.",
            "/a/..",
            "/a/../",
            "/a/%2e%2e/b",
            "/a/.%2E/b",
            "/a/%2E/b",
            "/%2e",
            "/..;/admin",
            "/public/..;x=1/admin",
            "/.;x/a",
            "/%2e%2e;/a",
        ] {
            assert_eq!(normalize(p), Err(PathError::DotSegment), "{p}");
        }
    }

    #[test]
    fn normalize_refuses_control_characters_raw_or_encoded() {
        for p in [
            "/a%00", "/a%0A", "/a%0a", "/a%09b", "/%0d", "/%7F", "/a%C2%85", "/a\tb", "/a\u{0}",
        ] {
            assert_eq!(normalize(p), Err(PathError::ControlCharacter), "{p}");
        }
    }

    #[test]
    fn normalize_refuses_invalid_utf8_after_decoding() {
        for p in ["/%C3%28", "/%FF", "/a%C3", "/%80"] {
            assert_eq!(normalize(p), Err(PathError::InvalidEncoding), "{p}");
        }
    }

    #[test]
    fn normalize_refuses_malformed_escapes() {
        for p in ["/a%", "/a%4", "/a%zz", "/a%G0", "/%%41"] {
            assert_eq!(normalize(p), Err(PathError::InvalidEncoding), "{p}");
        }
    }

    #[test]
    fn normalize_refuses_double_encoding() {
        // One decoding gives `%2e%2e` / `%2F`; an upstream decoding twice would see `..` / `/`.
        for p in ["/a/%252e%252e/b", "/a%252Fb", "/%2541"] {
            assert_eq!(normalize(p), Err(PathError::InvalidEncoding), "{p}");
        }
    }

    #[test]
    fn normalize_refuses_raw_query_or_fragment_in_its_input() {
        // The caller passes `uri.path()`; a raw `?`/`#` means it passed more.
        assert_eq!(
            normalize("/admin?x=/public/a"),
            Err(PathError::InvalidEncoding)
        );
        assert_eq!(normalize("/admin#/public"), Err(PathError::InvalidEncoding));
    }

    #[test]
    fn normalize_refuses_non_absolute_paths() {
        for p in ["", "*", "a/b", "admin", "https://x/admin", "%2Fadmin"] {
            assert_eq!(normalize(p), Err(PathError::NotAbsolute), "{p:?}");
        }
    }

    #[test]
    fn normalize_validates_params_before_dropping_them() {
        assert_eq!(normalize("/a;x=%2F/b"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a;x=%00/b"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/a;x=%zz/b"), Err(PathError::InvalidEncoding));
        assert_eq!(normalize("/a;x=%C3%28"), Err(PathError::InvalidEncoding));
        assert_eq!(normalize("/a;x=\\"), Err(PathError::EncodedSlash));
    }

    #[test]
    fn normalize_output_is_a_fixed_point_for_typical_paths() {
        for p in ["//a///b/", "/a;x=1/b;y", "/caf%C3%A9/x", "/;x/admin"] {
            let once = norm(p);
            assert_eq!(norm(&once), once, "{p}");
        }
    }

    #[test]
    fn path_errors_have_messages_for_the_400_page() {
        for e in [
            PathError::EncodedSlash,
            PathError::DotSegment,
            PathError::ControlCharacter,
            PathError::InvalidEncoding,
            PathError::NotAbsolute,
        ] {
            assert!(e.to_string().starts_with("the request path"), "{e}");
        }
    }

    // ---- patterns ----

    #[test]
    fn exact_pattern_matches_that_path_only() {
        let p = pat("/exact/path");
        assert!(p.matches("/exact/path", false));
        assert!(!p.matches("/exact/path/", false));
        assert!(!p.matches("/exact", false));
        assert!(!p.matches("/exact/paths", false));
        assert!(!p.matches("/exact/pat", false));
        assert!(!p.matches("exact/path", false));
        assert_eq!(p.as_str(), "/exact/path");
    }

    #[test]
    fn root_pattern_matches_only_the_root() {
        let p = pat("/");
        assert!(p.matches("/", false));
        assert!(!p.matches("/a", false));
    }

    #[test]
    fn trailing_slash_in_pattern_is_significant() {
        let p = pat("/a/");
        assert!(p.matches("/a/", false));
        assert!(!p.matches("/a", false));
        assert!(!p.matches("/a/b", false));
    }

    #[test]
    fn patterns_are_anchored_at_both_ends() {
        let p = pat("/api/login");
        assert!(p.matches("/api/login", false));
        assert!(!p.matches("/api/login/x", false));
        assert!(!p.matches("/x/api/login", false));
        assert!(!p.matches("/api/loginx", false));
    }

    #[test]
    fn star_segment_matches_exactly_one_nonempty_segment() {
        let p = pat("/api/audit/*");
        assert!(p.matches("/api/audit/conn", false));
        assert!(p.matches("/api/audit/file", false));
        assert!(!p.matches("/api/audit", false));
        assert!(!p.matches("/api/audit/", false));
        assert!(!p.matches("/api/audit/a/b", false));
        let mid = pat("/a/*/c");
        assert!(mid.matches("/a/b/c", false));
        assert!(!mid.matches("/a/b/x/c", false));
        assert!(!mid.matches("/a/c", false));
    }

    #[test]
    fn in_segment_glob_never_crosses_a_slash() {
        let p = pat("/api/ab*");
        assert!(p.matches("/api/ab", false));
        assert!(p.matches("/api/abc", false));
        assert!(p.matches("/api/ab-x", false));
        assert!(!p.matches("/api/ab/x", false));
        assert!(!p.matches("/api/a", false));
        assert!(!p.matches("/api/xab", false));
    }

    #[test]
    fn suffix_and_multi_star_globs() {
        let css = pat("/assets/*.css");
        assert!(css.matches("/assets/app.css", false));
        assert!(css.matches("/assets/.css", false));
        assert!(css.matches("/assets/a.b.css", false));
        assert!(!css.matches("/assets/app.css.map", false));
        assert!(!css.matches("/assets/app.js", false));
        assert!(!css.matches("/assets/x/app.css", false));
        let multi = pat("/f/a*b*c");
        assert!(multi.matches("/f/abc", false));
        assert!(multi.matches("/f/aXXbYYc", false));
        assert!(multi.matches("/f/abcbc", false));
        assert!(!multi.matches("/f/acb", false));
        assert!(!multi.matches("/f/abcd", false));
    }

    #[test]
    fn glob_backtracking_handles_repeated_prefixes() {
        assert!(glob_match(b"*aab", b"aaaab", false));
        assert!(glob_match(b"a*a*a*b", b"aaaaaaab", false));
        assert!(!glob_match(b"a*a*a*b", b"aaaaaaa", false));
        assert!(glob_match(b"*", b"", false));
        assert!(glob_match(b"**x", b"x", false));
    }

    #[test]
    fn double_star_tail_matches_zero_or_more_segments() {
        let p = pat("/admin/**");
        assert!(p.matches("/admin", false));
        assert!(p.matches("/admin/", false));
        assert!(p.matches("/admin/x", false));
        assert!(p.matches("/admin/x/y", false));
        assert!(!p.matches("/administrator", false));
        assert!(!p.matches("/admi", false));
        assert!(!p.matches("/", false));
        assert!(!p.matches("/x/admin", false));
    }

    #[test]
    fn double_star_alone_matches_everything() {
        let p = pat("/**");
        for path in ["/", "/a", "/a/", "/a/b/c"] {
            assert!(p.matches(path, false), "{path}");
        }
    }

    #[test]
    fn case_sensitivity_is_chosen_per_match() {
        let p = pat("/admin/**");
        assert!(!p.matches("/ADMIN/x", false));
        assert!(p.matches("/ADMIN/x", true));
        assert!(p.matches("/Admin", true));
        let glob = pat("/assets/*.CSS");
        assert!(!glob.matches("/assets/a.css", false));
        assert!(glob.matches("/assets/a.css", true));
        // Only ASCII folds.
        assert!(!pat("/café").matches("/CAFÉ", true));
        assert!(pat("/café").matches("/CAFé", true));
    }

    #[test]
    fn invalid_patterns_are_rejected_with_a_message() {
        for bad in [
            "",
            "admin",
            "*",
            "/admin/**/x",
            "/**/x",
            "/a**",
            "/a/**b",
            "/a?b",
            "/a#b",
            "/a%2Fb",
            "/a b",
            "/a\tb",
            "/a;x",
            "/a\\b",
            "/a//b",
            "/a/../b",
            "/./a",
            "/a/..",
        ] {
            let err = PathPattern::parse(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad:?}");
        }
        assert!(PathPattern::parse("/a/**/b").is_err_and(|e| e.contains("last segment")));
        assert!(PathPattern::parse("/a?x").is_err_and(|e| e.contains("query")));
        assert!(PathPattern::parse("x").is_err_and(|e| e.contains("start with '/'")));
    }

    #[test]
    fn default_rustdesk_style_patterns_parse() {
        for p in [
            "/api/login",
            "/api/oidc/auth-query",
            "/api/audit/**",
            "/api/ab*",
            "/ws/id",
            "/",
        ] {
            assert_eq!(pat(p).as_str(), p);
            assert_eq!(pat(p).to_string(), p);
        }
    }

    // ---- the advisory classes ----

    #[test]
    fn advisory_query_string_never_reaches_matching() {
        // `/admin?x=/public/a`: the caller passes only `uri.path()` = "/admin".
        let uri: http::Uri = "/admin?x=/public/a".parse().expect("uri");
        let path = norm(uri.path());
        assert_eq!(path, "/admin");
        assert!(!pat("/public/**").matches(&path, false));
        assert!(!pat("/public/**").matches(&path, true));
    }

    #[test]
    fn advisory_fragment_never_reaches_matching() {
        // The fragment is never sent; and passed as path by mistake, it is refused.
        let uri: http::Uri = "/admin".parse().expect("uri");
        assert!(!request_matches("/public/**", uri.path()));
        assert!(!request_matches("/public/**", "/admin#/public"));
    }

    #[test]
    fn advisory_encoded_hash_is_just_a_character() {
        assert_eq!(normalize("/public%23/../admin"), Err(PathError::DotSegment));
        let path = norm("/admin%23x");
        assert_eq!(path, "/admin#x");
        assert!(!pat("/admin").matches(&path, false));
        assert!(!pat("/admin").matches(&path, true));
        assert!(!pat("/public/**").matches(&path, false));
        assert!(!request_matches("/public/**", "/public%23/../admin"));
    }

    #[test]
    fn advisory_dot_dot_traversal_out_of_a_public_prefix_is_refused() {
        assert_eq!(normalize("/public/../admin"), Err(PathError::DotSegment));
        assert_eq!(
            normalize("/public/%2e%2e/admin"),
            Err(PathError::DotSegment)
        );
        assert_eq!(
            normalize("/public/%2E%2e/admin"),
            Err(PathError::DotSegment)
        );
        assert_eq!(normalize("/public/..;/admin"), Err(PathError::DotSegment));
        assert_eq!(
            normalize("/public/%252e%252e/admin"),
            Err(PathError::InvalidEncoding)
        );
    }

    #[test]
    fn advisory_encoded_slash_traversal_is_refused() {
        assert_eq!(
            normalize("/public%2F..%2Fadmin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            normalize("/public%2f..%2fadmin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            normalize("/public%5C..%5Cadmin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            normalize("/public\\..\\admin"),
            Err(PathError::EncodedSlash)
        );
    }

    #[test]
    fn advisory_double_slash_matches_like_an_upstream_that_collapses() {
        let path = norm("//public/x");
        assert_eq!(path, "/public/x");
        assert!(pat("/public/**").matches(&path, false));
        // And the other way round: `//admin` cannot dodge an admin rule.
        assert!(request_matches("/admin/**", "//admin//x"));
    }

    #[test]
    fn advisory_params_cannot_dodge_a_stricter_rule() {
        assert!(request_matches("/admin/**", "/admin;jsessionid=1/x"));
        assert!(request_matches("/admin/**", "/admin;/x"));
        assert!(request_matches("/admin", "/admin;x"));
        assert!(!request_matches("/admin/**", "/admin%3Bx/y"));
        assert_eq!(normalize("/admin%3Bx/y"), Err(PathError::EncodedSlash));
    }

    #[test]
    fn advisory_case_cannot_dodge_a_case_insensitive_rule() {
        let path = norm("/ADMIN/x");
        assert!(pat("/admin/**").matches(&path, true));
        assert!(!pat("/admin/**").matches(&path, false));
        let encoded = norm("/%41dmin/x");
        assert!(pat("/admin/**").matches(&encoded, true));
    }

    #[test]
    fn advisory_public_prefix_does_not_match_lookalike_segments() {
        assert!(!request_matches("/public/**", "/publicity"));
        assert!(!request_matches("/public/**", "/public.evil"));
        assert!(!request_matches("/public/**", "/x/public/a"));
    }

    // ---- methods ----

    #[test]
    fn methods_parse_is_case_insensitive() {
        let m = methods(&["get", "Post"]).expect("valid");
        assert!(m.contains(&Method::GET));
        assert!(m.contains(&Method::POST));
        assert!(!m.contains(&Method::PUT));
    }

    #[test]
    fn methods_parse_rejects_non_tokens() {
        for bad in ["GE T", "", " ", "GET,POST", "G\"T", "GÉT", "a/b"] {
            assert!(methods(&[bad]).is_err(), "{bad:?}");
        }
        assert!(methods(&["GE T"]).is_err_and(|e| e.contains("GE T")));
    }

    #[test]
    fn methods_empty_or_star_is_any() {
        assert!(matches!(methods(&[]), Ok(Methods::Any)));
        assert!(matches!(methods(&["*"]), Ok(Methods::Any)));
        assert!(methods(&["*", "GET"]).is_err());
        assert!(Methods::Any.contains(&Method::DELETE));
    }

    #[test]
    fn methods_accept_extension_tokens_and_deduplicate() {
        let Ok(Methods::Only(list)) = methods(&["propfind", "GET", "get", " HEAD "]) else {
            panic!("expected a list");
        };
        assert_eq!(list.len(), 3);
        assert!(list.contains(&Method::from_bytes(b"PROPFIND").expect("token")));
        assert!(list.contains(&Method::HEAD));
    }

    #[test]
    fn methods_match_exactly_get_does_not_imply_head() {
        let m = methods(&["GET"]).expect("valid");
        assert!(!m.contains(&Method::HEAD));
    }

    // ---- route table ----

    fn route(
        methods_list: &[&str],
        pattern: &str,
        action: &'static str,
        ci: bool,
    ) -> Route<&'static str> {
        Route {
            methods: methods(methods_list).expect("methods"),
            pattern: pat(pattern),
            action,
            case_insensitive: ci,
        }
    }

    #[test]
    fn route_table_first_match_wins() {
        let table = RouteTable::new(vec![
            route(&[], "/admin/health", "public", false),
            route(&[], "/admin/**", "deny", true),
            route(&[], "/**", "signin", false),
        ]);
        let action = |m: Method, p: &str| table.first_match(&m, &norm(p)).map(|r| r.action);
        assert_eq!(action(Method::GET, "/admin/health"), Some("public"));
        assert_eq!(action(Method::GET, "/admin/users"), Some("deny"));
        assert_eq!(action(Method::GET, "/ADMIN/health"), Some("deny"));
        assert_eq!(action(Method::GET, "/other"), Some("signin"));
        assert_eq!(table.len(), 3);
        assert!(!table.is_empty());
        assert_eq!(table.routes()[0].pattern.as_str(), "/admin/health");
    }

    #[test]
    fn route_table_filters_on_method() {
        let table = RouteTable::new(vec![
            route(&["GET"], "/api/items", "read", false),
            route(&["post", "PUT"], "/api/items", "write", false),
        ]);
        assert_eq!(
            table
                .first_match(&Method::GET, "/api/items")
                .map(|r| r.action),
            Some("read")
        );
        assert_eq!(
            table
                .first_match(&Method::POST, "/api/items")
                .map(|r| r.action),
            Some("write")
        );
        assert_eq!(
            table
                .first_match(&Method::PUT, "/api/items")
                .map(|r| r.action),
            Some("write")
        );
        assert!(table.first_match(&Method::DELETE, "/api/items").is_none());
        assert!(table.first_match(&Method::HEAD, "/api/items").is_none());
    }

    #[test]
    fn route_table_without_match_or_routes_returns_none() {
        let table = RouteTable::new(vec![route(&[], "/a", "x", false)]);
        assert!(table.first_match(&Method::GET, "/b").is_none());
        let empty: RouteTable<()> = RouteTable::new(Vec::new());
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert!(empty.first_match(&Method::GET, "/").is_none());
    }

    #[test]
    fn route_table_skip_auth_route_is_not_widened_by_the_query() {
        let table = RouteTable::new(vec![route(&[], "/public/**", "public", false)]);
        let uri: http::Uri = "/admin?next=/public/a#/public".parse().expect("uri");
        let path = norm(uri.path());
        assert!(table.first_match(&Method::GET, &path).is_none());
    }
}
