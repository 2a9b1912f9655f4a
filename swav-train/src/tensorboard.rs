//! TensorBoard event files, written directly (no well-kept crate writes them): a TFRecord stream (each record its length, a
//! masked CRC-32C of the length, the data, a masked CRC-32C of the data) of `Event` protocol
//! buffers (`wall_time` = 1, `step` = 2, `file_version` = 3, `summary` = 5; a `Summary` holds
//! `value` = 1 entries of `tag` = 1 and `simple_value` = 2), as TensorFlow's and PyTorch's
//! `SummaryWriter` write them. [`read_scalars`] reads such a file back, checking every CRC.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::TrainError;

/// CRC-32C (Castagnoli) of `data`, by the crc32c crate (hardware-accelerated where the CPU
/// has it).
fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// TFRecord's masked CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | u32::from(wire)), out);
}

fn bytes_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// An `Event` with its wall time, step, and either the file version or a summary.
fn event(wall_time: f64, step: i64, file_version: Option<&str>, summary: Option<&[u8]>) -> Vec<u8> {
    let mut e = Vec::new();
    key(1, 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(2, 0, &mut e);
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if let Some(s) = summary {
        bytes_field(5, s, &mut e);
    }
    e
}

/// Writes one event file.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir` (named as TensorBoard expects:
    /// `events.out.tfevents.<seconds>.<host>`), opened with its file-version event.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        let t = now();
        // Several files in one second (a quick resume) get distinct names.
        let mut n = 0;
        let path = loop {
            let name = format!("events.out.tfevents.{}.swav-rs.{n}", t as u64);
            let p = dir.join(name);
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let file = std::fs::File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut w = Self {
            path,
            file: std::io::BufWriter::new(file),
        };
        w.write_record(&event(t, 0, Some("brain.Event:2"), None))?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_record(&mut self, data: &[u8]) -> Result<(), TrainError> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .map_err(|e| TrainError::io(&self.path, e))
    }

    /// One event holding `scalars` (tag, value) at `step`.
    pub fn scalars(&mut self, step: i64, scalars: &[(String, f32)]) -> Result<(), TrainError> {
        if scalars.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut v);
            key(2, 5, &mut v);
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(1, &v, &mut summary);
        }
        self.write_record(&event(now(), step, None, Some(&summary)))
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // A run that ends with an error still leaves what it logged readable.
        let _ = self.file.flush();
    }
}

/// A protocol-buffer reader over one message.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    /// The next field: its number and its payload (varints as their value's bytes).
    fn next_field(&mut self) -> Option<(u32, u8, &'a [u8], u64)> {
        if self.0.is_empty() {
            return None;
        }
        let k = self.varint()?;
        let (field, wire) = ((k >> 3) as u32, (k & 7) as u8);
        match wire {
            0 => Some((field, wire, &[], self.varint()?)),
            1 => Some((field, wire, self.take(8)?, 0)),
            2 => {
                let n = self.varint()? as usize;
                Some((field, wire, self.take(n)?, 0))
            }
            5 => Some((field, wire, self.take(4)?, 0)),
            _ => None,
        }
    }
}

/// The scalars of an event file: `(step, tag, value)` in file order. An error names the file
/// and the first record whose length or CRC does not check out.
pub fn read_scalars(path: &Path) -> Result<Vec<(i64, String, f32)>, TrainError> {
    let data = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |i: usize, what: &str| {
        TrainError::Checkpoint(format!("{}: record {i}: {what}", path.display()))
    };
    let mut out = Vec::new();
    let mut rest = &data[..];
    let mut i = 0;
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad(i, "truncated header"));
        }
        let len_bytes = &rest[..8];
        let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if crc != masked_crc(len_bytes) {
            return Err(bad(i, "length CRC mismatch"));
        }
        let mut lb = [0u8; 8];
        lb.copy_from_slice(len_bytes);
        let len = u64::from_le_bytes(lb) as usize;
        if rest.len() < 16 + len {
            return Err(bad(i, "truncated data"));
        }
        let body = &rest[12..12 + len];
        let dcrc = &rest[12 + len..16 + len];
        if u32::from_le_bytes([dcrc[0], dcrc[1], dcrc[2], dcrc[3]]) != masked_crc(body) {
            return Err(bad(i, "data CRC mismatch"));
        }
        let mut step = 0i64;
        let mut values = Vec::new();
        let mut ev = Fields(body);
        while let Some((field, _, payload, v)) = ev.next_field() {
            match field {
                2 => step = v as i64,
                5 => {
                    let mut summary = Fields(payload);
                    while let Some((1, _, value, _)) = summary.next_field() {
                        let (mut tag, mut x) = (String::new(), f32::NAN);
                        let mut vf = Fields(value);
                        while let Some((f, _, p, _)) = vf.next_field() {
                            match (f, p.len()) {
                                (1, _) => tag = String::from_utf8_lossy(p).into_owned(),
                                (2, 4) => x = f32::from_le_bytes([p[0], p[1], p[2], p[3]]),
                                _ => {}
                            }
                        }
                        values.push((tag, x));
                    }
                }
                _ => {}
            }
        }
        out.extend(values.into_iter().map(|(t, x)| (step, t, x)));
        rest = &rest[16 + len..];
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC-32C check value of "123456789" (RFC 3720, appendix B.4).
    #[test]
    fn crc32c_has_its_published_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn scalars_read_back_and_a_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = EventWriter::create(dir.path()).expect("writer");
        w.scalars(3, &[("step/loss".into(), 5.5), ("step/lr".into(), 0.25)])
            .expect("write");
        w.scalars(7, &[("epoch/knn_top1".into(), 81.0)])
            .expect("write");
        w.flush().expect("flush");
        let path = w.path().to_path_buf();
        let got = read_scalars(&path).expect("read");
        assert_eq!(
            got,
            vec![
                (3, "step/loss".to_string(), 5.5),
                (3, "step/lr".to_string(), 0.25),
                (7, "epoch/knn_top1".to_string(), 81.0)
            ]
        );
        let mut bytes = std::fs::read(&path).expect("bytes");
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, bytes).expect("write");
        assert!(read_scalars(&path).is_err());
    }
}
