//! Connection handshake: version check and mutual authentication by a shared token
//! (HMAC-SHA256 challenge-response). Runs once on each TCP connection before any frame
//! ([`super::proto`]).
//!
//! ```text
//! client → server  Hello      55 bytes
//!   0   4   magic "FCRM"
//!   4   2   version (u16 LE)
//!   6   1   role: 0 = control, 1 = bulk
//!   7   16  session id (the bulk connection repeats the control connection's)
//!   23  32  client nonce
//! server → client  Challenge  70 bytes (only the first 6 if the versions differ)
//!   0   4   magic "FCRM"
//!   4   2   version (u16 LE)
//!   6   32  server nonce
//!   38  32  server proof = HMAC(token, "fastcr-server" ‖ role ‖ session ‖ client nonce ‖ server nonce)
//! client → server  Proof      32 bytes
//!   0   32  client proof = HMAC(token, "fastcr-client" ‖ role ‖ session ‖ client nonce ‖ server nonce)
//! server → client  Verdict    1 byte: 1 = accepted, 0 = rejected (then the server closes)
//! ```
//!
//! The server proves itself first: a client (the migration source) that cannot verify the
//! server's proof stops with [`ProtoError::BadPeerProof`] and sends nothing more than an all-zero
//! proof (so the server reports [`ProtoError::BadToken`] rather than a bare end of stream).
//! Nonces are fresh per connection, and the two proofs use different labels, so no proof can be
//! replayed or reflected. On a version mismatch the server answers with its magic and version
//! only and both sides report [`ProtoError::Version`].
//!
//! Only the handshake is authenticated: frames that follow are neither signed nor encrypted, so
//! run migrations over a trusted network or a tunnel (WireGuard, SSH). See `docs/protocol.md`.
//!
//! **Timeouts** are the caller's: set a read timeout on the socket before
//! [`server_handshake`] (and [`client_handshake`]) so that a silent or slow peer cannot hang it;
//! a timeout surfaces as [`ProtoError::Io`].

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::proto::{ProtoError, read_full};

/// Handshake magic.
pub const MAGIC: [u8; 4] = *b"FCRM";
/// Protocol version spoken by this build; peers must match exactly.
pub const PROTOCOL_VERSION: u16 = 2;
/// Shortest token accepted (bytes, after trimming trailing whitespace).
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest token file read (bytes).
pub const MAX_TOKEN_FILE_LEN: u64 = 64 << 10;

/// Identifies one migration; pairs its control and bulk connections.
pub type SessionId = [u8; 16];

const NONCE_LEN: usize = 32;
const PROOF_LEN: usize = 32;
/// Magic + version: the part of Hello and Challenge that every version keeps.
const PREFIX_LEN: usize = 6;
const HELLO_LEN: usize = PREFIX_LEN + 1 + 16 + NONCE_LEN;
const CHALLENGE_LEN: usize = PREFIX_LEN + NONCE_LEN + PROOF_LEN;
const ACCEPTED: u8 = 1;
const REJECTED: u8 = 0;

type HmacSha256 = Hmac<Sha256>;

/// Which of a migration's two connections this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Metadata, demand-page requests and answers, status.
    Control,
    /// Background page stream.
    Bulk,
}

impl Role {
    fn to_byte(self) -> u8 {
        match self {
            Role::Control => 0,
            Role::Bulk => 1,
        }
    }

    fn from_byte(b: u8) -> Result<Self, ProtoError> {
        match b {
            0 => Ok(Role::Control),
            1 => Ok(Role::Bulk),
            other => Err(ProtoError::Invalid {
                frame: "Hello",
                detail: format!("unknown role {other}"),
            }),
        }
    }
}

