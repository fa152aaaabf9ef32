//! The key/value cache: preallocated per layer, with position `p` stored in slot
//! `p % capacity` so that later work can turn it into a rolling window without changing
//! the layout.

pub struct KvCache {
    n_layers: usize,
    capacity: usize,
    kv_dim: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    pub fn new(n_layers: usize, capacity: usize, kv_dim: usize) -> KvCache {
        let n = n_layers * capacity * kv_dim;
        KvCache {
            n_layers,
            capacity,
            kv_dim,
            k: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of memory the cache holds.
    pub fn size_bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f32>()
    }

    fn index(&self, layer: usize, pos: usize) -> usize {
        debug_assert!(layer < self.n_layers);
        (layer * self.capacity + pos % self.capacity) * self.kv_dim
    }

    /// Key and value rows for `pos`, to be written.
    pub fn slot_mut(&mut self, layer: usize, pos: usize) -> (&mut [f32], &mut [f32]) {
        let i = self.index(layer, pos);
        let d = self.kv_dim;
        (&mut self.k[i..i + d], &mut self.v[i..i + d])
    }

    pub fn key(&self, layer: usize, pos: usize) -> &[f32] {
        let i = self.index(layer, pos);
        &self.k[i..i + self.kv_dim]
    }

    pub fn value(&self, layer: usize, pos: usize) -> &[f32] {
        let i = self.index(layer, pos);
        &self.v[i..i + self.kv_dim]
    }
}
