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
    /// `%2F`, `%5C`, `%3B`, `%3F`, `%23` (encoded `/`, `\`, `;`, `?`, `#`) or a raw backslash.
    #[error(
        "the request path contains an encoded separator (%2F, %5C, %3B, %3F, %23) or a backslash"
    )]
    EncodedSlash,
    /// An empty segment (`//x`, `/a//b`): Node's `URL`, Python's `urlsplit` and
    /// Java's `URI` read a leading `//x` as a host name, others collapse `//`.
    #[error("the request path contains an empty segment ('//')")]
    EmptySegment,
    /// A segment ending in `.` or a space (`/admin.`, `/admin%20`): Windows and
    /// servers on it read `admin.` as `admin`.
    #[error("the request path has a segment ending in '.' or a space")]
    TrailingDot,
    /// A non-ASCII character that case mapping or NFKC turns into ASCII
    /// (`ſ` → `S`, `K` (Kelvin) → `k`, fullwidth `ａ` → `a`).
    #[error("the request path contains a non-ASCII character that servers may read as ASCII (such as 'ſ' or fullwidth letters)")]
    FoldsToAscii,
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
/// `path_and_query()` by mistake fails loudly.
///
/// The result is percent-decoded once and `;params` are removed from every
/// segment (`/admin;jsessionid=1/x` → `/admin/x`, as servlet containers do); a
/// trailing slash is kept as is (`/a/` stays `/a/`).
///
/// One rule: every form that some common upstream (Node's `URL`, Python's
/// `urlsplit`, Java's `URI`, Werkzeug, servlet containers, IIS) reads
/// differently from the gateway is refused, so that the path the gateway
/// judged is the path the upstream acts on. Refused:
/// - an encoded `/`, `\`, `;`, `?` or `#` (`%2F`, `%5C`, `%3B`, `%3F`, `%23`,
///   either case) anywhere in the path, including inside `;params`, and a raw
///   backslash;
/// - an empty segment (`//x`, `/a//b`; also one holding only `;params`): a
///   leading `//x` is a host name to URL parsers;
/// - any `.` or `..` segment, raw or after decoding (`%2e%2e`), also when it
///   carries parameters (`/..;/admin`), and a segment ending in `.` or a space
///   (`/admin.`, `/admin%20`), which Windows reads without them;
/// - control characters, raw or after decoding (`%00`, `%0a`, `%09`, `%7f`, C1);
/// - a non-ASCII character that Unicode case mapping or NFKC turns into ASCII
///   (`%C5%BF` `ſ` → `S`, `K` Kelvin → `k`, fullwidth letters);
/// - a malformed escape (`%zz`, `%4`), a double encoding (a decoded `%` followed by
///   two hex digits, e.g. from `%252e`), invalid UTF-8 after decoding (`%C3%28`);
/// - a path not starting with `/`.
///
/// Browsers never send these, so refusing them costs legitimate users nothing.
///
/// Cost: one allocation of at most `raw_path.len()` bytes, linear time; the
/// Unicode checks run only for non-ASCII characters.
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
            // Only the last segment may be empty: the trailing slash (or the
            // root itself).
            if !is_last {
                return Err(PathError::EmptySegment);
            }
            out.push(b'/');
            continue;
        }
        out.push(b'/');
        let start = out.len();
        decode_into(name.as_bytes(), &mut out)?;
        let decoded = &out[start..];
        if decoded == b"." || decoded == b".." {
            return Err(PathError::DotSegment);
        }
        if matches!(decoded.last(), Some(b'.' | b' ')) {
            return Err(PathError::TrailingDot);
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
                    b'/' | b'\\' | b';' | b'?' | b'#' => return Err(PathError::EncodedSlash),
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
/// character that folds to ASCII, no escape left that a second decoding would
/// turn into something else.
fn check_decoded(decoded: &[u8]) -> Result<(), PathError> {
    let text = std::str::from_utf8(decoded).map_err(|_| PathError::InvalidEncoding)?;
    if !text.is_ascii() {
        for c in text.chars().filter(|c| !c.is_ascii()) {
            if c.is_control() {
                return Err(PathError::ControlCharacter);
            }
            if folds_to_ascii(c) {
                return Err(PathError::FoldsToAscii);
            }
        }
    }
    let double_encoded = decoded
        .windows(3)
        .any(|w| w[0] == b'%' && hex_value(w[1]).is_some() && hex_value(w[2]).is_some());
    if double_encoded {
        return Err(PathError::InvalidEncoding);
    }
    Ok(())
}

/// Does some server's reading of the non-ASCII `c` contain ASCII: its Unicode
/// upper or lower case (`ſ` → `S`, `K` → `k`, `ı` → `I`, `ﬁ` → `FI`), or its
/// NFKC form (fullwidth `ａ` → `a`, one-dot leader `․` → `.`)?
pub fn folds_to_ascii(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    if c.to_uppercase()
        .chain(c.to_lowercase())
        .any(|f| f.is_ascii())
    {
        return true;
    }
    let mut buf = [0u8; 4];
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    nfkc.normalize(c.encode_utf8(&mut buf))
        .bytes()
        .any(|b| b.is_ascii())
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

    /// The route applies to some methods only.
    pub fn is_restricted(&self) -> bool {
        matches!(self, Methods::Only(_))
    }
}

/// A method that is a standard one in another case (`post`, `dElEtE`). hyper
/// passes it on as an extension method that no `methods` rule names, while
/// Werkzeug and others run it as the standard one: such requests are refused.
pub fn is_case_variant_of_standard_method(method: &Method) -> bool {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let name = method.as_str();
    // Standard methods are exactly these upper-case names: the cheap test first.
    name.bytes().any(|b| b.is_ascii_lowercase())
        && STANDARD.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Headers with which frameworks (Rails, Laravel, Express's method-override,
/// Symfony, ASP.NET) let a `POST` act as another method; removed from requests
/// to paths that have method-specific rules.
pub static METHOD_OVERRIDE_HEADERS: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-http-method-override"),
    http::HeaderName::from_static("x-http-method"),
    http::HeaderName::from_static("x-method-override"),
];

impl std::fmt::Display for Methods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Methods::Any => f.write_str("*"),
            Methods::Only(methods) => {
                let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                f.write_str(&names.join(","))
            }
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
    ///
    /// A case-insensitive route (the default of every stricter-than-public
    /// rule) is matched as lenient upstreams read paths: `/admin/` also as
    /// `/admin` (Werkzeug, Express and most frameworks serve both alike), so a
    /// trailing slash cannot dodge it.
    pub fn matches(&self, method: &Method, normalized_path: &str) -> bool {
        self.methods.contains(method) && self.matches_path(normalized_path)
    }

    /// Whether the pattern applies to `normalized_path`, whatever the method.
    pub fn matches_path(&self, normalized_path: &str) -> bool {
        if self.pattern.matches(normalized_path, self.case_insensitive) {
            return true;
        }
        self.case_insensitive
            && normalized_path.len() > 1
            && normalized_path
                .strip_suffix('/')
                .is_some_and(|without| self.pattern.matches(without, true))
    }
}

/// Ordered routes; the first whose methods and pattern match wins.
#[derive(Debug, Clone)]
pub struct RouteTable<A> {
    routes: Vec<Route<A>>,
    /// Some route has a method list (most tables have none: no per-request scan).
    any_method_rules: bool,
}

impl<A> RouteTable<A> {
    pub fn new(routes: Vec<Route<A>>) -> Self {
        let any_method_rules = routes.iter().any(|r| r.methods.is_restricted());
        RouteTable {
            routes,
            any_method_rules,
        }
    }

    /// The first route matching `method` and `normalized_path` (from [`normalize`]).
    pub fn first_match(&self, method: &Method, normalized_path: &str) -> Option<&Route<A>> {
        self.routes
            .iter()
            .find(|r| r.matches(method, normalized_path))
    }

    /// Whether some route with a method list applies to this path (then the
    /// method a request names is what decides, and must not be overridden).
    pub fn has_method_rules_for(&self, normalized_path: &str) -> bool {
        self.any_method_rules
            && self
                .routes
                .iter()
                .any(|r| r.methods.is_restricted() && r.matches_path(normalized_path))
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
            "/.well-known/x",
        ] {
            assert_eq!(norm(p), p);
        }
    }

    #[test]
    fn normalize_refuses_empty_segments() {
        for p in ["//a///b", "//", "///", "/a//", "//static/secret", "/a//b"] {
            assert_eq!(normalize(p), Err(PathError::EmptySegment), "{p}");
        }
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
    fn normalize_param_only_segments_are_empty_ones() {
        assert_eq!(normalize("/;x/admin"), Err(PathError::EmptySegment));
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
    fn normalize_refuses_encoded_query_and_fragment_characters() {
        // An upstream that decodes before it routes reads `/admin%23x` as `/admin`.
        for p in ["/admin%23x", "/a%3Fb", "/a%3fb", "/admin%23", "/a;x=%3F"] {
            assert_eq!(normalize(p), Err(PathError::EncodedSlash), "{p}");
        }
    }

    #[test]
    fn normalize_refuses_segments_ending_in_a_dot_or_space() {
        for p in [
            "/admin.",
            "/admin./x",
            "/...",
            "/a/b%2e",
            "/admin%20",
            "/a%20/b",
        ] {
            assert_eq!(normalize(p), Err(PathError::TrailingDot), "{p}");
        }
        assert_eq!(norm("/a.b/c d"), "/a.b/c d");
    }

    #[test]
    fn normalize_refuses_characters_that_fold_to_ascii() {
        for p in [
            "/%C5%BFecret",   // ſ: upper case S
            "/%E2%84%AAey",   // K (Kelvin): lower case k
            "/adm%C4%B1n",    // ı: upper case I
            "/%C4%B0",        // İ: lower case i + combining dot
            "/%EF%AC%81le",   // ﬁ ligature: FI
            "/%EF%BD%81dmin", // fullwidth a (NFKC)
            "/a%E2%80%A4b",   // one dot leader (NFKC '.')
            "/ſecret",
        ] {
            assert_eq!(normalize(p), Err(PathError::FoldsToAscii), "{p}");
        }
        // Other letters stay welcome.
        for p in ["/caf%C3%A9", "/%C3%BCber", "/%E6%97%A5%E6%9C%AC", "/%CE%A9"] {
            assert!(normalize(p).is_ok(), "{p}");
        }
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
        for p in ["/a/b/", "/a;x=1/b;y", "/caf%C3%A9/x", "/a/;x"] {
            let once = norm(p);
            assert_eq!(norm(&once), once, "{p}");
        }
    }

    #[test]
    fn path_errors_have_messages_for_the_400_page() {
        for e in [
            PathError::EncodedSlash,
            PathError::EmptySegment,
            PathError::TrailingDot,
            PathError::FoldsToAscii,
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
    fn advisory_encoded_hash_is_refused() {
        assert_eq!(
            normalize("/public%23/../admin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(normalize("/admin%23x"), Err(PathError::EncodedSlash));
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
    fn advisory_double_slash_is_refused() {
        // Node's `new URL("//static/secret", base)` reads `static` as a host
        // and `/secret` as the path: no reading of `//` is safe to judge.
        assert_eq!(normalize("//public/x"), Err(PathError::EmptySegment));
        assert_eq!(normalize("//admin//x"), Err(PathError::EmptySegment));
    }

    #[test]
    fn a_trailing_slash_cannot_dodge_a_stricter_rule() {
        let route = |pattern: &str, case_insensitive: bool| Route {
            methods: Methods::Any,
            pattern: pat(pattern),
            action: (),
            case_insensitive,
        };
        // Stricter rules (case-insensitive) also hold for `/admin/`.
        assert!(route("/admin", true).matches(&Method::GET, "/admin/"));
        assert!(route("/admin", true).matches(&Method::GET, "/ADMIN/"));
        assert!(route("/a/*", true).matches(&Method::GET, "/a/b/"));
        // Public ones (case-sensitive) stay exact: less is public, never more.
        assert!(!route("/admin", false).matches(&Method::GET, "/admin/"));
        assert!(!route("/admin", true).matches(&Method::GET, "/administrator"));
    }

    #[test]
    fn method_case_variants_of_standard_methods_are_recognised() {
        for m in ["post", "dElEtE", "Get", "patch"] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(is_case_variant_of_standard_method(&method), "{m}");
        }
        for m in ["POST", "DELETE", "PROPFIND", "purge", "MKCOL"] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!is_case_variant_of_standard_method(&method), "{m}");
        }
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

/// Property tests: whatever [`normalize`] admits, the upstream reads as the
/// gateway judged it — under WHATWG URL parsing (Node's `URL`, the `url`
/// crate), under a servlet-style reading (`;params` dropped, `//` collapsed)
/// and under a lenient one (Unicode case folding, NFKC, trailing `/`).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of request paths: plain text, the words of the rules below, and
    /// every confusing form (dots, separators raw and encoded, parameters,
    /// spaces, characters that fold to ASCII, broken escapes).
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/",
            "/",
            "/",
            "a",
            "A",
            "admin",
            "ADMIN",
            "secret",
            "static",
            "x.js",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2F",
            "%2f",
            "%5C",
            "\\",
            ";",
            ";x=1",
            "%3B",
            "%3F",
            "%23",
            "%25",
            "%252e",
            "%20",
            "%41",
            "%C5%BF",
            "ſ",
            "%E2%84%AA",
            "%EF%BD%81",
            "%C4%B1",
            "%C3%A9",
            "%00",
            "%0a",
            "%zz",
            "%",
            "~",
            "-",
        ])
    }

    fn raw_path() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..10).prop_map(|p| format!("/{}", p.concat()))
    }

    fn decode(text: &str) -> String {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    }

    /// A servlet container: decode, drop `;params`, collapse `//`, resolve dots.
    fn servlet_reading(raw: &str) -> String {
        let names: Vec<&str> = raw
            .split('/')
            .skip(1)
            .map(|s| s.split(';').next().unwrap_or(""))
            .collect();
        let trailing = names.len() > 1 && names.last().is_some_and(|n| n.is_empty());
        let mut segments: Vec<String> = Vec::new();
        for name in names {
            let name = decode(name);
            match name.as_str() {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                _ => segments.push(name),
            }
        }
        format!("/{}{}", segments.join("/"), if trailing { "/" } else { "" })
    }

    /// The most lenient reading: the servlet one, then NFKC, Unicode case
    /// folding (upper, then lower: `ſ` → `S` → `s`), trailing dots, spaces and
    /// slash ignored (Windows, non-strict routers).
    fn lenient_reading(raw: &str) -> String {
        let servlet = servlet_reading(raw);
        let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc()
            .normalize(&servlet)
            .to_uppercase()
            .to_lowercase();
        let segments: Vec<&str> = nfkc
            .split('/')
            .map(|s| s.trim_end_matches(['.', ' ']))
            .filter(|s| !s.is_empty())
            .collect();
        format!("/{}", segments.join("/"))
    }

    /// The rules of the properties: stricter rules (case-insensitive, as every
    /// non-public rule is by default).
    fn strict(pattern: &str) -> Route<()> {
        Route {
            methods: Methods::Any,
            pattern: PathPattern::parse(pattern).unwrap(),
            action: (),
            case_insensitive: true,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// An admitted path stays a path on the same host under WHATWG parsing
        /// (`//static/x` would make `static` the host), and that parser's
        /// decoded path, `;params` dropped, is the gateway's normalized path.
        #[test]
        fn admitted_paths_read_the_same_under_whatwg_url(raw in raw_path()) {
            if let Ok(normalized) = normalize(&raw) {
                let url = url::Url::parse(&format!("http://gw.invalid{raw}")).unwrap();
                prop_assert_eq!(url.host_str(), Some("gw.invalid"), "{}", raw);
                let joined = url::Url::parse("http://gw.invalid/base/").unwrap().join(&raw).unwrap();
                prop_assert_eq!(joined.host_str(), Some("gw.invalid"), "{}", raw);
                let whatwg: Vec<String> = url
                    .path()
                    .split('/')
                    .map(|s| decode(s.split(';').next().unwrap_or("")))
                    .collect();
                prop_assert_eq!(whatwg.join("/"), normalized.clone(), "{}", raw);
                prop_assert_eq!(servlet_reading(&raw), normalized, "{}", raw);
            }
        }

        /// Whenever some upstream's reading of an admitted path lands on a
        /// protected resource, the gateway's rule for it matched the path.
        #[test]
        fn no_reading_of_an_admitted_path_dodges_a_stricter_rule(raw in raw_path()) {
            if let Ok(normalized) = normalize(&raw) {
                let readings = [servlet_reading(&raw), lenient_reading(&raw)];
                for reading in &readings {
                    let key = reading.to_lowercase();
                    let key = key.trim_end_matches('/');
                    if key == "/admin" || key.starts_with("/admin/") {
                        prop_assert!(strict("/admin/**").matches(&Method::GET, &normalized), "{} read as {}", raw, reading);
                    }
                    if key == "/secret" {
                        prop_assert!(strict("/secret").matches(&Method::GET, &normalized), "{} read as {}", raw, reading);
                    }
                    if key == "/static/secret" {
                        prop_assert!(strict("/static/secret").matches(&Method::GET, &normalized), "{} read as {}", raw, reading);
                    }
                }
            }
        }

        /// No character of an admitted path changes into ASCII under Unicode
        /// case mapping or NFKC: ASCII-only rule matching sees what they see.
        #[test]
        fn admitted_paths_have_no_character_that_folds_to_ascii(raw in raw_path()) {
            if let Ok(normalized) = normalize(&raw) {
                let ascii = |s: &str| s.chars().filter(char::is_ascii).collect::<String>().to_ascii_lowercase();
                prop_assert_eq!(ascii(&normalized.to_uppercase().to_lowercase()), ascii(&normalized));
                let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc().normalize(&normalized).into_owned();
                prop_assert_eq!(ascii(&nfkc), ascii(&normalized));
            }
        }
    }
}
