//! Endpoint URLs in canonical form. Backends whose `api_url`s normalize to
//! the same [`EndpointUrl`] share one endpoint: one set of probes, one state.

use std::fmt;
use std::net::IpAddr;

use crate::error::HealthError;

/// URL scheme of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `http`
    Http,
    /// `https`
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A backend's `api_url`, normalized: lower-case scheme and host, default
/// port dropped, trailing slashes stripped, no credentials, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointUrl {
    normalized: String,
    scheme: Scheme,
    /// Host without IPv6 brackets, lower case.
    host: String,
    port: u16,
    path: String,
}

impl EndpointUrl {
    /// Normalizes `raw`; fails on anything that is not an absolute http(s) URL.
    pub fn parse(raw: &str) -> Result<EndpointUrl, HealthError> {
        let bad = |why: &str| HealthError::InvalidUrl {
            url: redact(raw),
            reason: why.to_owned(),
        };
        let raw = raw.trim();
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| bad("expected http://HOST[:PORT][/PATH] or https://…"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // Credentials in the URL are dropped (never probed, never shown).
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let host = host.to_ascii_lowercase();
        let port = port.unwrap_or(scheme.default_port());
        let path = path.trim_end_matches('/').to_owned();
        let shown_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let normalized = if port == scheme.default_port() {
            format!("{}://{shown_host}{path}", scheme.as_str())
        } else {
            format!("{}://{shown_host}:{port}{path}", scheme.as_str())
        };
        Ok(EndpointUrl {
            normalized,
            scheme,
            host,
            port,
            path,
        })
    }

    /// The normalized URL, e.g. `https://api.openai.com/v1`.
    pub fn as_str(&self) -> &str {
        &self.normalized
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host, lower case, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (the scheme's default when the URL has none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL the HTTP probe requests: this URL followed by `path`.
    pub fn probe_url(&self, path: &str) -> String {
        let path = path.trim();
        let mut url = self.normalized.clone();
        if !path.is_empty() && !path.starts_with('/') {
            url.push('/');
        }
        url.push_str(path);
        if self.path.is_empty() && path.is_empty() {
            url.push('/');
        }
        url
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized)
    }
}

/// Splits `host[:port]` or `[v6][:port]`; `None` when the port is not a number.
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, "")) => Some((host, None)),
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// Addresses a redirect must not lead to unless the endpoint is of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestrictedAddress {
    Loopback,
    LinkLocal,
    Private,
    Unspecified,
}

impl RestrictedAddress {
    /// How the address is described in errors.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            RestrictedAddress::Loopback => "a loopback address",
            RestrictedAddress::LinkLocal => "a link-local address",
            RestrictedAddress::Private => "a private address",
            RestrictedAddress::Unspecified => "an unspecified address",
        }
    }

    /// The class of `host` (an IP literal or `localhost`), if restricted.
    pub(crate) fn of_host(host: &str) -> Option<RestrictedAddress> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let lower = host.to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") {
            return Some(RestrictedAddress::Loopback);
        }
        let ip: IpAddr = host.parse().ok()?;
        RestrictedAddress::of_ip(ip)
    }

    /// The class of `ip`, if restricted.
    pub(crate) fn of_ip(ip: IpAddr) -> Option<RestrictedAddress> {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                if v4.is_loopback() {
                    Some(RestrictedAddress::Loopback)
                } else if v4.is_link_local() {
                    Some(RestrictedAddress::LinkLocal)
                } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                    // RFC 1918 and the shared (carrier-grade NAT) range.
                    Some(RestrictedAddress::Private)
                } else if v4.is_unspecified() {
                    Some(RestrictedAddress::Unspecified)
                } else {
                    None
                }
            }
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return RestrictedAddress::of_ip(IpAddr::V4(v4));
                }
                let first = v6.segments()[0];
                if v6.is_loopback() {
                    Some(RestrictedAddress::Loopback)
                } else if (first & 0xffc0) == 0xfe80 {
                    Some(RestrictedAddress::LinkLocal)
                } else if (first & 0xfe00) == 0xfc00 {
                    Some(RestrictedAddress::Private)
                } else if v6.is_unspecified() {
                    Some(RestrictedAddress::Unspecified)
                } else {
                    None
                }
            }
        }
    }
}

