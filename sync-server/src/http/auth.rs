//! Who may call what: the admin bearer token, or a gateway token for its own store's snapshot.

use axum::http::HeaderMap;

/// Header naming the gateway that presents a gateway token.
pub const GATEWAY_HEADER: &str = "x-instore-gateway";

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares in time independent of where the first difference is, so a token cannot be guessed
/// byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when the request carries the admin token.
pub fn is_admin(headers: &HeaderMap, admin_token: &str) -> bool {
    bearer(headers).is_some_and(|t| constant_time_eq(t.as_bytes(), admin_token.as_bytes()))
}

/// True when the request carries the admin token, or the current token of a gateway of `store`
/// that is not revoked ([`crate::registry::Registry::verify`]).
pub fn may_read_store(
    headers: &HeaderMap,
    admin_token: &str,
    registry: &crate::registry::Registry,
    store: &str,
) -> bool {
    if is_admin(headers, admin_token) {
        return true;
    }
    let Some(token) = bearer(headers) else {
        return false;
    };
    let Some(gateway) = headers.get(GATEWAY_HEADER).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    registry.verify(store, gateway, token)
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
    fn a_gateway_token_opens_only_its_own_store() {
        let secret = crate::registry::Registry::new(b"0123456789abcdef");
        let t = instore_protocol::token::gateway_token(b"0123456789abcdef", "s1", "g1").unwrap();
        let h = headers(&[
            ("authorization", &format!("Bearer {t}")),
            (GATEWAY_HEADER, "g1"),
        ]);
        assert!(may_read_store(&h, "admin", &secret, "s1"));
        assert!(!may_read_store(&h, "admin", &secret, "s2"));
        let h = headers(&[("authorization", &format!("Bearer {t}"))]);
        assert!(
            !may_read_store(&h, "admin", &secret, "s1"),
            "the gateway header is required"
        );
    }

    #[test]
    fn the_admin_token_opens_everything_and_a_near_miss_nothing() {
        let h = headers(&[("authorization", "Bearer admin")]);
        assert!(is_admin(&h, "admin"));
        let registry = crate::registry::Registry::new(b"0123456789abcdef");
        assert!(may_read_store(&h, "admin", &registry, "any"));
        let h = headers(&[("authorization", "Bearer admiN")]);
        assert!(!is_admin(&h, "admin"));
        assert!(!is_admin(&HeaderMap::new(), "admin"));
    }
}
