//! Signing keys and JSON Web Tokens (RFC 7515, 7517, 7518, 7519, 8037), and sealing keys at
//! rest.
//!
//! Invariants: a key is parsed once, when loaded, and signs with ring's parsed key pair from
//! then on (never re-parsed per token); `kid` is the key's RFC 7638 thumbprint; private keys
//! leave memory only sealed with AES-256-GCM under the operator's encryption key, bound to
//! their `kid` as associated data so a sealed key cannot be swapped for another's.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::UnixTime;
use crate::client::IdTokenAlg;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a {0} key failed")]
    Generate(&'static str),
    #[error("the stored {0} key could not be parsed: {1}")]
    Parse(&'static str, String),
    #[error("signing failed")]
    Sign,
    #[error("a sealed key could not be opened: wrong encryption key, or tampered data")]
    Unseal,
    #[error("encoding a token failed: {0}")]
    Encode(String),
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private signing key, parsed once.
pub struct SigningKey {
    kid: String,
    alg: IdTokenAlg,
    pair: Pair,
    jwk: Value,
    pub created_at: UnixTime,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl SigningKey {
    /// A new key and its PKCS#8 document (to seal and store).
    pub fn generate(alg: IdTokenAlg, now: UnixTime) -> Result<(Self, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            IdTokenAlg::RS256 => rsa_pkcs8()?,
            IdTokenAlg::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyError::Generate("ES256"))?
                    .as_ref()
                    .to_vec()
            }
            IdTokenAlg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| KeyError::Generate("EdDSA"))?
                .as_ref()
                .to_vec(),
        };
        let key = Self::from_pkcs8(alg, &pkcs8, now)?;
        Ok((key, pkcs8))
    }

    pub fn from_pkcs8(alg: IdTokenAlg, der: &[u8], created_at: UnixTime) -> Result<Self, KeyError> {
        let bad = |e: String| KeyError::Parse(alg.as_str(), e);
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let (pair, jwk) = match alg {
            IdTokenAlg::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| bad(e.to_string()))?;
                let public: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                // Members in the lexicographic order RFC 7638 hashes them in.
                let jwk = json!({"e": b64(&public.e), "kty": "RSA", "n": b64(&public.n)});
                (Pair::Rsa(pair), jwk)
            }
            IdTokenAlg::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(|e| bad(e.to_string()))?;
                // Uncompressed point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
                    return Err(bad("unexpected public key length".to_owned()));
                };
                let jwk = json!({"crv": "P-256", "kty": "EC", "x": b64(x), "y": b64(y)});
                (Pair::Ec(pair), jwk)
            }
            IdTokenAlg::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| bad(e.to_string()))?;
                let jwk =
                    json!({"crv": "Ed25519", "kty": "OKP", "x": b64(pair.public_key().as_ref())});
                (Pair::Ed(pair), jwk)
            }
        };
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.to_string().as_bytes()));
        Ok(Self {
            kid,
            alg,
            pair,
            jwk,
            created_at,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> IdTokenAlg {
        self.alg
    }

    /// The public key as a JWK with `kid`, `alg` and `use`, for the JWKS document.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.jwk.clone();
        if let Some(m) = jwk.as_object_mut() {
            m.insert("kid".into(), self.kid.clone().into());
            m.insert("alg".into(), self.alg.as_str().into());
            m.insert("use".into(), "sig".into());
        }
        jwk
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
            Pair::Ec(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Pair::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }

    /// A compact JWS of `claims` with header `{alg, kid, typ}`.
    pub fn sign_jwt(&self, typ: &str, claims: &impl serde::Serialize) -> Result<String, KeyError> {
        let header = json!({"alg": self.alg.as_str(), "kid": self.kid, "typ": typ});
        let header = serde_json::to_vec(&header).map_err(|e| KeyError::Encode(e.to_string()))?;
        let claims = serde_json::to_vec(claims).map_err(|e| KeyError::Encode(e.to_string()))?;
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = self.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(token)
    }

    /// Whether `signature` over `message` was made by this key.
    pub fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        let (alg, public): (&dyn signature::VerificationAlgorithm, &[u8]) = match &self.pair {
            Pair::Rsa(p) => (&signature::RSA_PKCS1_2048_8192_SHA256, p.public().as_ref()),
            Pair::Ec(p) => (&signature::ECDSA_P256_SHA256_FIXED, p.public_key().as_ref()),
            Pair::Ed(p) => (&signature::ED25519, p.public_key().as_ref()),
        };
        signature::UnparsedPublicKey::new(alg, public)
            .verify(message, sig)
            .is_ok()
    }
}

