//! What a run tells its caller while it trains: [`TrainObserver`]. The library prints nothing;
//! a binary shows progress its own way (`cargo xtask pretrain` draws a progress bar).

/// Where a run is after one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// Epoch being trained (0-based).
    pub epoch: usize,
    /// Epochs configured.
    pub epochs: usize,
    /// Iterations done in all.
    pub iteration: usize,
    /// Iterations of the whole run.
    pub total_iterations: usize,
    /// Loss of this iteration.
    pub loss: f64,
    /// Learning rate of this iteration.
    pub lr: f64,
    /// Images per second of this process so far.
    pub images_per_s: f64,
}

/// Receives a run's progress. Every method does nothing by default.
pub trait TrainObserver {
    /// Training starts: `done` of `total` iterations are behind (a resumed run).
    fn started(&mut self, total: usize, done: usize) {
        let _ = (total, done);
    }

    /// After every iteration.
    fn step(&mut self, progress: &StepProgress) {
        let _ = progress;
    }

    /// After every epoch (1-based `epoch`): its mean loss and the kNN monitor's top-1, if run.
    fn epoch(&mut self, epoch: usize, epochs: usize, loss: f64, knn_top1: Option<f64>) {
        let _ = (epoch, epochs, loss, knn_top1);
    }

    /// A warning (it is also in the run summary).
    fn warning(&mut self, text: &str) {
        let _ = text;
    }

    /// Training has ended, completed or not.
    fn finished(&mut self) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl TrainObserver for Silent {}
