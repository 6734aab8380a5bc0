//! Writing to stdout without panicking when the reader goes away (`sagactl saga list |
//! head` closes the pipe early: that is a normal end, not a crash).

use std::fmt;
use std::io::{self, Write as _};

/// Writes `args` to stdout; a closed stdout ends the process quietly (status 0).
pub fn write(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// `println!` through [`write`].
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` through [`write`].
macro_rules! out {
    ($($t:tt)*) => { $crate::output::write(format_args!($($t)*)) };
}

/// `println!` that ignores a closed stdout, for `sagactl dev`: it must go on stopping its
/// children whatever happened to its terminal.
macro_rules! sayln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that ignores a closed stderr (see [`sayln`]).
macro_rules! esayln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

pub(crate) use {esayln, out, outln, sayln};
