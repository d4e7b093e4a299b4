//! Recording the raw kernel event stream to a file and replaying it: the
//! same records the probes write, so a replay drives the exact same
//! decode → stream → parse → pair → span → export path without the kernel.
//! Also how a problem is captured for a reproducible report.
//!
//! File format: the 8-byte magic `TRCREC01`, the clock offset (Unix ns minus
//! monotonic ns, i128 little-endian) so replayed spans keep their original
//! times, then records as a u32 little-endian length followed by the bytes.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

pub const MAGIC: &[u8; 8] = b"TRCREC01";
/// Records longer than this are rejected on replay (the probes never write them).
pub const MAX_RECORD: usize = 1 << 20;

pub struct Recorder {
    w: BufWriter<File>,
    pub records: u64,
    pub errors: u64,
}

impl Recorder {
    pub fn create(path: &Path, clock_offset: i128) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("creating record file {}", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(MAGIC)?;
        w.write_all(&clock_offset.to_le_bytes())?;
        Ok(Self { w, records: 0, errors: 0 })
    }

    pub fn write(&mut self, rec: &[u8]) {
        let len = (rec.len() as u32).to_le_bytes();
        if self.w.write_all(&len).and_then(|_| self.w.write_all(rec)).is_err() {
            self.errors += 1;
        } else {
            self.records += 1;
        }
    }

    pub fn flush(&mut self) {
        if self.w.flush().is_err() {
            self.errors += 1;
        }
    }
}

pub struct Replay {
    r: BufReader<File>,
    buf: Vec<u8>,
    /// Bytes of the read buffer taken by the record last returned from it.
    consumed: usize,
    pub clock_offset: i128,
}

impl Replay {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("opening record file {}", path.display()))?;
        // Small enough for what the kernel copies in to still be in the CPU
        // cache when the records are processed.
        let mut r = BufReader::with_capacity(1 << 16, f);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).with_context(|| format!("{} is too short to be a record file", path.display()))?;
        if &magic != MAGIC {
            bail!("{} is not a record file (bad magic)", path.display());
        }
        let mut off = [0u8; 16];
        r.read_exact(&mut off).context("record file header truncated")?;
        Ok(Self { r, buf: Vec::with_capacity(8192), consumed: 0, clock_offset: i128::from_le_bytes(off) })
    }

    /// The next record, None at the end (a truncated last record ends the file).
    pub fn next_record(&mut self) -> Result<Option<&[u8]>> {
        self.r.consume(std::mem::take(&mut self.consumed));
        // A record wholly in the read buffer is handed out from there, uncopied.
        let avail = self.r.buffer();
        if let Some(len) = avail.first_chunk::<4>().map(|b| u32::from_le_bytes(*b) as usize) {
            if len <= MAX_RECORD && avail.len() >= 4 + len {
                self.consumed = 4 + len;
                return Ok(self.r.buffer().get(4..4 + len));
            }
        }
        let mut len = [0u8; 4];
        match self.r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD {
            bail!("record of {len} bytes in the record file: corrupt file");
        }
        self.buf.resize(len, 0);
        match self.r.read_exact(&mut self.buf) {
            Ok(()) => Ok(Some(&self.buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let dir = std::env::temp_dir().join(format!("trcrec-{}", std::process::id()));
        let mut r = Recorder::create(&dir, -42).unwrap();
        r.write(b"one");
        r.write(b"");
        r.write(b"three");
        r.flush();
        drop(r);
        let mut p = Replay::open(&dir).unwrap();
        assert_eq!(p.clock_offset, -42);
        assert_eq!(p.next_record().unwrap(), Some(&b"one"[..]));
        assert_eq!(p.next_record().unwrap(), Some(&b""[..]));
        assert_eq!(p.next_record().unwrap(), Some(&b"three"[..]));
        assert_eq!(p.next_record().unwrap(), None);
        // A cut file ends early instead of failing.
        let bytes = std::fs::read(&dir).unwrap();
        std::fs::write(&dir, &bytes[..bytes.len() - 2]).unwrap();
        let mut p = Replay::open(&dir).unwrap();
        p.next_record().unwrap();
        p.next_record().unwrap();
        assert_eq!(p.next_record().unwrap(), None);
        std::fs::write(&dir, b"nope").unwrap();
        assert!(Replay::open(&dir).is_err());
        let _ = std::fs::remove_file(&dir);
    }
}
