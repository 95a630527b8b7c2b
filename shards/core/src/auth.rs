//! MQTT 5 enhanced authentication (section 4.12): the AUTH exchange, with methods that plug in
//! behind [`AuthMethod`]. A CONNECT naming a method that is not configured gets CONNACK 0x8C.
//!
//! One method ships: `RINGMQ-CHALLENGE-SHA256`, a challenge-response over a secret shared by the
//! broker and its clients (`--auth-challenge-secret`): the server answers CONNECT with an AUTH
//! (0x18) carrying a random 32-byte nonce, the client answers with an AUTH (0x18) carrying
//! HMAC-SHA256(secret, client id || nonce), and the server completes with CONNACK 0x00 or
//! refuses with 0x87. The same exchange re-authenticates a connected client (AUTH 0x19).

use crate::env::Entropy;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// What one step of an exchange decided.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// Send AUTH 0x18 (Continue authentication) with this Authentication Data.
    Continue(Vec<u8>),
    /// Authenticated; optional Authentication Data for the CONNACK (or AUTH 0x00).
    Success(Option<Vec<u8>>),
    /// Not authenticated: CONNACK (or DISCONNECT) 0x87 Not authorized.
    Fail,
}

/// The state of one exchange in progress.
pub trait AuthSession: Send {
    /// The client's next AUTH 0x18 Authentication Data.
    fn step(&mut self, data: &[u8]) -> AuthStep;
}

/// An authentication method, shared by every shard.
pub trait AuthMethod: Send + Sync {
    /// The Authentication Method name clients ask for.
    fn name(&self) -> &str;
    /// Starts an exchange for `client_id` with the CONNECT's (or AUTH 0x19's) data; random
    /// challenges come from `entropy`.
    fn start(
        &self,
        client_id: &str,
        data: &[u8],
        entropy: &mut dyn Entropy,
    ) -> (AuthStep, Option<Box<dyn AuthSession>>);
}

/// The configured methods.
#[derive(Clone, Default)]
pub struct AuthMethods(pub Vec<Arc<dyn AuthMethod>>);

impl AuthMethods {
    pub fn find(&self, name: &str) -> Option<&Arc<dyn AuthMethod>> {
        self.0.iter().find(|m| m.name() == name)
    }
}

impl std::fmt::Debug for AuthMethods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|m| m.name()))
            .finish()
    }
}

pub const CHALLENGE_METHOD: &str = "RINGMQ-CHALLENGE-SHA256";

/// Challenge-response over a shared secret (see the module documentation).
pub struct ChallengeSha256 {
    secret: Vec<u8>,
}

impl ChallengeSha256 {
    pub fn new(secret: impl Into<Vec<u8>>) -> ChallengeSha256 {
        ChallengeSha256 {
            secret: secret.into(),
        }
    }

    /// What a client must answer to `nonce`.
    pub fn response(secret: &[u8], client_id: &str, nonce: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(client_id.as_bytes());
        mac.update(nonce);
        mac.finalize().into_bytes().to_vec()
    }
}

struct Challenge {
    secret: Vec<u8>,
    client_id: String,
    nonce: [u8; 32],
}

impl AuthSession for Challenge {
    fn step(&mut self, data: &[u8]) -> AuthStep {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(self.client_id.as_bytes());
        mac.update(&self.nonce);
        // Constant-time comparison.
        if mac.verify_slice(data).is_ok() {
            AuthStep::Success(None)
        } else {
            AuthStep::Fail
        }
    }
}

impl AuthMethod for ChallengeSha256 {
    fn name(&self) -> &str {
        CHALLENGE_METHOD
    }

    fn start(
        &self,
        client_id: &str,
        _data: &[u8],
        entropy: &mut dyn Entropy,
    ) -> (AuthStep, Option<Box<dyn AuthSession>>) {
        let mut nonce = [0u8; 32];
        entropy.fill(&mut nonce);
        let session = Challenge {
            secret: self.secret.clone(),
            client_id: client_id.to_owned(),
            nonce,
        };
        (AuthStep::Continue(nonce.to_vec()), Some(Box::new(session)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_accepts_the_right_answer_only() {
        let m = ChallengeSha256::new("s3cret");
        let mut entropy = crate::env::SplitMix64(7);
        let (step, session) = m.start("dev-1", b"", &mut entropy);
        let AuthStep::Continue(nonce) = step else {
            panic!("{step:?}")
        };
        assert_eq!(nonce.len(), 32);
        let mut session = session.unwrap();
        let wrong = ChallengeSha256::response(b"other", "dev-1", &nonce);
        assert_eq!(session.step(&wrong), AuthStep::Fail);
        let other_id = ChallengeSha256::response(b"s3cret", "dev-2", &nonce);
        assert_eq!(session.step(&other_id), AuthStep::Fail);
        let right = ChallengeSha256::response(b"s3cret", "dev-1", &nonce);
        assert_eq!(session.step(&right), AuthStep::Success(None));
        // A new exchange gets a new nonce.
        let (AuthStep::Continue(n2), _) = m.start("dev-1", b"", &mut entropy) else {
            panic!()
        };
        assert_ne!(nonce, n2);
    }
}
