//! Standard output and error for the command lines.
//!
//! A reader that stops early (`shardfs ls | head`) closes the pipe; the
//! next write then fails with `EPIPE`. `println!` would panic there. The
//! [`outln!`](crate::outln) and [`out!`](crate::out) macros end the program
//! quietly with status 0 instead, as `ls | head` leaves `ls`, and
//! [`errln!`](crate::errln) never fails at all (there is nowhere left to say
//! that standard error is gone).

use std::io::Write;

/// Writes to standard output; a closed pipe ends the program with status 0,
/// any other failure with status 1 after saying so on standard error.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        stdout_failed(e);
    }
}

/// Writes to standard error, ignoring failure.
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Ends the program after a failed write to standard output: quietly with
/// status 0 when the reader closed the pipe, else with status 1.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    write_stderr(format_args!("cannot write to standard output: {e}\n"));
    std::process::exit(1);
}

/// Flushes standard output (see [`stdout_failed`]).
pub fn flush_stdout() {
    if let Err(e) = std::io::stdout().lock().flush() {
        stdout_failed(e);
    }
}

/// `println!` that ends the program quietly when the reader has gone.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends the program quietly when the reader has gone.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    () => {
        $crate::output::write_stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
