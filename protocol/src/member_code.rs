//! Signed member codes (version 2): what a member's phone shows at the till, signed with a key
//! pair that only the phone holds. Gateways and head office hold public keys only, so neither a
//! stolen gateway nor head office's database can make a valid code (unlike [`crate::qr`], where
//! every gateway holds the HMAC day keys).
//!
//! # Format
//!
//! `ISQ2:` then the Base45 (RFC 9285, the QR alphanumeric alphabet) of 77 bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, `2` |
//! | 8 | key id: the first 8 bytes of SHA-256 of the raw public key ([`key_id`]) |
//! | 4 | step: Unix seconds div 30, big-endian |
//! | 64 | signature over [`signed_message`]: ES256 as `r ‖ s` (what WebCrypto returns), or Ed25519 |
//!
//! 121 characters in all: a version-5 QR code at error correction M holds 154 alphanumeric
//! characters. The signed message is `"instore-code-v2" ‖ key id ‖ be32(step)`. The algorithm is
//! the key's (registered with it at head office), not the code's: a code cannot ask to be
//! checked a weaker way. Raw public keys: P-256 as the 65-byte uncompressed point (WebCrypto's
//! `raw` export), Ed25519 as its 32 bytes. Parsing never panics and looks at no more than
//! [`MAX_LEN`] bytes. Test vectors were made with Python's `cryptography` (see the tests).

use sha2::{Digest, Sha256};

/// What a version-2 code starts with.
pub const PREFIX: &str = "ISQ2:";
pub const VERSION: u8 = 2;
/// Seconds per step: the phone shows a fresh code every step.
pub const STEP_SECS: i64 = 30;
pub const KEY_ID_LEN: usize = 8;
pub const SIGNATURE_LEN: usize = 64;
/// Bytes before Base45.
pub const CODE_BYTES: usize = 1 + KEY_ID_LEN + 4 + SIGNATURE_LEN;
/// Characters of a code: the prefix and the Base45 of [`CODE_BYTES`].
pub const MAX_LEN: usize = PREFIX.len() + CODE_BYTES / 2 * 3 + (CODE_BYTES % 2) * 2;
// A version-5 QR code at error correction M holds 154 alphanumeric characters.
const _: () = assert!(MAX_LEN <= 154);
/// Steps a code may be older than now and still be accepted (about 60 s: a scanner queue, a
/// slow till) ...
pub const MAX_AGE_STEPS: i64 = 2;
/// ... and newer (a phone clock a little ahead; the page corrects larger errors itself).
pub const MAX_AHEAD_STEPS: i64 = 1;
const LABEL: &[u8] = b"instore-code-v2";

/// A device key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// ECDSA over P-256 with SHA-256 (WebCrypto `ECDSA`/`P-256`): the default, in every browser.
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "Ed25519")]
    Ed25519,
}

impl Algorithm {
    /// Length of the raw public key.
    pub fn public_key_len(self) -> usize {
        match self {
            Algorithm::Es256 => 65,
            Algorithm::Ed25519 => 32,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Ed25519 => "Ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Algorithm::Es256),
            "Ed25519" => Some(Algorithm::Ed25519),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("not a signed member code (expected {PREFIX}...)")]
    Format,
    #[error("member code of {0} characters; a signed code has {MAX_LEN}")]
    Length(usize),
    #[error("member code is not Base45")]
    Base45,
    #[error("member code version {0} is not supported")]
    Version(u8),
    #[error("member code's key is not registered for a member held here")]
    UnknownKey,
    #[error("member code's key was revoked")]
    RevokedKey,
    #[error("member code's signature does not verify")]
    BadSignature,
    #[error("member code is {age_s} s old (a photo, or a phone clock behind)")]
    Expired { age_s: i64 },
    #[error("member code is {ahead_s} s ahead of this gateway's clock")]
    Future { ahead_s: i64 },
    #[error("member code was already used in this store")]
    Replayed,
    #[error("public key of {got} bytes; {alg} keys have {want}")]
    PublicKey {
        alg: &'static str,
        got: usize,
        want: usize,
    },
}

impl CodeError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CodeError::Format | CodeError::Length(_) | CodeError::Base45 => "malformed",
            CodeError::Version(_) => "version",
            CodeError::UnknownKey => "unknown_key",
            CodeError::RevokedKey => "revoked_key",
            CodeError::BadSignature => "bad_signature",
            CodeError::Expired { .. } => "expired",
            CodeError::Future { .. } => "future",
            CodeError::Replayed => "replayed",
            CodeError::PublicKey { .. } => "bad_key",
        }
    }
}

