//! Plain f64 implementations of every backend op: the ground truth the kernels are tested against.
//! Written for clarity, not speed; layouts as in [`super::Backend`].

pub fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

pub fn linear(x: &[f64], rows: usize, k: usize, w: &[f64], n: usize, bias: Option<&[f64]>) -> Vec<f64> {
    let mut out = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            let mut s = bias.map_or(0.0, |b| b[j]);
            for i in 0..k {
                s += x[r * k + i] * w[j * k + i];
            }
            out[r * n + j] = s;
        }
    }
    out
}

/// Returns (new residual, normed output).
pub fn add_rmsnorm(residual: &[f64], delta: Option<&[f64]>, w: &[f64], eps: f64, dim: usize) -> (Vec<f64>, Vec<f64>) {
    let mut res = residual.to_vec();
    if let Some(d) = delta {
        res.iter_mut().zip(d).for_each(|(r, d)| *r += d);
    }
    let mut out = vec![0.0; res.len()];
    for (row, o) in res.chunks(dim).zip(out.chunks_mut(dim)) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for i in 0..dim {
            o[i] = row[i] * inv * w[i];
        }
    }
    (res, out)
}

/// x: [batch*seqlen, ch] contiguous; state: [batch, k-1, ch]. Returns (out, new state).
pub fn conv1d_silu(
    x: &[f64],
    batch: usize,
    seqlen: usize,
    ch: usize,
    k: usize,
    w: &[f64],
    bias: Option<&[f64]>,
    state: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; batch * seqlen * ch];
    let mut new_state = vec![0.0; batch * (k - 1) * ch];
    for b in 0..batch {
        // The padded input: k-1 state rows, then the sequence.
        let input = |t: isize, c: usize| -> f64 {
            if t < 0 {
                state[(b * (k - 1) + (t + k as isize - 1) as usize) * ch + c]
            } else {
                x[(b * seqlen + t as usize) * ch + c]
            }
        };
        for t in 0..seqlen {
            for c in 0..ch {
                let mut s = bias.map_or(0.0, |bb| bb[c]);
                for j in 0..k {
                    s += w[c * k + j] * input(t as isize + j as isize - (k as isize - 1), c);
                }
                out[(b * seqlen + t) * ch + c] = silu(s);
            }
        }
        for j in 0..k - 1 {
            for c in 0..ch {
                new_state[(b * (k - 1) + j) * ch + c] = input(seqlen as isize - (k as isize - 1) + j as isize, c);
            }
        }
    }
    (out, new_state)
}

/// All inputs contiguous: u, delta, z: [rows, d]; bmat, cmat: [rows, n]; a: [d, n]; state [batch, d, n].
/// `z = None`: no gate, `y = C·h + D·u`. Returns (y, final state).
#[allow(clippy::too_many_arguments)]
pub fn selective_scan(
    batch: usize,
    seqlen: usize,
    d: usize,
    n: usize,
    u: &[f64],
    delta: &[f64],
    delta_bias: &[f64],
    a: &[f64],
    bmat: &[f64],
    cmat: &[f64],
    dskip: &[f64],
    z: Option<&[f64]>,
    state: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut h = state.to_vec();
    let mut y = vec![0.0; batch * seqlen * d];
    for b in 0..batch {
        for t in 0..seqlen {
            let row = b * seqlen + t;
            for c in 0..d {
                let dt = softplus(delta[row * d + c] + delta_bias[c]);
                let x = u[row * d + c];
                let mut acc = 0.0;
                for s in 0..n {
                    let hs = &mut h[(b * d + c) * n + s];
                    *hs = (dt * a[c * n + s]).exp() * *hs + dt * bmat[row * n + s] * x;
                    acc += *hs * cmat[row * n + s];
                }
                let gate = z.map_or(1.0, |z| silu(z[row * d + c]));
                y[row * d + c] = (acc + dskip[c] * x) * gate;
            }
        }
    }
    (y, h)
}

// ----- backward references: plain loops, every intermediate stored, all in f64. -----

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `silu'(x) = σ(x)·(1 + x·(1 − σ(x)))`.
pub fn silu_grad(x: f64) -> f64 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// `softplus'(x)`, with the same threshold as [`softplus`].
pub fn softplus_grad(x: f64) -> f64 {
    if x > 20.0 {
        1.0
    } else {
        sigmoid(x)
    }
}

