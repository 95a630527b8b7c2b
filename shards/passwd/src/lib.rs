//! Password files as Mosquitto writes them: one `username:hash` per line, the hash in one of
//! the formats of `mosquitto_passwd`:
//!
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 (Mosquitto 2.0's default, 101 iterations,
//!   12-byte salt, 64-byte hash, both in standard base64);
//! - `$6$SALT$HASH`: SHA-512 of the password followed by the salt (Mosquitto 1.x);
//! - `$argon2id$v=19$m=...,t=...,p=...$SALT$HASH`: a PHC string (Mosquitto 2.1).
//!
//! Verification is deliberately slow for the slow formats, so the broker runs it off the shard
//! threads; [`PasswordFile::verify`] also spends the same work on an unknown user as on a
//! known one, so that timing does not tell which usernames exist.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::fmt;
use subtle::ConstantTimeEq;

/// Standard base64, written with padding, read with or without it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `mosquitto_passwd`'s iteration count for `$7$`, kept so that files stay interchangeable.
pub const MOSQUITTO_ITERATIONS: u32 = 101;
/// Above this a `$7$` line is refused: one login would take seconds of CPU.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Bounds on `$argon2id$` costs read from a file (256 MiB and 64 passes per login).
pub const MAX_ARGON2_KIB: u32 = 256 * 1024;
pub const MAX_ARGON2_PASSES: u32 = 64;
const SALT_LEN: usize = 12;
const PBKDF2_LEN: usize = 64;

/// One user's stored password.
#[derive(Clone, PartialEq, Eq)]
pub enum Hash {
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// The PHC string, checked to parse when read.
    Argon2id(String),
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hash itself: it ends up in logs.
        match self {
            Hash::Pbkdf2Sha512 { iterations, .. } => write!(f, "$7$ ({iterations} iterations)"),
            Hash::Sha512 { .. } => write!(f, "$6$"),
            Hash::Argon2id(_) => write!(f, "$argon2id$"),
        }
    }
}

impl Hash {
    /// Parses the part of a line after `username:`.
    pub fn parse(s: &str) -> Result<Hash, String> {
        if s.starts_with("$argon2id$") {
            let phc =
                argon2::PasswordHash::new(s).map_err(|e| format!("bad $argon2id$ string: {e}"))?;
            let params = argon2::Params::try_from(&phc)
                .map_err(|e| format!("bad $argon2id$ parameters: {e}"))?;
            if params.m_cost() > MAX_ARGON2_KIB || params.t_cost() > MAX_ARGON2_PASSES {
                return Err(format!(
                    "$argon2id$ costs above m={MAX_ARGON2_KIB},t={MAX_ARGON2_PASSES} are refused \
                     (one login would hold that much memory and time)"
                ));
            }
            if phc.hash.is_none() || phc.salt.is_none() {
                return Err("a $argon2id$ string needs a salt and a hash".into());
            }
            return Ok(Hash::Argon2id(s.to_owned()));
        }
        let fields: Vec<&str> = s.split('$').collect();
        let b64 = |what: &str, v: &str| {
            B64.decode(v)
                .map_err(|e| format!("{what} is not base64: {e}"))
        };
        match fields.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_ITERATIONS).contains(n))
                    .ok_or_else(|| format!("bad $7$ iteration count {iterations:?}"))?;
                let salt = b64("salt", salt)?;
                let hash = b64("hash", hash)?;
                if salt.is_empty() || hash.len() != PBKDF2_LEN {
                    return Err(format!(
                        "a $7$ hash has {PBKDF2_LEN} bytes and a salt (got {} and {})",
                        hash.len(),
                        salt.len()
                    ));
                }
                Ok(Hash::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash,
                })
            }
            ["", "6", salt, hash] => {
                let salt = b64("salt", salt)?;
                let hash = b64("hash", hash)?;
                if salt.is_empty() || hash.len() != 64 {
                    return Err("a $6$ hash has 64 bytes and a salt".into());
                }
                Ok(Hash::Sha512 { salt, hash })
            }
            _ => Err("not a $7$, $6$ or $argon2id$ password hash".into()),
        }
    }

    /// A new `$7$` hash with a fresh random salt.
    pub fn pbkdf2(password: &[u8], iterations: u32) -> Hash {
        let salt = random_salt();
        let mut hash = vec![0u8; PBKDF2_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
        Hash::Pbkdf2Sha512 {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// A new `$argon2id$` hash with the argon2 crate's defaults (19 MiB, 2 passes, 1 lane:
    /// OWASP's minimum for passwords people choose).
    pub fn argon2id(password: &[u8]) -> Hash {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(&random_salt()).expect("12 bytes are a valid salt");
        let phc = argon2::Argon2::default()
            .hash_password(password, &salt)
            .expect("the default parameters are valid")
            .to_string();
        Hash::Argon2id(phc)
    }

    /// Whether `password` is the one hashed; comparisons take constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut got = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut got);
                bool::from(got.ct_eq(hash))
            }
            Hash::Sha512 { salt, hash } => {
                let got = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                bool::from(got.as_slice().ct_eq(hash))
            }
            Hash::Argon2id(phc) => {
                use argon2::password_hash::PasswordVerifier;
                let Ok(parsed) = argon2::PasswordHash::new(phc) else {
                    return false;
                };
                argon2::Argon2::default()
                    .verify_password(password, &parsed)
                    .is_ok()
            }
        }
    }

    /// A hash of the same kind and cost that no password matches: what an unknown user is
    /// checked against.
    fn decoy(&self) -> Hash {
        match self {
            Hash::Pbkdf2Sha512 { iterations, .. } => Hash::Pbkdf2Sha512 {
                iterations: *iterations,
                salt: random_salt().to_vec(),
                hash: vec![0; PBKDF2_LEN],
            },
            Hash::Sha512 { .. } => Hash::Sha512 {
                salt: random_salt().to_vec(),
                hash: vec![0; 64],
            },
            Hash::Argon2id(_) => {
                // Same parameters, a password nobody knows.
                let mut secret = [0u8; 32];
                fill_random(&mut secret);
                let h = Hash::argon2id(&secret);
                match (self, &h) {
                    (Hash::Argon2id(mine), Hash::Argon2id(_)) => {
                        let params = argon2::PasswordHash::new(mine)
                            .ok()
                            .and_then(|p| argon2::Params::try_from(&p).ok());
                        match params {
                            Some(params) => argon2_with(&secret, params),
                            None => h,
                        }
                    }
                    _ => h,
                }
            }
        }
    }
}

