//! The per-packet classifier: a 12→16→16→4 MLP trained here in float,
//! quantized after training to int8 as in Hara & Sasabe (eq. 1–2: one
//! calibrated scale per layer input, one scale per weight column), and run
//! integer-only — in Rust ([`QuantModel::infer`]) and in the XDP program
//! (`klais_classify` in `bpf/klais.bpf.c`), which agree bit for bit.
//!
//! Integer inference, all in i64 with 16 fractional bits (eq. 3):
//! 1. clamp each feature to the training range and min-max normalize it:
//!    `n = ((x − min) · r) >> 32` with `r = ⌊2⁴⁸ / (max − min)⌋` computed at
//!    load (no division per packet);
//! 2. per layer: quantize its input `q = clamp((v·σ + 2³¹) >> 32, ±127)`
//!    (σ in Q16), multiply-accumulate with the int8 weights, dequantize with
//!    the per-column factor `d = round(2³² / (σ·σw))`:
//!    `y = (acc·d + 2¹⁵) >> 16` plus the bias (Q16), ReLU on hidden layers;
//! 3. the class is the first index of the largest output.
//!
//! Calibration: layer-input ranges by minimising the KL divergence between
//! the activation histogram and its 127-level quantization (the paper's
//! method); weight columns by their largest magnitude (a column has 12–16
//! weights, too few for a histogram).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::features::{N_FEATURES, ONE};

/// Hidden width.
pub const H: usize = 16;
/// Classes (normal, flood, sweep, replay).
pub const K: usize = 4;

/// The classes, in output order (the scenario generator labels its traffic
/// with the same names: `train` checks they agree).
pub const CLASS_NAMES: [&str; K] = ["normal", "flood", "sweep", "replay"];

/// What the kernel does with a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    Pass,
    /// XDP_DROP, counted.
    Drop,
    /// Let it through with the class in the Kafka record's `model` header.
    Mark,
}

impl Action {
    /// `KLAIS_ACT_*` in bpf/klais.h.
    pub fn code(self) -> u8 {
        match self {
            Action::Pass => 0,
            Action::Drop => 1,
            Action::Mark => 2,
        }
    }
}

/// The float network (weights `[out][in]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatMlp {
    /// Layer 1.
    pub w1: Vec<[f32; N_FEATURES]>,
    /// Bias 1.
    pub b1: [f32; H],
    /// Layer 2.
    pub w2: Vec<[f32; H]>,
    /// Bias 2.
    pub b2: [f32; H],
    /// Layer 3.
    pub w3: Vec<[f32; H]>,
    /// Bias 3.
    pub b3: [f32; K],
}

/// Normalization bounds per feature (fixed point, from the training data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Norm {
    /// Lower bounds.
    pub min: [i64; N_FEATURES],
    /// Upper bounds (> min).
    pub max: [i64; N_FEATURES],
}

impl Norm {
    /// From fixed-point rows.
    pub fn fit(rows: &[[i64; N_FEATURES]]) -> Norm {
        let mut min = [i64::MAX; N_FEATURES];
        let mut max = [i64::MIN; N_FEATURES];
        for r in rows {
            for i in 0..N_FEATURES {
                min[i] = min[i].min(r[i]);
                max[i] = max[i].max(r[i]);
            }
        }
        for i in 0..N_FEATURES {
            if min[i] > max[i] {
                (min[i], max[i]) = (0, ONE);
            }
            if max[i] <= min[i] {
                max[i] = min[i] + ONE;
            }
        }
        Norm { min, max }
    }

    /// floor(2⁴⁸ / (max − min)) per feature: the kernel multiplies by it
    /// instead of dividing (`norm_recip` in `struct klais_model`).
    pub fn recip(&self) -> [u64; N_FEATURES] {
        std::array::from_fn(|i| (1u64 << 48) / (self.max[i] - self.min[i]).max(1) as u64)
    }

    /// Normalized features in fixed point (0..=1<<16), as the kernel does it:
    /// `((x − min) · recip) >> 32` with x clamped to the range.
    #[inline]
    pub fn apply_fixed(&self, x: &[i64; N_FEATURES]) -> [i64; N_FEATURES] {
        let r = self.recip();
        let mut n = [0i64; N_FEATURES];
        for i in 0..N_FEATURES {
            let v = x[i].clamp(self.min[i], self.max[i]);
            n[i] = (((v - self.min[i]) as u64).wrapping_mul(r[i]) >> 32) as i64;
        }
        n
    }

