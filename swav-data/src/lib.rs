//! Dataset readers, the built-in default dataset and the parallel multi-crop loader.
//!
//! Placeholder: the readers and the loader arrive with issue 4.
