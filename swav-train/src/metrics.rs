//! A run's metrics: [`Record`]s (one per logged step, per epoch, per skipped f16 step) sent to
//! [`MetricsSink`]s.
//!
//! `metrics.jsonl` ([`JsonLines`], one JSON object per line) is always written: it is the run's
//! record, and a resumed run keeps its lines up to the checkpoint's iteration and hands them to
//! the other sinks as the history. The others are chosen by `[run] metrics`:
//!
//! - `png` ([`Plots`]): loss, learning-rate and kNN curves, redrawn after every epoch;
//! - `csv` ([`Csv`]): `metrics_step.csv` and `metrics_epoch.csv`, a column per field;
//! - `tensorboard` ([`TensorBoard`]): an event file under `tensorboard/` with every numeric
//!   field as a scalar (`step/loss`, `epoch/knn_top1`, ...) at its iteration.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use swav_eval::plot::{ChartOptions, line_chart_with};

use crate::TrainError;

/// The metrics file of a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One record: its kind (`step`, `epoch`, `overflow`), where the run was, and its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `step`, `epoch` or `overflow`.
    pub kind: String,
    /// Epoch (0-based for steps, the epoch just finished for epoch records).
    pub epoch: usize,
    /// Iterations done.
    pub iteration: usize,
    /// The values (numbers, booleans, or null where not measured).
    pub fields: Map<String, Value>,
}

impl Record {
    /// A record of `kind` with the fields of `fields` (an object; anything else adds none).
    pub fn new(kind: &str, epoch: usize, iteration: usize, fields: Value) -> Self {
        Self {
            kind: kind.into(),
            epoch,
            iteration,
            fields: match fields {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        }
    }

    /// The record as one JSON object: `type`, `epoch`, `iteration` and the fields.
    pub fn to_json(&self) -> Value {
        let mut m = self.fields.clone();
        m.insert("type".into(), Value::from(self.kind.clone()));
        m.insert("epoch".into(), Value::from(self.epoch));
        m.insert("iteration".into(), Value::from(self.iteration));
        Value::Object(m)
    }

    /// The record of a JSON object written by [`Record::to_json`].
    pub fn from_json(v: &Value) -> Option<Self> {
        let mut m = v.as_object()?.clone();
        let kind = m.remove("type")?.as_str()?.to_string();
        let epoch = m.remove("epoch")?.as_u64()? as usize;
        let iteration = m.remove("iteration")?.as_u64()? as usize;
        Some(Self {
            kind,
            epoch,
            iteration,
            fields: m,
        })
    }

    /// A numeric field.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.fields.get(name)?.as_f64()
    }
}

/// A destination for a run's metrics.
pub trait MetricsSink {
    /// The run starts writing into `dir`; `history` holds the records of the iterations
    /// already done (a resumed run), oldest first.
    fn open(&mut self, dir: &Path, history: &[Record]) -> Result<(), TrainError>;

    /// One more record.
    fn record(&mut self, record: &Record) -> Result<(), TrainError>;

    /// The run ends (completed or stopped): flush. The files this sink wrote.
    fn close(&mut self) -> Result<Vec<PathBuf>, TrainError>;
}

/// The sink names `[run] metrics` accepts, beside the always-written JSON lines.
pub const SINK_NAMES: [&str; 4] = ["jsonl", "png", "csv", "tensorboard"];

/// The sinks `names` choose (`jsonl` is always written and skipped here).
pub fn sinks_named(names: &[String]) -> Result<Vec<Box<dyn MetricsSink>>, TrainError> {
    let mut sinks: Vec<Box<dyn MetricsSink>> = Vec::new();
    for name in names {
        match name.as_str() {
            "jsonl" => {}
            "png" => sinks.push(Box::new(Plots::default())),
            "csv" => sinks.push(Box::new(Csv::default())),
            "tensorboard" => sinks.push(Box::new(TensorBoard::default())),
            other => {
                return Err(TrainError::config(
                    "run.metrics",
                    format!("entry `{other}` must be one of {}", SINK_NAMES.join(", ")),
                ));
            }
        }
    }
    Ok(sinks)
}

