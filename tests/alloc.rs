//! No heap allocation per call after warm-up: a counting global allocator sees every thread.
//! (Its own test binary, without the test harness, so nothing else allocates while it counts:
//! the harness' "running for over 60 seconds" note did, on a slow machine.)

// A global allocator is an unsafe trait; this test is the only place of the API package that
// needs it.
#![allow(unsafe_code)]

mod common;
use common::{tiers, values};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use transformer_encoder::*;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes currently allocated (every thread).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The most bytes allocated at once since it was last reset.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Where the first counted allocations came from (thread and backtrace), for the failure message.
static WHERE: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread is recording where an allocation came from (its own allocations not counted).
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

/// Count an allocation made while counting, and record the first few with their backtraces.
fn counted() {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    // A thread being torn down has no thread-locals left: count it without a record.
    let Ok(recording) = RECORDING.try_with(|r| r.replace(true)) else {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if recording {
        return;
    }
    if ALLOCS.fetch_add(1, Ordering::Relaxed) < 3 {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed").to_owned();
        let trace = std::backtrace::Backtrace::force_capture();
        let entry = format!("on thread {name}:\n{trace}");
        if let Ok(mut w) = WHERE.try_lock() {
            w.push(entry);
        }
    }
    let _ = RECORDING.try_with(|r| r.set(false));
}

/// `bytes` more are allocated: the live total and its peak.
fn grown(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        counted();
        grown(l.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        counted();
        grown(n);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn pool(n: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap(),
    )
}

/// The allocations (every thread) while `f` runs; where the first ones came from goes to
/// stderr, so that a failure names the code that allocated.
fn count(f: impl FnOnce()) -> usize {
    WHERE.lock().unwrap().clear();
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    let n = ALLOCS.load(Ordering::SeqCst);
    for w in WHERE.lock().unwrap().drain(..) {
        eprintln!("an allocation while counting, {w}");
    }
    n
}

/// The only test of this binary (`harness = false`): the counting allocator sees every thread,
/// so no other test, and no harness thread, may run while it counts.
fn main() {
    no_allocation_per_call_after_warm_up();
    an_encoder_holds_its_weights_once();
    loading_a_file_peaks_near_the_packed_size();
    println!("test result: ok. allocations: none per warm call; weights held once");
}

fn no_allocation_per_call_after_warm_up() {
    let (b, s, h) = (2, 40, 192);
    let x = values(b * s * h, 6, -1.0, 1.0);
    let pad: Vec<u8> = (0..b * s).map(|i| (i % s < 30) as u8).collect();
    const CALLS: usize = 100;
    // One pool for the whole test: a pool dropped while counting would have its threads
    // allocate as they exit.
    let p = pool(2);
    for isa in tiers() {
        for (pre, precision) in [
            (false, Precision::F32),
            (true, Precision::F32),
            (false, Precision::Int8),
            (true, Precision::Int8),
            (false, Precision::Bf16),
            (true, Precision::Bf16),
        ] {
            let cfg = EncoderConfig::new(384, 6)
                .with_activation(Activation::Gelu)
                .with_normalize_first(pre);
            let w = EncoderWeights::init(&cfg, h, 5).unwrap();
            let base = TransformerEncoder::with_isa(cfg, w, isa)
                .unwrap()
                .with_precision(precision)
                .unwrap();
            let opts = CallOptions::new().padding_mask(Mask::new(&pad, &[b, s]));
            let xv = TensorView::new(&x, &[b, s, h]);
            let mut out = vec![0.0; x.len()];
            let mut scores = vec![0.0; b * 6 * s * s];
            let mut ws = Workspace::new();
            // The same rows as a ragged batch (a long sequence, short ones, an empty one).
            let lengths = [40usize, 3, 0, 17, 20];
            let rv = RaggedView::new(&x, &lengths);
            let mut rscores = vec![0.0; 6 * lengths.iter().map(|l| l * l).sum::<usize>()];
            let ragged =
                |enc: &TransformerEncoder, out: &mut [f32], sc: &mut [f32], ws: &mut Workspace| {
                    enc.forward_ragged_into(rv, &CallOptions::new(), out, Some(sc), ws)
                        .unwrap();
                };
            // One thread: no allocation at all.
            let enc = base.with_threads(Threads::Single);
            for _ in 0..3 {
                enc.forward_into(xv, &opts, &mut out, Some(&mut scores), &mut ws)
                    .unwrap();
                ragged(&enc, &mut out, &mut rscores, &mut ws);
            }
            let n = count(|| {
                for _ in 0..CALLS {
                    enc.forward_into(xv, &opts, &mut out, Some(&mut scores), &mut ws)
                        .unwrap();
                    enc.forward_into(xv, &opts, &mut out, None, &mut ws)
                        .unwrap();
                    ragged(&enc, &mut out, &mut rscores, &mut ws);
                }
            });
            assert_eq!(
                n,
                0,
                "{isa} {precision}: one thread: {n} allocations in {} warm calls",
                3 * CALLS
            );
            // A stack of three such layers (in int8 post-norm mode each layer's output goes to
            // the next one quantized, through the stack's workspace): none either.
            let stack = EncoderStack::new(vec![enc.clone(), enc.clone(), enc.clone()]).unwrap();
            let mut sws = StackWorkspace::new();
            for _ in 0..3 {
                stack
                    .forward_ragged_into(rv, &CallOptions::new(), &mut out, &mut sws)
                    .unwrap();
                stack.forward_into(xv, &opts, &mut out, &mut sws).unwrap();
            }
            let n = count(|| {
                for _ in 0..CALLS {
                    stack
                        .forward_ragged_into(rv, &CallOptions::new(), &mut out, &mut sws)
                        .unwrap();
                    stack.forward_into(xv, &opts, &mut out, &mut sws).unwrap();
                }
            });
            assert_eq!(
                n, 0,
                "{isa} {precision}: a stack: {n} allocations in warm calls"
            );
            // A pool, called from one of its own threads (a service running on the pool): none.
            let enc = enc.with_threads(Threads::Current);
            let n = p.install(|| {
                for _ in 0..3 {
                    enc.forward_into(xv, &opts, &mut out, Some(&mut scores), &mut ws)
                        .unwrap();
                    ragged(&enc, &mut out, &mut rscores, &mut ws);
                }
                count(|| {
                    for _ in 0..CALLS {
                        enc.forward_into(xv, &opts, &mut out, Some(&mut scores), &mut ws)
                            .unwrap();
                        ragged(&enc, &mut out, &mut rscores, &mut ws);
                    }
                })
            });
            assert_eq!(
                n,
                0,
                "{isa} {precision}: inside the pool: {n} allocations in {} warm calls",
                2 * CALLS
            );
            // A dedicated pool's size, called from outside it: the caller's thread leads (its
            // team made in the warm-up), nothing is handed to rayon: none.
            let enc = enc.with_threads(Threads::Pool(p.clone()));
            for _ in 0..3 {
                enc.forward_into(xv, &opts, &mut out, None, &mut ws)
                    .unwrap();
            }
            let n = count(|| {
                for _ in 0..CALLS {
                    enc.forward_into(xv, &opts, &mut out, None, &mut ws)
                        .unwrap();
                }
            });
            assert_eq!(
                n, 0,
                "{isa} {precision}: dedicated pool: {n} allocations in {CALLS} warm calls"
            );
        }
    }
}

fn an_encoder_holds_its_weights_once() {
    // A BERT-base layer: 7.08 M parameters, 28.3 MB in float32. After construction the encoder
    // holds the packed panels and the small vectors only (no float copy of the kernels beside
    // them): the heap it frees on drop is at most 1.05x its packed bytes, and what
    // `held_bytes` reports.
    let cfg = EncoderConfig::new(3072, 12).with_activation(Activation::Gelu);
    for isa in tiers() {
        let w = EncoderWeights::init(&cfg, 768, 1).unwrap();
        let params: usize = w.tensors().iter().map(|(_, t)| t.len()).sum();
        assert_eq!(params, 7_087_872);
        // Building frees each float tensor as soon as it is packed: beyond the weights handed
        // over, it holds at most one tensor twice (the largest, a quarter of the layer) and the
        // fused query/key/value copy, never the whole layer (before: 28.4 MB above them for
        // 28.3 MB packed; now 9.4 MB, the feed-forward kernel's packed copy).
        let before = LIVE.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let enc = TransformerEncoder::with_isa(cfg.clone(), w, isa).unwrap();
        let peak = PEAK.load(Ordering::SeqCst) - before;
        let live = LIVE.load(Ordering::SeqCst);
        let packed = enc.packed_bytes();
        let held = enc.held_bytes();
        drop(enc);
        let freed = live - LIVE.load(Ordering::SeqCst);
        // Every kernel value is packed (norms: 4 x 768, biases: 5 x 768 + 3072).
        assert!(packed >= 4 * (params - 9 * 768 - 3072), "{isa}: {packed}");
        assert!(
            freed as f64 <= 1.05 * packed as f64 && held as f64 <= 1.05 * packed as f64,
            "{isa}: frees {freed} B, reports {held} B, for {packed} B of packed weights"
        );
        assert!(
            peak as f64 <= 0.4 * packed as f64,
            "{isa}: building peaks {peak} B above the weights handed over, for {packed} B packed"
        );
        assert!(
            freed.abs_diff(held) < 4096,
            "{isa}: frees {freed} B, reports {held} B"
        );
    }
}

fn loading_a_file_peaks_near_the_packed_size() {
    // A BERT-base layer saved as float32 (28.3 MB) and as Keras' int8 variables. Loaded with
    // `from_safetensors_file`, each projection is read as it is packed: the heap peaks at the
    // packed layer and one projection's float copy (the fused query/key/value's parts and their
    // concatenation), not at the file's bytes, its float weights and their packed copy together
    // (the buffer path below: 2.3x the packed float32 layer).
    let cfg = EncoderConfig::new(3072, 12).with_activation(Activation::Gelu);
    let w = EncoderWeights::init(&cfg, 768, 1).unwrap();
    let dir = std::env::temp_dir();
    let float = dir.join(format!("te-alloc-{}-f32.safetensors", std::process::id()));
    let int8 = dir.join(format!("te-alloc-{}-int8.safetensors", std::process::id()));
    w.save_safetensors(&float, "").unwrap();
    Int8Weights::quantize(&w)
        .save_safetensors(&int8, "")
        .unwrap();
    drop(w);
    let peak_of = |f: &dyn Fn() -> TransformerEncoder| {
        let before = LIVE.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let enc = f();
        let peak = PEAK.load(Ordering::SeqCst) - before;
        (peak, enc)
    };
    // (label, file, config, bound on the peak over the packed bytes)
    let cases = [
        ("float32", &float, cfg.clone(), 1.25),
        (
            "bf16",
            &float,
            cfg.clone().with_dtype("mixed_bfloat16"),
            1.75,
        ),
        ("int8", &int8, cfg.clone(), 1.25),
    ];
    for (label, path, c, bound) in cases {
        let (peak, enc) =
            peak_of(&|| TransformerEncoder::from_safetensors_file(c.clone(), path, "").unwrap());
        let packed = enc.held_bytes();
        // The same layer as the one built from the whole buffer, and its peak for comparison.
        let (whole, enc2) = peak_of(&|| {
            let bytes = std::fs::read(path).unwrap();
            if label == "int8" {
                TransformerEncoder::new_int8(
                    c.clone(),
                    Int8Weights::from_safetensors(&bytes, "").unwrap(),
                )
                .unwrap()
            } else {
                TransformerEncoder::new(
                    c.clone(),
                    EncoderWeights::from_safetensors(&bytes, "").unwrap(),
                )
                .unwrap()
            }
        });
        assert_eq!(
            enc.weights(),
            enc2.weights(),
            "{label}: the same layer either way"
        );
        assert_eq!(enc.precision(), enc2.precision(), "{label}");
        println!(
            "{label}: file load peaks {:.1} MB, buffer load {:.1} MB, for {:.1} MB held",
            peak as f64 / 1e6,
            whole as f64 / 1e6,
            packed as f64 / 1e6
        );
        assert!(
            peak as f64 <= bound * packed as f64,
            "{label}: loading from the file peaks at {peak} B for {packed} B held (bound {bound}x)"
        );
    }
    std::fs::remove_file(&float).ok();
    std::fs::remove_file(&int8).ok();
}
