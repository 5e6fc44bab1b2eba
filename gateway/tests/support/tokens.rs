//! Forging tokens for the attack corpus: our own RSA key (optionally registered with Keycloak so
//! that it is in the realm's JWKS), raw JWT assembly, and tampering.

use std::process::Command;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rsa::{pkcs8::DecodePrivateKey, traits::PublicKeyParts, RsaPrivateKey};
use serde_json::Value;

/// An RSA key pair generated for the test.
pub struct TestKey {
    pub private_pem: String,
    /// base64url modulus, to find the key in a JWKS.
    pub n: String,
}

impl TestKey {
    pub fn generate() -> Self {
        let out = Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .expect("openssl is installed");
        assert!(out.status.success(), "openssl genpkey failed");
        let private_pem = String::from_utf8(out.stdout).unwrap();
        let key = RsaPrivateKey::from_pkcs8_pem(&private_pem).unwrap();
        Self { n: B64.encode(key.n().to_bytes_be()), private_pem }
    }

    /// An RS256 token signed with this key.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).unwrap()).unwrap()
    }
}

/// Splits a compact JWT into decoded header and payload JSON.
pub fn decode_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header = serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
    let payload = serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
    (header, payload)
}

/// A compact JWT from raw parts (no signing).
pub fn assemble(header: &Value, payload: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", B64.encode(header.to_string()), B64.encode(payload.to_string()))
}

/// HS256 over `header.payload` with `secret` as the HMAC key (the key-confusion attack).
pub fn hs256(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let mut h = header.clone();
    h["alg"] = Value::String("HS256".into());
    let mut jwt_header = Header::new(Algorithm::HS256);
    jwt_header.kid = h["kid"].as_str().map(str::to_owned);
    encode(&jwt_header, payload, &EncodingKey::from_secret(secret)).unwrap()
}

/// The realm key `kid`'s public key as PEM, from its JWKS entry.
pub fn public_pem_of(jwks: &Value, kid: &str) -> String {
    use rsa::{pkcs8::EncodePublicKey, BigUint, RsaPublicKey};
    let key = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).expect("kid in JWKS");
    let n = BigUint::from_bytes_be(&B64.decode(key["n"].as_str().unwrap()).unwrap());
    let e = BigUint::from_bytes_be(&B64.decode(key["e"].as_str().unwrap()).unwrap());
    RsaPublicKey::new(n, e).unwrap().to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap()
}

/// Flips one character in the middle of a base64url segment, keeping it valid base64url.
pub fn flip(segment: &str) -> String {
    let mut chars: Vec<char> = segment.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}
