//! Stored tensor bytes borrowed from a shard's mmap by a handle that keeps the files open,
//! so quantized weights are used in place: no copy, no conversion at load.

use crate::{FormatError, ModelFiles, Result};
use std::sync::Arc;

pub struct Mapped {
    _owner: Arc<ModelFiles>,
    ptr: *const u8,
    len: usize,
    pub shape: Vec<usize>,
}

// SAFETY: the bytes are a read-only mapping owned by `_owner`, which lives as long as this.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// The tensor `name` of a safetensors-backed model, checked to be stored as `dtype`.
    pub fn new(files: &Arc<ModelFiles>, name: &str, dtype: safetensors::Dtype) -> Result<Self> {
        let dir = files
            .hf_dir()
            .ok_or_else(|| FormatError::invalid(files.path(), "only safetensors tensors can be mapped in place"))?;
        let (bytes, stored, shape) = dir.raw(name)?;
        if stored != dtype {
            return Err(FormatError::invalid(dir.root(), format!("tensor `{name}` is {stored:?}, expected {dtype:?}")));
        }
        Ok(Self { _owner: files.clone(), ptr: bytes.as_ptr(), len: bytes.len(), shape })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len came from a live slice of the mapping `_owner` keeps alive.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes as f16 values; the writer aligns data so this never needs a copy.
    pub fn as_f16(&self) -> Result<&[half::f16]> {
        self.cast::<half::f16>()
    }

    /// Hands this tensor's resident pages back to the kernel once a copy has replaced it
    /// (the INT8 kernel's panels): they stay in the page cache, and a later read (an
    /// embedding row, a GPU upload) maps them again. Only whole pages inside the tensor.
    pub fn release(&self) {
        #[cfg(unix)]
        {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
            let (start, end) = ((self.ptr as usize).next_multiple_of(page), (self.ptr as usize + self.len) / page * page);
            if end > start {
                // SAFETY: the range lies inside the read-only file mapping `_owner` keeps
                // alive; dropping clean file pages loses nothing (the next access faults
                // them back in from the file).
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            }
        }
    }

    pub fn as_i8(&self) -> &[i8] {
        // SAFETY: i8 and u8 have the same size and alignment.
        unsafe { std::slice::from_raw_parts(self.ptr as *const i8, self.len) }
    }

    fn cast<T>(&self) -> Result<&[T]> {
        let size = std::mem::size_of::<T>();
        if self.ptr as usize % std::mem::align_of::<T>() != 0 || self.len % size != 0 {
            return Err(FormatError::invalid(std::path::Path::new("<mapped tensor>"), "misaligned tensor data"));
        }
        // SAFETY: alignment and length checked; T is a plain number type valid for any bits.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr as *const T, self.len / size) })
    }
}
