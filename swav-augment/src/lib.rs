//! Multi-crop augmentation with torchvision's semantics, usable without burn.
//!
//! Placeholder: the transforms and `MultiCrop` arrive with issue 3. The crate exists from the
//! start so that the workspace's dependency invariants (no burn here) are checked from day one.
