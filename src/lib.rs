//! implicit: a native transformer runtime for the experiments of
//! "Instruction Following without Instruction Tuning" (Hewitt et al., 2024).

// Console output that never panics. std's print macros panic when the write fails (a closed
// pipe: `implicit eval winrate | head`, `implicit train 2>&1 | head`), which would kill a
// training run whose results are its files. These shadow std's in every module declared below
// (macro_rules scope is textual) and drop write errors: a command whose output is its result
// simply finishes with nothing more to show. Unit tests keep std's, whose output the test
// harness captures.
#[cfg(not(test))]
macro_rules! println {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout().lock(), $($arg)*);
    }};
}
#[cfg(not(test))]
#[allow(unused_macros)] // used by the CUDA build's `bench` only
macro_rules! print {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stdout().lock(), $($arg)*);
    }};
}
#[cfg(not(test))]
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr().lock(), $($arg)*);
    }};
}
#[cfg(not(test))]
#[allow(unused_macros)] // unused today; here so that a new `eprint!` cannot reach std's
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod adapter;
pub mod autograd;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod generate;
pub mod io;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod serve;
pub mod tensor;
pub mod toml_file;
pub mod train;

#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
