//! API keys: who may call the HTTP API, and for what. A key reads `onh_<id>_<secret>`: the
//! id is public and finds the stored key; the secret is 32 random bytes, shown once when
//! the key is created and stored only as its SHA-256. Each key holds [`Scopes`]; `admin`
//! implies every other scope. The HTTP side (the middleware, its cache and the rate
//! limit) is `api/auth.rs`.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use rand::RngCore;

use crate::event::{EventId, LocationId, Movement, Source, SourceSystem};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with, so that a leaked key is easy to recognise (secret scanners,
/// logs) and a key of another service is refused before any lookup.
pub const KEY_PREFIX: &str = "onh_";
/// Random bytes of the public id: 48 bits is plenty for a lookup key that is checked for
/// uniqueness by the database.
const ID_BYTES: usize = 6;
/// Random bytes of the secret.
const SECRET_BYTES: usize = 32;
/// The longest key name, in characters.
const NAME_CHARS_MAX: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("unknown scope {0:?}: expected stock:read, movements:write, reservations:write or admin")]
    UnknownScope(String),
    #[error("a key needs at least one scope")]
    NoScope,
    #[error("a key name must be 1 to {NAME_CHARS_MAX} characters, without control characters")]
    InvalidName,
    #[error("not an onhand api key: expected onh_<id>_<secret>")]
    InvalidToken,
    #[error("{0}")]
    InvalidBinding(String),
}

/// The event-id prefixes of onhand's own connectors and reservations. Only a key bound to
/// the source, or an admin key, writes movements under them: otherwise a client could
/// claim an id before the real source sends it (`erp:journal:{n}`), and the real movement
/// would be skipped as a duplicate.
pub const RESERVED_EVENT_ID_PREFIXES: [&str; 5] = ["pos:", "erp:", "wms:", "shopify:", "reservation:"];

/// The one source a key may speak for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Binding {
    /// A store: its tills and its store agent (`pos` and `store-agent` sources of this
    /// instance), its own location, and its POS routes.
    Store(LocationId),
    /// Any other source, by system and instance (`erp:erp-main`, `api:pricing-tool`).
    Source { system: SourceSystem, instance: String },
}

impl Binding {
    /// Reads `store:store-012` or `SYSTEM:INSTANCE` (`erp:erp-main`).
    pub fn parse(text: &str) -> Result<Binding, KeyError> {
        let bad = |m: String| KeyError::InvalidBinding(m);
        let (kind, rest) =
            text.split_once(':').ok_or_else(|| bad(format!("{text:?}: expected store:LOCATION or SYSTEM:INSTANCE")))?;
        if kind == "store" {
            return LocationId::parse(rest).map(Binding::Store).map_err(|e| bad(format!("store: {}", e.message)));
        }
        let system: SourceSystem = serde_json::from_value(serde_json::Value::String(kind.to_string()))
            .map_err(|_| bad(format!("{kind:?} is not a source system (pos, store-agent, shopify, erp, wms, api)")))?;
        // The instance becomes an event-id prefix and a source.instance: the same alphabet.
        LocationId::parse(rest).map_err(|e| bad(format!("instance: {}", e.message)))?;
        Ok(Binding::Source { system, instance: rest.to_string() })
    }

    /// The prefix every event id this key writes must start with.
    pub fn event_id_prefix(&self) -> String {
        match self {
            Binding::Store(store) => format!("pos:{store}:"),
            Binding::Source { system, instance } => format!("{}:{instance}:", system.as_str()),
        }
    }

    pub fn allows_source(&self, source: &Source) -> bool {
        match self {
            Binding::Store(store) => {
                matches!(source.system, SourceSystem::Pos | SourceSystem::StoreAgent)
                    && source.instance == store.as_str()
            }
            Binding::Source { system, instance } => source.system == *system && &source.instance == instance,
        }
    }

    pub fn allows_location(&self, location: &LocationId) -> bool {
        match self {
            Binding::Store(store) => store == location,
            Binding::Source { .. } => true,
        }
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Binding::Store(store) => write!(f, "store:{store}"),
            Binding::Source { system, instance } => write!(f, "{}:{instance}", system.as_str()),
        }
    }
}

/// Why a key may not write a movement through the generic API: a stable code and a
/// message naming what it may write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAllowed {
    pub code: &'static str,
    pub message: String,
}

