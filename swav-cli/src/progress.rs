//! The console view of a run: an indicatif progress bar (epoch, iteration, loss, lr, images/s,
//! ETA), or in quiet mode one line per epoch for logs; the trainer reports to it as its
//! [`TrainObserver`].

use indicatif::{ProgressBar, ProgressStyle};
use swav_train::{StepProgress, TrainObserver};

/// Progress display.
pub struct Progress {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar, or none in quiet mode (drawn once the run starts).
    pub fn new(quiet: bool) -> Self {
        Self { quiet, bar: None }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

impl TrainObserver for Progress {
    fn started(&mut self, total: usize, done: usize) {
        if self.quiet {
            return;
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
        self.bar = Some(bar);
    }

    fn step(&mut self, p: &StepProgress) {
        if let Some(b) = &self.bar {
            b.set_prefix(format!("epoch {}/{}", p.epoch + 1, p.epochs));
            b.set_position(p.iteration as u64);
            b.set_message(format!(
                "loss {:.4} lr {:.4} {:.1} img/s",
                p.loss, p.lr, p.images_per_s
            ));
        }
    }

    fn epoch(&mut self, epoch: usize, epochs: usize, loss: f64, knn_top1: Option<f64>) {
        let knn = knn_top1
            .map(|k| format!(", kNN top-1 {k:.2}%"))
            .unwrap_or_default();
        self.println(format!("epoch {epoch}/{epochs}: mean loss {loss:.4}{knn}"));
    }

    fn warning(&mut self, text: &str) {
        self.println(format!("warning: {text}"));
    }

    fn finished(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
