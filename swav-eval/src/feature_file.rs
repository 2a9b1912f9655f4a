//! Features on disk, for probes whose features do not fit in memory (ImageNet's 1.28 M x 2048
//! floats are 10.5 GB): written once in batches as they are extracted, then read back in
//! mini-batches of rows, in any order.
//!
//! The file: a 32-byte header (`SWAVFEAT`, version 1 as u32, the row size as u32, the row
//! count as u64, 8 bytes reserved), the rows (f32, little-endian, row-major), then one label
//! per row (i64, little-endian, -1 for none). It is written to a temporary sibling and renamed
//! into place when complete.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use swav_models::atomic::AtomicFile;

use crate::EvalError;
use crate::features::Features;

const MAGIC: &[u8; 8] = b"SWAVFEAT";
const HEADER: u64 = 32;
/// The most floats a row may have (64 MiB a row; backbones give 512 to 8,192).
const MAX_DIM: usize = 1 << 24;

/// Writes a feature file row batch by row batch.
pub struct FeatureWriter {
    out: BufWriter<AtomicFile>,
    /// The destination (the file is written beside it and moved into place when finished).
    path: PathBuf,
    dim: usize,
    rows: u64,
    labels: Vec<i64>,
}

impl FeatureWriter {
    /// Starts a file of rows of `dim` floats at `path`.
    pub fn create(path: impl AsRef<Path>, dim: usize) -> Result<Self, EvalError> {
        let path = path.as_ref().to_path_buf();
        if dim == 0 {
            return Err(EvalError::invalid("dim", "must be at least 1"));
        }
        let file = AtomicFile::create(&path).map_err(|e| EvalError::io(&path, e))?;
        let mut out = BufWriter::new(file);
        out.write_all(&[0u8; HEADER as usize])
            .map_err(|e| EvalError::io(&path, e))?;
        Ok(Self {
            out,
            path,
            dim,
            rows: 0,
            labels: Vec::new(),
        })
    }

    /// Appends the rows of `values` (`labels.len() x dim`) with their labels.
    pub fn append(&mut self, values: &[f32], labels: &[Option<usize>]) -> Result<(), EvalError> {
        if values.len() != labels.len() * self.dim {
            return Err(EvalError::invalid(
                "features",
                format!(
                    "{} values for {} rows of {}",
                    values.len(),
                    labels.len(),
                    self.dim
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.out
            .write_all(&bytes)
            .map_err(|e| EvalError::io(&self.path, e))?;
        self.rows += labels.len() as u64;
        self.labels
            .extend(labels.iter().map(|l| l.map_or(-1, |l| l as i64)));
        Ok(())
    }

    /// Writes the labels and the header, and moves the file into place.
    pub fn finish(mut self) -> Result<FeatureFile, EvalError> {
        let err = |e: std::io::Error| EvalError::io(&self.path, e);
        let mut tail = Vec::with_capacity(self.labels.len() * 8);
        for l in &self.labels {
            tail.extend_from_slice(&l.to_le_bytes());
        }
        self.out.write_all(&tail).map_err(err)?;
        let mut file = self.out.into_inner().map_err(|e| err(e.into_error()))?;
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&(self.dim as u32).to_le_bytes());
        header.extend_from_slice(&self.rows.to_le_bytes());
        header.extend_from_slice(&[0u8; 8]);
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header))
            .and_then(|()| file.commit())
            .map_err(|e| EvalError::io(&self.path, e))?;
        FeatureFile::open(&self.path)
    }
}

/// A feature file opened for reading: the labels in memory, the rows read on demand.
pub struct FeatureFile {
    file: Mutex<File>,
    path: PathBuf,
    dim: usize,
    labels: Vec<Option<usize>>,
}

impl FeatureFile {
    /// Opens `path`, checking its header and size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, EvalError> {
        let path = path.as_ref().to_path_buf();
        let bad =
            |why: String| EvalError::invalid("feature file", format!("{}: {why}", path.display()));
        let mut file = File::open(&path).map_err(|e| EvalError::io(&path, e))?;
        let mut header = [0u8; HEADER as usize];
        file.read_exact(&mut header)
            .map_err(|_| bad("shorter than its header".into()))?;
        if &header[..8] != MAGIC {
            return Err(bad("not a swav-rs feature file".into()));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != 1 {
            return Err(bad(format!(
                "version {version}; this build reads version 1"
            )));
        }
        let dim = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
        if dim > MAX_DIM {
            // A row's buffer is allocated from it: refused before it is believed.
            return Err(bad(format!(
                "rows of {dim} floats; a feature file holds at most {MAX_DIM} per row"
            )));
        }
        let rows = u64::from_le_bytes(
            header[16..24]
                .try_into()
                .map_err(|_| bad("header".into()))?,
        );
        // The header's counts are the file's word: checked, so a corrupt one is refused, not
        // wrapped around.
        let want = (dim as u64 * 4 + 8)
            .checked_mul(rows)
            .and_then(|b| b.checked_add(HEADER));
        let len = file.metadata().map_err(|e| EvalError::io(&path, e))?.len();
        if want != Some(len) || dim == 0 {
            let want = want.map_or_else(|| "more than 2^64".to_string(), |w| w.to_string());
            return Err(bad(format!(
                "{len} bytes, but {rows} rows of {dim} floats with labels make {want}"
            )));
        }
        file.seek(SeekFrom::Start(HEADER + rows * dim as u64 * 4))
            .map_err(|e| EvalError::io(&path, e))?;
        let mut raw = vec![0u8; rows as usize * 8];
        file.read_exact(&mut raw)
            .map_err(|e| EvalError::io(&path, e))?;
        let labels = raw
            .chunks_exact(8)
            .map(|c| {
                let v = i64::from_le_bytes(c.try_into().unwrap_or([0xff; 8]));
                usize::try_from(v).ok()
            })
            .collect();
        Ok(Self {
            file: Mutex::new(file),
            path,
            dim,
            labels,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the file holds no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Floats per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The label of each row.
    pub fn labels(&self) -> &[Option<usize>] {
        &self.labels
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends rows `rows` (in that order) to `out`.
    pub fn read_rows(&self, rows: &[usize], out: &mut Vec<f32>) -> Result<(), EvalError> {
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut buf = Vec::new();
        for &r in rows {
            if r >= self.labels.len() {
                return Err(EvalError::invalid(
                    "row",
                    format!("{r} is beyond the file's {} rows", self.labels.len()),
                ));
            }
            // Sized at the first row read: a row exists, so the file holds its bytes.
            buf.resize(self.dim * 4, 0);
            read_at(&file, &mut buf, HEADER + (r * self.dim * 4) as u64)
                .map_err(|e| EvalError::io(&self.path, e))?;
            out.extend(
                buf.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        Ok(())
    }
}

/// Fills `buf` from `offset` (one positioned read on Unix, a seek and a read elsewhere).
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(mut file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

impl Features {
    /// Writes these features to a feature file at `path` and opens it.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<FeatureFile, EvalError> {
        let mut w = FeatureWriter::create(path, self.dim)?;
        for (values, labels) in self
            .values
            .chunks(4096 * self.dim.max(1))
            .zip(self.labels.chunks(4096))
        {
            w.append(values, labels)?;
        }
        w.finish()
    }
}