/// Backward of [`linear`]: returns `(dx [rows, k], dw [n, k], db [n])`.
pub fn linear_backward(
    x: &[f64],
    rows: usize,
    k: usize,
    w: &[f64],
    n: usize,
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * k], vec![0.0; n * k], vec![0.0; n]);
    for r in 0..rows {
        for j in 0..n {
            let g = dy[r * n + j];
            db[j] += g;
            for i in 0..k {
                dx[r * k + i] += g * w[j * k + i];
                dw[j * k + i] += g * x[r * k + i];
            }
        }
    }
    (dx, dw, db)
}

/// Backward of the RMSNorm of [`add_rmsnorm`] (`x` the residual after the add): returns
/// `(dx, dweight)`.
pub fn rmsnorm_backward(x: &[f64], w: &[f64], eps: f64, dim: usize, dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; dim]);
    for (r, row) in x.chunks(dim).enumerate() {
        let g = &dy[r * dim..][..dim];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        // out_i = x_i·inv·w_i, ∂inv/∂x_j = −inv³·x_j/dim.
        let s: f64 = (0..dim).map(|i| g[i] * w[i] * row[i]).sum();
        for j in 0..dim {
            dx[r * dim + j] = g[j] * w[j] * inv - s * inv * inv * inv * row[j] / dim as f64;
            dw[j] += g[j] * row[j] * inv;
        }
    }
    (dx, dw)
}

