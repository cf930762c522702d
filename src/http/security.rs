//! Browser-facing protections: the cross-origin check on cookie-authenticated writes (CSRF), the security
//! headers of every response, and whether the console is reached over HTTPS (for the session cookie).
//!
//! Why an origin check rather than CSRF tokens: the session cookie is `SameSite=Lax`, which stops most
//! cross-site writes in current browsers, but not a `<form enctype="text/plain">` from a sibling subdomain
//! (same-site), nor older browsers, nor a login forced on the victim (`POST /api/session` with the attacker's
//! token). Every browser sends `Origin` (or at least `Sec-Fetch-Site`) on such a write, so comparing it with
//! the request's own origin refuses them with no state and no change to the console.

use super::extract::{SECURE_SESSION_COOKIE, SESSION_COOKIE};
use super::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Where the console may be embedded when nothing is configured: nowhere.
pub const DEFAULT_FRAME_ANCESTORS: &str = "'none'";

/// `Referrer-Policy` of every response. Not `no-referrer`: under that policy Chromium sends `Origin: null`
/// on the console's own same-origin POSTs, which the origin check must refuse.
const REFERRER_POLICY: &str = "strict-origin-when-cross-origin";

/// A configuration value that is not what it must be.
#[derive(Debug, thiserror::Error)]
pub enum SecurityConfigError {
    /// Not `scheme://host[:port]` with scheme http or https.
    #[error("{0} is not an origin: write scheme://host[:port] with scheme http or https and nothing after it")]
    NotAnOrigin(String),
    /// Empty, or characters a header cannot carry or that would end the CSP directive.
    #[error(
        "{0} is not a frame-ancestors source list (space-separated sources such as 'self' https://intranet.example)"
    )]
    FrameAncestors(String),
}

/// What the edge needs to know about how browsers reach it.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Other origins whose pages may write with the session cookie (normalized, see [`parse_origin`]).
    pub allowed_origins: Vec<String>,
    /// The CSP `frame-ancestors` source list.
    pub frame_ancestors: String,
    /// Whether `X-Forwarded-Proto` and `X-Forwarded-Host` describe the browser's request (a proxy in front
    /// sets them). Off by default: without a proxy any client could send them.
    pub trust_proxy: bool,
    /// The origin browsers use to reach the console, when configured (`--public-url`); its scheme decides
    /// the session cookie's `Secure`, and it is always an allowed origin.
    pub public_origin: Option<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            frame_ancestors: DEFAULT_FRAME_ANCESTORS.to_owned(),
            trust_proxy: false,
            public_origin: None,
        }
    }
}

impl SecurityConfig {
    /// The configuration from the command line's text values, checked.
    pub fn from_flags(
        allowed_origins: &[String],
        frame_ancestors: &str,
        trust_proxy: bool,
        public_url: Option<&str>,
    ) -> Result<Self, SecurityConfigError> {
        let allowed_origins = allowed_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(parse_origin)
            .collect::<Result<_, _>>()?;
        let frame_ancestors = frame_ancestors.trim();
        let forbidden = |c: char| c == ';' || c == ',' || c.is_control() || !c.is_ascii();
        if frame_ancestors.is_empty() || frame_ancestors.contains(forbidden) {
            return Err(SecurityConfigError::FrameAncestors(crate::validate::echo(frame_ancestors)));
        }
        let public_origin = public_url.map(|url| parse_origin(url.trim().trim_end_matches('/'))).transpose()?;
        Ok(Self { allowed_origins, frame_ancestors: frame_ancestors.to_owned(), trust_proxy, public_origin })
    }

    /// Whether the browser reached us over HTTPS: the configured public URL says so, or a trusted proxy does.
    pub fn is_https(&self, headers: &HeaderMap) -> bool {
        self.public_origin.as_deref().is_some_and(|o| o.starts_with("https://"))
            || self.forwarded(headers, "x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }

    /// The first value of a proxy header, if the proxy is trusted (the first is the browser-facing hop's).
    fn forwarded<'a>(&self, headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        if !self.trust_proxy {
            return None;
        }
        let value = headers.get(name)?.to_str().ok()?;
        value.split(',').next().map(str::trim).filter(|v| !v.is_empty())
    }