fn argon2_with(password: &[u8], params: argon2::Params) -> Hash {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&random_salt()).expect("12 bytes are a valid salt");
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    match a.hash_password(password, &salt) {
        Ok(h) => Hash::Argon2id(h.to_string()),
        Err(_) => Hash::argon2id(password),
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                B64.encode(salt),
                B64.encode(hash)
            ),
            Hash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            Hash::Argon2id(phc) => f.write_str(phc),
        }
    }
}

fn fill_random(buf: &mut [u8]) {
    // Without an OS random source a salt would be predictable: refuse rather than weaken.
    getrandom::getrandom(buf).expect("the OS random source is available");
}

fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    fill_random(&mut salt);
    salt
}

/// A line of a password file that cannot be used, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The users of a password file.
#[derive(Debug, Default)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// Checked for users not in the file: the cost of the file's first hash.
    decoy: Option<Hash>,
}

impl PasswordFile {
    /// Parses a file's text. Empty lines and lines starting with `#` are skipped; anything
    /// else must be `username:hash`, each username once.
    pub fn parse(text: &str) -> Result<PasswordFile, LineError> {
        let mut users = HashMap::new();
        let mut decoy = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            let err = |message: String| LineError {
                line: i + 1,
                message,
            };
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(err("expected username:hash".into()));
            };
            if user.is_empty() {
                return Err(err("empty username".into()));
            }
            let hash = Hash::parse(hash.trim()).map_err(err)?;
            if decoy.is_none() {
                decoy = Some(hash.decoy());
            }
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(err(format!("username {user:?} appears twice")));
            }
        }
        Ok(PasswordFile { users, decoy })
    }

    /// Reads and parses `path`; the error names the file (and the line).
    pub fn load(path: &std::path::Path) -> Result<PasswordFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
        PasswordFile::parse(&text).map_err(|e| format!("password file {} {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` exists and `password` is theirs. An unknown user costs the same work.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match (self.users.get(user), &self.decoy) {
            (Some(h), _) => h.verify(password),
            (None, Some(decoy)) => {
                let _ = decoy.verify(password);
                false
            }
            (None, None) => false,
        }
    }
}