/// Backward of [`conv1d_silu`] from a zero state (x contiguous): returns `(dx, dweight, dbias)`.
#[allow(clippy::too_many_arguments)]
pub fn conv1d_silu_backward(
    x: &[f64],
    batch: usize,
    seqlen: usize,
    ch: usize,
    k: usize,
    w: &[f64],
    bias: Option<&[f64]>,
    dout: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; ch * k], vec![0.0; ch]);
    for b in 0..batch {
        for t in 0..seqlen {
            for c in 0..ch {
                // Tap j reads input step t + j − (k−1), when inside the sequence.
                let tap = |j: usize| (t + j).checked_sub(k - 1).map(|tt| (b * seqlen + tt) * ch + c);
                let mut pre = bias.map_or(0.0, |bb| bb[c]);
                for j in 0..k {
                    if let Some(i) = tap(j) {
                        pre += w[c * k + j] * x[i];
                    }
                }
                let dpre = dout[(b * seqlen + t) * ch + c] * silu_grad(pre);
                db[c] += dpre;
                for j in 0..k {
                    if let Some(i) = tap(j) {
                        dx[i] += w[c * k + j] * dpre;
                        dw[c * k + j] += x[i] * dpre;
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

/// Gradients of [`selective_scan_backward`], layouts as its inputs'.
pub struct ScanGradsRef {
    pub du: Vec<f64>,
    pub ddelta: Vec<f64>,
    pub ddelta_bias: Vec<f64>,
    pub da: Vec<f64>,
    pub db: Vec<f64>,
    pub dc: Vec<f64>,
    pub dd: Vec<f64>,
    pub dz: Vec<f64>,
}

/// Backward of [`selective_scan`] from a zero state, for `dy` the gradient of `y`. Stores every
/// state `h_t` (it is a reference). Without a gate (`z = None`) `dz` is empty.
#[allow(clippy::too_many_arguments)]
pub fn selective_scan_backward(
    batch: usize,
    seqlen: usize,
    d: usize,
    n: usize,
    u: &[f64],
    delta: &[f64],
    delta_bias: &[f64],
    a: &[f64],
    bmat: &[f64],
    cmat: &[f64],
    dskip: &[f64],
    z: Option<&[f64]>,
    dy: &[f64],
) -> ScanGradsRef {
    let rows = batch * seqlen;
    let mut gr = ScanGradsRef {
        du: vec![0.0; rows * d],
        ddelta: vec![0.0; rows * d],
        ddelta_bias: vec![0.0; d],
        da: vec![0.0; d * n],
        db: vec![0.0; rows * n],
        dc: vec![0.0; rows * n],
        dd: vec![0.0; d],
        dz: vec![0.0; if z.is_some() { rows * d } else { 0 }],
    };
    for b in 0..batch {
        // hs[t][c][s] = h after step t − 1 (hs[0] = 0).
        let hidx = |t: usize, c: usize, s: usize| (t * d + c) * n + s;
        let mut hs = vec![0.0; (seqlen + 1) * d * n];
        for t in 0..seqlen {
            let row = b * seqlen + t;
            for c in 0..d {
                let dt = softplus(delta[row * d + c] + delta_bias[c]);
                for s in 0..n {
                    hs[hidx(t + 1, c, s)] =
                        (dt * a[c * n + s]).exp() * hs[hidx(t, c, s)] + dt * bmat[row * n + s] * u[row * d + c];
                }
            }
        }
        // dh[c][s] = ∂L/∂h_t through h_{t+1} (propagated back from later steps).
        let mut dh = vec![0.0; d * n];
        for t in (0..seqlen).rev() {
            let row = b * seqlen + t;
            for c in 0..d {
                let raw = delta[row * d + c] + delta_bias[c];
                let dt = softplus(raw);
                let x = u[row * d + c];
                let out: f64 = (0..n).map(|s| cmat[row * n + s] * hs[hidx(t + 1, c, s)]).sum::<f64>() + dskip[c] * x;
                let g = match z {
                    Some(z) => {
                        let zz = z[row * d + c];
                        gr.dz[row * d + c] = dy[row * d + c] * out * silu_grad(zz);
                        dy[row * d + c] * silu(zz)
                    }
                    None => dy[row * d + c],
                };
                gr.dd[c] += g * x;
                let mut du = g * dskip[c];
                let mut ddt = 0.0;
                for s in 0..n {
                    let (bs, cs, as_) = (bmat[row * n + s], cmat[row * n + s], a[c * n + s]);
                    let (hcur, hprev) = (hs[hidx(t + 1, c, s)], hs[hidx(t, c, s)]);
                    let decay = (dt * as_).exp();
                    let dht = dh[c * n + s] + g * cs;
                    gr.dc[row * n + s] += g * hcur;
                    gr.db[row * n + s] += dht * dt * x;
                    du += dht * dt * bs;
                    gr.da[c * n + s] += dht * hprev * decay * dt;
                    ddt += dht * (hprev * decay * as_ + bs * x);
                    dh[c * n + s] = dht * decay;
                }
                gr.du[row * d + c] = du;
                let dd = ddt * softplus_grad(raw);
                gr.ddelta[row * d + c] = dd;
                gr.ddelta_bias[c] += dd;
            }
        }
    }
    gr
}

/// Column sums of a contiguous `[rows, n]` matrix.
pub fn sum_rows(src: &[f64], rows: usize, n: usize) -> Vec<f64> {
    let mut s = vec![0.0; n];
    for r in 0..rows {
        for j in 0..n {
            s[j] += src[r * n + j];
        }
    }
    s
}

/// `dtable[ids[i]] += dout[i]` into a zero table of `vocab` rows.
pub fn embedding_backward(ids: &[u32], dim: usize, dout: &[f64], vocab: usize) -> Vec<f64> {
    let mut dt = vec![0.0; vocab * dim];
    for (i, &id) in ids.iter().enumerate() {
        for j in 0..dim {
            dt[id as usize * dim + j] += dout[i * dim + j];
        }
    }
    dt
}

/// Sum of the softmax cross-entropy losses of the rows whose target is not `u32::MAX`.
pub fn cross_entropy_loss(logits: &[f64], vocab: usize, targets: &[u32]) -> (f64, usize) {
    let (mut loss, mut count) = (0.0, 0);
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        if t == u32::MAX {
            continue;
        }
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss += lse - row[t as usize];
        count += 1;
    }
    (loss, count)
}

/// Gradient of [`cross_entropy_loss`] w.r.t. the logits: `softmax − onehot` per counted row.
pub fn cross_entropy_grad(logits: &[f64], vocab: usize, targets: &[u32]) -> Vec<f64> {
    let mut g = vec![0.0; logits.len()];
    for ((row, gr), &t) in logits.chunks(vocab).zip(g.chunks_mut(vocab)).zip(targets) {
        if t == u32::MAX {
            continue;
        }
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - m).exp()).sum();
        for (gi, v) in gr.iter_mut().zip(row) {
            *gi = (v - m).exp() / sum;
        }
        gr[t as usize] -= 1.0;
    }
    g
}

/// One AdamW step (PyTorch's `torch.optim.AdamW`, `amsgrad=False`) in f64.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    p: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    lr: f64,
    (beta1, beta2): (f64, f64),
    eps: f64,
    weight_decay: f64,
    step: u64,
    grad_scale: f64,
) {
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    for i in 0..p.len() {
        let g = grad[i] * grad_scale;
        p[i] *= 1.0 - lr * weight_decay;
        m[i] = beta1 * m[i] + (1.0 - beta1) * g;
        v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
        p[i] -= lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + eps);
    }
}

// ----- attention-model references (layouts as in `Backend::attention`, all contiguous) -----

use super::AttnDims;

