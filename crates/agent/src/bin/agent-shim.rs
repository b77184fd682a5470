//! The container supervisor as a standalone program, for this crate's tests (`atoll`
//! ships the same code as its `atoll-shim` binary, and as `atoll shim`).

fn main() {
    std::process::exit(agent::shim::main(std::env::args_os().skip(1)));
}
