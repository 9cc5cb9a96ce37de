//! What a web browser may do to a server without API keys: nothing but same-origin requests. The `Host` must name loopback (a page whose name rebinds to 127.0.0.1 sends its own), an `Origin` must be the server's own, and bodies must be JSON (what a page can post cross-origin without a CORS preflight is text, a form or multipart). With keys, the key is the guard and these rules stay off.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::AppState;

/// Every route (the open ones, `/mcp` and unknown paths too): the `Host` and `Origin`
/// rules of a keyless server.
pub async fn same_origin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.keys.is_empty() {
        check(request.uri(), request.headers())?;
    }
    Ok(next.run(request).await)
}

/// The web page's own files (`api::ui`): on a keyless server the `Host` rule only. They
/// are the same bytes for every client and do nothing, and the page's sandboxed result
/// frame, whose origin is opaque, fetches its scripts with `Origin: null`.
pub async fn loopback_host(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.keys.is_empty() {
        check_host(request.uri(), request.headers())?;
    }
    Ok(next.run(request).await)
}

/// The methods that take a body (a `route_layer` on them, so unknown paths stay 404 and
/// other methods 405): on a keyless server, a POST must say it sends JSON, and a PUT (a file's raw bytes) must not be of
/// the three types a page may send cross-origin without a preflight.
pub async fn json_bodies(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.keys.is_empty() {
        body_type(request.method(), request.headers())?;
    }
    Ok(next.run(request).await)
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// A `host[:port]`, its host lowercased and without IPv6 brackets.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let a: axum::http::uri::Authority = authority.parse().ok()?;
    if a.as_str().contains('@') {
        return None;
    }
    let host = a.host().trim_start_matches('[').trim_end_matches(']');
    Some((host.to_ascii_lowercase(), a.port_u16()))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The request's `Host` as (name, port) when it names loopback; `None` when it has none
/// (HTTP/1.0: not a browser).
fn check_host(
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<Option<(String, Option<u16>)>, ApiError> {
    let host = match headers.get(header::HOST) {
        Some(v) => Some(v.to_str().unwrap_or("").to_string()),
        None => uri.authority().map(|a| a.as_str().to_string()),
    };
    let Some(host) = host else {
        return Ok(None);
    };
    match split_authority(&host).filter(|(name, _)| is_loopback(name)) {
        Some(named) => Ok(Some(named)),
        None => Err(forbidden(format!(
            "Host {host:?} is not a loopback address; a server without API keys answers \
             only requests to localhost, 127.0.0.1 or [::1] (configure api_keys to serve \
             other names)"
        ))),
    }
}

fn check(uri: &axum::http::Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    // A request without a Host (HTTP/1.0) does not come from a browser.
    let Some((name, port)) = check_host(uri, headers)? else {
        return Ok(());
    };
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let same = origin.split_once("://").and_then(|(scheme, rest)| {
        let default = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let (o_name, o_port) = split_authority(rest)?;
        Some(o_name == name && o_port.unwrap_or(default) == port.unwrap_or(default))
    });
    if same == Some(true) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "Origin {origin:?} is not this server's: a server without API keys refuses \
             requests from other web pages"
        )))
    }
}

fn essence(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?;
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    Some(ct.split(';').next().unwrap_or("").trim().to_string())
}

fn body_type(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let essence = essence(headers);
    if method == Method::POST {
        match essence.as_deref() {
            Some("application/json") => Ok(()),
            Some(e) if e.ends_with("+json") => Ok(()),
            Some(e) => Err(ApiError::unsupported_media(format!(
                "Content-Type must be application/json, got {e:?}"
            ))),
            None => Err(ApiError::unsupported_media(
                "Content-Type must be application/json (a server without API keys \
                 requires it, so no web page can post here)",
            )),
        }
    } else if method == Method::PUT
        && matches!(
            essence.as_deref(),
            Some("text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data")
        )
    {
        Err(ApiError::unsupported_media(format!(
            "Content-Type {:?} is refused on a server without API keys (a web page may send \
             it cross-origin); send the file as application/octet-stream",
            essence.unwrap_or_default()
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_hosts_and_their_own_origin_pass() {
        let uri: axum::http::Uri = "/v1/health".parse().unwrap();
        for (host, origin) in [
            ("127.0.0.1:8080", None),
            ("localhost:8080", Some("http://localhost:8080")),
            ("[::1]:9000", Some("http://[::1]:9000")),
            ("127.0.0.2", Some("http://127.0.0.2")),
            ("LOCALHOST:1", Some("http://localhost:1")),
        ] {
            let mut h = headers(&[("host", host)]);
            if let Some(o) = origin {
                h.insert("origin", o.parse().unwrap());
            }
            check(&uri, &h).unwrap_or_else(|e| panic!("{host} {origin:?}: {e}"));
        }
    }

    #[test]
    fn other_hosts_and_origins_are_refused() {
        let uri: axum::http::Uri = "/v1/health".parse().unwrap();
        for (host, origin) in [
            ("evil.example:8080", None),
            ("localhost.evil.example", None),
            ("10.0.0.1:8080", None),
            ("user@127.0.0.1:8080", None),
            ("127.0.0.1:8080", Some("http://127.0.0.1:8081")),
            ("127.0.0.1:8080", Some("http://localhost:8080")),
            ("127.0.0.1:8080", Some("null")),
            ("127.0.0.1:8080", Some("file://")),
            ("127.0.0.1:8080", Some("http://evil.example")),
        ] {
            let mut h = headers(&[("host", host)]);
            if let Some(o) = origin {
                h.insert("origin", o.parse().unwrap());
            }
            let e = check(&uri, &h).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{host} {origin:?}");
        }
    }
}