/// RoPE with f64 angles `(pos0 + t) · θ^(−2i / head_dim)`; `inverse` rotates the other way.
pub fn rope(x: &[f64], dims: AttnDims, pos0: usize, theta: f64, inverse: bool) -> Vec<f64> {
    let (dh, w) = (dims.head_dim, dims.width());
    let half = dh / 2;
    let mut y = x.to_vec();
    for r in 0..dims.rows() {
        let p = (pos0 + r % dims.seqlen) as f64;
        for h in 0..dims.n_head {
            for i in 0..half {
                let ang = p * theta.powf(-((2 * i) as f64) / dh as f64);
                let (s, c) = ang.sin_cos();
                let s = if inverse { -s } else { s };
                let (a, b) = (x[r * w + h * dh + i], x[r * w + h * dh + half + i]);
                y[r * w + h * dh + i] = a * c - b * s;
                y[r * w + h * dh + half + i] = b * c + a * s;
            }
        }
    }
    y
}

/// Causal softmax attention probabilities of one (sequence, head): `p[t][s]` for `s <= t`, and
/// the logsumexp of each row's scaled scores.
fn attention_probs(q: &[f64], k: &[f64], dims: AttnDims, b: usize, h: usize, scale: f64) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (l, dh, w) = (dims.seqlen, dims.head_dim, dims.width());
    let at = |m: &[f64], t: usize, d: usize| m[(b * l + t) * w + h * dh + d];
    let mut probs = Vec::with_capacity(l);
    let mut lses = Vec::with_capacity(l);
    for t in 0..l {
        let scores: Vec<f64> =
            (0..=t).map(|s| scale * (0..dh).map(|d| at(q, t, d) * at(k, s, d)).sum::<f64>()).collect();
        let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
        probs.push(scores.iter().map(|s| (s - mx).exp() / z).collect());
        lses.push(mx + z.ln());
    }
    (probs, lses)
}

/// Causal multi-head attention: returns `(out [rows, width], lse [batch, n_head, seqlen])`.
pub fn attention(q: &[f64], k: &[f64], v: &[f64], dims: AttnDims, scale: f64) -> (Vec<f64>, Vec<f64>) {
    let (l, dh, w, nh) = (dims.seqlen, dims.head_dim, dims.width(), dims.n_head);
    let mut out = vec![0.0; dims.rows() * w];
    let mut lse = vec![0.0; dims.rows() * nh];
    for b in 0..dims.batch {
        for h in 0..nh {
            let (probs, lses) = attention_probs(q, k, dims, b, h, scale);
            for t in 0..l {
                lse[(b * nh + h) * l + t] = lses[t];
                for (s, p) in probs[t].iter().enumerate() {
                    for d in 0..dh {
                        out[(b * l + t) * w + h * dh + d] += p * v[(b * l + s) * w + h * dh + d];
                    }
                }
            }
        }
    }
    (out, lse)
}

/// Backward of [`attention`] through the explicit probabilities: returns `(dq, dk, dv)`.
pub fn attention_backward(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    dims: AttnDims,
    scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (l, dh, w, nh) = (dims.seqlen, dims.head_dim, dims.width(), dims.n_head);
    let n = dims.rows() * w;
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let ix = |b: usize, t: usize, h: usize, d: usize| (b * l + t) * w + h * dh + d;
    for b in 0..dims.batch {
        for h in 0..nh {
            let (probs, _) = attention_probs(q, k, dims, b, h, scale);
            for t in 0..l {
                let p = &probs[t];
                // out_t = Σ_s p_s v_s; ∂p_s/∂score_r = p_s(δ_sr − p_r).
                let dp: Vec<f64> =
                    (0..=t).map(|s| (0..dh).map(|d| dout[ix(b, t, h, d)] * v[ix(b, s, h, d)]).sum()).collect();
                let dot: f64 = (0..=t).map(|s| p[s] * dp[s]).sum();
                for s in 0..=t {
                    let dscore = p[s] * (dp[s] - dot);
                    for d in 0..dh {
                        dv[ix(b, s, h, d)] += p[s] * dout[ix(b, t, h, d)];
                        dq[ix(b, t, h, d)] += scale * dscore * k[ix(b, s, h, d)];
                        dk[ix(b, s, h, d)] += scale * dscore * q[ix(b, t, h, d)];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// `silu(gate) · up`.
pub fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

/// Backward of [`swiglu`]: returns `(dgate, dup)`.
pub fn swiglu_backward(gate: &[f64], up: &[f64], dout: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dg = gate.iter().zip(up).zip(dout).map(|((&g, &u), &d)| d * u * silu_grad(g)).collect();
    let du = gate.iter().zip(dout).map(|(&g, &d)| d * silu(g)).collect();
    (dg, du)
}