fn rsa_pkcs8() -> Result<Vec<u8>, KeyError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|_| KeyError::Generate("RS256"))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|_| KeyError::Generate("RS256"))?;
    Ok(der.as_bytes().to_vec())
}

/// Seals and opens private keys with AES-256-GCM.
pub struct Sealer(LessSafeKey);

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Result<Self, KeyError> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| KeyError::Unseal)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// base64url(nonce || ciphertext || tag), bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Sign)?;
        let mut data = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| KeyError::Sign)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, KeyError> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| KeyError::Unseal)?;
        if raw.len() < NONCE_LEN {
            return Err(KeyError::Unseal);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Unseal)?;
        let mut data = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| KeyError::Unseal)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(token: &str) -> (Value, Value, Vec<u8>, String) {
        let mut it = token.split('.');
        let (h, c, s) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let dec = |p: &str| URL_SAFE_NO_PAD.decode(p).unwrap();
        (
            serde_json::from_slice(&dec(h)).unwrap(),
            serde_json::from_slice(&dec(c)).unwrap(),
            dec(s),
            format!("{h}.{c}"),
        )
    }

    #[test]
    fn every_algorithm_signs_verifiable_tokens() {
        for alg in [IdTokenAlg::RS256, IdTokenAlg::ES256, IdTokenAlg::EdDSA] {
            let (key, pkcs8) = SigningKey::generate(alg, UnixTime::from_secs(1)).unwrap();
            let token = key.sign_jwt("JWT", &json!({"sub": "x"})).unwrap();
            let (header, claims, sig, signed) = parts(&token);
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["kid"], key.kid());
            assert_eq!(claims["sub"], "x");
            assert!(key.verifies(signed.as_bytes(), &sig), "{alg:?}");
            assert!(!key.verifies(b"other", &sig));
            // Reloaded from storage, it is the same key.
            let again = SigningKey::from_pkcs8(alg, &pkcs8, UnixTime::from_secs(1)).unwrap();
            assert_eq!(again.kid(), key.kid());
            assert!(again.verifies(signed.as_bytes(), &sig));
            let jwk = key.public_jwk();
            assert_eq!(jwk["use"], "sig");
            assert!(jwk.get("d").is_none(), "no private parts in the JWK");
        }
    }

    #[test]
    fn ed25519_thumbprint_matches_rfc_8037() {
        // RFC 8037 appendix A.1/A.3: this public key's RFC 7638 thumbprint.
        let jwk = json!({"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let thumb = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.to_string().as_bytes()));
        assert_eq!(thumb, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn sealed_keys_open_only_with_their_key_and_context() {
        let sealer = Sealer::new(&[7; 32]).unwrap();
        let sealed = sealer.seal(b"private", "kid-1").unwrap();
        assert_eq!(sealer.open(&sealed, "kid-1").unwrap(), b"private");
        assert!(sealer.open(&sealed, "kid-2").is_err());
        assert!(
            Sealer::new(&[8; 32])
                .unwrap()
                .open(&sealed, "kid-1")
                .is_err()
        );
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            sealer
                .open(std::str::from_utf8(&tampered).unwrap(), "kid-1")
                .is_err()
        );
        assert!(sealer.open("!!", "kid-1").is_err());
    }
}
