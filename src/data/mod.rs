//! Training data: building the paper's sets and encoding them for training.