/// Whether a key with `scopes` and `binding` may write `m` through `POST /v1/movements`.
pub fn may_write(scopes: Scopes, binding: Option<&Binding>, m: &Movement) -> Result<(), NotAllowed> {
    let refuse = |code, message: String| Err(NotAllowed { code, message });
    if let Some(binding) = binding {
        if !binding.allows_source(&m.source) {
            return refuse("source_not_allowed", format!("this key speaks only for {binding}"));
        }
        let prefix = binding.event_id_prefix();
        if !m.event_id.as_str().starts_with(&prefix) {
            return refuse("event_id_not_allowed", format!("this key writes only event ids starting with {prefix:?}"));
        }
        if !binding.allows_location(&m.location) {
            return refuse("location_not_allowed", format!("this key writes only movements of {binding}"));
        }
        return Ok(());
    }
    if !scopes.allows(Scope::Admin) && reserved(&m.event_id) {
        return refuse(
            "event_id_not_allowed",
            format!(
                "event ids starting with {} are onhand's own connectors' and reservations'; bind a key to the \
                 source (onhand keys create --store ... or --source ...) to write them",
                RESERVED_EVENT_ID_PREFIXES.join(", ")
            ),
        );
    }
    Ok(())
}

fn reserved(id: &EventId) -> bool {
    RESERVED_EVENT_ID_PREFIXES.iter().any(|prefix| id.as_str().starts_with(prefix))
}

/// What a key may do. `Admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Stock levels, availability and products.
    StockRead,
    /// `POST /v1/movements`.
    MovementsWrite,
    /// Reservations (holds on stock for a checkout).
    ReservationsWrite,
    /// Catalog and stock policy writes, and everything else.
    Admin,
    /// Orders: checkouts placed, read and cancelled.
    OrdersWrite,
}

impl Scope {
    pub const ALL: [Scope; 5] =
        [Scope::StockRead, Scope::MovementsWrite, Scope::ReservationsWrite, Scope::Admin, Scope::OrdersWrite];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::StockRead => "stock:read",
            Scope::MovementsWrite => "movements:write",
            Scope::ReservationsWrite => "reservations:write",
            Scope::Admin => "admin",
            Scope::OrdersWrite => "orders:write",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, KeyError> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| KeyError::UnknownScope(text.to_string()))
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, never empty once parsed. Shown (and stored) space-separated, as
/// OAuth does.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    pub fn admin() -> Scopes {
        Scopes(Scope::Admin.bit())
    }

    /// Scopes separated by commas or spaces, as `--scopes stock:read,movements:write`.
    pub fn parse(text: &str) -> Result<Scopes, KeyError> {
        let mut bits = 0;
        for name in text.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
            bits |= Scope::parse(name)?.bit();
        }
        if bits == 0 {
            return Err(KeyError::NoScope);
        }
        Ok(Scopes(bits))
    }

    /// Whether these scopes let a key do what `scope` guards.
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.0 & s.bit() != 0)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(" "))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A key as a client presents it: the id that finds it and the secret that proves it.
/// Its `Debug` leaves the secret out, so that a logged token leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: [u8; SECRET_BYTES],
}

impl Token {
    /// A new random key.
    pub fn generate() -> Token {
        let mut rng = rand::rng();
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        Token { id: hex::encode(id), secret }
    }

    /// Checks the shape of `onh_<id>_<secret>`: both parts lower-case hex of the right
    /// length. Nothing else is looked at, so a malformed key never reaches the database.
    pub fn parse(text: &str) -> Result<Token, KeyError> {
        let rest = text.strip_prefix(KEY_PREFIX).ok_or(KeyError::InvalidToken)?;
        let (id, secret) = rest.split_once('_').ok_or(KeyError::InvalidToken)?;
        let lower_hex =
            |s: &str, bytes: usize| s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lower_hex(id, ID_BYTES) || !lower_hex(secret, SECRET_BYTES) {
            return Err(KeyError::InvalidToken);
        }
        let mut decoded = [0u8; SECRET_BYTES];
        hex::decode_to_slice(secret, &mut decoded).map_err(|_| KeyError::InvalidToken)?;
        Ok(Token { id: id.to_string(), secret: decoded })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as the client sends it. Only for showing it once, at creation.
    pub fn reveal(&self) -> String {
        format!("{KEY_PREFIX}{}_{}", self.id, hex::encode(self.secret))
    }

    fn secret_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A key as stored: never its secret, only the secret's SHA-256. A slow password hash
/// (argon2, bcrypt) would add nothing: it protects guessable secrets, and 32 random bytes
/// cannot be guessed, so one SHA-256 is as strong and keeps verification cheap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scopes: Scopes,
    pub secret_sha256: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The one source this key may speak for, if it is bound to one.
    pub bound_to: Option<Binding>,
}

impl ApiKey {
    /// The stored form of `token`. The name is checked here, at the edge.
    pub fn new(token: &Token, name: &str, scopes: Scopes) -> Result<ApiKey, KeyError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > NAME_CHARS_MAX || name.chars().any(char::is_control) {
            return Err(KeyError::InvalidName);
        }
        Ok(ApiKey {
            id: token.id.clone(),
            name: name.to_string(),
            scopes,
            secret_sha256: token.secret_sha256(),
            created_at: Utc::now().trunc_subsecs(6),
            revoked_at: None,
            bound_to: None,
        })
    }

