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
/// Returns (y, final state).
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
    z: &[f64],
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
                y[row * d + c] = (acc + dskip[c] * x) * silu(z[row * d + c]);
            }
        }
    }
    (y, h)
}
