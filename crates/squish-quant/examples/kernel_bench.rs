//! Kernel benchmark: INT4 g64, INT3 g64 and INT8 g32 matmuls on SmolLM2-135M's shapes, on a rayon
//! pool of 2 threads, at t = 1 (decode) and t = 512 (prefill); then the whole model's
//! matmuls per token (30 layers of distinct weights plus the 49152 x 576 head) and the
//! time to quantize the head. Run: `cargo run --release -p squish-quant --example kernel_bench`
//! (`-- --quick` for shorter runs).

use squish_quant::{f16, int3, int4, int8, Int3Owned, Int4Owned, Int8Owned};
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize); 5] = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)];
const LAYERS: usize = 30;
/// One layer's matmuls (N x K): q, k, v, o, gate, up, down.
const LAYER: [(usize, usize); 7] =
    [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
const HEAD: (usize, usize) = (49152, 576);
const PREFILL: usize = 512;

/// xorshift64*: deterministic data without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    /// Roughly Gaussian (sum of 4 uniforms), scaled.
    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| (self.unit() + self.unit() + self.unit() + self.unit()) * scale).collect()
    }
}

/// Either scheme behind one interface.
enum Mat {
    I4(Int4Owned),
    I3(Int3Owned),
    I8(Int8Owned),
}

impl Mat {
    fn n(&self) -> usize {
        match self {
            Mat::I4(m) => m.view().n(),
            Mat::I3(m) => m.view().n(),
            Mat::I8(m) => m.view().n(),
        }
    }
    fn bytes(&self) -> usize {
        match self {
            Mat::I4(m) => m.view().bytes(),
            Mat::I3(m) => m.view().bytes(),
            Mat::I8(m) => m.view().bytes(),
        }
    }
    fn matmul(&self, x: &[f32], t: usize, out: &mut [f32]) {
        match self {
            Mat::I4(m) => int4::matmul(&m.view(), x, t, out),
            Mat::I3(m) => int3::matmul(&m.view(), x, t, out),
            Mat::I8(m) => int8::matmul(&m.view(), x, t, out),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scheme {
    Int4G64,
    Int3G64,
    Int8G32,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Int4G64 => "INT4 g64",
            Scheme::Int3G64 => "INT3 g64",
            Scheme::Int8G32 => "INT8 g32",
        }
    }
    /// A matrix from real quantization of random weights.
    fn quantize(self, w: &[f32], n: usize, k: usize) -> Mat {
        match self {
            Scheme::Int4G64 => Mat::I4(int4::quantize(w, n, k, 64, None)),
            Scheme::Int3G64 => Mat::I3(int3::quantize(w, n, k, 64, None).matrix().clone()),
            Scheme::Int8G32 => Mat::I8(int8::quantize(w, n, k, 32, None)),
        }
    }
    /// A matrix of random codes and plausible scales (fast to build; for timing only).
    fn random(self, rng: &mut Rng, n: usize, k: usize) -> Mat {
        let scales = |rng: &mut Rng, len: usize, s: f32| -> Vec<f16> {
            (0..len).map(|_| f16::from_f32(s * (1.0 + rng.unit()))).collect()
        };
        match self {
            Scheme::Int4G64 => {
                let codes = (0..n * k / 2).map(|_| rng.next() as u8).collect();
                let (s, m) = (scales(rng, n * k / 64, 0.01), scales(rng, n * k / 64, -0.08));
                Mat::I4(Int4Owned::from_parts(codes, s, m, n, k, 64).expect("shape"))
            }
            Scheme::Int3G64 => {
                let codes = (0..n * k * 3 / 8).map(|_| rng.next() as u8).collect();
                let (s, m) = (scales(rng, n * k / 64, 0.02), scales(rng, n * k / 64, -0.08));
                Mat::I3(Int3Owned::from_parts(codes, s, m, n, k, 64).expect("shape"))
            }
            Scheme::Int8G32 => {
                let codes = (0..n * k).map(|_| ((rng.next() % 255) as i16 - 127) as i8).collect();
                Mat::I8(Int8Owned::from_parts(codes, scales(rng, n * k / 32, 0.001), n, k, 32).expect("shape"))
            }
        }
    }
}

/// Seconds per call of `f`: after a warm-up, calls run in batches of about 20 ms for
/// `budget`, and the fastest batch's mean is kept (other processes only ever slow a batch
/// down, so the minimum is the machine's own speed).
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    f();
    let per_batch = ((0.02 / t0.elapsed().as_secs_f64().max(1e-7)) as usize).max(1);
    let start = Instant::now();
    let mut best = f64::MAX;
    while best == f64::MAX || start.elapsed() < budget {
        let t = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / per_batch as f64);
    }
    best
}

