//! What both models' training shares: seeded minibatches and Adam.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Adam over a flat parameter vector (β1 0.9, β2 0.999, ε 1e-8).
pub struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    lr: f32,
}

impl Adam {
    /// For `n` parameters at learning rate `lr`.
    pub fn new(n: usize, lr: f32) -> Adam {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            lr,
        }
    }

    /// One update of `params` with the summed gradient `grad` times `scale`
    /// (1 / batch size).
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], scale: f32) {
        self.t += 1;
        let (b1, b2) = (0.9f32, 0.999f32);
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2 = 1.0 - b2.powi(self.t);
        for i in 0..params.len() {
            let gi = grad[i] * scale;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * gi;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * gi * gi;
            params[i] -= self.lr * (self.m[i] / bc1) / ((self.v[i] / bc2).sqrt() + 1e-8);
        }
    }
}

/// Calls `f` with each minibatch of sample indices 0..n: `epochs` passes,
/// each over a fresh seeded shuffle (Fisher–Yates, ChaCha8 from `seed`).
pub fn minibatches(n: usize, batch: usize, epochs: u32, seed: u64, mut f: impl FnMut(&[usize])) {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..epochs {
        for i in (1..n).rev() {
            idx.swap(i, rng.gen_range(0..=i));
        }
        for chunk in idx.chunks(batch.max(1)) {
            f(chunk);
        }
    }
}
