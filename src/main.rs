//! `ringmq`: resolve the configuration (flags > environment > file > defaults, see
//! [`config`]), prepare the process (open-file limit, data directory, logging), then
//! hand over to the shard runtime, which runs one pinned executor per core until the end.

mod config;
mod datadir;
mod passwd;

use clap::{CommandFactory, Parser};
use config::{ConfigError, LogFormat, Settings};
use std::path::PathBuf;

/// Thread-per-core MQTT 3.1/3.1.1/5.0 broker on io_uring.
///
/// Only the options that are not settings are declared here; [`cli`] adds one flag per entry of
/// the settings table (`config/table.rs`).
#[derive(Parser, Debug)]
#[command(name = "ringmq", version, about, long_about = None, max_term_width = 100)]
#[command(
    after_help = "Every option can also be set in a TOML file (--config; key = option \
name with '-' -> '_') or an environment variable RINGMQ_<KEY> (e.g. RINGMQ_MAX_INFLIGHT=64; \
RINGMQ_LISTEN is comma-separated). Precedence: flags > environment > file > defaults. \
`ringmq passwd --help`: manage a password file."
)]
struct Args {
    /// TOML configuration file (keys are the option names with '-' -> '_'); also from
    /// RINGMQ_CONFIG.
    #[arg(long, value_name = "FILE", env = "RINGMQ_CONFIG")]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML (a valid --config file) and exit.
    #[arg(long)]
    print_config: bool,
}

/// The command line: [`Args`] and a flag for every setting.
fn cli() -> clap::Command {
    Args::command().args(config::SPECS.iter().map(config::Spec::arg))
}

/// Reads every layer and merges them; any error is for the caller to print and exit 2.
fn settings(matches: &clap::ArgMatches) -> Result<Settings, ConfigError> {
    let given = config::SPECS.iter().filter_map(|s| {
        let from_cli = matches.value_source(s.key) == Some(clap::parser::ValueSource::CommandLine);
        let values = matches
            .get_many::<String>(s.key)?
            .cloned()
            .collect::<Vec<_>>();
        from_cli.then_some((s.key, values))
    });
    let flags = config::flag_layer(given);
    let env = config::env_layer(|name| std::env::var(name).ok());
    let file = match matches.get_one::<PathBuf>("config") {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            })?;
            config::file_layer(&text, path)?
        }
        None => config::Layer::new(),
    };
    config::resolve(&[&flags, &env, &file])
}

/// Logging to stderr as the settings say; RUST_LOG, when set, wins over `log_level`.
fn init_logging(s: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&s.log_level));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match s.log_format {
        LogFormat::Plain => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
}

/// Large allocations (the tables of connections, sessions and subscriptions, which double as a
/// fleet connects) come from their own mappings and go back to the system when freed. glibc
/// otherwise raises this threshold to the size of the largest mapping freed, after which each
/// table's previous, freed copy stays resident in the heap: 675 bytes per idle connection at
/// 19,000 connections instead of 556 (540 with 128 KiB, which cost fan-in 4%: a slow
/// subscriber's output queue grows past it and is freed again each time it drains).
fn fix_mmap_threshold() {
    // SAFETY: mallopt only sets glibc's allocator parameters; called before the shards start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("passwd") {
        std::process::exit(passwd::main(std::env::args().skip(2)));
    }
    let matches = cli().get_matches();
    let print_config = matches.get_flag("print_config");
    let s = settings(&matches).unwrap_or_else(|e| {
        eprintln!("ringmq: {e}");
        std::process::exit(2);
    });
    if print_config {
        print!("{}", s.to_toml());
        return;
    }
    init_logging(&s);
    let cfg = s.into_config();
    if let Err(e) = std::fs::create_dir_all(&cfg.data_dir) {
        eprintln!(
            "ringmq: cannot create data directory {}: {e}",
            cfg.data_dir.display()
        );
        std::process::exit(1);
    }
    // Held until the process ends.
    let _lock = datadir::lock(&cfg.data_dir).unwrap_or_else(|e| {
        eprintln!("ringmq: {e}");
        std::process::exit(2);
    });
    ringmq_shard::check_fd_limit(cfg.max_connections);
    fix_mmap_threshold();
    tracing::info!(
        shards = cfg.shards,
        listeners = ?cfg.all_listeners().iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        data_dir = %cfg.data_dir.display(),
        "ringmq {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let tls = ringmq_shard::certs::contexts(&cfg).unwrap_or_else(|e| {
        eprintln!("ringmq: {e}");
        std::process::exit(2);
    });
    let passwords = cfg.password_file.clone().map(|path| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        ringmq_shard::logins::Verifier::start(path, threads).unwrap_or_else(|e| {
            eprintln!("ringmq: {e}");
            std::process::exit(2);
        })
    });
    let acl = cfg.acl_file.clone().map(|path| {
        ringmq_shard::access::AclFile::open(path).unwrap_or_else(|e| {
            eprintln!("ringmq: {e}");
            std::process::exit(2);
        })
    });
    if let Err(e) = ringmq_shard::run(cfg, tls, passwords, acl) {
        eprintln!("ringmq: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        cli().debug_assert();
    }

    /// Every setting has a flag whose help shows its built-in default.
    #[test]
    fn every_setting_has_a_flag_showing_its_default() {
        let cmd = cli();
        for spec in config::SPECS {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == spec.key)
                .unwrap_or_else(|| panic!("no flag for {}", spec.key));
            assert_eq!(
                format!("--{}", arg.get_long().unwrap()),
                config::flag_name(spec.key)
            );
            let help = arg.get_help().unwrap().to_string();
            assert!(
                help.contains(&format!("[default: {}]", spec.default)),
                "{}: {help}",
                spec.key
            );
        }
    }
}
