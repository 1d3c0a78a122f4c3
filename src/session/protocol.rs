//! The control socket's protocol, both ends, as types: one request per
//! connection. The wire format is the one every build so far speaks (a
//! daemon left mounted for months must still understand the next build's
//! commands): a command line (`status`, `scrub`, `lock`, `shutdown`,
//! `unlock`, `convert [MAX_RATE]`, `convert-rate MAX_RATE`, `import`);
//! `unlock` and `convert` are followed by one password line, `import` by
//! the source and destination lines; the answer is one line, `ok TEXT` or
//! `err CODE MESSAGE` (CODE: an exit code, see `crate::exit`).
//!
//! Invariant: password lines never pass through anything but `Zeroizing`
//! buffers on either end.

use std::io::BufRead;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::exit::{Exit, Failure};

/// A request as read, with its password line if it takes one.
pub type Received = (Request, Option<Zeroizing<String>>);

/// What a client asks the daemon.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Scrub,
    Lock,
    Shutdown,
    /// With the password line.
    Unlock,
    /// Switch to the keystore's newest key and convert (with the password
    /// line); `max_rate` in bytes per second.
    Convert {
        max_rate: Option<u64>,
    },
    ConvertRate {
        max_rate: u64,
    },
    /// Copy the tree at `source` to `dest` inside the mount (both
    /// absolute; neither may hold a newline).
    Import {
        source: PathBuf,
        dest: PathBuf,
    },
}

impl Request {
    /// Whether a password line follows the command.
    pub fn takes_password(&self) -> bool {
        matches!(self, Request::Unlock | Request::Convert { .. })
    }

    /// The request's lines, the password line included when it takes one.
    pub fn encode(&self, password: Option<&str>) -> Zeroizing<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let mut out = Zeroizing::new(Vec::new());
        let command = match self {
            Request::Status => "status".to_string(),
            Request::Scrub => "scrub".into(),
            Request::Lock => "lock".into(),
            Request::Shutdown => "shutdown".into(),
            Request::Unlock => "unlock".into(),
            Request::Convert { max_rate: None } => "convert".into(),
            Request::Convert { max_rate: Some(r) } => format!("convert {r}"),
            Request::ConvertRate { max_rate } => format!("convert-rate {max_rate}"),
            Request::Import { .. } => "import".into(),
        };
        out.extend_from_slice(command.as_bytes());
        out.push(b'\n');
        if let Request::Import { source, dest } = self {
            for p in [source, dest] {
                out.extend_from_slice(p.as_os_str().as_bytes());
                out.push(b'\n');
            }
        }
        if self.takes_password() {
            out.extend_from_slice(password.unwrap_or("").as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Reads one request (and its password line); Err(Failure) for a
    /// command this build does not know.
    pub fn read(reader: &mut impl BufRead) -> std::io::Result<Result<Received, Failure>> {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let request = match Request::parse(line.trim()) {
            Ok(Request::Import { .. }) => {
                let source = read_path(reader)?;
                let dest = read_path(reader)?;
                Request::Import { source, dest }
            }
            Ok(r) => r,
            Err(f) => return Ok(Err(f)),
        };
        let password = match request.takes_password() {
            true => Some(read_password(reader)?),
            false => None,
        };
        Ok(Ok((request, password)))
    }

    fn parse(command: &str) -> Result<Request, Failure> {
        let (word, arg) = command.split_once(' ').unwrap_or((command, ""));
        let arg = arg.trim();
        let number = |what: &str| {
            arg.parse::<u64>()
                .map_err(|_| Failure::new(Exit::Usage, format!("{what} needs a number")))
        };
        Ok(match word {
            "status" => Request::Status,
            "scrub" => Request::Scrub,
            "lock" => Request::Lock,
            "shutdown" => Request::Shutdown,
            "unlock" => Request::Unlock,
            "convert" if arg.is_empty() => Request::Convert { max_rate: None },
            "convert" => Request::Convert {
                max_rate: arg.parse().ok(),
            },
            "convert-rate" => Request::ConvertRate {
                max_rate: number("convert-rate")?,
            },
            "import" => Request::Import {
                source: PathBuf::new(),
                dest: PathBuf::new(),
            },
            _ => {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("unknown control command {command:?}"),
                ))
            }
        })
    }
}

