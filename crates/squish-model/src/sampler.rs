//! Choosing the next token from logits: greedy, or temperature with top-k, top-p and min-p
//! filters, after a repetition penalty. Seeded and reproducible: the same seed, logits and
//! history always give the same token.

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no limit.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// 1.0 means off; applied to the last `repeat_last_n` tokens of prompt and output.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults, so outputs compare like for like.
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64(params.seed);
        Self { params, rng }
    }

    /// Whether `sample` is the plain argmax of the logits (greedy, no repetition penalty).
    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0 && self.params.repeat_penalty == 1.0
    }

    /// `history` is every token so far (prompt and output); `logits` has one entry per vocab id.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            let from = history.len().saturating_sub(p.repeat_last_n);
            let mut seen: Vec<u32> = history[from..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / p.repeat_penalty } else { *l * p.repeat_penalty };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, best first; top-k cuts the list before the softmax.
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let k = if p.top_k == 0 { cand.len() } else { p.top_k.min(cand.len()) };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k);
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| ((c.1 - max) / p.temperature).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        // min-p: drop tokens far less likely than the best; top-p: keep the smallest head
        // whose mass reaches p. Both always keep the best token.
        let min_keep = probs[0] * p.min_p;
        let mut keep = probs.iter().take_while(|&&x| x >= min_keep).count().max(1);
        let mut mass = 0.0;
        for (i, &x) in probs[..keep].iter().enumerate() {
            mass += x;
            if mass >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f32() * total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            r -= x;
            if r <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// The highest logit's id; the lowest id among equals (NaN never wins, but a NaN first logit
/// is never beaten: the plain scan's answer).
pub fn argmax(logits: &[f32]) -> u32 {
    // Two passes the compiler vectorizes (16 running maxima, then a search for the first
    // equal): the one-pass scan, a dependent compare per logit, took a batched serving
    // step several percent over a 49k vocabulary, once per sequence.
    if logits.first().is_none_or(|l| l.is_nan()) {
        return 0;
    }
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = logits.chunks_exact(16);
    let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m });
    for c in chunks {
        for (m, &l) in lanes.iter_mut().zip(c) {
            *m = if l > *m { l } else { *m };
        }
    }
    max = lanes.iter().fold(max, |m, &l| if l > m { l } else { m });
    logits.iter().position(|&l| l == max).unwrap_or(0) as u32
}

/// A tiny, fast, well-distributed PRNG whose sequence never changes across versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorized argmax answers as a plain first-best scan, ties, NaN and -inf included.
    #[test]
    fn argmax_is_the_first_best() {
        let scan = |l: &[f32]| {
            let mut best = 0;
            for (i, &x) in l.iter().enumerate() {
                if x > l[best] {
                    best = i;
                }
            }
            best as u32
        };
        let mut rng = SplitMix64(7);
        for n in [1, 5, 16, 17, 100, 49152] {
            for case in 0..6 {
                // Few distinct values, so ties are common.
                let mut l: Vec<f32> = (0..n).map(|_| (rng.next_u64() % 7) as f32 - 3.0).collect();
                match case {
                    1 => l[0] = f32::NAN,
                    2 => l[n / 2] = f32::NAN,
                    3 => l.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                    4 => l[n - 1] = 99.0,
                    _ => {}
                }
                assert_eq!(argmax(&l), scan(&l), "n {n} case {case}");
            }
        }
        assert_eq!(argmax(&[]), 0);
    }

    fn draw(params: SamplingParams, n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params);
        (0..n).map(|_| s.sample(&mut [1.0, 2.0, 3.0, 2.5, -1.0], &[])).collect()
    }

    #[test]
    fn greedy_takes_the_argmax() {
        assert_eq!(draw(SamplingParams::greedy(), 3), vec![2, 2, 2]);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let p = SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 7, ..Default::default() };
        assert_eq!(draw(p.clone(), 50), draw(p.clone(), 50));
        assert_ne!(draw(p.clone(), 50), draw(SamplingParams { seed: 8, ..p }, 50));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams { temperature: 5.0, top_k: 1, ..Default::default() };
        assert!(draw(p, 20).iter().all(|&t| t == 2));
    }

    #[test]
    fn top_p_keeps_only_the_head() {
        // probabilities at T=1: id2 ~0.48, id3 ~0.29, id1 ~0.18: p=0.7 keeps ids 2 and 3
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.7, min_p: 0.0, seed: 1, ..Default::default() };
        let toks = draw(p, 200);
        assert!(toks.iter().all(|&t| t == 2 || t == 3));
        assert!(toks.contains(&3));
    }

    #[test]
    fn min_p_drops_the_unlikely() {
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.5, seed: 3, ..Default::default() };
        assert!(draw(p, 200).iter().all(|&t| t == 2 || t == 3));
    }

    #[test]
    fn repeat_penalty_pushes_away_from_history() {
        let mut s = Sampler::new(SamplingParams { repeat_penalty: 10.0, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut [1.0, 2.0, 3.0, 2.5, -1.0], &[2]), 3);
    }
}