    /// Normalized features as floats (for the float network).
    pub fn apply_float(&self, x: &[i64; N_FEATURES]) -> [f32; N_FEATURES] {
        let mut n = [0f32; N_FEATURES];
        for i in 0..N_FEATURES {
            let v = x[i].clamp(self.min[i], self.max[i]);
            n[i] = ((v - self.min[i]) as f64 / (self.max[i] - self.min[i]) as f64) as f32;
        }
        n
    }
}

fn relu(v: &mut [f32]) {
    for x in v {
        *x = x.max(0.0);
    }
}

impl FloatMlp {
    /// He-initialised from `seed`.
    pub fn new(seed: u64) -> FloatMlp {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut init = |fan_in: usize| {
            let a = (6.0 / fan_in as f32).sqrt();
            r.gen_range(-a..a)
        };
        FloatMlp {
            w1: (0..H)
                .map(|_| std::array::from_fn(|_| init(N_FEATURES)))
                .collect(),
            b1: [0.0; H],
            w2: (0..H).map(|_| std::array::from_fn(|_| init(H))).collect(),
            b2: [0.0; H],
            w3: (0..K).map(|_| std::array::from_fn(|_| init(H))).collect(),
            b3: [0.0; K],
        }
    }

    /// Forward pass: (hidden 1, hidden 2, logits).
    pub fn forward(&self, x: &[f32; N_FEATURES]) -> ([f32; H], [f32; H], [f32; K]) {
        let mut h1 = self.b1;
        for (j, w) in self.w1.iter().enumerate() {
            h1[j] += w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        }
        relu(&mut h1);
        let mut h2 = self.b2;
        for (j, w) in self.w2.iter().enumerate() {
            h2[j] += w.iter().zip(&h1).map(|(a, b)| a * b).sum::<f32>();
        }
        relu(&mut h2);
        let mut o = self.b3;
        for (j, w) in self.w3.iter().enumerate() {
            o[j] += w.iter().zip(&h2).map(|(a, b)| a * b).sum::<f32>();
        }
        (h1, h2, o)
    }

    /// The predicted class.
    pub fn classify(&self, x: &[f32; N_FEATURES]) -> usize {
        argmax_f(&self.forward(x).2)
    }
}

fn argmax_f(v: &[f32]) -> usize {
    let mut best = 0;
    for i in 1..v.len() {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainConfig {
    /// Seed (initialisation and shuffling).
    pub seed: u64,
    /// Passes over the data.
    pub epochs: u32,
    /// Adam learning rate.
    pub lr: f32,
    /// Minibatch size.
    pub batch: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 7,
            epochs: 30,
            lr: 3e-3,
            batch: 128,
        }
    }
}

/// Trains with Adam on softmax cross-entropy, each class weighted by the
/// inverse square root of its frequency (the classes are very unbalanced).
pub fn train(x: &[[f32; N_FEATURES]], y: &[u8], cfg: &TrainConfig) -> FloatMlp {
    let mut m = FloatMlp::new(cfg.seed);
    let n = x.len();
    let mut counts = [0usize; K];
    for &c in y {
        counts[c as usize] += 1;
    }
    let cw: Vec<f32> = counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                (n as f32 / c as f32).sqrt()
            }
        })
        .collect();
    let cw_mean = cw.iter().sum::<f32>() / K as f32;
    let cw: Vec<f32> = cw.iter().map(|w| w / cw_mean.max(1e-9)).collect();

    let mut flat = flatten(&m);
    let mut adam = super::optim::Adam::new(flat.len(), cfg.lr);
    super::optim::minibatches(n, cfg.batch, cfg.epochs, cfg.seed ^ 0xadad, |chunk| {
        let mut g = vec![0f32; flat.len()];
        for &s in chunk {
            backprop(&m, &x[s], y[s] as usize, cw[y[s] as usize], &mut g);
        }
        adam.step(&mut flat, &g, 1.0 / chunk.len() as f32);
        unflatten(&mut m, &flat);
    });
    m
}

fn flatten(m: &FloatMlp) -> Vec<f32> {
    let mut v = Vec::new();
    m.w1.iter().for_each(|r| v.extend_from_slice(r));
    v.extend_from_slice(&m.b1);
    m.w2.iter().for_each(|r| v.extend_from_slice(r));
    v.extend_from_slice(&m.b2);
    m.w3.iter().for_each(|r| v.extend_from_slice(r));
    v.extend_from_slice(&m.b3);
    v
}