/// The shared secret. `Debug` does not show it.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    /// Makes a token of `bytes` with trailing whitespace removed; refuses fewer than
    /// [`MIN_TOKEN_LEN`] bytes with [`ProtoError::WeakToken`].
    pub fn new(mut bytes: Vec<u8>) -> Result<Self, ProtoError> {
        let len = bytes.trim_ascii_end().len();
        bytes.truncate(len);
        if len < MIN_TOKEN_LEN {
            return Err(ProtoError::WeakToken { len });
        }
        Ok(Token(bytes))
    }

    /// HMAC keyed with the token over `label ‖ role ‖ session ‖ client nonce ‖ server nonce`.
    fn mac(
        &self,
        label: &[u8],
        role: Role,
        session: &SessionId,
        client_nonce: &[u8; NONCE_LEN],
        server_nonce: &[u8; NONCE_LEN],
    ) -> Result<HmacSha256, ProtoError> {
        // HMAC takes keys of any length; the error is unreachable.
        let mut m = HmacSha256::new_from_slice(&self.0)
            .map_err(|_| ProtoError::WeakToken { len: self.0.len() })?;
        m.update(label);
        m.update(&[role.to_byte()]);
        m.update(session);
        m.update(client_nonce);
        m.update(server_nonce);
        Ok(m)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes redacted>)", self.0.len())
    }
}

