//! Training data: building the paper's sets and encoding them for training.
//!
//! * [`build`]: the paper's training sets (LIMA, response-only LIMA, GSM, MBPP, poetry, recipes,
//!   chess) as Tulu `messages` JSONL, each as the paper's own script makes it.
//! * [`jsonl`]: reading `messages` JSONL into [`Example`]s (and writing rows as Python does).
//! * [`encode`]: open-instruct's `encode_with_messages_format`: token ids and a loss mask.
//! * [`csv`]: CSV tables on the `csv` crate (the poetry source; also eval's difficulty tables).
//! * [`pgn`]: a small reader for the chess source.

pub mod build;
pub mod csv;
pub mod encode;
pub mod jsonl;
pub mod pgn;

pub use build::{build_task, BuildReport, Skip, Task};
pub use encode::{
    encode_dataset, encode_example, EncodedDataset, EncodedExample, Mode, DEFAULT_MAX_LEN,
};
pub use jsonl::{read_messages_jsonl, Example, Message, Record};