/// `metrics.jsonl`: one JSON object per record.
pub struct JsonLines {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonLines {
    /// Opens `dir/metrics.jsonl`, keeping only the records up to iteration `keep_until` (a
    /// resumed run replays the iterations after its checkpoint; `None` starts afresh). Returns
    /// the sink and the records kept.
    pub fn open(dir: &Path, keep_until: Option<usize>) -> Result<(Self, Vec<Record>), TrainError> {
        let path = dir.join(METRICS_FILE);
        let mut kept = Vec::new();
        if let (Some(limit), Ok(text)) = (keep_until, std::fs::read_to_string(&path)) {
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if let Some(r) = Record::from_json(&v).filter(|r| r.iteration <= limit) {
                    kept.push(r);
                }
            }
        }
        let mut file = std::fs::File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        for r in &kept {
            writeln!(file, "{}", r.to_json()).map_err(|e| TrainError::io(&path, e))?;
        }
        Ok((Self { path, file }, kept))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record.
    pub fn record(&mut self, record: &Record) -> Result<(), TrainError> {
        writeln!(self.file, "{}", record.to_json()).map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Loss, learning-rate and kNN curves as PNG charts (`loss.png`, `lr.png`, `knn.png`).
#[derive(Debug, Default)]
pub struct Plots {
    dir: PathBuf,
    history: Vec<Record>,
}

impl Plots {
    fn series(&self, kind: &str, y: &str) -> Vec<(f64, f64)> {
        self.history
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| {
                let x = if kind == "epoch" {
                    r.epoch
                } else {
                    r.iteration
                };
                Some((x as f64, r.number(y)?))
            })
            .collect()
    }

    fn draw(&self) -> Result<Vec<PathBuf>, TrainError> {
        let plots = [
            ("loss.png", "SWAV LOSS", "step", "loss", "ITERATION"),
            ("lr.png", "LEARNING RATE", "step", "lr", "ITERATION"),
            ("knn.png", "KNN TOP-1 (%)", "epoch", "knn_top1", "EPOCH"),
        ];
        // The kNN of the same network at random initialisation, measured once by the run.
        let baseline = self
            .series("epoch", "knn_baseline_top1")
            .last()
            .map(|&(_, b)| b);
        let mut out = Vec::new();
        for (file, title, kind, y, x_label) in plots {
            let p = self.dir.join(file);
            let options = ChartOptions {
                integer_x: true,
                baselines: match (y, baseline) {
                    ("knn_top1", Some(b)) => vec![("RANDOM INIT".to_string(), b)],
                    _ => Vec::new(),
                },
            };
            line_chart_with(&p, title, x_label, &self.series(kind, y), &options)?;
            out.push(p);
        }
        Ok(out)
    }
}

impl MetricsSink for Plots {
    fn open(&mut self, dir: &Path, history: &[Record]) -> Result<(), TrainError> {
        self.dir = dir.to_path_buf();
        self.history = history.to_vec();
        Ok(())
    }

    fn record(&mut self, record: &Record) -> Result<(), TrainError> {
        if record.kind == "step" || record.kind == "epoch" {
            self.history.push(record.clone());
        }
        if record.kind == "epoch" {
            self.draw()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<Vec<PathBuf>, TrainError> {
        self.draw()
    }
}

/// One CSV file per record kind (`metrics_step.csv`, `metrics_epoch.csv`,
/// `metrics_overflow.csv`): `epoch`, `iteration`, then a column per field in order of first
/// appearance; empty cells where a record lacks a field or it is null.
#[derive(Debug, Default)]
pub struct Csv {
    dir: PathBuf,
    tables: BTreeMap<String, CsvTable>,
}

#[derive(Debug, Default)]
struct CsvTable {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn csv_cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.clone()
            }
        }
        Some(other) => other.to_string(),
    }
}

impl Csv {
    fn path(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("metrics_{kind}.csv"))
    }