fn unflatten(m: &mut FloatMlp, v: &[f32]) {
    let mut it = v.iter().copied();
    m.w1.iter_mut()
        .flat_map(|r| r.iter_mut())
        .for_each(|w| *w = it.next().unwrap_or(0.0));
    m.b1.iter_mut().for_each(|w| *w = it.next().unwrap_or(0.0));
    m.w2.iter_mut()
        .flat_map(|r| r.iter_mut())
        .for_each(|w| *w = it.next().unwrap_or(0.0));
    m.b2.iter_mut().for_each(|w| *w = it.next().unwrap_or(0.0));
    m.w3.iter_mut()
        .flat_map(|r| r.iter_mut())
        .for_each(|w| *w = it.next().unwrap_or(0.0));
    m.b3.iter_mut().for_each(|w| *w = it.next().unwrap_or(0.0));
}

/// Adds one sample's gradient (flattened like [`flatten`]) into `g`.
fn backprop(m: &FloatMlp, x: &[f32; N_FEATURES], y: usize, w: f32, g: &mut [f32]) {
    let (h1, h2, o) = m.forward(x);
    let mx = o.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f32> = o.iter().map(|v| (v - mx).exp()).collect();
    let s: f32 = e.iter().sum();
    let mut d3 = [0f32; K];
    for k in 0..K {
        d3[k] = w * (e[k] / s - if k == y { 1.0 } else { 0.0 });
    }
    let o_w1 = 0;
    let o_b1 = o_w1 + H * N_FEATURES;
    let o_w2 = o_b1 + H;
    let o_b2 = o_w2 + H * H;
    let o_w3 = o_b2 + H;
    let o_b3 = o_w3 + K * H;
    let mut d2 = [0f32; H];
    for k in 0..K {
        for j in 0..H {
            g[o_w3 + k * H + j] += d3[k] * h2[j];
            d2[j] += d3[k] * m.w3[k][j];
        }
        g[o_b3 + k] += d3[k];
    }
    let mut d1 = [0f32; H];
    for j in 0..H {
        if h2[j] <= 0.0 {
            continue;
        }
        for i in 0..H {
            g[o_w2 + j * H + i] += d2[j] * h1[i];
            d1[i] += d2[j] * m.w2[j][i];
        }
        g[o_b2 + j] += d2[j];
    }
    for j in 0..H {
        if h1[j] <= 0.0 {
            continue;
        }
        for i in 0..N_FEATURES {
            g[o_w1 + j * N_FEATURES + i] += d1[j] * x[i];
        }
        g[o_b1 + j] += d1[j];
    }
}

/// The integer-only network, as the kernel holds it (`struct klais_model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantModel {
    /// Normalization.
    pub norm: Norm,
    /// σ of each layer's input, Q16.
    pub in_scale: [i64; 3],
    /// int8 weights `[out][in]`.
    pub w1: Vec<[i8; N_FEATURES]>,
    /// Layer 2.
    pub w2: Vec<[i8; H]>,
    /// Layer 3.
    pub w3: Vec<[i8; H]>,
    /// Dequantization per output column, round(2³² / (σ·σw)).
    pub deq1: [i64; H],
    /// Layer 2.
    pub deq2: [i64; H],
    /// Layer 3.
    pub deq3: [i64; K],
    /// Biases, Q16.
    pub b1: [i64; H],
    /// Layer 2.
    pub b2: [i64; H],
    /// Layer 3.
    pub b3: [i64; K],
}

#[inline]
fn quant_in(v: i64, sig: i64) -> i64 {
    ((v * sig + (1i64 << 31)) >> 32).clamp(-127, 127)
}

#[inline]
fn layer<const I: usize, const O: usize>(
    input: &[i64; I],
    sig: i64,
    w: &[[i8; I]],
    deq: &[i64; O],
    b: &[i64; O],
    relu: bool,
) -> [i64; O] {
    let mut q = [0i64; I];
    for i in 0..I {
        q[i] = quant_in(input[i], sig);
    }
    let mut out = [0i64; O];
    for j in 0..O {
        let mut acc = 0i64;
        for i in 0..I {
            acc += q[i] * i64::from(w[j][i]);
        }
        let mut y = ((acc * deq[j] + (1 << 15)) >> 16) + b[j];
        if relu && y < 0 {
            y = 0;
        }
        out[j] = y;
    }
    out
}

