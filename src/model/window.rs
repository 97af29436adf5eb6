//! The per-shard window model: from the last [`W`] ticks of a shard's
//! counters it forecasts whether a reconnection storm is under way (a
//! probability) and the next window's message rate. Trained here in float,
//! shipped as float weights, quantized to GGML Q4_0 at load and run by
//! ggml-sys in a context the shard owns ([`GgmlWindow`]): the graph is built
//! once, its work buffer allocated on the first run and reused, one thread.
//!
//! Network: 64 → 64 → 64 → 2 (ReLU), every input width a multiple of two Q4_0
//! 32-element blocks (ggml's Q4_0 dot product takes blocks in pairs). Per-tick features ([`F`] of them, oldest tick first):
//! log message count, log new devices, log sequence resets, share of resets
//! near 0, id entropy of the reconnecting devices relative to its maximum,
//! log queue depth, and the message and reconnect counts against their slow
//! baselines (learned outside storms, so a busy shard is not a storm).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Ticks in a window.
pub const W: usize = 8;
/// Features per tick.
pub const F: usize = 8;
/// Inputs.
pub const IN: usize = W * F;
/// Hidden width.
pub const HID: usize = 64;
/// Outputs: storm logit, next-window log rate.
pub const OUT: usize = 2;

/// One tick of one shard, as the window model reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tick {
    /// Messages offered.
    pub offered: u64,
    /// Devices seen for the first time.
    pub new_devices: u64,
    /// Sequence resets.
    pub resets: u64,
    /// Of those, near 0.
    pub resets_near_zero: u64,
    /// Entropy (bits) of the reconnecting devices' id-hash histogram.
    pub id_entropy: f64,
    /// Messages waiting in the Dam.
    pub depth: u64,
}

impl Tick {
    /// The tick as the control core's per-shard report has it.
    pub fn from_report(r: &crate::control::ShardReport) -> Tick {
        Tick {
            offered: r.offered,
            new_devices: r.new_devices,
            resets: r.resets,
            resets_near_zero: r.resets_near_zero,
            id_entropy: crate::control::predict::entropy(&r.id_hist),
            depth: r.depth,
        }
    }
}

fn lg(v: f64) -> f32 {
    (1.0 + v.max(0.0)).log2() as f32
}

/// The sliding window of per-tick features (no allocation per tick).
#[derive(Debug, Clone)]
pub struct Window {
    hist: [[f32; F]; W],
    pos: usize,
    base_msgs: f32,
    base_rec: f32,
    warm: u32,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            hist: [[0.0; F]; W],
            pos: 0,
            base_msgs: 0.0,
            base_rec: 0.0,
            warm: 0,
        }
    }
}

impl Window {
    /// Adds a tick; returns the model input (oldest tick first).
    pub fn push(&mut self, t: &Tick) -> [f32; IN] {
        let rec = (t.new_devices + t.resets) as f64;
        let lm = lg(t.offered as f64);
        let lr = lg(rec);
        let max_h = rec.clamp(1.0, 256.0).log2();
        let rel_h = if max_h > 0.0 {
            (t.id_entropy / max_h).min(1.0) as f32
        } else {
            0.0
        };
        let near0 = if t.resets > 0 {
            t.resets_near_zero as f32 / t.resets as f32
        } else {
            0.0
        };
        let f = [
            lm / 16.0,
            lg(t.new_devices as f64) / 16.0,
            lg(t.resets as f64) / 16.0,
            near0,
            rel_h,
            lg(t.depth as f64) / 20.0,
            (lm - self.base_msgs) / 8.0,
            (lr - self.base_rec) / 8.0,
        ];
        // Baselines move slowly and stop while reconnects are far above them.
        if lr < self.base_rec + 3.0 || self.warm < 50 {
            let a = if self.warm < 50 { 0.1 } else { 0.01 };
            self.base_msgs += a * (lm - self.base_msgs);
            self.base_rec += a * (lr - self.base_rec);
            self.warm = self.warm.saturating_add(1);
        }
        self.hist[self.pos] = f;
        self.pos = (self.pos + 1) % W;
        let mut x = [0f32; IN];
        for k in 0..W {
            let row = &self.hist[(self.pos + k) % W];
            x[k * F..(k + 1) * F].copy_from_slice(row);
        }
        x
    }
}

