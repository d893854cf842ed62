// scratch (deleted before hand-off): kernel microbench with min-of-batches timing
use squish_quant::{f16, int4, int8, Int4Owned, Int8Owned};
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 { self.0 ^= self.0 >> 12; self.0 ^= self.0 << 25; self.0 ^= self.0 >> 27; self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) }
    fn unit(&mut self) -> f32 { (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5 }
}

fn busy() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<u64> = s.lines().next().unwrap().split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    let total: u64 = v.iter().take(8).sum();
    (total - v[3] - v[4], total)
}
fn self_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn thread_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn bench(mut f: impl FnMut(), budget: f64) -> (f64, f64) {
    if budget < 0.0 {
        for _ in 0..(-budget) as usize { f(); }
        return (1.0, 0.0);
    }
    f();
    let t0 = Instant::now();
    f();
    let one = t0.elapsed().as_secs_f64().max(1e-7);
    let per_batch = ((0.02 / one) as usize).max(1);
    let (b0, _) = busy();
    let s0 = self_ticks();
    let start = Instant::now();
    let mut best = f64::MAX;
    let c0 = thread_ticks();
    let mut iters = 0;
    while start.elapsed().as_secs_f64() < budget {
        let t = Instant::now();
        for _ in 0..per_batch { f(); }
        iters += per_batch;
        best = best.min(t.elapsed().as_secs_f64() / per_batch as f64);
    }
    let cpu = (thread_ticks() - c0) as f64 / 100.0 / iters as f64;
    eprint!("[cpu/call {:.2} us] ", cpu * 1e6);
    let wall = start.elapsed().as_secs_f64();
    let (b1, _) = busy();
    let foreign = ((b1 - b0) as f64 - (self_ticks() - s0) as f64) / 100.0 / wall;
    (best, foreign)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let scheme = a[1].as_str();
    let n: usize = a[2].parse().unwrap();
    let k: usize = a[3].parse().unwrap();
    let t: usize = a[4].parse().unwrap();
    let th: usize = a[5].parse().unwrap();
    let budget: f64 = a.get(6).map(|s| s.parse().unwrap()).unwrap_or(1.0);
    let mut rng = Rng(42);
    let x: Vec<f32> = (0..t * k).map(|_| rng.unit()).collect();
    let mut out = vec![0.0f32; t * n];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(th).build().unwrap();
    let (time, foreign, bytes) = pool.install(|| match scheme {
        "i4" => {
            let codes = (0..n * k / 2).map(|_| rng.next() as u8).collect();
            let s = (0..n * k / 64).map(|_| f16::from_f32(0.01 + rng.unit() * 0.001)).collect();
            let m = (0..n * k / 64).map(|_| f16::from_f32(-0.08 + rng.unit() * 0.01)).collect();
            let w = Int4Owned::from_parts(codes, s, m, n, k, 64).unwrap();
            let v = w.view();
            let (tm, f) = bench(|| int4::matmul(&v, &x, t, &mut out), budget);
            (tm, f, v.bytes())
        }
        "i4s" => {
            let codes = (0..n * k / 2).map(|_| rng.next() as u8).collect();
            let s = (0..n * k / 64).map(|_| f16::from_f32(0.01)).collect();
            let m = (0..n * k / 64).map(|_| f16::from_f32(-0.08)).collect();
            let w = Int4Owned::from_parts(codes, s, m, n, k, 64).unwrap();
            let v = w.view();
            let (tm, f) = bench(|| int4::matmul_scalar(&v, &x, t, &mut out), budget);
            (tm, f, v.bytes())
        }
        "i8" => {
            let codes = (0..n * k).map(|_| ((rng.next() % 255) as i16 - 127) as i8).collect();
            let s = (0..n * k / 32).map(|_| f16::from_f32(0.001)).collect();
            let w = Int8Owned::from_parts(codes, s, n, k, 32).unwrap();
            let v = w.view();
            let (tm, f) = bench(|| int8::matmul(&v, &x, t, &mut out), budget);
            (tm, f, v.bytes())
        }
        "q4" => {
            let w: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
            let (tm, f) = bench(|| { std::hint::black_box(int4::quantize(&w, n, k, 64, None)); }, budget);
            (tm, f, n * k * 4)
        }
        "q8" => {
            let w: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
            let (tm, f) = bench(|| { std::hint::black_box(int8::quantize(&w, n, k, 32, None)); }, budget);
            (tm, f, n * k * 4)
        }
        "model4" | "model8" => {
            let layer = [(576usize, 576usize), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
            let mut mats4 = vec![]; let mut mats8 = vec![];
            let mut bytes = 0;
            for l in 0..n {
                for &(nn, kk) in layer.iter().chain(if l == 0 { [(49152usize, 576usize)].iter() } else { [].iter() }) {
                    if scheme == "model4" {
                        let codes = (0..nn * kk / 2).map(|_| rng.next() as u8).collect();
                        let s = (0..nn * kk / 64).map(|_| f16::from_f32(0.01)).collect();
                        let m = (0..nn * kk / 64).map(|_| f16::from_f32(-0.08)).collect();
                        let w = Int4Owned::from_parts(codes, s, m, nn, kk, 64).unwrap();
                        bytes += w.view().bytes();
                        mats4.push((w, kk));
                    } else {
                        let codes = (0..nn * kk).map(|_| ((rng.next() % 255) as i16 - 127) as i8).collect();
                        let s = (0..nn * kk / 32).map(|_| f16::from_f32(0.001)).collect();
                        let w = Int8Owned::from_parts(codes, s, nn, kk, 32).unwrap();
                        bytes += w.view().bytes();
                        mats8.push((w, kk));
                    }
                }
            }
            let xx: Vec<f32> = (0..t * 1536).map(|_| rng.unit()).collect();
            let mut o = vec![0f32; t * 49152];
            let (tm, f) = bench(|| {
                for (w, kk) in &mats4 { let v = w.view(); int4::matmul(&v, &xx[..t * kk], t, &mut o[..t * v.n()]); }
                for (w, kk) in &mats8 { let v = w.view(); int8::matmul(&v, &xx[..t * kk], t, &mut o[..t * v.n()]); }
            }, budget);
            (tm, f, bytes)
        }
        _ => panic!(),
    });
    println!("{scheme} {n}x{k} t={t} th={th}: {:.2} us  {:.1} GB/s  {:.1} GMAC/s  foreign {:.2}",
        time * 1e6, bytes as f64 / time / 1e9, (n * k * t) as f64 / time / 1e9, foreign);
}
