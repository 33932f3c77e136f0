//! The preallocated, truncatable KV cache: the one rollback API every
//! decoding method uses.

use candle_core::{DType, Device, Tensor};

use super::ModelError;

/// Per-layer key/value storage of shape `[1, n_kv_heads, capacity, head_dim]`.
/// Entries `0..len` are valid. Truncation is O(1): it only moves `len`.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    max_capacity: usize,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

/// A copy of a cache's valid entries, for methods that must return to a
/// state after later writes have overwritten it.
#[derive(Debug, Clone)]
pub struct KvSnapshot {
    len: usize,
    layers: Vec<(Tensor, Tensor)>,
}

impl KvSnapshot {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl KvCache {
    pub(crate) fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        max_capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let capacity = capacity.clamp(1, max_capacity.max(1));
        let mut layers = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            layers.push(Self::alloc(n_kv_heads, head_dim, capacity, dtype, device)?);
        }
        Ok(Self {
            layers,
            len: 0,
            capacity,
            max_capacity,
            n_kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
        })
    }

    fn alloc(
        n_kv_heads: usize,
        d: usize,
        cap: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let k = Tensor::zeros((1, n_kv_heads, cap, d), dtype, device)?;
        let v = Tensor::zeros((1, n_kv_heads, cap, d), dtype, device)?;
        Ok((k, v))
    }

    /// Number of valid positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Drops every position at or after `len`. O(1).
    pub fn truncate(&mut self, len: usize) -> Result<(), ModelError> {
        if len > self.len {
            return Err(ModelError::Cache(format!(
                "cannot truncate a cache of {} positions to {len}",
                self.len
            )));
        }
        self.len = len;
        Ok(())
    }

    /// Empties the cache for a new sequence, keeping its storage.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Copies the valid entries out.
    pub fn save(&self) -> Result<KvSnapshot, ModelError> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (k, v) in &self.layers {
            layers.push((
                k.narrow(2, 0, self.len)?.copy()?,
                v.narrow(2, 0, self.len)?.copy()?,
            ));
        }
        Ok(KvSnapshot {
            len: self.len,
            layers,
        })
    }

    /// Returns the cache to exactly the saved state.
    pub fn restore(&mut self, snap: &KvSnapshot) -> Result<(), ModelError> {
        if snap.layers.len() != self.layers.len() {
            return Err(ModelError::Cache(format!(
                "snapshot has {} layers, cache has {}",
                snap.layers.len(),
                self.layers.len()
            )));
        }
        self.ensure_capacity(snap.len)?;
        if snap.len > 0 {
            for ((k, v), (sk, sv)) in self.layers.iter().zip(&snap.layers) {
                k.slice_set(sk, 2, 0)?;
                v.slice_set(sv, 2, 0)?;
            }
        }
        self.len = snap.len;
        Ok(())
    }

    /// Keeps the positions `keep` (absolute, ascending, each `>= start`),
    /// moving them to `start..start + keep.len()`, and drops the rest after
    /// `start`. This is how a verified tree path keeps its KV.
    pub fn compact(&mut self, start: usize, keep: &[usize]) -> Result<(), ModelError> {
        if start > self.len {
            return Err(ModelError::Cache(format!(
                "compact start {start} is past the cache length {}",
                self.len
            )));
        }
        let mut prev = None;
        for &p in keep {
            if p < start || p >= self.len || prev.is_some_and(|q| q >= p) {
                return Err(ModelError::Cache(format!(
                    "compact positions must be ascending within {start}..{}, got {keep:?}",
                    self.len
                )));
            }
            prev = Some(p);
        }
        let already_in_place = keep.iter().enumerate().all(|(i, &p)| p == start + i);
        if !keep.is_empty() && !already_in_place {
            let idx: Vec<u32> = keep.iter().map(|&p| p as u32).collect();
            let idx = Tensor::new(idx.as_slice(), &self.device)?;
            for (k, v) in &self.layers {
                let kk = k.index_select(&idx, 2)?;
                let vv = v.index_select(&idx, 2)?;
                k.slice_set(&kk, 2, start)?;
                v.slice_set(&vv, 2, start)?;
            }
        }
        self.len = start + keep.len();
        Ok(())
    }

    /// Grows storage (doubling) so that `needed` positions fit.
    pub(crate) fn ensure_capacity(&mut self, needed: usize) -> Result<(), ModelError> {
        if needed <= self.capacity {
            return Ok(());
        }
        if needed > self.max_capacity {
            return Err(ModelError::ContextOverflow {
                needed,
                context: self.max_capacity,
            });
        }
        let new_cap = (self.capacity * 2).max(needed).min(self.max_capacity);
        for layer in self.layers.iter_mut() {
            let (k, v) = Self::alloc(
                self.n_kv_heads,
                self.head_dim,
                new_cap,
                self.dtype,
                &self.device,
            )?;
            if self.len > 0 {
                k.slice_set(&layer.0.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                v.slice_set(&layer.1.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            *layer = (k, v);
        }
        self.capacity = new_cap;
        Ok(())
    }

    /// Writes `k`, `v` (`[1, n_kv_heads, s, d]`) of one layer at `start`.
    pub(crate) fn write(
        &self,
        layer: usize,
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(), ModelError> {
        let (ck, cv) = &self.layers[layer];
        ck.slice_set(k, 2, start)?;
        cv.slice_set(v, 2, start)?;
        Ok(())
    }

    /// One layer's whole key and value tensors (`[1, n_kv, capacity, d]`).
    pub(crate) fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    /// Views of one layer's first `len` positions.
    pub(crate) fn view(&self, layer: usize, len: usize) -> Result<(Tensor, Tensor), ModelError> {
        let (k, v) = &self.layers[layer];
        Ok((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?))
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity);
        self.len = len;
    }
}
