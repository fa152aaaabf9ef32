//! Viewing raw tensor bytes as arrays of GGUF blocks, without copying.

/// A GGUF block struct.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1, contain no padding, and accept
/// every bit pattern.
pub unsafe trait Block: Copy {}

/// Views `bytes` as blocks. `None` if the length is not a whole number of blocks.
pub fn as_blocks<T: Block>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    // SAFETY: T has alignment 1 and no invalid bit patterns (the Block contract), and the
    // slice covers exactly `bytes`.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// Views `bytes` as mutable blocks. `None` if the length is not a whole number of blocks.
pub fn as_blocks_mut<T: Block>(bytes: &mut [u8]) -> Option<&mut [T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    // SAFETY: as in `as_blocks`, and the borrow is unique.
    Some(unsafe {
        std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / size)
    })
}