/// The first index of the largest value (the kernel's rule).
#[inline]
pub fn argmax(v: &[i64; K]) -> usize {
    let mut best = 0;
    for i in 1..K {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

impl QuantModel {
    /// Logits (Q16) for raw fixed-point features: what the kernel computes.
    #[inline]
    pub fn infer(&self, x: &[i64; N_FEATURES]) -> [i64; K] {
        let n = self.norm.apply_fixed(x);
        let h1 = layer(&n, self.in_scale[0], &self.w1, &self.deq1, &self.b1, true);
        let h2 = layer(&h1, self.in_scale[1], &self.w2, &self.deq2, &self.b2, true);
        layer(&h2, self.in_scale[2], &self.w3, &self.deq3, &self.b3, false)
    }

    /// The predicted class.
    pub fn classify(&self, x: &[i64; N_FEATURES]) -> usize {
        argmax(&self.infer(x))
    }
}

/// The range α minimising the KL divergence between the distribution of
/// `|values|` and its 127-level quantization (entropy calibration, 2048-bin
/// histogram; thresholds from bin 128 up).
pub fn kl_calibrate(values: &[f32]) -> f32 {
    const BINS: usize = 2048;
    const LEVELS: usize = 127;
    let maxv = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    if maxv <= 0.0 {
        return 1.0;
    }
    let mut hist = vec![0f64; BINS];
    for v in values {
        let b = ((v.abs() / maxv) * BINS as f32) as usize;
        hist[b.min(BINS - 1)] += 1.0;
    }
    let mut best = (f64::MAX, BINS);
    for t in (LEVELS..=BINS).step_by(16) {
        // Reference: the first t bins, the outliers folded into the last.
        let mut p: Vec<f64> = hist[..t].to_vec();
        p[t - 1] += hist[t..].iter().sum::<f64>();
        // Candidate: the t bins merged into LEVELS groups, spread back evenly
        // over the non-empty bins of each group.
        let mut q = vec![0f64; t];
        for l in 0..LEVELS {
            let s = l * t / LEVELS;
            let e = ((l + 1) * t / LEVELS).max(s + 1);
            let total: f64 = hist[s..e].iter().sum();
            let nz = hist[s..e].iter().filter(|&&h| h > 0.0).count();
            if nz > 0 {
                for i in s..e {
                    if hist[i] > 0.0 {
                        q[i] = total / nz as f64;
                    }
                }
            }
        }
        let ps: f64 = p.iter().sum();
        let qs: f64 = q.iter().sum();
        if ps <= 0.0 || qs <= 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for i in 0..t {
            if p[i] > 0.0 {
                let pi = p[i] / ps;
                let qi = (q[i] / qs).max(1e-12);
                kl += pi * (pi / qi).ln();
            }
        }
        if kl < best.0 {
            best = (kl, t);
        }
    }
    maxv * best.1 as f32 / BINS as f32
}

fn q16(v: f64) -> i64 {
    (v * 65536.0).round() as i64
}

/// Quantizes a trained network, calibrating activation ranges on `calib`
/// (normalized float inputs from the training split, with their labels).
///
/// The first layer's input is min-max normalized into [0, 1] by
/// construction: its range is exactly 1 (σ = 127). Each hidden layer's range
/// is either the KL-calibrated one or the largest activation seen, whichever
/// pair classifies `calib` best in int8 (KL alone clipped the rare large
/// activations that single out a class: measured, docs/models.md).
pub fn quantize(
    m: &FloatMlp,
    norm: &Norm,
    calib: &[[f32; N_FEATURES]],
    raw: &[[i64; N_FEATURES]],
    labels: &[u8],
) -> QuantModel {
    let mut a1 = Vec::new();
    let mut a2 = Vec::new();
    for x in calib {
        let (h1, h2, _) = m.forward(x);
        a1.extend_from_slice(&h1);
        a2.extend_from_slice(&h2);
    }
    let amax = |v: &[f32]| v.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-6);
    let c1 = [kl_calibrate(&a1), amax(&a1)];
    let c2 = [kl_calibrate(&a2), amax(&a2)];
    let mut best: Option<(usize, QuantModel)> = None;
    for &x1 in &c1 {
        for &x2 in &c2 {
            let q = quantize_with(m, norm, [1.0, x1, x2]);
            let ok = raw
                .iter()
                .zip(labels)
                .filter(|(x, &y)| q.classify(x) == y as usize)
                .count();
            if best.as_ref().map_or(true, |(b, _)| ok > *b) {
                best = Some((ok, q));
            }
        }
    }
    best.expect("four candidates").1
}

/// Quantizes with the given layer-input ranges α.
pub fn quantize_with(m: &FloatMlp, norm: &Norm, alpha: [f32; 3]) -> QuantModel {
    let sig: [f64; 3] = std::array::from_fn(|l| 127.0 / f64::from(alpha[l].max(1e-6)));
    // The integer path uses σ as rounded to Q16: dequantize with that one.
    let in_scale: [i64; 3] = std::array::from_fn(|l| q16(sig[l]).max(1));
    fn qlayer<const I: usize, const O: usize>(
        w: &[[f32; I]],
        b: &[f32; O],
        sig_q16: i64,
    ) -> (Vec<[i8; I]>, [i64; O], [i64; O]) {
        let sig = sig_q16 as f64 / 65536.0;
        let mut wq = Vec::with_capacity(O);
        let mut deq = [0i64; O];
        let mut bq = [0i64; O];
        for j in 0..O {
            let amax = w[j].iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-8);
            let sw = 127.0 / f64::from(amax);
            wq.push(std::array::from_fn(|i| {
                (f64::from(w[j][i]) * sw).round().clamp(-127.0, 127.0) as i8
            }));
            deq[j] = (4_294_967_296.0 / (sig * sw)).round() as i64;
            bq[j] = q16(f64::from(b[j]));
        }
        (wq, deq, bq)
    }
    let (w1, deq1, b1) = qlayer::<N_FEATURES, H>(&m.w1, &m.b1, in_scale[0]);
    let (w2, deq2, b2) = qlayer::<H, H>(&m.w2, &m.b2, in_scale[1]);
    let (w3, deq3, b3) = qlayer::<H, K>(&m.w3, &m.b3, in_scale[2]);
    QuantModel {
        norm: norm.clone(),
        in_scale,
        w1,
        w2,
        w3,
        deq1,
        deq2,
        deq3,
        b1,
        b2,
        b3,
    }
}