/// A parsed code; its signature is not checked yet ([`SignedCode::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCode {
    pub key_id: [u8; KEY_ID_LEN],
    pub step: u32,
    pub signature: [u8; SIGNATURE_LEN],
}

/// The step of a Unix time in milliseconds.
pub fn step_of_ms(unix_ms: i64) -> u32 {
    unix_ms
        .div_euclid(1000 * STEP_SECS)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// The id of a raw public key: how a code names it, and how head office lists it.
pub fn key_id(public_key: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::digest(public_key);
    let mut out = [0u8; KEY_ID_LEN];
    out.copy_from_slice(&digest[..KEY_ID_LEN]);
    out
}

/// What the device signs for `step`.
pub fn signed_message(key_id: &[u8; KEY_ID_LEN], step: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL.len() + KEY_ID_LEN + 4);
    m.extend_from_slice(LABEL);
    m.extend_from_slice(key_id);
    m.extend_from_slice(&step.to_be_bytes());
    m
}

/// Whether `text` is meant as a version-2 code (so a scanner routes it here, not to [`crate::qr`]).
pub fn is_signed_code(text: &str) -> bool {
    text.trim_start().starts_with(PREFIX)
}

/// Checks that `public_key` has the length `alg` needs.
pub fn check_public_key(alg: Algorithm, public_key: &[u8]) -> Result<(), CodeError> {
    if public_key.len() != alg.public_key_len()
        || (alg == Algorithm::Es256 && public_key.first() != Some(&4))
    {
        return Err(CodeError::PublicKey {
            alg: alg.as_str(),
            got: public_key.len(),
            want: alg.public_key_len(),
        });
    }
    Ok(())
}

/// Assembles a code from its parts (the signer computed `signature` over [`signed_message`]).
pub fn encode(key_id: &[u8; KEY_ID_LEN], step: u32, signature: &[u8; SIGNATURE_LEN]) -> String {
    let mut bytes = Vec::with_capacity(CODE_BYTES);
    bytes.push(VERSION);
    bytes.extend_from_slice(key_id);
    bytes.extend_from_slice(&step.to_be_bytes());
    bytes.extend_from_slice(signature);
    format!("{PREFIX}{}", base45::encode(&bytes))
}

/// Parses a scanned code (scanners append a newline: trailing line breaks are ignored, spaces
/// are not, since Base45 uses them).
pub fn parse(text: &str) -> Result<SignedCode, CodeError> {
    let text = text.trim_end_matches(['\r', '\n']).trim_start();
    let body = text.strip_prefix(PREFIX).ok_or(CodeError::Format)?;
    if text.len() != MAX_LEN {
        return Err(CodeError::Length(text.len()));
    }
    let bytes = base45::decode(body).ok_or(CodeError::Base45)?;
    let (&version, rest) = bytes.split_first().ok_or(CodeError::Base45)?;
    if version != VERSION {
        return Err(CodeError::Version(version));
    }
    if rest.len() != CODE_BYTES - 1 {
        return Err(CodeError::Length(text.len()));
    }
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&rest[..KEY_ID_LEN]);
    let mut step = [0u8; 4];
    step.copy_from_slice(&rest[KEY_ID_LEN..KEY_ID_LEN + 4]);
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(&rest[KEY_ID_LEN + 4..]);
    Ok(SignedCode {
        key_id,
        step: u32::from_be_bytes(step),
        signature,
    })
}

