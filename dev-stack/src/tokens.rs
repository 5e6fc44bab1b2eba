//! Token tooling for tests and the benchmark: an RSA key of our own (made by the `openssl` CLI,
//! no RSA code of ours), its JWKS entry, signing, and the raw JWT surgery of the attack corpus.

use std::{io::Write, process::Command};

use anyhow::{ensure, Context};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// An RSA-2048 key pair generated for a test.
pub struct TestKey {
    pub private_pem: String,
    /// base64url modulus, to find the key in a JWKS.
    pub n: String,
    encoding: EncodingKey,
}

impl TestKey {
    pub fn generate() -> Self {
        Self::try_generate().expect("openssl generates an RSA key")
    }

    fn try_generate() -> anyhow::Result<Self> {
        let out = Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .context("openssl is not installed")?;
        ensure!(out.status.success(), "openssl genpkey failed");
        let private_pem = String::from_utf8(out.stdout)?;
        let mut child = Command::new("openssl")
            .args(["rsa", "-noout", "-modulus"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(private_pem.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "openssl rsa -modulus failed");
        let text = String::from_utf8(out.stdout)?;
        let hex = text.trim().strip_prefix("Modulus=").context("unexpected openssl output")?;
        let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16)).collect::<Result<Vec<u8>, _>>()?;
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes())?;
        Ok(Self { private_pem, n: B64.encode(bytes), encoding })
    }

    /// The public half as a JWKS entry (RS256, signing).
    pub fn jwk(&self, kid: &str) -> Value {
        json!({"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": self.n, "e": "AQAB"})
    }

    /// An RS256 token signed with this key.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &self.encoding).expect("RS256 signing")
    }
}

/// Splits a compact JWT into decoded header and payload JSON.
pub fn decode_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header = serde_json::from_slice(&B64.decode(parts.next().unwrap_or_default()).unwrap_or_default()).unwrap_or_default();
    let payload = serde_json::from_slice(&B64.decode(parts.next().unwrap_or_default()).unwrap_or_default()).unwrap_or_default();
    (header, payload)
}

/// A compact JWT from raw parts (no signing).
pub fn assemble(header: &Value, payload: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", B64.encode(header.to_string()), B64.encode(payload.to_string()))
}

/// HS256 over `header.payload` with `secret` as the HMAC key (the key-confusion attack).
pub fn hs256(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let mut jwt_header = Header::new(Algorithm::HS256);
    jwt_header.kid = header["kid"].as_str().map(str::to_owned);
    encode(&jwt_header, payload, &EncodingKey::from_secret(secret)).expect("HS256 signing")
}

/// The JWKS entry `kid` as a SubjectPublicKeyInfo PEM, the form the key-confusion attack uses.
pub fn public_pem_of(jwks: &Value, kid: &str) -> String {
    let keys = jwks["keys"].as_array().map(Vec::as_slice).unwrap_or_default();
    let key = keys.iter().find(|k| k["kid"] == kid).expect("kid in JWKS");
    let field = |name: &str| B64.decode(key[name].as_str().expect("RSA component")).expect("base64url");
    let rsa_key = der(0x30, &[der_uint(&field("n")), der_uint(&field("e"))].concat());
    let mut bits = vec![0u8];
    bits.extend(rsa_key);
    // AlgorithmIdentifier { rsaEncryption, NULL }
    let algorithm = [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let spki = der(0x30, &[algorithm.as_slice(), &der(0x03, &bits)].concat());
    let body = base64::engine::general_purpose::STANDARD.encode(spki);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..=127 => out.push(len as u8),
        128..=255 => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &[0],
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    der(0x02, &content)
}

/// Flips one character in the middle of a base64url segment, keeping it valid base64url.
pub fn flip(segment: &str) -> String {
    let mut chars: Vec<char> = segment.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_pem_is_what_openssl_derives_from_the_private_key() {
        let key = TestKey::generate();
        let ours = public_pem_of(&json!({"keys": [key.jwk("k")]}), "k");
        let mut child = Command::new("openssl")
            .args(["pkey", "-pubout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(key.private_pem.as_bytes()).unwrap();
        let theirs = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(ours, theirs);
    }
}
