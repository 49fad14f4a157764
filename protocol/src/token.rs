//! Gateway tokens: how a gateway proves to head office's HTTP API which gateway of which store it is.
//!
//! A token is `HMAC-SHA256(secret, "instore-gw-v1:{store}:{gateway}")` in lowercase hex
//! (generation 0: every gateway enrolled before head office kept a registry), or for generation
//! `n ≥ 1`, `HMAC-SHA256(secret, "instore-gw-v2:{store}:{gateway}:{n}")`. Head office holds the
//! secret and recomputes; each enrolment or rotation through its registry moves a gateway to the
//! next generation, which voids the previous token. A gateway's token lets it read only its own
//! store's data, and its MQTT key ([`crate::auth::MessageKey::for_gateway`]) derives from it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::topics::valid_id;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], store_id: &str, gateway_id: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty-key MAC to keep
    // the function total without a panic path.
    let mut m = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
    m.update(b"instore-gw-v1:");
    m.update(store_id.as_bytes());
    m.update(b":");
    m.update(gateway_id.as_bytes());
    m
}

/// Mints the token of `gateway_id` in `store_id`; `None` when either id is not a valid id
/// ([`crate::topics::valid_id`]), which also keeps the `:` separator unambiguous.
pub fn gateway_token(secret: &[u8], store_id: &str, gateway_id: &str) -> Option<String> {
    if !valid_id(store_id) || !valid_id(gateway_id) {
        return None;
    }
    Some(hex::encode(
        mac(secret, store_id, gateway_id).finalize().into_bytes(),
    ))
}

/// The token of `gateway_id` in `store_id` at registry `generation` (0: [`gateway_token`]).
pub fn gateway_token_at(
    secret: &[u8],
    store_id: &str,
    gateway_id: &str,
    generation: u32,
) -> Option<String> {
    if generation == 0 {
        return gateway_token(secret, store_id, gateway_id);
    }
    if !valid_id(store_id) || !valid_id(gateway_id) {
        return None;
    }
    let mut m = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
    m.update(b"instore-gw-v2:");
    m.update(store_id.as_bytes());
    m.update(b":");
    m.update(gateway_id.as_bytes());
    m.update(b":");
    m.update(generation.to_string().as_bytes());
    Some(hex::encode(m.finalize().into_bytes()))
}

/// Checks a presented token in constant time.
pub fn verify_gateway_token(secret: &[u8], store_id: &str, gateway_id: &str, token: &str) -> bool {
    if !valid_id(store_id) || !valid_id(gateway_id) {
        return false;
    }
    let Ok(bytes) = hex::decode(token) else {
        return false;
    };
    mac(secret, store_id, gateway_id)
        .verify_slice(&bytes)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_for_its_own_gateway_and_store() {
        let t = gateway_token(b"secret", "s1", "g1").unwrap();
        assert_eq!(t.len(), 64);
        assert!(verify_gateway_token(b"secret", "s1", "g1", &t));
        assert!(!verify_gateway_token(b"secret", "s2", "g1", &t));
        assert!(!verify_gateway_token(b"secret", "s1", "g2", &t));
        assert!(!verify_gateway_token(b"other", "s1", "g1", &t));
        assert!(!verify_gateway_token(b"secret", "s1", "g1", "not-hex"));
    }

    #[test]
    fn each_generation_has_its_own_token_and_zero_is_the_original() {
        let g0 = gateway_token_at(b"secret", "s1", "g1", 0).unwrap();
        assert_eq!(Some(g0.clone()), gateway_token(b"secret", "s1", "g1"));
        let g1 = gateway_token_at(b"secret", "s1", "g1", 1).unwrap();
        let g2 = gateway_token_at(b"secret", "s1", "g1", 2).unwrap();
        assert!(g0 != g1 && g1 != g2 && g0 != g2);
        assert_ne!(gateway_token_at(b"secret", "s2", "g1", 1).unwrap(), g1);
        assert_eq!(gateway_token_at(b"secret", "s:1", "g1", 1), None);
        // Checked against Python's hmac (a vector for other implementations).
        assert_eq!(
            gateway_token_at(b"0123456789abcdef", "s1", "g1", 3).unwrap(),
            "ca09497c982491b21107ffc6ecd415683d4414e770b671a4fbad9a8430dc8f86"
        );
    }

    #[test]
    fn ids_that_could_blur_the_separator_get_no_token() {
        // Were ':' allowed, ("a", "b:c") and ("a:b", "c") would share a token.
        assert_eq!(gateway_token(b"k", "a", "b:c"), None);
        assert_eq!(gateway_token(b"k", "a:b", "c"), None);
        assert!(!verify_gateway_token(b"k", "a:b", "c", &"0".repeat(64)));
    }
}