/// The shipped classifier file (`models/classifier.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierFile {
    /// How it was made (seed, command).
    pub provenance: String,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// Action per class.
    pub actions: [Action; K],
    /// The float network (evaluation).
    pub float: FloatMlp,
    /// The integer network (kernel and Rust int8 path).
    pub quant: QuantModel,
}

/// Per-class and overall figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// confusion[truth][predicted].
    pub confusion: [[u64; K]; K],
}

impl Metrics {
    /// Adds one prediction.
    pub fn add(&mut self, truth: usize, pred: usize) {
        self.confusion[truth][pred] += 1;
    }
    /// Samples.
    pub fn total(&self) -> u64 {
        self.confusion.iter().flatten().sum()
    }
    /// Accuracy.
    pub fn accuracy(&self) -> f64 {
        let ok: u64 = (0..K).map(|i| self.confusion[i][i]).sum();
        ok as f64 / self.total().max(1) as f64
    }
    /// (precision, recall, f1, support) of a class.
    pub fn class(&self, c: usize) -> (f64, f64, f64, u64) {
        let tp = self.confusion[c][c] as f64;
        let pred: u64 = (0..K).map(|t| self.confusion[t][c]).sum();
        let sup: u64 = self.confusion[c].iter().sum();
        let p = if pred == 0 { 0.0 } else { tp / pred as f64 };
        let r = if sup == 0 { 0.0 } else { tp / sup as f64 };
        let f = if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        };
        (p, r, f, sup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_calibration_clips_a_long_tail_and_keeps_a_uniform_range() {
        let mut v: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 100.0).collect();
        let a = kl_calibrate(&v);
        assert!(a > 0.9, "uniform 0..1 keeps its range: {a}");
        v.push(1000.0);
        let a = kl_calibrate(&v);
        assert!(a < 100.0, "one outlier does not set the range: {a}");
    }

    #[test]
    fn training_separates_two_easy_classes_and_int8_agrees_with_float() {
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let mut raw = Vec::new();
        let mut y = Vec::new();
        for i in 0..4000 {
            let c = (i % 2) as u8;
            let mut x = [0i64; N_FEATURES];
            for (f, v) in x.iter_mut().enumerate() {
                let centre = if c == 1 && f < 3 { 0.8 } else { 0.2 };
                *v = ((centre + r.gen_range(-0.15..0.15)) * 65536.0) as i64;
            }
            raw.push(x);
            y.push(c);
        }
        let norm = Norm::fit(&raw);
        let xf: Vec<_> = raw.iter().map(|x| norm.apply_float(x)).collect();
        let m = train(
            &xf,
            &y,
            &TrainConfig {
                epochs: 5,
                ..TrainConfig::default()
            },
        );
        let q = quantize(&m, &norm, &xf[..1000], &raw[..1000], &y[..1000]);
        let (mut ok_f, mut ok_q) = (0, 0);
        for (i, x) in raw.iter().enumerate() {
            ok_f += usize::from(m.classify(&xf[i]) == y[i] as usize);
            ok_q += usize::from(q.classify(x) == y[i] as usize);
        }
        assert!(ok_f > 3900, "float {ok_f}/4000");
        assert!(ok_q > 3900, "int8 {ok_q}/4000");
    }
}