/// The float network (weights `[out][in]`); what `models/window.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatWindow {
    /// How it was made.
    pub provenance: String,
    /// Storm probability at or above which a shard reports a storm.
    pub threshold: f32,
    /// Layer 1 (HID × IN).
    pub w1: Vec<Vec<f32>>,
    /// Bias 1.
    pub b1: Vec<f32>,
    /// Layer 2 (HID × HID).
    pub w2: Vec<Vec<f32>>,
    /// Bias 2.
    pub b2: Vec<f32>,
    /// Layer 3 (OUT × HID).
    pub w3: Vec<Vec<f32>>,
    /// Bias 3.
    pub b3: Vec<f32>,
}

/// A forecast.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Forecast {
    /// Probability that a storm is under way.
    pub storm: f32,
    /// Expected messages per tick over the next window.
    pub next_rate: f32,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl FloatWindow {
    fn new(seed: u64) -> FloatWindow {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut mat = |o: usize, i: usize| -> Vec<Vec<f32>> {
            let a = (6.0 / i as f32).sqrt();
            (0..o)
                .map(|_| (0..i).map(|_| r.gen_range(-a..a)).collect())
                .collect()
        };
        FloatWindow {
            provenance: String::new(),
            threshold: 0.5,
            w1: mat(HID, IN),
            b1: vec![0.0; HID],
            w2: mat(HID, HID),
            b2: vec![0.0; HID],
            w3: mat(OUT, HID),
            b3: vec![0.0; OUT],
        }
    }

    fn forward(&self, x: &[f32]) -> ([f32; HID], [f32; HID], [f32; OUT]) {
        let dot = |w: &[f32], v: &[f32]| w.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        let h1: [f32; HID] = std::array::from_fn(|j| (self.b1[j] + dot(&self.w1[j], x)).max(0.0));
        let h2: [f32; HID] = std::array::from_fn(|j| (self.b2[j] + dot(&self.w2[j], &h1)).max(0.0));
        let o: [f32; OUT] = std::array::from_fn(|j| self.b3[j] + dot(&self.w3[j], &h2));
        (h1, h2, o)
    }

    /// The float forecast (reference for the Q4_0 path).
    pub fn infer(&self, x: &[f32; IN]) -> Forecast {
        let o = self.forward(x).2;
        Forecast {
            storm: sigmoid(o[0]),
            next_rate: (o[1] * 20.0).exp2() - 1.0,
        }
    }

    /// Checks shapes.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.w1.len() == HID
            && self.w1.iter().all(|r| r.len() == IN)
            && self.b1.len() == HID
            && self.w2.len() == HID
            && self.w2.iter().all(|r| r.len() == HID)
            && self.b2.len() == HID
            && self.w3.len() == OUT
            && self.w3.iter().all(|r| r.len() == HID)
            && self.b3.len() == OUT;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "window model layers must be {HID}x{IN}, {HID}x{HID}, {OUT}x{HID}"
            ))
        }
    }
}

/// One training sample: the input window, storm under way (0/1), and the
/// next window's log rate target (log2(1 + messages per tick) / 20).
pub type Sample = ([f32; IN], f32, f32);