/// `raw` with any `user:password@` replaced, for error messages.
fn redact(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        EndpointUrl::parse(s).unwrap().as_str().to_owned()
    }

    #[test]
    fn normalizes_case_default_ports_slashes_credentials_and_query() {
        assert_eq!(
            norm("HTTPS://API.OpenAI.com:443/v1/"),
            "https://api.openai.com/v1"
        );
        assert_eq!(norm("http://Host:80"), "http://host");
        assert_eq!(norm("http://host:8080/v1//"), "http://host:8080/v1");
        assert_eq!(
            norm("https://user:secret@host/v1?key=abc#frag"),
            "https://host/v1"
        );
        assert_eq!(norm("http://[::1]:8000/v1"), "http://[::1]:8000/v1");
        assert_eq!(norm("http://[::1]:80/"), "http://[::1]");
        // The path keeps its case: servers may treat it as significant.
        assert_eq!(norm("http://h/V1/Chat"), "http://h/V1/Chat");
        assert_eq!(norm("https://h:80/v1"), "https://h:80/v1");
    }

    #[test]
    fn equal_after_normalization_means_equal() {
        assert_eq!(
            EndpointUrl::parse("http://127.0.0.1:9000/v1/").unwrap(),
            EndpointUrl::parse("HTTP://127.0.0.1:9000/v1").unwrap()
        );
    }

    #[test]
    fn rejects_what_is_not_an_http_url_without_echoing_credentials() {
        for bad in [
            "ftp://h/x",
            "h/v1",
            "http://",
            "http://h:port/v1",
            "http://[::1",
        ] {
            assert!(EndpointUrl::parse(bad).is_err(), "{bad}");
        }
        let err = EndpointUrl::parse("gopher://me:pw@h/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn probe_url_appends_the_path() {
        let e = EndpointUrl::parse("http://h:1/v1").unwrap();
        assert_eq!(e.probe_url(""), "http://h:1/v1");
        assert_eq!(e.probe_url("/models"), "http://h:1/v1/models");
        assert_eq!(e.probe_url("models"), "http://h:1/v1/models");
        let root = EndpointUrl::parse("http://h:1").unwrap();
        assert_eq!(root.probe_url(""), "http://h:1/");
        assert_eq!(root.probe_url("/health"), "http://h:1/health");
    }

    #[test]
    fn classifies_restricted_addresses() {
        use RestrictedAddress::*;
        assert_eq!(
            RestrictedAddress::of_host("169.254.169.254"),
            Some(LinkLocal)
        );
        assert_eq!(RestrictedAddress::of_host("[fe80::1]"), Some(LinkLocal));
        assert_eq!(RestrictedAddress::of_host("127.0.0.1"), Some(Loopback));
        assert_eq!(RestrictedAddress::of_host("::1"), Some(Loopback));
        assert_eq!(RestrictedAddress::of_host("LOCALHOST"), Some(Loopback));
        assert_eq!(RestrictedAddress::of_host("10.1.2.3"), Some(Private));
        assert_eq!(RestrictedAddress::of_host("172.20.0.1"), Some(Private));
        assert_eq!(RestrictedAddress::of_host("192.168.1.1"), Some(Private));
        assert_eq!(RestrictedAddress::of_host("100.64.0.1"), Some(Private));
        assert_eq!(RestrictedAddress::of_host("fd00::1"), Some(Private));
        assert_eq!(
            RestrictedAddress::of_host("::ffff:169.254.169.254"),
            Some(LinkLocal)
        );
        assert_eq!(RestrictedAddress::of_host("0.0.0.0"), Some(Unspecified));
        assert_eq!(RestrictedAddress::of_host("8.8.8.8"), None);
        assert_eq!(RestrictedAddress::of_host("api.openai.com"), None);
    }
}
