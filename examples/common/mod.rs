//! What the examples (and the benches, through `#[path]`) share: argument parsing with errors
//! for unknown flags, error reporting with a non-zero exit, threads, tiers, precisions, timing,
//! and the embedding workloads of `tools/st_anchor.py`.

#![allow(dead_code)]

pub mod model;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;
use transformer_encoder::{Isa, Precision, Threads};

/// A failure to report: printed as `error: <message>`, exit code 2.
pub type Failure = Box<dyn std::error::Error>;

/// Run an example's body: errors are printed with their message (which, for a bad
/// `TRANSFORMER_ENCODER_ISA`, names the variable and the tiers this CPU has) and give exit 2.
/// A reader that stops early (`| head`) closes standard output, on which `println!` panics:
/// that ends the example quietly with exit 141, as a closed pipe ends other command-line tools.
pub fn run(body: impl FnOnce() -> Result<ExitCode, Failure>) -> ExitCode {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !panic_message(info.payload()).is_some_and(broken_pipe) {
            report(info)
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(p) => {
            if panic_message(&*p).is_some_and(broken_pipe) {
                ExitCode::from(141)
            } else {
                std::panic::resume_unwind(p)
            }
        }
    }
}

/// A panic's message, if it is text.
fn panic_message(p: &(dyn std::any::Any + Send)) -> Option<&str> {
    p.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
}

/// The panic of a print to a closed pipe.
fn broken_pipe(msg: &str) -> bool {
    msg.starts_with("failed printing to std") && msg.contains("Broken pipe")
}

/// Parsed command-line arguments: `--flag value` options, `--switch`es and positional values.
#[derive(Debug, Default)]
pub struct Args {
    values: BTreeMap<String, String>,
    switches: Vec<String>,
    /// Arguments that are not flags.
    pub positional: Vec<String>,
}

impl Args {
    /// Parse `std::env::args()` against the accepted `options` (take a value) and `switches`.
    /// `--help` prints `usage` and exits 0; anything else unknown is an error.
    pub fn parse(usage: &str, options: &[&str], switches: &[&str]) -> Result<Args, Failure> {
        let mut a = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                println!("usage: {usage}");
                std::process::exit(0);
            }
            let Some(name) = arg.strip_prefix("--") else {
                a.positional.push(arg);
                continue;
            };
            if options.contains(&name) {
                let v = it
                    .next()
                    .ok_or_else(|| format!("--{name} needs a value (usage: {usage})"))?;
                a.values.insert(name.to_string(), v);
            } else if switches.contains(&name) {
                a.switches.push(name.to_string());
            } else {
                return Err(format!("unknown flag --{name} (usage: {usage})").into());
            }
        }
        Ok(a)
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Was `--name` given?
    pub fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// `--name` parsed, or `default`.
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Failure> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name} takes a number, got `{v}`").into()),
        }
    }

    /// `--name` as one of `choices`, or `default`.
    pub fn choice<'a>(
        &'a self,
        name: &str,
        choices: &[&str],
        default: &'a str,
    ) -> Result<&'a str, Failure> {
        let v = self.get(name).unwrap_or(default);
        if choices.contains(&v) {
            Ok(v)
        } else {
            Err(format!("--{name} takes {}, got `{v}`", choices.join(" or ")).into())
        }
    }
}

/// The tier to run: `--isa` if given, else `TRANSFORMER_ENCODER_ISA`, else the best available.
pub fn tier(args: &Args) -> Result<Isa, Failure> {
    match args.get("isa") {
        Some(s) => Ok(s.parse::<Isa>()?.require()?),
        None => Ok(Isa::detect()?),
    }
}

/// `--precision fp32|bf16|int8` (default fp32).
pub fn precision(args: &Args) -> Result<Precision, Failure> {
    Ok(args
        .choice("precision", &["fp32", "bf16", "int8"], "fp32")?
        .parse::<Precision>()?)
}

/// `--threads N`: `Single` for one thread, else `Count(n)` (the caller's thread and the crate's
/// helper threads); 0 is an error naming the flag.
pub fn threads(n: usize) -> Result<Threads, Failure> {
    match n {
        0 => Err("--threads: at least 1, got 0".to_string().into()),
        1 => Ok(Threads::Single),
        n => Ok(Threads::Count(n)),
    }
}

/// Median, minimum and count of the times of `f` over about `seconds` (at least `min_runs`),
/// after a warm-up of a tenth of that (at most a second).
pub fn time<E>(
    seconds: f64,
    min_runs: usize,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<(f64, f64, usize), E> {
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < (seconds * 0.1).min(1.0) {
        f()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || times.len() < min_runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((times[times.len() / 2], times[0], times.len()))
}

/// The 32 short queries of `tools/st_anchor.py`.
pub fn queries() -> Vec<String> {
    let pairs = [
        ("reset", "router"),
        ("cancel", "subscription"),
        ("update", "invoice"),
        ("export", "report"),
    ];
    (0..32)
        .map(|i| {
            let (v, o) = pairs[i % 4];
            format!("how do I {v} the {o} {i}")
        })
        .collect()
}

/// The 8 passages of `tools/st_anchor.py` (each past 128 tokens, so truncated to 128).
pub fn passages() -> Vec<String> {
    let passage = "Vector units on modern server processors can multiply sixteen single precision numbers in one instruction, and matrix tiles go further still, so an encoder that keeps its weights packed and its activations in cache spends most of its time doing arithmetic rather than waiting for memory. ";
    let three = passage.repeat(3);
    (0..8).map(|i| three[i * 7..].to_string()).collect()
}

/// The named workloads: `("32-queries", ..)` and `("8-passages-128tok", ..)`.
pub fn workloads() -> Vec<(&'static str, Vec<String>)> {
    vec![("32-queries", queries()), ("8-passages-128tok", passages())]
}

/// The CPU time of every thread of this process so far, in nanoseconds (Linux: the sum of
/// `/proc/self/task/*/schedstat`); `None` where that cannot be read.
pub fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let path = t.ok()?.path().join("schedstat");
        // A thread that ended since the listing has no file any more: it is not counted.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}
