//! What the client commands read and how they end: keys and values from arguments, stdin or a
//! file (as text, hex or base64), durations, and the exit status of a failed command.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use geokv_client::{ClientError, Code};

/// How keys, values and members are written on the command line, in stdin and in files, and
/// how `--output value` prints bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Encoding {
    /// As given (the bytes of the argument; a file's or stdin's bytes exactly).
    #[default]
    Raw,
    Hex,
    Base64,
}

/// A problem with the command's own input, found before anything was sent (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

impl Encoding {
    /// The bytes an argument (a key, a value, a member) stands for.
    pub fn arg(self, what: &str, s: &str) -> anyhow::Result<Vec<u8>> {
        self.decode(what, s.as_bytes())
    }

    /// The bytes of text read from stdin or a file: hex and base64 may be wrapped over lines
    /// and end with a newline.
    pub fn decode(self, what: &str, text: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoding::Raw => Ok(text.to_vec()),
            Encoding::Hex => {
                let digits: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
                if !digits.len().is_multiple_of(2) {
                    return Err(usage(format!("the {what} is not hex: an odd number of digits")));
                }
                digits
                    .chunks(2)
                    .map(|pair| {
                        std::str::from_utf8(pair)
                            .ok()
                            .and_then(|p| u8::from_str_radix(p, 16).ok())
                            .ok_or_else(|| {
                                usage(format!("the {what} is not hex: {:?}", String::from_utf8_lossy(pair)))
                            })
                    })
                    .collect()
            }
            Encoding::Base64 => {
                let chars: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(&chars)
                    .map_err(|e| usage(format!("the {what} is not base64: {e}")))
            }
        }
    }

    /// Bytes as `--output value` prints them: exactly (raw), or encoded with a newline.
    pub fn encode(self, b: &[u8]) -> Vec<u8> {
        match self {
            Encoding::Raw => b.to_vec(),
            Encoding::Hex => format!("{}\n", crate::output::hex(b)).into_bytes(),
            Encoding::Base64 => {
                format!("{}\n", base64::engine::general_purpose::STANDARD.encode(b)).into_bytes()
            }
        }
    }
}

/// A command's value: the argument, or (when it is `-` or missing) stdin, or `file`.
pub fn value(enc: Encoding, arg: Option<&str>, file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut text = Vec::new();
    match (arg, file) {
        (Some(_), Some(_)) => return Err(usage("give the value as an argument or with --file, not both")),
        (Some(a), None) if a != "-" => return enc.arg("value", a),
        (_, Some(path)) => {
            text = std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        }
        (arg, None) => {
            use std::io::IsTerminal;
            if arg.is_none() && std::io::stdin().is_terminal() {
                return Err(usage("no value given: pass it as an argument, `-` for stdin, or --file PATH"));
            }
            std::io::stdin().read_to_end(&mut text).map_err(|e| usage(format!("cannot read stdin: {e}")))?;
        }
    }
    enc.decode("value", &text)
}

/// A duration: `1h30m`, `500ms`, `10s`, `2d` (humantime), or a plain number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_millis(s.parse().map_err(|_| format!("{s:?} is too large"))?)
    } else {
        humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 500ms, 10s, 5m, 1h30m or 2d"))?
    };
    if d.is_zero() {
        return Err("a duration must be positive".into());
    }
    Ok(d)
}

/// Set when a command sent a write that applies twice if sent twice (incr, append, cas, a
/// batch): its failures in transit are [`exit::MAYBE_APPLIED`], not [`exit::UNAVAILABLE`].
pub static UNREPEATABLE_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Exit statuses of the client commands (docs/api.md, "The command line").
pub mod exit {
    /// The command did what it was asked.
    pub const OK: i32 = 0;
    /// A failure no other status describes (an internal error of a node, corrupt data).
    pub const FAILED: i32 = 1;
    /// The command line itself is wrong (flags, arguments, an undecodable or unreadable value,
    /// TLS files): nothing was sent.
    pub const USAGE: i32 = 2;
    /// A conditional write found another version (`cas`), or the node aborted a conflict.
    pub const CONFLICT: i32 = 3;
    /// A node refused the request as invalid: wrong type, sizes over the limits, a key its
    /// region's residency policy keeps elsewhere, a value out of range, a name it does not know.
    pub const REFUSED: i32 = 4;
    /// No node could answer now: unreachable, not enough replicas, a deadline passed, a limit
    /// on load. Retrying later may succeed.
    pub const UNAVAILABLE: i32 = 5;
    /// The credentials are missing or do not allow this.
    pub const DENIED: i32 = 6;
    /// An increment, append, compare-and-swap or batch failed in transit (unavailable, deadline
    /// passed) after it was sent: it may or may not have been applied, and sending it again
    /// may apply it twice. Read the key before retrying.
    pub const MAYBE_APPLIED: i32 = 7;
}