/// Trains with Adam: binary cross-entropy on the storm output (positives
/// weighted by the class ratio) plus squared error on the rate output.
pub fn train(samples: &[Sample], seed: u64, epochs: u32) -> FloatWindow {
    let mut m = FloatWindow::new(seed);
    let pos = samples.iter().filter(|s| s.1 > 0.5).count().max(1);
    let pos_w = ((samples.len() - pos) as f32 / pos as f32).sqrt().max(1.0);
    let n_params = HID * IN + HID + HID * HID + HID + OUT * HID + OUT;
    let mut flat = vec![0f32; n_params];
    pack(&m, &mut flat);
    let mut adam = super::optim::Adam::new(n_params, 2e-3);
    super::optim::minibatches(samples.len(), 64, epochs, seed ^ 0x77, |chunk| {
        let mut g = vec![0f32; n_params];
        for &s in chunk {
            let (x, y, r) = &samples[s];
            let (h1, h2, o) = m.forward(x);
            let w = if *y > 0.5 { pos_w } else { 1.0 };
            let d3 = [w * (sigmoid(o[0]) - y), 2.0 * (o[1] - r)];
            let (ow1, ob1) = (0, HID * IN);
            let (ow2, ob2) = (ob1 + HID, ob1 + HID + HID * HID);
            let (ow3, ob3) = (ob2 + HID, ob2 + HID + OUT * HID);
            let mut d2 = [0f32; HID];
            for k in 0..OUT {
                for j in 0..HID {
                    g[ow3 + k * HID + j] += d3[k] * h2[j];
                    d2[j] += d3[k] * m.w3[k][j];
                }
                g[ob3 + k] += d3[k];
            }
            let mut d1 = [0f32; HID];
            for j in 0..HID {
                if h2[j] <= 0.0 {
                    continue;
                }
                for i in 0..HID {
                    g[ow2 + j * HID + i] += d2[j] * h1[i];
                    d1[i] += d2[j] * m.w2[j][i];
                }
                g[ob2 + j] += d2[j];
            }
            for j in 0..HID {
                if h1[j] <= 0.0 {
                    continue;
                }
                for i in 0..IN {
                    g[ow1 + j * IN + i] += d1[j] * x[i];
                }
                g[ob1 + j] += d1[j];
            }
        }
        adam.step(&mut flat, &g, 1.0 / chunk.len() as f32);
        unpack(&mut m, &flat);
    });
    m
}

fn pack(m: &FloatWindow, v: &mut [f32]) {
    let it =
        m.w1.iter()
            .flatten()
            .chain(&m.b1)
            .chain(m.w2.iter().flatten())
            .chain(&m.b2)
            .chain(m.w3.iter().flatten())
            .chain(&m.b3);
    for (d, s) in v.iter_mut().zip(it) {
        *d = *s;
    }
}

fn unpack(m: &mut FloatWindow, v: &[f32]) {
    let mut it = v.iter().copied();
    let dst =
        m.w1.iter_mut()
            .flatten()
            .chain(m.b1.iter_mut())
            .chain(m.w2.iter_mut().flatten())
            .chain(m.b2.iter_mut())
            .chain(m.w3.iter_mut().flatten())
            .chain(m.b3.iter_mut());
    for d in dst {
        *d = it.next().unwrap_or(0.0);
    }
}

/// The model in a GGML context of its own, Q4_0 weights, graph built once.
/// One per shard; not shared between threads.
pub struct GgmlWindow {
    ctx: *mut ggml_sys::ggml_context,
    input: *mut ggml_sys::ggml_tensor,
    out: *mut ggml_sys::ggml_tensor,
    graph: Box<ggml_sys::ggml_cgraph>,
    threshold: f32,
}

// SAFETY: the context is owned by this value alone and only used through
// `&mut self`; moving it to another thread (the shard's) before use is fine.
unsafe impl Send for GgmlWindow {}

impl std::fmt::Debug for GgmlWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgmlWindow").finish_non_exhaustive()
    }
}

