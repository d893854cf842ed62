//! Deterministic random data for the tests (no rand dependency) and error measures.

/// xorshift64*: fixed seeds give the same matrices on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    pub fn gauss(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn gauss_vec(&mut self, len: usize, sigma: f32) -> Vec<f32> {
        (0..len).map(|_| self.gauss() * sigma).collect()
    }
}

/// Σ_i h[i % k] (a_i - b_i)², in f64.
pub fn weighted_sq_err(a: &[f32], b: &[f32], k: usize, h: Option<&[f32]>) -> f64 {
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (&x, &y))| {
            let e = x as f64 - y as f64;
            h.map_or(1.0, |h| h[i % k] as f64) * e * e
        })
        .sum()
}

/// RMS(a - b) / RMS(a).
pub fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Runs `f` on a rayon pool of `threads` threads.
pub fn on_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool").install(f)
}