fn read_path(reader: &mut impl BufRead) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut bytes = Vec::new();
    reader.read_until(b'\n', &mut bytes)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

fn read_password(reader: &mut impl BufRead) -> std::io::Result<Zeroizing<String>> {
    let mut pw = Zeroizing::new(String::new());
    reader.read_line(&mut pw)?;
    while pw.ends_with('\n') || pw.ends_with('\r') {
        pw.pop();
    }
    Ok(pw)
}

/// The answer line of a request's outcome.
pub fn encode_reply(r: &Result<String, Failure>) -> String {
    match r {
        Ok(s) => format!("ok {s}\n"),
        Err(f) => format!("err {} {}\n", f.code as i32, f.message),
    }
}

/// A request's outcome from its answer line.
pub fn decode_reply(line: &str) -> Result<String, Failure> {
    let line = line.trim_end();
    if let Some(ok) = line.strip_prefix("ok ") {
        return Ok(ok.to_string());
    }
    let rest = line.strip_prefix("err ").unwrap_or(line);
    let (code, message) = rest.split_once(' ').unwrap_or(("1", rest));
    let code = match code.parse() {
        Ok(0) | Err(_) => Exit::Error,
        Ok(c) => Exit::from_code(c),
    };
    Err(Failure::new(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: Request, pw: Option<&str>) -> (Request, Option<String>) {
        let wire = r.encode(pw);
        let (got, pw) = Request::read(&mut &wire[..]).unwrap().unwrap();
        (got, pw.map(|p| p.to_string()))
    }

    #[test]
    fn every_request_reads_back_as_it_was_sent() {
        let import = Request::Import {
            source: PathBuf::from("/src/a b"),
            dest: PathBuf::from("/mnt/x"),
        };
        for (r, pw) in [
            (Request::Status, None),
            (Request::Scrub, None),
            (Request::Lock, None),
            (Request::Shutdown, None),
            (Request::Unlock, Some("pass word")),
            (Request::Convert { max_rate: None }, Some("pw")),
            (Request::Convert { max_rate: Some(5) }, Some("pw")),
            (Request::ConvertRate { max_rate: 7 }, None),
            (import, None),
        ] {
            let expected = (format!("{r:?}"), pw.map(String::from));
            let (got, got_pw) = round_trip(r, pw);
            assert_eq!((format!("{got:?}"), got_pw), expected);
        }
    }

    #[test]
    fn the_wire_format_is_what_earlier_builds_speak() {
        let wire = Request::Convert { max_rate: Some(9) }.encode(Some("secret"));
        assert_eq!(&wire[..], b"convert 9\nsecret\n");
        assert_eq!(
            &Request::ConvertRate { max_rate: 3 }.encode(None)[..],
            b"convert-rate 3\n"
        );
        // "convert-rate" is not "convert" with an argument.
        let (r, _) = Request::read(&mut &b"convert-rate 3\n"[..])
            .unwrap()
            .unwrap();
        assert_eq!(r, Request::ConvertRate { max_rate: 3 });
        let unknown = Request::read(&mut &b"frobnicate\n"[..])
            .unwrap()
            .unwrap_err();
        assert_eq!(unknown.code, Exit::Usage);
    }

    #[test]
    fn replies_carry_every_exit_code() {
        assert_eq!(
            decode_reply(&encode_reply(&Ok("fine".into()))).unwrap(),
            "fine"
        );
        for code in [
            Exit::Locked,
            Exit::Refused,
            Exit::Damaged,
            Exit::WrongPassword,
        ] {
            let line = encode_reply(&Err(Failure::new(code, "why not")));
            let f = decode_reply(&line).unwrap_err();
            assert_eq!((f.code, f.message.as_str()), (code, "why not"));
        }
    }
}