impl SignedCode {
    /// Checks the step against `now_ms` (−[`MAX_AGE_STEPS`] to +[`MAX_AHEAD_STEPS`]), then the
    /// signature under the device's registered public key.
    #[cfg(feature = "verify")]
    pub fn verify(&self, alg: Algorithm, public_key: &[u8], now_ms: i64) -> Result<(), CodeError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
        self.check_time(now_ms)?;
        check_public_key(alg, public_key)?;
        if key_id(public_key) != self.key_id {
            return Err(CodeError::UnknownKey);
        }
        let message = signed_message(&self.key_id, self.step);
        let verified = match alg {
            Algorithm::Es256 => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
                .verify(&message, &self.signature),
            Algorithm::Ed25519 => {
                UnparsedPublicKey::new(&ED25519, public_key).verify(&message, &self.signature)
            }
        };
        verified.map_err(|_| CodeError::BadSignature)
    }

    /// Whether the code's step is within the accepted window around `now_ms`.
    pub fn check_time(&self, now_ms: i64) -> Result<(), CodeError> {
        let skew = i64::from(self.step) - i64::from(step_of_ms(now_ms));
        if skew < -MAX_AGE_STEPS {
            return Err(CodeError::Expired {
                age_s: -skew * STEP_SECS,
            });
        }
        if skew > MAX_AHEAD_STEPS {
            return Err(CodeError::Future {
                ahead_s: skew * STEP_SECS,
            });
        }
        Ok(())
    }
}

/// A device's key pair, as a phone holds it: for tests, kiosks and `instore-provision
/// member-code` (a phone's browser does the same with WebCrypto).
#[cfg(feature = "verify")]
pub struct DeviceSigner {
    alg: Algorithm,
    pkcs8: Vec<u8>,
    pair: SignerPair,
}

#[cfg(feature = "verify")]
enum SignerPair {
    Es256(aws_lc_rs::signature::EcdsaKeyPair),
    Ed25519(aws_lc_rs::signature::Ed25519KeyPair),
}

#[cfg(feature = "verify")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device key: {0}")]
pub struct SignerError(String);

#[cfg(feature = "verify")]
impl std::fmt::Debug for DeviceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSigner")
            .field("alg", &self.alg)
            .field("key_id", &hex::encode(self.key_id()))
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "verify")]
impl DeviceSigner {
    /// A new random key pair.
    pub fn generate(alg: Algorithm) -> Result<Self, SignerError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = match alg {
            Algorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            Algorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|e| SignerError(e.to_string()))?;
        Self::from_pkcs8(alg, doc.as_ref())
    }

    /// The key pair in a PKCS#8 DER document (what [`Self::pkcs8`] gives).
    pub fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<Self, SignerError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
        let pair = match alg {
            Algorithm::Es256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map(SignerPair::Es256)
                .map_err(|e| SignerError(e.to_string()))?,
            Algorithm::Ed25519 => Ed25519KeyPair::from_pkcs8(der)
                .map(SignerPair::Ed25519)
                .map_err(|e| SignerError(e.to_string()))?,
        };
        Ok(Self {
            alg,
            pkcs8: der.to_vec(),
            pair,
        })
    }

    /// A key pair from 32 raw secret bytes: a P-256 scalar or an Ed25519 seed. For tests that
    /// try what a thief could make of any secret found on a gateway.
    pub fn from_secret_bytes(alg: Algorithm, secret: &[u8; 32]) -> Result<Self, SignerError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
        match alg {
            Algorithm::Es256 => {
                // RFC 5915 ECPrivateKey: version 1, the scalar, the P-256 curve OID.
                let mut der = vec![0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20];
                der.extend_from_slice(secret);
                der.extend_from_slice(&[
                    0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                ]);
                let pair =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                        .map_err(|e| SignerError(e.to_string()))?;
                Ok(Self {
                    alg,
                    pkcs8: der,
                    pair: SignerPair::Es256(pair),
                })
            }
            Algorithm::Ed25519 => {
                let pair = Ed25519KeyPair::from_seed_unchecked(secret)
                    .map_err(|e| SignerError(e.to_string()))?;
                Ok(Self {
                    alg,
                    pkcs8: Vec::new(),
                    pair: SignerPair::Ed25519(pair),
                })
            }
        }
    }

    /// A code for `step` that names `key_id`, whatever key this is: what a forger sends.
    pub fn forge(&self, key_id: &[u8; KEY_ID_LEN], step: u32) -> Result<String, SignerError> {
        let signature = self.sign(&signed_message(key_id, step))?;
        Ok(encode(key_id, step, &signature))
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], SignerError> {
        let sig = match &self.pair {
            SignerPair::Es256(p) => p
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map_err(|e| SignerError(e.to_string()))?
                .as_ref()
                .to_vec(),
            SignerPair::Ed25519(p) => p.sign(message).as_ref().to_vec(),
        };
        sig.try_into()
            .map_err(|_| SignerError("unexpected signature length".into()))
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The private key, PKCS#8 DER: keep it as secret as the phone keeps its own.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The raw public key head office registers.
    pub fn public_key(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair;
        match &self.pair {
            SignerPair::Es256(p) => p.public_key().as_ref().to_vec(),
            SignerPair::Ed25519(p) => p.public_key().as_ref().to_vec(),
        }
    }

    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        key_id(&self.public_key())
    }

    /// The code to show at `unix_ms`.
    pub fn code_at(&self, unix_ms: i64) -> Result<String, SignerError> {
        self.forge(&self.key_id(), step_of_ms(unix_ms))
    }
}