/// The exit status for a failed command.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.is::<UsageError>() || cause.is::<clap::Error>() {
            return exit::USAGE;
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::Endpoint { .. } | ClientError::Tls(_) => exit::USAGE,
                ClientError::Connect { .. } => exit::UNAVAILABLE,
                ClientError::Status(s) => status_exit(s),
                _ => exit::FAILED,
            };
        }
        if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            return status_exit(&geokv_client::grpc::status_of(s));
        }
    }
    exit::FAILED
}

fn status_exit(s: &geokv_client::Status) -> i32 {
    let code = code_exit(s.code());
    let not_applied = s.not_applied();
    if code == exit::UNAVAILABLE
        && !not_applied
        && UNREPEATABLE_SENT.load(std::sync::atomic::Ordering::Relaxed)
    {
        return exit::MAYBE_APPLIED;
    }
    code
}

fn code_exit(code: Code) -> i32 {
    match code {
        Code::Ok => exit::OK,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unimplemented => exit::REFUSED,
        Code::Aborted => exit::CONFLICT,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {
            exit::UNAVAILABLE
        }
        Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
        _ => exit::FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_decode_and_encode_bytes() {
        let b: Vec<u8> = (0..=255).collect();
        for enc in [Encoding::Hex, Encoding::Base64] {
            let text = enc.encode(&b);
            assert_eq!(enc.decode("value", &text).unwrap(), b, "{enc:?}");
        }
        assert_eq!(Encoding::Raw.encode(&b), b);
        assert_eq!(Encoding::Hex.arg("key", "00ff").unwrap(), vec![0, 255]);
        assert_eq!(Encoding::Base64.decode("value", b"AAEC\n/w==\n").unwrap(), vec![0, 1, 2, 255]);
        for (enc, bad) in [(Encoding::Hex, "abc"), (Encoding::Hex, "zz"), (Encoding::Base64, "!!!")] {
            let e = enc.arg("key", bad).unwrap_err();
            assert_eq!(exit_code(&e), exit::USAGE, "{e}");
            assert!(e.to_string().contains("the key is not"), "{e}");
        }
    }

    #[test]
    fn durations_take_units_or_milliseconds() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("1h30m"));
    }

    #[test]
    fn every_status_code_has_an_exit_status() {
        let status = |c| exit_code(&ClientError::Status(geokv_client::Status::new(c, "x")).into());
        assert_eq!(status(Code::FailedPrecondition), exit::REFUSED);
        assert_eq!(status(Code::InvalidArgument), exit::REFUSED);
        assert_eq!(status(Code::Unavailable), exit::UNAVAILABLE);
        assert_eq!(status(Code::DeadlineExceeded), exit::UNAVAILABLE);
        assert_eq!(status(Code::PermissionDenied), exit::DENIED);
        assert_eq!(status(Code::Aborted), exit::CONFLICT);
        assert_eq!(status(Code::Internal), exit::FAILED);
        let connect = ClientError::Connect { endpoint: "x".into(), message: "refused".into() };
        assert_eq!(exit_code(&anyhow::Error::from(connect).context("get")), exit::UNAVAILABLE);
        assert_eq!(exit_code(&anyhow::anyhow!("something else")), exit::FAILED);
        // An increment lost in transit may have been applied; one the coordinator says it did
        // not apply may be sent again.
        UNREPEATABLE_SENT.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(status(Code::DeadlineExceeded), exit::MAYBE_APPLIED);
        let mut refused = tonic::Status::unavailable("quorum not reached");
        refused
            .metadata_mut()
            .insert("geokv-failure", tonic::metadata::MetadataValue::from_static("not-applied"));
        assert_eq!(exit_code(&anyhow::Error::from(refused)), exit::UNAVAILABLE);
        let connect = ClientError::Connect { endpoint: "x".into(), message: "refused".into() };
        assert_eq!(exit_code(&connect.into()), exit::UNAVAILABLE);
        assert_eq!(status(Code::FailedPrecondition), exit::REFUSED);
        UNREPEATABLE_SENT.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}
