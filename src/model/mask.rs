//! Attention masks over a forward chunk and the cache before it.
//!
//! Rows are the chunk's queries (cache positions `start..start + n`),
//! columns are keys `0..start + n`.

use candle_core::{DType, Device, Tensor};

use super::attention::Keys;
use super::ModelError;

#[derive(Debug, Clone, PartialEq)]
pub enum Mask {
    /// Query `i` sees keys `<= i`.
    Causal,
    /// Every query sees every key.
    Bidirectional,
    /// Causal across blocks, bidirectional within a block. Positions before
    /// `start` form block 0; after it, blocks of `size` positions.
    Block { size: usize, start: usize },
    /// An explicit boolean matrix, for trees and TiDAR.
    Explicit(ExplicitMask),
}

/// Row-major `[rows, cols]` matrix; `true` means the query may attend.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplicitMask {
    pub rows: usize,
    pub cols: usize,
    pub allowed: Vec<bool>,
}

impl ExplicitMask {
    pub fn new(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            allowed: vec![false; rows * cols],
        }
    }

    pub fn set(&mut self, row: usize, col: usize, allowed: bool) {
        self.allowed[row * self.cols + col] = allowed;
    }

    pub fn get(&self, row: usize, col: usize) -> bool {
        self.allowed[row * self.cols + col]
    }

    /// A mask where the chunk is causal over itself and sees the whole cache.
    pub fn causal(start: usize, n: usize) -> Self {
        let mut m = Self::new(n, start + n);
        for i in 0..n {
            for j in 0..=start + i {
                m.set(i, j, true);
            }
        }
        m
    }
}

impl Mask {
    /// Whether query at cache position `q` may see key `k`.
    pub fn allows(&self, start: usize, row: usize, key: usize) -> bool {
        let q = start + row;
        match self {
            Mask::Causal => key <= q,
            Mask::Bidirectional => true,
            Mask::Block { size, start: s0 } => {
                let block = |p: usize| if p < *s0 { 0 } else { 1 + (p - s0) / size };
                block(key) <= block(q)
            }
            Mask::Explicit(m) => m.get(row, key),
        }
    }

    /// The keys each row of a chunk may see. Causal, bidirectional and block
    /// masks give prefixes; explicit masks may give any set.
    pub(crate) fn keys(&self, start: usize, n: usize) -> Result<Vec<Keys>, ModelError> {
        let total = start + n;
        let mut out = Vec::with_capacity(n);
        match self {
            Mask::Causal => out.extend((0..n).map(|i| Keys::Prefix(start + i + 1))),
            Mask::Bidirectional => out.extend((0..n).map(|_| Keys::Prefix(total))),
            Mask::Block { size, start: s0 } => {
                if *size == 0 {
                    return Err(ModelError::BadRequest(
                        "block mask size must be positive".into(),
                    ));
                }
                for i in 0..n {
                    let q = start + i;
                    let end = if q < *s0 {
                        *s0
                    } else {
                        s0 + ((q - s0) / size + 1) * size
                    };
                    out.push(Keys::Prefix(end.min(total)));
                }
            }
            Mask::Explicit(m) => {
                if m.rows != n || m.cols != total {
                    return Err(ModelError::BadRequest(format!(
                        "explicit mask is {}x{}, the forward needs {n}x{total}",
                        m.rows, m.cols
                    )));
                }
                for i in 0..n {
                    let cols: Vec<usize> = (0..total).filter(|&j| m.get(i, j)).collect();
                    if cols.is_empty() {
                        return Err(ModelError::BadRequest(format!(
                            "mask row {i} attends to nothing"
                        )));
                    }
                    let prefix = cols.iter().enumerate().all(|(a, &b)| a == b);
                    out.push(if prefix {
                        Keys::Prefix(cols.len())
                    } else {
                        Keys::List(cols)
                    });
                }
            }
        }
        Ok(out)
    }

    /// The additive bias `[n, start + n]` (0 or -inf), or `None` when
    /// nothing is masked.
    pub(crate) fn bias(
        &self,
        start: usize,
        n: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Tensor>, ModelError> {
        let cols = start + n;
        match self {
            Mask::Bidirectional => return Ok(None),
            Mask::Causal if n == 1 => return Ok(None),
            Mask::Block { size, .. } if *size == 0 => {
                return Err(ModelError::BadRequest(
                    "block mask size must be positive".into(),
                ))
            }
            Mask::Explicit(m) if m.rows != n || m.cols != cols => {
                return Err(ModelError::BadRequest(format!(
                    "explicit mask is {}x{}, the forward needs {n}x{cols}",
                    m.rows, m.cols
                )))
            }
            _ => {}
        }
        let mut bias = vec![0f32; n * cols];
        let mut all_open = true;
        for i in 0..n {
            let mut any = false;
            for j in 0..cols {
                if self.allows(start, i, j) {
                    any = true;
                } else {
                    bias[i * cols + j] = f32::NEG_INFINITY;
                    all_open = false;
                }
            }
            if !any {
                return Err(ModelError::BadRequest(format!(
                    "mask row {i} attends to nothing"
                )));
            }
        }
        if all_open {
            return Ok(None);
        }
        Ok(Some(
            Tensor::from_vec(bias, (n, cols), device)?.to_dtype(dtype)?,
        ))
    }
}
