//! The `Backbone` trait, the ResNet family, the SwAV projection head and prototypes.
//!
//! Placeholder: the models arrive with issue 5.
