//! The container supervisor as a standalone program, for this crate's tests (the `atoll`
//! binary runs the same code as `atoll shim`).

fn main() {
    std::process::exit(agent::shim::main(std::env::args_os().skip(1)));
}