    /// Adds `record` to its table; `Some(line)` when the columns are unchanged (append it),
    /// `None` when a new column appeared (rewrite the file).
    fn add(&mut self, record: &Record) -> Option<String> {
        let table = self.tables.entry(record.kind.clone()).or_default();
        let mut grew = false;
        for key in record.fields.keys() {
            if !table.columns.contains(key) {
                table.columns.push(key.clone());
                grew = true;
            }
        }
        let mut row = vec![record.epoch.to_string(), record.iteration.to_string()];
        row.extend(table.columns.iter().map(|c| csv_cell(record.fields.get(c))));
        let line = row.join(",");
        table.rows.push(row);
        (!grew).then_some(line)
    }

    fn rewrite(&self, kind: &str) -> Result<(), TrainError> {
        let Some(table) = self.tables.get(kind) else {
            return Ok(());
        };
        let path = self.path(kind);
        let mut text = String::from("epoch,iteration");
        for c in &table.columns {
            text.push(',');
            text.push_str(c);
        }
        text.push('\n');
        for row in &table.rows {
            text.push_str(&row.join(","));
            // Rows written before a column appeared lack its cell.
            for _ in row.len()..table.columns.len() + 2 {
                text.push(',');
            }
            text.push('\n');
        }
        swav_models::atomic::write_atomically(&path, text.as_bytes())
            .map_err(|e| TrainError::io(&path, e))
    }
}

impl MetricsSink for Csv {
    fn open(&mut self, dir: &Path, history: &[Record]) -> Result<(), TrainError> {
        self.dir = dir.to_path_buf();
        self.tables.clear();
        for r in history {
            self.add(r);
        }
        let kinds: Vec<String> = self.tables.keys().cloned().collect();
        for kind in kinds {
            self.rewrite(&kind)?;
        }
        Ok(())
    }

    fn record(&mut self, record: &Record) -> Result<(), TrainError> {
        match self.add(record) {
            Some(line) if self.tables[&record.kind].rows.len() > 1 => {
                let path = self.path(&record.kind);
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| TrainError::io(&path, e))?;
                writeln!(f, "{line}").map_err(|e| TrainError::io(&path, e))
            }
            _ => self.rewrite(&record.kind),
        }
    }

    fn close(&mut self) -> Result<Vec<PathBuf>, TrainError> {
        Ok(self.tables.keys().map(|k| self.path(k)).collect())
    }
}

/// TensorBoard scalars: every numeric field of every record as `<kind>/<field>` at the record's
/// iteration, in an event file under `dir/tensorboard/` (`tensorboard --logdir RUN/tensorboard`).
/// A resumed run starts a new event file; the replayed iterations carry the same values.
#[derive(Debug, Default)]
pub struct TensorBoard {
    writer: Option<crate::tensorboard::EventWriter>,
}

impl MetricsSink for TensorBoard {
    fn open(&mut self, dir: &Path, _history: &[Record]) -> Result<(), TrainError> {
        let dir = dir.join("tensorboard");
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        self.writer = Some(crate::tensorboard::EventWriter::create(&dir)?);
        Ok(())
    }

    fn record(&mut self, record: &Record) -> Result<(), TrainError> {
        let Some(w) = &mut self.writer else {
            return Ok(());
        };
        let scalars: Vec<(String, f32)> = record
            .fields
            .iter()
            .filter_map(|(k, v)| {
                let x = match v {
                    Value::Bool(b) => f64::from(u8::from(*b)),
                    other => other.as_f64()?,
                };
                Some((format!("{}/{k}", record.kind), x as f32))
            })
            .collect();
        w.scalars(record.iteration as i64, &scalars)
    }

    fn close(&mut self) -> Result<Vec<PathBuf>, TrainError> {
        match self.writer.take() {
            Some(mut w) => {
                w.flush()?;
                Ok(vec![w.path().to_path_buf()])
            }
            None => Ok(Vec::new()),
        }
    }
}