/// What `ringmq passwd` does to one user.
pub enum Edit<'a> {
    Set(&'a str, Hash),
    Delete(&'a str),
}

/// Applies an edit to a password file's text, keeping every other line as it was. Returns
/// the new text, or an error when deleting a user who is not there.
pub fn edit(text: &str, edit: Edit<'_>) -> Result<String, String> {
    let user = match &edit {
        Edit::Set(u, _) | Edit::Delete(u) => *u,
    };
    let mut out = String::with_capacity(text.len() + 128);
    let mut found = false;
    for line in text.lines() {
        let is_user =
            !line.starts_with('#') && line.split_once(':').is_some_and(|(u, _)| u == user);
        if !is_user {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        found = true;
        if let Edit::Set(_, h) = &edit {
            out.push_str(&format!("{user}:{h}\n"));
        }
    }
    match edit {
        Edit::Set(_, h) if !found => out.push_str(&format!("{user}:{h}\n")),
        Edit::Delete(_) if !found => return Err(format!("user {user} is not in the file")),
        _ => {}
    }
    Ok(out)
}

/// Whether a username can go in a password file (Mosquitto refuses the same).
pub fn check_username(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty username".into());
    }
    if user.contains(':') || user.contains('\n') || user.contains('\r') {
        return Err("a username must not contain ':' or a line break".into());
    }
    if user.starts_with('#') {
        return Err("a username must not start with '#' (read as a comment)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's mosquitto_passwd 2.0.11: `mosquitto_passwd -c -b pw alice secret`.
    const MOSQUITTO_LINE: &str = "alice:$7$101$8UWW3R79ApwF1WeF$LRnUgUNuRFJROTxq2qGpBQZdtRCR7ZSYSWzDnMt0LPe6NqWk8cQi43kwKFCE+TGf9pw7a++lJRaGJ1UdqecZ3A==";

    #[test]
    fn a_line_from_mosquitto_passwd_verifies() {
        let f = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
        assert!(f.verify("alice", b"secret"));
        assert!(!f.verify("alice", b"secreT"));
        assert!(!f.verify("alice", b""));
        assert!(!f.verify("bob", b"secret"));
    }

    #[test]
    fn every_format_round_trips_and_verifies() {
        for h in [Hash::pbkdf2(b"pw", 3), Hash::argon2id(b"pw"), {
            let salt = random_salt().to_vec();
            let hash = Sha512::new()
                .chain_update(b"pw")
                .chain_update(&salt)
                .finalize()
                .to_vec();
            Hash::Sha512 { salt, hash }
        }] {
            let text = format!("u:{h}\n");
            let f = PasswordFile::parse(&text).unwrap();
            assert!(f.verify("u", b"pw"), "{h:?}");
            assert!(!f.verify("u", b"pW"), "{h:?}");
            assert!(!f.verify("nobody", b"pw"), "{h:?}");
            assert_eq!(Hash::parse(&h.to_string()).unwrap(), h);
        }
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let cases = [
            ("a:$7$101$c2FsdA==$aGFzaA==\n", 1, "64 bytes"),
            ("# c\n\nb\n", 3, "username:hash"),
            ("c:$5$x$y\n", 1, "not a $7$"),
            ("d:$7$0$c2FsdA==$aGFzaA==\n", 1, "iteration"),
            ("e:$7$101$!!$aGFzaA==\n", 1, "base64"),
            ("f:$argon2id$nonsense\n", 1, "argon2id"),
            (":$6$x$y\n", 1, "empty username"),
        ];
        for (text, line, what) in cases {
            let e = PasswordFile::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
        let twice = format!("{MOSQUITTO_LINE}\n{MOSQUITTO_LINE}\n");
        assert_eq!(PasswordFile::parse(&twice).unwrap_err().line, 2);
    }

    #[test]
    fn edits_keep_other_lines() {
        let text = format!("# fleet\n{MOSQUITTO_LINE}\nbob:$6$c2FsdA==$x\n");
        let h = Hash::pbkdf2(b"new", 5);
        let t = edit(&text, Edit::Set("alice", h.clone())).unwrap();
        assert_eq!(t, format!("# fleet\nalice:{h}\nbob:$6$c2FsdA==$x\n"));
        let t = edit(&t, Edit::Set("carol", h.clone())).unwrap();
        assert!(t.ends_with(&format!("carol:{h}\n")));
        let t = edit(&t, Edit::Delete("bob")).unwrap();
        assert!(!t.contains("bob"));
        assert!(edit(&t, Edit::Delete("bob")).is_err());
        assert!(check_username("a:b").is_err() && check_username("#x").is_err());
        assert!(check_username("dev/1").is_ok());
    }

    proptest::proptest! {
        /// No text makes the parser panic, and what it accepts verifies without panicking.
        #[test]
        fn parsing_anything_is_safe(text in "[a-z:$0-9A-Za-z+/=\n#]{0,200}") {
            if let Ok(f) = PasswordFile::parse(&text) {
                let _ = f.verify("a", b"b");
            }
        }
    }
}
