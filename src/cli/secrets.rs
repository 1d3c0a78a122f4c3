//! Reading passwords: a TTY prompt (twice for a new one), else
//! `--password-file FILE`, else one line per secret from stdin. Secrets are
//! kept in zeroizing buffers and never echoed or logged.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use zeroize::Zeroizing;

use super::exit::{Exit, Failure};

pub struct SecretReader {
    stdin_lines: Option<std::io::StdinLock<'static>>,
}

fn trim_newline(mut s: Zeroizing<String>) -> Zeroizing<String> {
    while s.ends_with('\n') || s.ends_with('\r') {
        s.pop();
    }
    s
}

impl SecretReader {
    pub fn new() -> Self {
        SecretReader { stdin_lines: None }
    }

    /// Reads one secret. `file` wins; then a TTY prompt; then a stdin line.
    pub fn read(
        &mut self,
        prompt: &str,
        file: Option<&Path>,
        confirm: bool,
    ) -> Result<Zeroizing<String>, Failure> {
        if let Some(path) = file {
            let text =
                Zeroizing::new(std::fs::read_to_string(path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::InvalidData => Failure::new(
                        Exit::Usage,
                        format!("the password in {} is not valid UTF-8", path.display()),
                    ),
                    _ => Failure::new(
                        Exit::Io,
                        format!("cannot read password file {}: {e}", path.display()),
                    ),
                })?);
            let first = Zeroizing::new(text.lines().next().unwrap_or("").to_string());
            return non_empty(first);
        }
        if std::io::stdin().is_terminal() {
            let first = Zeroizing::new(
                rpassword::prompt_password(format!("{prompt}: "))
                    .map_err(|e| Failure::new(Exit::Io, format!("cannot read password: {e}")))?,
            );
            if confirm {
                let again = Zeroizing::new(
                    rpassword::prompt_password(format!("{prompt} (again): ")).map_err(|e| {
                        Failure::new(Exit::Io, format!("cannot read password: {e}"))
                    })?,
                );
                if *first != *again {
                    return Err(Failure::new(Exit::Usage, "the two passwords differ"));
                }
            }
            return non_empty(first);
        }
        let first = non_empty(self.stdin_line()?)?;
        if confirm {
            // A second line, where the caller sent one, must repeat it.
            let again = self.stdin_line()?;
            if !again.is_empty() && *again != *first {
                return Err(Failure::new(Exit::Usage, "the two passwords differ"));
            }
        }
        Ok(first)
    }

    /// The next line of stdin without its newline ("" at the end).
    fn stdin_line(&mut self) -> Result<Zeroizing<String>, Failure> {
        let lines = self
            .stdin_lines
            .get_or_insert_with(|| std::io::stdin().lock());
        let mut line = Zeroizing::new(String::new());
        lines.read_line(&mut line).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Failure::new(Exit::Usage, "the password on stdin is not valid UTF-8")
            }
            _ => Failure::new(Exit::Io, format!("cannot read password from stdin: {e}")),
        })?;
        Ok(trim_newline(line))
    }
}

fn non_empty(s: Zeroizing<String>) -> Result<Zeroizing<String>, Failure> {
    if s.is_empty() {
        Err(Failure::new(Exit::Usage, "no password given (empty input)"))
    } else {
        Ok(s)
    }
}
