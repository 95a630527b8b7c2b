//! `ringmq passwd`: adds, changes and deletes users of a password file, like Mosquitto's
//! `mosquitto_passwd` (the files are interchangeable).

use clap::Parser;
use ringmq_passwd::{check_username, edit, Edit, Hash, PasswordFile, MOSQUITTO_ITERATIONS};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Manage the users of a ringmq (or Mosquitto) password file.
#[derive(Parser, Debug)]
#[command(name = "ringmq passwd", max_term_width = 100)]
struct Args {
    /// Create the file, replacing one that exists.
    #[arg(short = 'c')]
    create: bool,
    /// Take the password from the command line (it shows in `ps` and the shell's history).
    #[arg(short = 'b')]
    batch: bool,
    /// Delete the user.
    #[arg(short = 'D')]
    delete: bool,
    /// Hash with argon2id (19 MiB, 2 passes) instead of $7$ PBKDF2-SHA512: for passwords
    /// people choose. Mosquitto 2.0 cannot read these lines.
    #[arg(long)]
    argon2id: bool,
    /// PBKDF2 iterations of a $7$ hash (mosquitto_passwd uses 101). Device passwords that are
    /// long random tokens need no more; every login costs the broker this many HMACs.
    #[arg(long, default_value_t = MOSQUITTO_ITERATIONS, value_name = "N")]
    iterations: u32,
    /// The password file.
    file: PathBuf,
    /// The user to add, change or delete.
    username: String,
    /// With -b: the password.
    password: Option<String>,
}

/// Runs the subcommand with the arguments after `passwd`; the exit code.
pub fn main(args: impl Iterator<Item = String>) -> i32 {
    let args = Args::parse_from(std::iter::once("ringmq passwd".to_owned()).chain(args));
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ringmq passwd: {e}");
            1
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    check_username(&a.username)?;
    if a.batch != a.password.is_some() && !a.delete {
        return Err("give the password with -b, or neither (it is then read from stdin)".into());
    }
    if !(1..=ringmq_passwd::MAX_ITERATIONS).contains(&a.iterations) {
        return Err(format!(
            "--iterations must be 1 to {}",
            ringmq_passwd::MAX_ITERATIONS
        ));
    }
    let text = if a.create {
        String::new()
    } else {
        std::fs::read_to_string(&a.file)
            .map_err(|e| format!("cannot read {}: {e} (-c creates it)", a.file.display()))?
    };
    // Refuse to rewrite a file the broker would refuse to read.
    PasswordFile::parse(&text).map_err(|e| format!("{} {e}", a.file.display()))?;
    let change = if a.delete {
        Edit::Delete(&a.username)
    } else {
        let password = match &a.password {
            Some(p) => p.clone(),
            None => read_password()?,
        };
        let hash = if a.argon2id {
            Hash::argon2id(password.as_bytes())
        } else {
            Hash::pbkdf2(password.as_bytes(), a.iterations)
        };
        Edit::Set(&a.username, hash)
    };
    let new = edit(&text, change)?;
    write_atomically(&a.file, &new)
}

/// The password from stdin: asked twice without echo on a terminal, one line otherwise.
fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let first = prompt("Password: ")?;
    let again = prompt("Reenter password: ")?;
    if first != again {
        return Err("the passwords do not match".into());
    }
    Ok(first)
}

fn prompt(what: &str) -> Result<String, String> {
    eprint!("{what}");
    let _ = std::io::stderr().flush();
    let echo = Echo::off();
    let mut line = String::new();
    let r = std::io::stdin().lock().read_line(&mut line);
    drop(echo);
    eprintln!();
    r.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// The terminal's echo, turned off while it lives.
struct Echo(Option<libc::termios>);

impl Echo {
    fn off() -> Echo {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios they fill and we pass back.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Echo(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            Echo(Some(saved))
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read by `off`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// Writes a temporary file beside `path` (owner-only: it holds hashes) and renames it over
/// `path`, so that a broker reloading at that moment reads the old file or the new one.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp-ringmq-passwd");
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
