//! libjpeg-turbo's TurboJPEG 3 decompressor, wrapped for what the `turbojpeg` crate does not
//! offer: decoding one horizontal band of a frame (a cropping region), so that bands can be
//! decoded on several cores at once. Settings are the decoder's defaults, which are
//! OpenCV's: accurate integer IDCT, fancy upsampling.
//!
//! A band that starts below the top still entropy-decodes the rows above it (JPEG's
//! Huffman stream can only be read in order) but skips their IDCT, upsampling and colour
//! conversion; a band that ends above the bottom stops reading there. The pixels of a band
//! are the same as the same rows of a whole-frame decode (tested).

use std::ffi::CStr;

use turbojpeg_sys as raw;

/// What the frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: usize,
    pub height: usize,
    /// Progressive (multi-scan) JPEGs are decoded whole before any row comes out.
    pub progressive: bool,
    /// Lossless JPEGs cannot be cropped.
    pub lossless: bool,
}

impl Header {
    /// Whether decoding this frame in bands saves time (and is possible).
    pub fn bands_help(&self) -> bool {
        !self.progressive && !self.lossless
    }
}

/// One TurboJPEG decompressor. Keep it and reuse it from frame to frame.
pub struct Decoder {
    handle: raw::tjhandle,
}

// SAFETY: a TurboJPEG handle holds no thread-local state; `&mut self` on every call keeps
// it to one thread at a time.
unsafe impl Send for Decoder {}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.handle) }
    }
}

impl Decoder {
    pub fn new() -> Result<Self, String> {
        // SAFETY: plain constructor; a null handle is checked below.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as libc::c_int) };
        if handle.is_null() {
            return Err("the JPEG decoder could not be initialised (out of memory?)".into());
        }
        let decoder = Decoder { handle };
        // The frame guard's limits inside libjpeg-turbo too (pixels, progressive scans).
        // SAFETY: the handle is live (checked above) and owned by `decoder`.
        unsafe { crate::frameguard::harden(decoder.handle) }?;
        Ok(decoder)
    }

    fn error(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle (or a
        // static one), valid until the next call on it; it is copied at once.
        let msg = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.handle)) };
        msg.to_string_lossy().trim().to_string()
    }

    fn get(&self, param: raw::TJPARAM) -> libc::c_int {
        // SAFETY: reading a parameter of a live handle.
        unsafe { raw::tj3Get(self.handle, param as libc::c_int) }
    }

    /// Reads the frame header (and checks that the frame is an 8-bit JPEG).
    pub fn header(&mut self, jpeg: &[u8]) -> Result<Header, String> {
        // SAFETY: the pointer and length describe `jpeg`, which outlives the call.
        let res = unsafe { raw::tj3DecompressHeader(self.handle, jpeg.as_ptr(), jpeg.len() as raw::size_t) };
        if res != 0 {
            return Err(self.error());
        }
        let (w, h) = (self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH), self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT));
        if w < 1 || h < 1 {
            // A stream of tables only, or one cut short before its frame header.
            return Err("no frame header found".into());
        }
        let precision = self.get(raw::TJPARAM_TJPARAM_PRECISION);
        if precision != 8 {
            return Err(format!("{precision}-bit samples (only 8-bit JPEGs are supported)"));
        }
        Ok(Header {
            width: w as usize,
            height: h as usize,
            progressive: self.get(raw::TJPARAM_TJPARAM_PROGRESSIVE) != 0,
            lossless: self.get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0,
        })
    }

    /// Decodes rows `rows` of the frame (all of it when the range covers every row) into
    /// `out` as interleaved RGB, `rows.len() * width * 3` bytes. Any libjpeg warning (a
    /// truncated or corrupt stream) is an error: the frame is refused, not scored half grey.
    pub fn decode_rows(&mut self, jpeg: &[u8], rows: std::ops::Range<usize>, out: &mut [u8]) -> Result<(), String> {
        let header = self.header(jpeg)?;
        let (w, h) = (header.width, header.height);
        if rows.start >= rows.end || rows.end > h {
            return Err(format!("rows {rows:?} are outside the frame's {h}"));
        }
        if out.len() != rows.len() * w * 3 {
            return Err(format!("a buffer of {} bytes for {} rows of {w} pixels", out.len(), rows.len()));
        }
        let whole = rows.start == 0 && rows.end == h;
        let region = if whole {
            raw::tjregion { x: 0, y: 0, w: 0, h: 0 }
        } else {
            let int = |v: usize| libc::c_int::try_from(v).map_err(|_| format!("row {v} is out of range"));
            raw::tjregion { x: 0, y: int(rows.start)?, w: 0, h: int(rows.len())? }
        };
        // SAFETY: setting a parameter of a live handle.
        if unsafe { raw::tj3SetCroppingRegion(self.handle, region) } != 0 {
            return Err(self.error());
        }
        let pitch = libc::c_int::try_from(w * 3).map_err(|_| "the frame is too wide".to_string())?;
        // SAFETY: `out` holds exactly `rows.len()` rows of `pitch` bytes, which is what
        // TurboJPEG writes for this cropping region (checked above); `jpeg` outlives the call.
        let res = unsafe {
            raw::tj3Decompress8(
                self.handle,
                jpeg.as_ptr(),
                jpeg.len() as raw::size_t,
                out.as_mut_ptr(),
                pitch,
                raw::TJPF_TJPF_RGB as libc::c_int,
            )
        };
        if res != 0 {
            return Err(self.error());
        }
        Ok(())
    }
}