/// Reads the token file at `path` (at most [`MAX_TOKEN_FILE_LEN`] bytes), trims trailing
/// whitespace, and requires at least [`MIN_TOKEN_LEN`] bytes.
pub fn load_token(path: &Path) -> Result<Token, ProtoError> {
    let file_err = |source| ProtoError::TokenFile {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(file_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(file_err)?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_LEN {
        return Err(ProtoError::TokenFileTooLarge {
            path: path.to_owned(),
        });
    }
    Token::new(bytes)
}

fn random<const N: usize>() -> Result<[u8; N], ProtoError> {
    let mut out = [0; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .map_err(|source| ProtoError::Random { source })?;
    Ok(out)
}

/// A fresh random session id.
pub fn new_session_id() -> Result<SessionId, ProtoError> {
    random()
}

fn send<S: Write>(s: &mut S, bytes: &[u8]) -> Result<(), ProtoError> {
    s.write_all(bytes)
        .and_then(|()| s.flush())
        .map_err(|source| ProtoError::Io {
            op: "writing the handshake",
            source,
        })
}

/// Fills `buf`; end of stream is [`ProtoError::Truncated`].
fn recv<S: Read>(s: &mut S, buf: &mut [u8], what: &'static str) -> Result<(), ProtoError> {
    let got = read_full(s, buf).map_err(|source| ProtoError::Io {
        op: "reading the handshake",
        source,
    })?;
    if got < buf.len() {
        return Err(ProtoError::Truncated {
            what,
            expected: buf.len(),
            got,
        });
    }
    Ok(())
}

/// Reads magic + version and checks both. Bytes that are not (a prefix of) the magic are
/// [`ProtoError::NotFastcr`], even if the peer then closes.
fn recv_prefix<S: Read>(s: &mut S, what: &'static str) -> Result<u16, ProtoError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let got = read_full(s, &mut prefix).map_err(|source| ProtoError::Io {
        op: "reading the handshake",
        source,
    })?;
    let magic_got = got.min(MAGIC.len());
    if prefix[..magic_got] != MAGIC[..magic_got] {
        return Err(ProtoError::NotFastcr);
    }
    if got < PREFIX_LEN {
        return Err(ProtoError::Truncated {
            what,
            expected: PREFIX_LEN,
            got,
        });
    }
    Ok(u16::from_le_bytes([prefix[4], prefix[5]]))
}

/// Reads and discards until end of stream, an error (such as the read timeout), or 4 KiB.
fn drain<S: Read>(s: &mut S) {
    let mut sink = [0u8; 256];
    let mut total = 0;
    while total < 4096 {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

fn prefix() -> [u8; PREFIX_LEN] {
    let v = PROTOCOL_VERSION.to_le_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1]]
}

/// Client side (the migration source): announces `role` and `session`, checks the server's
/// proof, then proves itself. Returns once the server has accepted. Nothing but handshake bytes
/// is sent before the server has proven it holds `token`.
pub fn client_handshake<S: Read + Write>(
    s: &mut S,
    token: &Token,
    role: Role,
    session: SessionId,
) -> Result<(), ProtoError> {
    let client_nonce: [u8; NONCE_LEN] = random()?;
    let mut hello = [0u8; HELLO_LEN];
    hello[..PREFIX_LEN].copy_from_slice(&prefix());
    hello[PREFIX_LEN] = role.to_byte();
    hello[PREFIX_LEN + 1..PREFIX_LEN + 17].copy_from_slice(&session);
    hello[PREFIX_LEN + 17..].copy_from_slice(&client_nonce);
    send(s, &hello)?;

    let theirs = recv_prefix(s, "the Challenge")?;
    if theirs != PROTOCOL_VERSION {
        return Err(ProtoError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    let mut rest = [0u8; CHALLENGE_LEN - PREFIX_LEN];
    recv(s, &mut rest, "the Challenge")?;
    let (server_nonce, server_proof) = rest.split_at(NONCE_LEN);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(server_nonce);

    let verify = token.mac(b"fastcr-server", role, &session, &client_nonce, &nonce)?;
    if verify.verify_slice(server_proof).is_err() {
        // Best effort: tells the server why we stop; reveals nothing.
        let _ = send(s, &[0u8; PROOF_LEN]);
        return Err(ProtoError::BadPeerProof);
    }
    let proof = token
        .mac(b"fastcr-client", role, &session, &client_nonce, &nonce)?
        .finalize()
        .into_bytes();
    send(s, &proof)?;

    let mut verdict = [0u8; 1];
    let got = read_full(s, &mut verdict).map_err(|source| ProtoError::Io {
        op: "reading the handshake",
        source,
    })?;
    match (got, verdict[0]) {
        (1, ACCEPTED) => Ok(()),
        (0, _) | (1, REJECTED) => Err(ProtoError::Rejected),
        (_, other) => Err(ProtoError::Invalid {
            frame: "Verdict",
            detail: format!("byte {other}, expected 0 or 1"),
        }),
    }
}

/// Server side (the migration destination): reads the client's Hello, proves itself, checks the
/// client's proof, and returns the connection's role and session id. On a wrong proof it sends
/// the rejection byte and returns [`ProtoError::BadToken`]; drop the connection on any error.
pub fn server_handshake<S: Read + Write>(
    s: &mut S,
    token: &Token,
) -> Result<(Role, SessionId), ProtoError> {
    let theirs = recv_prefix(s, "the Hello")?;
    if theirs != PROTOCOL_VERSION {
        // Tell the client which version we speak, so that both sides report the mismatch, then
        // wait for it to hang up: closing with its Hello unread would reset the connection and
        // could destroy our answer before the client reads it.
        let _ = send(s, &prefix());
        drain(s);
        return Err(ProtoError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    let mut rest = [0u8; HELLO_LEN - PREFIX_LEN];
    recv(s, &mut rest, "the Hello")?;
    let role = Role::from_byte(rest[0])?;
    let mut session = [0u8; 16];
    session.copy_from_slice(&rest[1..17]);
    let mut client_nonce = [0u8; NONCE_LEN];
    client_nonce.copy_from_slice(&rest[17..]);

    let server_nonce: [u8; NONCE_LEN] = random()?;
    let proof = token
        .mac(
            b"fastcr-server",
            role,
            &session,
            &client_nonce,
            &server_nonce,
        )?
        .finalize()
        .into_bytes();
    let mut challenge = [0u8; CHALLENGE_LEN];
    challenge[..PREFIX_LEN].copy_from_slice(&prefix());
    challenge[PREFIX_LEN..PREFIX_LEN + NONCE_LEN].copy_from_slice(&server_nonce);
    challenge[PREFIX_LEN + NONCE_LEN..].copy_from_slice(&proof);
    send(s, &challenge)?;

    let mut client_proof = [0u8; PROOF_LEN];
    recv(s, &mut client_proof, "the Proof")?;
    let verify = token.mac(
        b"fastcr-client",
        role,
        &session,
        &client_nonce,
        &server_nonce,
    )?;
    if verify.verify_slice(&client_proof).is_err() {
        let _ = send(s, &[REJECTED]);
        return Err(ProtoError::BadToken);
    }
    send(s, &[ACCEPTED])?;
    Ok((role, session))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::migrate::proto::{Frame, read_frame, write_frame};

    fn token(s: &str) -> Token {
        Token::new(s.as_bytes().to_vec()).unwrap()
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        (a, b)
    }

    /// Runs the server on one end in a thread and the client on the other.
    fn run(
        server_token: Token,
        client_token: Token,
        role: Role,
        session: SessionId,
    ) -> (
        Result<(Role, SessionId), ProtoError>,
        Result<(), ProtoError>,
    ) {
        let (mut c, mut s) = pair();
        let server = thread::spawn(move || server_handshake(&mut s, &server_token));
        let client = client_handshake(&mut c, &client_token, role, session);
        (server.join().unwrap(), client)
    }

    #[test]
    fn handshake_succeeds_for_both_roles() {
        for role in [Role::Control, Role::Bulk] {
            let session = new_session_id().unwrap();
            let t = token("0123456789abcdef-shared");
            let (server, client) = run(t.clone(), t, role, session);
            client.unwrap();
            assert_eq!(server.unwrap(), (role, session));
        }
    }

    #[test]
    fn frames_flow_after_the_handshake() {
        let (mut c, mut s) = pair();
        let t = token("a-token-of-enough-length");
        let t2 = t.clone();
        let server = thread::spawn(move || {
            let (role, _) = server_handshake(&mut s, &t2).unwrap();
            let mut buf = Vec::new();
            let f = read_frame(&mut s, &mut buf).unwrap();
            (role, f == Frame::ImagesEnd { lazy: true })
        });
        client_handshake(&mut c, &t, Role::Control, [7; 16]).unwrap();
        write_frame(&mut c, &Frame::ImagesEnd { lazy: true }).unwrap();
        assert_eq!(server.join().unwrap(), (Role::Control, true));
    }

    #[test]
    fn wrong_token_fails_on_both_sides() {
        let (server, client) = run(
            token("server-secret-0123456789"),
            token("client-secret-0123456789"),
            Role::Control,
            [1; 16],
        );
        assert!(
            matches!(client, Err(ProtoError::BadPeerProof)),
            "{client:?}"
        );
        assert!(matches!(server, Err(ProtoError::BadToken)), "{server:?}");
    }

    #[test]
    fn client_never_hears_accepted_with_a_wrong_proof() {
        // A server that follows the protocol but whose token differs: the client must stop at
        // the challenge, before sending a real proof or reading a verdict.
        let (mut c, mut s) = pair();
        let server = thread::spawn(move || {
            let t = token("server-secret-0123456789");
            let r = server_handshake(&mut s, &t);
            // Whatever the client sent after the challenge is the all-zero proof, then EOF
            // (or a reset: the client may close with the server's verdict unread).
            let mut tail = Vec::new();
            match s.read_to_end(&mut tail) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("reading the client's tail: {e}"),
            }
            (r, tail)
        });
        let err = client_handshake(
            &mut c,
            &token("client-secret-0123456789"),
            Role::Bulk,
            [2; 16],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer could not prove it holds the token (wrong token?); nothing was sent"
        );
        drop(c);
        let (r, tail) = server.join().unwrap();
        assert!(matches!(r, Err(ProtoError::BadToken)));
        assert!(
            tail.is_empty(),
            "client sent {} bytes after failing",
            tail.len()
        );
    }

    #[test]
    fn impostor_client_is_rejected() {
        // A client that skips verification and sends a forged proof is told "rejected", and the
        // server reports BadToken.
        let (mut c, mut s) = pair();
        let server =
            thread::spawn(move || server_handshake(&mut s, &token("server-secret-0123456789")));
        let mut hello = [0u8; HELLO_LEN];
        hello[..PREFIX_LEN].copy_from_slice(&prefix());
        c.write_all(&hello).unwrap();
        let mut challenge = [0u8; CHALLENGE_LEN];
        c.read_exact(&mut challenge).unwrap();
        c.write_all(&[0x55; PROOF_LEN]).unwrap();
        let mut verdict = Vec::new();
        c.read_to_end(&mut verdict).unwrap();
        assert_eq!(verdict, [REJECTED]);
        assert!(matches!(server.join().unwrap(), Err(ProtoError::BadToken)));
    }

    #[test]
    fn http_peer_is_not_fastcr() {
        // An HTTP client talking to our server.
        let (mut c, mut s) = pair();
        let server = thread::spawn(move || server_handshake(&mut s, &token("0123456789abcdef")));
        c.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let err = server.join().unwrap().unwrap_err();
        assert!(matches!(err, ProtoError::NotFastcr), "{err:?}");
        assert_eq!(err.to_string(), "peer is not a fastcr endpoint");

        // Our client talking to an HTTP server.
        let (mut c, mut s) = pair();
        let http = thread::spawn(move || {
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let err = client_handshake(&mut c, &token("0123456789abcdef"), Role::Control, [0; 16])
            .unwrap_err();
        assert!(matches!(err, ProtoError::NotFastcr), "{err:?}");
        http.join().unwrap();

        // A short non-fastcr greeting followed by a close is still NotFastcr.
        let (mut c, mut s) = pair();
        c.write_all(b"HI").unwrap();
        drop(c);
        let err = server_handshake(&mut s, &token("0123456789abcdef")).unwrap_err();
        assert!(matches!(err, ProtoError::NotFastcr), "{err:?}");
    }

    #[test]
    fn version_mismatch_is_reported_on_both_sides() {
        // A future client against this server.
        let (mut c, mut s) = pair();
        let server = thread::spawn(move || server_handshake(&mut s, &token("0123456789abcdef")));
        let mut hello = [0u8; HELLO_LEN];
        hello[..4].copy_from_slice(&MAGIC);
        hello[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        c.write_all(&hello).unwrap();
        let mut answer = [0u8; PREFIX_LEN];
        c.read_exact(&mut answer).unwrap();
        // The server waits for us to hang up, then closes without sending more.
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut more = Vec::new();
        c.read_to_end(&mut more).unwrap();
        assert!(more.is_empty());
        assert_eq!(
            answer,
            prefix(),
            "server answers with exactly its magic and version"
        );
        assert!(matches!(
            server.join().unwrap(),
            Err(ProtoError::Version { ours, theirs }) if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1
        ));

        // This client against a future server.
        let (mut c, mut s) = pair();
        let server = thread::spawn(move || {
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).unwrap();
            let mut answer = MAGIC.to_vec();
            answer.extend_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
            s.write_all(&answer).unwrap();
        });
        let err = client_handshake(&mut c, &token("0123456789abcdef"), Role::Control, [0; 16])
            .unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Version { ours, theirs } if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "protocol version mismatch: this fastcr speaks version {PROTOCOL_VERSION}, the peer {}",
                PROTOCOL_VERSION + 1
            )
        );
        server.join().unwrap();
    }

    #[test]
    fn bad_role_and_truncated_hello() {
        let (mut c, mut s) = pair();
        let mut hello = [0u8; HELLO_LEN];
        hello[..PREFIX_LEN].copy_from_slice(&prefix());
        hello[PREFIX_LEN] = 9;
        c.write_all(&hello).unwrap();
        let err = server_handshake(&mut s, &token("0123456789abcdef")).unwrap_err();
        assert_eq!(err.to_string(), "invalid Hello frame: unknown role 9");

        let (mut c, mut s) = pair();
        c.write_all(&hello[..20]).unwrap();
        drop(c);
        let err = server_handshake(&mut s, &token("0123456789abcdef")).unwrap_err();
        assert!(
            matches!(
                err,
                ProtoError::Truncated {
                    what: "the Hello",
                    expected: 49,
                    got: 14
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn silent_peer_times_out() {
        let (_c, mut s) = pair();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let err = server_handshake(&mut s, &token("0123456789abcdef")).unwrap_err();
        assert!(matches!(err, ProtoError::Io { .. }), "{err:?}");
    }

    #[test]
    fn tokens() {
        let dir = std::env::temp_dir().join(format!("fastcr-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, b"0123456789abcdef  \n\t\n").unwrap();
        let t = load_token(&good).unwrap();
        assert_eq!(t.0, b"0123456789abcdef");
        let shown = format!("{t:?}");
        assert!(!shown.contains("0123"), "{shown}");

        let weak = dir.join("weak");
        std::fs::write(&weak, b"short-secret\n\n\n\n\n\n\n").unwrap();
        let err = load_token(&weak).unwrap_err();
        assert!(matches!(err, ProtoError::WeakToken { len: 12 }), "{err:?}");
        assert!(matches!(
            Token::new(Vec::new()),
            Err(ProtoError::WeakToken { len: 0 })
        ));

        let huge = dir.join("huge");
        std::fs::write(&huge, vec![b'x'; MAX_TOKEN_FILE_LEN as usize + 1]).unwrap();
        assert!(matches!(
            load_token(&huge),
            Err(ProtoError::TokenFileTooLarge { .. })
        ));

        let err = load_token(&dir.join("missing")).unwrap_err();
        assert!(matches!(err, ProtoError::TokenFile { .. }));
        assert!(err.to_string().starts_with("cannot read token file "));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn session_ids_differ() {
        assert_ne!(new_session_id().unwrap(), new_session_id().unwrap());
    }
}
