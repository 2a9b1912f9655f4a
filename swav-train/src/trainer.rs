//! The training run: [`Trainer`] puts the parts together (a [`BatchSource`], the objective on
//! one or several workers, the optimiser and schedule, checkpoints and resume, metric sinks, an
//! observer) and runs the epochs; [`train`] is the run with the default parts.

use burn::tensor::Device;

use crate::TrainError;
use crate::adapters::spec_for;
use crate::config::TrainConfig;
use crate::data::RunData;
use crate::fault::FaultHook;
use crate::metrics::{MetricsSink, sinks_named};
use crate::observer::{Silent, TrainObserver};
use crate::outcome::{RunOptions, TrainOutcome};
use crate::source::{BatchSource, MultiCropSource};
use crate::train_loop::{Parts, TrainLoop};

/// A training run being put together: the config and data, then optional parts, then
/// [`Trainer::run`] with the backbone.
pub struct Trainer<'a> {
    config: &'a TrainConfig,
    data: &'a RunData,
    options: RunOptions,
    source: Option<Box<dyn BatchSource + 'a>>,
    observer: Option<&'a mut dyn TrainObserver>,
    sinks: Option<Vec<Box<dyn MetricsSink + 'a>>>,
    backbone_config: serde_json::Value,
    faults: Option<&'a dyn FaultHook>,
}

/// Trains SwAV as `config` says, on `data`, with the backbone `build` makes (any
/// [`swav_models::Backbone`]), with the default parts: the multi-crop loader, the sinks of
/// `[run] metrics`, no observer. Resumes from the run folder's checkpoint when
/// `run.auto_resume` is set and one exists, or from `options.resume_from`.
pub fn train<E, F>(
    config: &TrainConfig,
    data: &RunData,
    build: F,
    options: &RunOptions,
) -> Result<TrainOutcome<E>, TrainError>
where
    E: swav_models::TaskBackbone,
    F: FnOnce(&Device) -> Result<E, TrainError>,
{
    Trainer::new(config, data)
        .options(options.clone())
        .run(build)
}

impl<'a> Trainer<'a> {
    /// A run of `config` on `data` (its training split feeds the default source, its kNN
    /// splits the monitor).
    pub fn new(config: &'a TrainConfig, data: &'a RunData) -> Self {
        Self {
            config,
            data,
            options: RunOptions::default(),
            source: None,
            observer: None,
            sinks: None,
            backbone_config: serde_json::Value::Null,
            faults: None,
        }
    }

    /// How the run starts (resume, stop early).
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// Batches from `source` instead of the multi-crop loader over `data.train`.
    pub fn source(mut self, source: impl BatchSource + 'a) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Progress goes to `observer`.
    pub fn observer(mut self, observer: &'a mut dyn TrainObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Metrics go to `sinks` (beside `metrics.jsonl`) instead of those `[run] metrics` names.
    pub fn sinks(mut self, sinks: Vec<Box<dyn MetricsSink + 'a>>) -> Self {
        self.sinks = Some(sinks);
        self
    }

    /// The backbone's configuration, stored in checkpoints beside its name (`swav.arch`); the
    /// registry's description of it ([`swav_models::BackboneRegistry::describe`]).
    pub fn backbone_config(mut self, config: serde_json::Value) -> Self {
        self.backbone_config = config;
        self
    }

    /// Faults to inject on purpose (tests of what a run does about NaN, infinity and a full
    /// disk; see [`FaultHook`]).
    pub fn faults(mut self, hook: &'a dyn FaultHook) -> Self {
        self.faults = Some(hook);
        self
    }

    /// Runs the epochs with the backbone `build` makes.
    pub fn run<E, F>(self, build: F) -> Result<TrainOutcome<E>, TrainError>
    where
        E: swav_models::TaskBackbone,
        F: FnOnce(&Device) -> Result<E, TrainError>,
    {
        let mut silent = Silent;
        let Trainer {
            config,
            data,
            options,
            source,
            observer,
            sinks,
            backbone_config,
            faults,
        } = self;
        let observer: &mut dyn TrainObserver = match observer {
            Some(o) => o,
            None => &mut silent,
        };
        config.validate()?;
        let sinks = match sinks {
            Some(s) => s,
            None => sinks_named(&config.run.metrics)?,
        };
        let world = config.swav.world_size.max(1);
        let source: Box<dyn BatchSource + 'a> = match source {
            Some(s) => s,
            None => Box::new(MultiCropSource::new(config, data, world)?),
        };
        let mut spec = spec_for(config);
        spec.backbone = backbone_config;
        let parts = Parts {
            config,
            data,
            options: &options,
            faults,
            source: source.as_ref(),
            observer,
            sinks,
            spec,
        };
        TrainLoop::go(parts, build)
    }
}
