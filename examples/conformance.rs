//! Golden-file conformance:
//! `cargo run --release --example conformance -- [--precision fp32|bf16|int8] [--policy keras|zeros|uniform] PATH...`
//!
//! Each PATH is a golden file made by `tools/keras_golden.py` or a folder of them. Prints
//! `PASS <case> max_err=<e> atol=<a>` (or `FAIL ...`) per file, then `N passed, N failed`.
//! `--precision int8` builds the layer from Keras' quantized variables (`weights_int8/`) and
//! checks the default call against the int8 reference (`outputs_int8_f64`) under `atol_int8`.
//! `--precision bf16` runs the float weights in bf16 (Keras' `mixed_bfloat16`) and checks the
//! default call against the float64 truth under 1.25x Keras' own `mixed_bfloat16` error,
//! printing both errors.
//! Exits 1 on any failure or unreadable file. Honours `TRANSFORMER_ENCODER_ISA`.

mod common;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use transformer_encoder::conformance::GoldenCase;
use transformer_encoder::{MaskedRowPolicy, Precision};

const USAGE: &str =
    "conformance [--precision fp32|bf16|int8] [--policy keras|zeros|uniform] PATH...";

fn main() -> ExitCode {
    common::run(conformance)
}

fn conformance() -> Result<ExitCode, common::Failure> {
    let args = common::Args::parse(USAGE, &["policy", "precision"], &[])?;
    let precision = common::precision(&args)?;
    let policy = match args.choice("policy", &["keras", "zeros", "uniform"], "keras")? {
        "zeros" => MaskedRowPolicy::Zeros,
        "uniform" => MaskedRowPolicy::Uniform,
        _ => MaskedRowPolicy::Keras,
    };
    // A forced tier that is unknown or missing is an error before anything runs.
    let isa = common::tier(&args)?;
    if args.positional.is_empty() {
        return Err(format!("no golden file given (usage: {USAGE})").into());
    }
    let mut files = Vec::new();
    let mut failed = 0usize;
    for p in &args.positional {
        collect(Path::new(p), &mut files, &mut failed);
    }
    let mut passed = 0usize;
    for f in &files {
        let case = match GoldenCase::load(f) {
            Ok(c) => c,
            Err(e) => {
                println!("FAIL {} unreadable: {e}", f.display());
                failed += 1;
                continue;
            }
        };
        let report = if precision == Precision::F32 {
            case.run(policy, Some(isa))
        } else {
            case.run_precision(precision, Some(isa))
        };
        match report {
            Ok(r) => {
                let verdict = if r.passed() { "PASS" } else { "FAIL" };
                if precision == Precision::F32 {
                    println!(
                        "{verdict} {} max_err={:.3e} atol={:.3e} scores_err={:.3e} atol_scores={:.3e}",
                        r.name,
                        r.max_err(),
                        r.atol_outputs,
                        r.err_scores,
                        r.atol_scores
                    );
                } else if precision == Precision::Bf16 {
                    let keras = r.atol_outputs / transformer_encoder::conformance::BF16_BOUND;
                    println!(
                        "{verdict} {} precision=bf16 max_err={:.3e} keras_mixed_bfloat16_err={keras:.3e} bound={:.3e}",
                        r.name,
                        r.max_err(),
                        r.atol_outputs
                    );
                } else {
                    println!(
                        "{verdict} {} precision={precision} max_err={:.3e} atol_int8={:.3e}",
                        r.name,
                        r.max_err(),
                        r.atol_outputs
                    );
                }
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
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The golden files at `p` (a file, or the `.safetensors` files of a folder); an unreadable path
/// counts as a failure.
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
