//! CPU backward kernels (training). Placeholder: each returns an error until implemented.

use crate::backend::{AdamW, ScanArgs, ScanGrads, View, ViewMut};
use crate::{Error, Result};

fn todo(what: &str) -> Error {
    Error::Backend(format!("cpu: {what} is not implemented yet"))
}

pub fn linear_backward(
    _x: View<'_, Vec<f32>>,
    _rows: usize,
    _k: usize,
    _w: &[f32],
    _n: usize,
    _dy: &[f32],
    _dx: Option<ViewMut<'_, Vec<f32>>>,
    _dw: &mut [f32],
    _db: Option<&mut Vec<f32>>,
) -> Result<()> {
    Err(todo("linear_backward"))
}

pub fn rmsnorm_backward(
    _residual: &[f32],
    _weight: &[f32],
    _eps: f32,
    _rows: usize,
    _dim: usize,
    _dout: &[f32],
    _dresidual: &mut [f32],
    _dweight: &mut [f32],
) -> Result<()> {
    Err(todo("rmsnorm_backward"))
}

pub fn conv1d_silu_backward(
    _x: View<'_, Vec<f32>>,
    _batch: usize,
    _seqlen: usize,
    _channels: usize,
    _kernel: usize,
    _weight: &[f32],
    _bias: Option<&Vec<f32>>,
    _dout: &[f32],
    _dx: ViewMut<'_, Vec<f32>>,
    _dweight: &mut [f32],
    _dbias: Option<&mut Vec<f32>>,
) -> Result<()> {
    Err(todo("conv1d_silu_backward"))
}

pub fn selective_scan_backward(
    _args: &ScanArgs<'_, Vec<f32>>,
    _dy: &[f32],
    _grads: ScanGrads<'_, Vec<f32>>,
) -> Result<()> {
    Err(todo("selective_scan_backward"))
}

pub fn embedding_backward(_ids: &[u32], _dim: usize, _dout: &[f32], _dtable: &mut [f32]) -> Result<()> {
    Err(todo("embedding_backward"))
}

pub fn cross_entropy(
    _logits: &[f32],
    _rows: usize,
    _vocab: usize,
    _targets: &[u32],
    _scale: f32,
    _dlogits: &mut [f32],
) -> Result<(f64, usize)> {
    Err(todo("cross_entropy"))
}

pub fn adamw_step(_param: &mut [f32], _grad: &[f32], _m: &mut [f32], _v: &mut [f32], _hp: &AdamW) -> Result<()> {
    Err(todo("adamw_step"))
}
