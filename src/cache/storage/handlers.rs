//! Pingora-cache hit and miss handlers over [`super::MemoryStorage`]: a hit streams slices
//! of a stored body; a miss buffers the body and admits it on `finish`.

use super::*;

/// A fill ready to be admitted.
pub(super) struct Fill {
    pub(super) key: HashBinary,
    pub(super) primary: Box<[u8]>,
    pub(super) meta_internal: Box<[u8]>,
    pub(super) meta_header: Box<[u8]>,
    pub(super) body: Bytes,
    pub(super) purge_generation: u64,
}

/// Hit handler: zero-copy slices of a stored body, seekable.
pub struct MemoryHitHandler {
    pub(super) body: Bytes,
    pub(super) pos: usize,
    pub(super) end: usize,
    pub(super) weight: usize,
}

#[async_trait]
impl HandleHit for MemoryHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let stop = self.end.min(self.pos.saturating_add(READ_CHUNK));
        let chunk = self.body.slice(self.pos..stop);
        self.pos = stop;
        Ok(Some(chunk))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {len}"),
            );
        }
        let end = end.map_or(len, |e| e.min(len));
        if end < start {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek end {end} before start {start}"),
            );
        }
        self.pos = start;
        self.end = end;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Miss handler: buffers the body and publishes the whole entry on `finish`. Dropping it
/// without `finish` discards the fill.
pub struct MemoryMissHandler {
    pub(super) storage: &'static MemoryStorage,
    pub(super) key: HashBinary,
    pub(super) primary: Box<[u8]>,
    pub(super) meta_internal: Box<[u8]>,
    pub(super) meta_header: Box<[u8]>,
    pub(super) chunks: Vec<Bytes>,
    pub(super) body_len: usize,
    /// Weight without the body.
    pub(super) base_weight: usize,
    pub(super) purge_generation: u64,
    pub(super) oversized: bool,
    pub(super) eof: bool,
}

#[async_trait]
impl HandleMiss for MemoryMissHandler {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        if self.eof && !data.is_empty() {
            return Error::e_explain(ErrorType::InternalError, "cache body written after EOF");
        }
        self.eof |= eof;
        if self.oversized || data.is_empty() {
            return Ok(());
        }
        self.body_len = self.body_len.saturating_add(data.len());
        if self.base_weight.saturating_add(self.body_len) > self.storage.max_object_bytes {
            // Too heavy to admit: stop buffering; the response is still served.
            self.oversized = true;
            self.chunks = Vec::new();
            return Ok(());
        }
        self.chunks.push(data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let this = *self;
        if this.oversized {
            this.storage.rejections.fetch_add(1, Ordering::Relaxed);
            return Ok(MissFinishType::Created(0));
        }
        // One exact-size copy: the stored body does not pin the upstream read buffers, so its
        // accounted size is its real size.
        let mut body = Vec::with_capacity(this.body_len);
        for chunk in &this.chunks {
            body.extend_from_slice(chunk);
        }
        let fill = Fill {
            key: this.key,
            primary: this.primary,
            meta_internal: this.meta_internal,
            meta_header: this.meta_header,
            body: Bytes::from(body),
            purge_generation: this.purge_generation,
        };
        match this.storage.admit(fill) {
            Admission::Stored(weight) => Ok(MissFinishType::Created(weight)),
            Admission::Rejected => Ok(MissFinishType::Created(0)),
        }
    }
}