    /// The request's own origin, as the browser wrote it: scheme and host of the URL it asked for.
    fn own_origin(&self, headers: &HeaderMap) -> Option<String> {
        let scheme = self.forwarded(headers, "x-forwarded-proto").unwrap_or("http");
        let host = self
            .forwarded(headers, "x-forwarded-host")
            .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))?;
        parse_origin(&format!("{scheme}://{host}")).ok()
    }

    /// Whether `origin` (as sent by a browser) may write with the session cookie.
    fn may_write(&self, origin: &str, headers: &HeaderMap) -> bool {
        let Ok(origin) = parse_origin(origin) else { return false };
        self.own_origin(headers).as_deref() == Some(origin.as_str())
            || self.public_origin.as_deref() == Some(origin.as_str())
            || self.allowed_origins.contains(&origin)
    }

    /// Refuses a cross-origin write that relies on the session cookie (see the module's doc). `None` is
    /// "allow": the request is safe, carries no cookie authority, or comes from one of our origins.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<ApiError> {
        if !needs_origin_check(method, path, headers) {
            return None;
        }
        let text = |name: HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let refused = if let Some(origin) = text(header::ORIGIN) {
            // `Origin: null` (a sandboxed frame, a redirect chain, a data: URL) names no origin we know.
            (!self.may_write(origin, headers)).then(|| format!("Origin {}", crate::validate::echo(origin)))
        } else if let Some(site) = text(HeaderName::from_static("sec-fetch-site")) {
            let from_us = matches!(site, "same-origin" | "none")
                || text(header::REFERER).is_some_and(|r| referer_origin(r).is_some_and(|o| self.may_write(o, headers)));
            (!from_us).then(|| format!("Sec-Fetch-Site {}", crate::validate::echo(site)))
        } else if let Some(referer) = text(header::REFERER) {
            let from_us = referer_origin(referer).is_some_and(|o| self.may_write(o, headers));
            (!from_us).then(|| "a Referer of another origin".to_owned())
        } else {
            None // no browser sent this: nothing to forge
        };
        refused.map(|what| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin_request",
                format!(
                    "{what}: a request signed in with the session cookie must come from this server's own origin \
                     (or one in --allowed-origins)"
                ),
            )
        })
    }
}

/// Unsafe methods that the session cookie authorizes, and the two sign-in routes, which set that cookie
/// (a forged sign-in would put the victim in the attacker's session). A request with an `Authorization`
/// header is authenticated by it, not by the cookie, so it needs no check.
fn needs_origin_check(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE) {
        return false;
    }
    if *method == Method::POST && matches!(path, "/api/session" | "/api/dev/session") {
        return true;
    }
    let cookie = axum_extra::extract::CookieJar::from_headers(headers);
    let has_session = cookie.get(SESSION_COOKIE).is_some() || cookie.get(SECURE_SESSION_COOKIE).is_some();
    has_session && !headers.contains_key(header::AUTHORIZATION)
}

/// The origin part (`scheme://host[:port]`) of a Referer URL.
fn referer_origin(referer: &str) -> Option<&str> {
    let (scheme, rest) = referer.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&referer[..scheme.len() + 3 + end])
}

/// `text` as a normalized origin: lowercase, http or https, the default port left out, no path, no user
/// info. Browsers serialize `Origin` this way; `Host` may carry the default port, so both are normalized.
pub fn parse_origin(text: &str) -> Result<String, SecurityConfigError> {
    let bad = || SecurityConfigError::NotAnOrigin(crate::validate::echo(text));
    let (scheme, authority) = text.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return Err(bad()),
    };
    let authority = authority.to_ascii_lowercase();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority.as_str(), None),
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !inner.is_empty() && inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    } else {
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    if !host_ok {
        return Err(bad());
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(p) if p.parse::<u16>().is_ok_and(|n| n > 0) && p.bytes().all(|b| b.is_ascii_digit()) => {
            let p = p.trim_start_matches('0');
            if p == default_port { Ok(format!("{scheme}://{host}")) } else { Ok(format!("{scheme}://{host}:{p}")) }
        }
        Some(_) => Err(bad()),
    }
}