/// RFC 9285 Base45 over the QR alphanumeric alphabet.
pub mod base45 {
    const ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len() / 2 * 3 + 2);
        let mut push = |v: usize| out.push(char::from(ALPHABET[v]));
        for pair in data.chunks(2) {
            match *pair {
                [a, b] => {
                    let n = usize::from(a) * 256 + usize::from(b);
                    push(n % 45);
                    push(n / 45 % 45);
                    push(n / 2025);
                }
                [a] => {
                    let n = usize::from(a);
                    push(n % 45);
                    push(n / 45);
                }
                _ => {}
            }
        }
        out
    }

    fn value(c: u8) -> Option<u32> {
        ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
    }

    /// `None` for a character outside the alphabet, a dangling single character, or a group
    /// that encodes more than its bytes can hold.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len() / 3 * 2 + 1);
        for group in bytes.chunks(3) {
            match *group {
                [c, d, e] => {
                    let n = value(c)? + value(d)? * 45 + value(e)? * 2025;
                    if n > 0xFFFF {
                        return None;
                    }
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                [c, d] => {
                    let n = value(c)? + value(d)? * 45;
                    if n > 0xFF {
                        return None;
                    }
                    out.push(n as u8);
                }
                _ => return None,
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From protocol/tests/vectors/member_code.py (Python `cryptography` 48 signs; deterministic
    // private keys from SHA-256 of a label; its own Base45).
    pub const ES256_PUBLIC: &str = "04f51b66ce01e5a7fffef999ae5affbadf12d994871806a01d0da3c1f04d5643ea3429a5063750016d6ad08c8fc06cd68c7fa668a99ca345a8bb503ab95f9ff1a3";
    pub const ES256_KEY_ID: &str = "7ef1a8c12a87d60b";
    pub const ES256_CODE: &str = "ISQ2:8E0YOU+IOY7HTH1KWG+HOR0O%N6/HH8.6ESB0DM*G9GEQM$U1+DLIO.:H B3POTU56IAJI*I1 3.78$ERD-T$SA9S4N343PJ/7QACER+ACI5L 616A$2";
    pub const ED25519_PUBLIC: &str =
        "745f59045d233c8743a6e9d08d65765cf39cbf57ce6365b65b8500aafff85661";
    pub const ED25519_KEY_ID: &str = "682f01f85c7e705c";
    pub const ED25519_CODE: &str = "ISQ2:VD0I.5+HVD:FKSBKWGLCOGZ0ZA8:+NY7U0PU1R7LRD-I5XLMF306N2.IOSSA.KUXQK366CSMBPPY4K-P1H8C$BH-AFOEWL:0/IE/5UD34Z9NACT/8J90";
    pub const STEP: u32 = 59_000_000;
    #[cfg(feature = "verify")]
    const ES256_PKCS8: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420c6fe0270f169eb1be869bfac30d64931888b8b6771011e3ddc602aff0d5995eba14403420004f51b66ce01e5a7fffef999ae5affbadf12d994871806a01d0da3c1f04d5643ea3429a5063750016d6ad08c8fc06cd68c7fa668a99ca345a8bb503ab95f9ff1a3";
    const NOW_MS: i64 = STEP as i64 * 30_000 + 10_000;

    #[test]
    fn base45_matches_rfc_9285() {
        for (raw, text) in [
            (&b"AB"[..], "BB8"),
            (b"Hello!!", "%69 VD92EX0"),
            (b"base-45", "UJCLQE7W581"),
            (b"ietf!", "QED8WEX0"),
            (b"", ""),
        ] {
            assert_eq!(base45::encode(raw), text);
            assert_eq!(base45::decode(text).as_deref(), Some(raw));
        }
        // RFC 9285 §6: "GGW" is 65535 + 1 and must be refused; lower case is not Base45.
        assert_eq!(base45::decode("GGW"), None);
        assert_eq!(base45::decode("bb8"), None);
        assert_eq!(base45::decode("B"), None);
    }

    #[test]
    fn the_vectors_parse_to_their_key_ids_and_step_and_fit_a_version_5_qr_code() {
        for (code, public, kid) in [
            (ES256_CODE, ES256_PUBLIC, ES256_KEY_ID),
            (ED25519_CODE, ED25519_PUBLIC, ED25519_KEY_ID),
        ] {
            assert_eq!(code.len(), MAX_LEN);
            let parsed = parse(&format!("{code}\r\n")).unwrap();
            assert_eq!(hex::encode(parsed.key_id), kid);
            assert_eq!(hex::encode(key_id(&hex::decode(public).unwrap())), kid);
            assert_eq!(parsed.step, STEP);
            assert_eq!(encode(&parsed.key_id, parsed.step, &parsed.signature), code);
        }
    }

    #[cfg(feature = "verify")]
    #[test]
    fn the_vectors_verify_and_every_alteration_is_refused() {
        for (code, public, alg) in [
            (ES256_CODE, ES256_PUBLIC, Algorithm::Es256),
            (ED25519_CODE, ED25519_PUBLIC, Algorithm::Ed25519),
        ] {
            let public = hex::decode(public).unwrap();
            let parsed = parse(code).unwrap();
            assert_eq!(parsed.verify(alg, &public, NOW_MS), Ok(()));
            let mut other_step = parsed.clone();
            other_step.step += 1;
            assert_eq!(
                other_step.verify(alg, &public, NOW_MS),
                Err(CodeError::BadSignature)
            );
            let mut flipped = parsed.clone();
            flipped.signature[10] ^= 1;
            assert_eq!(
                flipped.verify(alg, &public, NOW_MS),
                Err(CodeError::BadSignature)
            );
            // The other vector's key: a different key id, so not this member's device.
            let wrong_alg = if alg == Algorithm::Es256 {
                Algorithm::Ed25519
            } else {
                Algorithm::Es256
            };
            assert!(parsed.verify(wrong_alg, &public, NOW_MS).is_err());
        }
        let es = parse(ES256_CODE).unwrap();
        let ed_key = hex::decode(ED25519_PUBLIC).unwrap();
        assert_eq!(
            es.verify(Algorithm::Ed25519, &ed_key, NOW_MS),
            Err(CodeError::UnknownKey)
        );
    }

    #[cfg(feature = "verify")]
    #[test]
    fn a_generated_device_signs_codes_that_verify_and_survive_its_pkcs8() {
        for alg in [Algorithm::Es256, Algorithm::Ed25519] {
            let d = DeviceSigner::generate(alg).unwrap();
            let again = DeviceSigner::from_pkcs8(alg, d.pkcs8()).unwrap();
            assert_eq!(again.public_key(), d.public_key());
            let code = again.code_at(NOW_MS).unwrap();
            assert_eq!(code.len(), MAX_LEN);
            let parsed = parse(&code).unwrap();
            assert_eq!(parsed.key_id, d.key_id());
            assert_eq!(parsed.verify(alg, &d.public_key(), NOW_MS), Ok(()));
            let other = DeviceSigner::generate(alg).unwrap();
            assert_eq!(
                parsed.verify(alg, &other.public_key(), NOW_MS),
                Err(CodeError::UnknownKey)
            );
        }
        // The Python vector's private key loads and gives the vector's public key, from its
        // PKCS#8 and from the bare scalar in it.
        let der = hex::decode(ES256_PKCS8).unwrap();
        let d = DeviceSigner::from_pkcs8(Algorithm::Es256, &der).unwrap();
        assert_eq!(hex::encode(d.public_key()), ES256_PUBLIC);
        let scalar: [u8; 32] = der[36..68].try_into().unwrap();
        let bare = DeviceSigner::from_secret_bytes(Algorithm::Es256, &scalar).unwrap();
        assert_eq!(hex::encode(bare.public_key()), ES256_PUBLIC);
        let seed = DeviceSigner::from_secret_bytes(Algorithm::Ed25519, &[7; 32]).unwrap();
        assert_eq!(seed.public_key().len(), 32);
    }

    #[test]
    fn the_window_is_a_minute_back_and_half_a_minute_ahead() {
        let c = parse(ES256_CODE).unwrap();
        let at = |step: i64| step * 30_000 + 1;
        let s = i64::from(STEP);
        assert_eq!(c.check_time(at(s)), Ok(()));
        assert_eq!(c.check_time(at(s + 2)), Ok(()));
        assert_eq!(
            c.check_time(at(s + 3)),
            Err(CodeError::Expired { age_s: 90 })
        );
        assert_eq!(c.check_time(at(s - 1)), Ok(()));
        assert_eq!(
            c.check_time(at(s - 2)),
            Err(CodeError::Future { ahead_s: 60 })
        );
    }

    #[test]
    fn malformed_codes_get_typed_errors() {
        assert_eq!(parse(""), Err(CodeError::Format));
        assert_eq!(parse("ISQ1.M1.1.00"), Err(CodeError::Format));
        assert_eq!(parse("ISQ2:BB8"), Err(CodeError::Length(8)));
        let lower = ES256_CODE.replacen('8', "a", 1);
        assert_eq!(parse(&lower), Err(CodeError::Base45));
        let mut bytes = vec![3u8];
        bytes.extend_from_slice(&[0; CODE_BYTES - 1]);
        let v3 = format!("{PREFIX}{}", base45::encode(&bytes));
        assert_eq!(parse(&v3), Err(CodeError::Version(3)));
        assert!(is_signed_code(" ISQ2:x") && !is_signed_code("ISQ1.M1.2.3"));
        assert!(check_public_key(Algorithm::Es256, &[4; 65]).is_ok());
        assert!(check_public_key(Algorithm::Es256, &[2; 65]).is_err());
        assert!(check_public_key(Algorithm::Ed25519, &[4; 65]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_parses_or_errors_without_panicking(s in "\\PC{0,200}") {
            let _ = parse(&s);
            let _ = base45::decode(&s);
        }

        #[test]
        fn base45_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            proptest::prop_assert_eq!(base45::decode(&base45::encode(&data)), Some(data));
        }
    }
}