impl GgmlWindow {
    /// Quantizes `m` to Q4_0 and builds the graph.
    pub fn new(m: &FloatWindow) -> Result<GgmlWindow, String> {
        use ggml_sys as g;
        m.validate()?;
        // SAFETY: plain ggml C API use: a private context, tensors created in
        // it with the sizes written to, the graph kept alive beside it.
        unsafe {
            let ctx = g::ggml_init(g::ggml_init_params {
                mem_size: 1 << 20,
                mem_buffer: std::ptr::null_mut(),
                no_alloc: false,
            });
            if ctx.is_null() {
                return Err("ggml_init failed (out of memory)".into());
            }
            let q4 = |rows: &[Vec<f32>], k: usize| {
                let t = g::ggml_new_tensor_2d(
                    ctx,
                    g::ggml_type_GGML_TYPE_Q4_0,
                    k as i64,
                    rows.len() as i64,
                );
                let flat: Vec<f32> = rows.iter().flatten().copied().collect();
                let mut hist = [0i64; 16];
                g::ggml_quantize_q4_0(
                    flat.as_ptr(),
                    (*t).data,
                    flat.len() as i32,
                    k as i32,
                    hist.as_mut_ptr(),
                );
                t
            };
            let f32v = |v: &[f32]| {
                let t = g::ggml_new_tensor_1d(ctx, g::ggml_type_GGML_TYPE_F32, v.len() as i64);
                std::ptr::copy_nonoverlapping(v.as_ptr(), (*t).data.cast::<f32>(), v.len());
                t
            };
            let w1 = q4(&m.w1, IN);
            let w2 = q4(&m.w2, HID);
            // The 2×64 output layer stays f32 (as llama.cpp keeps its output
            // layer above 4 bits): at Q4_0 the rate output came out biased
            // low by a factor ~4 against the float network (docs/models.md).
            let w3 = {
                let t =
                    g::ggml_new_tensor_2d(ctx, g::ggml_type_GGML_TYPE_F32, HID as i64, OUT as i64);
                let flat: Vec<f32> = m.w3.iter().flatten().copied().collect();
                std::ptr::copy_nonoverlapping(flat.as_ptr(), (*t).data.cast::<f32>(), flat.len());
                t
            };
            let (b1, b2, b3) = (f32v(&m.b1), f32v(&m.b2), f32v(&m.b3));
            let input = g::ggml_new_tensor_1d(ctx, g::ggml_type_GGML_TYPE_F32, IN as i64);
            let h1 = g::ggml_relu(ctx, g::ggml_add(ctx, g::ggml_mul_mat(ctx, w1, input), b1));
            let h2 = g::ggml_relu(ctx, g::ggml_add(ctx, g::ggml_mul_mat(ctx, w2, h1), b2));
            let out = g::ggml_add(ctx, g::ggml_mul_mat(ctx, w3, h2), b3);
            let mut graph = Box::new(g::ggml_build_forward(out));
            graph.n_threads = 1;
            Ok(GgmlWindow {
                ctx,
                input,
                out,
                graph,
                threshold: m.threshold,
            })
        }
    }

    /// The storm threshold of the model file.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// One inference (no allocation after the first).
    pub fn infer(&mut self, x: &[f32; IN]) -> Forecast {
        // SAFETY: `input` holds IN f32s and `out` OUT f32s in our context;
        // the graph belongs to that context.
        unsafe {
            std::ptr::copy_nonoverlapping(x.as_ptr(), (*self.input).data.cast::<f32>(), IN);
            ggml_sys::ggml_graph_compute(self.ctx, &mut *self.graph);
            let o = (*self.out).data.cast::<f32>();
            let (s, r) = (*o, *o.add(1));
            Forecast {
                storm: sigmoid(s),
                next_rate: (r * 20.0).exp2() - 1.0,
            }
        }
    }
}

impl Drop for GgmlWindow {
    fn drop(&mut self) {
        // SAFETY: created by ggml_init in `new`, freed once.
        unsafe { ggml_sys::ggml_free(self.ctx) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_inference_follows_the_float_network() {
        let m = FloatWindow::new(3);
        let mut g = GgmlWindow::new(&m).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..50 {
            let x: [f32; IN] = std::array::from_fn(|_| r.gen_range(0.0..1.0));
            let a = m.infer(&x);
            let b = g.infer(&x);
            assert!((a.storm - b.storm).abs() < 0.2, "{a:?} vs {b:?}");
        }
        // The same input twice gives the same output (graph reused).
        let x = [0.5f32; IN];
        assert_eq!(g.infer(&x), g.infer(&x));
    }
}
