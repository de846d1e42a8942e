//! Plain line prompts for setup steps: a question, the default in brackets, one line of
//! answer. They work on any terminal (a Pi over SSH, tmux, a serial console) and read
//! nothing but lines, so a script can answer them too.
//!
//! Every question a step asks has a command-line flag; a flag's value is taken without
//! asking. Without a terminal (or with `--yes`) a [`Prompter`] never asks: it takes the
//! default, and a question without a default is an error naming the flag to give.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

use super::SetupError;

/// Where answers come from (stdin for the CLI), shared with a step that reads a line itself.
pub type Input = Arc<Mutex<Box<dyn BufRead + Send>>>;

pub struct Prompter<'a> {
    input: Input,
    out: &'a mut (dyn Write + Send),
    interactive: bool,
}

impl<'a> Prompter<'a> {
    /// `interactive`: questions are asked on `out` and answered on `input`; otherwise the
    /// defaults are taken.
    pub fn new(input: Box<dyn BufRead + Send>, out: &'a mut (dyn Write + Send), interactive: bool) -> Self {
        Self { input: Arc::new(Mutex::new(input)), out, interactive }
    }

    /// A reader of one line of the same input, for a step that asks by itself (the
    /// server login's pasted address).
    pub fn line_reader(&self) -> impl FnOnce() -> std::io::Result<String> + Send + 'static {
        let input = self.input.clone();
        move || {
            let mut line = String::new();
            input.lock().unwrap_or_else(|p| p.into_inner()).read_line(&mut line)?;
            Ok(line)
        }
    }

    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// A line for the user.
    pub fn say(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", line.as_ref());
        let _ = self.out.flush();
    }

    fn read_line(&mut self, flag: &str) -> Result<String, SetupError> {
        let mut line = String::new();
        let n = self
            .input
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_line(&mut line)
            .map_err(|e| SetupError::Step(format!("cannot read the answer: {e}")))?;
        if n == 0 {
            return Err(SetupError::Step(format!("no answer (the input ended); give {flag} instead")));
        }
        Ok(line.trim().to_string())
    }

    /// Asks `question`; an empty answer is `default`. `flag` is named when the question
    /// cannot be asked.
    pub fn ask(&mut self, question: &str, default: Option<&str>, flag: &str) -> Result<String, SetupError> {
        if !self.interactive {
            return default
                .map(str::to_string)
                .ok_or_else(|| SetupError::Step(format!("{question}: no answer without a terminal; give {flag}")));
        }
        match default {
            Some(d) if !d.is_empty() => {
                let _ = write!(self.out, "{question} [{d}]: ");
            }
            _ => {
                let _ = write!(self.out, "{question}: ");
            }
        }
        let _ = self.out.flush();
        let answer = self.read_line(flag)?;
        Ok(if answer.is_empty() { default.unwrap_or("").to_string() } else { answer })
    }

    /// A yes/no question; anything but y/yes/n/no asks again.
    pub fn confirm(&mut self, question: &str, default: bool, flag: &str) -> Result<bool, SetupError> {
        loop {
            let shown = if default { "Y/n" } else { "y/N" };
            if !self.interactive {
                return Ok(default);
            }
            let _ = write!(self.out, "{question} [{shown}]: ");
            let _ = self.out.flush();
            match self.read_line(flag)?.to_ascii_lowercase().as_str() {
                "" => return Ok(default),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => self.say("Please answer y or n."),
            }
        }
    }

    /// Picks one of `options` (shown numbered from 1); returns its index. An answer that
    /// is not one of the numbers asks again; `extra` answers (e.g. "none") are returned as
    /// `Err(answer)`.
    pub fn choose(
        &mut self,
        question: &str,
        options: &[String],
        default: usize,
        extra: &[&str],
        flag: &str,
    ) -> Result<Result<usize, String>, SetupError> {
        for (i, o) in options.iter().enumerate() {
            self.say(format!("  {}) {o}", i + 1));
        }
        loop {
            let answer = self.ask(question, Some(&(default + 1).to_string()), flag)?;
            if extra.contains(&answer.as_str()) {
                return Ok(Err(answer));
            }
            match answer.parse::<usize>() {
                Ok(n) if (1..=options.len()).contains(&n) => return Ok(Ok(n - 1)),
                _ if !self.interactive => {
                    return Err(SetupError::Step(format!("{question}: {answer:?} is not one of 1..{}", options.len())));
                }
                _ => self.say(format!("Please answer a number from 1 to {}{}.", options.len(), extra_list(extra))),
            }
        }
    }
}

fn extra_list(extra: &[&str]) -> String {
    extra.iter().map(|e| format!(" or {e}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_input(text: &'static str, interactive: bool, f: impl FnOnce(&mut Prompter)) -> String {
        let mut out = Vec::new();
        {
            let mut p = Prompter::new(Box::new(std::io::Cursor::new(text)), &mut out, interactive);
            f(&mut p);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn answers_defaults_and_retries() {
        let shown = with_input("\nvoron\nmaybe\nn\n7\n2\n", true, |p| {
            assert_eq!(p.ask("Name", Some("pi"), "--name").unwrap(), "pi");
            assert_eq!(p.ask("Name", Some("pi"), "--name").unwrap(), "voron");
            assert!(!p.confirm("Use it?", true, "--yes").unwrap());
            let opts = vec!["a".to_string(), "b".to_string()];
            assert_eq!(p.choose("Which?", &opts, 0, &["none"], "--camera").unwrap(), Ok(1));
            // The input ends: an error naming the flag, not a default taken silently.
            let e = p.ask("Server", None, "--server").unwrap_err();
            assert!(e.to_string().contains("--server"), "{e}");
        });
        assert!(shown.contains("Name [pi]: ") && shown.contains("Please answer y or n."), "{shown}");
        assert!(shown.contains("  2) b") && shown.contains("Please answer a number from 1 to 2 or none."), "{shown}");
    }

    #[test]
    fn without_a_terminal_defaults_are_taken_and_missing_ones_name_the_flag() {
        let shown = with_input("", false, |p| {
            assert_eq!(p.ask("Name", Some("pi"), "--name").unwrap(), "pi");
            assert!(p.confirm("Use it?", true, "--yes").unwrap());
            let e = p.ask("API key", None, "--api-key").unwrap_err();
            assert!(e.to_string().contains("give --api-key"), "{e}");
        });
        assert!(!shown.contains("Name ["), "nothing asked: {shown}");
    }
}
