//! The console view of a run: an indicatif progress bar (epoch, iteration, loss, lr, images/s,
//! ETA), or in quiet mode one line per epoch for logs.

use indicatif::{ProgressBar, ProgressStyle};

/// Progress display.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `total` iterations starting at `done`, or none in quiet mode.
    pub fn new(quiet: bool, total: usize, done: usize) -> Self {
        if quiet {
            return Self { bar: None };
        }
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}, ETA {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_position(done as u64);
        bar.reset_eta();
        Self { bar: Some(bar) }
    }

    /// After each iteration.
    pub fn step(
        &mut self,
        epoch: usize,
        epochs: usize,
        iteration: usize,
        loss: f64,
        lr: f64,
        rate: f64,
    ) {
        if let Some(b) = &self.bar {
            b.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
            b.set_position(iteration as u64);
            b.set_message(format!("loss {loss:.4} lr {lr:.4} {rate:.1} img/s"));
        }
    }

    /// At the end of an epoch.
    pub fn epoch_done(&mut self, epoch: usize, epochs: usize, loss: f64, knn: Option<f64>) {
        let knn = knn
            .map(|k| format!(", kNN top-1 {k:.2}%"))
            .unwrap_or_default();
        let line = format!("epoch {epoch}/{epochs}: mean loss {loss:.4}{knn}");
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// A warning, above the bar.
    pub fn warn(&mut self, text: &str) {
        match &self.bar {
            Some(b) => b.println(format!("warning: {text}")),
            None => eprintln!("warning: {text}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
