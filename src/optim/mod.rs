//! Optimizers: AdamW with mixed precision, gradient clipping, learning-rate schedules.