    /// Whether `token` is this key and the key is not revoked. The hashes are compared in
    /// constant time, so that timing tells nothing about how much of a guess was right.
    pub fn verifies(&self, token: &Token) -> bool {
        let same_secret: bool = self.secret_sha256.ct_eq(&token.secret_sha256()).into();
        same_secret && self.id == token.id && self.revoked_at.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_and_verifies() {
        let token = Token::generate();
        let text = token.reveal();
        assert!(text.starts_with("onh_") && text.len() == 4 + 12 + 1 + 64, "{text}");
        let parsed = Token::parse(&text).unwrap();
        assert_eq!(parsed, token);
        let key = ApiKey::new(&token, "pos sync", Scopes::admin()).unwrap();
        assert!(key.verifies(&parsed));
        assert!(!format!("{token:?}").contains(&text[17..]), "Debug shows no secret");
    }

    #[test]
    fn a_wrong_or_revoked_key_does_not_verify() {
        let token = Token::generate();
        let mut key = ApiKey::new(&token, "k", Scopes::admin()).unwrap();
        let mut other = token.reveal();
        other.replace_range(other.len() - 1.., if other.ends_with('0') { "1" } else { "0" });
        assert!(!key.verifies(&Token::parse(&other).unwrap()));
        key.revoked_at = Some(Utc::now());
        assert!(!key.verifies(&token));
    }

    #[test]
    fn malformed_keys_are_refused_by_shape() {
        let good = Token::generate().reveal();
        let cases = [
            String::new(),
            good.replacen("onh_", "sk_", 1),
            good.replacen('_', "", 2),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_string(),
            good.replacen(&good[4..6], "zz", 1),
        ];
        for case in cases {
            assert_eq!(Token::parse(&case), Err(KeyError::InvalidToken), "{case}");
        }
    }

    #[test]
    fn admin_implies_every_scope_and_others_only_themselves() {
        for scope in Scope::ALL {
            assert!(Scopes::admin().allows(scope), "admin allows {scope}");
        }
        let reader = Scopes::parse("stock:read").unwrap();
        assert!(reader.allows(Scope::StockRead));
        assert!(!reader.allows(Scope::MovementsWrite));
        assert!(!reader.allows(Scope::Admin));
        let writer = Scopes::parse("movements:write, reservations:write").unwrap();
        assert!(writer.allows(Scope::ReservationsWrite) && !writer.allows(Scope::StockRead));
    }

    #[test]
    fn scopes_parse_and_show_in_one_order() {
        let scopes = Scopes::parse("admin,stock:read stock:read").unwrap();
        assert_eq!(scopes.to_string(), "stock:read admin");
        assert_eq!(Scopes::parse(&scopes.to_string()), Ok(scopes));
        assert_eq!(Scopes::parse(" , "), Err(KeyError::NoScope));
        assert_eq!(Scopes::parse("stock:write"), Err(KeyError::UnknownScope("stock:write".into())));
    }

    #[test]
    fn key_names_are_checked() {
        let token = Token::generate();
        assert_eq!(ApiKey::new(&token, "  ", Scopes::admin()), Err(KeyError::InvalidName));
        assert_eq!(ApiKey::new(&token, "a\nb", Scopes::admin()), Err(KeyError::InvalidName));
        assert_eq!(ApiKey::new(&token, &"n".repeat(101), Scopes::admin()), Err(KeyError::InvalidName));
        assert_eq!(ApiKey::new(&token, " dev ", Scopes::admin()).unwrap().name, "dev");
    }
}