/// Middleware on the API: the origin check of [`SecurityConfig::check`].
pub async fn refuse_cross_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.security.check(request.method(), request.uri().path(), request.headers()) {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

/// The headers every response carries, made once from the configuration.
#[derive(Clone)]
pub struct SecurityHeaders(Arc<[(HeaderName, HeaderValue)]>);

impl SecurityHeaders {
    /// The CSP allows only the console's own files: no inline script or style, no eval, no plug-ins, no
    /// other origins (the console talks to its own server only), and framing as configured; with
    /// `'none'`, `X-Frame-Options: DENY` says the same to browsers that predate `frame-ancestors`.
    pub fn new(config: &SecurityConfig) -> Self {
        let csp = format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'self'; object-src 'none'; frame-ancestors {}",
            config.frame_ancestors
        );
        let mut headers = vec![
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static(REFERRER_POLICY)),
        ];
        // `from_flags` refused anything a header cannot carry; a config built by hand gets the default.
        let csp = HeaderValue::from_str(&csp).unwrap_or_else(|_| {
            tracing::error!(frame_ancestors = %config.frame_ancestors, "frame-ancestors cannot be a header value");
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                 base-uri 'none'; form-action 'self'; object-src 'none'; frame-ancestors 'none'",
            )
        });
        headers.push((header::CONTENT_SECURITY_POLICY, csp));
        match config.frame_ancestors.as_str() {
            "'none'" => headers.push((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"))),
            "'self'" => headers.push((header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"))),
            _ => {}
        }
        Self(headers.into())
    }
}

/// Middleware on everything (API, console, errors): adds the [`SecurityHeaders`] a response lacks.
pub async fn add_headers(State(headers): State<SecurityHeaders>, mut response: Response) -> Response {
    add_missing(response.headers_mut(), &headers.0);
    response
}

fn add_missing(target: &mut HeaderMap, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        if !target.contains_key(name) {
            target.insert(name.clone(), value.clone());
        }
    }
}

/// What a response written by the event stream's own transport (its refusals of a malformed request head,
/// which never reach the router) carries like every other: no sniffing, no full referrer.
pub fn add_transport_headers(target: &mut HeaderMap) {
    add_missing(
        target,
        &[
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static(REFERRER_POLICY)),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn origins_are_normalized_and_malformed_ones_refused() {
        assert_eq!(parse_origin("HTTPS://Intranet.Example:443").unwrap(), "https://intranet.example");
        assert_eq!(parse_origin("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(parse_origin("http://[::1]:80").unwrap(), "http://[::1]");
        for bad in ["null", "ftp://x", "https://", "https://a/b", "https://a:0", "https://a:99999", "https://u@a", "x"]
        {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cookie_writes_need_an_origin_of_ours_and_bearer_or_safe_requests_do_not() {
        let config = SecurityConfig::from_flags(&["https://intranet.example".into()], "'none'", true, None).unwrap();
        let cookie = ("cookie", "ss_session=t");
        let host = ("host", "console.example:8443");
        let post = |extra: &[(&'static str, &str)]| {
            let mut all = vec![cookie, host];
            all.extend_from_slice(extra);
            config.check(&Method::POST, "/api/jobs", &headers(&all)).map(|e| e.code)
        };
        assert_eq!(post(&[("origin", "https://evil.example")]), Some("cross_origin_request"));
        assert_eq!(post(&[("origin", "null")]), Some("cross_origin_request"));
        assert_eq!(post(&[("origin", "http://console.example:8443")]), None);
        assert_eq!(post(&[("origin", "https://intranet.example")]), None);
        assert_eq!(
            post(&[("origin", "https://console.example:8443"), ("x-forwarded-proto", "https")]),
            None,
            "a trusted proxy names the scheme"
        );
        assert_eq!(post(&[("sec-fetch-site", "cross-site")]), Some("cross_origin_request"));
        assert_eq!(post(&[("sec-fetch-site", "same-site")]), Some("cross_origin_request"));
        assert_eq!(post(&[("sec-fetch-site", "same-origin")]), None);
        assert_eq!(post(&[("sec-fetch-site", "none")]), None);
        assert_eq!(post(&[("sec-fetch-site", "same-site"), ("referer", "https://intranet.example/page")]), None);
        assert_eq!(post(&[("referer", "https://evil.example/x?y")]), Some("cross_origin_request"));
        assert_eq!(post(&[("referer", "http://console.example:8443/jobs")]), None);
        assert_eq!(post(&[]), None, "no browser headers: not a browser");
        let bearer = headers(&[cookie, ("authorization", "Bearer t"), ("origin", "https://evil.example")]);
        assert!(config.check(&Method::POST, "/api/jobs", &bearer).is_none());
        let read = headers(&[cookie, ("origin", "https://evil.example")]);
        assert!(config.check(&Method::GET, "/api/jobs", &read).is_none());
        let no_cookie = headers(&[("origin", "https://evil.example")]);
        assert!(config.check(&Method::POST, "/api/jobs", &no_cookie).is_none());
        assert!(config.check(&Method::POST, "/api/session", &no_cookie).is_some(), "login CSRF");
        assert!(config.check(&Method::POST, "/api/dev/session", &no_cookie).is_some(), "login CSRF");
    }

    #[test]
    fn forwarded_headers_count_only_from_a_trusted_proxy() {
        let untrusted = SecurityConfig::default();
        let forwarded = headers(&[("host", "a:8080"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "b")]);
        assert!(!untrusted.is_https(&forwarded));
        assert_eq!(untrusted.own_origin(&forwarded).as_deref(), Some("http://a:8080"));
        let trusted = SecurityConfig { trust_proxy: true, ..SecurityConfig::default() };
        assert!(trusted.is_https(&forwarded));
        assert_eq!(trusted.own_origin(&forwarded).as_deref(), Some("https://b"));
        let public = SecurityConfig::from_flags(&[], "'self'", false, Some("https://console.example/")).unwrap();
        assert!(public.is_https(&HeaderMap::new()));
        assert!(SecurityConfig::from_flags(&[], "'self'; script-src *", false, None).is_err());
        assert!(SecurityConfig::from_flags(&["evil".into()], "'none'", false, None).is_err());
    }
}