/// CPU seconds used by the whole machine and by this process so far (Linux `/proc`; None
/// elsewhere), to tell whether other processes competed during the run.
fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let all: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy = all.iter().take(8).sum::<f64>() - all.get(3)? - all.get(4)?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = own.rsplit(')').next()?.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 11 and 12 after the command name.
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((busy / 100.0, (utime + stime) / 100.0))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("rayon pool");
    let (start, before) = (Instant::now(), cpu_seconds());
    pool.install(|| run(quick));
    if let (Some((b0, o0)), Some((b1, o1))) = (before, cpu_seconds()) {
        let others = ((b1 - b0) - (o1 - o0)) / start.elapsed().as_secs_f64();
        println!("\nother processes used {others:.2} CPUs on average during the run{}", if others > 0.1 {
            " (timings are the fastest batches, but memory-bound ones still suffer)"
        } else {
            ""
        });
    }
}

fn run(quick: bool) {
    let scale = if quick { 0.3 } else { 1.0 };
    let (dec_time, pre_time) = (Duration::from_secs_f64(0.5 * scale), Duration::from_secs_f64(2.0 * scale));
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    println!(
        "rayon threads: {}; kernel path: {} (SQUISH_ISA=scalar|avx2|avxvnni|avx512vnni caps it)",
        rayon::current_num_threads(),
        squish_quant::kernel_isa()
    );
    for scheme in [Scheme::Int4G64, Scheme::Int3G64, Scheme::Int8G32] {
        println!("\n== {} ==", scheme.name());
        println!(
            "{:>12} | {:>10} {:>8} | {:>10} {:>8} {:>9}",
            "N x K", "t=1 µs", "GB/s", "t=512 ms", "GB/s", "GMAC/s"
        );
        for (n, k) in SHAPES {
            let w = rng.vec(n * k, 0.02);
            let t0 = Instant::now();
            let m = scheme.quantize(&w, n, k);
            let qt = t0.elapsed().as_secs_f64();
            let x1 = rng.vec(k, 1.0);
            let mut o1 = vec![0.0; n];
            let d = time(dec_time, || m.matmul(&x1, 1, &mut o1));
            let xp = rng.vec(PREFILL * k, 1.0);
            let mut op = vec![0.0; PREFILL * n];
            let p = time(pre_time, || m.matmul(&xp, PREFILL, &mut op));
            let gb = m.bytes() as f64 / 1e9;
            println!(
                "{:>12} | {:>10.1} {:>8.1} | {:>10.2} {:>8.1} {:>9.1}",
                format!("{n}x{k}"),
                d * 1e6,
                gb / d,
                p * 1e3,
                gb / p,
                (n * k * PREFILL) as f64 / p / 1e9
            );
            if (n, k) == HEAD {
                println!("{:>12}   quantize {n}x{k}: {:.2} s", "", qt);
            }
        }
        model(scheme, &mut rng, quick);
    }
}

/// The whole model's matmuls with distinct weights per layer, as a forward pass runs them:
/// decode per token, and prefill of 512 tokens (the head for the last token only, as
/// llama.cpp does, and for all 512).
fn model(scheme: Scheme, rng: &mut Rng, quick: bool) {
    let layers: Vec<Vec<(Mat, usize)>> =
        (0..LAYERS).map(|_| LAYER.iter().map(|&(n, k)| (scheme.random(rng, n, k), k)).collect()).collect();
    let head = scheme.random(rng, HEAD.0, HEAD.1);
    let bytes: usize = layers.iter().flatten().map(|(m, _)| m.bytes()).sum::<usize>() + head.bytes();
    let x = rng.vec(PREFILL * 1536, 1.0);
    let mut out = vec![0.0; PREFILL * HEAD.0];
    let body = |t: usize, out: &mut [f32]| {
        for (m, k) in layers.iter().flatten() {
            m.matmul(&x[..t * k], t, &mut out[..t * m.n()]);
        }
    };
    let budget = Duration::from_secs_f64(if quick { 1.0 } else { 3.0 });
    let dec = time(budget, || {
        body(1, &mut out);
        head.matmul(&x[..HEAD.1], 1, &mut out[..HEAD.0]);
    });
    let pre_body = time(budget, || body(PREFILL, &mut out));
    let head1 = time(budget / 4, || head.matmul(&x[..HEAD.1], 1, &mut out[..HEAD.0]));
    let head_all = time(budget, || head.matmul(&x[..PREFILL * HEAD.1], PREFILL, &mut out));
    println!(
        "model (30 layers + head, {:.1} MB): decode {:.2} ms/token ({:.0} tok/s, {:.1} GB/s); \
         prefill 512: {:.3} s with the head on the last token ({:.0} tok/s), {:.3} s with it on all",
        bytes as f64 / 1e6,
        dec * 1e3,
        1.0 / dec,
        bytes as f64 / dec / 1e9,
        pre_body + head1,
        PREFILL as f64 / (pre_body + head1),
        pre_body + head_all
    );
}
