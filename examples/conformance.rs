//! Golden-file conformance: `cargo run --release --example conformance -- [--policy keras|zeros|uniform] PATH...`
//!
//! Each PATH is a golden file made by `tools/keras_golden.py` or a folder of them. Prints
//! `PASS <case> max_err=<e> atol=<a>` (or `FAIL ...`) per file, then `N passed, N failed`.
//! Exits 1 on any failure or unreadable file. Honours `TRANSFORMER_ENCODER_ISA`.

use std::path::{Path, PathBuf};
use transformer_encoder::MaskedRowPolicy;
use transformer_encoder::conformance::GoldenCase;

fn main() {
    let mut policy = MaskedRowPolicy::Keras;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--policy" => {
                policy = match args.next().as_deref() {
                    Some("keras") => MaskedRowPolicy::Keras,
                    Some("zeros") => MaskedRowPolicy::Zeros,
                    Some("uniform") => MaskedRowPolicy::Uniform,
                    other => {
                        eprintln!("--policy takes keras, zeros or uniform, got {other:?}");
                        std::process::exit(2);
                    }
                }
            }
            "-h" | "--help" => {
                println!("usage: conformance [--policy keras|zeros|uniform] PATH...");
                return;
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if let Err(e) = transformer_encoder::Isa::from_env() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if paths.is_empty() {
        eprintln!("usage: conformance [--policy keras|zeros|uniform] PATH...");
        std::process::exit(2);
    }
    let mut files = Vec::new();
    let mut unreadable = 0usize;
    for p in &paths {
        collect(p, &mut files, &mut unreadable);
    }
    let (mut passed, mut failed) = (0usize, failed_start(unreadable));
    for f in &files {
        let case = match GoldenCase::load(f) {
            Ok(c) => c,
            Err(e) => {
                println!("FAIL {} unreadable: {e}", f.display());
                failed += 1;
                continue;
            }
        };
        match case.run(policy, None) {
            Ok(r) => {
                let verdict = if r.passed() { "PASS" } else { "FAIL" };
                println!(
                    "{verdict} {} max_err={:.3e} atol={:.3e} scores_err={:.3e} atol_scores={:.3e}",
                    r.name,
                    r.max_err(),
                    r.atol_outputs,
                    r.err_scores,
                    r.atol_scores
                );
                if r.passed() {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("FAIL {} error: {e}", case.name);
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn failed_start(unreadable: usize) -> usize {
    unreadable
}

fn collect(p: &Path, out: &mut Vec<PathBuf>, unreadable: &mut usize) {
    if p.is_dir() {
        match std::fs::read_dir(p) {
            Ok(rd) => {
                let mut v: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|q| q.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                v.sort();
                out.extend(v);
            }
            Err(e) => {
                println!("FAIL {} unreadable: {e}", p.display());
                *unreadable += 1;
            }
        }
    } else if p.exists() {
        out.push(p.to_path_buf());
    } else {
        println!("FAIL {} unreadable: no such file", p.display());
        *unreadable += 1;
    }
}
